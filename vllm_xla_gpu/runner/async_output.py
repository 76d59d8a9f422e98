"""Async scheduling: a step's sampled tokens stay on the device until vLLM asks for them.

With ``--async-scheduling`` vLLM's engine schedules step N+1 and calls ``execute_model`` for it
before it collects step N's output (``EngineCore.step_with_batch_queue``: three batches in
flight by default, vLLM's two with ``VLLM_XLA_GPU_STEPS_IN_FLIGHT=2``; ``steps_in_flight.py``),
so the host prepares N+1 while the device still runs N. The runner's part:

* ``sample_tokens`` returns an :class:`AsyncXlaModelRunnerOutput` instead of a
  ``ModelRunnerOutput``. It starts the device-to-host copy of the sampled ids
  (``copy_to_host_async``) and waits for it only in ``get_output``, which vLLM calls after
  step N+1 is already queued on the device.
* Until then the host token history holds a placeholder ``-1`` where each sampled token goes
  (vLLM's GPU runner does the same in ``token_ids_cpu``). The step's sampled ids, padded to
  ``max_num_seqs`` rows, stay on the device as :class:`PrevSampled`; the next ``model_step``
  takes them as an input and reads each placeholder token from them
  (``StepInputs.prev_token_index``), so no device-to-host sync sits between steps.
* ``get_output`` writes the real ids over the placeholders (:meth:`resolve`), once; a step that
  needs the history earlier (penalties, bad words) resolves it before sampling, as vLLM's
  ``InputBatch.update_async_output_token_ids`` does.

Without async scheduling the runner builds the same object and calls ``get_output`` at once.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import numpy as np
from vllm.v1.outputs import AsyncModelRunnerOutput, LogprobsTensors, ModelRunnerOutput

from vllm_xla_gpu.runner.launch import Launched, ready
from vllm_xla_gpu.sample.logprobs import to_logprobs_lists
from vllm_xla_gpu.sample.sampler import SamplerOutput


@dataclasses.dataclass
class PrevSampled:
    """The previous step's sampled token ids, still on the device.

    Attributes:
        token_ids: i32[max_num_seqs] sampled id of each of the step's requests, in output order
            (maybe still being launched: ``runner/launch.py``).
        req_id_to_index: row in ``token_ids`` of each request that sampled a token (vLLM's
            ``InputBatch.prev_req_id_to_index``); requests still prefilling are absent.
    """

    token_ids: jax.Array | Launched
    req_id_to_index: dict[str, int]


@dataclasses.dataclass
class Placeholders:
    """A step's sampled tokens the host does not know yet, one entry per request that sampled
    (parallel lists: a step of 256 requests makes one object, not 256).

    Attributes:
        req_ids: the requests.
        output_indices: each one's index in its request's ``output_token_ids``.
        step_rows: each one's row in the step's sampled ids.
    """

    req_ids: list[str]
    output_indices: list[int]
    step_rows: list[int]

    def without(self, req_id: str, from_output_index: int) -> Placeholders:
        """These placeholders less those of ``req_id`` at ``from_output_index`` or later."""
        keep = [
            i
            for i, (r, index) in enumerate(zip(self.req_ids, self.output_indices, strict=True))
            if r != req_id or index < from_output_index
        ]
        return Placeholders(
            [self.req_ids[i] for i in keep],
            [self.output_indices[i] for i in keep],
            [self.step_rows[i] for i in keep],
        )


NO_PLACEHOLDERS = Placeholders([], [], [])


def start_copies_to_host(out: SamplerOutput, logprobs: bool) -> None:
    """Start the device-to-host copies of a sample step's ids (and logprobs, when any request
    asked for them), so that ``get_output`` later waits only for what is still in flight."""
    out.sampled_token_ids.copy_to_host_async()
    if logprobs:
        for leaf in jax.tree.leaves(out.logprobs):
            leaf.copy_to_host_async()


# Writes resolved ids over placeholders: (the output, its placeholders, the step's sampled ids).
FillPlaceholders = Callable[["AsyncXlaModelRunnerOutput", Placeholders, np.ndarray], None]


class AsyncXlaModelRunnerOutput(AsyncModelRunnerOutput):
    """One step's output, with the device-to-host copy of its tokens started but not awaited.

    Args:
        req_ids: the step's requests, in output order.
        sampled: bool[num_reqs] whether each request sampled a token (False while prefilling).
        sampler_output: the sample step's device arrays (first ``num_reqs`` rows are real),
            maybe still being launched (``runner/launch.py``); their copies to the host were
            started by :func:`start_copies_to_host` right after the launch.
        num_logprobs: i32[num_reqs] logprobs each request asked for, -1 for none.
        prompt_logprobs_dict: the step's prompt logprobs (already on the host).
        placeholders: the host history entries waiting for this step's tokens.
        fill_placeholders: the runner's callback that writes the real ids into its history.
    """

    def __init__(
        self,
        req_ids: list[str],
        sampled: np.ndarray,
        sampler_output: SamplerOutput | Launched,
        num_logprobs: np.ndarray,
        prompt_logprobs_dict: dict[str, LogprobsTensors | None],
        placeholders: Placeholders,
        fill_placeholders: FillPlaceholders,
    ) -> None:
        self.req_ids = req_ids
        self.sampled = sampled
        self.sampler_output = sampler_output
        self.num_logprobs = num_logprobs
        self.prompt_logprobs_dict = prompt_logprobs_dict
        self.placeholders = placeholders
        self._fill_placeholders = fill_placeholders
        self._token_ids: np.ndarray | None = None
        self.wait_seconds = 0.0

    def resolve(self) -> np.ndarray:
        """Wait for the sampled ids (i32[num_reqs]); the first call fills the placeholders."""
        if self._token_ids is None:
            num_reqs = len(self.req_ids)
            start = time.perf_counter()
            self.sampler_output = ready(self.sampler_output)  # launched, if on the launch thread
            self._token_ids = np.asarray(self.sampler_output.sampled_token_ids)[:num_reqs]
            self.wait_seconds = time.perf_counter() - start  # host idle, waiting for the device
            self._fill_placeholders(self, self.placeholders, self._token_ids)
            self.placeholders = NO_PLACEHOLDERS
        return self._token_ids

    def forget(self, req_id: str, from_output_index: int) -> None:
        """Drop placeholders the runner truncated (a preempted request's discarded tokens), so a
        late ``resolve`` cannot write into positions that later steps reuse."""
        self.placeholders = self.placeholders.without(req_id, from_output_index)

    def get_output(self) -> ModelRunnerOutput:
        """vLLM's ``ModelRunnerOutput`` of the step (blocks until the tokens are on the host)."""
        token_ids = self.resolve().tolist()
        return ModelRunnerOutput(
            req_ids=self.req_ids,
            req_id_to_index={r: i for i, r in enumerate(self.req_ids)},
            sampled_token_ids=[
                [token] if sampled else []
                for token, sampled in zip(token_ids, self.sampled.tolist(), strict=True)
            ],
            logprobs=to_logprobs_lists(self.sampler_output.logprobs, self.num_logprobs),
            prompt_logprobs_dict=self.prompt_logprobs_dict,
        )
