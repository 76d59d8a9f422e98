"""Host time of the runner's per-request bookkeeping in one decode step, without an engine.

At a few hundred requests a step of a small model is paced by the host (``engine_loop.py``),
and three of the runner's loops visit every request each step:

* ``update_cached``: applying the scheduler's diff for the running requests
  (``RequestStatesMixin._update_cached_requests``);
* ``add_placeholders``: a placeholder for each token still on the device
  (``XlaGpuModelRunner._add_placeholders``);
* ``fill_placeholders``: writing the real tokens over them once they arrive
  (``XlaGpuModelRunner._fill_placeholders``).

This runs those three on a bare runner state (the persistent batch and ``--num-reqs`` decoding
requests, no model, no device) for ``--steps`` decode steps, each request one token further
per step and a new page every 16 steps, and prints the median milliseconds per step of
``--repeats`` runs. To compare two versions of the package, run this script against each
in turn (``PYTHONPATH`` first), alternating, since a shared host's speed drifts between runs,
and with one ``PYTHONHASHSEED`` for all: the loops look requests up by id, and with Python's
random string hashing one process ran them 1.5 times as fast as another.

    PYTHONHASHSEED=0 python benchmarks/bookkeeping.py --num-reqs 256 --json bookkeeping.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import types

import numpy as np

import vllm_xla_gpu
from vllm_xla_gpu.runner.input_batch import InputBatch, RequestState
from vllm_xla_gpu.runner.model_runner import XlaGpuModelRunner, _PendingStep
from vllm_xla_gpu.runner.request_states import RequestStatesMixin

PAGE_EVERY = 16  # steps between new pages (vLLM's default block size)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-reqs", type=int, default=256)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="write results here")
    return p.parse_args()


def bare_runner(num_reqs: int, prompt_len: int) -> types.SimpleNamespace:
    """The attributes the three loops read, with ``num_reqs`` requests past their prompt."""
    runner = types.SimpleNamespace(
        batch=InputBatch(num_reqs, prompt_len + 1024, (prompt_len + 1024) // 16),
        requests={},
        _unresolved=[],
        token_wait_seconds=0.0,
        num_resolved_outputs=0,
        _tokens_arrived_at=None,
    )
    runner._truncate_outputs = types.MethodType(RequestStatesMixin._truncate_outputs, runner)
    for i in range(num_reqs):
        pages = list(range(i * 64, i * 64 + prompt_len // 16))
        state = RequestState(f"req-{i}", list(range(prompt_len)), [], None, pages, prompt_len, 0)
        runner.requests[state.req_id] = state
        runner.batch.add_request(state)
    return runner


def run_once(num_reqs: int, prompt_len: int, steps: int) -> dict[str, float]:
    """Milliseconds per step of each loop over ``steps`` decode steps."""
    runner = bare_runner(num_reqs, prompt_len)
    req_ids = list(runner.requests)
    rows = np.array([runner.batch.req_id_to_row[r] for r in req_ids], np.int32)
    one_each = np.ones(num_reqs, np.int32)
    totals = {"update_cached": 0.0, "add_placeholders": 0.0, "fill_placeholders": 0.0}
    for step in range(steps):
        states = [runner.requests[r] for r in req_ids]
        cached = types.SimpleNamespace(  # vLLM's CachedRequestData, as the scheduler sends it
            req_ids=req_ids,
            num_computed_tokens=[s.num_computed_tokens + 1 for s in states],
            num_output_tokens=[len(s.output_token_ids) for s in states],
            new_block_ids=[None if step % PAGE_EVERY else ([step],) for _ in req_ids],
            resumed_req_ids=set(),
        )
        start = time.perf_counter()
        RequestStatesMixin._update_cached_requests(runner, cached)
        updated = time.perf_counter()
        pending = _PendingStep(req_ids, rows, one_each, None)
        _, placeholders = XlaGpuModelRunner._add_placeholders(runner, pending)
        added = time.perf_counter()
        tokens = np.arange(num_reqs, dtype=np.int32) + step
        output = types.SimpleNamespace(wait_seconds=0.0)
        XlaGpuModelRunner._fill_placeholders(runner, output, placeholders, tokens)
        filled = time.perf_counter()
        totals["update_cached"] += updated - start
        totals["add_placeholders"] += added - updated
        totals["fill_placeholders"] += filled - added
    # Request 0 is row 0 of every step, so its tokens were 0, 1, 2, ...: a check that the
    # loops did their work.
    assert runner.requests["req-0"].output_token_ids == list(range(steps)), "history not filled"
    return {k: v / steps * 1e3 for k, v in totals.items()}


def main() -> None:
    args = parse_args()
    runs = [run_once(args.num_reqs, args.prompt_len, args.steps) for _ in range(args.repeats)]
    result = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    result["total"] = sum(result.values())
    print(f"runner bookkeeping, {args.num_reqs} requests ({vllm_xla_gpu.__file__}):")
    for name, ms in result.items():
        print(f"  {name:>18} {ms:7.3f} ms per step")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "ms_per_step": result}, f, indent=1)


if __name__ == "__main__":
    main()
