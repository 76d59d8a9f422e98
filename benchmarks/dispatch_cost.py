"""Host time of one jitted call, built up piece by piece to the shape of a model step.

At batch 1 the host sets the pace (a model step and a sample step are two jitted calls, and
the device finishes each in less time than the host takes to issue them). This times the host
side of a call with the device idle, adding one ingredient of a runner step at a time:

* ``1 device arg``: a tiny program on one device array (the floor of a call);
* ``+ numpy arg``: one fresh 4 KiB numpy buffer as well (the packed step inputs);
* ``+ N weights``: ``N`` device arrays besides (a model's parameters, one leaf each), in a
  tuple, as the runner hands its model step the weights;
* ``+ N weights, a dict``: the same arrays in a dict keyed by names like a model's, which JAX
  flattens, its keys sorted, at every call;
* ``+ donated cache``: a donated array the program updates in place (the KV cache);
* ``+ C donated caches``: ``--caches`` such arrays, as a model step donates one KV cache per
  layer (each updated in place, so also ``C`` tiny kernels);
* ``+ K kernels``: a program of about ``K`` kernels (one matmul and one tanh per weight, twice),
  which XLA runs as a CUDA graph;
* ``K kernels, same input``: that program handed the same device input every call, so that no
  buffer it reads moves (the donated cache keeps its address): the graph launch without the
  update XLA makes when an address changed (each call's output is freed before the next, so
  the allocator can hand the next one the same address).

With ``--launches L`` (GPU only), just three programs of ``L`` chained in-place writes of a
K/V row each (checked to write the same cache), to tell the cost of a node kind in XLA's
CUDA graph:

* ``L FFI Triton``: the attention wrapper's KV write (``triton_gpu.write_kv_cache``, the Triton
  kernel through jaxlib's FFI handler, as every layer launches it), which XLA records by stream
  capture as a child-graph node;
* ``L XLA Triton``: the same kernel handed to XLA's own Triton custom call
  (``xla_triton_call.py``), which XLA compiles and records as a plain kernel node;
* ``L XLA updates``: XLA's own dynamic-update-slice kernels.

Then the ``+ K kernels`` call with the device busy, as in serving, where the host launches step
N+1 while step N still runs:

* ``after a long program``: issued right after a program of about ``--busy-ms`` of device work
  that shares no buffer with it;
* ``back to back``: issued right after the same call, whose output cache it takes (donated);
* ``back to back, two copies``: the same, with the two calls made by two loaded copies of the
  program (``runner/precompile.py``, ``loaded_copies``), so the second does not update and
  launch the CUDA graph that is still running.

If XLA's runtime waited for the device anywhere in a call, these would take about the busy
time longer than ``+ K kernels``.

``XLA_FLAGS`` reaches XLA as usual, so a flag's effect (``--xla_gpu_command_buffer_update_mode``,
say) is one more run of this script with it set.

Prints a table of the median host milliseconds per call and writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from vllm_xla_gpu.runner.precompile import loaded_copies
from vllm_xla_gpu.worker import _add_default_xla_flags


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=int, default=128, help="device arrays besides the input")
    p.add_argument("--caches", type=int, default=16, help="donated arrays (one per layer)")
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--launches", type=int, help="only the Triton-against-XLA node comparison")
    p.add_argument("--busy-ms", type=float, default=5.0, help="device time of the long program")
    p.add_argument("--json")
    return p.parse_args()


def host_ms(fn, make_args, calls: int) -> float:
    """Median host time of ``fn(*make_args())`` with the device idle before each call."""
    jax.block_until_ready(fn(*make_args()))  # compiles
    times = []
    for _ in range(calls):
        args = make_args()
        start = time.perf_counter()
        out = fn(*args)
        times.append((time.perf_counter() - start) * 1e3)
        jax.block_until_ready(out)
        # Freed before the next call, so that the next output can take the same address (with
        # the same input, then, no buffer of the graph moves and XLA has nothing to update).
        del out
    return statistics.median(times)


def host_ms_busy(fn, make_args, before, calls: int) -> float:
    """Median host time of ``fn(*make_args())`` issued right after ``before()`` (not timed),
    which leaves the device busy."""
    jax.block_until_ready(fn(*make_args()))
    times = []
    for _ in range(calls):
        first = before()
        args = make_args()
        start = time.perf_counter()
        out = fn(*args)
        times.append((time.perf_counter() - start) * 1e3)
        jax.block_until_ready(out)  # one stream: ``first`` is done too (its cache may be donated)
        del first, out
    return statistics.median(times)


def long_program(busy_ms: float):
    """A jitted function of no arguments that keeps the device busy about ``busy_ms``
    (bf16 4096-square matmuls, about 0.14 ms each on an H100)."""
    a = jnp.full((4096, 4096), 0.01, jnp.bfloat16)
    n = max(1, round(busy_ms / 0.14))

    def body(x):
        for _ in range(n):
            x = jnp.tanh(x @ a)
        return x

    fn = jax.jit(body)
    return lambda: fn(a)


def cases(num_weights: int, num_caches: int) -> dict:
    """Each case: (jitted function, a function making its arguments); under ``two copies``,
    the kernels program's two loaded copies instead of one function."""
    rng = np.random.default_rng(0)
    x = jnp.ones((64, 64), jnp.float32)
    weights = [
        jnp.asarray(rng.standard_normal((64, 64)) / 8, jnp.float32) for _ in range(num_weights)
    ]
    cache = [jnp.zeros((1 << 20,), jnp.float32)]
    caches = [[jnp.zeros((1 << 20,), jnp.float32) for _ in range(num_caches)]]

    def words():
        return rng.integers(0, 100, 1024, dtype=np.uint32)

    fixed_words = jax.device_put(words())
    named = {f"model.layers.{i // 9}.weight_{i}": v for i, v in enumerate(weights)}

    def small(x, w):
        return x + w[:64].astype(jnp.float32)[:, None]

    def with_weights(x, w, ws):
        return small(x, w) + sum(v[0, 0] for v in ws)

    def with_cache(x, w, ws, cache):
        return with_weights(x, w, ws), cache.at[w[0]].set(1.0)

    def with_caches(x, w, ws, caches):
        return with_weights(x, w, ws), [c.at[w[0]].set(1.0) for c in caches]

    def keep_all(out_and_caches):
        caches[0] = out_and_caches[1]
        return out_and_caches

    def kernels(x, w, ws, cache):
        y = small(x, w)
        for v in ws + ws:
            y = jnp.tanh(y @ v)
        return y, cache.at[w[0]].set(1.0)

    def keep(cache_and_out):
        cache[0] = cache_and_out[1]
        return cache_and_out

    donate = {"donate_argnums": (3,)}
    f_cache, f_kernels = jax.jit(with_cache, **donate), jax.jit(kernels, **donate)
    f_caches = jax.jit(with_caches, **donate)

    def kernel_args():
        return x, words(), weights, cache[0]

    # The kernels program loaded twice, as the runner loads its model steps (not timed alone).
    # XLA:CPU's executables do not round-trip: there both calls take the one program.
    device = jax.devices()[0]
    compiled = f_kernels.lower(*kernel_args()).compile()
    copies = loaded_copies(compiled, 2 if device.platform == "gpu" else 1, device)
    first, second = copies[0], copies[-1]
    two_copies = [lambda *a: keep(first(*a)), lambda *a: keep(second(*a))]
    return {
        "two copies": (two_copies, kernel_args),
        "1 device arg": (jax.jit(lambda x: x + 1), lambda: (x,)),
        "+ numpy arg": (jax.jit(small), lambda: (x, words())),
        f"+ {num_weights} weights": (jax.jit(with_weights), lambda: (x, words(), tuple(weights))),
        f"+ {num_weights} weights, a dict": (
            jax.jit(lambda x, w, ws: with_weights(x, w, list(ws.values()))),
            lambda: (x, words(), named),
        ),
        "+ donated cache": (lambda *a: keep(f_cache(*a)), lambda: (x, words(), weights, cache[0])),
        f"+ {num_caches} donated caches": (
            lambda *a: keep_all(f_caches(*a)),
            lambda: (x, words(), weights, caches[0]),
        ),
        f"+ {4 * num_weights} kernels": (lambda *a: keep(f_kernels(*a)), kernel_args),
        f"{4 * num_weights} kernels, same input": (
            lambda *a: keep(f_kernels(*a)),
            lambda: (x, fixed_words, weights, cache[0]),
        ),
    }


