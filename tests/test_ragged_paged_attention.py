"""The reference ``ragged_paged_attention`` against dense causal attention written in numpy.

Every case builds a real, small paged cache from one seeded generator: each request owns pages
dealt out in random order from the pool, the earlier KV of chunked prefills and decodes is
already in those pages, and everything nobody wrote (vLLM's null page 0, a spare page, the tail
of each request's last page) holds NaN. The step is padded with padding tokens (slot -1) and
padding requests, as the runner pads it to its buckets. The dense reference only ever sees each
request's own contiguous K/V, so any paging, masking or padding mistake shows in the output;
the cache after the write must equal the expected one exactly.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vllm_xla_gpu.ops.attention_metadata import AttentionMetadata
from vllm_xla_gpu.ops.ragged_paged_attention import reference

# The op computes in float32 at full matmul precision, the dense reference in float64: at these
# sizes their gap is float32 rounding, about 1e-6. A bfloat16 output keeps 8 significant bits,
# so rounding the result alone moves an O(1) value by up to 2**-8 (~4e-3).
ATOL = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2}
RTOL = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2}

# (num_computed_tokens per request, num_scheduled_tokens per request, padded token count).
CASES = {
    "decode_only": ([7, 20, 1, 33], [1, 1, 1, 1], 8),
    "prefill_only": ([0, 0, 0], [5, 12, 9], 32),
    "mixed": ([0, 15, 0, 30], [9, 1, 3, 1], 16),
    # Counts that are not a multiple of the op's token batch (8) take its remainder path.
    "chunked_prefill": ([8, 13, 20], [6, 10, 1], 20),
}
# (num_q_heads, num_kv_heads)
HEADS = {"ratio1": (4, 4), "ratio2": (4, 2), "ratio4": (8, 2), "mqa": (4, 1)}
NUM_PADDING_REQS = 2


@dataclasses.dataclass
class Step:
    """One step's op inputs (float32 numpy values, exactly representable in the test dtype)."""

    q: np.ndarray  # f32[num_tokens_padded, num_q_heads, head_dim]
    k: np.ndarray  # f32[num_tokens_padded, num_kv_heads, head_dim]
    v: np.ndarray  # f32[num_tokens_padded, num_kv_heads, head_dim]
    kv_cache: np.ndarray  # f32[2, num_blocks, block_size, num_kv_heads, head_dim], NaN = unused
    md: AttentionMetadata  # numpy arrays
    keys: list[np.ndarray]  # per request f32[seq_len, num_kv_heads, head_dim], all positions
    values: list[np.ndarray]  # per request f32[seq_len, num_kv_heads, head_dim]
    expected_kv_cache: np.ndarray  # kv_cache with every request's K/V written

    @property
    def num_tokens(self) -> int:
        return int(self.md.query_start_loc[-1])


