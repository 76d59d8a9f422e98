"""Helpers shared by the end-to-end benchmarks (``decode.py``, ``throughput.py``, and the
in-process ``profile_step.py`` and ``step_call.py``).

Role: turn a running engine (``vllm.LLM``) and a model directory into timings, the bytes one
decode step reads, and model-bandwidth utilisation (MBU). Nothing here imports vLLM or this
package at module level, so the scripts run unchanged against vLLM's own CUDA build as well as
against the XLA plugin. Data: none kept; every function is pure or reads the engine it is given.
"""

from __future__ import annotations

import argparse
import gzip
import json
import pathlib
import platform
import sys
import time
from typing import Any

# Measured device-to-device copy bandwidth of the H100 (DESIGN §5); MBUs divide by it unless
# --copy-bandwidth gives the bandwidth of another device.
H100_COPY_BANDWIDTH = 2.9e12
# Bytes per element of the dtypes a benchmark may ask vLLM for (``--dtype``).
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4}


def add_model_arguments(
    p: argparse.ArgumentParser, architectures: list[str], max_model_len: int, max_tokens: int
) -> None:
    """The checkpoint and engine-size options of the in-process scripts (``profile_step.py``,
    ``step_call.py``), which take their engine from ``throughput.start_engine``: an
    architecture of ``architectures`` or a checkpoint, and the engine's limits, with
    ``max_model_len`` and ``max_tokens`` (``--max-num-batched-tokens``) as defaults."""
    p.add_argument("--arch", choices=architectures, default="llama-3.2-1b")
    p.add_argument("--model", help="a checkpoint directory instead of --arch")
    p.add_argument("--model-dir", help="where --arch is written (default /tmp/vxg-ARCH)")
    p.add_argument("--load-format", choices=["auto", "dummy"], default="auto")
    p.add_argument("--max-model-len", type=int, default=max_model_len)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=max_tokens)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)


def read_trace(path: str | pathlib.Path) -> list[dict]:
    """The events of a Perfetto/Chrome trace written by ``jax.profiler`` (gzipped JSON)."""
    events = json.loads(gzip.open(path).read())
    return events["traceEvents"] if isinstance(events, dict) else events


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """The options both scripts give the engine or the MBU: KV size, async scheduling, bandwidth."""
    p.add_argument("--kv-cache-gib", type=float, help="fixed KV-cache size (default: vLLM's)")
    p.add_argument(
        "--async-scheduling",
        action=argparse.BooleanOptionalAction,
        help="vLLM's async scheduling (default: vLLM's default, on in 0.32)",
    )
    p.add_argument(
        "--copy-bandwidth",
        type=float,
        default=H100_COPY_BANDWIDTH,
        help="bytes/s of the device's copies, for the MBU (default: the H100's, DESIGN §5)",
    )


def engine_kwargs(args: argparse.Namespace) -> dict:
    """``LLM(...)`` arguments from :func:`add_engine_arguments`'s options: the fixed KV size
    (``None``: vLLM's budget) and ``async_scheduling`` when the command line sets it."""
    kwargs = {
        "kv_cache_memory_bytes": int(args.kv_cache_gib * 2**30) if args.kv_cache_gib else None
    }
    if args.async_scheduling is not None:
        kwargs["async_scheduling"] = args.async_scheduling
    return kwargs


def read_config(model_dir: str | pathlib.Path) -> dict:
    """The checkpoint's ``config.json`` as a dict."""
    return json.loads((pathlib.Path(model_dir) / "config.json").read_text())


def dtype_bytes(dtype: str, config: dict) -> int:
    """Bytes per weight and KV element for vLLM's ``dtype`` argument (``auto``: the config's)."""
    if dtype == "auto":
        dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    return DTYPE_BYTES[dtype.removeprefix("torch.")]


def random_prompts(rng: Any, count: int, length: int, vocab_size: int) -> list[list[int]]:
    """``count`` prompts of ``length`` random token ids, away from the special ids at both ends.

    Args:
        rng: a ``numpy.random.Generator``; fresh prompts each call keep vLLM's prefix cache cold.
    """
    return [rng.integers(10, vocab_size - 10, size=length).tolist() for _ in range(count)]


def timed_generate(llm: Any, prompts: list[list[int]], max_tokens: int) -> tuple[float, list]:
    """Greedy ``llm.generate`` of exactly ``max_tokens`` per prompt (``ignore_eos``).

    Returns:
        Wall seconds of the call and vLLM's ``RequestOutput`` list.
    """
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    requests = [TokensPrompt(prompt_token_ids=p) for p in prompts]
    start = time.perf_counter()
    outputs = llm.generate(requests, params, use_tqdm=False)
    return time.perf_counter() - start, outputs


