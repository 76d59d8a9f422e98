"""Offline throughput, batch-1 latency and start-up of one model on one vLLM backend.

The same script measures this plugin (``--backend xla``) and vLLM's own CUDA build
(``--backend cuda``, run in an environment where that build is importable), so the two JSON
files it writes can be set side by side by ``compare.py``. It imports nothing from
``vllm_xla_gpu``: with ``--backend cuda`` it sets ``VLLM_XLA_GPU_DISABLE=1`` before vLLM loads
its plugins, so ours steps aside even where it is installed.

Measured, on a random-weight checkpoint of a published architecture (``--arch``, written by
``architectures.py``) or any checkpoint directory (``--model``):

* offline throughput as ``vllm bench throughput`` measures it: ``--num-prompts`` prompts of
  random token ids, fixed input/output lengths per workload (``ignore_eos``), all handed to one
  ``LLM.generate``; requests/s, output tokens/s, total (prompt + output) tokens/s;
* batch-1 decode latency: ms per output token = (time(N tokens) - time(1 token)) / (N - 1),
  prefill excluded, median of ``--repeats``; its MBU = (weights + real KV bytes read per step,
  padding excluded) / ``--copy-bandwidth``;
* batch-1 step time against context (``--context-lens``): the same latency at each prompt
  length, over ``--context-output-len`` tokens (``plot_context.py`` draws it);
* time to first token of a single request (prefill + first token), median of ``--repeats``;
* start-up: engine construction; for xla also the runner's weight-load / bucket-compile split
  and the compilations after warm-up (must be 0); with ``--restart``, a cold and a warm start in
  fresh processes sharing one new compilation-cache directory.

Every prompt is new random ids, so vLLM's prefix cache never shortens a measurement.

    python benchmarks/throughput.py --arch llama-3.2-1b --backend xla --json xla.json
    python benchmarks/throughput.py --arch llama-3.2-1b --backend cuda --json cuda.json
    python benchmarks/compare.py --xla xla.json --cuda cuda.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import common  # noqa: E402
import engine_loop  # noqa: E402
from architectures import (  # noqa: E402
    ARCHITECTURES,
    kv_bytes_per_token,
    weight_bytes,
    write_config_only,
    write_random_checkpoint,
)

# The two short workloads take 1024 prompts: at 256, 128/128 was 1.6 s of work on the H100, and
# its result moved by up to 1.9x between engine starts (docs/performance.md, fifth stop).
DEFAULT_WORKLOADS = ["128/128/1024", "1024/128/1024", "2048/2048"]


@dataclasses.dataclass(frozen=True)
class Workload:
    """Fixed prompt and output lengths; ``num_prompts`` None means ``--num-prompts``."""

    input_len: int
    output_len: int
    num_prompts: int | None = None

    @property
    def name(self) -> str:
        return f"{self.input_len}/{self.output_len}"


def parse_workload(text: str) -> Workload:
    """``IN/OUT`` or ``IN/OUT/PROMPTS`` (``:`` works as well as ``/``)."""
    parts = [int(p) for p in text.replace(":", "/").split("/")]
    if len(parts) not in (2, 3) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected IN/OUT or IN/OUT/PROMPTS")
    return Workload(*parts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments; ``none`` as ``--workloads`` or ``--latency`` skips that part."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model = p.add_mutually_exclusive_group()
    model.add_argument("--arch", choices=sorted(ARCHITECTURES), help="random-weight architecture")
    model.add_argument("--model", help="a checkpoint directory (e.g. the real SmolLM2)")
    p.add_argument("--model-dir", help="where --arch is written (default /tmp/vxg-ARCH)")
    p.add_argument("--backend", choices=["xla", "cuda"], default="xla")
    p.add_argument("--workloads", nargs="+", default=DEFAULT_WORKLOADS, help="IN/OUT[/PROMPTS]")
    p.add_argument("--num-prompts", type=int, default=256)
    p.add_argument("--latency", default="128/128", help="IN/OUT of the batch-1 decode latency")
    p.add_argument("--ttft-lens", type=int, nargs="*", default=[128, 1024, 2048])
    p.add_argument(
        "--context-lens",
        type=int,
        nargs="*",
        default=[],
        help="batch-1 decode step time at each of these prompt lengths (step time against context)",
    )
    p.add_argument("--context-output-len", type=int, default=32, help="tokens per --context-lens")
    p.add_argument("--repeats", type=int, default=5, help="latency and TTFT: median of these")
    p.add_argument("--restart", action="store_true", help="cold and warm start-up first")
    p.add_argument("--cache-dir", help="compilation caches for --restart (default: a new dir)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument(
        "--load-format",
        choices=["auto", "dummy"],
        default="auto",
        help="dummy: --arch writes only config.json and vLLM makes random weights itself "
        "(start-up's load time then excludes reading a checkpoint)",
    )
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    common.add_engine_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write results here")
    p.add_argument("--startup-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for --restart's processes
    if not (args.arch or args.model):
        p.error("one of --arch or --model is required")
    workloads = [] if args.workloads == ["none"] else args.workloads
    try:
        args.workloads = [parse_workload(w) for w in workloads]
        args.latency = None if args.latency == "none" else parse_workload(args.latency)
    except (argparse.ArgumentTypeError, ValueError) as e:
        p.error(str(e))
    lengths = [w.input_len + w.output_len for w in args.workloads] + [n + 1 for n in args.ttft_lens]
    lengths += [n + args.context_output_len for n in args.context_lens]
    if args.latency:
        lengths.append(args.latency.input_len + args.latency.output_len)
    if lengths and max(lengths) > args.max_model_len:
        p.error(f"a request of {max(lengths)} tokens exceeds --max-model-len {args.max_model_len}")
    return args


def set_backend_env(backend: str) -> None:
    """Environment both backends need, set before vLLM is imported."""
    # The runner's timings come back through collective_rpc(<function>), which vLLM's engine
    # process accepts only with pickle fallback; it stays on this machine.
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    if backend == "cuda":
        os.environ["VLLM_XLA_GPU_DISABLE"] = "1"
    elif os.environ.get("VLLM_XLA_GPU_DISABLE") == "1":
        sys.exit("--backend xla with VLLM_XLA_GPU_DISABLE=1 would measure another backend")


def use_cache_dir(env: dict, cache_dir: str) -> None:
    """Point every compilation cache either backend keeps at ``cache_dir`` (in ``env``)."""
    env["VLLM_XLA_GPU_CACHE_DIR"] = os.path.join(cache_dir, "jax")
    env["VLLM_CACHE_ROOT"] = os.path.join(cache_dir, "vllm")  # torch.compile artifacts
    env["TRITON_CACHE_DIR"] = os.path.join(cache_dir, "triton")
    env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(cache_dir, "inductor")


def prepare_model(args: argparse.Namespace) -> tuple[str, str]:
    """Checkpoint directory and display name (writes the random checkpoint once)."""
    if args.model:
        check_generative(args.model)
        return args.model, pathlib.Path(args.model).name
    model_dir = args.model_dir or os.path.join(tempfile.gettempdir(), f"vxg-{args.arch}")
    if args.load_format == "dummy":
        write_config_only(args.arch, model_dir)
    else:
        write_random_checkpoint(args.arch, model_dir)
    check_generative(model_dir)
    return model_dir, args.arch


def check_generative(model_dir: str) -> None:
    """Stop early unless the checkpoint names a causal-LM class: vLLM resolves a bare backbone
    (e.g. ``LlamaModel``) to a pooling model, and the generation below would then never end."""
    architectures = common.read_config(model_dir).get("architectures") or []
    if not any(a.endswith("ForCausalLM") for a in architectures):
        sys.exit(
            f"{model_dir}/config.json names {architectures or 'no architectures'}, not a "
            "*ForCausalLM class; remove the directory to have it written again"
        )


def start_engine(args: argparse.Namespace, model_dir: str, **overrides):
    """``vllm.LLM`` with the engine arguments both backends share (``overrides`` replace or add
    some); returns it and its seconds."""
    from vllm import LLM

    start = time.perf_counter()
    kwargs = dict(
        model=model_dir,
        dtype=args.dtype,
        load_format=args.load_format,
        skip_tokenizer_init=True,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        gpu_memory_utilization=args.gpu_memory_utilization,
        seed=args.seed,
        **common.engine_kwargs(args),
    )
    llm = LLM(**{**kwargs, **overrides})
    elapsed = time.perf_counter() - start
    backend = getattr(args, "backend", "xla")  # profile_step.py profiles this backend only
    if backend == "xla" and "compiles_since_warmup" not in common.engine_stats(llm):
        # Another vLLM on the path (a baseline's, say) starts its own backend without this
        # plugin: its numbers must not be written down as this backend's.
        sys.exit(
            f"--backend xla, but vLLM {common.versions().get('vllm')} started without this "
            "backend's runner: "
            "is vllm_xla_gpu installed for this vLLM?"
        )
    return llm, elapsed


def measure_restart(args: argparse.Namespace) -> dict:
    """Cold then warm engine start, each in a fresh process, sharing one new cache directory.

    Runs before this process touches the device; afterwards this process uses the same (now
    warm) caches, so its own start is a warm one too.
    """
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="vxg-restart-")
    env = dict(os.environ)
    use_cache_dir(env, cache_dir)
    argv = [a for a in args.argv if a != "--restart"]
    result = {"cache_dir": cache_dir}
    for label in ("cold", "warm"):
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            cmd = [sys.executable, os.path.abspath(__file__), *argv, "--startup-only"]
            start = time.perf_counter()
            subprocess.run([*cmd, "--json", f.name], env=env, check=True)
            result[label] = json.loads(pathlib.Path(f.name).read_text())["startup"]
            result[label]["process_s"] = time.perf_counter() - start
        print(f"{label} start: engine {result[label]['engine_s']:.1f} s", flush=True)
    os.environ.update(env)
    return result


def measure_throughput(llm, workload: Workload, num_prompts: int, vocab: int, rng) -> dict:
    """One ``LLM.generate`` of ``num_prompts`` random prompts, after a short warm-up."""
    common.timed_generate(llm, common.random_prompts(rng, 4, workload.input_len, vocab), 4)
    prompts = common.random_prompts(rng, num_prompts, workload.input_len, vocab)
    before, loop_before = common.engine_stats(llm), engine_loop.read(llm)
    elapsed, outputs = common.timed_generate(llm, prompts, workload.output_len)
    wait_ms = common.token_wait_ms_per_step(before, common.engine_stats(llm))
    loop_ms = engine_loop.ms_per_step(loop_before, engine_loop.read(llm))
    prompt_tokens = sum(len(o.prompt_token_ids) for o in outputs)
    output_tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    if output_tokens != num_prompts * workload.output_len:
        print(f"warning: {output_tokens} output tokens, expected {num_prompts} x {workload.name}")
    return {
        "workload": workload.name,
        "input_len": workload.input_len,
        "output_len": workload.output_len,
        "num_prompts": num_prompts,
        "elapsed_s": elapsed,
        "requests_per_s": num_prompts / elapsed,
        "output_tokens_per_s": output_tokens / elapsed,
        "total_tokens_per_s": (prompt_tokens + output_tokens) / elapsed,
        "token_wait_ms_per_step": wait_ms,
        "engine_loop_ms_per_step": loop_ms,
    }


def median_time(llm, rng, input_len: int, max_tokens: int, repeats: int, vocab: int) -> float:
    """Median seconds of a single request, a new random prompt each time."""
    times = []
    for _ in range(repeats):
        prompt = common.random_prompts(rng, 1, input_len, vocab)
        times.append(common.timed_generate(llm, prompt, max_tokens)[0])
    return statistics.median(times)


def measure_latency(llm, args: argparse.Namespace, config: dict, vocab: int, rng) -> dict:
    """Batch-1 ms per output token (prefill excluded) with its MBU, TTFT per length, and the
    batch-1 step time at each ``--context-lens`` prompt length (``context``)."""
    result: dict = {"ttft_ms": {}}
    common.timed_generate(llm, common.random_prompts(rng, 1, 16, vocab), 4)  # warm-up
    if args.latency:
        n_in, n_out = args.latency.input_len, args.latency.output_len
        result.update(batch1_decode(llm, args, config, vocab, rng, n_in, n_out))
    for n in args.ttft_lens:
        result["ttft_ms"][str(n)] = 1e3 * median_time(llm, rng, n, 1, args.repeats, vocab)
    if args.context_lens:
        result["context"] = [
            batch1_decode(llm, args, config, vocab, rng, n, args.context_output_len)
            for n in args.context_lens
        ]
    return result


def batch1_decode(llm, args, config: dict, vocab: int, rng, n_in: int, n_out: int) -> dict:
    """One request of ``n_in`` prompt tokens: ms per output token over ``n_out`` tokens,
    prefill excluded (time(n_out tokens) - time(1 token)), and its MBU."""
    before, loop_before = common.engine_stats(llm), engine_loop.read(llm)
    full = median_time(llm, rng, n_in, n_out, args.repeats, vocab)
    after, loop_after = common.engine_stats(llm), engine_loop.read(llm)
    chain_ms = common.launch_chain_ms(before, after)
    first = median_time(llm, rng, n_in, 1, args.repeats, vocab)
    step_s = (full - first) / max(n_out - 1, 1)
    nbytes = common.dtype_bytes(args.dtype, config)
    # Decode steps 2..N read contexts of n_in + 1 .. n_in + N - 1 tokens: n_in + N/2 on average.
    step_bytes = common.decode_step_bytes(
        weight_bytes(config, nbytes), kv_bytes_per_token(config, nbytes), 1, n_in + n_out / 2
    )
    return {
        "input_len": n_in,
        "output_len": n_out,
        "ms_per_token": step_s * 1e3,
        "step_bytes": step_bytes,
        "mbu": common.mbu(step_bytes, step_s, args.copy_bandwidth),
        "launch_chain_ms": chain_ms,
        "launch_chain_split_ms": common.launch_chain_split_ms(before, after),
        "engine_loop_ms_per_step": engine_loop.ms_per_step(loop_before, loop_after),
    }


def measure_startup(args: argparse.Namespace, model_dir: str) -> dict:
    """One engine start in this (fresh) process: import, construction, the runner's split."""
    start = time.perf_counter()
    import vllm  # noqa: F401  (import time is part of a start; kept apart)

    import_s = time.perf_counter() - start
    llm, engine_s = start_engine(args, model_dir)
    return stats_and_shutdown(llm, import_s=import_s, engine_s=engine_s)


