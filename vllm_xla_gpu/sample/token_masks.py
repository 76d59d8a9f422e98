"""Packed token masks: which tokens a request may sample this step, 32 tokens to an int32 word.

vLLM's structured-output backends (xgrammar) describe the allowed tokens as a bitmask of
``int32[ceil(vocab_size / 32)]`` per request: bit ``t % 32`` of word ``t // 32`` set means token
``t`` is allowed. This backend uses the same layout for every option that *forbids* tokens, so
that all of them reach the jitted sampler as one fixed-shape array and are applied by one op
(:func:`vllm_xla_gpu.sample.logits_processors.apply_token_bitmask`):

* ``allowed_token_ids``: only the listed tokens (vLLM's ``allowed_token_ids_mask``);
* ``bad_words``: the last token of a bad word whose other tokens end the output so far
  (vLLM's ``apply_bad_words``);
* ``min_tokens``: the request's stop tokens until it has produced ``min_tokens`` tokens
  (vLLM's ``MinTokensLogitsProcessor``).

Everything here is host-side numpy, computed per request and step. A word of all ones (``-1``)
allows all of its 32 tokens, so an all ``-1`` row changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from vllm.v1.core.sched.output import GrammarOutput

ALL_ALLOWED = -1  # an int32 word with every bit set


def num_mask_words(vocab_size: int) -> int:
    """Words in one row of a packed mask: ``ceil(vocab_size / 32)``, as xgrammar allocates."""
    return -(-vocab_size // 32)


def allowed_mask(token_ids: Iterable[int], vocab_size: int) -> np.ndarray:  # i32[words]
    """A row that allows exactly ``token_ids``."""
    words = np.zeros(num_mask_words(vocab_size), np.uint32)
    ids = np.fromiter(token_ids, np.int64)
    np.bitwise_or.at(words, ids >> 5, np.left_shift(np.uint32(1), (ids & 31).astype(np.uint32)))
    return words.view(np.int32)


def forbid(row: np.ndarray, token_ids: Iterable[int]) -> None:
    """Clear the bits of ``token_ids`` in ``row`` (``i32[words]``, changed in place)."""
    words = row.view(np.uint32)
    ids = np.fromiter(token_ids, np.int64)
    bits = np.left_shift(np.uint32(1), (ids & 31).astype(np.uint32))
    np.bitwise_and.at(words, ids >> 5, ~bits)


def is_allowed(row: np.ndarray, token_ids: Sequence[int]) -> np.ndarray:  # bool[len(token_ids)]
    """Whether each of ``token_ids`` is allowed by ``row``."""
    ids = np.asarray(token_ids, np.int64)
    return (row.view(np.uint32)[ids >> 5] >> (ids & 31).astype(np.uint32)) & 1 == 1


def any_allowed(row: np.ndarray, vocab_size: int) -> bool:
    """Whether ``row`` allows any token below ``vocab_size`` (bits past it are ignored)."""
    words = row.view(np.uint32)
    full, rest = divmod(vocab_size, 32)
    if words[:full].any():
        return True
    return bool(rest and words[full] & np.uint32((1 << rest) - 1))


def banned_by_bad_words(bad_words: list[list[int]], output_token_ids: Sequence[int]) -> list[int]:
    """Tokens that would complete a bad word after ``output_token_ids``.

    vLLM's rule (``vllm/v1/sample/ops/bad_words.py``): a bad word of ``n`` tokens bans its last
    token when its first ``n - 1`` tokens are the last ``n - 1`` output tokens; only the output
    counts, not the prompt.
    """
    banned = []
    for word in bad_words:
        prefix = word[:-1]
        if len(prefix) > len(output_token_ids):
            continue
        if not prefix or list(output_token_ids[-len(prefix) :]) == prefix:
            banned.append(word[-1])
    return banned


def ordered_grammar_bitmask(
    grammar_output: GrammarOutput | None, req_ids: list[str], vocab_size: int
) -> np.ndarray | None:  # i32[len(req_ids), num_mask_words(vocab_size)]
    """The scheduler's grammar bitmask, one row per request of the step in output order.

    vLLM's scheduler sends rows only for structured-output requests, in the order of
    ``structured_output_request_ids`` (as ``apply_grammar_bitmask`` in vLLM's
    ``v1/structured_output/utils.py`` reorders them); other requests get all ``-1`` rows.
    Returns None when there is no grammar in the step.
    """
    if grammar_output is None:
        return None
    words = num_mask_words(vocab_size)
    index = {req_id: i for i, req_id in enumerate(req_ids)}
    out = np.full((len(req_ids), words), ALL_ALLOWED, np.int32)
    source = np.asarray(grammar_output.grammar_bitmask, np.int32)
    width = min(words, source.shape[1])
    for k, req_id in enumerate(grammar_output.structured_output_request_ids):
        if req_id in index:
            out[index[req_id], :width] = source[k, :width]
    return out