def launch_cases(num_launches: int) -> dict:
    """Three programs of ``num_launches`` in-place K/V row writes to a small cache, each the
    same writes: the Triton KV write through jaxlib's FFI handler (as serving launches it), the
    same kernel through XLA's own Triton custom call (``xla_triton_call.py``), and XLA's own
    dynamic-update-slice kernels."""
    from xla_triton_call import xla_triton_call

    from vllm_xla_gpu.ops.ragged_paged_attention import triton_gpu

    shape = (2, 64, 16, 1, 64)  # [2, blocks, block, kv heads, dim]: 1024 slots of 64 values
    cache = [jnp.zeros(shape, jnp.bfloat16)]
    k = jnp.ones((1, 1, 64), jnp.bfloat16)

    def packed(k):  # pack_qkv with no query heads: the K and V rows of one token
        return triton_gpu.pack_qkv(jnp.zeros((1, 0, 64), k.dtype), k, k, k.dtype)

    def ffi_writes(k, slots, cache):
        qkv = packed(k)
        for i in range(num_launches):
            cache = triton_gpu.write_kv_cache(qkv, cache, slots + i)
        return cache

    def xla_triton_writes(k, slots, cache):
        qkv = packed(k)
        for i in range(num_launches):
            cache = xla_triton_call(
                triton_gpu.write_kv_kernel,
                *(qkv, slots + i, cache),
                out_shape=jax.ShapeDtypeStruct(shape, jnp.bfloat16),
                grid=(1,),
                input_output_aliases={2: 0},
                ROW=64,
                ROW_PAD=64,
                NUM_SLOTS=1024,
                QKV_ROW=128,
            )
        return cache

    def xla_writes(k, slots, cache):
        rows = cache.reshape(2, 1024, 1, 64)
        kv = jnp.stack([k, k])  # [2, 1, 1, 64]: the K and V rows of one slot
        for i in range(num_launches):
            rows = jax.lax.dynamic_update_slice(rows, kv, (0, slots[0] + i, 0, 0))
        return rows.reshape(shape)

    def keep(new):
        cache[0] = new
        return new

    def args():
        return k, jnp.asarray(np.zeros(1, np.int32)), cache[0]

    cases = {}
    for name, fn in (
        (f"{num_launches} FFI Triton", ffi_writes),
        (f"{num_launches} XLA Triton", xla_triton_writes),
        (f"{num_launches} XLA updates", xla_writes),
    ):
        jitted = jax.jit(fn, donate_argnums=(2,))
        # Same writes: from a zero cache, rows 0 .. num_launches - 1 hold ones, K and V.
        written = np.asarray(jitted(k, jnp.zeros(1, jnp.int32), jnp.zeros(shape, jnp.bfloat16)))
        rows = written.reshape(2, 1024, 64)
        if not ((rows[:, :num_launches] == 1).all() and (rows[:, num_launches:] == 0).all()):
            raise AssertionError(f"{name}: not the expected cache")
        cases[name] = (lambda *a, f=jitted: keep(f(*a)), args)
    return cases


