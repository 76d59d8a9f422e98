"""Does handing a step's host inputs to jit wait for the step already running on the device?

Async scheduling only pays if the host can launch step N+1 while step N runs. This measures
the host time of one small jitted call (the shape of a runner step: a device array plus a
freshly built host buffer) issued right after a long device computation was queued, for each
way of moving the host buffer:

* ``numpy``: the numpy array straight to jit (what the runner does);
* ``device_put``: ``jax.device_put`` first, then the call;
* ``pinned``: ``jax.device_put`` to the device's pinned host memory, and the copy to device
  memory inside the program (XLA issues it on the compute stream, in order with the step).

A path whose host time is close to the busy computation's time waited for it. Each input is
rebuilt per call and the previous one dropped, as in serving, so the allocator may hand its
memory to the next transfer. Prints a table and writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes-kib", type=int, nargs="+", default=[4, 256])
    p.add_argument("--busy-ms", type=float, default=50.0, help="target time of the busy program")
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--json")
    return p.parse_args()


def busy_program(target_ms: float):
    """A jitted loop of matmuls and its argument, sized to run about ``target_ms``."""
    x = jnp.ones((4096, 4096), jnp.bfloat16) * 1e-3

    def make(n):
        f = jax.jit(lambda y: jax.lax.fori_loop(0, n, lambda _, z: jnp.tanh(z @ z), y))
        f(x).block_until_ready()
        return f

    f = make(8)
    t = time.perf_counter()
    f(x).block_until_ready()
    per_iter = (time.perf_counter() - t) / 8
    f = make(max(1, int(target_ms / 1e3 / per_iter)))
    t = time.perf_counter()
    f(x).block_until_ready()
    return f, x, (time.perf_counter() - t) * 1e3


def paths(device):
    """Each path: a function (state, host buffer) -> result, jitted once."""
    step = jax.jit(lambda s, w: s + w[: s.shape[0]].astype(jnp.float32).sum())
    pinned = jax.sharding.SingleDeviceSharding(device, memory_kind="pinned_host")
    on_device = jax.sharding.SingleDeviceSharding(device, memory_kind="device")

    @jax.jit
    def pinned_step(s, w):
        return step(s, jax.device_put(w, on_device))

    return {
        "numpy": lambda s, w: step(s, w),
        "device_put": lambda s, w: step(s, jax.device_put(w, device)),
        "pinned": lambda s, w: pinned_step(s, jax.device_put(w, pinned)),
    }


def measure(fn, busy, busy_arg, state, words: int, repeats: int) -> list[float]:
    rng = np.random.default_rng(0)
    times = []
    for _ in range(repeats + 1):
        pending = busy(busy_arg)
        host = rng.integers(0, 1 << 20, words, dtype=np.uint32)  # a fresh buffer per call
        t = time.perf_counter()
        out = fn(state, host)
        times.append((time.perf_counter() - t) * 1e3)
        del host
        pending.block_until_ready()
        out.block_until_ready()
    return times[1:]  # the first call compiles


def main() -> None:
    args = parse_args()
    device = jax.devices()[0]
    busy, busy_arg, busy_ms = busy_program(args.busy_ms)
    state = jnp.zeros((256,), jnp.float32)
    rows = []
    print(f"device {device.device_kind}, jax {jax.__version__}; busy program {busy_ms:.1f} ms")
    print(f"{'path':>11} {'KiB':>6} {'host ms (median)':>17} {'max':>8}")
    for size in args.sizes_kib:
        for name, fn in paths(device).items():
            try:
                t = measure(fn, busy, busy_arg, state, size * 256, args.repeats)
            except Exception as e:  # a memory kind this device lacks, for instance
                print(f"{name:>11} {size:>6} failed: {type(e).__name__}: {e}"[:200])
                continue
            rows.append({"path": name, "kib": size, "host_ms": t, "busy_ms": busy_ms})
            print(f"{name:>11} {size:>6} {statistics.median(t):>17.3f} {max(t):>8.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device.device_kind, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
