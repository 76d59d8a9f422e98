"""Ragged paged attention on NVIDIA GPUs: a Triton kernel called from JAX through ``jax-triton``.

Same signature and semantics as ``reference.py`` (read its docstring first: KV layout, metadata,
masking rules). One launch per layer serves decode, prefill, chunked prefill and mixed batches
alike, and writes the step's new K/V into the cache as well, on the cache buffer itself
(``input_output_aliases``: XLA hands the kernel the donated cache and treats the result as the
same buffer, so no cache-sized copy can appear, which XLA's scatter on the GPU did not
guarantee).

Writing and reading in one launch
---------------------------------
Programs run in no set order, so a program must never read a cache row that another program of
the same launch writes. The rows this step writes are its tokens' own positions, from each
request's ``context`` (positions computed before the step) on; everything below ``context`` was
written by earlier steps. So a program reads positions below ``context`` from the cache and the
step's own positions straight from the ``k``/``v`` inputs (token ``query_start_loc[r] + j -
context`` holds position ``j``), and writes the K/V rows of its own tile's tokens, for its KV
head, to their slots. No row is both read and written in one launch, whatever the order.
(vLLM writes a step's tokens only to pages their request owns alone: shared prefix pages are
full, so another request's context never lies in a slot this step writes.) One launch instead
of a write launch and an attention launch halves the Triton calls of a model step, each of which
XLA's runtime prepares on every run of the program.

Work decomposition
------------------
The grid is ``(num_q_tiles, num_kv_heads)``. A *q tile* is up to ``BLOCK_Q`` consecutive tokens
of one request; together with the ``G = num_q_heads // num_kv_heads`` query heads that share a KV
head, it makes the ``BLOCK_M = BLOCK_Q * G`` rows of the tile's score matrix (row ``m`` is token
``m // G``, head ``kv_head * G + m % G``), so one pass over a KV page serves every query head
that reads it (GQA/MQA cost no extra KV traffic). Tiles never straddle two requests: request
``r`` owns tiles ``query_start_loc[r] // BLOCK_Q + r`` onwards (the ``+ r`` leaves room for its
partial last tile), so ``num_tokens // BLOCK_Q + max_num_reqs`` programs always suffice; spare
ones exit at once. Which request owns each tile is computed once per step in XLA
(:func:`tile_requests`; every layer's copy of it is the same expression of the same metadata,
so XLA computes it once), and a program reads its request with one load instead of a binary
search over ``query_start_loc`` (9 dependent loads at 256 request rows, before any KV is read).
Every shape is static, so the launch is part of the step's single compiled program.

Each program walks its request's KV from position ``0`` (or the sliding window's start) up to
its last token's position in ``BLOCK_N``-row chunks. Row ``n`` of a chunk is position ``j``,
read from page ``block_tables[r, j // block_size]`` (or from the inputs, from ``context`` on):
the chunk is a gather, so ``BLOCK_N`` does not depend on the page size. Scores use the online
softmax (running max and sum in float32, ``exp2`` with ``log2(e)`` folded into the scale);
hidden positions get ``-inf`` and positions past the last token are never loaded, so stale or
NaN pages cannot leak into the output.

Block sizes are chosen on the host from static shapes (:func:`kernel_config`): a small
``BLOCK_M`` when the token bucket is no larger than the request count (decode-heavy steps:
the work is reading KV, so fewer wasted rows), a large one otherwise (prefill: the work is
matmuls). Float32 inputs use IEEE float32 dots, so float32 results match the reference closely.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import triton
import triton.language as tl

from vllm_xla_gpu.config import triton_launch_mode
from vllm_xla_gpu.ops.attention_metadata import AttentionMetadata
from vllm_xla_gpu.ops.ragged_paged_attention import reference
from vllm_xla_gpu.ops.triton_launch import install_launch_lowering

LOG2_E = 1.4426950408889634
_LOG2_E = tl.constexpr(LOG2_E)  # kernels may read module globals only as constexpr


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Static launch parameters (Triton ``constexpr`` values) for one traced call."""

    block_q: int  # tokens per q tile
    block_m: int  # score rows per tile: block_q * G, rounded up to a power of two >= 16
    block_n: int  # KV positions per inner-loop chunk
    num_warps: int
    num_stages: int


