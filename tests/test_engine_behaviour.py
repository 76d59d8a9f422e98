"""vLLM-level behaviour of the backend: plugin discovery, no recompilation while serving, and
bad input answered with vLLM's usual errors while the same engine keeps serving correctly."""

from __future__ import annotations

import numpy as np
import pytest
from engine import compiles_since_warmup, make_llm
from tiny_models import hf_greedy
from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError
from vllm.inputs import TokensPrompt

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


def _tokens_prompts(prompts):
    return [TokensPrompt(prompt_token_ids=p) for p in prompts]


def test_current_platform_is_xla_gpu():
    from vllm.platforms import current_platform

    from vllm_xla_gpu.platform import XlaGpuPlatform

    assert isinstance(current_platform, XlaGpuPlatform)
    assert current_platform.is_out_of_tree()


def test_varied_workload_compiles_nothing_after_warmup(tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("VLLM_XLA_GPU_COMPILE_THREADS", "2")  # the threaded start-up path
    rng = np.random.default_rng(4)
    with make_llm(tiny_checkpoint("llama"), max_num_batched_tokens=64) as llm:
        for batch, low, high, max_tokens in [
            (1, 1, 5, 9),
            (3, 20, 70, 5),
            (8, 1, 40, 12),
            (5, 60, 200, 3),
        ]:
            prompts = [
                rng.integers(3, 500, size=rng.integers(low, high)).tolist() for _ in range(batch)
            ]
            params = [
                SamplingParams(
                    temperature=float(t),
                    top_p=float(p),
                    top_k=int(k),
                    max_tokens=max_tokens,
                    seed=int(s),
                )
                for t, p, k, s in zip(
                    rng.choice([0.0, 0.7, 1.0], batch),
                    rng.choice([1.0, 0.9], batch),
                    rng.choice([0, 5], batch),
                    rng.integers(0, 100, batch),
                    strict=True,
                )
            ]
            llm.generate(_tokens_prompts(prompts), params)
        assert compiles_since_warmup(llm) == 0
        # Start-up compiled every program ahead on two threads, and the warm-up run of each
        # reused that compilation instead of compiling again.
        assert llm.collective_rpc(_startup_compile_stats)[0] == (0, 2)


def _startup_compile_stats(worker) -> tuple[int, int]:
    runner = worker.model_runner
    return runner.warm_up_recompiles, runner.compile_threads()


def test_too_long_prompt_is_refused_and_engine_keeps_serving(tiny_checkpoint):
    path = tiny_checkpoint("llama")
    prompts = [np.random.default_rng(5).integers(3, 500, size=n).tolist() for n in (7, 30)]
    with make_llm(path) as llm:
        with pytest.raises(VLLMValidationError, match="maximum context length is 256"):
            llm.generate(_tokens_prompts([[7] * 300]), GREEDY)
        got = [list(o.outputs[0].token_ids) for o in llm.generate(_tokens_prompts(prompts), GREEDY)]
    assert got == hf_greedy(path, prompts, GREEDY.max_tokens)


def test_unsupported_request_option_is_refused_and_engine_keeps_serving(tiny_checkpoint):
    path = tiny_checkpoint("llama")
    prompt = [3, 14, 15, 92, 65]
    with make_llm(path) as llm:
        refused = SamplingParams(max_tokens=4, logprob_token_ids=[5, 6])
        with pytest.raises(VLLMValidationError, match="logprob_token_ids"):
            llm.generate(_tokens_prompts([prompt]), refused)
        out = llm.generate(_tokens_prompts([prompt]), GREEDY)
    assert [list(out[0].outputs[0].token_ids)] == hf_greedy(path, [prompt], GREEDY.max_tokens)


@pytest.mark.parametrize(
    "option, named",
    [
        (dict(enable_lora=True), "LoRA"),
        (
            dict(
                speculative_config={
                    "method": "ngram",
                    "num_speculative_tokens": 2,
                    "prompt_lookup_max": 3,
                    "prompt_lookup_min": 1,
                }
            ),
            "speculative decoding",
        ),
        (dict(pipeline_parallel_size=2), "pipeline parallelism"),
        (dict(logprobs_mode="processed_logprobs"), "--logprobs-mode other than raw_logprobs"),
    ],
    ids=["lora", "speculative_decoding", "pipeline_parallel", "logprobs_mode"],
)
def test_unsupported_feature_fails_at_startup_naming_it(option, named, tiny_checkpoint):
    from vllm import LLM

    with pytest.raises(NotImplementedError, match=named):
        LLM(model=str(tiny_checkpoint("llama")), skip_tokenizer_init=True, **option)


def _token_buckets(worker) -> list[int]:
    return worker.model_runner.token_buckets


def test_bucket_padding_gap_serves_hf_greedy_without_compiling(tiny_checkpoint, monkeypatch):
    """``VLLM_XLA_GPU_BUCKET_PADDING_GAP``: the runner pads to the gap's buckets (here a 96-token
    one that powers of two lack), precompiles them all and serves Hugging Face's greedy tokens."""
    monkeypatch.setenv("VLLM_XLA_GPU_BUCKET_PADDING_GAP", "32")
    path = tiny_checkpoint("llama")
    rng = np.random.default_rng(8)
    # An 80-token prompt alone prefills in the 96-token bucket; then a mix of steps.
    groups = [[80], [70, 90, 5]]
    prompts = [[rng.integers(3, 500, size=n).tolist() for n in group] for group in groups]
    with make_llm(path, max_num_batched_tokens=128) as llm:
        assert llm.collective_rpc(_token_buckets)[0] == [16, 32, 64, 96, 128]
        got = [
            [list(o.outputs[0].token_ids) for o in llm.generate(_tokens_prompts(p), GREEDY)]
            for p in prompts
        ]
        assert compiles_since_warmup(llm) == 0
    assert got == [hf_greedy(path, p, GREEDY.max_tokens) for p in prompts]


def _steps_in_flight(worker) -> int:
    return worker.model_runner.max_steps_in_flight


VLLM_ASYNC_SCHEDULER = "vllm.v1.core.sched.async_scheduler.AsyncScheduler"


def test_engine_keeps_three_steps_in_flight_unless_a_scheduler_is_named(
    tiny_checkpoint, monkeypatch
):
    """By default the engine keeps three steps in flight (``steps_in_flight.py``); a scheduler
    class the user names (here vLLM's own async one) cannot space structured-output decodes,
    so that engine keeps vLLM's two. Both serve Hugging Face's greedy tokens."""
    monkeypatch.delenv("VLLM_XLA_GPU_STEPS_IN_FLIGHT", raising=False)
    path = tiny_checkpoint("llama")
    rng = np.random.default_rng(9)
    prompts = [rng.integers(3, 500, size=n).tolist() for n in (7, 19, 40)]
    expected = hf_greedy(path, prompts, GREEDY.max_tokens)
    for scheduler_cls, depth in ((None, 3), (VLLM_ASYNC_SCHEDULER, 2)):
        with make_llm(path, scheduler_cls=scheduler_cls) as llm:
            outputs = llm.generate(_tokens_prompts(prompts), GREEDY)
            assert [list(o.outputs[0].token_ids) for o in outputs] == expected
            assert llm.collective_rpc(_steps_in_flight)[0] == depth


def test_named_scheduler_with_steps_in_flight_set_fails_at_startup(tiny_checkpoint, monkeypatch):
    """A depth above two that the user set is not lowered silently for a named scheduler."""
    from vllm import LLM

    monkeypatch.setenv("VLLM_XLA_GPU_STEPS_IN_FLIGHT", "3")
    with pytest.raises(NotImplementedError, match="needs the XLA backend's scheduler"):
        LLM(
            model=str(tiny_checkpoint("llama")),
            skip_tokenizer_init=True,
            scheduler_cls=VLLM_ASYNC_SCHEDULER,
        )
