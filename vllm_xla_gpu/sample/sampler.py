"""The jitted sampler: one token per request from the logits, with vLLM V1's semantics.

Last stage of a step: the runner computes the logits at each request's last token, pads them to
the request bucket, and calls :func:`sample` inside its jitted ``sample_step``. The order and the
formulas are those of vLLM's ``Sampler.forward`` (``vllm/v1/sample/sampler.py``), with the
structured-output bitmask first, as vLLM's GPU runner applies it before its sampler:

0. the grammar bitmask (``sample/logits_processors.py``); raw logprobs are taken here;
1. the processors that can change the argmax: allowed tokens, bad words, min-tokens, logit bias,
   penalties (``sample/logits_processors.py``);
2. greedy rows (temperature < ``SAMPLING_EPS``) take the argmax of the processed logits;
3. the others divide by their temperature,
4. drop tokens below ``min_p`` times the most likely one (``MinPLogitsProcessor``),
5. apply top-k, then top-p (``apply_top_k_top_p_pytorch`` in ``ops/topk_topp_sampler.py``),
6. and draw by the exponential race: ``argmax(probs / q)`` with ``q ~ Exp(1)`` per token
   (``random_sample``); ``q`` comes from a key of the request's seed and step;
7. the chosen token's logprob and rank and the top-20 logprobs (``sample/logprobs.py``).

Every option is array data (an "off" value disables a filter), so there is one compiled program
per request bucket whatever the requests ask for. Work that no row of the step needs is skipped
with ``lax.cond`` on that data: the random path when every row is greedy, top-k/top-p when no row
uses them, masks, penalties and logprobs when no row asks for them. The module owns no state.

Top-k and top-p without sorting the vocabulary. Both keep every logit at or above a per-row
threshold, which vLLM finds by sorting the whole row. On an H100, XLA sorts a ``[256, 128k]`` block
in about 2.3 ms (``lax.top_k`` with k > 16 sorts too): longer than a decode step of a small model.
Here the row is cut into groups of 32 logits (``logprobs.logit_groups``) and only the
``_NUM_CANDIDATE_GROUPS`` groups with the largest maxima are sorted. The thresholds found among
these candidates are exact when every logit left outside is below the threshold, which holds
whenever top-k/top-p keep at most ``_NUM_CANDIDATE_GROUPS`` tokens (each kept token's group is then
among the candidates). A step where some row keeps more (a wide nucleus: top-p near 1 on a flat
distribution) sorts the full rows instead, so the result is always exact. Measured on an H100
(2026-11-24, vocab 128256, 8 / 64 / 256 rows, whole ``sample``): greedy-only 0.12 / 0.14 / 0.13 ms,
temperature only 0.12 / 0.24 / 0.53 ms, top-k/top-p from the candidates 0.15 / 0.4 / 0.8 ms, the
full-sort step 0.44 / 1.4 / 3.5 ms. The kept sets equal vLLM's, except that a tie at the top-p
boundary is kept whole (vLLM's sort may split it) and the top-p sums are rounded in a different
order.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from vllm_xla_gpu.sample.logits_processors import apply_logits_processors, apply_token_bitmask
from vllm_xla_gpu.sample.logprobs import TopLogprobs, logit_groups, top_logprobs_if
from vllm_xla_gpu.sample.metadata import SAMPLING_EPS, SamplingMetadata

# Top-k/top-p candidates: how many groups of logits (by largest member) to sort. Kept sets of up
# to _NUM_CANDIDATE_GROUPS tokens never need the full sort.
_NUM_CANDIDATE_GROUPS = 128


class SamplerOutput(NamedTuple):
    """What :func:`sample` returns for the request bucket."""

    sampled_token_ids: jax.Array  # i32[num_reqs]
    logprobs: TopLogprobs  # raw logprobs of the sampled and top tokens (zeros when unused)


def sample(
    logits: jax.Array,  # f32[num_reqs, vocab_size]
    md: SamplingMetadata,
) -> SamplerOutput:
    """Sample one token per row, and the logprobs the rows ask for.

    Args:
        logits: logits at each request's last token (padding rows included).
        md: the rows' sampling parameters.

    Returns:
        The sampled token id of every row and its logprobs.
    """
    logits = apply_token_bitmask(logits.astype(jnp.float32), md.grammar_bitmask)
    sampled = sample_processed(apply_logits_processors(logits, md), md)
    return SamplerOutput(sampled, top_logprobs_if(jnp.any(md.num_logprobs >= 0), logits, sampled))


def sample_processed(
    logits: jax.Array,  # f32[num_reqs, vocab_size]
    md: SamplingMetadata,
) -> jax.Array:  # i32[num_reqs]
    """Greedy or random choice from the processed logits (vLLM's ``Sampler.sample``)."""
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    is_greedy = md.temperature < SAMPLING_EPS
    random = jax.lax.cond(jnp.all(is_greedy), lambda: greedy, lambda: _sample_random(logits, md))
    return jnp.where(is_greedy, greedy, random)


def _sample_random(
    logits: jax.Array,  # f32[num_reqs, vocab_size]
    md: SamplingMetadata,
) -> jax.Array:  # i32[num_reqs]
    probs = jax.nn.softmax(filter_logits(logits, md), axis=-1)
    return random_sample(probs, md.seeds, md.step)


def filter_logits(
    logits: jax.Array,  # f32[num_reqs, vocab_size]
    md: SamplingMetadata,
) -> jax.Array:  # f32[num_reqs, vocab_size]
    """The logits random sampling draws from: scaled by temperature, filtered by min-p, top-k
    and top-p (in vLLM's order), with the dropped tokens at ``-inf``."""
    logits = apply_temperature(logits, md.temperature)
    logits = apply_min_p(logits, md.min_p)
    return apply_top_k_top_p(logits, md.top_k, md.top_p)


def apply_temperature(
    logits: jax.Array,  # f32[num_reqs, vocab_size]
    temperature: jax.Array,  # f32[num_reqs]
) -> jax.Array:  # f32[num_reqs, vocab_size]
    """Divide by the temperature; greedy rows divide by 1 (their result is not used)."""
    temperature = jnp.where(temperature < SAMPLING_EPS, 1.0, temperature)
    return logits / temperature[:, None]


def apply_min_p(
    logits: jax.Array,  # f32[num_reqs, vocab_size]
    min_p: jax.Array,  # f32[num_reqs]
) -> jax.Array:  # f32[num_reqs, vocab_size]
    """Drop tokens whose probability is below ``min_p`` times the row's largest; ``min_p = 0``
    drops nothing.

    vLLM's ``MinPLogitsProcessor.apply`` tests ``softmax(x) < max(softmax(x)) * min_p``; both
    sides share the normalizer, so this tests ``exp(x - max(x)) < min_p`` and needs no sum.
    """
    row_max = jnp.max(logits, axis=-1, keepdims=True)
    return jnp.where(jnp.exp(logits - row_max) < min_p[:, None], -jnp.inf, logits)


def apply_top_k_top_p(
    logits: jax.Array,  # f32[num_reqs, vocab_size]
    top_k: jax.Array,  # i32[num_reqs]
    top_p: jax.Array,  # f32[num_reqs]
) -> jax.Array:  # f32[num_reqs, vocab_size]
    """Keep the ``top_k`` largest logits, then the top-p nucleus of what is left.

    Ties with the k-th largest logit are kept, as in vLLM. A row turns top-k off with
    ``top_k <= 0`` or ``top_k >= vocab_size``, and top-p with ``top_p >= 1``.
    """
    vocab_size = logits.shape[-1]
    filtered = ((top_k > 0) & (top_k < vocab_size)) | (top_p < 1.0)
    threshold = jax.lax.cond(
        jnp.any(filtered),
        _top_k_top_p_threshold,
        lambda logits, *_: jnp.full(logits.shape[0], -jnp.inf),
        logits,
        top_k,
        top_p,
    )
    return jnp.where(logits >= threshold[:, None], logits, -jnp.inf)


def random_sample(
    probs: jax.Array,  # f32[num_reqs, vocab_size]
    seeds: jax.Array,  # u32[num_reqs]
    step: jax.Array,  # i32[num_reqs]
) -> jax.Array:  # i32[num_reqs]
    """Draw one token per row by the exponential race, ``argmax(probs / q)``, ``q ~ Exp(1)``.

    Dropped tokens have ``probs == 0`` and never win: the most likely token has a positive
    score because ``q`` is finite.
    """
    q = jax.vmap(_exponential_noise, in_axes=(0, 0, None))(seeds, step, probs.shape[-1])
    return jnp.argmax(probs / q, axis=-1).astype(jnp.int32)


def _exponential_noise(
    seed: jax.Array,  # u32[]
    step: jax.Array,  # i32[]
    vocab_size: int,
) -> jax.Array:  # f32[vocab_size]
    """Exp(1) noise of one request's draw at ``step``: a function of (seed, step) only."""
    key = jax.random.fold_in(jax.random.key(seed, impl="threefry2x32"), step)
    # u in [tiny, 1), so q = -log(u) is positive and finite. (``jax.random.exponential`` can
    # return 0: -log1p(-u) with u = 0, one token in 2**23, which would win every race.)
    u = jax.random.uniform(key, (vocab_size,), jnp.float32, minval=jnp.finfo(jnp.float32).tiny)
    return -jnp.log(u)


def _top_k_top_p_threshold(
    logits: jax.Array,  # f32[num_reqs, vocab_size]
    top_k: jax.Array,  # i32[num_reqs]
    top_p: jax.Array,  # f32[num_reqs]
) -> jax.Array:  # f32[num_reqs]
    """Smallest kept logit of each row: from the candidate groups, or from full sorted rows
    when the candidates do not settle some row."""
    candidates, max_outside = _top_candidates(logits)
    threshold, exact = _threshold_from_sorted(candidates, max_outside, logits, top_k, top_p)

    def full_sort() -> jax.Array:
        rows = jnp.sort(logits, axis=-1, descending=True)
        nothing_outside = jnp.full_like(max_outside, -jnp.inf)
        return _threshold_from_sorted(rows, nothing_outside, logits, top_k, top_p)[0]

    return jax.lax.cond(jnp.all(exact), lambda: threshold, full_sort)


def _top_candidates(
    logits: jax.Array,  # f32[num_reqs, vocab_size]
) -> tuple[jax.Array, jax.Array]:  # f32[num_reqs, num_candidates], f32[num_reqs]
    """The logits of the groups with the largest maxima, sorted descending, and the largest
    logit left outside them (``-inf`` when nothing is left out)."""
    num_reqs = logits.shape[0]
    groups = logit_groups(logits)
    num_groups = groups.shape[1]
    if num_groups <= _NUM_CANDIDATE_GROUPS:  # a small vocabulary: every logit is a candidate
        return jnp.sort(logits, axis=-1, descending=True), jnp.full(num_reqs, -jnp.inf)
    group_max, group_ids = jax.lax.top_k(jnp.max(groups, axis=-1), _NUM_CANDIDATE_GROUPS + 1)
    chosen = group_ids[:, :_NUM_CANDIDATE_GROUPS, None]
    candidates = jnp.take_along_axis(groups, chosen, axis=1).reshape(num_reqs, -1)
    return jnp.sort(candidates, axis=-1, descending=True), group_max[:, -1]


def _threshold_from_sorted(
    sorted_logits: jax.Array,  # f32[num_reqs, n] a row's largest logits, descending
    max_outside: jax.Array,  # f32[num_reqs] largest logit not in sorted_logits
    logits: jax.Array,  # f32[num_reqs, vocab_size]
    top_k: jax.Array,  # i32[num_reqs]
    top_p: jax.Array,  # f32[num_reqs]
) -> tuple[jax.Array, jax.Array]:  # f32[num_reqs], bool[num_reqs]
    """The top-k/top-p threshold of each row (``-inf`` when both are off), and whether it is
    exact: whether every logit left out of ``sorted_logits`` is dropped by it.

    Top-p keeps a token when the probability above it is below ``top_p``: vLLM's rule (sort
    ascending, drop where ``cumsum(probs) <= 1 - top_p``) read from the top.
    """
    n = sorted_logits.shape[-1]
    top_k_on = (top_k > 0) & (top_k < logits.shape[-1])
    kth = jnp.take_along_axis(sorted_logits, jnp.clip(top_k - 1, 0, n - 1)[:, None], axis=-1)
    k_threshold = jnp.where(top_k_on, kth[:, 0], -jnp.inf)

    # Probabilities of the top-k survivors, normalised over the whole row (one pass over it).
    row_max = sorted_logits[:, :1]
    survivors = logits >= k_threshold[:, None]
    normalizer = jnp.sum(jnp.where(survivors, jnp.exp(logits - row_max), 0.0), axis=-1)
    probs = jnp.where(sorted_logits >= k_threshold[:, None], jnp.exp(sorted_logits - row_max), 0.0)
    probs = probs / normalizer[:, None]
    mass_above = jnp.cumsum(probs, axis=-1) - probs
    num_kept = jnp.maximum(jnp.sum(mass_above < top_p[:, None], axis=-1), 1)
    top_p_on = top_p < 1.0
    p_threshold = jnp.take_along_axis(sorted_logits, num_kept[:, None] - 1, axis=-1)[:, 0]
    p_threshold = jnp.where(top_p_on, p_threshold, -jnp.inf)

    # Left-out logits are all dropped when they are -inf already, or below the threshold; top-p
    # must also have stopped inside sorted_logits (a token of it was dropped).
    nothing_outside = max_outside == -jnp.inf
    exact_k = ~top_k_on | (top_k <= n) & (k_threshold > max_outside)
    exact_p = ~top_p_on | (num_kept < n) & (p_threshold > max_outside)
    return jnp.maximum(k_threshold, p_threshold), nothing_outside | exact_k & exact_p
