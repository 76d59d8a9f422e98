"""The jitted sampler against vLLM's own torch sampling code, on the same seeded logits.

Reference: vLLM's ``Sampler.apply_temperature``, its ``MinPLogitsProcessor`` and
``apply_top_k_top_p``, fed what vLLM's input batch would hold for the same ``SamplingParams``.
The filtered logits must keep exactly the same tokens; greedy rows must equal numpy's argmax;
draws must stay inside the kept set, depend only on (seed, step), and follow the filtered
softmax in frequency (a chi-square test at a stated significance). The vocabulary of 8192 has
256 groups of 32, more than the sampler's 128 candidate groups, so both its candidate path and
its full-sort path run.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from types import SimpleNamespace
from typing import NamedTuple

import jax
import numpy as np
import pytest
import torch
from vllm.sampling_params import SamplingParams
from vllm.v1.sample.logits_processor.builtin import MinPLogitsProcessor
from vllm.v1.sample.logits_processor.interface import BatchUpdate
from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p
from vllm.v1.sample.sampler import _SAMPLING_EPS, Sampler

from vllm_xla_gpu.sample.metadata import (
    MAX_LOGIT_BIAS,
    SAMPLING_EPS,
    SamplingInputs,
    SamplingMetadata,
    TokenHistory,
)
from vllm_xla_gpu.sample.sampler import filter_logits, sample
from vllm_xla_gpu.sample.token_masks import num_mask_words

VOCAB_SIZE = 8192
NUM_REQS = 8
# XLA may divide by the temperature as a multiply by its reciprocal: kept logits can differ from
# torch's quotient by an ulp (each is correctly rounded from a slightly different product).
KEPT_LOGITS_RTOL = 2 * np.finfo(np.float32).eps
sample_jit = jax.jit(lambda logits, md: sample(logits, md).sampled_token_ids)
filter_logits_jit = jax.jit(filter_logits)


# ---- helpers ------------------------------------------------------------------------------


def make_metadata(
    temperature,
    top_k=0,
    top_p=1.0,
    min_p=0.0,
    seeds=0,
    step=0,
    num_reqs=NUM_REQS,
    vocab_size=VOCAB_SIZE,
    **processors,
) -> SamplingMetadata:
    """Numpy metadata with each field given per row or as one value for every row; the logits
    processors' fields (``processors``) default to off."""

    def column(value, dtype):
        return np.broadcast_to(np.asarray(value, dtype), (num_reqs,)).copy()

    words = num_mask_words(vocab_size)
    fields = dict(
        presence_penalty=column(0.0, np.float32),
        frequency_penalty=column(0.0, np.float32),
        repetition_penalty=column(1.0, np.float32),
        token_ids=np.zeros((num_reqs, 1), np.int32),
        num_prompt_tokens=column(0, np.int32),
        logit_bias_ids=np.full((num_reqs, MAX_LOGIT_BIAS), vocab_size, np.int32),
        logit_bias_values=np.zeros((num_reqs, MAX_LOGIT_BIAS), np.float32),
        token_mask=np.full((num_reqs, words), -1, np.int32),
        grammar_bitmask=np.full((num_reqs, words), -1, np.int32),
        num_logprobs=column(-1, np.int32),
    )
    fields.update(processors)
    return SamplingMetadata(
        temperature=column(temperature, np.float32),
        top_k=column(top_k, np.int32),
        top_p=column(top_p, np.float32),
        min_p=column(min_p, np.float32),
        seeds=column(seeds, np.uint32),
        step=column(step, np.int32),
        **fields,
    )


def vllm_min_p(logits: torch.Tensor, min_p: np.ndarray) -> torch.Tensor:
    """vLLM's ``MinPLogitsProcessor``, given the rows' min-p through its batch-update API."""
    num_reqs = logits.shape[0]
    config = SimpleNamespace(scheduler_config=SimpleNamespace(max_num_seqs=num_reqs))
    processor = MinPLogitsProcessor(config, torch.device("cpu"), is_pin_memory=False)
    added = [(i, SamplingParams(min_p=float(m)), None, []) for i, m in enumerate(min_p)]
    processor.update_state(BatchUpdate(batch_size=num_reqs, removed=[], added=added, moved=[]))
    return processor.apply(logits)


