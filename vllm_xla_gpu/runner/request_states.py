"""The runner's request bookkeeping: vLLM's scheduler diff applied to host state.

Every step, vLLM's ``SchedulerOutput`` says which requests finished, which are new, which were
preempted or resumed, and how far each scheduled one got. :class:`RequestStatesMixin` applies that
diff to :class:`~vllm_xla_gpu.runner.model_runner.XlaGpuModelRunner`'s host state: the
``RequestState`` of every live request (``runner.requests``), the persistent batch rows
(``runner.batch``: a request holds a row only while it is scheduled), the per-row sampling
parameters (``runner.sampling_inputs``), the prompt-logprobs buffers, and, under async
scheduling, the placeholders of tokens still on the device (``runner._unresolved``). It is a
mixin, as vLLM's own runners split theirs, so that the runner file stays about the step itself.
"""

from __future__ import annotations

from vllm.v1.core.sched.output import SchedulerOutput

from vllm_xla_gpu.runner.input_batch import RequestState
from vllm_xla_gpu.sample.metadata import penalized


class RequestStatesMixin:
    """Request bookkeeping of ``XlaGpuModelRunner`` (see the module docstring)."""

    def _update_states(self, so: SchedulerOutput) -> None:
        """Apply the scheduler's diff to the requests and the persistent batch."""
        for req_id in so.finished_req_ids:
            self.requests.pop(req_id, None)
            self._history_req_ids.discard(req_id)
            self.prompt_logprobs.remove_request(req_id)
            self.batch.remove_request(req_id)
        resumed = so.scheduled_cached_reqs.resumed_req_ids
        for req_id in list(self.batch.req_id_to_row):
            # Unscheduled (or preempted) requests give their row back; they keep their state.
            if req_id not in so.num_scheduled_tokens or req_id in resumed:
                self.batch.remove_request(req_id)
        for new in so.scheduled_new_reqs:
            self._add_new_request(new)
        self._update_cached_requests(so.scheduled_cached_reqs)

    def _add_new_request(self, new) -> None:
        if new.req_id in self.requests:
            self._resume_as_new(new)
            return
        params = new.sampling_params
        seed = params.seed if params.seed is not None else int(self._seed_rng.integers(2**31))
        state = RequestState(
            req_id=new.req_id,
            prompt_token_ids=list(new.prompt_token_ids),
            output_token_ids=[],
            sampling_params=params,
            block_ids=list(new.block_ids[0]),
            num_computed_tokens=new.num_computed_tokens,
            seed=seed,
        )
        self.requests[new.req_id] = state
        if _reads_token_history(params):
            self._history_req_ids.add(new.req_id)
        self.prompt_logprobs.add_request(new.req_id, params.prompt_logprobs)
        self._add_to_batch(state)

    def _resume_as_new(self, new) -> None:
        """A preempted request sent back as a new one: vLLM's V2 protocol (the platform pins
        V1, which sends it as a resumed cached request instead). ``prefill_token_ids`` holds
        its prompt and every output token the engine kept; the request keeps its seed, its
        prompt-logprobs state and its token-history flag."""
        state = self.requests[new.req_id]
        self.num_resumed_as_new += 1
        outputs = new.prefill_token_ids[len(state.prompt_token_ids) :]
        self._truncate_outputs(state, len(outputs))
        state.output_token_ids[:] = outputs
        state.block_ids = list(new.block_ids[0])
        state.num_computed_tokens = new.num_computed_tokens
        self.batch.remove_request(new.req_id)
        self._add_to_batch(state)

    def _truncate_outputs(self, state: RequestState, num_output_tokens: int) -> None:
        """Keep the first ``num_output_tokens`` outputs (the scheduler dropped the rest: a
        preempted request's in-flight tokens); their placeholders are forgotten too."""
        if len(state.output_token_ids) <= num_output_tokens:
            return  # the common case, every step for every running request
        for output in self._unresolved:
            output.forget(state.req_id, num_output_tokens)
        del state.output_token_ids[num_output_tokens:]

    def _add_to_batch(self, state: RequestState) -> None:
        row = self.batch.add_request(state)
        self.sampling_inputs.set_request(row, state.sampling_params, state.seed)

    def _update_cached_requests(self, cached) -> None:
        # Every scheduled request passes here each step: the rows' progress is collected and
        # written into the batch's arrays once, not one numpy item at a time.
        batch, requests = self.batch, self.requests
        rows, num_computed, num_tokens = [], [], []
        for i, req_id in enumerate(cached.req_ids):
            state = requests[req_id]
            state.num_computed_tokens = cached.num_computed_tokens[i]
            self._truncate_outputs(state, cached.num_output_tokens[i])
            new_blocks = cached.new_block_ids[i]
            row = batch.req_id_to_row.get(req_id)
            if req_id in cached.resumed_req_ids:
                state.block_ids = list(new_blocks[0])
            elif new_blocks is not None:
                state.block_ids.extend(new_blocks[0])
            if row is None:
                self._add_to_batch(state)
                continue
            rows.append(row)
            num_computed.append(state.num_computed_tokens)
            num_tokens.append(state.num_tokens)
            if new_blocks is not None:
                batch.append_blocks(row, new_blocks[0])
        if rows:
            batch.num_computed_tokens[rows] = num_computed
            batch.num_tokens[rows] = num_tokens


def _reads_token_history(params) -> bool:
    """Whether sampling reads the request's earlier tokens, not just their count."""
    return penalized(params) or bool(params.bad_words_token_ids)
