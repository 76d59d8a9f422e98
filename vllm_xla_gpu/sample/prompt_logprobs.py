"""Prompt logprobs: the logprob of each prompt token given the tokens before it.

A request with ``prompt_logprobs=k`` gets, for prompt positions ``1 .. P-1``, the logprob and
rank of the prompt token there and the top ``k`` logprobs, computed from the logits of the
position before (as vLLM's ``GPUModelRunner._get_prompt_logprobs_dict``). A prompt may be
prefilled over several steps (chunked prefill): each step fills the rows of its chunk into one
host buffer per request, and the buffer goes out in the step that finishes the prompt.

Device side, :func:`prompt_top_logprobs` runs on every token of the step (the model step keeps
the hidden states of all of them) with a target token per position; it is one program per token
bucket, compiled at start-up, and run only in steps where some request wants prompt logprobs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch
from vllm.v1.outputs import LogprobsTensors

from vllm_xla_gpu.sample.logprobs import TopLogprobs, top_logprobs

# Positions whose logits are computed at once: bounds the [chunk, vocab_size] logits buffer.
_CHUNK = 256


def prompt_top_logprobs(
    compute_logits: Callable[[jax.Array], jax.Array],
    hidden: jax.Array,  # [num_tokens, hidden_size] hidden state of every token of the step
    targets: jax.Array,  # i32[num_tokens] the prompt token after each position (0 if unused)
) -> TopLogprobs:
    """Logprobs of ``targets`` and the top tokens at every position, in chunks of positions."""
    num_tokens = hidden.shape[0]
    if num_tokens <= _CHUNK:
        return top_logprobs(compute_logits(hidden), targets)
    pad = -num_tokens % _CHUNK
    hidden = jnp.pad(hidden, ((0, pad), (0, 0))).reshape(-1, _CHUNK, hidden.shape[-1])
    targets = jnp.pad(targets, (0, pad)).reshape(-1, _CHUNK)
    out = jax.lax.map(
        lambda args: top_logprobs(compute_logits(args[0]), args[1]), (hidden, targets)
    )
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:])[:num_tokens], out)


@dataclasses.dataclass
class _InProgress:
    num_logprobs: int
    tensors: LogprobsTensors | None = None  # [num_prompt_tokens - 1, num_logprobs + 1]


@dataclasses.dataclass
class PromptChunk:
    """One request's positions in this step: rows ``start`` .. of its buffer come from the
    step's token positions ``offset`` .. (``num`` of them)."""

    req_id: str
    offset: int
    start: int
    num: int
    done: bool


class PromptLogprobsState:
    """Buffers of the requests whose prompt logprobs are not complete yet."""

    def __init__(self) -> None:
        self.requests: dict[str, _InProgress] = {}

    def add_request(self, req_id: str, num_logprobs: int | None) -> None:
        """Track ``req_id`` if it asked for prompt logprobs."""
        if num_logprobs is not None:
            self.requests[req_id] = _InProgress(num_logprobs)

    def remove_request(self, req_id: str) -> None:
        self.requests.pop(req_id, None)

    def plan(
        self,
        req_ids: list[str],
        query_start: np.ndarray,  # i32[num_reqs] first token position of each request
        num_scheduled: np.ndarray,  # i32[num_reqs]
        num_computed: np.ndarray,  # i32[num_reqs] tokens computed before this step
        prompt_lens: list[int],
    ) -> list[PromptChunk]:
        """Which positions of this step give prompt logprobs, per tracked request."""
        chunks = []
        for i, req_id in enumerate(req_ids):
            if req_id not in self.requests:
                continue
            start = int(num_computed[i])
            remaining = prompt_lens[i] - 1 - start
            # As vLLM: a chunk ending exactly at the prompt's last token waits for the next
            # step (the one that samples) to send the buffer.
            done = int(num_scheduled[i]) > remaining
            num = remaining if done else int(num_scheduled[i])
            chunks.append(PromptChunk(req_id, int(query_start[i]), start, max(num, 0), done))
        return chunks

    def targets(
        self, chunks: list[PromptChunk], prompts: list[list[int]], num_tokens: int
    ) -> np.ndarray:  # i32[num_tokens]
        """The prompt token after each position of the chunks (0 elsewhere)."""
        targets = np.zeros(num_tokens, np.int32)
        for chunk, prompt in zip(chunks, prompts, strict=True):
            window = prompt[chunk.start + 1 : chunk.start + 1 + chunk.num]
            targets[chunk.offset : chunk.offset + chunk.num] = window
        return targets

    def record(
        self, chunks: list[PromptChunk], top: TopLogprobs, prompt_lens: list[int]
    ) -> dict[str, LogprobsTensors | None]:
        """Copy the chunks into their buffers; return the buffers of finished prompts."""
        token_ids, logprobs, ranks = (np.asarray(x) for x in top)
        finished = {}
        for chunk, prompt_len in zip(chunks, prompt_lens, strict=True):
            state = self.requests[chunk.req_id]
            if state.tensors is None:
                state.tensors = LogprobsTensors.empty_cpu(prompt_len - 1, state.num_logprobs + 1)
            columns = state.num_logprobs + 1
            rows = slice(chunk.start, chunk.start + chunk.num)
            src = slice(chunk.offset, chunk.offset + chunk.num)
            state.tensors.logprob_token_ids[rows] = _torch(token_ids[src, :columns])
            state.tensors.logprobs[rows] = _torch(logprobs[src, :columns])
            state.tensors.selected_token_ranks[rows] = _torch(ranks[src])
            if chunk.done:
                finished[chunk.req_id] = state.tensors
                del self.requests[chunk.req_id]
        return finished


def _torch(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))
