"""vLLM's request options end to end through ``vllm.LLM`` on this backend, against references.

One engine for the whole module: a tiny random Llama with a byte-level BPE tokenizer the test
trains (so bad words, stop strings and grammars have text), small budgets so that long prompts
are prefilled in chunks and requests of every kind share steps. References:

* logprobs and prompt logprobs: ``log_softmax`` of Hugging Face logits on the same weights in
  float32, within ``LOGPROB_ATOL`` (the two compute the same float32 math in a different order;
  the logits agree to about 2e-6, DESIGN.md §7), with the same top tokens and ranks;
* penalties, logit bias, allowed tokens, bad words, min-tokens: greedy decoding where each step's
  Hugging Face logits go through a numpy implementation of vLLM's formulas
  (``sampling_reference.py``): token for token;
* stops, ``ignore_eos``, ``min_tokens`` by their definitions; seeded sampling and ``n`` by
  reproduction alone vs inside other batches; structured output by parsing against its schema,
  regex or choice;
* and no XLA compilation after warm-up for any of it.
"""

from __future__ import annotations

import json
import re

import jsonschema
import numpy as np
import pytest
from engine import compiles_since_warmup, make_llm
from sampling_reference import HfModel, greedy_with_processors, write_tokenizer
from tiny_models import COMMON, write_tiny_checkpoint
from vllm import SamplingParams
from vllm.inputs import TokensPrompt
from vllm.sampling_params import StructuredOutputsParams

# Logprobs of this backend vs Hugging Face, both float32 (see the module docstring).
LOGPROB_ATOL = 1e-4
EOS = COMMON["eos_token_id"]
VOCAB = COMMON["vocab_size"]
JSON_SCHEMA = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}},
    "required": ["color", "ok"],
    "additionalProperties": False,
}
REGEX = r"(yes|no)-[0-9]{2}"
CHOICE = ["alpha", "beta", "gamma"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = write_tiny_checkpoint("llama", tmp_path_factory.mktemp("llama_with_tokenizer"))
    write_tokenizer(path, VOCAB)
    return path


@pytest.fixture(scope="module")
def llm(model_dir):
    # Without free whitespace in JSON (vLLM's engine-wide xgrammar option), a random model's
    # JSON ends within a few tokens.
    structured = {"backend": "xgrammar", "disable_any_whitespace": True}
    with make_llm(
        model_dir, skip_tokenizer_init=False, structured_outputs_config=structured
    ) as llm:
        yield llm


@pytest.fixture(scope="module")
def hf(model_dir):
    return HfModel(model_dir)


def prompts_of(lengths, seed=0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, VOCAB, n).tolist() for n in lengths]


def generate(llm, prompts, params):
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params)
    return [o.outputs[0] for o in outputs], outputs


def greedy(max_tokens=8, **options) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, **options)


# ---- logprobs ------------------------------------------------------------------------------


def assert_position_matches(logprobs: dict, token: int, reference: np.ndarray, k: int) -> None:
    """One position of vLLM's logprobs output: the chosen token and the top ``k``."""
    assert abs(logprobs[token].logprob - reference[token]) <= LOGPROB_ATOL
    assert logprobs[token].rank == int(np.sum(reference >= reference[token]))
    top = np.argsort(-reference, kind="stable")[:k]
    assert set(logprobs) == {token, *top.tolist()}
    for rank, t in enumerate(top.tolist(), start=1):
        assert logprobs[t].rank == rank
        assert abs(logprobs[t].logprob - reference[t]) <= LOGPROB_ATOL


