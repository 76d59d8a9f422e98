"""Greedy generation through ``vllm.LLM`` on this backend equals Hugging Face, token for token.

Each case runs vLLM's real engine and scheduler on XLA:CPU with a tiny random-weight model written
by the test, and compares against transformers (float32, same weights). Small step budgets force
the scheduler paths that matter: chunked prefill and mixed prefill/decode steps, prefix-cache
hits, and preemption with recomputation. Every case also checks that serving compiled nothing
after warm-up.
"""

from __future__ import annotations

import numpy as np
import pytest
from engine import compiles_since_warmup, make_llm
from tiny_models import hf_greedy
from vllm import SamplingParams
from vllm.inputs import TokensPrompt

ARCHS = ["llama", "qwen2", "qwen3"]
MAX_TOKENS = 12
PROMPT_LENGTHS = (5, 17, 33, 9, 60, 2, 41, 12, 26)


def _prompts(rng: np.random.Generator, lengths, prefix: list[int] | None = None) -> list[list[int]]:
    prefix = prefix or []
    return [prefix + rng.integers(3, 500, size=n).tolist() for n in lengths]


def _generate(llm, prompts: list[list[int]]):
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    return llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params)


def _tokens(outputs) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outputs]


@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_prefill_and_mixed_batches(arch, tiny_checkpoint):
    path = tiny_checkpoint(arch)
    prompts = _prompts(np.random.default_rng(1), PROMPT_LENGTHS)
    # 32 tokens per step: prompts of 33-60 tokens are chunked, and decodes share steps with them.
    with make_llm(path, max_num_batched_tokens=32) as llm:
        got = _tokens(_generate(llm, prompts))
        assert compiles_since_warmup(llm) == 0
    assert got == hf_greedy(path, prompts, MAX_TOKENS)


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_caching_shared_prefixes(arch, tiny_checkpoint):
    path = tiny_checkpoint(arch)
    rng = np.random.default_rng(2)
    shared = rng.integers(3, 500, size=40).tolist()  # 2 full blocks of 16 + 8 tokens
    prompts = _prompts(rng, (3, 11, 20, 7), prefix=shared)
    with make_llm(path, enable_prefix_caching=True) as llm:
        first = _generate(llm, prompts[:1])  # fills the cache with the shared prefix
        rest = _generate(llm, prompts[1:])
        assert compiles_since_warmup(llm) == 0
    assert all(o.num_cached_tokens >= 32 for o in rest), [o.num_cached_tokens for o in rest]
    assert _tokens(first) + _tokens(rest) == hf_greedy(path, prompts, MAX_TOKENS)


@pytest.mark.parametrize("arch", ARCHS)
def test_preemption_and_resume(arch, tiny_checkpoint):
    path = tiny_checkpoint(arch)
    prompts = _prompts(np.random.default_rng(3), (30, 28, 35, 31, 29, 33, 27, 34))
    # 17 blocks of 16 tokens (one is vLLM's null block, 16 hold max_model_len): 8 requests of
    # ~31 + 12 tokens need ~24 blocks together, so some are preempted and recomputed.
    block_bytes = _block_bytes(arch)
    with make_llm(path, kv_cache_memory_bytes=17 * block_bytes, disable_log_stats=False) as llm:
        got = _tokens(_generate(llm, prompts))
        preemptions = _metric(llm, "vllm:num_preemptions")
        assert compiles_since_warmup(llm) == 0
    assert preemptions > 0
    assert got == hf_greedy(path, prompts, MAX_TOKENS)


def _block_bytes(arch: str) -> int:
    from tiny_models import CONFIGS

    config = CONFIGS[arch]()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    # K and V, 16 tokens, float32, per layer.
    per_layer = 2 * 16 * config.num_key_value_heads * head_dim * 4
    return per_layer * config.num_hidden_layers


def _metric(llm, name: str) -> float:
    return sum(m.value for m in llm.get_metrics() if m.name == name and hasattr(m, "value"))
