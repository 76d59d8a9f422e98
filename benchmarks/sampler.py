"""Time of the jitted sampler per step, by sampling option and request bucket.

Runs ``sample`` (``sample/sampler.py``) as the runner does: metadata staged on the host by
``SamplingInputs`` from real ``SamplingParams``, one jitted program per request bucket. Each case
sets every row alike: greedy, temperature only, top-k/top-p (kept sets inside the candidate
groups), a wide nucleus (top-p near 1 on flat logits: the full-sort fallback), and greedy with
20 logprobs. Calls are issued back to back and timed together, so a conditional that waits on
the host (``sampler_control_flow.py``) shows as time, as it would in serving. Prints a table and
writes JSON (``--json``); the worker's default XLA flags apply unless ``XLA_FLAGS`` sets them.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from vllm_xla_gpu.worker import _add_default_xla_flags

CASES = {
    "greedy": ({"temperature": 0.0}, 4.0),
    "temperature": ({"temperature": 1.0}, 4.0),
    "top-k/top-p": ({"temperature": 1.0, "top_k": 50, "top_p": 0.9}, 4.0),
    "full sort": ({"temperature": 1.0, "top_p": 0.999}, 0.01),
    "logprobs": ({"temperature": 0.0, "logprobs": 20}, 4.0),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[8, 64, 256], help="request buckets")
    p.add_argument("--vocab-size", type=int, default=128256)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--json")
    return p.parse_args()


def time_case(rows: int, vocab_size: int, params: dict, scale: float, iters: int) -> float:
    """Milliseconds per ``sample`` call for ``rows`` rows sampled with ``params``; logits are
    normal with standard deviation ``scale`` (small: a flat distribution)."""
    import jax
    import numpy as np
    from vllm import SamplingParams

    from vllm_xla_gpu.sample.metadata import SamplingInputs, TokenHistory
    from vllm_xla_gpu.sample.sampler import sample

    inputs = SamplingInputs(rows, vocab_size, 16)
    for row in range(rows):
        inputs.set_request(row, SamplingParams(**params), seed=row)
    history = TokenHistory(
        np.ones((rows, 16), np.int32), np.full(rows, 8, np.int32), np.full(rows, 9, np.int32)
    )
    md = inputs.to_metadata(np.arange(rows, dtype=np.int32), history, rows)
    rng = np.random.default_rng(0)
    logits = jax.device_put((rng.standard_normal((rows, vocab_size)) * scale).astype(np.float32))
    step = jax.jit(sample)
    jax.block_until_ready(step(logits, md))
    start = time.perf_counter()
    for _ in range(iters):
        out = step(logits, md)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / iters * 1e3


def main() -> None:
    args = parse_args()
    _add_default_xla_flags()
    import jax

    device = jax.devices()[0]
    print(
        f"sampler on {device.device_kind}, vocab {args.vocab_size}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )
    results: dict[str, dict[int, float]] = {}
    for name, (params, scale) in CASES.items():
        results[name] = {
            r: time_case(r, args.vocab_size, params, scale, args.iters) for r in args.rows
        }
    print(f"\n{'ms per step':<14}" + "".join(f"{r:>10} rows" for r in args.rows))
    for name, times in results.items():
        print(f"{name:<14}" + "".join(f"{times[r]:>15.3f}" for r in args.rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "device": device.device_kind,
                    "vocab_size": args.vocab_size,
                    "xla_flags": os.environ.get("XLA_FLAGS", ""),
                    "ms_per_step": results,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
