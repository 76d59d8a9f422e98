"""Where a decode step's time goes: device kernels per compiled program, and host work.

Starts ``vllm.LLM`` on this backend in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, so the
runner and its JAX client live in this process), then for each batch size:

* traces a greedy generation with ``jax.profiler`` (a Perfetto trace, kept under ``--out``) and
  sums it up: wall time per step, device busy time per step (the union of kernel intervals),
  kernels per step, time per compiled program (XLA's module events) and the longest kernels;
* at the first batch size, also profiles the host with ``cProfile`` (functions by own time).

The checkpoint and the engine come from ``throughput.py``'s ``prepare_model`` and
``start_engine``, with its defaults (``--max-model-len 4096 --max-num-seqs 256
--max-num-batched-tokens 8192``), so the steps are the ones that benchmark times.

    python benchmarks/profile_step.py --arch llama-3.2-1b --batch-sizes 1 64 --out /tmp/prof
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import json
import os
import pathlib
import pstats
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import common  # noqa: E402
import throughput  # noqa: E402  (its checkpoint and engine set-up, so the steps are the same)
from architectures import ARCHITECTURES  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_model_arguments(p, sorted(ARCHITECTURES), max_model_len=4096, max_tokens=8192)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    common.add_engine_arguments(p)
    p.add_argument("--out", default="/tmp/vxg-profile", help="traces and the host profile")
    return p.parse_args()


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Total length (in the intervals' unit) covered by at least one interval."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def summarize_trace(path: pathlib.Path, num_steps: int) -> dict:
    """Device time per step from a Perfetto/Chrome trace written by ``jax.profiler``.

    Device events are those of processes whose name mentions a GPU; XLA's module events (one
    per program execution) are told apart from kernels by their thread's name."""
    events = common.read_trace(path)
    names = {
        (e["pid"], None): e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    names.update(
        {
            (e["pid"], e.get("tid")): e["args"]["name"]
            for e in events
            if e.get("ph") == "M" and e.get("name") == "thread_name"
        }
    )
    device_pids = {pid for (pid, tid), n in names.items() if tid is None and "GPU" in n}
    kernels, modules = [], collections.defaultdict(list)
    for e in events:
        if e.get("ph") != "X" or e.get("pid") not in device_pids:
            continue
        thread = names.get((e["pid"], e.get("tid")), "")
        if "Module" in thread:
            modules[re.sub(r"\(\d+\)$", "", e["name"])].append(e["dur"])
        elif "Op" not in thread and "Step" not in thread:
            kernels.append((e["ts"], e["ts"] + e["dur"], e["name"]))
    if not kernels:
        return {
            "error": f"no device kernels in {path.name}",
            "threads": sorted(set(names.values())),
        }
    busy_us = union_seconds([(a, b) for a, b, _ in kernels])
    window_us = max(b for _, b, _ in kernels) - min(a for a, _, _ in kernels)
    per_kernel = collections.defaultdict(float)
    counts = collections.Counter()
    for a, b, name in kernels:
        per_kernel[name[:80]] += b - a
        counts[name[:80]] += 1
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:20]
    runs = kernel_runs(kernels)
    return {
        "host_ms_per_step": host_functions(events, device_pids, num_steps),
        **control_flow(events, device_pids, num_steps),
        "graph_runtime": graph_runtime(events, device_pids, num_steps),
        "steps": num_steps,
        "window_ms_per_step": window_us / num_steps / 1e3,
        "device_busy_ms_per_step": busy_us / num_steps / 1e3,
        "kernels_per_step": len(kernels) / num_steps,
        "kernel_gap_ms_per_step": kernel_gaps_us(runs) / num_steps / 1e3,
        "ms_per_step_by_kind": {
            kind: us / num_steps / 1e3 for kind, us in kernel_kinds_us(per_kernel).items()
        },
        "modules": {
            name: {"count": len(d), "mean_ms": sum(d) / len(d) / 1e3}
            for name, d in sorted(modules.items(), key=lambda kv: -sum(kv[1]))[:8]
        },
        "one_step": one_step_kernels(runs),
        "top_kernels": [
            {
                "name": n,
                "ms_per_step": t / num_steps / 1e3,
                "count_per_step": counts[n] / num_steps,
                "us_per_call": t / counts[n],
            }
            for n, t in top
        ],
    }


