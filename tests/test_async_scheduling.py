"""Async scheduling (vLLM's ``--async-scheduling``) gives the same tokens as synchronous steps.

vLLM 0.32 turns async scheduling on by default wherever the executor supports it, and this
backend keeps vLLM's choice, so the rest of the suite (sampling parity, structured output,
aborts under load) already runs async. Here each case runs the same workload twice on vLLM's
real engine over XLA:CPU, with ``async_scheduling=False`` and with vLLM's default, and checks:

* the default really is async, and its decode steps took their input tokens from the previous
  step's sampled ids on the device, without waiting for them on the host;
* greedy tokens equal Hugging Face transformers' and the synchronous run's, through chunked
  prefill, mixed prefill/decode steps, prefix-cache hits and preemption with recomputation;
* seeded sampling with penalties (which read the token history), min_tokens, logit bias,
  logprobs and prompt logprobs equals the synchronous run, logprobs included;
* serving compiles nothing after warm-up;
* vLLM's V2 scheduling protocol (``VLLM_USE_V2_MODEL_RUNNER=1``, the default on a GPU host
  had the platform not pinned V1), which sends a preempted request back as a new request,
  gives the same tokens and logprobs as V1's, sync and async;
* with the launch thread (the default, ``runner/launch.py``), whose compiled calls run on
  another thread and may still be launching when the runner returns to vLLM, and without it
  (``VLLM_XLA_GPU_LAUNCH_THREAD=0``: each call runs when the runner makes it), every one of
  these results is the same again;
* with three steps in flight (``VLLM_XLA_GPU_STEPS_IN_FLIGHT=3``), two steps' tokens are on the
  device when a step is prepared, and greedy tokens (through preemption and prefix caching),
  stop tokens and seeded sampling still equal the synchronous run's and Hugging Face's.
"""

from __future__ import annotations

import numpy as np
import pytest
from engine import compiles_since_warmup, make_llm
from test_generate_matches_hf import _block_bytes, _metric
from tiny_models import hf_greedy
from vllm import SamplingParams
from vllm.inputs import TokensPrompt
from vllm.triton_utils import HAS_TRITON

MAX_TOKENS = 12


def _runner_counters(worker) -> dict[str, int]:
    runner = worker.model_runner
    return {
        "async_scheduling": runner.async_scheduling,
        "steps_with_device_tokens": runner.num_steps_with_device_tokens,
        "early_resolves": runner.num_early_resolves,
        "launch_thread": runner.launcher.threaded,
        "launched": runner.launcher.num_launched,
        "v2_protocol": runner.vllm_config.use_v2_model_runner,
        "resumed_as_new": runner.num_resumed_as_new,
        "launch_chains": runner.num_launch_chains,
        "launch_chain_s": runner.launch_chain_seconds,
        "launch_chain_split_s": dict(runner.launch_chain_split_seconds),
        "max_steps_in_flight": runner.max_steps_in_flight,
    }


def _run(path, prompts, params, **engine):
    """Outputs, runner counters and compile count of one engine over ``prompts``."""
    with make_llm(path, **engine) as llm:
        outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params)
        counters = llm.collective_rpc(_runner_counters)[0]
        if engine.get("disable_log_stats") is False:
            counters["preemptions"] = _metric(llm, "vllm:num_preemptions")
        counters["compiles"] = compiles_since_warmup(llm)
    return outputs, counters


def _tokens(outputs) -> list[list[int]]:
    return [list(c.token_ids) for o in outputs for c in o.outputs]


def _assert_same_logprobs(a, b) -> None:
    """Both runs gave each request the same top tokens with the same ranks at every position,
    and logprobs equal to float32 rounding. Not bitwise: the LM head runs inside each token
    bucket's model step, and scheduling modes compose steps differently (around preemptions
    above all), so a token's logits may come from another bucket's compiled matmul."""
    for x, y in zip(a.outputs, b.outputs, strict=True):
        assert (x.logprobs is None) == (y.logprobs is None)
        for at_x, at_y in zip(x.logprobs or [], y.logprobs or [], strict=True):
            assert {t: p.rank for t, p in at_x.items()} == {t: p.rank for t, p in at_y.items()}
            for token, p in at_x.items():
                assert p.logprob == pytest.approx(at_y[token].logprob, abs=1e-5)


def _run_without_launch_thread(monkeypatch, path, prompts, params, **engine):
    """``_run`` with the runner's launch thread off (it is on by default)."""
    with monkeypatch.context() as m:
        m.setenv("VLLM_XLA_GPU_LAUNCH_THREAD", "0")
        return _run(path, prompts, params, **engine)