def stats_and_shutdown(llm, **stats) -> dict:
    """``stats`` with the engine's own (``common.engine_stats``), then the engine's shutdown.

    The engine core is its own process: without a shutdown it would outlive this one and keep
    its device memory from the next start (the warm start ran out of memory)."""
    stats = {**stats, **common.engine_stats(llm)}
    llm.llm_engine.engine_core.shutdown()
    return stats


def wants_latency(args: argparse.Namespace) -> bool:
    """Whether any batch-1 measurement was asked for (latency, TTFT or the context sweep)."""
    return bool(args.latency or args.ttft_lens or args.context_lens)


def run_benchmarks(args: argparse.Namespace, model_dir: str) -> tuple[dict, list, dict | None]:
    """Start the engine, run every workload, then batch-1 latency and TTFT."""
    import numpy as np

    config = common.read_config(model_dir)
    vocab = config["vocab_size"]
    llm, engine_s = start_engine(args, model_dir)
    engine_loop.install(llm)  # host time of the engine core's parts, per workload
    rng = np.random.default_rng(args.seed)
    rows = []
    for w in args.workloads:
        rows.append(measure_throughput(llm, w, w.num_prompts or args.num_prompts, vocab, rng))
        print(f"{w.name}: {rows[-1]['output_tokens_per_s']:.1f} output tok/s", flush=True)
    latency = measure_latency(llm, args, config, vocab, rng) if wants_latency(args) else None
    # Read last, so that compiles_since_warmup covers every measurement above.
    return stats_and_shutdown(llm, engine_s=engine_s), rows, latency


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    set_backend_env(args.backend)
    model_dir, name = prepare_model(args)
    if args.startup_only:
        return write_json(args.json, {"startup": measure_startup(args, model_dir)})
    restart = measure_restart(args) if args.restart else None
    startup, rows, latency = {}, [], None
    if args.workloads or wants_latency(args):
        startup, rows, latency = run_benchmarks(args, model_dir)
    elif restart is None:
        sys.exit(
            "nothing to measure: give workloads, --latency, --ttft-lens, --context-lens or "
            "--restart"
        )
    finish(args, name, model_dir, startup, restart, rows, latency)


