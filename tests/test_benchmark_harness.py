"""The throughput benchmark's argument parsing and bytes-per-step arithmetic (no timing).

``benchmarks/throughput.py`` reports decode model-bandwidth utilisation; these cases check its
parts against numbers computed by hand from Llama-3.2-1B's published config.
"""

from __future__ import annotations

import pathlib
import sys
import types

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
import common  # noqa: E402
import throughput  # noqa: E402
from architectures import ARCHITECTURES, kv_bytes_per_token, weight_bytes  # noqa: E402

# Llama-3.2-1B by hand: per layer q/o 2048x2048 and k/v 2048x512 (2048*64*(2*32+2*8)), MLP
# 3*2048*8192, two norms of 2048; 16 layers; LM head 128256x2048 (tied: read once); final norm.
LLAMA_1B_PARAMS = 16 * (2048 * 64 * 80 + 3 * 2048 * 8192 + 2 * 2048) + 128256 * 2048 + 2048
LLAMA_1B_KV_PER_TOKEN = 2 * 2 * 16 * 8 * 64  # K and V, bf16, 16 layers, 8 KV heads, head_dim 64


def test_weight_and_kv_bytes_match_hand_count():
    assert LLAMA_1B_PARAMS == 1_235_814_400  # the published "1.24B"
    assert weight_bytes("llama-3.2-1b") == 2 * LLAMA_1B_PARAMS
    assert weight_bytes("llama-3.2-1b", dtype_bytes=4) == 4 * LLAMA_1B_PARAMS
    assert kv_bytes_per_token("llama-3.2-1b") == LLAMA_1B_KV_PER_TOKEN


def test_config_dict_without_head_dim_gives_same_bytes():
    config = {k: v for k, v in ARCHITECTURES["llama-3.2-1b"].items() if k != "head_dim"}
    assert weight_bytes(config) == weight_bytes("llama-3.2-1b")
    assert kv_bytes_per_token(config) == kv_bytes_per_token("llama-3.2-1b")


def test_batch1_mbu_by_hand():
    # 128 in / 128 out: decode steps see 128 + 64 tokens on average; 1 ms per step.
    step_bytes = common.decode_step_bytes(
        weight_bytes("llama-3.2-1b"), kv_bytes_per_token("llama-3.2-1b"), 1, 128 + 128 / 2
    )
    assert step_bytes == 2 * LLAMA_1B_PARAMS + 192 * LLAMA_1B_KV_PER_TOKEN
    assert common.mbu(step_bytes, 1e-3, 2.9e12) == pytest.approx(2_477_920_256 / 2.9e9)


def test_dtype_bytes():
    assert common.dtype_bytes("bfloat16", {}) == 2
    assert common.dtype_bytes("float32", {}) == 4
    assert common.dtype_bytes("auto", {"torch_dtype": "float32"}) == 4


def test_parse_args_defaults_and_workloads():
    args = throughput.parse_args(["--arch", "llama-3.2-1b"])
    assert [w.name for w in args.workloads] == ["128/128", "1024/128", "2048/2048"]
    assert [w.num_prompts for w in args.workloads] == [1024, 1024, None]  # None: --num-prompts
    assert args.num_prompts == 256 and args.backend == "xla"
    assert args.latency == throughput.Workload(128, 128)
    args = throughput.parse_args(
        ["--model", "/m", "--backend", "cuda", "--workloads", "2048/2048/64", "--latency", "none"]
    )
    assert args.workloads == [throughput.Workload(2048, 2048, 64)] and args.latency is None
    args = throughput.parse_args(["--arch", "qwen3-0.6b", "--workloads", "none", "--ttft-lens"])
    assert args.workloads == [] and args.ttft_lens == []
    assert args.context_lens == []
    args = throughput.parse_args(["--arch", "llama-3.2-1b", "--context-lens", "128", "2048"])
    assert args.context_lens == [128, 2048] and args.context_output_len == 32


@pytest.mark.parametrize(
    "argv",
    [
        ["--arch", "llama-3.2-1b", "--workloads", "4096/128"],  # over --max-model-len 4096
        ["--arch", "llama-3.2-1b", "--workloads", "128"],  # no output length
        [],  # no model
        ["--arch", "llama-3.2-1b", "--context-lens", "4080"],  # + 32 tokens over 4096
    ],
    ids=["too_long", "malformed", "no_model", "context_too_long"],
)
def test_parse_args_rejects(argv):
    with pytest.raises(SystemExit):
        throughput.parse_args(argv)


