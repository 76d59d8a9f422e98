"""Plot batch-1 decode step time against context length from ``throughput.py`` JSON files.

One line per file (labelled model and backend): ms per output token at each prompt length of
``--context-lens``, and beside it the share of the copy bandwidth that step reads (MBU: weights
plus the context's KV cache). Needs matplotlib (the ``bench`` extra):

    python benchmarks/plot_context.py xla.json cuda.json --png docs/step_vs_context.png
"""

from __future__ import annotations

import argparse
import json
import pathlib

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", nargs="+", help="throughput.py results with a context sweep")
    p.add_argument("--png", required=True)
    return p.parse_args()


def series(path: str) -> tuple[str, list[dict]]:
    """``(label, the sweep's points in context order)`` of one result file."""
    r = json.loads(pathlib.Path(path).read_text())
    points = (r.get("latency") or {}).get("context") or []
    if not points:
        raise SystemExit(f"{path}: no context sweep (run throughput.py with --context-lens)")
    return f"{r['model']} {r['backend']}", sorted(points, key=lambda c: c["input_len"])


def main() -> None:
    args = parse_args()
    fig, (ax_ms, ax_mbu) = plt.subplots(1, 2, figsize=(11, 4.2))
    for path in args.json:
        label, points = series(path)
        context = [c["input_len"] for c in points]
        ax_ms.plot(context, [c["ms_per_token"] for c in points], marker="o", label=label)
        ax_mbu.plot(context, [100 * c["mbu"] for c in points], marker="o", label=label)
    for ax, ylabel in ((ax_ms, "ms per output token"), (ax_mbu, "MBU (% of copy bandwidth)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    ax_ms.set_ylim(bottom=0)
    ax_mbu.set_ylim(0, 100)
    fig.suptitle("Batch-1 decode step time against context")
    fig.tight_layout()
    fig.savefig(args.png, dpi=110)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