def finish(args, name, model_dir, startup, restart, rows, latency) -> None:
    """Print the table and write the JSON that ``compare.py`` reads."""
    result = {
        "model": name,
        "model_dir": model_dir,
        "backend": args.backend,
        "dtype": args.dtype,
        "engine_args": {
            k: getattr(args, k)
            for k in (
                "max_model_len",
                "max_num_seqs",
                "max_num_batched_tokens",
                "kv_cache_gib",
                "async_scheduling",
                "load_format",
            )
        }
        | {"gpu_memory_utilization": args.gpu_memory_utilization},
        "copy_bandwidth": args.copy_bandwidth,
        "startup": startup,
        "restart": restart,
        "throughput": rows,
        "latency": latency,
        "versions": common.versions(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "argv": args.argv,
    }
    print_report(result)
    write_json(args.json, result)


def compile_split_text(stats: dict) -> str:
    """The XLA runner's start-up compile phase, split (``common.worker_stats``)."""
    c = stats["compile_split_s"]
    return (
        f"lowering {c['lower']:.1f} s, XLA or its cache {c['compile']:.1f} s, warm-up runs "
        f"{c['warm_up_runs']:.1f} s; KV budget analysis {stats['kv_budget_analysis_s']:.1f} s"
    )


def print_report(r: dict) -> None:
    """The human-readable table of one result."""
    s = r["startup"]
    print(f"\n{r['model']} ({r['dtype']}), backend {r['backend']}, device {s.get('device', '-')}")
    if "engine_s" in s:
        split = (
            f" = load {s['load_s']:.1f} s + compile {s['compile_s']:.1f} s + vLLM set-up"
            if "load_s" in s
            else ""
        )
        print(f"engine start {s['engine_s']:.1f} s{split}")
    if "compile_split_s" in s:
        print(f"compile: {compile_split_text(s)}")
    if "compiles_since_warmup" in s:
        print(f"compilations after warm-up: {s['compiles_since_warmup']}")
    if "token_wait_ms_per_output" in s:
        print(
            f"host waited {s['token_wait_ms_per_output']:.2f} ms per step for sampled tokens; "
            f"early resolves {s['early_resolves']}, steps with device tokens "
            f"{s['steps_with_device_tokens']}; steps in flight {s.get('max_steps_in_flight')}"
        )
    if r["restart"]:
        for label in ("cold", "warm"):
            st = r["restart"][label]
            split = f" (compile {st['compile_s']:.1f} s)" if "compile_s" in st else ""
            if "compile_split_s" in st:
                split = f" (compile {st['compile_s']:.1f} s: {compile_split_text(st)})"
            print(f"{label} start: engine {st['engine_s']:.1f} s{split}")
    if r["throughput"]:
        header = f"{'workload':>10} {'prompts':>7} {'req/s':>8} {'output tok/s':>12}"
        print(f"{header} {'total tok/s':>11} {'token wait ms/step':>18}")
    for t in r["throughput"]:
        wait = t.get("token_wait_ms_per_step")
        print(
            f"{t['workload']:>10} {t['num_prompts']:>7} {t['requests_per_s']:>8.2f} "
            f"{t['output_tokens_per_s']:>12.1f} {t['total_tokens_per_s']:>11.1f} "
            f"{'-' if wait is None else f'{wait:.2f}':>18}"
        )
        print_engine_loop(t.get("engine_loop_ms_per_step"))
    lat = r["latency"]
    if lat and "ms_per_token" in lat:
        print(
            f"batch 1, {lat['input_len']}/{lat['output_len']}: {lat['ms_per_token']:.2f} ms per "
            f"output token, MBU {lat['mbu']:.2%} of {r['copy_bandwidth'] / 1e12:.2f} TB/s"
        )
        if lat.get("launch_chain_ms") is not None:
            print(
                f"  host chain from a step's tokens to the next launch: "
                f"{lat['launch_chain_ms']:.2f} ms"
            )
            if lat.get("launch_chain_split_ms"):
                links = ", ".join(f"{k} {v:.2f}" for k, v in lat["launch_chain_split_ms"].items())
                print(f"    of which (ms): {links}")
        print_engine_loop(lat.get("engine_loop_ms_per_step"))
        device = s.get("device", "")
        if r["copy_bandwidth"] == common.H100_COPY_BANDWIDTH and "H100" not in device:
            where = device or "this device"
            print(f"  (that is the H100's copy bandwidth: pass --copy-bandwidth for {where})")
    if lat and lat["ttft_ms"]:
        ttft = ", ".join(f"{n} tokens {ms:.1f} ms" for n, ms in lat["ttft_ms"].items())
        print(f"time to first token: {ttft}")
    for c in (lat or {}).get("context", []):
        print(
            f"batch 1 at a {c['input_len']}-token prompt: {c['ms_per_token']:.2f} ms per output "
            f"token, MBU {c['mbu']:.2%}"
        )


def print_engine_loop(loop: dict | None) -> None:
    """One line: the engine core's host ms per model step, part by part (``engine_loop``)."""
    if loop:
        cpu = loop.get("cpu", {})
        parts = ", ".join(
            f"{k} {v:.2f}" + (f" ({cpu[k]:.2f})" if k in cpu and k != "gc" else "")
            for k, v in loop.items()
            if k not in ("steps", "cpu")
        )
        print(f"    engine core ms per step, wall (thread CPU), {loop['steps']:.0f} steps: {parts}")


def write_json(path: str | None, result: dict) -> None:
    if path:
        pathlib.Path(path).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
    # Everything is written and the engine is shut down; interpreter teardown has hung for
    # minutes on the GPU machine after that (2026-11-27), eating the run's time limit.
    sys.stdout.flush()
    os._exit(0)
