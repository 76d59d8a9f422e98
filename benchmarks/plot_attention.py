"""Plot ``benchmarks/attention.py``'s JSON: share of the device limit per implementation and
workload, and decode step time against context length. Needs matplotlib (the ``bench`` extra):

    python benchmarks/plot_attention.py attention.json docs/attention_h100.png
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json")
    p.add_argument("png")
    args = p.parse_args()
    with open(args.json) as f:
        result = json.load(f)
    fig, (bars, sweep) = plt.subplots(1, 2, figsize=(12, 4.5))

    rows = result["rows"]
    labels = [f"{r['impl']}\n{r['workload']}" for r in rows]
    shares = [100 * r["share"] for r in rows]
    colors = ["tab:blue" if r["unit"] == "B/s" else "tab:orange" for r in rows]
    bars.barh(range(len(rows)), shares, color=colors)
    bars.set_yticks(range(len(rows)), labels, fontsize=7)
    bars.invert_yaxis()
    bars.axvline(80, color="tab:blue", linestyle="--", linewidth=1, label="decode target 80%")
    bars.axvline(50, color="tab:orange", linestyle="--", linewidth=1, label="prefill target 50%")
    bars.set_xlabel("% of limit (decode: KV bytes vs copy bandwidth; prefill: vs bf16 matmul)")
    bars.legend(fontsize=7, loc="lower right")
    bars.set_title(f"ragged paged attention, {result['device']}", fontsize=9)

    for impl in sorted({s["impl"] for s in result["sweep"]}):
        points = [s for s in result["sweep"] if s["impl"] == impl]
        ctx = [s["context"] for s in points]
        sweep.plot(ctx, [s["ms"] for s in points], marker="o", label=f"{impl}: ms per step")
        rate = sweep.twinx()
        rate.plot(ctx, [s["kv_bytes_per_s"] / 1e12 for s in points], "g--", marker="s")
        rate.set_ylabel("KV read, TB/s (green)")
        rate.axhline(result["limits"]["copy_bytes_per_s"] / 1e12, color="gray", linewidth=1)
    sweep.set_xscale("log", base=2)
    sweep.set_xlabel("context length (64 sequences, one new token each)")
    sweep.set_ylabel("ms per attention call")
    sweep.legend(fontsize=7, loc="upper left")
    sweep.set_title("decode step time against context (gray: copy bandwidth)", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)


if __name__ == "__main__":
    main()
