"""Host time of one call of the serving model step, outside serving, case by case.

In serving, the jitted model-step call of Llama-3.2-1B at batch 1 holds its thread for 1.0-1.4
ms (the launch chain's ``call`` link, ``throughput.py --latency``), while ``dispatch_cost.py``'s
synthetic program of 512 kernels costs 0.4 ms. This starts the engine in-process, then (through
``collective_rpc``, in the engine core's thread) calls the runner's own loaded program of its
smallest token bucket on its warm-up inputs, the way the launch thread calls it
(``_call_model_step``: the live KV caches and logits buffer, donated and replaced), in these
cases:

* ``idle``: the device idle before each call (each call's outputs are waited for and freed);
* ``inputs on the device``: the step inputs moved to the device before the timed call, not by
  jit's dispatch inside it;
* ``back to back``: calls issued one after another, the device still running the previous one,
  as in serving (each call's outputs alive until the next returns, or dropped before it);
* ``busy Python thread``: idle device, while another Python thread runs pure Python, as vLLM's
  engine does beside the launch thread (the call must take the GIL back wherever jax let it
  go), at the process's switch interval or the one named;
* ``arguments only``: a program of one tiny kernel handed the same arguments (the weights, the
  caches, the step inputs), so jax's and PjRt's per-argument work alone; ``weights only``: the
  weights and one small array.

Then it traces ``--trace-calls`` idle (or ``--trace-back-to-back``) calls with ``jax.profiler``
and sums XLA's host-side events per call (``CommonPjRtLoadedExecutable::Execute``,
``cuGraphLaunch``, the graph update, ``Thunks::Initialize``...), to split the call.
``XLA_FLAGS`` reaches XLA as usual, so a flag's effect (``--xla_gpu_enable_command_buffer=``:
no CUDA graphs) is one more run.

Measured on an H200 (docs/performance.md, 2026-11-28, tenth session): Llama-3.2-1B's call took
0.7-1.0 ms idle, 0.3-0.46 ms more back to back and 0.8-1.2 ms more beside a busy Python thread.

Prints a table of median host milliseconds per call and writes JSON (``--json``):

    python benchmarks/step_call.py --arch llama-3.2-1b --load-format dummy --json out.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import common  # noqa: E402
import throughput  # noqa: E402  (its checkpoint and engine set-up)
from architectures import ARCHITECTURES  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_model_arguments(p, sorted(ARCHITECTURES), max_model_len=1024, max_tokens=512)
    p.add_argument("--calls", type=int, default=200, help="timed calls per case")
    p.add_argument("--trace-calls", type=int, default=30, help="0: no trace")
    p.add_argument(
        "--trace-back-to-back", action="store_true", help="trace back-to-back calls, not idle ones"
    )
    p.add_argument("--json")
    common.add_engine_arguments(p)
    return p.parse_args()


def _median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def _idle_each(prepare, block, calls: int) -> float:
    """Median host ms of ``call()``, the device idle before each, where ``call = prepare()``
    is made afresh (untimed) before each."""
    times = []
    for _ in range(calls):
        call = prepare()
        start = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - start)
        block(out)
        del out  # as in serving, no output outlives the next call (its buffers may be reused)
    return _median_ms(times)


def _idle(call, block, calls: int) -> float:
    """``_idle_each`` of one call made once."""
    return _idle_each(lambda: call, block, calls)


def _back_to_back(call, block, calls: int, keep_outputs: bool = True) -> float:
    """Calls one after another; with ``keep_outputs`` False each call's outputs are dropped
    before the next call (the device may still be writing them), so the allocator can hand the
    next call's outputs the same addresses."""
    times, out = [], None
    for _ in range(calls):
        if not keep_outputs:
            out = None
        start = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - start)
    block(out)
    return _median_ms(times)


def _with_busy_thread(prepare, block, calls: int, interval_s: float | None = None) -> float:
    """``_idle_each`` while another thread runs pure Python, at the switch interval given."""
    stop = threading.Event()
    before = sys.getswitchinterval()
    if interval_s is not None:
        sys.setswitchinterval(interval_s)

    def spin() -> None:  # pure Python, as vLLM's scheduler is
        x = 0
        while not stop.is_set():
            for _ in range(1000):
                x += 1

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        return _idle_each(prepare, block, calls)
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(before)


