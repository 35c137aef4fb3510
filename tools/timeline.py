#!/usr/bin/env python3
"""Summarize a kernel timeline (src/cuda/timeline.cuh): where each step's time goes.

Usage: tools/timeline.py FILE [--section K] [--steps A:B]

FILE is what a -DNI_TIMELINE build writes with NI_TIMELINE_FILE=FILE (a section per backend,
each block of every kernel: tag, grid, block, SM, start, wait release, end in globaltimer ns).
Kernels are told apart by start order: a kernel's dependents launch only once all of its blocks
have started (programmatic launch), so the blocks sorted by start fall into consecutive runs,
one per kernel. A step starts at each embedding kernel. For every kernel K after its predecessor
P the table gives, averaged over the steps asked for (default: every decode step but the first
and last five) and grouped by kernel and grid:
  inc   K's last end - P's last end: K's share of the critical path
  rel   K's earliest wait release - P's last end: how long the wait took to let K go
  post  K's last end - K's earliest wait release: K's work after its wait
  land  K's last block start - P's last end (< 0: every block was resident before P ended)
  lead  P's last end - K's first block start: how early K arrived
  tail  K's last end - K's median block end: how far its last blocks trail
all in microseconds. Decode steps and prefills are reported apart.
"""
import argparse
import struct
import sys
from collections import OrderedDict

TAGS = {1: "embedding", 2: "layernorm", 3: "gemv", 4: "attn_chunk", 5: "attn_whole",
        6: "attn_merge", 7: "sampler", 8: "advance", 9: "gemm_stream", 10: "attn_prefill",
        11: "kv_append", 12: "residual_add"}
PREFILL_TAGS = {9, 10, 11}


def read_sections(path):
    """Each backend's records as a numpy structured array."""
    import numpy as np
    rec = np.dtype([("tag", "<u4"), ("grid", "<u4"), ("block", "<u4"), ("sm", "<u4"),
                    ("t_start", "<u8"), ("t_wait", "<u8"), ("t_end", "<u8"), ("pad", "<u8")])
    data = open(path, "rb").read()
    off, sections = 0, []
    while off + 24 <= len(data):
        magic, size, n = struct.unpack_from("<QQQ", data, off)
        off += 24
        if magic != 0x4C54494E or size != 48:
            sys.exit(f"{path}: not a timeline section at byte {off - 24}")
        r = np.frombuffer(data, dtype=rec, count=n, offset=off)
        sections.append(r[r["tag"] != 0])  # the empty slots of each SM's share
        off += 48 * n
    return sections


def kernels(recs):
    """Runs of blocks of one kernel, in start order, as summaries."""
    import numpy as np
    r = recs[np.argsort(recs["t_start"], kind="stable")]
    tag, grid = r["tag"].astype(np.int64), r["grid"].astype(np.int64)
    key = (tag << 32) | grid
    out, i, n = [], 0, len(r)
    change = np.flatnonzero(key[1:] != key[:-1]) + 1
    starts = [0] + list(change) + [n]
    for a, b in zip(starts, starts[1:]):
        g = int(grid[a])
        for c in range(a, b, max(g, 1)):  # consecutive kernels of one tag and grid
            d = min(c + g, b)
            blk = r[c:d]
            w = blk["t_wait"][blk["t_wait"] > 0]
            out.append({"name": f"{TAGS.get(int(tag[a]), int(tag[a]))}/{g}", "tag": int(tag[a]),
                        "grid": g, "s0": int(blk["t_start"].min()),
                        "s1": int(blk["t_start"].max()),
                        "w0": int(w.min()) if len(w) else None, "e1": int(blk["t_end"].max()),
                        "em": int(np.median(blk["t_end"])),
                        "blocks": d - c})
    return out


def steps(ks):
    cur, out = [], []
    for k in ks:
        if k["tag"] == 1 and cur:
            out.append(cur)
            cur = []
        cur.append(k)
    if cur:
        out.append(cur)
    return out


def table(title, chosen):
    rows = OrderedDict()
    total = 0.0
    for st in chosen:
        total += (st[-1]["e1"] - st[0]["s0"]) / 1e3
        lns = 0
        for p, k in zip(st, st[1:]):
            if k["tag"] == 2:
                lns += 1
            # which LayerNorm's group (ln_1: qkv, attention, proj; ln_2: fc, fcproj)
            label = k["name"] + (f" ln{2 - lns % 2}" if lns and k["tag"] != 2 else "")
            r = rows.setdefault(label, {"n": 0, "inc": 0.0, "rel": 0.0, "post": 0.0,
                                            "land": 0.0, "lead": 0.0, "tail": 0.0, "nw": 0})
            r["n"] += 1
            r["inc"] += (k["e1"] - p["e1"]) / 1e3
            r["land"] += (k["s1"] - p["e1"]) / 1e3
            r["lead"] += (p["e1"] - k["s0"]) / 1e3
            r["tail"] += (k["e1"] - k["em"]) / 1e3
            if k["w0"] is not None:
                r["nw"] += 1
                r["rel"] += (k["w0"] - p["e1"]) / 1e3
                r["post"] += (k["e1"] - k["w0"]) / 1e3
    n = len(chosen)
    print(f"\n{title}: {n} steps, {total / n:.1f} us a step (first start to last end)")
    print(f"{'kernel/grid':<22}{'per step':>9}{'inc':>8}{'rel':>8}{'post':>8}{'land':>8}"
          f"{'lead':>8}{'tail':>8}{'inc/step':>10}")
    for name, r in rows.items():
        c = r["n"]
        w = max(r["nw"], 1)
        print(f"{name:<22}{c / n:9.1f}{r['inc'] / c:8.2f}{r['rel'] / w:8.2f}{r['post'] / w:8.2f}"
              f"{r['land'] / c:8.2f}{r['lead'] / c:8.2f}{r['tail'] / c:8.2f}{r['inc'] / n:10.1f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("file")
    ap.add_argument("--section", type=int, default=-1, help="which backend's records (default: last)")
    ap.add_argument("--steps", default=None, help="decode steps A:B (default: all but 5 each end)")
    a = ap.parse_args()
    secs = read_sections(a.file)
    if not secs:
        sys.exit("no sections")
    ks = kernels(secs[a.section])
    incomplete = [k for k in ks if k["blocks"] != k["grid"]]
    if incomplete:
        print(f"note: {len(incomplete)} kernels with missing blocks (buffer full?)")
    all_steps = steps(ks)
    prefill = [s for s in all_steps if any(k["tag"] in PREFILL_TAGS for k in s)]
    decode = [s for s in all_steps if not any(k["tag"] in PREFILL_TAGS for k in s)]
    if a.steps:
        lo, hi = (int(x) for x in a.steps.split(":"))
        decode = decode[lo:hi]
    elif len(decode) > 12:
        decode = decode[5:-5]
    if decode:
        table("decode steps", decode)
    if prefill:
        table("prefills", prefill[1:] if len(prefill) > 1 else prefill)


if __name__ == "__main__":
    main()
