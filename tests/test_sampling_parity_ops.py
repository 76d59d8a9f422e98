"""The jitted sampler's logits processors and logprobs against numpy references, on random logits.

The host staging (``SamplingInputs.to_metadata`` from real ``SamplingParams`` and a token
history) and the jitted ``sample`` run together, as in the runner. References: vLLM's formulas
in numpy (``sampling_reference.process_logits``) for penalties, logit bias, allowed tokens, bad
words and min-tokens; greedy rows must pick the argmax of the processed logits exactly, and
random rows must only pick tokens the processed logits allow. Logprobs: numpy ``log_softmax`` of
the (grammar-masked) raw logits, top 20 and the chosen token's rank.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from sampling_reference import process_logits
from vllm.sampling_params import SamplingParams

from vllm_xla_gpu.sample.logprobs import grouped_top_k
from vllm_xla_gpu.sample.metadata import MAX_LOGPROBS, SamplingInputs, TokenHistory
from vllm_xla_gpu.sample.sampler import sample
from vllm_xla_gpu.sample.token_masks import allowed_mask

VOCAB_SIZE = 1000  # not a multiple of 32: the packed masks' last word is partial
MAX_MODEL_LEN = 64
NUM_ROWS = 8
EOS = 2
# XLA and numpy round the penalty arithmetic in a different order.
LOGIT_RTOL = 1e-6
LOGPROB_ATOL = 1e-5
sample_jit = jax.jit(sample)


def make_history(rng, prompt_lens, output_lens) -> TokenHistory:
    token_ids = np.zeros((NUM_ROWS, MAX_MODEL_LEN), np.int32)
    n = len(prompt_lens)
    # Few distinct tokens, so that outputs repeat prompt tokens and each other.
    token_ids[:n] = rng.integers(3, 40, (n, MAX_MODEL_LEN))
    num_prompt = np.zeros(NUM_ROWS, np.int32)
    num_prompt[:n] = prompt_lens
    num_tokens = num_prompt.copy()
    num_tokens[:n] += output_lens
    return TokenHistory(token_ids, num_prompt, num_tokens)


def reference_logits(logits, params, history, row) -> np.ndarray:
    start, end = history.num_prompt_tokens[row], history.num_tokens[row]
    return process_logits(
        logits,
        history.token_ids[row, :start].tolist(),
        history.token_ids[row, start:end].tolist(),
        allowed_token_ids=params.allowed_token_ids,
        bad_words_token_ids=params.bad_words_token_ids or [],
        min_tokens=params.min_tokens,
        stop_token_ids=sorted(params.all_stop_token_ids),
        logit_bias=params.logit_bias,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        repetition_penalty=params.repetition_penalty,
    )


def with_bad_words(params: SamplingParams, words: list[list[int]]) -> SamplingParams:
    params._bad_words_token_ids = words  # what vLLM's tokenizer step stores
    return params


def with_eos(params: SamplingParams) -> SamplingParams:
    params._all_stop_token_ids.add(EOS)  # what vLLM's generation-config step adds
    return params


def processor_cases() -> dict[str, SamplingParams]:
    return {
        "presence": SamplingParams(temperature=0, presence_penalty=1.7),
        "frequency": SamplingParams(temperature=0, frequency_penalty=1.0, presence_penalty=-0.3),
        "repetition": SamplingParams(temperature=0, repetition_penalty=1.6),
        "logit_bias": SamplingParams(temperature=0, logit_bias={5: 30.0, 999: -5.0, 7: 2.5}),
        "allowed": SamplingParams(temperature=0, allowed_token_ids=[4, 31, 32, 500, 999]),
        # The first completes after the row's last output token (16); the second never does.
        "bad_words": with_bad_words(SamplingParams(temperature=0), [[16, 17], [990, 16, 18], [9]]),
        "min_tokens": with_eos(
            SamplingParams(temperature=0, min_tokens=50, max_tokens=60, stop_token_ids=[11, 12])
        ),
        "everything_random": with_eos(
            SamplingParams(
                temperature=0.9,
                seed=3,
                repetition_penalty=1.2,
                frequency_penalty=0.5,
                logit_bias={20: 1.0},
                min_tokens=9,
                allowed_token_ids=list(range(3, 600)),
            )
        ),
    }


@pytest.fixture(scope="module")
def step():
    rng = np.random.default_rng(0)
    history = make_history(rng, prompt_lens=[5, 9, 3, 12, 7, 4, 6, 8], output_lens=[6] * 8)
    cases = processor_cases()
    logits = (rng.standard_normal((NUM_ROWS, VOCAB_SIZE)) * 2).astype(np.float32)
    # Each row's favourite token is one its option must remove: the last output token (the
    # penalties, bias and allowed rows), 17 after 16 (bad words), a stop token (min-tokens).
    favourite = history.token_ids[np.arange(NUM_ROWS), history.num_tokens - 1]
    favourite[list(cases).index("min_tokens")] = 11
    bad = list(cases).index("bad_words")
    history.token_ids[bad, history.num_tokens[bad] - 1] = 16
    favourite[bad] = 17
    logits[np.arange(NUM_ROWS), favourite] = logits.max(-1) + 0.5
    inputs = SamplingInputs(NUM_ROWS, VOCAB_SIZE, MAX_MODEL_LEN)
    for row, params in enumerate(cases.values()):
        inputs.set_request(row, params, seed=row)
    return logits, history, cases, inputs


def test_processed_greedy_rows_match_numpy(step):
    logits, history, cases, inputs = step
    rows = np.arange(NUM_ROWS, dtype=np.int32)
    md = inputs.to_metadata(rows, history, NUM_ROWS)

    tokens = np.asarray(sample_jit(logits, md).sampled_token_ids)

    for row, (name, params) in enumerate(cases.items()):
        expected = reference_logits(logits[row], params, history, row)
        if params.temperature == 0:
            assert tokens[row] == np.argmax(expected), name
            assert tokens[row] != np.argmax(logits[row]), f"{name}: the option had no effect"
        else:
            assert np.isfinite(expected[tokens[row]]), name


def test_processors_equal_numpy_on_every_logit(step):
    """The processed logits themselves (greedy rows read them through the argmax only)."""
    from vllm_xla_gpu.sample.logits_processors import apply_logits_processors

    logits, history, cases, inputs = step
    rows = np.arange(NUM_ROWS, dtype=np.int32)
    md = inputs.to_metadata(rows, history, NUM_ROWS)

    actual = np.asarray(jax.jit(apply_logits_processors)(logits, md))

    for row, (name, params) in enumerate(cases.items()):
        expected = reference_logits(logits[row], params, history, row)
        np.testing.assert_array_equal(np.isfinite(actual[row]), np.isfinite(expected), name)
        kept = np.isfinite(expected)
        np.testing.assert_allclose(actual[row][kept], expected[kept], rtol=LOGIT_RTOL, err_msg=name)


def test_min_tokens_lifts_after_enough_tokens(step):
    logits, history, cases, inputs = step
    row = list(cases).index("min_tokens")
    logits = logits.copy()
    logits[row, EOS] = 100.0  # eos would win
    rows = np.arange(NUM_ROWS, dtype=np.int32)

    masked = np.asarray(sample_jit(logits, inputs.to_metadata(rows, history, NUM_ROWS))[0])
    reached = history._replace(num_tokens=history.num_tokens.copy())
    reached.num_tokens[row] = history.num_prompt_tokens[row] + 50  # min_tokens reached
    free = np.asarray(sample_jit(logits, inputs.to_metadata(rows, reached, NUM_ROWS))[0])

    assert masked[row] != EOS and free[row] == EOS


def test_grammar_bitmask_and_logprobs_match_numpy():
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((NUM_ROWS, VOCAB_SIZE)) * 3).astype(np.float32)
    inputs = SamplingInputs(NUM_ROWS, VOCAB_SIZE, MAX_MODEL_LEN)
    num_logprobs = [0, 5, 20, None, 20, 1, 3, None]
    temperatures = [0, 1.0, 0, 0.7, 1.0, 0, 0, 0]
    for row, (k, t) in enumerate(zip(num_logprobs, temperatures, strict=True)):
        inputs.set_request(row, SamplingParams(temperature=t, logprobs=k, seed=row), seed=row)
    grammar = np.full((NUM_ROWS, -(-VOCAB_SIZE // 32)), -1, np.int32)
    allowed = [rng.choice(VOCAB_SIZE, 12, replace=False).tolist() for _ in range(3)]
    for row, ids in zip([1, 2, 6], allowed, strict=True):
        grammar[row] = allowed_mask(ids, VOCAB_SIZE)
    history = make_history(rng, [4] * NUM_ROWS, [0] * NUM_ROWS)
    md = inputs.to_metadata(np.arange(NUM_ROWS, dtype=np.int32), history, NUM_ROWS, grammar)

    out = jax.tree.map(np.asarray, sample_jit(logits, md))

    masked = logits.copy()
    for row, ids in zip([1, 2, 6], allowed, strict=True):
        keep = np.zeros(VOCAB_SIZE, bool)
        keep[ids] = True
        masked[row, ~keep] = -np.inf
        assert out.sampled_token_ids[row] in ids
    shifted = masked - masked.max(-1, keepdims=True)
    reference = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    for row, k in enumerate(num_logprobs):
        if k is None:
            continue
        chosen = out.sampled_token_ids[row]
        if temperatures[row] == 0:
            assert chosen == np.argmax(masked[row])
        assert out.logprobs.token_ids[row, 0] == chosen
        assert out.logprobs.ranks[row] == np.sum(reference[row] >= reference[row, chosen])
        top = np.argsort(-reference[row], kind="stable")[:MAX_LOGPROBS]
        np.testing.assert_array_equal(out.logprobs.token_ids[row, 1:], top)
        expected = np.concatenate([[reference[row, chosen]], reference[row, top]])
        np.testing.assert_allclose(out.logprobs.logprobs[row], expected, atol=LOGPROB_ATOL)


@pytest.mark.parametrize("grammar_allows_more", [True, False], ids=["stops_masked", "restored"])
def test_min_tokens_under_grammar_restores_stops_only_when_nothing_is_left(grammar_allows_more):
    """vLLM's ``MinTokensLogitsProcessor`` for structured-output requests: stop tokens are
    masked, unless that would leave the row without any token."""
    from vllm.sampling_params import StructuredOutputsParams

    params = with_eos(
        SamplingParams(
            temperature=0,
            min_tokens=5,
            structured_outputs=StructuredOutputsParams(regex="a+"),
        )
    )
    inputs = SamplingInputs(NUM_ROWS, VOCAB_SIZE, MAX_MODEL_LEN)
    inputs.set_request(0, params, seed=0)
    grammar = allowed_mask([EOS, 40] if grammar_allows_more else [EOS], VOCAB_SIZE)[None]
    logits = np.zeros((1, VOCAB_SIZE), np.float32)
    logits[0, EOS] = 10.0  # eos is the grammar's favourite
    history = make_history(np.random.default_rng(2), [4], [1])
    md = inputs.to_metadata(np.zeros(1, np.int32), history, 1, grammar)

    token = int(sample_jit(logits, md).sampled_token_ids[0])

    assert token == (40 if grammar_allows_more else EOS)


@pytest.mark.parametrize("vocab_size", [1000, 4096, 200], ids=["partial_group", "whole", "small"])
def test_grouped_top_k_equals_stable_sort_with_ties(vocab_size):
    """Logprobs' top 20 from candidate groups equal the first 20 of a stable descending sort,
    ties (few distinct values, whole rows of -inf) included."""
    rng = np.random.default_rng(vocab_size)
    x = rng.integers(0, 6, (NUM_ROWS, vocab_size)).astype(np.float32)
    x[1] = -np.inf
    x[2, rng.choice(vocab_size, vocab_size - 7, replace=False)] = -np.inf
    values, ids = jax.jit(grouped_top_k, static_argnums=1)(x, MAX_LOGPROBS)

    reference = np.argsort(-x, axis=-1, kind="stable")[:, :MAX_LOGPROBS]
    np.testing.assert_array_equal(np.asarray(ids), reference)
    np.testing.assert_array_equal(np.asarray(values), np.take_along_axis(x, reference, -1))
