"""Structured-output requests beside plain ones: how fast each kind decodes, and in which steps.

vLLM computes a structured-output request's grammar bitmask from its tokens so far, so how
many steps the engine keeps in flight (``VLLM_XLA_GPU_STEPS_IN_FLIGHT``,
``vllm_xla_gpu/steps_in_flight.py``) decides how often such a request can decode. This script
starts ``vllm.LLM`` in-process, sends ``--plain`` greedy requests of ``--output-len`` tokens
and ``--structured`` greedy requests constrained by ``--regex``, all at once, and reports per
kind the mean milliseconds between a request's output tokens (vLLM's own request timestamps),
plus how the engine's steps were made up: steps that decoded a structured-output request,
steps that decoded plain requests only, and steps that scheduled nothing. Run it once per
setting (the depth comes from the environment, as in serving):

    python benchmarks/structured_mix.py --model ~/.cache/vllm_xla_gpu/models/SmolLM2-135M-Instruct
    VLLM_XLA_GPU_STEPS_IN_FLIGHT=2 python benchmarks/structured_mix.py --model ...

``--arch`` writes a random-weight checkpoint as ``throughput.py`` does; grammars need a
tokenizer, which ``--tokenizer-dir`` copies beside it (its vocabulary should be the model's).
vLLM's own CUDA build runs it unchanged: ``--backend cuda`` labels the result and skips the check
that this plugin's runner served it.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import common  # noqa: E402
import throughput  # noqa: E402  (its checkpoint and engine set-up)
from architectures import ARCHITECTURES  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_model_arguments(p, sorted(ARCHITECTURES), max_model_len=2048, max_tokens=2048)
    p.add_argument("--tokenizer-dir", help="tokenizer files to copy beside an --arch checkpoint")
    p.add_argument("--backend", choices=["xla", "cuda"], default="xla", help="label only")
    p.add_argument("--plain", type=int, default=8, help="plain greedy requests")
    p.add_argument("--structured", type=int, default=2, help="structured-output requests")
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=96, help="tokens of each plain request")
    p.add_argument("--regex", default="[a-z]{80}", help="the structured requests' grammar")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write the results here")
    common.add_engine_arguments(p)
    return p.parse_args()


def record_steps(llm) -> list[dict[str, int]]:
    """Every step's scheduled tokens per request id, kept by a wrapper around the in-process
    engine's ``schedule`` that calls it and copies what it returns."""
    scheduler = llm.llm_engine.engine_core.engine_core.scheduler
    schedule = scheduler.schedule
    steps: list[dict[str, int]] = []

    def recording(*a, **kw):
        output = schedule(*a, **kw)
        steps.append(dict(output.num_scheduled_tokens))
        return output

    scheduler.schedule = recording
    return steps


def ms_between_tokens(output) -> float | None:
    """Mean ms between one request's output tokens, from vLLM's engine-core timestamps."""
    m, n = output.metrics, len(output.outputs[0].token_ids)
    if m is None or n < 2:
        return None
    return (m.last_token_ts - m.first_token_ts) / (n - 1) * 1e3


def step_mix(steps: list[dict[str, int]], structured_ids: set[str]) -> dict[str, int]:
    """How the engine's steps were made up (a decode is one scheduled token)."""

    def decodes(step, ids):
        return any(n == 1 and (ids is None or (r in ids)) for r, n in step.items())

    return {
        "steps": len(steps),
        "empty": sum(not s for s in steps),
        "with_structured_decode": sum(decodes(s, structured_ids) for s in steps),
        "plain_decodes_only": sum(
            decodes(s, None) and not decodes(s, structured_ids) for s in steps
        ),
    }


def run_once(llm, args, rng, steps: list, vocab: int) -> dict:
    """One batch of both kinds, sent together (prompts of ids below ``vocab``); per-kind rates
    and the step mix."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import StructuredOutputsParams

    count = args.plain + args.structured
    prompts = common.random_prompts(rng, count, args.input_len, vocab)
    plain = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    constrained = SamplingParams(
        temperature=0.0,
        max_tokens=args.output_len,
        structured_outputs=StructuredOutputsParams(regex=args.regex),
    )
    params = [plain] * args.plain + [constrained] * args.structured
    del steps[:]
    start = time.perf_counter()
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params)
    elapsed = time.perf_counter() - start
    kinds = {"plain": outputs[: args.plain], "structured": outputs[args.plain :]}
    # The engine's request ids are the front end's with "-" and 8 characters appended.
    external = {o.request_id for o in kinds["structured"]}
    structured_ids = {r for s in steps for r in s if r.rsplit("-", 1)[0] in external}
    result = {"elapsed_s": elapsed, **step_mix(steps, structured_ids)}
    for kind, outs in kinds.items():
        rates = [ms for o in outs if (ms := ms_between_tokens(o)) is not None]
        result[f"{kind}_ms_per_token"] = statistics.mean(rates) if rates else None
        result[f"{kind}_tokens"] = sum(len(o.outputs[0].token_ids) for o in outs)
    return result


def main() -> None:
    args = parse_args()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the scheduler, in this process
    import numpy as np

    model_dir, name = throughput.prepare_model(args)
    if args.tokenizer_dir:
        for f in pathlib.Path(args.tokenizer_dir).glob("tokenizer*"):
            shutil.copy(f, pathlib.Path(model_dir) / f.name)
    # A tokenizer (grammars need one), vLLM's request timestamps, and xgrammar without free
    # whitespace (a random model's text then ends by the grammar).
    llm, _ = throughput.start_engine(
        args,
        model_dir,
        skip_tokenizer_init=False,
        disable_log_stats=False,
        structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True},
    )
    # Prompt ids both the model and the tokenizer know.
    vocab = min(common.read_config(model_dir)["vocab_size"], len(llm.get_tokenizer()))
    steps = record_steps(llm)
    rng = np.random.default_rng(args.seed)
    run_once(llm, args, rng, steps, vocab)  # warm-up: grammar compilation, first requests
    runs = [run_once(llm, args, rng, steps, vocab) for _ in range(args.repeats)]
    stats = common.engine_stats(llm)
    summary = {k: statistics.median(r[k] for r in runs) for k in runs[0] if runs[0][k] is not None}
    print(
        f"\n{name}, {args.backend}, steps in flight {stats.get('max_steps_in_flight')}, "
        f"{args.plain} plain + {args.structured} structured, median of {args.repeats}"
    )
    print(
        "| plain ms/token | structured ms/token | steps | with a structured decode "
        "| plain decodes only | empty | elapsed s |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {summary.get('plain_ms_per_token', float('nan')):.2f} "
        f"| {summary.get('structured_ms_per_token', float('nan')):.2f} | {summary['steps']:.0f} "
        f"| {summary['with_structured_decode']:.0f} | {summary['plain_decodes_only']:.0f} "
        f"| {summary['empty']:.0f} | {summary['elapsed_s']:.2f} |"
    )
    if args.json:
        record = {
            "model": name,
            "backend": args.backend,
            "args": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str))},
            "steps_in_flight_env": os.environ.get("VLLM_XLA_GPU_STEPS_IN_FLIGHT"),
            "engine": stats,
            # Steps this backend's scheduler held empty after structured ones (all runs).
            "held_steps": getattr(
                llm.llm_engine.engine_core.engine_core.scheduler, "num_held_steps", None
            ),
            "runs": runs,
            "median": summary,
            "versions": common.versions(),
            "date": time.strftime("%Y-%m-%d %H:%M"),
        }
        pathlib.Path(args.json).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
