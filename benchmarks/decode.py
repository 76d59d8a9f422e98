"""Start-up time and decode throughput of vLLM on the XLA backend, for one architecture.

Builds a random-weight checkpoint of a published architecture (``architectures.py``), starts
``vllm.LLM`` on it, and measures:

* start-up: engine construction, split into weight load and bucket compilation (from the runner);
* per batch size B: ``B`` prompts of ``--input-len`` random tokens generating ``--output-len``
  tokens (``ignore_eos``). Decode time = time(full) - time(max_tokens=1), so prefill is excluded;
  reports ms per decode step, output tokens/s, and model-bandwidth utilisation (weights + the
  real KV bytes read per step, padding excluded, over ``--copy-bandwidth``);
* XLA compilations after warm-up (must be 0).

Prints a table and writes JSON:

    python benchmarks/decode.py --arch llama-3.2-1b --batch-sizes 1 32 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import common  # noqa: E402
from architectures import (  # noqa: E402
    ARCHITECTURES,
    kv_bytes_per_token,
    weight_bytes,
    write_random_checkpoint,
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=sorted(ARCHITECTURES), default="llama-3.2-1b")
    p.add_argument("--model-dir", help="where to write/read the checkpoint (default: a tmp dir)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--max-num-batched-tokens", type=int, default=256)
    p.add_argument("--dtype", default="bfloat16")
    common.add_engine_arguments(p)
    p.add_argument("--json", help="write results here")
    return p.parse_args()


def measure_batch(llm, args, batch: int, rng) -> dict:
    vocab = ARCHITECTURES[args.arch]["vocab_size"]
    prompts = [rng.integers(10, vocab - 10, size=args.input_len).tolist() for _ in range(batch)]
    common.timed_generate(llm, prompts, 4)  # warm the host path
    full = min(common.timed_generate(llm, prompts, args.output_len)[0] for _ in range(2))
    prefill = min(common.timed_generate(llm, prompts, 1)[0] for _ in range(2))
    steps = args.output_len - 1
    step_s = (full - prefill) / steps
    avg_ctx = args.input_len + args.output_len / 2
    nbytes = common.DTYPE_BYTES[args.dtype]
    step_bytes = common.decode_step_bytes(
        weight_bytes(args.arch, nbytes), kv_bytes_per_token(args.arch, nbytes), batch, avg_ctx
    )
    return {
        "batch": batch,
        "ms_per_step": step_s * 1e3,
        "decode_tokens_per_s": batch / step_s,
        "mbu": common.mbu(step_bytes, step_s, args.copy_bandwidth),
        "full_s": full,
        "prefill_s": prefill,
    }


def main() -> None:
    args = parse_args()
    # The timing split is read from the worker through collective_rpc(<function>), which vLLM's
    # engine process accepts only with pickle fallback; it stays on this machine.
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    import numpy as np
    import vllm
    from vllm import LLM

    model_dir = args.model_dir or os.path.join(tempfile.gettempdir(), f"vxg-{args.arch}")
    t0 = time.perf_counter()
    write_random_checkpoint(args.arch, model_dir)
    write_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    llm = LLM(
        model=model_dir,
        dtype=args.dtype,
        skip_tokenizer_init=True,
        max_model_len=args.max_model_len,
        max_num_seqs=max(args.batch_sizes),
        max_num_batched_tokens=args.max_num_batched_tokens,
        seed=0,
        **common.engine_kwargs(args),
    )
    startup = {"engine_s": time.perf_counter() - t0, "checkpoint_write_s": write_s}
    rng = np.random.default_rng(0)
    rows = [measure_batch(llm, args, b, rng) for b in args.batch_sizes]
    startup.update(common.engine_stats(llm))
    report(args, startup, rows, vllm.__version__)


def report(args, startup: dict, rows: list[dict], vllm_version: str) -> None:
    import jax

    print(
        f"\n{args.arch} ({args.dtype}) on {startup['device']}: engine start "
        f"{startup['engine_s']:.1f} s = load {startup['load_s']:.1f} s + compile "
        f"{startup['compile_s']:.1f} s (+ vLLM set-up); compiles after warm-up: "
        f"{startup['compiles_since_warmup']}"
    )
    print(f"{'batch':>5} {'ms/step':>9} {'tok/s':>10} {'MBU':>6}")
    for r in rows:
        print(
            f"{r['batch']:>5} {r['ms_per_step']:>9.2f} {r['decode_tokens_per_s']:>10.1f} "
            f"{r['mbu']:>6.1%}"
        )
    if args.json:
        result = {
            "arch": args.arch,
            "args": vars(args),
            "startup": startup,
            "decode": rows,
            "versions": {
                "jax": jax.__version__,
                "vllm": vllm_version,
                "python": platform.python_version(),
            },
            "date": time.strftime("%Y-%m-%d"),
        }
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