def _preempting_workload(seed: int) -> tuple[list[list[int]], dict]:
    """Eight prompts (six share a 20-token prefix, one full block of 16) and the Qwen3 engine
    options that preempt some of them and chunk the longest: 17 blocks of 16 tokens, where 8
    requests of ~32 + 12 tokens need ~24, and 32 tokens a step, which chunks the 40-token
    prompt and mixes prefills with decodes."""
    rng = np.random.default_rng(seed)
    shared = rng.integers(3, 500, size=20).tolist()
    prompts = [shared + rng.integers(3, 500, size=n).tolist() for n in (10, 14, 8, 12, 15, 9)]
    prompts += [rng.integers(3, 500, size=n).tolist() for n in (40, 3)]
    engine = dict(
        kv_cache_memory_bytes=17 * _block_bytes("qwen3"),
        enable_prefix_caching=True,
        disable_log_stats=False,
    )
    return prompts, engine


def test_greedy_matches_hf_and_sync_through_preemption_and_prefix_cache(
    tiny_checkpoint, monkeypatch
):
    path = tiny_checkpoint("qwen3")
    prompts, engine = _preempting_workload(seed=11)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    sync_out, sync = _run(path, prompts, params, async_scheduling=False, **engine)
    async_out, default = _run(path, prompts, params, **engine)
    direct_out, direct = _run_without_launch_thread(monkeypatch, path, prompts, params, **engine)

    assert default["launch_thread"] and not direct["launch_thread"]
    assert default["launched"] > 0 and direct["preemptions"] > 0
    assert direct["compiles"] == 0
    assert _tokens(direct_out) == _tokens(async_out)
    assert default["async_scheduling"] and not sync["async_scheduling"]
    assert default["steps_with_device_tokens"] > 0
    assert default["early_resolves"] == 0  # greedy needs no token history: no host waits
    # The launch chain (tokens on the host -> next launch) was timed, in milliseconds per step.
    for counters in (default, direct, sync):
        assert counters["launch_chains"] > 0
        assert 0 < counters["launch_chain_s"] / counters["launch_chains"] < 0.5
        # Its links (engine, runner, handoff, call) follow one another: none is negative.
        assert min(counters["launch_chain_split_s"].values()) >= 0
    assert sync["steps_with_device_tokens"] == 0
    assert default["preemptions"] > 0
    assert any(o.num_cached_tokens >= 16 for o in async_out)
    assert default["compiles"] == sync["compiles"] == 0
    assert _tokens(async_out) == _tokens(sync_out) == hf_greedy(path, prompts, MAX_TOKENS)


def test_seeded_sampling_with_history_options_equals_sync(tiny_checkpoint, monkeypatch):
    path = tiny_checkpoint("llama")
    rng = np.random.default_rng(12)
    prompts = [rng.integers(3, 500, size=n).tolist() for n in (7, 23, 40, 5, 16, 31)]
    params = [
        SamplingParams(temperature=1.0, top_p=0.9, seed=42, max_tokens=MAX_TOKENS),
        SamplingParams(
            temperature=0.8,
            seed=1,
            max_tokens=MAX_TOKENS,
            presence_penalty=0.7,
            frequency_penalty=0.3,
            repetition_penalty=1.3,
        ),
        SamplingParams(temperature=1.0, max_tokens=MAX_TOKENS, logprobs=3, prompt_logprobs=2),
        SamplingParams(
            temperature=1.0, seed=5, min_tokens=6, stop_token_ids=[7, 9], max_tokens=MAX_TOKENS
        ),
        SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logit_bias={17: 5.0, 23: 3.0}),
        SamplingParams(n=2, temperature=1.2, seed=7, max_tokens=MAX_TOKENS, logprobs=1),
    ]
    sync_out, sync = _run(path, prompts, params, async_scheduling=False)
    async_out, default = _run(path, prompts, params)
    direct_out, direct = _run_without_launch_thread(monkeypatch, path, prompts, params)

    assert default["async_scheduling"] and default["steps_with_device_tokens"] > 0
    assert default["launch_thread"] and not direct["launch_thread"]
    assert direct["steps_with_device_tokens"] > 0
    assert default["compiles"] == sync["compiles"] == direct["compiles"] == 0
    assert _tokens(async_out) == _tokens(sync_out) == _tokens(direct_out)
    for a, s, t in zip(async_out, sync_out, direct_out, strict=True):
        assert a.prompt_logprobs == s.prompt_logprobs == t.prompt_logprobs
        assert [c.logprobs for c in a.outputs] == [c.logprobs for c in s.outputs]
        assert [c.logprobs for c in t.outputs] == [c.logprobs for c in s.outputs]


