"""Plot batch-1 decode model-bandwidth utilisation (MBU) from ``throughput.py`` JSON files.

One bar per file (labelled model and backend, or by ``--labels``, one per file, for variants
of one backend), with the issue's target for the model drawn beside it when given
(``--target MODEL=PERCENT``). Needs matplotlib (the ``bench`` extra):

    python benchmarks/plot_mbu.py xla_1b.json cuda_1b.json xla_8b.json \\
        --target llama-3.2-1b=60 --target llama-3.1-8b=80 --png docs/batch1_mbu.png
"""

from __future__ import annotations

import argparse
import json
import pathlib

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", nargs="+", help="throughput.py results with a latency part")
    p.add_argument("--target", action="append", default=[], help="MODEL=PERCENT")
    p.add_argument("--labels", nargs="*", help="one bar label per file (default: its backend)")
    p.add_argument("--title", default="Batch-1 decode bandwidth utilisation")
    p.add_argument("--png", required=True)
    return p.parse_args()


def bars(paths: list[str]) -> list[tuple[str, str, float, float]]:
    """``(model, backend, MBU percent, ms per token)`` of each file's batch-1 latency."""
    rows = []
    for path in paths:
        r = json.loads(pathlib.Path(path).read_text())
        lat = r["latency"]
        rows.append((r["model"], r["backend"], 100 * lat["mbu"], lat["ms_per_token"]))
    return rows


def main() -> None:
    args = parse_args()
    targets = {m: float(v) for m, v in (t.split("=", 1) for t in args.target)}
    rows = bars(args.json)
    if args.labels and len(args.labels) != len(rows):
        raise SystemExit(f"--labels needs one label per file: {len(rows)}, not {len(args.labels)}")
    labels = args.labels or [b for _, b, _, _ in rows]
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 4.5))
    colors = {"xla": "tab:blue", "cuda": "tab:green"}
    for i, (model, backend, mbu, ms) in enumerate(rows):
        ax.bar(i, mbu, color=colors.get(backend, "tab:gray"))
        ax.text(i, mbu + 1, f"{mbu:.1f}%\n{ms:.2f} ms", ha="center", va="bottom", fontsize=8)
        if model in targets:
            ax.hlines(targets[model], i - 0.4, i + 0.4, colors="red", linestyles="--")
    ticks = [f"{m}\n{label}" for (m, _, _, _), label in zip(rows, labels, strict=True)]
    ax.set_xticks(range(len(rows)), ticks, fontsize=8)
    ax.set_ylabel("batch-1 decode MBU (% of copy bandwidth)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{args.title} (red dashes: target)")
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)


if __name__ == "__main__":
    main()
