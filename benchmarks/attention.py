"""Ragged paged attention on the GPU: each implementation against the device's own limits.

Measures, on JAX's default device:

* the limits: copy bandwidth (``x + 1`` over 2 GiB: bytes read + written per second) and the
  bf16 matmul rate (8192^3, FLOP/s);
* **decode**: ``--decode-batch`` sequences (default 64) with contexts drawn uniformly from
  ``--decode-contexts`` (default 2k-8k), one new token each; ``--heads`` query heads, KV heads
  and head_dim (default 32 / 8 / 128, Llama-3.1-8B's; Llama-3.2-1B's are 32 / 8 / 64), bf16,
  pages of 16 in random order. Reports KV bytes read per second (the real KV of
  every sequence, K and V; padding excluded) and its share of the copy bandwidth;
* **prefill**: one ``--prefill-len``-token prompt (default 8192), causal; reports FLOP/s
  (``4 * heads * head_dim * T (T + 1) / 2``) and its share of the matmul rate;
* **sweep**: decode step time at fixed contexts (``--sweep``), for the step-time plot.

Every call gets its own random q/k/v (the cache is written by each call, donated and reused);
a timed round launches ``CALLS_PER_ROUND`` calls back to back and waits for the last, so host
dispatch overlaps the GPU as in serving; the median per-call time over ``--repeats`` rounds is
reported. The op timed is the
whole ``ragged_paged_attention`` (K/V write + attention), as a model step runs it. Prints a
table and writes JSON; ``benchmarks/plot_attention.py`` turns the JSON into a PNG:

    python benchmarks/attention.py --impls triton reference --json attention.json
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from vllm_xla_gpu.ops.attention_metadata import AttentionMetadata
from vllm_xla_gpu.ops.ragged_paged_attention import registry
from vllm_xla_gpu.ops.ragged_paged_attention.registry import get_ragged_paged_attention

# Query heads, KV heads and head_dim; --heads overrides them.
NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM = 32, 8, 128
# Calls per timed round, each with its own fresh random q/k/v made before the round.
CALLS_PER_ROUND = 4


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impls", nargs="+", default=["triton", "reference"])
    p.add_argument(
        "--module",
        nargs="*",
        default=[],
        metavar="NAME=MODULE",
        help="register MODULE (importable, the reference's signature) as implementation NAME "
        "first, e.g. an earlier version of a kernel to time beside the current one",
    )
    p.add_argument("--decode-batch", type=int, default=64)
    p.add_argument("--decode-contexts", type=int, nargs=2, default=[2048, 8192])
    p.add_argument("--prefill-len", type=int, default=8192)
    p.add_argument("--sweep", type=int, nargs="*", default=[512, 1024, 2048, 4096, 8192, 16384])
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument(
        "--heads",
        type=int,
        nargs=3,
        default=[NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM],
        metavar=("Q", "KV", "D"),
        help="query heads, KV heads, head_dim",
    )
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--reference-repeats", type=int, default=3, help="the reference is slow")
    p.add_argument(
        "--prefill-configs",
        nargs="*",
        default=[],
        metavar="M,N,WARPS,STAGES",
        help="also time the Triton prefill with these block_m,block_n,num_warps,num_stages",
    )
    p.add_argument(
        "--decode-configs",
        nargs="*",
        default=[],
        metavar="M,N,WARPS,STAGES",
        help="also time the Triton decode with these block_m,block_n,num_warps,num_stages",
    )
    p.add_argument("--json", help="write results here")
    return p.parse_args()


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of ``fn(i)`` over ``repeats`` calls, after one untimed warm-up call."""
    jax.block_until_ready(fn(-1))
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(i))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def copy_bandwidth(repeats: int, elems: int = 1 << 30) -> float:
    """Bytes read plus written per second by elementwise passes over ``elems`` float32 (4 GiB),
    ``CALLS_PER_ROUND`` back to back per timed round."""
    add = jax.jit(lambda x: x + 1, donate_argnums=0)
    state = {"x": jnp.zeros((elems,), jnp.float32)}

    def run(_):
        for _ in range(CALLS_PER_ROUND):
            state["x"] = add(state["x"])
        return state["x"]

    return 2 * state["x"].nbytes * CALLS_PER_ROUND / median_seconds(run, repeats)


