"""Helpers to build a vLLM ``LLM`` on this backend in tests, and to tear it down again."""

from __future__ import annotations

import contextlib
import gc

from vllm import LLM
from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

SMALL_ENGINE = dict(
    dtype="float32",
    skip_tokenizer_init=True,
    max_model_len=256,
    max_num_batched_tokens=32,
    max_num_seqs=8,
    kv_cache_memory_bytes=32 << 20,
    seed=0,
)


@contextlib.contextmanager
def make_llm(model, **overrides):
    """An ``LLM`` on the tiny model with small limits; destroyed (with vLLM's distributed state)
    on exit so the next test can build another."""
    llm = LLM(model=str(model), **{**SMALL_ENGINE, **overrides})
    try:
        yield llm
    finally:
        del llm
        gc.collect()
        cleanup_dist_env_and_memory()


def _compiles_since_warmup(worker) -> int:
    return worker.model_runner.compile_guard.since_warmup()


def compiles_since_warmup(llm: LLM) -> int:
    """XLA compilations the runner needed after its start-up warm-up (0 when healthy)."""
    return llm.collective_rpc(_compiles_since_warmup)[0]