# Device idle time between two kernels shorter than this is a gap inside one program's run (a
# CUDA graph's node-to-node latency); longer ones are the host's wait between steps.
_GAP_WITHIN_STEP_US = 20.0


def kernel_runs(kernels: list[tuple[float, float, str]]) -> list[list[dict]]:
    """The kernels in order, split into runs wherever the device idled at least
    ``_GAP_WITHIN_STEP_US`` (a step's program is one run, or several back to back); each kernel
    with its time and the idle gap before it within its run (microseconds)."""
    runs, end = [], None
    for start, stop, name in sorted(kernels):
        if end is None or start - end >= _GAP_WITHIN_STEP_US:
            runs.append([])
        gap = 0.0 if not runs[-1] else max(0.0, start - end)
        runs[-1].append({"name": name[:60], "us": stop - start, "gap_us": gap})
        end = stop if end is None else max(end, stop)
    return runs


def kernel_gaps_us(runs: list[list[dict]]) -> float:
    """Total device idle time inside the runs: what the steps' kernels lose to launch latency
    inside their graphs."""
    return sum(k["gap_us"] for run in runs for k in run)


def one_step_kernels(runs: list[list[dict]]) -> list[dict]:
    """The kernels of one step, in order: of the longest runs (at least 90% of the most
    kernels), the middle one, times rounded to 0.01 us. Shows a layer's kernels one by one."""
    longest = max(len(r) for r in runs)
    full = [r for r in runs if len(r) >= 0.9 * longest]
    return [
        {**k, "us": round(k["us"], 2), "gap_us": round(k["gap_us"], 2)}
        for k in full[len(full) // 2]
    ]


# Kernel names by kind: XLA's Triton matmul fusions (``gemm_fusion_dot...``) and cuBLAS's
# (``nvjet_...``, ``sm90_xmma_...``, ``cutlass...``, ``gemv...``); this backend's attention
# launches; everything else (XLA's elementwise, reduction and copy fusions).
_KERNEL_KINDS = (
    ("matmul", re.compile(r"gemm|gemv|xmma|cutlass|cublas|nvjet|dot", re.I)),
    ("attention", re.compile(r"ragged_paged_attention|write_kv")),
)


def kernel_kinds_us(per_kernel: dict[str, float]) -> dict[str, float]:
    """Kernel time summed by kind (:data:`_KERNEL_KINDS`, then ``other``)."""
    totals = collections.defaultdict(float)
    for name, us in per_kernel.items():
        kind = next((k for k, pattern in _KERNEL_KINDS if pattern.search(name)), "other")
        totals[kind] += us
    return dict(totals)


# Host functions worth a line in the summary: the runner's step and vLLM's engine-core step.
_HOST_FUNCTIONS = re.compile(
    r"(execute_model|sample_tokens|get_output|_update_states|schedule|update_from_output"
    r"|process_outputs|PjitFunction\(.*\)|device_put)$"
)


def host_functions(events: list, device_pids: set, num_steps: int) -> dict:
    """Inclusive host time per step of the runner's and scheduler's main functions, from the
    Python tracer's events (``$file:line name``) and JAX's dispatch events. Nested calls of one
    name (e.g. the executor's and the runner's ``execute_model``) are reported separately."""
    totals = collections.defaultdict(float)
    for e in events:
        if e.get("ph") != "X" or e.get("pid") in device_pids:
            continue
        name = e["name"].split(" ")[-1]
        if _HOST_FUNCTIONS.search(name):
            totals[e["name"][:70]] += e["dur"]
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:14]
    return {name: us / num_steps / 1e3 for name, us in ranked}


# XLA's host-side events named after an HLO conditional or loop ("cond.33.clone", "while.7"):
# one run outside a CUDA graph reads its predicate on the host, so the host waits for the device.
_CONTROL_FLOW = re.compile(r"^(cond|conditional|while)[._]\d")


def control_flow(events: list, device_pids: set, num_steps: int) -> dict:
    """Host time per step inside XLA conditionals and loops run outside CUDA graphs (each one a
    host wait for the device), and how many CUDA graphs (command buffers) launched per step."""
    waits = collections.defaultdict(float)
    graphs = 0
    for e in events:
        if e.get("ph") != "X" or e.get("pid") in device_pids:
            continue
        if _CONTROL_FLOW.match(e["name"]):
            waits[e["name"][:40]] += e["dur"]
        elif e["name"] == "command_buffer::execute":
            graphs += 1
    top = sorted(waits.items(), key=lambda kv: -kv[1])[:5]
    return {
        "host_control_flow_ms_per_step": {n: us / num_steps / 1e3 for n, us in top},
        "command_buffers_per_step": graphs / num_steps,
    }


