"""What a Triton attention kernel asks of an SM, found on any machine: no GPU needed.

A decode-heavy attention kernel is limited by how much KV it has in flight, so how many of its
programs an SM can hold at once (its occupancy) matters as much as its instructions. Two
resources set that number: the registers each thread uses and the shared memory each program
takes (Triton's pipelined loads stage their tiles there). Both are fixed when the kernel is
compiled, so this script compiles each implementation's kernel for an NVIDIA target with
Triton's own compiler and ``ptxas`` (both ship in the ``triton`` wheel) and reads them off:

* ``shared``: shared memory per program, from Triton's metadata;
* ``regs`` and ``spill``: registers per thread and bytes spilled, from ``ptxas -v``;
* ``programs/SM``: the smaller of what the registers and what the shared memory allow
  (Hopper: 64K registers and 228 KiB of shared memory per SM, 1 KiB of it reserved per
  program; registers are allocated per warp in units of 256), at most 64 warps and 32
  programs.

Cases (``--cases``): Llama-3.2-1B's heads (32 / 8 / 64) at a 256-token decode step of 256
request rows, Llama-3.1-8B's (32 / 8 / 128) at a 64-token decode step, and 8192-token
prefill steps with each model's heads; block sizes as ``kernel_config`` picks them for those
static shapes, exactly as serving compiles them.

``--configs M,N,WARPS,STAGES ...`` compiles each case with those block sizes instead, to pick
candidates worth timing on the GPU (``attention.py --decode-configs``).

Implementations: ``triton`` (this package's kernel) and any module given as
``--module NAME=MODULE`` that has the same ``ragged_paged_attention_kernel``,
``kernel_config`` and ``kernel_constants`` (a variant under study, an earlier version). Its
kernel's pointer arguments are typed from their names (``*i32`` for metadata, ``*bf16``
otherwise) and marked 16-byte aligned, as jax-triton marks the buffers XLA hands it.

    python benchmarks/kernel_resources.py --module prev=my_old_kernel --json resources.json

The figures are the compiler's, for the ``triton`` and ``ptxas`` installed here; the GPU
machine's Triton may differ by version. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import itertools
import json
import math
import os
import re
import subprocess
import tempfile
import types

import jax.numpy as jnp

# label -> ((num_q_heads, num_kv_heads, head_dim), token bucket, request rows)
CASES = {
    "1b-decode": ((32, 8, 64), 256, 256),
    "1b-prefill": ((32, 8, 64), 8192, 256),
    "8b-decode": ((32, 8, 128), 64, 64),
    "8b-prefill": ((32, 8, 128), 8192, 256),
}
# Per-SM limits of Hopper (H100, H200): registers, shared memory, warps.
SM_REGISTERS = 65536
SM_SHARED_BYTES = 228 * 1024
SHARED_RESERVED_PER_PROGRAM = 1024
SM_WARPS = 64
SM_PROGRAMS = 32  # resident thread blocks
METADATA_POINTERS = ("block_tables", "seq_lens", "qsl", "slot", "tile_req")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impls", nargs="*", default=["triton"])
    p.add_argument("--module", nargs="*", default=[], metavar="NAME=MODULE")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 (Hopper)")
    p.add_argument("--block-size", type=int, default=16, help="KV page size")
    p.add_argument(
        "--configs",
        nargs="*",
        default=[],
        metavar="M,N,WARPS,STAGES",
        help="compile with these block_m,block_n,num_warps,num_stages instead of the ones "
        "kernel_config picks (candidates to time with attention.py --decode-configs)",
    )
    p.add_argument("--json", help="write results here")
    return p.parse_args()


def kernel_module(name: str, modules: dict[str, str]):
    """The module of implementation ``name``: ``triton`` is this package's kernel."""
    if name in modules:
        return importlib.import_module(modules[name])
    if name == "triton":
        return importlib.import_module("vllm_xla_gpu.ops.ragged_paged_attention.triton_gpu")
    raise ValueError(f"{name!r} is neither 'triton' nor given with --module")


def static_shapes(heads: tuple[int, int, int], num_tokens: int, num_reqs: int, block_size: int):
    """Stand-ins with the ``shape``/``dtype`` that ``kernel_constants`` reads (bf16 serving)."""
    num_q_heads, num_kv_heads, head_dim = heads
    num_blocks, max_blocks = 16384, 512  # only their sizes reach the kernel, as constants
    q = types.SimpleNamespace(shape=(num_tokens, num_q_heads, head_dim), dtype=jnp.bfloat16)
    kv = types.SimpleNamespace(
        shape=(2, num_blocks, block_size, num_kv_heads, head_dim), dtype=jnp.bfloat16
    )
    md = types.SimpleNamespace(block_tables=types.SimpleNamespace(shape=(num_reqs, max_blocks)))
    return q, kv, md


