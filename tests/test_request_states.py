"""vLLM's two scheduler protocols leave the runner's request bookkeeping in the same state.

vLLM 0.32's scheduler hands a preempted request back to the runner in one of two ways, chosen by
``VllmConfig.use_v2_model_runner``: V1 sends it as a *resumed* cached request (new block ids,
``num_computed_tokens``, ``num_output_tokens``); V2 sends it as a *new* request whose
``prefill_token_ids`` carry its prompt and kept output tokens. The platform pins V1, and vLLM
runs V2 only where Triton starts, so the engine tests on XLA:CPU cannot reach V2's path
(``tests/test_async_scheduling.py`` runs it on a GPU). Here vLLM's own scheduler-output
dataclasses drive :class:`~vllm_xla_gpu.runner.request_states.RequestStatesMixin` (with the
runner's real persistent batch and sampling inputs) through the same story told both ways:

1. requests A (unseeded) and B start and prefill; each samples a token, then another;
2. A is preempted while one more of its tokens is still a placeholder (async scheduling);
3. A resumes (and recomputes its prompt and its two kept tokens) while B decodes.

At the resume step both protocols must give the same rows, token ids, blocks, progress, seed
and sampling parameters, and the same step inputs (``prepare_step_inputs``) as the tokens that
were really sampled: the GPU once recomputed A from the previous row owner's token ids.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from vllm import SamplingParams
from vllm.v1.core.sched.output import CachedRequestData, NewRequestData, SchedulerOutput

from vllm_xla_gpu.runner.input_batch import InputBatch
from vllm_xla_gpu.runner.request_states import RequestStatesMixin
from vllm_xla_gpu.runner.step_inputs import prepare_step_inputs
from vllm_xla_gpu.sample.metadata import SamplingInputs
from vllm_xla_gpu.sample.prompt_logprobs import PromptLogprobsState

BLOCK_SIZE = 4
PROMPTS = {"A": [5, 6, 7], "B": [8, 9, 10, 11, 12]}
SAMPLED = {"A": [21, 22], "B": [31, 32, 33]}
PARAMS = {
    "A": SamplingParams(temperature=0.8, top_p=0.9, logprobs=2),  # unseeded
    "B": SamplingParams(temperature=0.0, repetition_penalty=1.2),
}


class Bookkeeping(RequestStatesMixin):
    """The runner's request bookkeeping alone: the mixin over the runner's real host state."""

    def __init__(self) -> None:
        self.requests = {}
        self.batch = InputBatch(max_num_reqs=4, max_model_len=32, max_blocks_per_req=8)
        self.sampling_inputs = SamplingInputs(4, 64, 32, jax.devices()[0])
        self.prompt_logprobs = PromptLogprobsState()
        self._unresolved = []
        self._history_req_ids = set()
        self._seed_rng = np.random.default_rng(0)
        self.num_resumed_as_new = 0

    def sample(self, req_id: str, token: int) -> None:
        """What the runner's sample step records for a request that sampled ``token``."""
        self.requests[req_id].output_token_ids.append(token)
        self.batch.append_tokens(np.array([self.batch.req_id_to_row[req_id]]), token)


def _new(req_id: str, blocks: list[int], prefill: list[int] | None = None) -> NewRequestData:
    return NewRequestData(
        req_id=req_id,
        prompt_token_ids=PROMPTS[req_id],
        mm_features=[],
        sampling_params=PARAMS[req_id],
        pooling_params=None,
        block_ids=(blocks,),
        num_computed_tokens=0,
        lora_request=None,
        prefill_token_ids=prefill,
    )


def _cached(reqs: list[tuple], resumed: set[str] = frozenset()) -> CachedRequestData:
    """``reqs``: (req_id, new block ids or None, num_computed_tokens, num_output_tokens)."""
    return CachedRequestData(
        req_ids=[r[0] for r in reqs],
        resumed_req_ids=set(resumed),
        new_token_ids=[],
        all_token_ids={},
        new_block_ids=[None if r[1] is None else (r[1],) for r in reqs],
        num_computed_tokens=[r[2] for r in reqs],
        num_output_tokens=[r[3] for r in reqs],
    )


def _step(new: list, cached: CachedRequestData, scheduled: dict[str, int]) -> SchedulerOutput:
    return SchedulerOutput(
        scheduled_new_reqs=new,
        scheduled_cached_reqs=cached,
        num_scheduled_tokens=scheduled,
        total_num_scheduled_tokens=sum(scheduled.values()),
        scheduled_spec_decode_tokens={},
        scheduled_encoder_inputs={},
        num_common_prefix_blocks=[0],
        finished_req_ids=set(),
        free_encoder_mm_hashes=[],
    )


