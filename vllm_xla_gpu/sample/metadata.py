"""Per-request sampling parameters: host staging (numpy) and the device pytree the sampler reads.

vLLM hands the runner one ``SamplingParams`` per request. The runner keeps them here, one row
per persistent-batch row (``max_num_reqs`` rows), from the moment a request gets a row:

* :class:`SamplingInputs` owns the numpy arrays, filled by row with ``set_request`` when a
  request is added and reset by ``clear``.
* :meth:`SamplingInputs.to_metadata` gathers the rows of one step, in output order, and pads them
  to the step's request bucket with greedy rows; the result is a :class:`SamplingMetadata` that goes
  to the device packed in one buffer (``runner/transfer.py``) and into the jitted sampler
  (``sample/sampler.py``).

Every field is array data of a shape fixed by the request bucket: which options a request uses
never changes the compiled program. The large fields (the token history that penalties count,
the logit-bias slots, the packed token masks) are built only in steps where some row uses them;
other steps pass constant arrays that stay on the device, so they cost no transfer.

Randomness: each request has a 32-bit seed (its own ``SamplingParams.seed`` modulo ``2**32``, or,
for an unseeded request, a random seed the runner draws when the request is added). The sampler
derives the key of a draw from that seed and ``step`` (how many tokens the request has produced),
so a request's draw depends only on its seed and position, not on which other requests share the
batch or on its row.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vllm_xla_gpu.sample import token_masks

if TYPE_CHECKING:
    from vllm.sampling_params import SamplingParams

# Temperatures below this are greedy: vLLM's ``_SAMPLING_EPS`` (vllm/v1/sample/sampler.py).
SAMPLING_EPS = 1e-5
# Top logprobs the sampler always computes (vLLM's default ``max_logprobs``); a request asks
# for up to this many.
MAX_LOGPROBS = 20
# Logit-bias entries per request: the slots of ``logit_bias_ids`` (OpenAI documents no limit;
# a request with more is refused by the platform).
MAX_LOGIT_BIAS = 300

# Field values of a row without a request: greedy, no filters, no penalties, no logprobs.
# Padding rows get them too.
_DEFAULT_ROW = {
    "temperature": 0.0,
    "top_k": 0,
    "top_p": 1.0,
    "min_p": 0.0,
    "seeds": 0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
    "num_logprobs": -1,
}
_DTYPES = {
    "temperature": np.float32,
    "top_k": np.int32,
    "top_p": np.float32,
    "min_p": np.float32,
    "seeds": np.uint32,
    "presence_penalty": np.float32,
    "frequency_penalty": np.float32,
    "repetition_penalty": np.float32,
    "num_logprobs": np.int32,
}


@dataclasses.dataclass
class SamplingMetadata:
    """Sampling parameters of one step's requests, one row per request of the request bucket.

    Built on the host (:meth:`SamplingInputs.to_metadata`) and moved by the packed transfer of
    ``runner/transfer.py``; inside ``jax.jit`` the fields are traced arrays.

    Attributes:
        temperature: softmax temperature; below :data:`SAMPLING_EPS` (0 in practice) the row is
            greedy: the argmax of the processed logits, ignoring the filters below.
        top_k: keep the ``top_k`` largest logits; off when ``<= 0`` or ``>= vocab_size``.
        top_p: keep the smallest set of most likely tokens whose probability reaches ``top_p``;
            off when ``>= 1``.
        min_p: drop tokens less likely than ``min_p`` times the most likely token; off when 0.
        seeds: the request's 32-bit sampling seed.
        step: tokens the request has produced so far; folded into the seed's key.
        presence_penalty, frequency_penalty, repetition_penalty: vLLM's penalties (off at 0, 0,
            1).
        token_ids: the request's prompt then output tokens (what penalties count); garbage
            past ``num_prompt_tokens + step``.
        num_prompt_tokens: prompt length of the request.
        logit_bias_ids, logit_bias_values: the request's ``logit_bias`` as slots; unused slots
            hold token ``vocab_size`` (out of range: dropped) and bias 0.
        token_mask: packed allowed tokens from ``allowed_token_ids``, ``bad_words`` and
            ``min_tokens`` (``sample/token_masks.py``); all ``-1`` allows everything.
        grammar_bitmask: the structured-output bitmask (xgrammar's layout), all ``-1`` for rows
            without a grammar.
        num_logprobs: logprobs the request wants per token, ``-1`` for none.
    """

    temperature: jax.Array  # f32[num_reqs]
    top_k: jax.Array  # i32[num_reqs]
    top_p: jax.Array  # f32[num_reqs]
    min_p: jax.Array  # f32[num_reqs]
    seeds: jax.Array  # u32[num_reqs]
    step: jax.Array  # i32[num_reqs]
    presence_penalty: jax.Array  # f32[num_reqs]
    frequency_penalty: jax.Array  # f32[num_reqs]
    repetition_penalty: jax.Array  # f32[num_reqs]
    token_ids: jax.Array  # i32[num_reqs, max_model_len]
    num_prompt_tokens: jax.Array  # i32[num_reqs]
    logit_bias_ids: jax.Array  # i32[num_reqs, MAX_LOGIT_BIAS]
    logit_bias_values: jax.Array  # f32[num_reqs, MAX_LOGIT_BIAS]
    token_mask: jax.Array  # i32[num_reqs, ceil(vocab_size / 32)]
    grammar_bitmask: jax.Array  # i32[num_reqs, ceil(vocab_size / 32)]
    num_logprobs: jax.Array  # i32[num_reqs]


jax.tree_util.register_dataclass(
    SamplingMetadata,
    data_fields=[f.name for f in dataclasses.fields(SamplingMetadata)],
    meta_fields=[],
)


class TokenHistory(NamedTuple):
    """The persistent batch's tokens, by batch row (views of ``InputBatch`` arrays)."""

    token_ids: np.ndarray  # i32[max_num_reqs, max_model_len] prompt then output tokens
    num_prompt_tokens: np.ndarray  # i32[max_num_reqs]
    num_tokens: np.ndarray  # i32[max_num_reqs] prompt plus output tokens


@dataclasses.dataclass
class _RowOptions:
    """A request's options that are not one number per row (kept only when used)."""

    logit_bias: tuple[np.ndarray, np.ndarray] | None  # (i32 token ids, f32 biases)
    allowed: np.ndarray | None  # i32[words] packed allowed_token_ids
    bad_words: list[list[int]]
    min_tokens: int
    stop_token_ids: list[int]
    structured: bool

    @property
    def needs_mask(self) -> bool:
        return self.allowed is not None or bool(self.bad_words) or self.min_tokens > 0


class SamplingInputs:
    """Host staging of every batch row's sampling parameters (numpy, ``max_num_reqs`` rows).

    Rows without a request hold greedy defaults.

    Args:
        max_num_reqs: number of rows (vLLM's ``max_num_seqs``).
        vocab_size: width of the logits.
        max_model_len: token capacity of a row (width of the penalties' token history).
        device: where the constant "unused" arrays live (default: JAX's default device).
    """

    def __init__(
        self,
        max_num_reqs: int,
        vocab_size: int,
        max_model_len: int,
        device: jax.Device | None = None,
    ) -> None:
        self.max_num_reqs = max_num_reqs
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.device = device
        # One 32-bit word per (field, row), plus a last column of defaults that padding rows
        # copy: a step gathers every per-row field with one indexing operation. Each field's
        # attribute (``self.temperature``...) is a typed view of its row of the table.
        self._rows = np.empty((len(_DEFAULT_ROW), max_num_reqs + 1), np.uint32)
        for i, (name, value) in enumerate(_DEFAULT_ROW.items()):
            self._rows[i].view(_DTYPES[name])[:] = value
            setattr(self, name, self._rows[i, :max_num_reqs].view(_DTYPES[name]))
        self.options: list[_RowOptions | None] = [None] * max_num_reqs
        # Rows whose sampling is the argmax of the raw logits (see plain_greedy), kept per row
        # because the runner asks every step.
        self._plain_greedy = np.ones(max_num_reqs, bool)
        self._constants: dict[tuple, jax.Array] = {}

    def set_request(self, row: int, params: SamplingParams, seed: int) -> None:
        """Store a request's parameters in ``row``.

        Args:
            row: the request's batch row.
            params: the request's sampling parameters.
            seed: ``params.seed`` when set, else a random seed the runner drew for the request;
                any Python int (taken modulo ``2**32``).
        """
        greedy = params.temperature < SAMPLING_EPS
        self.temperature[row] = 0.0 if greedy else params.temperature
        # vLLM's top_k is 0 or -1 when off; store 0 for both.
        self.top_k[row] = max(params.top_k, 0)
        self.top_p[row] = params.top_p
        self.min_p[row] = params.min_p
        self.seeds[row] = seed % 2**32
        self.presence_penalty[row] = params.presence_penalty
        self.frequency_penalty[row] = params.frequency_penalty
        self.repetition_penalty[row] = params.repetition_penalty
        self.num_logprobs[row] = -1 if params.logprobs is None else params.logprobs
        self.options[row] = _row_options(params, self.vocab_size)
        no_processing = not penalized(params) and self.options[row] is None
        self._plain_greedy[row] = greedy and params.logprobs is None and no_processing

    def plain_greedy(self, rows: np.ndarray) -> bool:
        """Whether every row takes the argmax of its raw logits: greedy, without logprobs,
        penalties, logit bias or token masks (vLLM's sampler has the same all-greedy shortcut).
        The grammar bitmask is the caller's to check."""
        return bool(self._plain_greedy[rows].all())

    def clear(self, row: int) -> None:
        """Reset ``row`` to the greedy defaults (the request left the batch)."""
        for name, value in _DEFAULT_ROW.items():
            getattr(self, name)[row] = value
        self.options[row] = None
        self._plain_greedy[row] = True

    def to_metadata(
        self,
        rows: np.ndarray,  # i32[num_reqs] batch rows of the step's requests, in output order
        history: TokenHistory,
        num_reqs_padded: int,
        grammar_bitmask: np.ndarray | None = None,  # i32[num_reqs, words] in output order
    ) -> SamplingMetadata:
        """Gather one step's rows and pad them with greedy rows to the request bucket.

        Args:
            rows: batch rows of the requests to sample, in the order of the logits.
            history: the batch's tokens (penalties, bad words and min-tokens read them).
            num_reqs_padded: the request bucket (``>= len(rows)``).
            grammar_bitmask: structured-output bitmask of each request (all ``-1`` rows for
                requests without a grammar), or None when no request has one.

        Returns:
            Metadata with ``num_reqs_padded`` rows: numpy arrays, and device constants for the
            large fields no row uses.
        """
        num_reqs = len(rows)
        if num_reqs > num_reqs_padded:
            raise ValueError(f"{num_reqs=} rows do not fit in {num_reqs_padded=}")
        index = np.full(num_reqs_padded, self.max_num_reqs, np.intp)  # the defaults column
        index[:num_reqs] = rows
        gathered = self._rows[:, index]
        fields = {name: gathered[i].view(_DTYPES[name]) for i, name in enumerate(_DEFAULT_ROW)}
        fields["step"] = np.zeros(num_reqs_padded, np.int32)
        fields["step"][:num_reqs] = history.num_tokens[rows] - history.num_prompt_tokens[rows]
        options = [self.options[r] for r in rows]
        fields.update(self._penalty_history(rows, history, num_reqs_padded))
        fields.update(self._logit_bias(options, num_reqs_padded))
        fields["token_mask"] = self._token_mask(
            rows, options, history, grammar_bitmask, num_reqs_padded
        )
        fields["grammar_bitmask"] = self._padded_mask(grammar_bitmask, num_reqs_padded)
        return SamplingMetadata(**fields)

    # ---- one field group each -------------------------------------------------------------

    def _penalty_history(self, rows, history: TokenHistory, num_reqs_padded: int) -> dict:
        num_reqs = len(rows)
        # penalized() per row, on the columns (the local name must not hide that function)
        rows_penalized = (
            (self.presence_penalty[rows] != 0)
            | (self.frequency_penalty[rows] != 0)
            | (self.repetition_penalty[rows] != 1)
        )
        if not rows_penalized.any():
            return {
                "token_ids": self._constant((num_reqs_padded, self.max_model_len), np.int32, 0),
                "num_prompt_tokens": np.zeros(num_reqs_padded, np.int32),
            }
        token_ids = np.zeros((num_reqs_padded, self.max_model_len), np.int32)
        token_ids[:num_reqs] = history.token_ids[rows]
        num_prompt = np.zeros(num_reqs_padded, np.int32)
        num_prompt[:num_reqs] = history.num_prompt_tokens[rows]
        return {"token_ids": token_ids, "num_prompt_tokens": num_prompt}

    def _logit_bias(self, options: list[_RowOptions | None], num_reqs_padded: int) -> dict:
        shape = (num_reqs_padded, MAX_LOGIT_BIAS)
        if not any(o is not None and o.logit_bias is not None for o in options):
            return {
                "logit_bias_ids": self._constant(shape, np.int32, self.vocab_size),
                "logit_bias_values": self._constant(shape, np.float32, 0.0),
            }
        ids = np.full(shape, self.vocab_size, np.int32)
        values = np.zeros(shape, np.float32)
        for i, o in enumerate(options):
            if o is not None and o.logit_bias is not None:
                n = len(o.logit_bias[0])
                ids[i, :n], values[i, :n] = o.logit_bias
        return {"logit_bias_ids": ids, "logit_bias_values": values}

    def _token_mask(self, rows, options, history, grammar_bitmask, num_reqs_padded):
        if not any(o is not None and o.needs_mask for o in options):
            return self._padded_mask(None, num_reqs_padded)
        words = token_masks.num_mask_words(self.vocab_size)
        mask = np.full((num_reqs_padded, words), token_masks.ALL_ALLOWED, np.int32)
        for i, (row, o) in enumerate(zip(rows, options, strict=True)):
            if o is None or not o.needs_mask:
                continue
            start, end = history.num_prompt_tokens[row], history.num_tokens[row]
            output = history.token_ids[row, start:end]
            if o.allowed is not None:
                mask[i] = o.allowed
            token_masks.forbid(mask[i], token_masks.banned_by_bad_words(o.bad_words, output))
            if len(output) < o.min_tokens and o.stop_token_ids:
                grammar = None if grammar_bitmask is None else grammar_bitmask[i]
                _forbid_stop_tokens(mask[i], o, grammar, self.vocab_size)
        return mask

    def _padded_mask(self, mask: np.ndarray | None, num_reqs_padded: int):
        words = token_masks.num_mask_words(self.vocab_size)
        if mask is None:
            return self._constant((num_reqs_padded, words), np.int32, token_masks.ALL_ALLOWED)
        out = np.full((num_reqs_padded, words), token_masks.ALL_ALLOWED, np.int32)
        out[: mask.shape[0]] = mask
        return out

    def _constant(self, shape: tuple[int, ...], dtype, value) -> jax.Array:
        """A device array of ``value``, made once per shape and reused by every step.

        Uncommitted (placed on the default device, which is the runner's): the same field of
        another step may be a numpy array, which jit also treats as uncommitted, and both must
        map to one compiled program."""
        key = (shape, dtype, value)  # dtype as given: numpy's dtype.name is slow
        if key not in self._constants:
            with jax.default_device(self.device):
                self._constants[key] = jnp.asarray(np.full(shape, value, dtype))
        return self._constants[key]


def penalized(params: SamplingParams) -> bool:
    """Whether the request has a presence, frequency or repetition penalty."""
    return (
        params.presence_penalty != 0
        or params.frequency_penalty != 0
        or params.repetition_penalty != 1
    )


def _row_options(params: SamplingParams, vocab_size: int) -> _RowOptions | None:
    bias = None
    if params.logit_bias:
        bias = (
            np.fromiter(params.logit_bias.keys(), np.int32),
            np.fromiter(params.logit_bias.values(), np.float32),
        )
    allowed = None
    if params.allowed_token_ids:
        allowed = token_masks.allowed_mask(params.allowed_token_ids, vocab_size)
    options = _RowOptions(
        logit_bias=bias,
        allowed=allowed,
        bad_words=list(params.bad_words_token_ids or []),
        min_tokens=params.min_tokens,
        stop_token_ids=sorted(params.all_stop_token_ids),
        structured=params.structured_outputs is not None,
    )
    if bias is None and not options.needs_mask:
        return None
    return options


def _forbid_stop_tokens(
    mask: np.ndarray,  # i32[words] the row's token mask, changed in place
    options: _RowOptions,
    grammar: np.ndarray | None,  # i32[words] the row's grammar bitmask
    vocab_size: int,
) -> None:
    """Forbid the stop tokens (``min_tokens`` not reached yet).

    As vLLM's ``MinTokensLogitsProcessor``: for a structured-output request, when forbidding
    them would leave no token at all, the stop tokens the grammar allows stay allowed.
    """
    stops = [t for t in options.stop_token_ids if t < vocab_size]
    if not options.structured or grammar is None:
        token_masks.forbid(mask, stops)
        return
    before = mask & grammar
    after = before.copy()
    token_masks.forbid(after, stops)
    if token_masks.any_allowed(after, vocab_size):
        token_masks.forbid(mask, stops)
