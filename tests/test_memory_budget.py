"""The step scratch the GPU KV budget leaves free covers what the step programs need.

``XlaGpuModelRunner.step_scratch_bytes`` is subtracted from the device memory before the KV cache
gets the rest (``worker.determine_available_memory``); on the CPU it is not used, so it is
exercised here against lower bounds from first principles: the sampler materialises float32
logits for every row of the largest request bucket, and XLA's GPU autotuner needs a buffer as
large as the largest weight.
"""

from __future__ import annotations

import numpy as np
from engine import make_llm


def _scratch_and_bounds(worker) -> tuple[int, int, int]:
    runner = worker.model_runner
    vocab = runner.vocab_size
    logits = runner.request_buckets[-1] * vocab * 4
    largest_weight = max(np.asarray(x).nbytes for x in runner.params.values())
    return runner.step_scratch_bytes(), logits, largest_weight


def test_step_scratch_covers_logits_and_largest_weight(tiny_checkpoint) -> None:
    with make_llm(tiny_checkpoint("llama"), max_num_seqs=16) as llm:
        scratch, logits, largest_weight = llm.collective_rpc(_scratch_and_bounds)[0]
    assert scratch >= logits + largest_weight


GIB = 1 << 30


def test_kv_budget_leaves_the_scratch_in_the_largest_free_block() -> None:
    """On a preallocated pool with holes (the H200 start-up that ran out of memory), the cache
    and then the scratch must both fit in the largest free block, not in the total free."""
    from vllm_xla_gpu.worker import KV_HEADROOM_BYTES, kv_cache_budget

    scratch = int(0.84 * GIB)
    stats = {
        "bytes_limit": 125 * GIB,
        "bytes_in_use": 2 * GIB,
        "pool_bytes": 125 * GIB,
        "largest_free_block_bytes": 122 * GIB,  # 1 GiB of the free 123 lies in holes
    }
    budget = kv_cache_budget(stats, scratch)
    assert budget + scratch + KV_HEADROOM_BYTES == stats["largest_free_block_bytes"]
    # A pool still growing: the cache goes into the part not grown yet.
    growing = {**stats, "pool_bytes": 3 * GIB, "largest_free_block_bytes": 2 << 20}
    assert kv_cache_budget(growing, scratch) == 122 * GIB - scratch - KV_HEADROOM_BYTES
    # Without the block's size (older PJRT), all free counts.
    del stats["largest_free_block_bytes"]
    assert kv_cache_budget(stats, scratch) == 123 * GIB - scratch - KV_HEADROOM_BYTES
