#!/usr/bin/env python3
"""Plots `nanoinfer bench` results (and tools/reference_pytorch.py's, which write the same JSON)
in the seed's style: three panels against a log-2 batch axis, one line per engine -- decode
throughput (all requests, with per-request throughput dashed), time to first token, and peak
memory -- the newest engine drawn thickest.

    python3 tools/plot_bench.py out/bench/bench.json [more.json ...] [--out plot.png]
        [--engines a,b] [--title TEXT]

Needs matplotlib (Debian: python3-matplotlib; run with /usr/bin/python3 there).
"""

import argparse
import json
import os
import sys

ENGINE_ORDER = ["baseline", "kv_cache", "sampling", "cuda_graphs"]


def load(paths):
    runs, rows = [], []
    for p in paths:
        with open(p) as f:
            doc = json.load(f)
        runs.append(doc.get("run", {}))
        tool = doc.get("run", {}).get("tool", "nanoinfer")
        for r in doc.get("results", []):
            r = dict(r)
            if tool != "nanoinfer" and not r["engine"].startswith("torch-"):
                r["engine"] = "torch-" + r["engine"]
            rows.append(r)
    return runs, rows


def engine_key(name):
    base = name.replace("torch-", "")
    rank = ENGINE_ORDER.index(base) if base in ENGINE_ORDER else len(ENGINE_ORDER)
    return (name.startswith("torch-"), rank, name)


def plot(runs, rows, out, title, engines):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    ok = [r for r in rows if "error" not in r]
    names = sorted({r["engine"] for r in ok}, key=engine_key)
    if engines:
        names = [n for n in names if n in engines]
    if not names:
        sys.exit("plot_bench: no successful rows to plot")
    ours = [n for n in names if not n.startswith("torch-")]
    newest = ours[-1] if ours else names[-1]

    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(names):
        pts = sorted((r for r in ok if r["engine"] == name), key=lambda r: r["batch_size"])
        b = [r["batch_size"] for r in pts]
        style = dict(color=colors[i % len(colors)], marker="o", markersize=4,
                     linewidth=3.0 if name == newest else 1.5,
                     linestyle=":" if name.startswith("torch-") else "-")
        axes[0].plot(b, [r["decode_tok_s"] for r in pts], label=name, **style)
        axes[0].plot(b, [r["per_request_tok_s"] for r in pts], color=style["color"],
                     linewidth=1.0, linestyle="--", alpha=0.6)
        axes[1].plot(b, [r["ttft_ms"] for r in pts], label=name, **style)
        axes[2].plot(b, [r["peak_mem_bytes"] / 1e9 for r in pts], label=name, **style)
    labels = [("Decode throughput (tokens/s; dashed: per request)", True),
              ("Time to first token (ms)", True), ("Peak memory (GB)", False)]
    # every power of two in range, labelled alike whatever matplotlib's version
    exps = [r["batch_size"].bit_length() - 1 for r in ok]
    ticks = range(min(exps), max(exps) + 1)
    for ax, (label, logy) in zip(axes, labels):
        ax.set_xscale("log", base=2)
        ax.set_xticks([2 ** k for k in ticks], ["$2^{%d}$" % k for k in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_title(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    run = runs[0] if runs else {}
    fig.suptitle(title or "%s on %s, prompt %s, %s new tokens" % (
        run.get("model", "?"), run.get("card", "?"),
        ok[0].get("prompt_len", "?"), ok[0].get("new_tokens", "?")))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print("wrote %s" % out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="+", help="bench JSON files (ours and/or reference_pytorch.py's)")
    ap.add_argument("--out", help="PNG to write (default: beside the first JSON)")
    ap.add_argument("--engines", help="comma-separated engines to draw (default: all)")
    ap.add_argument("--title")
    a = ap.parse_args()
    runs, rows = load(a.json)
    out = a.out or os.path.splitext(a.json[0])[0] + ".png"
    plot(runs, rows, out, a.title, a.engines.split(",") if a.engines else None)


if __name__ == "__main__":
    main()
