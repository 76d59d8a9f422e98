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