def _run_story(protocol: str) -> tuple[Bookkeeping, dict]:
    """Steps 1-3 of the module docstring; returns the bookkeeping and the resume step's state."""
    rt = Bookkeeping()
    rt._update_states(_step([_new("A", [1]), _new("B", [2, 3])], _cached([]), {"A": 3, "B": 5}))
    rt.sample("A", SAMPLED["A"][0])
    rt.sample("B", SAMPLED["B"][0])
    rt._update_states(_step([], _cached([("A", None, 3, 1), ("B", None, 5, 1)]), {"A": 1, "B": 1}))
    rt.sample("A", SAMPLED["A"][1])
    rt.sample("B", SAMPLED["B"][1])
    rt._update_states(_step([], _cached([("A", [4], 4, 2), ("B", None, 6, 2)]), {"A": 1, "B": 1}))
    rt.sample("A", -1)  # in flight when the scheduler preempts A: it drops this token
    rt.sample("B", SAMPLED["B"][2])
    # A is preempted: only B is scheduled; its blocks go back to the pool.
    rt._update_states(_step([], _cached([("B", [5], 7, 3)]), {"B": 1}))
    rt.sample("B", 34)
    # A resumes with a fresh block and recomputes its 3 prompt and 2 kept output tokens.
    kept = PROMPTS["A"] + SAMPLED["A"]
    b = ("B", None, 8, 4)
    if protocol == "V1":
        resume = _step([], _cached([b, ("A", [6, 7], 0, 2)], {"A"}), {"B": 1, "A": 5})
    else:
        resume = _step([_new("A", [6, 7], prefill=kept)], _cached([b]), {"B": 1, "A": 5})
    rt._update_states(resume)
    rows = np.array([rt.batch.req_id_to_row[r] for r in ("B", "A")], np.int32)
    inputs = prepare_step_inputs(rt.batch, rows, np.array([1, 5], np.int32), 8, BLOCK_SIZE)
    row_a = rt.batch.req_id_to_row["A"]
    state = {
        "a_outputs": list(rt.requests["A"].output_token_ids),
        "a_blocks": list(rt.requests["A"].block_ids),
        "a_seed": rt.requests["A"].seed,
        "a_row_tokens": rt.batch.token_ids[row_a, : rt.batch.num_tokens[row_a]].tolist(),
        "a_computed": int(rt.batch.num_computed_tokens[row_a]),
        "a_block_table": rt.batch.block_table[row_a, : rt.batch.num_blocks[row_a]].tolist(),
        "a_sampling": (
            float(rt.sampling_inputs.temperature[row_a]),
            float(rt.sampling_inputs.top_p[row_a]),
            int(rt.sampling_inputs.seeds[row_a]),
            int(rt.sampling_inputs.num_logprobs[row_a]),
        ),
        "input_ids": np.asarray(inputs.input_ids).tolist(),
        "positions": np.asarray(inputs.positions).tolist(),
        "slot_mapping": np.asarray(inputs.attn.slot_mapping).tolist(),
    }
    return rt, state


@pytest.mark.parametrize("protocol", ["V1", "V2"])
def test_resumed_request_recomputes_its_own_tokens(protocol):
    rt, state = _run_story(protocol)
    kept = PROMPTS["A"] + SAMPLED["A"]
    assert state["a_outputs"] == SAMPLED["A"]  # the dropped placeholder is gone
    assert state["a_row_tokens"] == kept
    assert state["a_blocks"] == state["a_block_table"] == [6, 7]
    assert state["a_computed"] == 0
    # B decodes its last token; A recomputes all five of its tokens into blocks 6 and 7.
    assert state["input_ids"][:6] == [34, *kept]
    assert state["positions"][:6] == [8, 0, 1, 2, 3, 4]
    assert state["slot_mapping"][:6] == [5 * BLOCK_SIZE, 24, 25, 26, 27, 28]
    assert rt.num_resumed_as_new == (1 if protocol == "V2" else 0)


def test_both_protocols_leave_the_same_state():
    _, v1 = _run_story("V1")
    _, v2 = _run_story("V2")
    assert v2 == v1  # the seed drawn for unseeded A at its first schedule is kept, too
