"""Logprobs in vLLM's format: the chosen token's logprob and rank, then the top ``k``.

vLLM's ``Sampler.gather_logprobs`` (``vllm/v1/sample/sampler.py``) returns per position
``[chosen, top_1, ..., top_k]`` token ids and logprobs, plus the chosen token's rank (how many
tokens have a logprob at least as large: 1 for the most likely). With the default
``logprobs_mode="raw_logprobs"`` the logprobs are ``log_softmax`` of the logits before any
sampling processor (after the grammar bitmask, which vLLM's runner applies to the logits before
its sampler). Prompt logprobs use the same gather on every prompt position, with the next prompt
token as the chosen one.

Here ``k`` is always :data:`MAX_LOGPROBS`, so the shapes depend on the bucket only; the host keeps
the columns a request asked for. Work is skipped with ``lax.cond`` when no row wants logprobs.

The top ``k`` of a row come from its ``k`` groups of :data:`GROUP_SIZE` logits with the largest
maxima (:func:`grouped_top_k`), never from a sort of the whole vocabulary: ``lax.top_k`` with
``k > 16`` sorts, and a ``[256, 128k]`` sort is slow in XLA's own sort kernel, while CUB's radix
sort (XLA's other choice) cannot be recorded into a CUDA graph (``worker.py``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from vllm.v1.outputs import LogprobsLists

from vllm_xla_gpu.sample.metadata import MAX_LOGPROBS

# Logits per group (grouped_top_k here, top-k/top-p candidates in sampler.py): a multiple of a
# warp, and 4k groups for a 128k vocabulary.
GROUP_SIZE = 32


class TopLogprobs(NamedTuple):
    """Logprobs of the chosen token and the top :data:`MAX_LOGPROBS` tokens, per position."""

    token_ids: jax.Array  # i32[n, 1 + MAX_LOGPROBS] chosen token, then the top ids (fewer
    # columns when the vocabulary has fewer tokens)
    logprobs: jax.Array  # f32[n, 1 + MAX_LOGPROBS]
    ranks: jax.Array  # i32[n] rank of the chosen token (1 = most likely)


def top_logprobs(
    logits: jax.Array,  # f32[n, vocab_size]
    chosen: jax.Array,  # i32[n]
) -> TopLogprobs:
    """``log_softmax`` of ``logits``, gathered at ``chosen`` and at the top tokens."""
    logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    top_values, top_ids = grouped_top_k(logprobs, _num_top(logits.shape[-1]))
    chosen_logprob = jnp.take_along_axis(logprobs, chosen[:, None], axis=-1)
    ranks = jnp.sum(logprobs >= chosen_logprob, axis=-1, dtype=jnp.int32)
    return TopLogprobs(
        jnp.concatenate([chosen[:, None], top_ids.astype(jnp.int32)], axis=-1),
        jnp.concatenate([chosen_logprob, top_values], axis=-1),
        ranks,
    )


def top_logprobs_if(
    wanted: jax.Array,  # bool[] whether any position needs logprobs
    logits: jax.Array,  # f32[n, vocab_size]
    chosen: jax.Array,  # i32[n]
) -> TopLogprobs:
    """:func:`top_logprobs` when ``wanted``, else zeros of the same shapes (no work)."""
    n = logits.shape[0]

    def nothing(logits: jax.Array, chosen: jax.Array) -> TopLogprobs:
        columns = 1 + _num_top(logits.shape[-1])
        return TopLogprobs(
            jnp.zeros((n, columns), jnp.int32),
            jnp.zeros((n, columns), jnp.float32),
            jnp.zeros(n, jnp.int32),
        )

    return jax.lax.cond(wanted, top_logprobs, nothing, logits, chosen)


def grouped_top_k(
    x: jax.Array,  # f32[n, vocab_size]
    k: int,
) -> tuple[jax.Array, jax.Array]:  # f32[n, k], i32[n, k]
    """``lax.top_k(x, k)``, ties included, without sorting whole rows.

    Each of a row's top ``k`` values lies in a group whose maximum is among the ``k`` largest
    group maxima, so the top ``k`` of those groups' members are the row's. The chosen groups are
    put back in vocabulary order first, so that ties go to the lower index as in ``lax.top_k``.
    """
    n, vocab_size = x.shape
    if -(-vocab_size // GROUP_SIZE) <= k:
        values, ids = jax.lax.top_k(x, k)
        return values, ids.astype(jnp.int32)
    groups = logit_groups(x)
    group_ids = jnp.sort(jax.lax.top_k(jnp.max(groups, axis=-1), k)[1], axis=-1)
    members = jnp.take_along_axis(groups, group_ids[:, :, None], axis=1).reshape(n, -1)
    values, positions = jax.lax.top_k(members, k)
    group_of = jnp.take_along_axis(group_ids, positions // GROUP_SIZE, axis=-1)
    return values, (group_of * GROUP_SIZE + positions % GROUP_SIZE).astype(jnp.int32)


def logit_groups(
    x: jax.Array,  # f32[n, vocab_size]
) -> jax.Array:  # f32[n, ceil(vocab_size / GROUP_SIZE), GROUP_SIZE]
    """Each row cut into groups of :data:`GROUP_SIZE`; the last is padded with ``-inf``, past
    the last token, so a tie at ``-inf`` goes to a real token first."""
    n, vocab_size = x.shape
    padded = jnp.pad(x, ((0, 0), (0, -vocab_size % GROUP_SIZE)), constant_values=-jnp.inf)
    return padded.reshape(n, -1, GROUP_SIZE)


def _num_top(vocab_size: int) -> int:
    return min(MAX_LOGPROBS, vocab_size)


def to_logprobs_lists(
    top: TopLogprobs,  # numpy-backed, first rows = the step's requests in output order
    num_logprobs: np.ndarray,  # i32[num_reqs] per request; -1 for none
) -> LogprobsLists | None:
    """vLLM's ``LogprobsLists`` for the step, or None when no request asked for logprobs.

    As on vLLM's GPU runner, every row keeps the step's largest ``num_logprobs + 1`` columns;
    vLLM's output processor keeps the first ``num_logprobs + 1`` of each request.
    """
    if len(num_logprobs) == 0 or num_logprobs.max() < 0:
        return None
    columns = int(num_logprobs.max()) + 1
    n = len(num_logprobs)
    return LogprobsLists(
        np.asarray(top.token_ids)[:n, :columns],
        np.asarray(top.logprobs)[:n, :columns],
        np.asarray(top.ranks)[:n],
    )
