"""Does a step update its KV caches in place? XLA's memory analysis at two cache sizes.

A model step donates every layer's KV cache and gets it back updated. If the compiled program
copies a cache anywhere (a scatter XLA cannot do in place, an un-aliased output), its scratch
memory grows with the cache: invisible when the runner sizes the cache from a one-page compile,
fatal when the cache fills the GPU. This compiles a small multi-layer attention step with each
implementation at a one-page and a large cache and prints scratch (temp) and aliased bytes:

    python benchmarks/kv_inplace_check.py --impls triton reference
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp

from vllm_xla_gpu.ops.attention_metadata import AttentionMetadata
from vllm_xla_gpu.ops.ragged_paged_attention.registry import get_ragged_paged_attention

LAYERS, TOKENS, REQS, HQ, HKV, D, PAGE = 4, 256, 64, 32, 8, 128, 16


def step(impl, q, k, v, caches, md):
    """``LAYERS`` attention calls chained through their outputs, as a model step chains them."""
    fn = functools.partial(get_ragged_paged_attention(impl, jax.default_backend()), sm_scale=0.1)
    new = []
    for cache in caches:
        out, cache = fn(q, k, v, cache, md)
        q = q + out
        new.append(cache)
    return q, new


def analyse(impl: str, pages: int, dtype) -> tuple[int, int]:
    """(temp bytes, aliased bytes) of the compiled step with ``pages`` pages per cache."""
    shape = (2, pages, PAGE, HKV, D)
    caches = [jax.ShapeDtypeStruct(shape, dtype) for _ in range(LAYERS)]
    md = AttentionMetadata(
        slot_mapping=jax.ShapeDtypeStruct((TOKENS,), jnp.int32),
        block_tables=jax.ShapeDtypeStruct((REQS, 64), jnp.int32),
        seq_lens=jax.ShapeDtypeStruct((REQS,), jnp.int32),
        query_start_loc=jax.ShapeDtypeStruct((REQS + 1,), jnp.int32),
    )
    q = jax.ShapeDtypeStruct((TOKENS, HQ, D), dtype)
    kv = jax.ShapeDtypeStruct((TOKENS, HKV, D), dtype)
    jitted = jax.jit(functools.partial(step, impl), donate_argnums=(3,))
    ma = jitted.lower(q, kv, kv, caches, md).compile().memory_analysis()
    return ma.temp_size_in_bytes, ma.alias_size_in_bytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impls", nargs="+", default=["triton", "reference"])
    p.add_argument("--pages", type=int, default=16384, help="pages of the large cache")
    p.add_argument("--dtype", default="bfloat16")
    args = p.parse_args()
    dtype = jnp.dtype(args.dtype)
    cache_bytes = 2 * args.pages * PAGE * HKV * D * dtype.itemsize
    print(
        f"{jax.devices()[0].device_kind}: {LAYERS} layers, one cache {cache_bytes / 2**20:.0f} MiB"
    )
    for impl in args.impls:
        small, _ = analyse(impl, 1, dtype)
        large, aliased = analyse(impl, args.pages, dtype)
        verdict = "in place" if large - small < cache_bytes // 2 else "COPIES A CACHE"
        print(
            f"{impl:<10} temp 1 page {small / 2**20:8.1f} MiB, {args.pages} pages "
            f"{large / 2**20:8.1f} MiB, aliased {aliased / 2**20:8.0f} MiB: {verdict}"
        )


if __name__ == "__main__":
    main()