def compile_kernel(
    module, case: str, arch: int, block_size: int, config: str | None = None
) -> dict:
    """Compile ``module``'s kernel for ``case`` (with ``config``, ``M,N,WARPS,STAGES``, if
    given) and read its resources off the compiler."""
    from triton.backends.nvidia.compiler import get_ptxas

    from vllm_xla_gpu.ops.triton_launch import compile_for_cuda

    heads, num_tokens, num_reqs = CASES[case]
    fn = module.ragged_paged_attention_kernel
    q, kv, md = static_shapes(heads, num_tokens, num_reqs, block_size)
    group = heads[0] // heads[1]
    cfg = module.kernel_config(num_tokens, num_reqs, group, heads[2])
    if config:
        m, n, warps, stages = map(int, config.split(","))
        # Other fields (read_inputs in this package's kernel) as kernel_config sets them.
        cfg = dataclasses.replace(cfg, block_q=max(1, m // group), block_m=m, block_n=n)
        cfg = dataclasses.replace(cfg, num_warps=warps, num_stages=stages)
    constants = module.kernel_constants(q, kv, md, cfg, heads[2] ** -0.5, None, None)
    pointers = [
        "*i32" if any(name.startswith(m) for m in METADATA_POINTERS) else "*bf16"
        for name in fn.arg_names
        if name not in constants
    ]
    compiled = compile_for_cuda(fn, pointers, constants, cfg.num_warps, cfg.num_stages, arch)
    regs, spill = ptxas_usage(compiled.asm["ptx"], get_ptxas(arch).path, arch)
    shared = int(compiled.metadata.shared)
    return dict(
        block_m=cfg.block_m,
        block_n=cfg.block_n,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        shared=shared,
        regs=regs,
        spill=spill,
        programs_per_sm=programs_per_sm(regs, shared, cfg.num_warps),
    )


def ptxas_usage(ptx: str, ptxas: str, arch: int) -> tuple[int, int]:
    """Registers per thread and spill-store bytes that ``ptxas -v`` reports for ``ptx``."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        suffix = "a" if arch >= 90 else ""  # Triton targets sm_90a on Hopper
        out = subprocess.run(
            [ptxas, "-v", f"--gpu-name=sm_{arch}{suffix}", src, "-o", os.path.join(tmp, "k.o")],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
    regs = re.search(r"Used (\d+) registers", out)
    spill = re.search(r"(\d+) bytes spill stores", out)
    if regs is None:
        raise RuntimeError(f"ptxas reported no register count:\n{out}")
    return int(regs.group(1)), int(spill.group(1)) if spill else 0


def programs_per_sm(regs: int, shared: int, num_warps: int) -> int:
    """How many programs of this kernel one Hopper SM holds at once."""
    regs_per_warp = math.ceil(regs * 32 / 256) * 256
    by_regs = SM_REGISTERS // (regs_per_warp * num_warps)
    by_shared = SM_SHARED_BYTES // (shared + SHARED_RESERVED_PER_PROGRAM)
    return min(by_regs, by_shared, SM_WARPS // num_warps, SM_PROGRAMS)


def main() -> None:
    args = parse_args()
    modules = dict(spec.split("=", 1) for spec in args.module)
    impls = list(dict.fromkeys([*args.impls, *modules]))
    print(f"{'case':<11} {'impl':<10} {'tile':>8} {'warps':>5} {'stages':>6} "
          f"{'shared':>8} {'regs':>4} {'spill':>5} {'programs/SM':>11}")  # fmt: skip
    rows = []
    for case in args.cases:
        for impl, config in itertools.product(impls, args.configs or [None]):
            module = kernel_module(impl, modules)
            row = dict(
                case=case,
                impl=impl,
                **compile_kernel(module, case, args.arch, args.block_size, config),
            )
            rows.append(row)
            print(
                f"{case:<11} {impl:<10} {row['block_m']:>3}x{row['block_n']:<4} "
                f"{row['num_warps']:>5} {row['num_stages']:>6} {row['shared']:>8} "
                f"{row['regs']:>4} {row['spill']:>5} {row['programs_per_sm']:>11}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(arch=args.arch, block_size=args.block_size, rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