def test_sampler_control_flow_finds_conditionals_and_their_custom_calls():
    """``sampler_control_flow.py`` reads XLA's compiled HLO: a program with one conditional
    whose branch calls ``lax.top_k`` (a ``TopK`` custom call on XLA:CPU) and one without."""
    import jax
    import jax.numpy as jnp
    from sampler_control_flow import control_flow

    def f(x, flag):
        top = jax.lax.cond(flag, lambda v: jax.lax.top_k(v, 3)[0], lambda v: v[:, :3], x)
        plain = jax.lax.cond(flag, lambda v: v[:, :3] + 1, lambda v: v[:, :3], x)
        return top + plain

    hlo = jax.jit(f).lower(jnp.ones((4, 64)), True).compile().as_text()
    found = sorted(control_flow(hlo), key=lambda c: len(c["custom_calls"]))
    assert [c["op"] for c in found] == ["conditional", "conditional"]
    assert found[0]["custom_calls"] == [] and found[1]["custom_calls"] == ["TopK"]


def event(name: str, dur_us: float, pid: int = 1) -> dict:
    """One complete ("X") event of a Chrome trace, as ``jax.profiler`` writes them."""
    return {"ph": "X", "name": name, "dur": dur_us, "pid": pid}


def test_graph_runtime_sums_xla_runtime_events_per_step():
    """``profile_step.graph_runtime`` against events counted by hand: two steps, each with one
    run of each program, one graph launch each and one update; device-side and unrelated events
    are left out."""
    from profile_step import graph_runtime

    step = [
        event("CommonPjRtLoadedExecutable::Execute (jit__model_step_fn)", 1000),
        event("CommonPjRtLoadedExecutable::Execute (jit__sample_step_fn)", 200),
        event("cuGraphLaunch (CudaGraph:7)", 400),
        event("command_buffer::update", 150),
        event("command_buffer::update", 150, pid=9),  # on the device's timeline: not host time
        event("command_buffer::execute", 900),  # not one of the summed events
    ]
    summary = graph_runtime(step + step, device_pids={9}, num_steps=2)
    assert summary == {
        "CommonPjRtLoadedExecutable::Execute (jit__model_step_fn)": {
            "ms_per_step": 1.0,
            "count_per_step": 1.0,
        },
        "cuGraphLaunch (CudaGraph:7)": {"ms_per_step": 0.4, "count_per_step": 1.0},
        "CommonPjRtLoadedExecutable::Execute (jit__sample_step_fn)": {
            "ms_per_step": 0.2,
            "count_per_step": 1.0,
        },
        "command_buffer::update": {"ms_per_step": 0.15, "count_per_step": 1.0},
    }


def test_bookkeeping_loops_fill_every_request_history():
    """The runner's per-request loops as ``bookkeeping.py`` drives them: after each step every
    request's output ids and the batch's token history hold the token it was handed there
    (``100 * request + step``), and its token count moved one per step."""
    import bookkeeping

    from vllm_xla_gpu.runner.model_runner import XlaGpuModelRunner, _PendingStep

    times = bookkeeping.run_once(8, 32, 20)  # the script's own run (its check included)
    assert set(times) == {"update_cached", "add_placeholders", "fill_placeholders"}
    runner = bookkeeping.bare_runner(4, 16)
    req_ids = list(runner.requests)
    rows = np.array([runner.batch.req_id_to_row[r] for r in req_ids], np.int32)
    for step in range(3):
        pending = _PendingStep(req_ids, rows, np.ones(4, np.int32), None)
        _, placeholders = XlaGpuModelRunner._add_placeholders(runner, pending)
        tokens = np.arange(4, dtype=np.int32) * 100 + step
        output = types.SimpleNamespace(wait_seconds=0.0)
        XlaGpuModelRunner._fill_placeholders(runner, output, placeholders, tokens)
        runner.batch.num_computed_tokens[rows] += 1
    for i, r in enumerate(req_ids):
        expected = [i * 100 + step for step in range(3)]
        assert runner.requests[r].output_token_ids == expected
        row = runner.batch.req_id_to_row[r]
        assert runner.batch.token_ids[row, 16:19].tolist() == expected
        assert runner.batch.num_tokens[row] == 19