def matmul_rate(repeats: int, n: int = 8192) -> float:
    """bf16 matmul FLOP/s at ``n x n x n``."""
    a, b = (jax.random.normal(jax.random.key(i), (n, n), jnp.bfloat16) for i in range(2))
    mm = jax.jit(jnp.matmul)
    return 2 * n**3 / median_seconds(lambda _: mm(a, b), repeats)


def limit_sizes(backend: str) -> dict:
    """Sizes for the limit measurements (smaller on CPU, where this script is only smoke-run)."""
    return (
        {"copy_elems": 1 << 30, "matmul_n": 8192}
        if backend == "gpu"
        else {"copy_elems": 1 << 24, "matmul_n": 512}
    )


class Workload:
    """A paged cache and the metadata of one step: requests with ``context`` old tokens and
    ``q_len`` new ones each, their pages dealt in random order from one pool."""

    def __init__(self, contexts: list[int], q_lens: list[int], page_size: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        seq_lens = np.add(contexts, q_lens)
        pages = -(-seq_lens // page_size)
        num_blocks = int(pages.sum()) + 1  # page 0 is vLLM's null page
        order = rng.permutation(np.arange(1, num_blocks))
        block_tables = np.zeros((len(seq_lens), int(pages.max())), np.int32)
        slots = []
        for r, end in enumerate(np.cumsum(pages)):
            block_tables[r, : pages[r]] = order[end - pages[r] : end]
            pos = np.arange(contexts[r], seq_lens[r])
            slots.append(block_tables[r, pos // page_size] * page_size + pos % page_size)
        self.num_tokens = int(sum(q_lens))
        self.md = AttentionMetadata(
            slot_mapping=jnp.asarray(np.concatenate(slots).astype(np.int32)),
            block_tables=jnp.asarray(block_tables),
            seq_lens=jnp.asarray(seq_lens.astype(np.int32)),
            query_start_loc=jnp.asarray(np.r_[0, np.cumsum(q_lens)].astype(np.int32)),
        )
        shape = (2, num_blocks, page_size, NUM_KV_HEADS, HEAD_DIM)
        self.kv_cache = jax.random.normal(jax.random.key(seed), shape, jnp.bfloat16)
        self.kv_bytes_read = int(seq_lens.sum()) * 2 * NUM_KV_HEADS * HEAD_DIM * 2
        self.causal_flops = sum(
            4 * NUM_Q_HEADS * HEAD_DIM * q * (c + (q + 1) / 2)
            for c, q in zip(contexts, q_lens, strict=True)
        )

    def seconds(self, impl: str, repeats: int, **options) -> float:
        """Median time of one op call (write + attention) with fresh q/k/v each call."""
        fn = get_ragged_paged_attention(impl, jax.default_backend())
        step = jax.jit(
            functools.partial(fn, sm_scale=HEAD_DIM**-0.5, **options),
            donate_argnums=(3,),
            keep_unused=True,
        )
        t = self.num_tokens
        inputs = []
        for i in range(CALLS_PER_ROUND):
            key = jax.random.key(1000 + i)
            q = jax.random.normal(key, (t, NUM_Q_HEADS, HEAD_DIM), jnp.bfloat16)
            k = jax.random.normal(jax.random.fold_in(key, 1), (t, NUM_KV_HEADS, HEAD_DIM), q.dtype)
            v = jax.random.normal(jax.random.fold_in(key, 2), (t, NUM_KV_HEADS, HEAD_DIM), q.dtype)
            inputs.append((q, k, v))
        jax.block_until_ready(inputs)
        times = []
        for _ in range(repeats + 1):  # round 0 compiles and warms up: not timed
            start = time.perf_counter()
            for q, k, v in inputs:  # back to back, so launch overhead hides behind the GPU
                out, self.kv_cache = step(q, k, v, self.kv_cache, self.md)
            jax.block_until_ready(out)
            times.append((time.perf_counter() - start) / len(inputs))
        return statistics.median(times[1:])


def main() -> None:
    global NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM  # one shape per run, read by Workload
    args = parse_args()
    NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM = args.heads
    for spec in args.module:
        name, module = spec.split("=", 1)
        registry.register(name, module, (), auto=False)
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    sizes = limit_sizes(jax.default_backend())
    limits = {"copy_bytes_per_s": copy_bandwidth(args.repeats, sizes["copy_elems"])}
    limits["bf16_matmul_flops"] = matmul_rate(args.repeats, sizes["matmul_n"])
    print(
        f"copy bandwidth {limits['copy_bytes_per_s'] / 1e12:.2f} TB/s, "
        f"bf16 matmul {limits['bf16_matmul_flops'] / 1e12:.0f} TFLOP/s"
    )
    rng = np.random.default_rng(0)
    lo, hi = args.decode_contexts
    decode = Workload(
        rng.integers(lo, hi + 1, args.decode_batch).tolist(),
        [1] * args.decode_batch,
        args.page_size,
    )
    prefill = Workload([0], [args.prefill_len], args.page_size, seed=1)
    decode_name = f"decode {args.decode_batch} seqs, ctx {lo}-{hi}"
    prefill_name = f"prefill {args.prefill_len} tokens"
    copy, matmul = limits["copy_bytes_per_s"], limits["bf16_matmul_flops"]
    rows = []
    for impl in args.impls:
        repeats = args.reference_repeats if impl == "reference" else args.repeats
        t = decode.seconds(impl, repeats)
        rows.append(result_row(impl, decode_name, t, decode.kv_bytes_read, copy, "B/s"))
        t = prefill.seconds(impl, repeats)
        rows.append(result_row(impl, prefill_name, t, prefill.causal_flops, matmul, "FLOP/s"))
    for spec in args.decode_configs:
        t = decode.seconds("triton", args.repeats, config=parse_config(spec, False))
        rows.append(result_row(f"triton {spec}", decode_name, t, decode.kv_bytes_read, copy, "B/s"))
    for spec in args.prefill_configs:
        t = prefill.seconds("triton", args.repeats, config=parse_config(spec, True))
        rows.append(
            result_row(f"triton {spec}", prefill_name, t, prefill.causal_flops, matmul, "FLOP/s")
        )
    sweep = []
    for impl in args.impls:
        if impl == "reference":
            continue  # minutes at long contexts; its decode point above is enough
        for ctx in args.sweep:
            w = Workload([ctx] * args.decode_batch, [1] * args.decode_batch, args.page_size)
            t = w.seconds(impl, args.repeats)
            sweep.append(
                dict(impl=impl, context=ctx, ms=t * 1e3, kv_bytes_per_s=w.kv_bytes_read / t)
            )
            print(
                f"sweep {impl} ctx {ctx}: {t * 1e3:.3f} ms, {w.kv_bytes_read / t / 1e12:.2f} TB/s"
            )
            del w
    result = dict(
        device=device.device_kind,
        jax=jax.__version__,
        python=platform.python_version(),
        shapes=dict(q_heads=NUM_Q_HEADS, kv_heads=NUM_KV_HEADS, head_dim=HEAD_DIM, dtype="bf16"),
        page_size=args.page_size,
        limits=limits,
        rows=rows,
        sweep=sweep,
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


def parse_config(spec: str, read_inputs: bool):
    """``M,N,WARPS,STAGES`` as the Triton kernel's ``KernelConfig`` (query rows per tile ``M``
    cover ``M / group`` tokens of one request); ``read_inputs`` as ``kernel_config`` sets it
    for prefill (True) and decode (False) steps."""
    from vllm_xla_gpu.ops.ragged_paged_attention.triton_gpu import KernelConfig

    m, n, warps, stages = map(int, spec.split(","))
    group = NUM_Q_HEADS // NUM_KV_HEADS
    return KernelConfig(max(1, m // group), m, n, warps, stages, read_inputs)


def result_row(impl: str, workload: str, seconds: float, amount: float, limit: float, unit: str):
    """One table row (``amount`` of bytes or FLOPs done in ``seconds``, against ``limit``/s);
    printed as it is made."""
    row = dict(
        impl=impl,
        workload=workload,
        ms=seconds * 1e3,
        achieved=amount / seconds,
        share=amount / seconds / limit,
        unit=unit,
    )
    print_row(row)
    return row


def print_row(row: dict) -> None:
    scale = 1e12
    print(
        f"{row['impl']:<10} {row['workload']:<34} {row['ms']:9.3f} ms "
        f"{row['achieved'] / scale:8.2f} T{row['unit']:<7} {100 * row['share']:6.1f}% of limit"
    )


if __name__ == "__main__":
    main()