def test_logprobs_and_prompt_logprobs_match_hf(llm, hf):
    prompts = prompts_of([5, 45, 12])  # 45 > max_num_batched_tokens: prefilled in chunks
    params = [
        greedy(5, logprobs=5, prompt_logprobs=3, ignore_eos=True),
        SamplingParams(
            temperature=1.0, seed=3, max_tokens=5, logprobs=20, prompt_logprobs=0, ignore_eos=True
        ),
        greedy(5, logprobs=0, ignore_eos=True),  # only the sampled token's logprob
    ]
    completions, outputs = generate(llm, prompts, params)

    for prompt, p, completion, output in zip(prompts, params, completions, outputs, strict=True):
        tokens = list(completion.token_ids)
        reference = hf.log_softmax(prompt + tokens)
        assert len(completion.logprobs) == len(tokens)
        for j, (token, logprobs) in enumerate(zip(tokens, completion.logprobs, strict=True)):
            assert_position_matches(logprobs, token, reference[len(prompt) - 1 + j], p.logprobs)
        if p.temperature == 0:
            assert tokens == np.argmax(reference[len(prompt) - 1 : -1], axis=-1).tolist()
        if p.prompt_logprobs is None:
            assert output.prompt_logprobs is None
            continue
        assert len(output.prompt_logprobs) == len(prompt)
        assert output.prompt_logprobs[0] is None
        for i in range(1, len(prompt)):
            assert_position_matches(
                output.prompt_logprobs[i], prompt[i], reference[i - 1], p.prompt_logprobs
            )


# ---- logits processors -------------------------------------------------------------------


def bad_words_of(llm, plain: list[int]) -> list[str]:
    """Words the plain greedy output contains (so banning them must change it)."""
    tokenizer = llm.get_tokenizer()
    words = [tokenizer.decode([t]).strip() for t in plain]
    return [w for w in words if w.isalpha()][:2] or ["the"]


def test_processors_match_numpy_reference(llm, hf):
    prompts = prompts_of([6, 40, 9, 17, 3, 25, 11], seed=1)
    plain = [list(c.token_ids) for c in generate(llm, prompts, greedy(16, ignore_eos=True))[0]]
    rng = np.random.default_rng(2)
    cases = [
        dict(presence_penalty=1.5),
        # Negative: favours tokens already produced, so the output changes for sure.
        dict(frequency_penalty=-1.5, presence_penalty=0.5),
        dict(repetition_penalty=1.8),
        dict(repetition_penalty=0.7, frequency_penalty=0.3, presence_penalty=0.2),
        dict(logit_bias={plain[4][0]: -100.0, int(rng.integers(3, VOCAB)): 4.0}),
        dict(allowed_token_ids=rng.choice(np.arange(3, VOCAB), 20, replace=False).tolist()),
        dict(bad_words=bad_words_of(llm, plain[6])),
    ]
    params = [greedy(16, ignore_eos=True, **case) for case in cases]
    # min_tokens: eos is pushed to the top, so the request stops right after min_tokens.
    prompts.append(prompts[0])
    params.append(greedy(8, min_tokens=4, logit_bias={EOS: 100.0}))
    completions, _ = generate(llm, prompts, params)

    tokenizer = llm.get_tokenizer()
    for i, (prompt, p, completion) in enumerate(zip(prompts, params, completions, strict=True)):
        p = p.clone()
        p.update_from_tokenizer(tokenizer)  # vLLM's tokenization of the bad words
        options = dict(
            allowed_token_ids=p.allowed_token_ids,
            bad_words_token_ids=p.bad_words_token_ids or [],
            min_tokens=p.min_tokens,
            stop_token_ids=[EOS, *p.stop_token_ids],
            logit_bias=p.logit_bias,
            presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty,
            repetition_penalty=p.repetition_penalty,
        )
        tokens = list(completion.token_ids)
        expected = greedy_with_processors(hf, prompt, len(tokens), **options)
        assert tokens == expected, f"case {i}: {p}"
        if i < len(cases):
            assert tokens != plain[i], f"case {i} did not change the output: {p}"
    assert completions[-1].token_ids[-1] == EOS and len(completions[-1].token_ids) == 5


# ---- stops, ignore_eos, min_tokens -----------------------------------------------------------