# XLA's host-side runtime events of a program run: the whole execution per program, the CUDA
# graph launch per graph, and the update of a recorded graph whose buffers moved.
_GRAPH_RUNTIME = re.compile(
    r"^(CommonPjRtLoadedExecutable::Execute \(|cuGraphLaunch|command_buffer::update$)"
)


def graph_runtime(events: list, device_pids: set, num_steps: int) -> dict:
    """Per step: host milliseconds and count of each XLA runtime event above. An update in
    every run of a graph means some buffer it records moved since the last run; a launch
    after an update also uploads the changed nodes."""
    totals, counts = collections.defaultdict(float), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("pid") not in device_pids:
            if _GRAPH_RUNTIME.match(e["name"]):
                totals[e["name"][:70]] += e["dur"]
                counts[e["name"][:70]] += 1
    return {
        name: {"ms_per_step": us / num_steps / 1e3, "count_per_step": counts[name] / num_steps}
        for name, us in sorted(totals.items(), key=lambda kv: -kv[1])
    }


def traced_generate(llm, prompts, args, trace_dir: pathlib.Path) -> pathlib.Path:
    import jax

    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        common.timed_generate(llm, prompts, args.output_len)
    return next(trace_dir.rglob("perfetto_trace.json.gz"))


def host_profile(llm, prompts, args, out: pathlib.Path) -> None:
    """cProfile of one generation; the 25 functions with most own time, printed and saved."""
    profile = cProfile.Profile()
    profile.runcall(common.timed_generate, llm, prompts, args.output_len)
    with open(out / "host_profile.txt", "w") as f:
        pstats.Stats(profile, stream=f).sort_stats("tottime").print_stats(40)
    pstats.Stats(profile).sort_stats("tottime").print_stats(25)


def print_table(results: dict) -> None:
    """Per batch size: time per token, the device's busy time, gaps and kernels per step, time
    by kind of kernel, then the longest kernels (microseconds per call)."""
    print(
        f"\n{'batch':>5} {'ms/token':>8} {'busy ms':>7} {'gap ms':>6} {'kernels':>7} "
        f"{'matmul':>6} {'attn':>6} {'other':>6}"
    )
    for batch, r in results.items():
        kinds = r["ms_per_step_by_kind"]
        print(
            f"{batch:>5} {r['untraced_ms_per_token']:>8.3f} {r['device_busy_ms_per_step']:>7.3f} "
            f"{r['kernel_gap_ms_per_step']:>6.3f} {r['kernels_per_step']:>7.1f} "
            f"{kinds.get('matmul', 0):>6.3f} {kinds.get('attention', 0):>6.3f} "
            f"{kinds.get('other', 0):>6.3f}"
        )
        for k in r["top_kernels"][:12]:
            print(
                f"      {k['name'][:48]:<48} {k['count_per_step']:>5.1f} x "
                f"{k['us_per_call']:>7.2f} us = {k['ms_per_step']:.3f} ms"
            )


def main() -> None:
    args = parse_args()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    import numpy as np

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, _ = throughput.prepare_model(args)
    llm, _ = throughput.start_engine(args, model)
    vocab = common.read_config(model)["vocab_size"]
    rng = np.random.default_rng(0)
    results = {}
    for i, batch in enumerate(args.batch_sizes):
        prompts = common.random_prompts(rng, batch, args.input_len, vocab)
        common.timed_generate(llm, prompts, args.output_len)  # warm the host path
        wall, _ = common.timed_generate(llm, prompts, args.output_len)
        trace = traced_generate(llm, prompts, args, out / f"trace_b{batch}")
        summary = summarize_trace(trace, args.output_len)
        summary["untraced_ms_per_token"] = wall / args.output_len * 1e3
        results[batch] = summary
        brief = {k: v for k, v in summary.items() if k != "one_step"}
        print(f"\n== batch {batch}: {json.dumps(brief, indent=1)}")
        if i == 0:
            host_profile(llm, prompts, args, out)
    (out / "profile.json").write_text(json.dumps(results, indent=1))
    print_table({b: r for b, r in results.items() if "error" not in r})


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown, which has hung for minutes on the GPU machine