def host_events_per_call(events: list[dict], calls: int) -> dict[str, float]:
    """Host microseconds per call of XLA's and the CUDA driver's runtime events, by name (the
    20 largest): events of a process whose name mentions a GPU (the device's timeline) and the
    Python tracer's events (``$file:line name``, or a ``.py:`` location) are left out."""
    names = {
        e["pid"]: e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    totals: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("ph") != "X" or "GPU" in names.get(e.get("pid"), ""):
            continue
        name = e["name"]
        if name.startswith("$") or ".py:" in name:
            continue
        totals[name[:70]] += e["dur"]
    top = sorted(totals.items(), key=lambda kv: -kv[1])[:20]
    return {name: round(us / calls, 1) for name, us in top}


def measure(
    worker, calls: int, trace_calls: int, trace_dir: str, trace_back_to_back: bool = False
) -> dict:
    """Runs in the engine core (``collective_rpc``): every case on the runner's own program."""
    import jax
    import numpy as np

    runner = worker.model_runner
    warm_up = runner._model_step_call(runner.token_buckets[0])
    prev, words, big, packing = warm_up.args[3:]

    def host_inputs():  # fresh each time, as each serving step packs its own
        return np.array(words), [np.array(b) for b in big]

    def device_inputs():  # moved before the timed call
        return jax.block_until_ready(jax.device_put(host_inputs(), runner.device))

    def step(inputs):
        return lambda: runner._call_model_step(prev, *inputs(), packing)

    def block(out) -> None:
        jax.block_until_ready(out.logits)

    for _ in range(5):
        block(step(host_inputs)())
    tiny = jax.jit(lambda p, k, lg, pv, w, b: pv + w[0].astype(pv.dtype))
    weights = jax.jit(lambda p, pv: pv + 1)

    def args_only(inputs):  # the live caches: the model step donates and replaces them
        return lambda: tiny(runner.params, runner.kv_caches, runner.logits_buffer, prev, *inputs())

    def on_device(make):  # a call whose inputs were moved before it (untimed)
        moved = device_inputs()
        return make(lambda: moved)

    def weights_only():
        return weights(runner.params, prev)

    def busy(interval_s=None, prepare=lambda: step(host_inputs)):
        return _with_busy_thread(prepare, block, calls, interval_s)

    cases = {
        "idle": _idle(step(host_inputs), block, calls),
        "idle, inputs on the device": _idle_each(lambda: on_device(step), block, calls),
        "back to back": _back_to_back(step(host_inputs), block, calls),
        "back to back, outputs dropped first": _back_to_back(
            step(host_inputs), block, calls, keep_outputs=False
        ),
        "busy Python thread": busy(),
        "busy Python thread, inputs on the device": busy(prepare=lambda: on_device(step)),
        "busy Python thread, 0.02 ms switch interval": busy(2e-5),
        "busy Python thread, 1 ms switch interval": busy(1e-3),
        "arguments only": _idle(args_only(host_inputs), jax.block_until_ready, calls),
        "arguments only, inputs on the device": _idle_each(
            lambda: on_device(args_only), jax.block_until_ready, calls
        ),
        "weights only": _idle(weights_only, jax.block_until_ready, calls),
        "idle, again": _idle(step(host_inputs), block, calls),
    }
    arrays = (runner.params, runner.kv_caches, runner.logits_buffer, words, big)
    result = {
        "bucket": runner.token_buckets[0],
        "arguments": len(jax.tree.leaves(arrays)) + 1,  # and the previous step's ids
        "switch_interval_ms": sys.getswitchinterval() * 1e3,
        "cases": list(cases),
        **cases,
    }
    if trace_calls:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            timed = _back_to_back if trace_back_to_back else _idle
            timed(step(host_inputs), block, trace_calls)
        trace = next(pathlib.Path(trace_dir).rglob("perfetto_trace.json.gz"))
        events = common.read_trace(trace)
        result["traced_host_us_per_call"] = host_events_per_call(events, trace_calls)
    return result


def main() -> None:
    args = parse_args()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    import numpy as np

    model, name = throughput.prepare_model(args)
    llm, engine_s = throughput.start_engine(args, model)
    vocab = common.read_config(model)["vocab_size"]
    prompts = common.random_prompts(np.random.default_rng(0), 1, 128, vocab)
    common.timed_generate(llm, prompts, 32)  # warm the host path
    trace_dir = tempfile.mkdtemp(prefix="vxg-step-call-")
    result = llm.collective_rpc(
        measure, args=(args.calls, args.trace_calls, trace_dir, args.trace_back_to_back)
    )[0]
    result["traced_case"] = "back to back" if args.trace_back_to_back else "idle"
    result.update(
        model=name,
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        engine_s=engine_s,
        versions=common.versions(),
        date=time.strftime("%Y-%m-%d %H:%M"),
        argv=sys.argv[1:],
    )
    print(
        f"\n{name}, bucket {result['bucket']}, {result['arguments']} arguments, "
        f"XLA_FLAGS={result['xla_flags']!r}"
    )
    print("| case | host ms per call (median) |\n|---|---|")
    for case in result["cases"]:
        print(f"| {case} | {result[case]:.3f} |")
    for event, us in result.get("traced_host_us_per_call", {}).items():
        print(f"  traced {us:9.1f} us/call  {event}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown, which has hung for minutes on the GPU machine