def vllm_filter_logits(
    logits: np.ndarray,  # f32[num_reqs, vocab_size]
    md: SamplingMetadata,
) -> np.ndarray:  # f32[num_reqs, vocab_size]
    """vLLM's random-sampling logits: temperature (1 for greedy rows), min-p, top-k, top-p."""
    vocab_size = logits.shape[-1]
    # vLLM's input batch stores vocab_size for a request without top-k.
    top_k = np.where((md.top_k > 0) & (md.top_k < vocab_size), md.top_k, vocab_size)
    x = torch.tensor(logits)
    x = Sampler.apply_temperature(x, torch.tensor(md.temperature), all_random=False)
    x = vllm_min_p(x, md.min_p)
    x = apply_top_k_top_p(x, torch.tensor(top_k, dtype=torch.long), torch.tensor(md.top_p))
    return x.numpy()


def softmax32(logits: np.ndarray) -> np.ndarray:
    """Row softmax in float32 (so both sides underflow the same tokens to 0)."""
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def chi_square_critical(df: int, alpha: float) -> float:
    """Upper ``alpha`` quantile of chi-square(df), by the Wilson-Hilferty approximation."""
    z = statistics.NormalDist().inv_cdf(1.0 - alpha)
    return df * (1.0 - 2.0 / (9 * df) + z * np.sqrt(2.0 / (9 * df))) ** 3


def random_logits(rng: np.random.Generator, scale: float, shape=(NUM_REQS, VOCAB_SIZE)):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# ---- metadata -----------------------------------------------------------------------------


def test_sampling_eps_is_vllms():
    assert SAMPLING_EPS == _SAMPLING_EPS