def kernel_config(num_tokens: int, num_reqs: int, group: int, head_dim: int) -> KernelConfig:
    """Pick block sizes from the step's static shapes (token bucket, request rows, GQA group)."""
    # Measured on an H100 (docs/performance.md): 64 x 64 tiles, 4 warps and 3 stages were the
    # fastest 8k-token prefill of the shapes tried; decode reads KV at 87% of the copy rate
    # with 16-row tiles, and at head_dim 64 (256 sequences of 2k-4k tokens) 128-position
    # chunks beat 64 by 4.5% (each page row is only 128 bytes there, so longer chunks keep
    # more loads in flight).
    decode_heavy = num_tokens <= num_reqs
    block_m = max(16 if decode_heavy else 64, triton.next_power_of_2(group))
    block_q = max(1, block_m // group)
    block_n = 64 if head_dim <= 128 else 32
    if decode_heavy and head_dim <= 64:
        block_n = 128
    num_stages = 2 if decode_heavy or head_dim > 128 else 3
    return KernelConfig(block_q, block_m, block_n, num_warps=4, num_stages=num_stages)


def ragged_paged_attention(
    q: jax.Array,  # [num_tokens, num_q_heads, head_dim]
    k: jax.Array,  # [num_tokens, num_kv_heads, head_dim], rotary applied
    v: jax.Array,  # [num_tokens, num_kv_heads, head_dim]
    kv_cache: jax.Array,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
    md: AttentionMetadata,
    *,
    sm_scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
    config: KernelConfig | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Write this step's K/V into the paged cache and attend, in one Triton launch.

    Arguments, results and errors are those of
    :func:`vllm_xla_gpu.ops.ragged_paged_attention.reference.ragged_paged_attention`, plus
    ``config`` to override :func:`kernel_config`'s block sizes (benchmarks tune with it).
    """
    import jax_triton  # GPU-only dependency (the ``cuda`` extra): imported when first traced

    install_launch_lowering(triton_launch_mode())
    reference.check_inputs(q, k, v, kv_cache, md, sliding_window, soft_cap)
    md = jax.tree.map(jnp.asarray, md)
    num_tokens, num_q_heads, head_dim = q.shape
    if num_tokens == 0:
        return jnp.zeros_like(q), kv_cache
    num_kv_heads = kv_cache.shape[3]
    num_reqs = md.block_tables.shape[0]
    cfg = config or kernel_config(num_tokens, num_reqs, num_q_heads // num_kv_heads, head_dim)
    num_tiles = num_tokens // cfg.block_q + num_reqs
    out, kv_cache = jax_triton.triton_call(
        q,
        k.astype(kv_cache.dtype),
        v.astype(kv_cache.dtype),
        md.slot_mapping,
        tile_requests(md.query_start_loc, cfg.block_q, num_tiles),
        md.block_tables,
        md.seq_lens,
        md.query_start_loc,
        kv_cache,
        kernel=ragged_paged_attention_kernel,
        out_shape=(
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct(kv_cache.shape, kv_cache.dtype),
        ),
        grid=(num_tiles, num_kv_heads),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        input_output_aliases={8: 1},  # the cache is updated where it lies
        zeroed_outputs=(0,),  # padding tokens belong to no tile: their output stays zero
        **kernel_constants(q, kv_cache, md, cfg, sm_scale, sliding_window, soft_cap),
    )
    return out, kv_cache


def tile_requests(query_start_loc: jax.Array, block_q: int, num_tiles: int) -> jax.Array:
    """``i32[num_tiles]``: the request row that owns each q tile (see the module docstring).

    Request ``r`` owns the tiles from ``query_start_loc[r] // block_q + r``; a tile belongs to
    the last request whose first tile is at or before it. A compare-and-count rather than
    ``searchsorted``: one small fusion, no loop in the program.
    """
    num_reqs = query_start_loc.shape[0] - 1
    first_tile = query_start_loc[:-1] // block_q + jnp.arange(num_reqs, dtype=jnp.int32)
    tiles = jnp.arange(num_tiles, dtype=jnp.int32)
    owned = jnp.sum(first_tile[None, :] <= tiles[:, None], axis=1, dtype=jnp.int32)
    return owned - 1


def kernel_constants(
    q: jax.Array,
    kv_cache: jax.Array,
    md: AttentionMetadata,
    cfg: KernelConfig,
    sm_scale: float,
    sliding_window: int | None,
    soft_cap: float | None,
) -> dict[str, object]:
    """The kernel's ``constexpr`` arguments for these (static) shapes and options.

    Shared by the JAX wrapper and the tests that run the kernel in Triton's interpreter.
    """
    _, num_q_heads, head_dim = q.shape
    _, num_blocks, block_size, num_kv_heads, _ = kv_cache.shape
    num_reqs, max_blocks = md.block_tables.shape
    return dict(
        NUM_REQS=num_reqs,
        NUM_Q_HEADS=num_q_heads,
        NUM_KV_HEADS=num_kv_heads,
        HEAD_DIM=head_dim,
        HEAD_DIM_PAD=max(16, triton.next_power_of_2(head_dim)),
        BLOCK_SIZE=block_size,
        NUM_BLOCKS=num_blocks,
        MAX_BLOCKS=max_blocks,
        BLOCK_Q=cfg.block_q,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        SCALE_LOG2=sm_scale * LOG2_E,
        SM_SCALE=sm_scale,
        SOFT_CAP=soft_cap or 0.0,
        SLIDING_WINDOW=sliding_window or 0,
        DOT_PRECISION="ieee" if q.dtype == jnp.float32 else "tf32",
    )


@triton.jit
def _load_kv(
    start,  # first KV position of the chunk
    kv_hi,  # one past the tile's last visible position
    context,  # the request's first position computed in this step
    q_start,  # the request's first token
    req,
    kv_head,
    offs_d,
    d_ok,
    k_ptr,
    v_ptr,
    kv_ptr,
    block_tables_ptr,
    FROM_INPUTS: tl.constexpr,  # False: the whole chunk lies below ``context``
    NUM_BLOCKS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    MAX_BLOCKS: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """The ``BLOCK_N`` K and V rows from ``start``: cached positions from their pages, this
    step's positions (``FROM_INPUTS``) from the ``k``/``v`` inputs; rows past ``kv_hi`` zero."""
    offs_n = start + tl.arange(0, BLOCK_N)
    n_ok = offs_n < kv_hi
    cached = n_ok
    if FROM_INPUTS:
        cached = n_ok & (offs_n < context)
    page = tl.load(block_tables_ptr + req * MAX_BLOCKS + offs_n // BLOCK_SIZE, cached, 0)
    slot = page.to(tl.int64) * BLOCK_SIZE + offs_n % BLOCK_SIZE
    kv_offs = (slot * (NUM_KV_HEADS * HEAD_DIM) + kv_head * HEAD_DIM)[:, None] + offs_d[None, :]
    kv_mask = cached[:, None] & d_ok[None, :]
    k = tl.load(kv_ptr + kv_offs, kv_mask, 0.0)
    v_base = kv_ptr + NUM_BLOCKS * BLOCK_SIZE * NUM_KV_HEADS * HEAD_DIM  # int64: caches are big
    v = tl.load(v_base + kv_offs, kv_mask, 0.0)
    if FROM_INPUTS:
        new = n_ok & (offs_n >= context)
        token = (q_start + offs_n - context).to(tl.int64)
        in_row = token * (NUM_KV_HEADS * HEAD_DIM) + kv_head * HEAD_DIM
        in_offs = in_row[:, None] + offs_d[None, :]
        in_mask = new[:, None] & d_ok[None, :]
        k = tl.where(new[:, None], tl.load(k_ptr + in_offs, in_mask, 0.0), k)
        v = tl.where(new[:, None], tl.load(v_ptr + in_offs, in_mask, 0.0), v)
    return k, v


@triton.jit
def _attend_chunk(
    q,  # [BLOCK_M, HEAD_DIM_PAD]
    acc,  # f32[BLOCK_M, HEAD_DIM_PAD] running weighted sum of V
    l_i,  # f32[BLOCK_M] running softmax denominator
    m_i,  # f32[BLOCK_M] running max score (log2 units)
    start,  # first KV position of the chunk
    kv_hi,  # one past the tile's last visible position
    pos,  # i32[BLOCK_M] each row's position
    context,
    q_start,
    req,
    kv_head,
    offs_d,
    d_ok,
    k_ptr,
    v_ptr,
    kv_ptr,
    block_tables_ptr,
    MASKED: tl.constexpr,  # False: every row sees every position of the chunk
    FROM_INPUTS: tl.constexpr,  # False: the whole chunk lies below ``context``
    NUM_BLOCKS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    MAX_BLOCKS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SCALE_LOG2: tl.constexpr,
    SM_SCALE: tl.constexpr,
    SOFT_CAP: tl.constexpr,
    SLIDING_WINDOW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One online-softmax update with the ``BLOCK_N`` KV positions from ``start``."""
    k, v = _load_kv(
        start, kv_hi, context, q_start, req, kv_head, offs_d, d_ok, k_ptr, v_ptr, kv_ptr,
        block_tables_ptr, FROM_INPUTS, NUM_BLOCKS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE,
        MAX_BLOCKS, BLOCK_N,
    )  # fmt: skip
    offs_n = start + tl.arange(0, BLOCK_N)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # f32[BLOCK_M, BLOCK_N]
    if SOFT_CAP > 0:
        s = s * SM_SCALE / SOFT_CAP
        # tanh(x) = 1 - 2 / (exp(2x) + 1), which saturates cleanly at both ends.
        s = (SOFT_CAP * _LOG2_E) * (1.0 - 2.0 / (tl.exp2(s * (2.0 * _LOG2_E)) + 1.0))
    else:
        s = s * SCALE_LOG2
    if MASKED:
        visible = (offs_n[None, :] <= pos[:, None]) & (offs_n < kv_hi)[None, :]
        if SLIDING_WINDOW > 0:
            visible = visible & (offs_n[None, :] > pos[:, None] - SLIDING_WINDOW)
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if MASKED:
        m_new_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that saw nothing yet
    else:
        m_new_safe = m_new
    p = tl.exp2(s - m_new_safe[:, None])
    alpha = tl.exp2(m_i - m_new_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@triton.jit
def _write_tile_kv(
    q_start,
    q_idx,  # i32[BLOCK_M] each row's token within the request
    row_ok,  # i1[BLOCK_M] rows that hold a real token of this tile
    kv_head,
    offs_d,
    d_ok,
    k_ptr,
    v_ptr,
    slot_ptr,
    kv_ptr,
    GROUP: tl.constexpr,
    NUM_BLOCKS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """Copy the K and V rows of the tile's tokens, for this KV head, into their cache slots.

    A tile's rows are its tokens times the ``GROUP`` query heads of the KV head, so the first
    row of each token (``m % GROUP == 0``) writes it.
    """
    first = row_ok & (tl.arange(0, BLOCK_M) % GROUP == 0)
    token = (q_start + q_idx).to(tl.int64)
    slot = tl.load(slot_ptr + token, first, -1).to(tl.int64)
    in_offs = (token * (NUM_KV_HEADS * HEAD_DIM) + kv_head * HEAD_DIM)[:, None] + offs_d[None, :]
    out_offs = (slot * (NUM_KV_HEADS * HEAD_DIM) + kv_head * HEAD_DIM)[:, None] + offs_d[None, :]
    mask = (first & (slot >= 0))[:, None] & d_ok[None, :]
    v_base = kv_ptr + NUM_BLOCKS * BLOCK_SIZE * NUM_KV_HEADS * HEAD_DIM
    tl.store(kv_ptr + out_offs, tl.load(k_ptr + in_offs, mask), mask)
    tl.store(v_base + out_offs, tl.load(v_ptr + in_offs, mask), mask)


@triton.jit
def ragged_paged_attention_kernel(
    q_ptr,  # [num_tokens, NUM_Q_HEADS, HEAD_DIM]
    k_ptr,  # [num_tokens, NUM_KV_HEADS, HEAD_DIM], the cache's dtype
    v_ptr,  # [num_tokens, NUM_KV_HEADS, HEAD_DIM], the cache's dtype
    slot_ptr,  # i32[num_tokens], -1 for padding tokens
    tile_req_ptr,  # i32[num_tiles]: the request that owns each q tile (tile_requests)
    block_tables_ptr,  # i32[NUM_REQS, MAX_BLOCKS]
    seq_lens_ptr,  # i32[NUM_REQS]
    qsl_ptr,  # i32[NUM_REQS + 1]
    kv_in_ptr,  # the cache; the same buffer as kv_ptr (aliased)
    out_ptr,  # [num_tokens, NUM_Q_HEADS, HEAD_DIM], zeroed
    kv_ptr,  # [2, NUM_BLOCKS, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM]
    NUM_REQS: tl.constexpr,
    NUM_Q_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    NUM_BLOCKS: tl.constexpr,
    MAX_BLOCKS: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SCALE_LOG2: tl.constexpr,
    SM_SCALE: tl.constexpr,
    SOFT_CAP: tl.constexpr,
    SLIDING_WINDOW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One q tile of one request against one KV head: see the module docstring."""
    GROUP: tl.constexpr = NUM_Q_HEADS // NUM_KV_HEADS
    pid = tl.program_id(0)
    kv_head = tl.program_id(1)
    req = tl.load(tile_req_ptr + pid)
    q_start = tl.load(qsl_ptr + req)
    q_len = tl.load(qsl_ptr + req + 1) - q_start
    tile = pid - (q_start // BLOCK_Q + req)
    if tile * BLOCK_Q >= q_len:  # a spare program, or past its request's last token
        return
    context = tl.load(seq_lens_ptr + req) - q_len  # positions computed before this step

    # Rows of the tile: token (within the request) and query head of each.
    offs_m = tl.arange(0, BLOCK_M)
    q_idx = tile * BLOCK_Q + offs_m // GROUP
    head = kv_head * GROUP + offs_m % GROUP
    row_ok = (offs_m < BLOCK_Q * GROUP) & (q_idx < q_len)
    pos = context + q_idx
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_ok = offs_d < HEAD_DIM
    _write_tile_kv(
        q_start, q_idx, row_ok, kv_head, offs_d, d_ok, k_ptr, v_ptr, slot_ptr, kv_ptr, GROUP,
        NUM_BLOCKS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, BLOCK_M,
    )  # fmt: skip
    q_rows = (q_start + q_idx).to(tl.int64) * (NUM_Q_HEADS * HEAD_DIM) + head * HEAD_DIM
    q = tl.load(q_ptr + q_rows[:, None] + offs_d[None, :], row_ok[:, None] & d_ok[None, :], 0.0)

    # KV positions this tile reads: [kv_lo, kv_hi).
    last_q = tl.minimum(tile * BLOCK_Q + BLOCK_Q, q_len) - 1
    kv_hi = context + last_q + 1
    kv_lo = 0
    if SLIDING_WINDOW > 0:
        first_visible = tl.maximum(context + tile * BLOCK_Q - SLIDING_WINDOW + 1, 0)
        kv_lo = (first_visible // BLOCK_N) * BLOCK_N

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)
    # Chunks below the tile's first position are visible to every row: no mask needed there
    # (the softmax's elementwise work, not the matmuls, limits long prefills). With a sliding
    # window every chunk may be partly hidden, so all of them take the masked path. Chunks
    # wholly below ``context`` read only the cache; the rest may hold this step's positions.
    full_hi = kv_lo
    if SLIDING_WINDOW == 0:
        full_hi = ((context + tile * BLOCK_Q + 1) // BLOCK_N) * BLOCK_N
    # (With a window, chunks start at ``kv_lo``, which may lie past ``context``'s chunk.)
    cached_hi = tl.maximum(kv_lo, tl.minimum(full_hi, (context // BLOCK_N) * BLOCK_N))
    for start in range(kv_lo, cached_hi, BLOCK_N):
        acc, l_i, m_i = _attend_chunk(
            q, acc, l_i, m_i, start, kv_hi, pos, context, q_start, req, kv_head, offs_d, d_ok,
            k_ptr, v_ptr, kv_ptr, block_tables_ptr, False, False, NUM_BLOCKS, NUM_KV_HEADS,
            HEAD_DIM, BLOCK_SIZE, MAX_BLOCKS, BLOCK_N, SCALE_LOG2, SM_SCALE, SOFT_CAP,
            SLIDING_WINDOW, DOT_PRECISION,
        )  # fmt: skip
    for start in range(cached_hi, full_hi, BLOCK_N):
        acc, l_i, m_i = _attend_chunk(
            q, acc, l_i, m_i, start, kv_hi, pos, context, q_start, req, kv_head, offs_d, d_ok,
            k_ptr, v_ptr, kv_ptr, block_tables_ptr, False, True, NUM_BLOCKS, NUM_KV_HEADS,
            HEAD_DIM, BLOCK_SIZE, MAX_BLOCKS, BLOCK_N, SCALE_LOG2, SM_SCALE, SOFT_CAP,
            SLIDING_WINDOW, DOT_PRECISION,
        )  # fmt: skip
    for start in range(full_hi, kv_hi, BLOCK_N):
        acc, l_i, m_i = _attend_chunk(
            q, acc, l_i, m_i, start, kv_hi, pos, context, q_start, req, kv_head, offs_d, d_ok,
            k_ptr, v_ptr, kv_ptr, block_tables_ptr, True, True, NUM_BLOCKS, NUM_KV_HEADS,
            HEAD_DIM, BLOCK_SIZE, MAX_BLOCKS, BLOCK_N, SCALE_LOG2, SM_SCALE, SOFT_CAP,
            SLIDING_WINDOW, DOT_PRECISION,
        )  # fmt: skip

    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    out_ptrs = out_ptr + q_rows[:, None] + offs_d[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), row_ok[:, None] & d_ok[None, :])
