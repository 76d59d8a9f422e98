"""Ragged paged attention on NVIDIA GPUs: a Triton kernel called from JAX through ``jax-triton``.

Same signature and semantics as ``reference.py`` (read its docstring first: KV layout, metadata,
masking rules). Both launches of a layer read one input, ``q``, ``k`` and ``v`` side by side
(:func:`pack_qkv`: one XLA fusion with the rotary embeddings that produce them, where three
operands cost three kernels). :func:`write_kv_kernel` copies each token's K/V row into its slot,
on the cache buffer itself (``input_output_aliases``: XLA hands the kernel the donated cache and
treats the result as the same buffer, so no cache-sized copy can appear, which XLA's scatter on
the GPU did not guarantee); then the attention kernel serves decode, prefill, chunked prefill and
mixed batches alike.

Work decomposition
------------------
The grid is ``(num_q_tiles, num_kv_heads)``. A *q tile* is up to ``BLOCK_Q`` consecutive tokens
of one request; together with the ``G = num_q_heads // num_kv_heads`` query heads that share a KV
head, it makes the ``BLOCK_M = BLOCK_Q * G`` rows of the tile's score matrix (row ``m`` is token
``m // G``, head ``kv_head * G + m % G``), so one pass over a KV page serves every query head
that reads it (GQA/MQA cost no extra KV traffic). Tiles never straddle two requests: request
``r`` owns tiles ``query_start_loc[r] // BLOCK_Q + r`` onwards (the ``+ r`` leaves room for its
partial last tile), so a program finds its request by counting the first tiles at or before its
own in one vector load of ``query_start_loc`` (not a binary search, whose loads each wait for
the one before), and ``num_tokens // BLOCK_Q + max_num_reqs`` programs always
suffice; spare ones exit at once.
Every shape is static, so the launch is part of the step's single compiled program.

Padding tokens (from ``query_start_loc[-1]`` on) belong to no tile. Their output rows are
zeroed by position instead: program ``(p, h)`` first zeroes the padding rows among tokens
``p * BLOCK_Q`` to ``p * BLOCK_Q + BLOCK_Q - 1`` for KV head ``h``'s query heads (the grid has
at least ``num_tokens / BLOCK_Q`` programs per head, so every row has one). XLA therefore need
not clear the whole output first: that was a memset node in every layer's CUDA graph.

Each program walks its request's KV from position ``0`` (or the sliding window's start) up to
its last token's position in ``BLOCK_N``-row chunks. Row ``n`` of a chunk is position ``j``,
read from page ``block_tables[r, j // block_size]``: the chunk is a gather, so ``BLOCK_N`` does
not depend on the page size. Scores use the online softmax (running max and sum in float32,
``exp2`` with ``log2(e)`` folded into the scale); hidden positions get ``-inf`` and positions
past the last token are never loaded, so stale or NaN pages cannot leak into the output.

Prefill tiles (``KernelConfig.read_inputs``) read the unmasked chunks that hold only this
step's positions (from the request's ``context`` on) straight from the packed K/V input,
token ``query_start_loc[r] + j - context`` for position ``j``: rows at a fixed stride instead of
a page gather, and the same values, since the write launch has just copied them to the slots
``slot_mapping`` names, which are those ``block_tables`` names (vLLM builds both from one block
table). Masked chunks and chunks that straddle ``context`` read the cache, so no loop loads
from two sources: such a loop costs decode tiles registers or shared memory enough to hold
fewer programs per SM (``benchmarks/kernel_resources.py``).

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
    # Read KV chunks that lie wholly at or past a request's ``context`` (this step's own
    # positions) from the packed ``k``/``v`` input instead of gathering them from pages.
    # Worth it for prefill tiles; a decode tile has no such chunk, and the extra loop would
    # only cost its registers.
    read_inputs: bool = False


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
    # At head_dim 256 the prefill tile already needs the 255 registers a thread can have, and
    # the inputs loop made ptxas spill (benchmarks/kernel_resources.py): only up to 128.
    read_inputs = not decode_heavy and head_dim <= 128
    return KernelConfig(
        block_q, block_m, block_n, num_warps=4, num_stages=num_stages, read_inputs=read_inputs
    )


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
    """Write this step's K/V into the paged cache, then attend with the Triton kernel.

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
    qkv = pack_qkv(q, k, v, kv_cache.dtype)
    kv_cache = write_kv_cache(qkv, kv_cache, md.slot_mapping)
    num_kv_heads = kv_cache.shape[3]
    num_reqs = md.block_tables.shape[0]
    cfg = config or kernel_config(num_tokens, num_reqs, num_q_heads // num_kv_heads, head_dim)
    out = jax_triton.triton_call(
        qkv,
        kv_cache,
        md.block_tables,
        md.seq_lens,
        md.query_start_loc,
        kernel=ragged_paged_attention_kernel,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        grid=(num_tokens // cfg.block_q + num_reqs, num_kv_heads),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        **kernel_constants(q, kv_cache, md, cfg, sm_scale, sliding_window, soft_cap),
    )
    return out, kv_cache


def pack_qkv(
    q: jax.Array,  # [num_tokens, num_q_heads, head_dim]
    k: jax.Array,  # [num_tokens, num_kv_heads, head_dim]
    v: jax.Array,  # [num_tokens, num_kv_heads, head_dim]
    dtype: jnp.dtype,
) -> jax.Array:
    """``q``, ``k`` and ``v`` side by side in one ``[num_tokens, (Hq + 2 * Hkv) * head_dim]``
    array of ``dtype`` (the cache's), the one input both launches read.

    Why one array: a custom call's operands must be dense buffers of their own, so XLA writes
    each of ``q``, ``k`` and ``v`` out of the fused QKV projection before the launches; with
    three operands that was three kernels a layer (the two rotary embeddings and a copy of V,
    1.2-1.5 us each at batch 1 on an H100, docs/performance.md). Their concatenation is one
    loop fusion that computes the rotary embeddings as it writes.
    """
    if q.dtype != dtype:
        raise ValueError(f"the Triton kernel needs q in the cache's dtype: {q.dtype=}, {dtype=}")
    num_tokens = q.shape[0]
    parts = (q, k.astype(dtype), v.astype(dtype))
    return jnp.concatenate([x.reshape(num_tokens, -1) for x in parts], axis=1)


def write_kv_cache(
    qkv: jax.Array,  # [num_tokens, ... | K | V], from pack_qkv: each row ends in its K and V
    kv_cache: jax.Array,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
    slot_mapping: jax.Array,  # i32[num_tokens], -1 for padding tokens
) -> jax.Array:
    """The reference's ``write_kv_cache`` as a Triton launch that updates the cache in place."""
    import jax_triton

    install_launch_lowering(triton_launch_mode())
    _, num_blocks, block_size, num_kv_heads, head_dim = kv_cache.shape
    row = num_kv_heads * head_dim
    return jax_triton.triton_call(
        qkv,
        slot_mapping,
        kv_cache,
        kernel=write_kv_kernel,
        out_shape=jax.ShapeDtypeStruct(kv_cache.shape, kv_cache.dtype),
        grid=(qkv.shape[0],),
        input_output_aliases={2: 0},  # the cache is updated where it lies
        ROW=row,
        ROW_PAD=triton.next_power_of_2(row),
        NUM_SLOTS=num_blocks * block_size,
        QKV_ROW=qkv.shape[1],
    )


@triton.jit
def write_kv_kernel(
    qkv_ptr,  # [num_tokens, QKV_ROW]: each row ends in the token's K, then its V
    slot_ptr,  # i32[num_tokens]
    kv_in_ptr,  # the cache; the same buffer as kv_ptr (aliased)
    kv_ptr,  # [2, NUM_SLOTS, ROW]
    ROW: tl.constexpr,  # num_kv_heads * head_dim
    ROW_PAD: tl.constexpr,
    NUM_SLOTS: tl.constexpr,
    QKV_ROW: tl.constexpr,
):
    """Token ``program_id`` copies its K and V rows to its slot; padding tokens (slot -1) don't."""
    K_COL: tl.constexpr = QKV_ROW - 2 * ROW
    token = tl.program_id(0)
    slot = tl.load(slot_ptr + token)
    if slot < 0:
        return
    offs = tl.arange(0, ROW_PAD)
    ok = offs < ROW
    src = token.to(tl.int64) * QKV_ROW + K_COL + offs
    dst = slot.to(tl.int64) * ROW + offs
    tl.store(kv_ptr + dst, tl.load(qkv_ptr + src, ok), ok)
    tl.store(kv_ptr + NUM_SLOTS * ROW + dst, tl.load(qkv_ptr + src + ROW, ok), ok)


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
        NUM_TOKENS=q.shape[0],
        NUM_REQS=num_reqs,
        QSL_PAD=triton.next_power_of_2(num_reqs + 1),
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
        READ_INPUTS=cfg.read_inputs,
    )


@triton.jit
def _zero_padding_rows(
    first_padding,
    out_ptr,
    pid,
    kv_head,
    NUM_TOKENS: tl.constexpr,
    NUM_Q_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr,
    GROUP: tl.constexpr,
):
    """Zero the output of the padding tokens (from ``first_padding`` on) among ``pid``'s
    ``BLOCK_Q`` tokens, by position, not by request, for ``kv_head``'s query heads; most
    programs have none and store nothing."""
    if (pid + 1) * BLOCK_Q <= first_padding or pid * BLOCK_Q >= NUM_TOKENS:
        return
    offs_m = tl.arange(0, BLOCK_M)
    token = pid * BLOCK_Q + offs_m // GROUP
    head = kv_head * GROUP + offs_m % GROUP
    pad = (offs_m < BLOCK_Q * GROUP) & (token >= first_padding) & (token < NUM_TOKENS)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    rows = token.to(tl.int64) * (NUM_Q_HEADS * HEAD_DIM) + head * HEAD_DIM
    zeros = tl.zeros([BLOCK_M, HEAD_DIM_PAD], out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows[:, None] + offs_d[None, :], zeros, pad[:, None] & (offs_d < HEAD_DIM))


@triton.jit
def _find_request(qsl_ptr, pid, NUM_REQS: tl.constexpr, QSL_PAD: tl.constexpr, BLOCK_Q):
    """Request ``r`` of tile ``pid`` (the last whose first tile ``qsl[r] // BLOCK_Q + r`` is at
    or before ``pid``), its first token, its token count, and the first padding token.

    The first tiles increase with ``r``, so ``r`` is the number of requests whose first tile
    is at or before ``pid``, less one: the whole ``query_start_loc`` comes in one vector load
    and every value is taken from it, where a binary search waits on ``log2(NUM_REQS)``
    dependent loads, one after the other (Llama-3.2-1B at batch 1 on an H100: 6.70 -> 6.26 us
    a layer, docs/performance.md)."""
    offs = tl.arange(0, QSL_PAD)
    qsl = tl.load(qsl_ptr + offs, offs <= NUM_REQS, 0)
    starts = (offs < NUM_REQS) & (qsl // BLOCK_Q + offs <= pid)
    req = tl.sum(starts.to(tl.int32), 0) - 1
    q_start = tl.sum(tl.where(offs == req, qsl, 0), 0)
    q_end = tl.sum(tl.where(offs == req + 1, qsl, 0), 0)
    first_padding = tl.sum(tl.where(offs == NUM_REQS, qsl, 0), 0)
    return req, q_start, q_end - q_start, first_padding


@triton.jit
def _attend_chunk(
    q,  # [BLOCK_M, HEAD_DIM_PAD]
    acc,  # f32[BLOCK_M, HEAD_DIM_PAD] running weighted sum of V
    l_i,  # f32[BLOCK_M] running softmax denominator
    m_i,  # f32[BLOCK_M] running max score (log2 units)
    start,  # first KV position of the chunk
    kv_hi,  # one past the tile's last visible position
    pos,  # i32[BLOCK_M] each row's position
    input_row,  # token whose K/V row holds position 0 (inputs hold positions from ``context``)
    req,
    kv_head,
    offs_d,
    d_ok,
    kv_ptr,
    k_ptr,  # this step's K rows, QKV_ROW apart (pack_qkv's K columns)
    v_ptr,
    block_tables_ptr,
    MASKED: tl.constexpr,  # False: every row sees every position of the chunk
    FROM_INPUTS: tl.constexpr,  # True: the chunk lies wholly at or past ``context``
    NUM_BLOCKS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    QKV_ROW: tl.constexpr,
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
    offs_n = start + tl.arange(0, BLOCK_N)
    n_ok = offs_n < kv_hi
    kv_mask = n_ok[:, None] & d_ok[None, :]
    if FROM_INPUTS:
        row = (input_row + offs_n).to(tl.int64) * QKV_ROW + kv_head * HEAD_DIM
        in_offs = row[:, None] + offs_d[None, :]
        k = tl.load(k_ptr + in_offs, kv_mask, 0.0)
        v = tl.load(v_ptr + in_offs, kv_mask, 0.0)
    else:
        page = tl.load(block_tables_ptr + req * MAX_BLOCKS + offs_n // BLOCK_SIZE, n_ok, 0)
        slot = page.to(tl.int64) * BLOCK_SIZE + offs_n % BLOCK_SIZE
        kv_row = slot * (NUM_KV_HEADS * HEAD_DIM) + kv_head * HEAD_DIM
        kv_offs = kv_row[:, None] + offs_d[None, :]
        k = tl.load(kv_ptr + kv_offs, kv_mask, 0.0)
        v_base = kv_ptr + NUM_BLOCKS * BLOCK_SIZE * NUM_KV_HEADS * HEAD_DIM  # int64: big caches
        v = tl.load(v_base + kv_offs, kv_mask, 0.0)

    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # f32[BLOCK_M, BLOCK_N]
    if SOFT_CAP > 0:
        s = s * SM_SCALE / SOFT_CAP
        # tanh(x) = 1 - 2 / (exp(2x) + 1), which saturates cleanly at both ends.
        s = (SOFT_CAP * _LOG2_E) * (1.0 - 2.0 / (tl.exp2(s * (2.0 * _LOG2_E)) + 1.0))
    else:
        s = s * SCALE_LOG2
    if MASKED:
        visible = (offs_n[None, :] <= pos[:, None]) & n_ok[None, :]
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
def ragged_paged_attention_kernel(
    qkv_ptr,  # [num_tokens, (NUM_Q_HEADS + 2 * NUM_KV_HEADS) * HEAD_DIM]: pack_qkv's q | k | v
    kv_ptr,  # [2, NUM_BLOCKS, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM], this step's K/V written
    block_tables_ptr,  # i32[NUM_REQS, MAX_BLOCKS]
    seq_lens_ptr,  # i32[NUM_REQS]
    qsl_ptr,  # i32[NUM_REQS + 1]
    out_ptr,  # [num_tokens, NUM_Q_HEADS, HEAD_DIM], not initialised
    NUM_TOKENS: tl.constexpr,
    NUM_REQS: tl.constexpr,
    QSL_PAD: tl.constexpr,  # NUM_REQS + 1 rounded up to a power of two
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
    READ_INPUTS: tl.constexpr,  # KernelConfig.read_inputs
):
    """One q tile of one request against one KV head: see the module docstring."""
    GROUP: tl.constexpr = NUM_Q_HEADS // NUM_KV_HEADS
    QKV_ROW: tl.constexpr = (NUM_Q_HEADS + 2 * NUM_KV_HEADS) * HEAD_DIM
    k_ptr = qkv_ptr + NUM_Q_HEADS * HEAD_DIM
    v_ptr = k_ptr + NUM_KV_HEADS * HEAD_DIM
    pid = tl.program_id(0)
    kv_head = tl.program_id(1)
    req, q_start, q_len, first_padding = _find_request(qsl_ptr, pid, NUM_REQS, QSL_PAD, BLOCK_Q)
    _zero_padding_rows(
        first_padding, out_ptr, pid, kv_head, NUM_TOKENS, NUM_Q_HEADS, HEAD_DIM, HEAD_DIM_PAD,
        BLOCK_Q, BLOCK_M, GROUP,
    )  # fmt: skip
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
    token = (q_start + q_idx).to(tl.int64)
    q_rows = token * (NUM_Q_HEADS * HEAD_DIM) + head * HEAD_DIM  # in the output
    q_offs = token * QKV_ROW + head * HEAD_DIM  # in the packed input
    q = tl.load(qkv_ptr + q_offs[:, None] + offs_d[None, :], row_ok[:, None] & d_ok[None, :], 0.0)

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
    # window every chunk may be partly hidden, so all of them take the masked path.
    full_hi = kv_lo
    if SLIDING_WINDOW == 0:
        full_hi = ((context + tile * BLOCK_Q + 1) // BLOCK_N) * BLOCK_N
    # Of the unmasked chunks, those from ``inputs_lo`` on hold only this step's positions: with
    # READ_INPUTS they are read from the contiguous inputs rather than gathered from pages (the
    # same values: the write launch has already copied them there). Masked chunks always read
    # the cache, so no loop mixes the two sources (that costs decode tiles a program per SM:
    # docs/performance.md, 2026-11-28, sixth session).
    inputs_lo = full_hi
    if READ_INPUTS:
        inputs_lo = tl.maximum(kv_lo, tl.minimum(full_hi, tl.cdiv(context, BLOCK_N) * BLOCK_N))
    input_row = q_start - context
    for start in range(kv_lo, inputs_lo, BLOCK_N):
        acc, l_i, m_i = _attend_chunk(
            q, acc, l_i, m_i, start, kv_hi, pos, input_row, req, kv_head, offs_d, d_ok, kv_ptr,
            k_ptr, v_ptr, block_tables_ptr, False, False, NUM_BLOCKS, NUM_KV_HEADS, HEAD_DIM,
            QKV_ROW, BLOCK_SIZE, MAX_BLOCKS, BLOCK_N, SCALE_LOG2, SM_SCALE, SOFT_CAP,
            SLIDING_WINDOW, DOT_PRECISION,
        )  # fmt: skip
    if READ_INPUTS:
        for start in range(inputs_lo, full_hi, BLOCK_N):
            acc, l_i, m_i = _attend_chunk(
                q, acc, l_i, m_i, start, kv_hi, pos, input_row, req, kv_head, offs_d, d_ok,
                kv_ptr, k_ptr, v_ptr, block_tables_ptr, False, True, NUM_BLOCKS, NUM_KV_HEADS,
                HEAD_DIM, QKV_ROW, BLOCK_SIZE, MAX_BLOCKS, BLOCK_N, SCALE_LOG2, SM_SCALE, SOFT_CAP,
                SLIDING_WINDOW, DOT_PRECISION,
            )  # fmt: skip
    for start in range(full_hi, kv_hi, BLOCK_N):
        acc, l_i, m_i = _attend_chunk(
            q, acc, l_i, m_i, start, kv_hi, pos, input_row, req, kv_head, offs_d, d_ok, kv_ptr,
            k_ptr, v_ptr, block_tables_ptr, True, False, NUM_BLOCKS, NUM_KV_HEADS, HEAD_DIM,
            QKV_ROW, BLOCK_SIZE, MAX_BLOCKS, BLOCK_N, SCALE_LOG2, SM_SCALE, SOFT_CAP,
            SLIDING_WINDOW, DOT_PRECISION,
        )  # fmt: skip

    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    out_ptrs = out_ptr + q_rows[:, None] + offs_d[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), row_ok[:, None] & d_ok[None, :])
