"""The sampler's conditionals and loops, and the custom calls their branches hold.

XLA:GPU records a step's kernels into CUDA graphs (command buffers). A ``conditional`` or
``while`` left outside a graph runs on the host: it copies its predicate to the host and waits
for it, that is, for everything queued before it, and the host can no longer run ahead of the
device. XLA records a conditional into a graph only if every operation of its branches can be
recorded; kernels can, while a custom call can only when its handler says so (CUB's radix sort,
``xla.gpu.ext.cub_sort_pairs``, does not). jaxlib 0.11 forms the graphs from the thunk sequence,
after the HLO, so the compiled HLO does not show them: this lists every conditional and loop of
``sample`` (``sample/sampler.py``) compiled with the worker's default XLA flags, with the custom
calls under it, the candidates for what keeps it on the host. ``profile_step.py``
(``host_control_flow_ms_per_step``) measures which ones do. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
from collections.abc import Iterator

from vllm_xla_gpu.worker import _add_default_xla_flags

_HEADER = re.compile(r"^(ENTRY )?%?([\w.\-]+) .*\{\s*$")
_INSTR = re.compile(r"^\s+(?:ROOT )?%?([\w.\-]+) = .*? ([\w\-]+)\(")
_CALLEE = re.compile(
    r"(to_apply|calls|true_computation|false_computation|body|condition)=%?([\w.\-]+)"
)
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[8, 256], help="request buckets")
    p.add_argument("--vocab-size", type=int, default=128256)
    p.add_argument("--json")
    return p.parse_args()


def computations(hlo: str) -> tuple[dict[str, list[str]], str]:
    """The lines of each computation of an HLO module's text, and the entry's name."""
    comps: dict[str, list[str]] = {}
    entry, current = "", None
    for line in hlo.splitlines():
        header = _HEADER.match(line)
        if header:
            current = header.group(2)
            comps[current] = []
            entry = current if header.group(1) else entry
        elif current is not None and line.strip() != "}":
            comps[current].append(line)
    return comps, entry


def callees(line: str) -> list[str]:
    """Computations an instruction calls (fusions, calls, branches, loop bodies)."""
    names = [m.group(2) for m in _CALLEE.finditer(line)]
    for group in _BRANCHES.findall(line):
        names += [n.strip().lstrip("%") for n in group.split(",") if n.strip()]
    return names


def walk(comps: dict[str, list[str]], roots: list[str]) -> Iterator[tuple[str, str]]:
    """``(computation, line)`` of every computation reachable from ``roots``, each once."""
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name not in comps:
            continue
        seen.add(name)
        for line in comps[name]:
            yield name, line
            todo += callees(line)


def control_flow(hlo: str) -> list[dict]:
    """Conditionals and loops reached from the entry computation, each with what its branches
    contain (custom-call targets, top-level opcodes)."""
    comps, entry = computations(hlo)
    found = []
    for _, line in walk(comps, [entry]):
        instr = _INSTR.match(line)
        if instr and instr.group(2) in ("conditional", "while"):
            contents = _contents(comps, callees(line))
            found.append({"name": instr.group(1), "op": instr.group(2), **contents})
    return found


def _contents(comps: dict[str, list[str]], roots: list[str]) -> dict:
    """Custom-call targets anywhere under ``roots``, and the opcodes of their own lines."""
    targets, opcodes = set(), collections.Counter()
    for name, line in walk(comps, roots):
        targets.update(_TARGET.findall(line))
        instr = _INSTR.match(line)
        if instr and name in roots:
            opcodes[instr.group(2)] += 1
    return {"custom_calls": sorted(targets), "branch_ops": dict(opcodes.most_common(8))}


def sampler_hlo(rows: int, vocab_size: int) -> str:
    """Optimized HLO of ``sample`` for ``rows`` requests, as the runner compiles it."""
    import jax
    import jax.numpy as jnp

    from vllm_xla_gpu.runner.precompile import idle_metadata
    from vllm_xla_gpu.sample.metadata import SamplingInputs
    from vllm_xla_gpu.sample.sampler import sample

    md = idle_metadata(SamplingInputs(rows, vocab_size, 4096), rows)
    logits = jnp.zeros((rows, vocab_size), jnp.float32)
    return jax.jit(sample).lower(logits, md).compile().as_text()


def main() -> None:
    args = parse_args()
    _add_default_xla_flags()
    import jax

    print("device", jax.devices()[0].device_kind)
    results = {}
    for rows in args.rows:
        hlo = sampler_hlo(rows, args.vocab_size)
        found = results[rows] = control_flow(hlo)
        with_calls = sum(bool(f["custom_calls"]) for f in found)
        print(f"\nrows {rows}: {len(found)} conditionals/loops, {with_calls} holding custom calls")
        for f in found:
            print(
                f"  {f['op']:<11} {f['name']:<24} custom calls {f['custom_calls']}  "
                f"ops {f['branch_ops']}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