def test_stops_and_ignore_eos_by_definition(llm):
    prompt = prompts_of([10], seed=3)[0]
    (plain,), _ = generate(llm, [prompt], greedy(12, ignore_eos=True))
    tokens = list(plain.token_ids)
    stop_token = tokens[3]
    text = plain.text
    start = next(i for i in range(len(text) // 3, len(text)) if text[i].isalnum())
    stop_string = text[start : start + 2]
    params = [
        greedy(5, logit_bias={EOS: 100.0}, ignore_eos=True),
        greedy(5, logit_bias={EOS: 100.0}),
        greedy(12, ignore_eos=True, stop_token_ids=[stop_token]),
        greedy(12, ignore_eos=True, stop=[stop_string]),
        greedy(12, ignore_eos=True, stop_token_ids=[tokens[0]], min_tokens=3),
    ]
    eos_ignored, eos_stops, by_token, by_string, min_tokens = generate(
        llm, [prompt] * len(params), params
    )[0]

    assert list(eos_ignored.token_ids) == [EOS] * 5 and eos_ignored.finish_reason == "length"
    assert list(eos_stops.token_ids) == [EOS] and eos_stops.finish_reason == "stop"
    assert list(by_token.token_ids) == tokens[: tokens.index(stop_token) + 1]
    assert by_token.finish_reason == "stop" and by_token.stop_reason == stop_token
    assert by_string.text == text[: text.index(stop_string)]
    assert by_string.finish_reason == "stop" and by_string.stop_reason == stop_string
    assert tokens[0] not in min_tokens.token_ids[:3]
    assert len(min_tokens.token_ids) >= 3


# ---- seeds and n -------------------------------------------------------------------------


def test_seeded_sampling_and_n_reproduce_across_batches(llm):
    prompt, *others = prompts_of([8, 30, 5, 14], seed=4)
    seeded = SamplingParams(temperature=1.0, top_p=0.9, seed=42, max_tokens=8, ignore_eos=True)
    fanned = SamplingParams(n=3, temperature=1.2, seed=7, max_tokens=8, ignore_eos=True)
    noise = [
        SamplingParams(temperature=0.8, max_tokens=6, presence_penalty=0.5),
        greedy(10, ignore_eos=True, logprobs=2),
        SamplingParams(temperature=1.0, top_k=5, max_tokens=12, ignore_eos=True),
    ]
    alone = llm.generate([TokensPrompt(prompt_token_ids=prompt)] * 2, [seeded, fanned])
    batch_prompts = [others[0], prompt, others[1], prompt, others[2]]
    batch = llm.generate(
        [TokensPrompt(prompt_token_ids=p) for p in batch_prompts],
        [noise[0], seeded, noise[1], fanned, noise[2]],
    )

    def token_ids(output):
        return [list(c.token_ids) for c in output.outputs]

    assert token_ids(batch[1]) == token_ids(alone[0])
    assert token_ids(batch[3]) == token_ids(alone[1])
    assert len(token_ids(alone[1])) == 3
    assert len({tuple(t) for t in token_ids(alone[1])}) == 3, "n samples must differ"


# ---- structured output -------------------------------------------------------------------


def structured(i: int, temperature: float, **kind) -> SamplingParams:
    return SamplingParams(
        temperature=temperature,
        seed=i,
        max_tokens=48,
        structured_outputs=StructuredOutputsParams(disable_any_whitespace=True, **kind),
    )


def test_structured_output_parses(llm):
    kinds = [dict(json=JSON_SCHEMA), dict(regex=REGEX), dict(choice=CHOICE)]
    params = [structured(i, t, **k) for i, k in enumerate(kinds) for t in (0.0, 1.0)]
    prompts = prompts_of([7] * len(params), seed=5)
    completions, _ = generate(llm, prompts, params)
    _structured_texts_valid(llm, params, completions)


def _structured_texts_valid(llm, params, completions) -> None:
    tokenizer = llm.get_tokenizer()
    for p, completion in zip(params, completions, strict=True):
        # The sampled tokens' own text: vLLM's incremental detokenizer may prefix the first
        # characters with bytes left over from a random prompt's last tokens.
        text = tokenizer.decode(completion.token_ids, skip_special_tokens=True)
        assert completion.finish_reason == "stop", f"{p.structured_outputs}: {text!r}"
        kind = p.structured_outputs
        if kind.json is not None:
            jsonschema.validate(json.loads(text), JSON_SCHEMA)
        elif kind.regex is not None:
            assert re.fullmatch(REGEX, text), text
        else:
            assert text in CHOICE


# ---- mixing ------------------------------------------------------------------------------


def _greedy_steps(worker) -> int:
    return worker.model_runner.num_greedy_steps


def test_greedy_same_alone_and_in_mixed_batch(llm):
    """Plain greedy requests alone take the model step's argmax (no sampler); in a batch with
    other options they take the whole sampler. Both must give the same tokens."""
    greedy_prompts = prompts_of([9, 33], seed=6)
    other_prompts = prompts_of([5, 12, 20, 7, 15], seed=7)
    params = greedy(10, ignore_eos=True)
    before = llm.collective_rpc(_greedy_steps)[0]
    alone = [list(c.token_ids) for c in generate(llm, greedy_prompts, params)[0]]
    after_alone = llm.collective_rpc(_greedy_steps)[0]
    mixed_params = [
        SamplingParams(temperature=0.9, top_k=20, seed=1, max_tokens=10),
        greedy(10, repetition_penalty=1.5, logit_bias={5: 3.0}, ignore_eos=True),
        structured(2, 1.0, json=JSON_SCHEMA),
        SamplingParams(temperature=1.0, max_tokens=6, logprobs=3, prompt_logprobs=2),
        greedy(7, bad_words=["the"], min_tokens=3, allowed_token_ids=list(range(3, 300))),
    ]
    prompts = [other_prompts[0], greedy_prompts[0], *other_prompts[1:3]]
    prompts += [greedy_prompts[1], *other_prompts[3:]]
    all_params = [mixed_params[0], params, *mixed_params[1:3], params, *mixed_params[3:]]
    mixed = [list(c.token_ids) for c in generate(llm, prompts, all_params)[0]]
    after_mixed = llm.collective_rpc(_greedy_steps)[0]

    assert [mixed[1], mixed[4]] == alone
    assert after_alone - before >= 10  # every sampling step of the greedy pair
    # Mixed: steps without the sampler only once every other request has finished (the
    # structured request stops after 2 tokens, the sampled ones after 6-10); never more than
    # the pair's.
    assert after_mixed - after_alone < after_alone - before


def test_nothing_compiled_after_warmup(llm):
    """Runs after every test on the module's engine: each request above was served by the
    precompiled set."""
    assert compiles_since_warmup(llm) == 0


# ---- three steps in flight (after the check above: this builds its own engine, whose
# start-up compilations the module engine's guard would count) ------------------------------


def _steps_in_flight(worker) -> int:
    return worker.model_runner.max_steps_in_flight


def test_structured_output_parses_with_three_steps_in_flight(model_dir, monkeypatch):
    """``VLLM_XLA_GPU_STEPS_IN_FLIGHT=3``: structured-output requests whose prompts are
    prefilled in chunks while plain requests decode (so the engine's queue is full when they
    start sampling) still follow their grammars. Without the platform's scheduler, which spaces
    such requests' decodes, vLLM computes a bitmask without the previous step's token and ends
    the request with an error."""
    kinds = [dict(json=JSON_SCHEMA), dict(regex=REGEX), dict(choice=CHOICE)]
    monkeypatch.setenv("VLLM_XLA_GPU_STEPS_IN_FLIGHT", "3")
    structured_config = {"backend": "xgrammar", "disable_any_whitespace": True}
    with make_llm(
        model_dir, skip_tokenizer_init=False, structured_outputs_config=structured_config
    ) as llm:
        for round_ in range(3):
            params = [greedy(40, ignore_eos=True)] * 2
            params += [structured(i, t, **k) for i, k in enumerate(kinds) for t in (0.0, 1.0)]
            prompts = prompts_of([5, 5] + [20] * 6, seed=20 + round_)
            completions, _ = generate(llm, prompts, params)
            _structured_texts_valid(llm, params[2:], completions[2:])
            assert all(len(c.token_ids) == 40 for c in completions[:2])
        assert llm.collective_rpc(_steps_in_flight)[0] == 3
        assert compiles_since_warmup(llm) == 0


def _record_schedules(llm, prompts) -> list[dict[int, int]]:
    """Each step's scheduled tokens, by index into ``prompts``, as the engine's scheduler hands
    them out: a wrapper around its ``schedule`` that calls it and keeps a copy."""
    scheduler = llm.llm_engine.engine_core.engine_core.scheduler  # in-process (conftest)
    schedule = scheduler.schedule
    steps: list[dict[int, int]] = []

    def recording(*args, **kwargs):
        output = schedule(*args, **kwargs)
        steps.append(
            {
                prompts.index(list(scheduler.requests[req_id].prompt_token_ids)): n
                for req_id, n in output.num_scheduled_tokens.items()
            }
        )
        return output

    scheduler.schedule = recording
    return steps


def _decode_steps(steps: list[dict[int, int]], index: int) -> list[int]:
    return [i for i, step in enumerate(steps) if step.get(index) == 1]


@pytest.mark.parametrize("depth", ["2", "3"])
def test_structured_requests_decode_in_every_step_of_the_others(model_dir, monkeypatch, depth):
    """While structured-output requests run, the engine works as with vLLM's two steps in
    flight: at two, every step decodes every running request; at three, the platform's
    scheduler holds the step after each real one empty, so that vLLM's deferred bitmask finds
    the step before, and every request decodes in every real step. Two structured requests
    that start decoding in different steps (one prompt is prefilled in chunks) join the plain
    ones; spacing the structured requests alone would leave them decoding every other real
    step. Greedy tokens equal those of vLLM's two-in-flight engine."""
    # Four places for six requests: the last two start while the others decode.
    prompts = prompts_of([20, 20, 45, 10, 12, 14], seed=31)
    regex = "[a-z]{30}"
    constrained = SamplingParams(
        temperature=0.0,
        max_tokens=64,
        structured_outputs=StructuredOutputsParams(disable_any_whitespace=True, regex=regex),
    )
    params = [greedy(40, ignore_eos=True), constrained, constrained, greedy(12, ignore_eos=True)]
    params += [greedy(30, ignore_eos=True), greedy(30, ignore_eos=True)]
    structured_config = {"backend": "xgrammar", "disable_any_whitespace": True}
    tokens = {}
    for steps_in_flight in dict.fromkeys(["2", depth]):
        monkeypatch.setenv("VLLM_XLA_GPU_STEPS_IN_FLIGHT", steps_in_flight)
        with make_llm(
            model_dir,
            skip_tokenizer_init=False,
            structured_outputs_config=structured_config,
            max_num_seqs=4,
        ) as llm:
            steps = _record_schedules(llm, prompts)
            completions, _ = generate(llm, prompts, params)
            tokens[steps_in_flight] = [list(c.token_ids) for c in completions]
            tokenizer = llm.get_tokenizer()
            texts = [tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in completions]
            assert llm.collective_rpc(_steps_in_flight)[0] == int(steps_in_flight)
            assert compiles_since_warmup(llm) == 0
    for c, text in zip(completions[1:3], texts[1:3], strict=True):
        assert c.finish_reason == "stop" and re.fullmatch(regex, text), text
    assert tokens[depth] == tokens["2"]
    decodes = [_decode_steps(steps, i) for i in range(len(prompts))]
    assert min(len(decodes[1]), len(decodes[2])) >= 5
    assert decodes[1][0] != decodes[2][0]  # they start in different steps
    stride = int(depth) - 1  # a real step, then the empty ones
    for structured_steps in (decodes[1], decodes[2]):  # while this one decodes:
        first, last = structured_steps[0], structured_steps[-1]
        real = range(first, last + 1, stride)
        assert [i for i in range(first, last + 1) if steps[i] and i not in real] == []
        for own in decodes:  # every request decodes in every real step while it runs
            inside = [i for i in own if first <= i <= last]
            assert inside == [i for i in real if inside and inside[0] <= i <= inside[-1]]
