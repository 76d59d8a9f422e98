"""Ragged paged attention in plain JAX: the portable reference that every kernel is tested against.

Role in the pipeline
--------------------
Every attention layer of a model step calls :func:`ragged_paged_attention` once (through
``XlaGpuPagedAttentionImpl.forward``). The op

1. **writes** the step's new keys and values into the paged KV cache at ``md.slot_mapping``, then
2. **attends**: every scheduled token attends causally over all KV of its own request, read
   back from the pages of the updated cache,

and returns the attention output and the updated cache (the runner donates the cache through
the jitted step, so XLA updates it in place). Only gathers, a scatter, einsums and a softmax are
used, so it compiles on any PJRT backend: bring a new chip up with it, then replace it by a
kernel with the same signature (one file beside this one) and test that kernel against it.

KV-cache layout
---------------
One array per layer, ``kv_cache[2, num_blocks, block_size, num_kv_heads, head_dim]``: index 0
of the first axis holds keys, 1 values (vLLM's FlashAttention layout). A *page* (vLLM: block)
holds ``block_size`` consecutive positions of one request. Position ``j`` of request ``r`` lives
in page ``block_tables[r, j // block_size]``, row ``j % block_size``; over the flattened
``num_blocks * block_size`` axis that row is the *slot* ``page * block_size + j % block_size``,
the number vLLM's ``slot_mapping`` holds. Pages are handed out in any order. Pages a request
does not own (vLLM's null page 0 included) and the rows past its length on its last page hold
stale data or NaN: they must never reach the output.

Metadata (:class:`~vllm_xla_gpu.ops.attention_metadata.AttentionMetadata`)
--------------------------------------------------------------------------
The step's tokens form one flat, *ragged* axis: request ``r`` owns tokens
``query_start_loc[r]:query_start_loc[r + 1]``, ``q_len[r]`` of them (1 for a decode, the prompt
for a prefill, part of it for a chunked prefill). ``seq_lens[r]`` is its KV length *after* this
step, so its ``i``-th scheduled token sits at position ``p = seq_lens[r] - q_len[r] + i`` (no
positions array is needed) and sees KV positions ``j <= p``, and with a sliding window only
``j > p - sliding_window``. Tokens at or after ``query_start_loc[-1]`` are padding: their slot
is ``-1``, their K/V is not written and their output is zero. Padding requests have
``q_len == 0`` and ``seq_lens == 0``.

Algorithm (what a kernel has to reproduce)
------------------------------------------
1. Scatter ``k``/``v`` into the cache, flattened to slots, at ``slot_mapping``; slot ``-1`` is
   dropped (mapped out of range first: JAX, like numpy, would wrap ``-1`` to the last slot).
2. Per token ``t``: its request ``r`` is the last one with ``query_start_loc[r] <= t`` (a
   ``searchsorted``, which also skips zero-length requests); then its position ``p``.
3. Gather the request's pages ``kv_cache[:, block_tables[r]]`` ->
   ``[2, max_blocks_per_req * block_size, num_kv_heads, head_dim]`` and zero every KV row the
   token may not see, in K *and* V (``0 * NaN`` is NaN inside a matmul).
4. In float32: scores ``q . k * sm_scale``; query head ``h`` reads KV head
   ``h // (num_q_heads // num_kv_heads)`` (GQA/MQA); optional soft cap
   ``soft_cap * tanh(scores / soft_cap)``; hidden rows set to the float32 minimum; softmax;
   weighted sum of V. The output is cast to ``q.dtype``.

Tokens go through steps 2-4 in small batches (``jax.lax.map`` with ``batch_size``), so memory
stays bounded whatever the token count: a batch gathers ``batch * max_blocks_per_req *
block_size`` KV rows. Every token reads all of its request's pages: right for decode, wasteful
for long prefills. Speed is the kernels' job; this file is the definition.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from vllm_xla_gpu.ops.attention_metadata import AttentionMetadata

# Most tokens attended per step of the token loop. A power of two, so it divides every
# power-of-two token bucket from 8 up; other counts get one smaller, separately traced batch.
MAX_TOKENS_PER_BATCH = 8
# About the most K/V bytes (upcast to float32) one batch gathers: long contexts get smaller batches.
MAX_GATHER_BYTES_PER_BATCH = 256 * 2**20

# float32 matmuls at full precision: on GPUs XLA's default may round inputs to TF32.
_PRECISION = jax.lax.Precision.HIGHEST


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
) -> tuple[jax.Array, jax.Array]:
    """Write this step's K/V into the paged cache, then attend causally within each request.

    Args:
        q: queries of the scheduled tokens (padding tokens last).
        k: new keys of the same tokens, written to the cache at ``md.slot_mapping``.
        v: new values of the same tokens.
        kv_cache: the layer's paged cache; index 0 keys, 1 values.
        md: the step's slot mapping, block tables, sequence lengths and query offsets.
        sm_scale: factor applied to ``q . k`` (usually ``head_dim ** -0.5``).
        sliding_window: if set, a token at position ``p`` sees keys at positions
            ``> p - sliding_window`` only.
        soft_cap: if set, scores become ``soft_cap * tanh(scores / soft_cap)``.

    Returns:
        ``(out, kv_cache)``: ``out [num_tokens, num_q_heads, head_dim]`` in ``q.dtype``, zero for
        padding tokens, and the updated cache (same shape and dtype as ``kv_cache``).

    Raises:
        ValueError: inconsistent shapes, a head count that does not divide, or a non-positive
            ``sliding_window`` / ``soft_cap``.
    """
    check_inputs(q, k, v, kv_cache, md, sliding_window, soft_cap)
    md = jax.tree.map(jnp.asarray, md)  # host (numpy) metadata too: it is indexed by tracers
    kv_cache = write_kv_cache(k, v, kv_cache, md.slot_mapping)
    num_tokens = q.shape[0]
    if num_tokens == 0:
        return jnp.zeros_like(q), kv_cache
    req, pos, valid = token_requests(md, num_tokens)
    attend = functools.partial(
        _attend_one_token,
        kv_cache=kv_cache,
        block_tables=md.block_tables,
        sm_scale=sm_scale,
        sliding_window=sliding_window,
        soft_cap=soft_cap,
    )
    batch = _tokens_per_batch(num_tokens, kv_cache, md.block_tables)
    out = jax.lax.map(lambda xs: attend(*xs), (q, req, pos, valid), batch_size=batch)
    return out.astype(q.dtype), kv_cache


def write_kv_cache(
    k: jax.Array,  # [num_tokens, num_kv_heads, head_dim]
    v: jax.Array,  # [num_tokens, num_kv_heads, head_dim]
    kv_cache: jax.Array,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
    slot_mapping: jax.Array,  # i32[num_tokens], -1 for padding tokens
) -> jax.Array:
    """Scatter the new K/V into their slots (vLLM's ``reshape_and_cache_flash``).

    Returns:
        The cache with ``kv_cache[:, slot // block_size, slot % block_size] = (k, v)`` for every
        token whose slot is not negative, cast to the cache's dtype.
    """
    _, num_blocks, block_size, num_kv_heads, head_dim = kv_cache.shape
    num_slots = num_blocks * block_size
    flat = kv_cache.reshape(2, num_slots, num_kv_heads, head_dim)
    # Out of range, then dropped by the scatter; a raw -1 would wrap to the last slot.
    slots = jnp.where(slot_mapping < 0, num_slots, slot_mapping)
    new_kv = jnp.stack([k, v]).astype(kv_cache.dtype)  # [2, num_tokens, num_kv_heads, head_dim]
    flat = flat.at[:, slots].set(new_kv, mode="drop")
    return flat.reshape(kv_cache.shape)


def token_requests(
    md: AttentionMetadata, num_tokens: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Each token's request, position and whether it is a real (not padding) token.

    Returns:
        ``(req, pos, valid)``, each ``[num_tokens]``: ``req`` (i32) indexes ``md.seq_lens`` and
        ``md.block_tables`` (clamped into range for padding tokens); ``pos`` (i32) is the
        token's position in its request, meaningless where ``valid`` (bool) is False.
    """
    qsl = md.query_start_loc
    t = jnp.arange(num_tokens, dtype=qsl.dtype)
    # The last request starting at or before t; zero-length requests start where the next does.
    req = jnp.searchsorted(qsl, t, side="right").astype(qsl.dtype) - 1
    req = jnp.clip(req, 0, md.seq_lens.shape[0] - 1)
    valid = t < qsl[-1]
    q_len = qsl[req + 1] - qsl[req]
    pos = md.seq_lens[req] - q_len + (t - qsl[req])
    return req, pos, valid


def _attend_one_token(
    q: jax.Array,  # [num_q_heads, head_dim]
    req: jax.Array,  # i32[] the token's request
    pos: jax.Array,  # i32[] the token's position in it
    valid: jax.Array,  # bool[] False for padding tokens
    *,
    kv_cache: jax.Array,  # [2, num_blocks, block_size, num_kv_heads, head_dim], already written
    block_tables: jax.Array,  # i32[max_num_reqs, max_blocks_per_req]
    sm_scale: float,
    sliding_window: int | None,
    soft_cap: float | None,
) -> jax.Array:  # f32[num_q_heads, head_dim]
    """Attention of one token over its request's pages (``jax.lax.map`` batches it with vmap)."""
    num_q_heads, head_dim = q.shape
    num_kv_heads = kv_cache.shape[3]
    kv = kv_cache[:, block_tables[req]]  # [2, max_blocks_per_req, block_size, Hkv, D]
    kv = kv.reshape(2, -1, num_kv_heads, head_dim).astype(jnp.float32)  # [2, kv_len, Hkv, D]
    j = jnp.arange(kv.shape[1])
    visible = valid & (j <= pos)  # bool[kv_len]
    if sliding_window is not None:
        visible &= j > pos - sliding_window
    # Zero hidden rows in K and V alike: unused pages may hold NaN, and 0 * NaN = NaN.
    kv = jnp.where(visible[None, :, None, None], kv, 0.0)
    # GQA: query heads h*G ... h*G + G-1 share KV head h.
    q = q.astype(jnp.float32).reshape(num_kv_heads, num_q_heads // num_kv_heads, head_dim)
    scores = jnp.einsum("hgd,lhd->hgl", q, kv[0], precision=_PRECISION) * sm_scale
    if soft_cap is not None:
        scores = soft_cap * jnp.tanh(scores / soft_cap)
    scores = jnp.where(visible, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)  # f32[Hkv, G, kv_len]
    out = jnp.einsum("hgl,lhd->hgd", probs, kv[1], precision=_PRECISION)
    # A padding token sees nothing; make its output zero rather than an average of zeros.
    return jnp.where(valid, out, 0.0).reshape(num_q_heads, head_dim)


def _tokens_per_batch(
    num_tokens: int,
    kv_cache: jax.Array,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: jax.Array,  # i32[max_num_reqs, max_blocks_per_req]
) -> int:
    """Tokens per ``jax.lax.map`` step: a power of two that keeps the gather under budget."""
    _, _, block_size, num_kv_heads, head_dim = kv_cache.shape
    kv_len = block_tables.shape[1] * block_size
    bytes_per_token = 2 * kv_len * num_kv_heads * head_dim * 4  # K and V in float32
    batch = MAX_TOKENS_PER_BATCH
    while batch > 1 and batch * bytes_per_token > MAX_GATHER_BYTES_PER_BATCH:
        batch //= 2
    return min(batch, num_tokens)


def check_inputs(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    kv_cache: jax.Array,
    md: AttentionMetadata,
    sliding_window: int | None,
    soft_cap: float | None,
) -> None:
    """Raise ``ValueError`` for inconsistent shapes or bad options (every implementation
    calls it)."""
    _check_shapes(q, k, v, kv_cache, md)
    _check_options(sliding_window, soft_cap)


def _check_shapes(
    q: jax.Array,  # [num_tokens, num_q_heads, head_dim]
    k: jax.Array,  # [num_tokens, num_kv_heads, head_dim]
    v: jax.Array,  # [num_tokens, num_kv_heads, head_dim]
    kv_cache: jax.Array,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
    md: AttentionMetadata,
) -> None:
    """Raise ``ValueError`` unless all shapes agree (shapes only: no array values are read)."""
    if q.ndim != 3:
        raise ValueError(f"q must be [num_tokens, num_q_heads, head_dim], got {q.shape=}")
    if kv_cache.ndim != 5 or kv_cache.shape[0] != 2:
        raise ValueError(
            f"kv_cache must be [2, num_blocks, block_size, num_kv_heads, head_dim], "
            f"got {kv_cache.shape=}"
        )
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = kv_cache.shape[3]
    if kv_cache.shape[4] != head_dim:
        raise ValueError(f"{kv_cache.shape=} must end in {head_dim=}")
    if k.shape != (num_tokens, num_kv_heads, head_dim) or v.shape != k.shape:
        raise ValueError(
            f"{k.shape=} and {v.shape=} must both be {(num_tokens, num_kv_heads, head_dim)}"
        )
    if num_q_heads % num_kv_heads:
        raise ValueError(f"{num_q_heads=} must be divisible by {num_kv_heads=}")
    max_num_reqs = md.seq_lens.shape[0]
    if md.slot_mapping.shape != (num_tokens,):
        raise ValueError(f"{md.slot_mapping.shape=} must be ({num_tokens=},)")
    if md.query_start_loc.shape != (max_num_reqs + 1,):
        raise ValueError(f"{md.query_start_loc.shape=} must be ({max_num_reqs=} + 1,)")
    if md.block_tables.ndim != 2 or md.block_tables.shape[0] != max_num_reqs:
        raise ValueError(f"{md.block_tables.shape=} must be ({max_num_reqs=}, max_blocks_per_req)")


def _check_options(sliding_window: int | None, soft_cap: float | None) -> None:
    """Raise ``ValueError`` for a window or soft cap that is not positive."""
    if sliding_window is not None and sliding_window <= 0:
        raise ValueError(f"{sliding_window=} must be positive")
    if soft_cap is not None and soft_cap <= 0:
        raise ValueError(f"{soft_cap=} must be positive")
