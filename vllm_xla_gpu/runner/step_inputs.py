"""Builds one step's padded model inputs from the persistent batch, in vectorized numpy.

A step runs the scheduled tokens of several requests as one flat, ragged token axis. Everything
here is computed on the host and padded to the step's token bucket (tokens) and to
:func:`num_req_rows` of it (per-request rows), so the traced program only ever sees bucketed
shapes; the result goes to the device packed in one buffer (``runner/transfer.py``), handed to
the jitted step as numpy.

Per-request rows: a step has at most as many requests as tokens, so a token bucket of ``T``
needs ``min(T, max_num_reqs)`` rows, not ``max_num_reqs``. At batch 1 (bucket 16, 256 sequences
of up to 4096 tokens) that makes the block table 16 rows of 256 pages (16 KiB) instead of 256
rows (256 KiB): less for the host to zero, gather and transfer every step, and 16 programs a
KV head for the attention kernel's spare-request slack instead of 256. Less work, but no
measured speed-up: with the block table also packed (:func:`pack_step_inputs`), batch 1 of
Llama-3.2-1B on an H100 ran as fast as before (docs/performance.md, 2026-12-07).

Example: requests A (3 computed, 2 scheduled) and B (decode: 7 computed, 1 scheduled), token
bucket 4 ->  ``query_start_loc = [0, 2, 3, 3, ...]``, ``positions = [3, 4, 7, 0]``,
``slot_mapping = [slotA(3), slotA(4), slotB(7), -1]``, ``seq_lens = [5, 8, 0, ...]``,
``logits_indices = [1, 2, 0, ...]`` (the last token of each request).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from vllm_xla_gpu.ops.attention_metadata import AttentionMetadata
from vllm_xla_gpu.runner.input_batch import InputBatch
from vllm_xla_gpu.runner.transfer import Packing, pack

PAD_SLOT_ID = -1


@dataclasses.dataclass
class StepInputs:
    """Device inputs of one model step (a pytree; every field is data).

    Attributes:
        input_ids: i32[num_tokens_padded] token ids, 0 for padding.
        positions: i32[num_tokens_padded] position of each token in its sequence.
        attn: paged-attention metadata (slot mapping, block tables, lengths).
        logits_indices: i32[num_req_rows] index of each request's last scheduled token.
        prev_token_index: i32[num_tokens_padded] under async scheduling, the row of the previous
            step's sampled tokens (still on the device) that holds this token's id, for tokens
            the host does not know yet; -1 = ``input_ids`` holds the id.
    """

    input_ids: jax.Array
    positions: jax.Array
    attn: AttentionMetadata
    logits_indices: jax.Array
    prev_token_index: jax.Array


jax.tree_util.register_dataclass(
    StepInputs,
    data_fields=["input_ids", "positions", "attn", "logits_indices", "prev_token_index"],
    meta_fields=[],
)


def num_req_rows(num_tokens_padded: int, max_num_reqs: int) -> int:
    """Per-request rows of a token bucket's inputs: a step has at most one request a token."""
    return min(num_tokens_padded, max_num_reqs)


def prepare_step_inputs(
    batch: InputBatch,
    rows: np.ndarray,  # i32[num_reqs] batch rows of the scheduled requests, in output order
    num_scheduled: np.ndarray,  # i32[num_reqs] tokens scheduled per request
    num_tokens_padded: int,
    block_size: int,
) -> StepInputs:
    """Gather and pad one step's inputs (numpy arrays in a :class:`StepInputs`).

    Args:
        batch: the persistent batch (read only).
        rows: rows of the scheduled requests.
        num_scheduled: scheduled token count of each of those requests.
        num_tokens_padded: the token bucket (>= ``num_scheduled.sum()``).
        block_size: tokens per KV-cache page.
    """
    num_reqs = len(rows)
    max_reqs = num_req_rows(num_tokens_padded, batch.max_num_reqs)
    num_tokens = int(num_scheduled.sum())
    query_start_loc = np.full(max_reqs + 1, num_tokens, np.int32)
    query_start_loc[0] = 0
    query_start_loc[1 : num_reqs + 1] = np.cumsum(num_scheduled)

    req_of_token = np.repeat(np.arange(num_reqs), num_scheduled)
    row_of_token = rows[req_of_token]
    positions = batch.num_computed_tokens[row_of_token] + (
        np.arange(num_tokens) - query_start_loc[req_of_token]
    )
    blocks = batch.block_table[row_of_token, positions // block_size]

    seq_lens = np.zeros(max_reqs, np.int32)
    seq_lens[:num_reqs] = batch.num_computed_tokens[rows] + num_scheduled
    block_tables = np.zeros((max_reqs, batch.block_table.shape[1]), np.int32)
    block_tables[:num_reqs] = batch.block_table[rows]
    logits_indices = np.zeros(max_reqs, np.int32)
    logits_indices[:num_reqs] = query_start_loc[1 : num_reqs + 1] - 1

    return StepInputs(
        input_ids=_pad(batch.token_ids[row_of_token, positions], num_tokens_padded, 0),
        positions=_pad(positions, num_tokens_padded, 0),
        attn=AttentionMetadata(
            slot_mapping=_pad(
                blocks * block_size + positions % block_size, num_tokens_padded, PAD_SLOT_ID
            ),
            block_tables=block_tables,
            seq_lens=seq_lens,
            query_start_loc=query_start_loc,
        ),
        logits_indices=logits_indices,
        prev_token_index=np.full(num_tokens_padded, -1, np.int32),
    )


def dummy_step_inputs(num_tokens_padded: int, max_num_reqs: int, max_blocks: int) -> StepInputs:
    """All-padding inputs of one token bucket: used to compile it at start-up."""
    max_reqs = num_req_rows(num_tokens_padded, max_num_reqs)
    return StepInputs(
        input_ids=np.zeros(num_tokens_padded, np.int32),
        positions=np.zeros(num_tokens_padded, np.int32),
        attn=AttentionMetadata(
            slot_mapping=np.full(num_tokens_padded, PAD_SLOT_ID, np.int32),
            block_tables=np.zeros((max_reqs, max_blocks), np.int32),
            seq_lens=np.zeros(max_reqs, np.int32),
            query_start_loc=np.zeros(max_reqs + 1, np.int32),
        ),
        logits_indices=np.zeros(max_reqs, np.int32),
        prev_token_index=np.full(num_tokens_padded, -1, np.int32),
    )


def pack_step_inputs(inputs: StepInputs) -> tuple[np.ndarray, list, Packing]:
    """:func:`transfer.pack` of one step's inputs, the block table included: every input of
    the model step then reaches the device in one transfer (one numpy argument for jit to
    move, where each is a separate copy and a separate release of the GIL on the launch
    thread's critical path: ``benchmarks/step_call.py``)."""
    return pack(inputs, max_packed_ndim=2)


def _pad(values: np.ndarray, size: int, fill: int) -> np.ndarray:
    out = np.full(size, fill, np.int32)
    out[: len(values)] = values
    return out