def main() -> None:
    args = parse_args()
    _add_default_xla_flags()
    device = jax.devices()[0]
    flags = os.environ.get("XLA_FLAGS", "")
    print(f"dispatch cost on {device.device_kind}, jax {jax.__version__}, XLA_FLAGS={flags!r}")
    rows = {}
    if args.launches:
        for name, (fn, make_args) in launch_cases(args.launches).items():
            rows[name] = host_ms(fn, make_args, args.calls)
            print(f"{name:>22} {rows[name]:8.3f} ms host per call")
        write_json(args.json, device, flags, rows)
        return
    all_cases = cases(args.weights, args.caches)
    copies, copies_args = all_cases.pop("two copies")
    for name, (fn, make_args) in all_cases.items():
        rows[name] = host_ms(fn, make_args, args.calls)
        print(f"{name:>22} {rows[name]:8.3f} ms host per call")
    fn, make_args = all_cases[f"+ {4 * args.weights} kernels"]
    busy = long_program(args.busy_ms)
    jax.block_until_ready(busy())  # compiles it
    start = time.perf_counter()
    jax.block_until_ready(busy())
    rows["long program, launch to result"] = (time.perf_counter() - start) * 1e3
    print(f"(the long program: {rows['long program, launch to result']:.2f} ms, launch to result)")
    for name, before in (
        ("after a long program", busy),
        ("back to back", lambda: fn(*make_args())),
    ):
        rows[name] = host_ms_busy(fn, make_args, before, args.calls)
        print(f"{name:>22} {rows[name]:8.3f} ms host per call")
    first, second = copies
    rows["back to back, two copies"] = host_ms_busy(
        second, copies_args, lambda: first(*copies_args()), args.calls
    )
    print(f"back to back, two copies {rows['back to back, two copies']:8.3f} ms host per call")
    write_json(args.json, device, flags, rows)


def write_json(path: str | None, device, flags: str, rows: dict) -> None:
    """The table as JSON at ``path`` (nothing without one)."""
    if path:
        with open(path, "w") as f:
            json.dump(
                {"device": device.device_kind, "xla_flags": flags, "host_ms": rows}, f, indent=1
            )


if __name__ == "__main__":
    main()