@pytest.mark.skipif(not HAS_TRITON, reason="vLLM runs its V2 protocol only where Triton starts")
def test_v2_scheduler_protocol_resumes_preempted_requests_like_v1(tiny_checkpoint, monkeypatch):
    path = tiny_checkpoint("qwen3")
    rng = np.random.default_rng(13)
    prompts = [rng.integers(3, 500, size=n).tolist() for n in (30, 26, 34, 28, 22, 40, 3, 9)]
    sampled = dict(temperature=0.9, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=2)
    params = [
        SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True),
        SamplingParams(seed=3, repetition_penalty=1.4, frequency_penalty=0.5, **sampled),
        SamplingParams(**sampled),  # unseeded: the runner draws its seed when it first sees it
    ] * 3
    params = params[: len(prompts)]
    # Too few blocks for all eight at once: requests are preempted and resumed.
    engine = dict(kv_cache_memory_bytes=17 * _block_bytes("qwen3"), disable_log_stats=False)
    v1_out, v1 = _run(path, prompts, params, async_scheduling=False, **engine)
    with monkeypatch.context() as m:
        m.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
        v2_sync_out, v2_sync = _run(path, prompts, params, async_scheduling=False, **engine)
        v2_async_out, v2_async = _run(path, prompts, params, **engine)

    assert not v1["v2_protocol"] and v1["resumed_as_new"] == 0  # the platform pins V1
    assert v1["preemptions"] > 0
    for counters in (v2_sync, v2_async):
        assert counters["v2_protocol"] and counters["preemptions"] > 0
        assert counters["resumed_as_new"] > 0
        assert counters["compiles"] == 0
    assert _tokens(v2_sync_out) == _tokens(v1_out) == _tokens(v2_async_out)
    for a, b, c in zip(v1_out, v2_sync_out, v2_async_out, strict=True):
        assert [o.logprobs for o in a.outputs] == [o.logprobs for o in b.outputs]  # same steps
        _assert_same_logprobs(a, c)
    greedy = [i for i, p in enumerate(params) if p.temperature == 0.0]
    expected = hf_greedy(path, [prompts[i] for i in greedy], MAX_TOKENS)
    assert [_tokens(v1_out)[i] for i in greedy] == expected


def test_three_steps_in_flight_give_the_same_tokens(tiny_checkpoint, monkeypatch):
    """``VLLM_XLA_GPU_STEPS_IN_FLIGHT=3``: vLLM's engine schedules step N+3 once step N's
    tokens are in, so two steps' tokens are still on the device when a step is prepared.
    Greedy tokens through preemption and prefix caching equal Hugging Face's and the
    synchronous run's; requests that stop on a
    stop token (while their next steps are already in flight) beside seeded top-p sampling
    with logprobs equal the synchronous run."""
    path = tiny_checkpoint("qwen3")
    prompts, engine = _preempting_workload(seed=14)
    greedy = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    sync_out, _ = _run(path, prompts, greedy, async_scheduling=False, **engine)
    with monkeypatch.context() as m:
        m.setenv("VLLM_XLA_GPU_STEPS_IN_FLIGHT", "2")  # vLLM's own depth, for the counter
        _, two = _run(path, prompts, greedy, **engine)
    expected = hf_greedy(path, prompts, MAX_TOKENS)
    # Even requests stop on their greedy 7th token (certain to come); odd ones sample.
    sampled = [
        SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, stop_token_ids=[tokens[6]])
        if i % 2 == 0
        else SamplingParams(temperature=0.8, seed=i, top_p=0.9, max_tokens=MAX_TOKENS, logprobs=2)
        for i, tokens in enumerate(expected)
    ]
    sync_sampled, _ = _run(path, prompts, sampled, async_scheduling=False)
    with monkeypatch.context() as m:
        m.setenv("VLLM_XLA_GPU_STEPS_IN_FLIGHT", "3")
        three_out, three = _run(path, prompts, greedy, **engine)
        three_sampled, three_s = _run(path, prompts, sampled)

    assert two["max_steps_in_flight"] == 2
    for counters in (three, three_s):
        assert counters["max_steps_in_flight"] == 3 and counters["compiles"] == 0
    assert three["preemptions"] > 0
    assert three["early_resolves"] == 0  # greedy: every unknown token came from the device
    assert _tokens(three_out) == _tokens(sync_out) == expected
    assert _tokens(three_sampled) == _tokens(sync_sampled)
    # The even requests stopped on a stop token while later steps were already in flight.
    stops = [o.outputs[0] for o in three_sampled[::2]]
    assert all(c.finish_reason == "stop" and len(c.token_ids) <= 7 for c in stops)
    for a, s in zip(three_sampled, sync_sampled, strict=True):
        _assert_same_logprobs(a, s)  # on a GPU the steps' buckets differ between the runs