def test_kernel_resources_occupancy_by_hand():
    """Programs per Hopper SM: registers are allocated per warp in units of 256, and each
    program's shared memory takes 1 KiB more."""
    import kernel_resources

    # 103 registers -> 3328 a warp, 13312 a 4-warp program: 4 fit in 64K (shared allows 5).
    assert kernel_resources.programs_per_sm(103, 38912, 4) == 4
    assert kernel_resources.programs_per_sm(143, 38912, 4) == 3  # 18432 a program
    assert kernel_resources.programs_per_sm(120, 100352, 4) == 2  # shared: 228 KiB / 99 KiB
    assert kernel_resources.programs_per_sm(32, 0, 4) == 16  # the 64-warp limit


def test_kernel_resources_compiles_the_serving_kernel(tmp_path):
    """The package's attention kernel compiles for Hopper on this machine, at the block sizes
    serving picks, and the compiler's figures are sane. In a process of its own: this session
    runs Triton's interpreter (conftest.py), whose kernels cannot be compiled."""
    import json
    import os
    import subprocess

    import kernel_resources

    from vllm_xla_gpu.ops.ragged_paged_attention import triton_gpu

    script = pathlib.Path(kernel_resources.__file__)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "resources.json"
    subprocess.run(
        [sys.executable, str(script), "--cases", "1b-decode", "--json", str(out)],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (row,) = json.loads(out.read_text())["rows"]
    cfg = triton_gpu.kernel_config(256, 256, 4, 64)
    assert (row["impl"], row["block_m"], row["block_n"], row["num_stages"]) == (
        "triton",
        cfg.block_m,
        cfg.block_n,
        cfg.num_stages,
    )
    assert 0 < row["regs"] <= 255 and row["spill"] >= 0
    # K and V tiles of the pipelined loop are staged in shared memory: at least one stage each.
    assert row["shared"] >= 2 * cfg.block_n * 64 * 2
    assert row["programs_per_sm"] == kernel_resources.programs_per_sm(
        row["regs"], row["shared"], cfg.num_warps
    )


def test_step_call_sums_host_runtime_events_per_call():
    """``step_call.host_events_per_call`` against sums by hand: two calls' XLA and driver
    events, with the device's timeline and the Python tracer's events left out."""
    from step_call import host_events_per_call

    meta = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
        {"ph": "M", "name": "process_name", "pid": 9, "args": {"name": "/device:GPU:0"}},
    ]

    call = [
        event("CommonPjRtLoadedExecutable::Execute (jit__model_step_fn)", 900),
        event("cuGraphLaunch (CudaGraph:3)", 400),
        event("Thunks::Initialize", 150),
        event("Thunks::Initialize", 50),
        event("gemm_fusion_dot", 30, pid=9),  # a kernel on the device: not host time
        event("$runner.py:520 _call_model_step", 1200),  # the Python tracer
        event("model_runner.py:520 _call_model_step", 1200),
    ]
    assert host_events_per_call(meta + call + call, calls=2) == {
        "CommonPjRtLoadedExecutable::Execute (jit__model_step_fn)": 900.0,
        "cuGraphLaunch (CudaGraph:3)": 400.0,
        "Thunks::Initialize": 200.0,
    }


def test_structured_mix_counts_steps_and_token_gaps_by_hand():
    """``structured_mix.py``'s step mix (a decode is one scheduled token) and the mean gap
    between a request's tokens from vLLM's timestamps, on steps and outputs made by hand."""
    import structured_mix

    steps = [
        {"p-1": 20, "s-1": 20},  # prefills
        {"p-1": 1, "s-1": 1},
        {},  # empty
        {"p-1": 1, "q-1": 7},
        {"s-1": 1},
    ]
    assert structured_mix.step_mix(steps, {"s-1"}) == {
        "steps": 5,
        "empty": 1,
        "with_structured_decode": 2,
        "plain_decodes_only": 1,
    }
    metrics = types.SimpleNamespace(first_token_ts=10.0, last_token_ts=10.5)
    completion = types.SimpleNamespace(token_ids=[1] * 11)
    output = types.SimpleNamespace(metrics=metrics, outputs=[completion])
    assert structured_mix.ms_between_tokens(output) == pytest.approx(50.0)
    completion.token_ids = [1]
    assert structured_mix.ms_between_tokens(output) is None
