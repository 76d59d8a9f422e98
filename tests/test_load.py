"""Aborts under load, seen from inside the engine: what a client disconnect leaves behind.

The server test (``test_openai_server.py``) sees aborts from outside, through vLLM's metrics.
Here vLLM's engine runs in this process on a tiny random-weight Llama with a KV cache smaller
than the batch needs, so requests are running, waiting and preempted at once; the test aborts
one of each kind mid-run (what the server does when a client disconnects) and checks:

* the runner forgets them: no request state and no persistent-batch row left once the engine
  is idle (a leak here would fill the batch and stop serving);
* the scheduler gets every KV block back (usage 0);
* the surviving requests' greedy tokens equal Hugging Face transformers', and the engine goes
  on serving without compiling anything new.
"""

from __future__ import annotations

import numpy as np
from engine import compiles_since_warmup, make_llm
from tiny_models import CONFIGS, hf_greedy
from vllm import SamplingParams
from vllm.inputs import TokensPrompt
from vllm.v1.request import RequestStatus

MAX_TOKENS = 24
FIRST_ABORT_STEP = 3  # running requests have prefilled and decoded by then


def _runner_state(worker) -> dict[str, int]:
    runner = worker.model_runner
    return {"requests": len(runner.requests), "rows": len(runner.batch.req_id_to_row)}


def _block_bytes(arch: str) -> int:
    config = CONFIGS[arch]()
    head_dim = config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers * 2 * 16 * config.num_key_value_heads * head_dim * 4


def _external_id(request_id: str) -> str:
    # vLLM appends "-" and 8 random characters to the id the caller gave (input_processor.py).
    return request_id.rsplit("-", 1)[0]


def _pick_victims(scheduler, kinds_done: set[str]) -> dict[str, str]:
    """One live request of each kind not aborted yet: running, preempted, never scheduled."""
    victims = {}
    for request in scheduler.requests.values():
        if request.is_finished():
            continue
        if request.status == RequestStatus.RUNNING:
            kind = "running"
        elif request.status == RequestStatus.PREEMPTED:
            kind = "preempted"
        elif request.num_computed_tokens == 0:
            kind = "waiting"
        else:
            continue
        if kind not in kinds_done:
            victims.setdefault(kind, _external_id(request.request_id))
    return victims


def test_aborted_requests_leave_no_state_in_runner_or_kv_cache(tiny_checkpoint):
    path = tiny_checkpoint("llama")
    prompts = [
        np.random.default_rng(7).integers(3, 500, size=n).tolist()
        for n in (30, 28, 35, 31, 29, 33, 27, 34, 26, 32, 25, 36, 30, 29, 31, 28)
    ]
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    # 17 blocks of 16 tokens (one is vLLM's null block): 8 running requests of ~30 + 24 tokens
    # need ~32 blocks, so the scheduler preempts while the other 8 wait.
    with make_llm(path, kv_cache_memory_bytes=17 * _block_bytes("llama")) as llm:
        engine = llm.llm_engine
        scheduler = engine.engine_core.engine_core.scheduler  # in-process engine (conftest)
        for i, prompt in enumerate(prompts):
            engine.add_request(f"req{i}", TokensPrompt(prompt_token_ids=prompt), params)
        aborted: dict[str, str] = {}  # external id -> kind when aborted
        outputs: dict[str, list[int]] = {}
        step = 0
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    outputs[out.request_id] = list(out.outputs[0].token_ids)
            step += 1
            if step >= FIRST_ABORT_STEP:
                victims = _pick_victims(scheduler, set(aborted.values()))
                engine.abort_request(list(victims.values()))
                aborted |= {external: kind for kind, external in victims.items()}

        # The runner hears of the last finished requests in the next (empty) step, which vLLM's
        # engine loop runs while the scheduler still has finished ids to hand over.
        while scheduler.has_requests():
            engine.step()
        state = llm.collective_rpc(_runner_state)[0]
        usage = scheduler.kv_cache_manager.usage
        survivors = [i for i in range(len(prompts)) if f"req{i}" not in aborted]
        got = [outputs[f"req{i}"] for i in survivors]
        again = llm.generate([TokensPrompt(prompt_token_ids=prompts[0])], params)
        assert compiles_since_warmup(llm) == 0

    assert set(aborted.values()) == {"running", "preempted", "waiting"}, aborted
    assert state == {"requests": 0, "rows": 0}
    assert usage == 0.0
    assert got == hf_greedy(path, [prompts[i] for i in survivors], MAX_TOKENS)
    assert list(again[0].outputs[0].token_ids) == hf_greedy(path, prompts[:1], MAX_TOKENS)[0]