def make_step(
    case: str | tuple[list[int], list[int], int],
    num_q_heads: int,
    num_kv_heads: int,
    *,
    dtype=jnp.float32,
    head_dim: int = 32,
    block_size: int = 8,
    seed: int = 0,
) -> Step:
    """Random requests of ``CASES[case]`` (or of ``case`` itself: computed, scheduled, padded)
    laid out in a paged cache, as vLLM would lay them out."""
    num_computed, num_scheduled, num_tokens_padded = CASES[case] if isinstance(case, str) else case
    rng = np.random.default_rng(seed)
    seq_lens = [c + s for c, s in zip(num_computed, num_scheduled, strict=True)]
    keys = [_random(rng, (n, num_kv_heads, head_dim), dtype) for n in seq_lens]
    values = [_random(rng, (n, num_kv_heads, head_dim), dtype) for n in seq_lens]
    block_tables, num_blocks = _random_block_tables(rng, seq_lens, block_size)

    cache = np.full((2, num_blocks * block_size, num_kv_heads, head_dim), np.nan, np.float32)
    expected = cache.copy()
    new_slots = []
    for r, seq_len in enumerate(seq_lens):
        positions = np.arange(seq_len)
        slots = block_tables[r, positions // block_size] * block_size + positions % block_size
        old = positions < num_computed[r]
        cache[:, slots[old]] = keys[r][old], values[r][old]
        expected[:, slots] = keys[r], values[r]
        new_slots.append(slots[~old])

    num_pad = num_tokens_padded - sum(num_scheduled)
    pad_kv = _random(rng, (num_pad, num_kv_heads, head_dim), dtype)
    query_start_loc = np.full(len(seq_lens) + NUM_PADDING_REQS + 1, sum(num_scheduled), np.int32)
    query_start_loc[0] = 0
    query_start_loc[1 : len(seq_lens) + 1] = np.cumsum(num_scheduled)
    md = AttentionMetadata(
        slot_mapping=np.concatenate([*new_slots, np.full(num_pad, -1)]).astype(np.int32),
        block_tables=block_tables,
        seq_lens=np.array(seq_lens + [0] * NUM_PADDING_REQS, np.int32),
        query_start_loc=query_start_loc,
    )
    shape = (2, num_blocks, block_size, num_kv_heads, head_dim)
    return Step(
        q=_random(rng, (num_tokens_padded, num_q_heads, head_dim), dtype),
        k=np.concatenate([*(x[c:] for x, c in zip(keys, num_computed, strict=True)), pad_kv]),
        v=np.concatenate([*(x[c:] for x, c in zip(values, num_computed, strict=True)), pad_kv]),
        kv_cache=cache.reshape(shape),
        md=md,
        keys=keys,
        values=values,
        expected_kv_cache=expected.reshape(shape),
    )


def _random(rng: np.random.Generator, shape: tuple[int, ...], dtype) -> np.ndarray:
    """Normal values rounded to ``dtype``, held in float32 (so both sides see the same data)."""
    return rng.standard_normal(shape, dtype=np.float32).astype(dtype).astype(np.float32)


def _random_block_tables(
    rng: np.random.Generator, seq_lens: list[int], block_size: int
) -> tuple[np.ndarray, int]:
    """Block tables (with rows for the padding requests) over pages dealt in random order.

    Page 0 is vLLM's null page and, like every unused entry, stays unwritten (NaN); the last
    page stays free too, so a slot of -1 that wrapped around would overwrite NaN and show.
    """
    pages_per_req = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(pages_per_req) + 2
    pages = rng.permutation(np.arange(1, num_blocks - 1))
    max_blocks = max(pages_per_req) + 1  # a spare column: every request has unused entries
    block_tables = np.zeros((len(seq_lens) + NUM_PADDING_REQS, max_blocks), np.int32)
    ends = np.cumsum(pages_per_req)
    for r, (n, end) in enumerate(zip(pages_per_req, ends, strict=True)):
        block_tables[r, :n] = pages[end - n : end]
    return block_tables, num_blocks


def dense_attention(
    q: np.ndarray,  # [q_len, num_q_heads, head_dim], the request's last q_len positions
    keys: np.ndarray,  # [seq_len, num_kv_heads, head_dim]
    values: np.ndarray,  # [seq_len, num_kv_heads, head_dim]
    *,
    sm_scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> np.ndarray:  # f64[q_len, num_q_heads, head_dim]
    """Textbook causal attention of one request, in float64."""
    q_len, num_q_heads, _ = q.shape
    seq_len, num_kv_heads, _ = keys.shape
    keys = np.repeat(keys.astype(np.float64), num_q_heads // num_kv_heads, axis=1)
    values = np.repeat(values.astype(np.float64), num_q_heads // num_kv_heads, axis=1)
    # Batched matmuls (BLAS per head): einsum would take minutes at the GPU tests' 2k prompts.
    scores = q.astype(np.float64).transpose(1, 0, 2) @ keys.transpose(1, 2, 0) * sm_scale
    if soft_cap is not None:
        scores = soft_cap * np.tanh(scores / soft_cap)
    pos = np.arange(seq_len - q_len, seq_len)[:, None]
    j = np.arange(seq_len)[None, :]
    visible = j <= pos
    if sliding_window is not None:
        visible &= j > pos - sliding_window
    scores = np.where(visible, scores, -np.inf)
    probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    return (probs @ values.transpose(1, 0, 2)).transpose(1, 0, 2)


def expected_output(step: Step, **options) -> np.ndarray:
    """Dense attention request by request; zeros for the padding tokens."""
    out = np.zeros(step.q.shape, np.float64)
    qsl = step.md.query_start_loc
    for r, (keys, values) in enumerate(zip(step.keys, step.values, strict=True)):
        tokens = slice(qsl[r], qsl[r + 1])
        out[tokens] = dense_attention(step.q[tokens], keys, values, **options)
    return out


def run(step: Step, dtype, *, jit: bool = False, **options) -> tuple[np.ndarray, np.ndarray]:
    """The op on ``step`` in ``dtype``; returns (out, kv_cache) as float32 numpy arrays."""
    fn = functools.partial(reference.ragged_paged_attention, **options)
    if jit:
        fn = jax.jit(fn)  # the metadata goes in as a pytree argument
    out, kv_cache = fn(
        jnp.asarray(step.q, dtype),
        jnp.asarray(step.k, dtype),
        jnp.asarray(step.v, dtype),
        jnp.asarray(step.kv_cache, dtype),
        jax.tree.map(jnp.asarray, step.md),
    )
    assert out.dtype == dtype and kv_cache.dtype == dtype
    return np.asarray(out, np.float32), np.asarray(kv_cache, np.float32)


def check(step: Step, dtype, *, jit: bool = False, **options) -> None:
    """Output close to dense attention, padding output zero, cache written exactly."""
    options["sm_scale"] = step.q.shape[-1] ** -0.5
    out, kv_cache = run(step, dtype, jit=jit, **options)
    expected = expected_output(step, **options)
    np.testing.assert_allclose(out, expected, atol=ATOL[dtype], rtol=RTOL[dtype])
    np.testing.assert_array_equal(out[step.num_tokens :], 0.0)
    # assert_array_equal treats NaN == NaN: unused rows must stay NaN, padding K/V unwritten.
    np.testing.assert_array_equal(kv_cache, step.expected_kv_cache)


@pytest.mark.parametrize("heads", HEADS.values(), ids=HEADS.keys())
@pytest.mark.parametrize("case", CASES.keys())
def test_matches_dense_attention(case: str, heads: tuple[int, int]) -> None:
    check(make_step(case, *heads), jnp.float32)


@pytest.mark.parametrize("case", CASES.keys())
def test_matches_dense_attention_under_jit(case: str) -> None:
    check(make_step(case, 4, 2, seed=1), jnp.float32, jit=True)


def test_bfloat16() -> None:
    check(make_step("mixed", 8, 2, dtype=jnp.bfloat16, head_dim=64, seed=2), jnp.bfloat16, jit=True)


@pytest.mark.parametrize("case", ["mixed", "chunked_prefill"])
def test_sliding_window(case: str) -> None:
    # Small pages, so the window starts inside pages and drops whole ones.
    check(make_step(case, 4, 2, block_size=4, seed=3), jnp.float32, jit=True, sliding_window=5)


@pytest.mark.parametrize("case", ["prefill_only", "chunked_prefill"])
def test_soft_cap(case: str) -> None:
    check(make_step(case, 4, 2, head_dim=64, seed=4), jnp.float32, jit=True, soft_cap=0.5)


def test_all_padding_leaves_cache_unchanged() -> None:
    """The dummy step the runner compiles at start-up: nothing is written, every output is 0."""
    step = make_step("mixed", 4, 2, seed=5)
    md = AttentionMetadata(
        slot_mapping=np.full_like(step.md.slot_mapping, -1),
        block_tables=np.zeros_like(step.md.block_tables),
        seq_lens=np.zeros_like(step.md.seq_lens),
        query_start_loc=np.zeros_like(step.md.query_start_loc),
    )
    step = dataclasses.replace(step, md=md, keys=[], values=[], expected_kv_cache=step.kv_cache)
    check(step, jnp.float32, jit=True)


def test_rejects_head_ratio() -> None:
    step = make_step("decode_only", 6, 4)
    with pytest.raises(ValueError, match="num_q_heads=6 must be divisible by num_kv_heads=4"):
        run(step, jnp.float32, sm_scale=1.0)
