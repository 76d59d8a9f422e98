"""Can the host's Python run while a jitted call is being launched in another thread?

At batch 1 a step's host time is mostly XLA's runtime launching the step's CUDA graph (about
1.1 ms of host time for Llama-3.2-1B's model step on the H100, docs/performance.md) plus Python
(vLLM's scheduler and the runner, about 0.6 ms). The two are in series today. If the jitted call
releases the GIL while XLA launches, a launch thread could overlap them. This measures it with
the model-step-shaped program of ``dispatch_cost.py`` (a numpy input, weights, a donated cache,
a CUDA graph of about ``4 * --weights`` kernels) and a stretch of pure-Python work
(``--python-ms``, dictionary and list operations like the runner's bookkeeping):

* ``call``: the jitted call alone (host time until it returns);
* ``python``: the Python work alone;
* ``in series``: the call, then the Python work, in one thread;
* ``launch thread``: the call submitted to a worker thread, the Python work in this one, then
  waiting for the call to return, with Python's default GIL switch interval (5 ms) and with
  the runner's (``runner/launch.py``, 0.1 ms).

The worker thread needs the GIL to start the call (jax converts the arguments under it) and
releases it during XLA's launch. With a long switch interval it may get the GIL only when this
thread's Python work is over, and then nothing overlaps; with a short one, ``launch thread``
comes near ``max(call, python)``. The device is idle before each iteration (its results are
waited for after the timed part).

Last, how much of a call leaves the GIL free: for ``--spin-s`` seconds a second thread counts
in a Python loop while this one makes calls (0.1 ms switch interval). ``call beside a spinner``
is the host time per call then (timed like ``call``); ``GIL free during a call`` is how far the
spinner counted during the calls, against its pace while this thread sleeps. Only the part of a
call that runs without the GIL can overlap the runner's Python on a launch thread. Prints a
table of median host milliseconds and writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import sys
import threading
import time

import jax
from dispatch_cost import cases, host_ms

from vllm_xla_gpu.runner.launch import SWITCH_INTERVAL_S
from vllm_xla_gpu.worker import _add_default_xla_flags


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=int, default=128, help="device arrays besides the input")
    p.add_argument("--python-ms", type=float, default=1.0, help="length of the Python work")
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--spin-s", type=float, default=2.0, help="length of the GIL measurement")
    p.add_argument("--json")
    return p.parse_args()


def python_work(loops: int) -> int:
    """Pure-Python bookkeeping of the runner's kind: dictionary lookups, list appends."""
    table, out = {i: [i] for i in range(64)}, 0
    for i in range(loops):
        entry = table[i & 63]
        entry.append(i)
        out += len(entry)
        del entry[1:]
    return out


def loops_for(target_ms: float) -> int:
    """How many ``python_work`` loops take about ``target_ms`` on this host."""
    start = time.perf_counter()
    python_work(100_000)
    per_loop = (time.perf_counter() - start) / 100_000
    return max(1, int(target_ms / 1e3 / per_loop))


def beside_spinner(fn, make_args, seconds: float) -> tuple[float, float]:
    """Time ``fn(*make_args())`` as :func:`dispatch_cost.host_ms` does, repeatedly for
    ``seconds``, while another thread counts in a Python loop.

    Returns:
        (median host ms per call, the spinner's counts per second spent inside the calls).
    """
    count, stop = [0], threading.Event()

    def spin() -> None:
        while not stop.is_set():
            count[0] += 1

    thread = threading.Thread(target=spin)
    thread.start()
    times, in_calls, begin = [], 0, time.perf_counter()
    while time.perf_counter() - begin < seconds:
        call_args = make_args()
        before, start = count[0], time.perf_counter()
        out = fn(*call_args)
        times.append(time.perf_counter() - start)
        in_calls += count[0] - before
        jax.block_until_ready(out)
        del out
    stop.set()
    thread.join()
    return statistics.median(times) * 1e3, in_calls / max(sum(times), 1e-9)


def main() -> None:
    args = parse_args()
    _add_default_xla_flags()
    device = jax.devices()[0]
    fn, make_args = cases(args.weights)[f"+ {4 * args.weights} kernels"]
    loops = loops_for(args.python_ms)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def in_series():
        out = fn(*make_args())
        python_work(loops)
        return out

    def launch_thread():
        future = pool.submit(fn, *make_args())
        python_work(loops)
        return future.result()

    rows = {
        "call": host_ms(lambda: fn(*make_args()), tuple, args.calls),
        "python": host_ms(lambda: python_work(loops), tuple, args.calls),
        "in series": host_ms(in_series, tuple, args.calls),
    }
    default_interval = sys.getswitchinterval()
    for name, interval in [
        ("launch thread", default_interval),
        ("+ short switch", SWITCH_INTERVAL_S),
    ]:
        sys.setswitchinterval(interval)
        rows[name] = host_ms(launch_thread, tuple, args.calls)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    _, idle_rate = beside_spinner(lambda: time.sleep(1e-3), tuple, args.spin_s)
    rows["call beside a spinner"], call_rate = beside_spinner(fn, make_args, args.spin_s)
    gil_free = call_rate / idle_rate
    sys.setswitchinterval(default_interval)
    pool.shutdown()
    print(f"launch thread on {device.device_kind}, jax {jax.__version__}")
    for name, ms in rows.items():
        print(f"{name:>21} {ms:8.3f} ms host")
    print(f"GIL free during a call: {gil_free:.0%} (the spinner's pace then, against idle)")
    hidden = rows["in series"] - min(rows["launch thread"], rows["+ short switch"])
    print(
        f"hidden by the thread: {hidden:.3f} ms of min(call, python) = "
        f"{min(rows['call'], rows['python']):.3f} ms"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "device": device.device_kind,
                    "xla_flags": os.environ.get("XLA_FLAGS", ""),
                    "python_ms_target": args.python_ms,
                    "host_ms": rows,
                    "gil_free_during_call": gil_free,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