def test_sampling_inputs_gather_rows_and_pad_greedy():
    inputs = SamplingInputs(max_num_reqs=6, vocab_size=64, max_model_len=16)
    inputs.set_request(4, SamplingParams(temperature=0.7, top_k=-1, top_p=0.9, min_p=0.1), 2**40)
    inputs.set_request(1, SamplingParams(temperature=0.0, top_k=20), seed=7)
    inputs.set_request(2, SamplingParams(temperature=1.0, top_k=20), seed=8)
    inputs.clear(2)

    num_prompt_tokens = np.full(6, 5, np.int32)
    history = TokenHistory(np.zeros((6, 16), np.int32), num_prompt_tokens, num_prompt_tokens + 3)
    history.num_tokens[1] = 5
    md = inputs.to_metadata(np.array([4, 1], np.int32), history, 4)

    np.testing.assert_allclose(md.temperature, [0.7, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(md.top_k, [0, 0, 0, 0])  # -1 is off; greedy resets top_k
    np.testing.assert_allclose(md.top_p, [0.9, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(md.min_p, [0.1, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(md.seeds, [0, 7, 0, 0])  # 2**40 modulo 2**32
    np.testing.assert_array_equal(md.step, [3, 0, 0, 0])
    assert inputs.temperature[2] == 0.0 and inputs.top_k[2] == 0  # cleared to greedy
    with pytest.raises(ValueError, match="do not fit"):
        inputs.to_metadata(np.arange(5, dtype=np.int32), history, 4)


def test_plain_greedy_rows_are_the_argmax_of_raw_logits():
    """``plain_greedy`` (the runner's cue for taking the model step's argmax) holds exactly for
    greedy rows without logprobs, penalties, bias or masks; the sampler gives those rows the
    argmax of the raw logits."""
    variants = {
        "greedy": (SamplingParams(temperature=0.0), True),
        "greedy, top-k set": (SamplingParams(temperature=0.0, top_k=5, top_p=0.5), True),
        "temperature": (SamplingParams(temperature=0.8), False),
        "logprobs": (SamplingParams(temperature=0.0, logprobs=2), False),
        "penalty": (SamplingParams(temperature=0.0, repetition_penalty=1.3), False),
        "bias": (SamplingParams(temperature=0.0, logit_bias={3: 50.0}), False),
        "allowed tokens": (SamplingParams(temperature=0.0, allowed_token_ids=[1, 2]), False),
        "min tokens": (SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[5]), False),
    }
    inputs = SamplingInputs(max_num_reqs=len(variants) + 1, vocab_size=64, max_model_len=16)
    for row, (params, _) in enumerate(variants.values()):
        inputs.set_request(row, params, seed=row)
    expected = [plain for _, plain in variants.values()]
    assert [inputs.plain_greedy(np.array([r])) for r in range(len(variants))] == expected
    inputs.clear(2)
    assert inputs.plain_greedy(np.array([0, 1, 2])) and not inputs.plain_greedy(np.array([0, 3]))

    plain_rows = np.array([0, 1, 2], np.int32)
    history = TokenHistory(*(np.zeros(s, np.int32) for s in [(9, 16), 9, 9]))
    logits = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    md = inputs.to_metadata(plain_rows, history, 8)
    np.testing.assert_array_equal(sample_jit(logits, md)[:3], logits[:3].argmax(-1))


# ---- filters against vLLM -----------------------------------------------------------------


class FilterCase(NamedTuple):
    """Logits of scale ``scale`` (small: flat rows, wide nuclei, the full-sort path), sorted by
    token id when ``sorted_rows`` (the top of each row then fills the first groups, so the
    sampler's candidates are exactly the row's largest logits and a filter wider than them must
    still be caught), and per-row parameters drawn from the generator."""

    scale: float
    params: Callable[[np.random.Generator], dict]
    sorted_rows: bool = False


FILTER_CASES = {
    "temperature_only": FilterCase(3.0, lambda rng: dict(temperature=rng.uniform(0.3, 1.5, 8))),
    "top_k": FilterCase(
        3.0, lambda rng: dict(temperature=1.0, top_k=[1, 2, 5, 50, 128, 1000, 0, -1])
    ),
    "top_k_beyond_candidates": FilterCase(3.0, lambda rng: dict(temperature=1.0, top_k=5000)),
    "top_k_vocab_size": FilterCase(3.0, lambda rng: dict(temperature=1.0, top_k=VOCAB_SIZE)),
    "top_p": FilterCase(3.0, lambda rng: dict(temperature=0.8, top_p=rng.uniform(0.05, 0.95, 8))),
    "top_p_wide_nucleus": FilterCase(
        0.3, lambda rng: dict(temperature=1.0, top_p=rng.uniform(0.5, 0.99, 8))
    ),
    "top_k_top_p": FilterCase(
        3.0,
        lambda rng: dict(
            temperature=1.2, top_k=rng.integers(1, 300, 8), top_p=rng.uniform(0.3, 0.99, 8)
        ),
    ),
    "min_p": FilterCase(3.0, lambda rng: dict(temperature=1.0, min_p=rng.uniform(0.001, 0.5, 8))),
    "min_p_top_k_top_p": FilterCase(
        2.0,
        lambda rng: dict(
            temperature=rng.uniform(0.5, 2.0, 8),
            top_k=[0, 10, 100, 3000, 0, 40, 1, 0],
            top_p=[0.9, 1.0, 0.5, 0.99, 1.0, 0.2, 1.0, 0.97],
            min_p=[0.05, 0.0, 0.01, 0.0, 0.2, 0.0, 0.3, 0.0],
        ),
    ),
    # One wide filter per case: a step with one row past the candidates sorts every row.
    "sorted_rows_top_k_past_candidates": FilterCase(
        0.3,
        lambda rng: dict(temperature=1.0, top_k=[5000, 4097, 4096, 100, 0, 8000, 4200, 1]),
        sorted_rows=True,
    ),
    "sorted_rows_top_p_past_candidates": FilterCase(
        0.3,
        lambda rng: dict(temperature=1.0, top_p=[0.9, 0.95, 0.6, 0.3, 1.0, 0.99, 0.7, 0.8]),
        sorted_rows=True,
    ),
}


@pytest.mark.parametrize("vocab_size", [VOCAB_SIZE, 50], ids=["vocab8192", "vocab50"])
@pytest.mark.parametrize("case", list(FILTER_CASES), ids=list(FILTER_CASES))
def test_filter_logits_keeps_vllms_tokens(case, vocab_size):
    rng = np.random.default_rng(sorted(FILTER_CASES).index(case))
    scale, params, sorted_rows = FILTER_CASES[case]
    logits = random_logits(rng, scale, (NUM_REQS, vocab_size))
    if sorted_rows:
        logits = -np.sort(-logits, axis=-1)
    md = make_metadata(**params(rng))

    actual = np.asarray(filter_logits_jit(logits, md))
    expected = vllm_filter_logits(logits, md)

    kept = softmax32(expected) > 0
    np.testing.assert_array_equal(softmax32(actual) > 0, kept)
    np.testing.assert_allclose(actual[kept], expected[kept], rtol=KEPT_LOGITS_RTOL, atol=0)


def test_top_k_keeps_ties_like_vllm():
    rng = np.random.default_rng(1)
    logits = rng.integers(-4, 4, (NUM_REQS, VOCAB_SIZE)).astype(np.float32)  # many ties
    md = make_metadata(temperature=1.0, top_k=[1, 3, 10, 100, 1000, 2, 7, 0])

    actual = np.asarray(filter_logits_jit(logits, md))
    expected = vllm_filter_logits(logits, md)

    np.testing.assert_array_equal(np.isfinite(actual), np.isfinite(expected))


# ---- sampling -----------------------------------------------------------------------------


@pytest.mark.parametrize("batch", ["all_greedy", "mixed"])
def test_greedy_rows_are_argmax(batch):
    rng = np.random.default_rng(2)
    logits = random_logits(rng, 3.0)
    logits[3, [10, 20]] = logits[3].max() + 1.0  # a tie: the first index wins, as in torch
    temperature = np.zeros(NUM_REQS) if batch == "all_greedy" else [0, 1, 0, 0, 2, 0, 0.5, 0]
    # Filters on greedy rows are ignored, as in vLLM.
    md = make_metadata(temperature, top_k=2, top_p=0.1, min_p=0.5, seeds=np.arange(NUM_REQS))

    tokens = np.asarray(sample_jit(logits, md))

    greedy = np.asarray(temperature) == 0
    np.testing.assert_array_equal(tokens[greedy], np.argmax(logits, axis=-1)[greedy])
    assert tokens[3] == 10


def test_mixed_batch_draws_inside_vllms_kept_set():
    rng = np.random.default_rng(3)
    logits = random_logits(rng, 2.0)
    params = dict(
        temperature=[0.0, 1.0, 0.8, 1.0, 1.5, 0.7, 0.0, 0.0],  # the last two are padding rows
        top_k=[0, 0, 5, 0, 0, 20, 0, 0],
        top_p=[1.0, 1.0, 1.0, 0.6, 1.0, 0.9, 1.0, 1.0],
        min_p=[0.0, 0.0, 0.0, 0.0, 0.3, 0.05, 0.0, 0.0],
    )
    random_rows = np.array(params["temperature"]) > 0
    kept = softmax32(vllm_filter_logits(logits, make_metadata(**params))) > 0

    for step in range(20):
        md = make_metadata(**params, seeds=np.arange(NUM_REQS) + 100, step=step)
        tokens = np.asarray(sample_jit(logits, md))
        np.testing.assert_array_equal(tokens[~random_rows], np.argmax(logits[~random_rows], -1))
        assert kept[random_rows, tokens[random_rows]].all(), f"{step=}: {tokens=}"


def test_seeded_draw_depends_only_on_seed_and_step():
    rng = np.random.default_rng(4)
    row_logits = random_logits(rng, 1.0, (1, VOCAB_SIZE))
    request = dict(temperature=1.0, top_p=0.95, seeds=1234)
    steps = np.arange(4)
    alone = [
        int(sample_jit(row_logits, make_metadata(**request, step=s, num_reqs=1))[0]) for s in steps
    ]

    # The same request at steps 0..3, in rows 6, 3, 1, 0 of a batch with other requests.
    rows = np.array([6, 3, 1, 0])
    logits = random_logits(rng, 1.0)
    logits[rows] = row_logits
    md = make_metadata(
        temperature=rng.uniform(0.5, 1.5, NUM_REQS),
        top_k=rng.integers(0, 100, NUM_REQS),
        seeds=rng.integers(0, 2**32, NUM_REQS),
        step=rng.integers(0, 1000, NUM_REQS),
    )
    md.temperature[rows], md.top_k[rows], md.top_p[rows] = 1.0, 0, 0.95
    md.seeds[rows], md.step[rows] = 1234, steps
    in_batch = np.asarray(sample_jit(logits, md))[rows]

    np.testing.assert_array_equal(in_batch, alone)
    assert len(set(alone)) > 1, "the draw must change with the step"


def test_different_seeds_draw_differently():
    rng = np.random.default_rng(5)
    logits = np.repeat(random_logits(rng, 1.0, (1, VOCAB_SIZE)), NUM_REQS, axis=0)
    seeds = [1, 2, 1, 2, 3, 4, 5, 6]

    draws = np.stack(
        [np.asarray(sample_jit(logits, make_metadata(1.0, seeds=seeds, step=s))) for s in range(8)]
    )  # [step, row]

    np.testing.assert_array_equal(draws[:, 0], draws[:, 2])  # same seed, same draws
    sequences = {tuple(draws[:, row]) for row in range(NUM_REQS)}
    assert len(sequences) == 6, "six seeds, six different sequences"


# name -> sampling parameters of one request; drawn NUM_DRAWS times at steps 0..NUM_DRAWS-1.
FREQUENCY_CASES = {
    "temperature": dict(temperature=0.7),
    "top_k": dict(temperature=1.0, top_k=3),
    "top_p": dict(temperature=1.0, top_p=0.7),
    "min_p": dict(temperature=1.0, min_p=0.2),
    "all_filters": dict(temperature=1.3, top_k=6, top_p=0.9, min_p=0.05),
}
NUM_DRAWS = 20_000
# The request's distribution at temperature 1, in a shuffled token order. No two tokens tie, and
# every token keeps over 100 expected draws at these temperatures (chi-square wants >= 5 a bin).
FREQUENCY_PROBS = np.array([0.3, 0.2, 0.15, 0.12, 0.09, 0.07, 0.05, 0.02])
# A correct sampler fails one case in 10,000; an error of 0.01 in one token's probability moves
# the statistic by about NUM_DRAWS * 0.01**2 / p, i.e. tens to hundreds, far past the bound.
ALPHA = 1e-4


@pytest.mark.parametrize("case", list(FREQUENCY_CASES), ids=list(FREQUENCY_CASES))
def test_draw_frequencies_follow_filtered_softmax(case):
    rng = np.random.default_rng(6)
    row_logits = np.log(FREQUENCY_PROBS[rng.permutation(8)]).astype(np.float32)[None]
    params = FREQUENCY_CASES[case]
    expected = softmax32(vllm_filter_logits(row_logits, make_metadata(**params, num_reqs=1)))[0]

    logits = np.repeat(row_logits, NUM_DRAWS, axis=0)
    md = make_metadata(**params, seeds=99, step=np.arange(NUM_DRAWS), num_reqs=NUM_DRAWS)
    counts = np.bincount(np.asarray(sample_jit(logits, md)), minlength=8)

    kept = expected > 0
    assert counts[~kept].sum() == 0, f"filtered-out tokens were drawn: {counts=}"
    expected_counts = NUM_DRAWS * expected[kept]
    chi_square = float(np.sum((counts[kept] - expected_counts) ** 2 / expected_counts))
    bound = chi_square_critical(df=int(kept.sum()) - 1, alpha=ALPHA)
    assert chi_square < bound, f"{chi_square=:.1f} >= {bound=:.1f}: {counts=} {expected_counts=}"
