"""The persistent batch: per-request state kept on the host in numpy between steps.

vLLM's scheduler sends only what changed each step (new requests, new blocks, computed-token
counts). The runner keeps the rest here:

* :class:`RequestState` — everything about one live request (tokens so far, blocks, sampling
  parameters, seed), kept from its first schedule until it finishes, also while preempted.
* :class:`InputBatch` — fixed-size numpy arrays with one *row* per request currently in the
  batch (``max_num_reqs`` rows). Step inputs are gathered from these rows with vectorized numpy;
  a request that is not scheduled in a step gives its row back and gets one again when it is.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from vllm.sampling_params import SamplingParams


@dataclasses.dataclass
class RequestState:
    """One live request, as the runner remembers it.

    Attributes:
        req_id: vLLM's request id.
        prompt_token_ids: the prompt.
        output_token_ids: tokens sampled so far.
        sampling_params: the request's sampling parameters.
        block_ids: KV-cache page ids, in order (single KV-cache group).
        num_computed_tokens: tokens whose K/V are already in the cache.
        seed: sampling seed (the request's own, or one drawn when it was added).
    """

    req_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    sampling_params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int
    seed: int

    @property
    def num_tokens(self) -> int:
        """Prompt plus sampled tokens."""
        return len(self.prompt_token_ids) + len(self.output_token_ids)


class InputBatch:
    """Row-indexed numpy state of the requests in the running batch.

    Args:
        max_num_reqs: number of rows (vLLM's ``max_num_seqs``).
        max_model_len: token capacity of a row.
        max_blocks_per_req: block-table width, ``cdiv(max_model_len, block_size)``.
    """

    def __init__(self, max_num_reqs: int, max_model_len: int, max_blocks_per_req: int) -> None:
        self.max_num_reqs = max_num_reqs
        self.token_ids = np.zeros((max_num_reqs, max_model_len), np.int32)
        self.num_tokens = np.zeros(max_num_reqs, np.int32)  # prompt + sampled tokens
        self.num_prompt_tokens = np.zeros(max_num_reqs, np.int32)
        self.num_computed_tokens = np.zeros(max_num_reqs, np.int32)
        self.block_table = np.zeros((max_num_reqs, max_blocks_per_req), np.int32)
        self.num_blocks = np.zeros(max_num_reqs, np.int32)
        self.req_id_to_row: dict[str, int] = {}
        self._free_rows = list(range(max_num_reqs - 1, -1, -1))

    def add_request(self, req: RequestState) -> int:
        """Give ``req`` a row and copy its tokens, blocks and progress into it."""
        if not self._free_rows:
            raise RuntimeError(f"the batch is full ({self.max_num_reqs} rows)")
        row = self._free_rows.pop()
        self.req_id_to_row[req.req_id] = row
        n = req.num_tokens
        self.token_ids[row, : len(req.prompt_token_ids)] = req.prompt_token_ids
        self.token_ids[row, len(req.prompt_token_ids) : n] = req.output_token_ids
        self.num_tokens[row] = n
        self.num_prompt_tokens[row] = len(req.prompt_token_ids)
        self.num_computed_tokens[row] = req.num_computed_tokens
        self.num_blocks[row] = 0
        self.append_blocks(row, req.block_ids)
        return row

    def remove_request(self, req_id: str) -> None:
        """Free the request's row (no-op if it has none)."""
        row = self.req_id_to_row.pop(req_id, None)
        if row is not None:
            self._free_rows.append(row)

    def append_blocks(self, row: int, block_ids: list[int]) -> None:
        """Append page ids to the row's block table."""
        start = self.num_blocks[row]
        self.block_table[row, start : start + len(block_ids)] = block_ids
        self.num_blocks[row] = start + len(block_ids)

    def append_tokens(self, rows: np.ndarray, token_id: int) -> None:
        """Record one sampled token in each of ``rows`` (distinct rows; a token past a row's
        capacity is dropped: the request ends there)."""
        n = self.num_tokens[rows]
        fits = n < self.token_ids.shape[1]
        self.token_ids[rows[fits], n[fits]] = token_id
        self.num_tokens[rows] = n + 1