def worker_stats(worker: Any) -> dict:
    """Runs inside the engine's worker (``llm.collective_rpc``): device and, for the XLA
    runner, its start-up split and the compilations since warm-up (must be 0)."""
    runner = getattr(worker, "model_runner", None)
    device = getattr(runner, "device", None)
    stats: dict[str, Any] = {"device": str(device)}
    if hasattr(runner, "compile_guard"):  # the XLA plugin's runner
        stats["device"] = getattr(device, "device_kind", str(device))
        stats["load_s"] = runner.load_seconds
        stats["compile_s"] = runner.compile_seconds
        # lowering / XLA or its cache / warm-up runs, and the KV budget's memory analysis
        # (0 where the budget was given or the device reports no memory)
        stats["compile_split_s"] = dict(runner.compile_split_seconds)
        stats["kv_budget_analysis_s"] = getattr(runner, "scratch_seconds", 0.0)
        stats["compiles_since_warmup"] = runner.compile_guard.since_warmup()
        # Async scheduling: steps whose input tokens stayed on the device, and host waits for
        # a step's tokens before its output was collected (each one stalls the pipeline).
        stats["steps_with_device_tokens"] = runner.num_steps_with_device_tokens
        stats["early_resolves"] = runner.num_early_resolves
        stats["token_wait_s"] = runner.token_wait_seconds
        stats["resolved_outputs"] = runner.num_resolved_outputs
        # The engine's steps in flight (its batch queue, when full).
        stats["max_steps_in_flight"] = runner.max_steps_in_flight
        stats["token_wait_ms_per_output"] = token_wait_ms_per_step(
            {"token_wait_s": 0.0, "resolved_outputs": 0}, stats
        )
        # From a step's tokens on the host to the launch of the step scheduled after them.
        stats["launch_chain_s"] = runner.launch_chain_seconds
        stats["launch_chains"] = runner.num_launch_chains
        stats["launch_chain_split_s"] = dict(runner.launch_chain_split_seconds)
    else:
        try:
            import torch

            stats["device"] = torch.cuda.get_device_name(device)
        except Exception:  # not a CUDA worker: keep the plain name
            pass
    return stats


def engine_stats(llm: Any) -> dict:
    """:func:`worker_stats` of the (single) worker of ``llm``.

    vLLM's engine process accepts a function over ``collective_rpc`` only with pickle fallback
    (``VLLM_ALLOW_INSECURE_SERIALIZATION=1``, set by the scripts; it stays on this machine).
    The function travels by value, so the engine process need not import this module.
    """
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        return llm.collective_rpc(worker_stats)[0]
    except Exception as e:  # another vLLM's worker: the timings stand without these fields
        print(f"warning: no worker stats ({type(e).__name__}: {e})")
        return {}


def launch_chain_ms(before: dict, after: dict) -> float | None:
    """Mean host milliseconds, between two :func:`engine_stats` (XLA runner only), from a
    step's tokens reaching the host to the launch of the next step scheduled after them. When
    it exceeds the device's time per step D, a step takes about (chain + D) / 2."""
    if "launch_chain_s" not in before or "launch_chain_s" not in after:
        return None
    chains = after["launch_chains"] - before["launch_chains"]
    if chains <= 0:
        return None
    return (after["launch_chain_s"] - before["launch_chain_s"]) / chains * 1e3


def launch_chain_split_ms(before: dict, after: dict) -> dict[str, float] | None:
    """:func:`launch_chain_ms` in its links: vLLM's engine (output, update, schedule), the
    runner's input preparation, the handoff to the launch thread, and the jitted call up to
    its return (mean ms each)."""
    if launch_chain_ms(before, after) is None or "launch_chain_split_s" not in after:
        return None
    chains = after["launch_chains"] - before["launch_chains"]
    split_before, split_after = before["launch_chain_split_s"], after["launch_chain_split_s"]
    return {k: (split_after[k] - split_before[k]) / chains * 1e3 for k in split_after}


def token_wait_ms_per_step(before: dict, after: dict) -> float | None:
    """The host's mean wait for a step's sampled tokens between two :func:`engine_stats`
    (XLA runner only): near the device's step time, the device is the pace; near zero, the
    host is."""
    if "token_wait_s" not in before or "token_wait_s" not in after:
        return None
    steps = max(after["resolved_outputs"] - before["resolved_outputs"], 1)
    return (after["token_wait_s"] - before["token_wait_s"]) / steps * 1e3


def decode_step_bytes(
    weight_bytes: int, kv_bytes_per_token: int, batch: int, avg_context: float
) -> float:
    """Bytes one decode step must read: all weights once, plus the real KV of every sequence
    (``batch`` sequences of ``avg_context`` tokens; padding excluded)."""
    return weight_bytes + batch * avg_context * kv_bytes_per_token


def mbu(step_bytes: float, step_seconds: float, copy_bandwidth: float) -> float:
    """Model-bandwidth utilisation: bytes read per second over the device's copy bandwidth."""
    return step_bytes / step_seconds / copy_bandwidth


def versions() -> dict:
    """Versions of Python and of the libraries a result depends on (those importable)."""
    found = {"python": platform.python_version()}
    for name in ("vllm", "torch", "jax", "transformers"):
        try:
            found[name] = __import__(name).__version__
        except Exception:  # absent in this environment
            continue
    return found
