"""Side-by-side table of the XLA backend and vLLM's CUDA backend, from ``throughput.py`` JSON.

Each side may be given several files (one device command per workload, say); they are merged
in order, later files winning. Rows are matched by workload (``IN/OUT``); the ratio column is
always xla / cuda, and the last column says which way is better. Prints a Markdown table and
optionally writes it (``--md``), the merged numbers (``--json``), and a PNG of output tokens/s
per workload beside vLLM CUDA (``--png``; matplotlib, the ``bench`` extra).

    python benchmarks/compare.py --xla xla.json --cuda cuda.json --md cmp.md --png cmp.png
"""

from __future__ import annotations

import argparse
import json
import pathlib

# (label, key in a throughput row, which way is better)
THROUGHPUT_METRICS = [
    ("requests/s", "requests_per_s", "higher"),
    ("output tokens/s", "output_tokens_per_s", "higher"),
    ("total tokens/s", "total_tokens_per_s", "higher"),
]


def merge(paths: list[str]) -> dict:
    """One backend's results from several ``throughput.py`` files (later files win)."""
    merged: dict = {"throughput": {}, "latency": {}, "startup": {}, "restart": None}
    for path in paths:
        r = json.loads(pathlib.Path(path).read_text())
        for key in ("model", "backend", "dtype", "versions", "date", "engine_args"):
            merged[key] = r.get(key)
        for row in r.get("throughput") or []:
            merged["throughput"][row["workload"]] = row
        lat = r.get("latency") or {}
        ttft = {**merged["latency"].get("ttft_ms", {}), **lat.get("ttft_ms", {})}
        merged["latency"] = {**merged["latency"], **lat, "ttft_ms": ttft}
        merged["startup"] = {**merged["startup"], **(r.get("startup") or {})}
        merged["restart"] = r.get("restart") or merged["restart"]
    return merged


def rows(xla: dict, cuda: dict) -> list[tuple[str, float | None, float | None, str]]:
    """``(metric, xla value, cuda value, better)`` for every metric either side has."""
    out = []
    workloads = list(dict.fromkeys([*xla["throughput"], *cuda["throughput"]]))
    for w in workloads:
        x, c = xla["throughput"].get(w, {}), cuda["throughput"].get(w, {})
        for label, key, better in THROUGHPUT_METRICS:
            out.append((f"{w} {label}", x.get(key), c.get(key), better))
    xl, cl = xla["latency"], cuda["latency"]
    out.append(
        ("batch-1 ms per output token", xl.get("ms_per_token"), cl.get("ms_per_token"), "lower")
    )
    out.append(("batch-1 MBU", xl.get("mbu"), cl.get("mbu"), "higher"))
    for n in dict.fromkeys([*xl.get("ttft_ms", {}), *cl.get("ttft_ms", {})]):
        out.append((f"TTFT {n} tokens (ms)", xl["ttft_ms"].get(n), cl["ttft_ms"].get(n), "lower"))
    out.append(
        (
            "engine start (s)",
            xla["startup"].get("engine_s"),
            cuda["startup"].get("engine_s"),
            "lower",
        )
    )
    for label in ("cold", "warm"):
        x = (xla["restart"] or {}).get(label, {}).get("engine_s")
        c = (cuda["restart"] or {}).get(label, {}).get("engine_s")
        out.append((f"{label} start (s)", x, c, "lower"))
    return [r for r in out if r[1] is not None or r[2] is not None]


def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    if "MBU" in metric:
        return f"{value:.1%}" if value >= 0.01 else f"{value:.3%}"
    return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"


def markdown(xla: dict, cuda: dict, table: list) -> str:
    """The comparison as a Markdown table with a heading line of model, dtype and versions."""
    lines = [
        f"{xla.get('model')} ({xla.get('dtype')}): XLA backend (vLLM "
        f"{(xla.get('versions') or {}).get('vllm')}, JAX {(xla.get('versions') or {}).get('jax')}) "
        f"vs vLLM CUDA (vLLM {(cuda.get('versions') or {}).get('vllm')}, torch "
        f"{(cuda.get('versions') or {}).get('torch')})",
        "",
        "| metric | XLA | vLLM CUDA | XLA / CUDA | better |",
        "|---|---|---|---|---|",
    ]
    for metric, x, c, better in table:
        ratio = f"{x / c:.2f}" if x is not None and c else "-"
        lines.append(f"| {metric} | {_fmt(x, metric)} | {_fmt(c, metric)} | {ratio} | {better} |")
    compiles = xla["startup"].get("compiles_since_warmup")
    if compiles is not None:
        lines += ["", f"XLA compilations after warm-up: {compiles}"]
    return "\n".join(lines) + "\n"


def plot(xla: dict, cuda: dict, path: str) -> None:
    """Grouped bars: output tokens/s per workload, XLA beside vLLM CUDA, ratio on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = [w for w in xla["throughput"] if w in cuda["throughput"]]
    x = [xla["throughput"][w]["output_tokens_per_s"] for w in workloads]
    c = [cuda["throughput"][w]["output_tokens_per_s"] for w in workloads]
    pos = range(len(workloads))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(workloads), 3.6))
    ax.bar([p - 0.2 for p in pos], x, 0.4, label="vLLM on XLA (this backend)")
    ax.bar([p + 0.2 for p in pos], c, 0.4, label="vLLM CUDA")
    for p, xv, cv in zip(pos, x, c, strict=True):
        ax.annotate(f"{xv / cv:.2f}x", (p, max(xv, cv)), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(pos), [f"{w}\nin/out" for w in workloads])
    ax.set_ylabel("output tokens/s")
    ax.set_title(f"{xla.get('model')} ({xla.get('dtype')}), offline throughput")
    ax.margins(y=0.3)
    ax.legend(fontsize=8, loc="upper center", ncols=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--xla", nargs="+", required=True, help="throughput.py JSON, backend xla")
    p.add_argument("--cuda", nargs="+", required=True, help="throughput.py JSON, backend cuda")
    p.add_argument("--md", help="write the Markdown table here")
    p.add_argument("--json", help="write the merged numbers and ratios here")
    p.add_argument("--png", help="write the throughput plot here")
    args = p.parse_args()
    xla, cuda = merge(args.xla), merge(args.cuda)
    for side, backend in ((xla, "xla"), (cuda, "cuda")):
        if side.get("backend") != backend:
            print(f"warning: the --{backend} files were measured with {side.get('backend')}")
    for key in ("engine_args", "model", "dtype"):
        if xla.get(key) != cuda.get(key):
            print(f"warning: {key} differs: xla {xla.get(key)}, cuda {cuda.get(key)}")
    table = rows(xla, cuda)
    text = markdown(xla, cuda, table)
    print(text)
    if args.md:
        pathlib.Path(args.md).write_text(text)
    if args.json:
        ratios = [dict(metric=m, xla=x, cuda=c, better=b) for m, x, c, b in table]
        pathlib.Path(args.json).write_text(
            json.dumps({"xla": xla, "cuda": cuda, "rows": ratios}, indent=2)
        )
    if args.png:
        plot(xla, cuda, args.png)


if __name__ == "__main__":
    main()
