#!/usr/bin/env python3
"""Summarizes the per-block trace of the fused decode step.

Build with -DCMAKE_CUDA_FLAGS=-DDF_TRACE_DETAIL, run an engine that takes fused steps with
NI_FUSED_TRACE=1 NI_FUSED_TRACE_FILE=trace.bin, then: tools/fused_trace.py trace.bin --n-embd 1600

Per phase kind (averaged over layers and steps, microseconds): how long the blocks took from the
barrier's release to the LayerNorm's or staging's end and to the phase's end (mean and slowest
block), how far apart the blocks arrived (the slowest minus the mean: the imbalance every barrier
waits for), the barrier's own latency (the last arrival to the releases), the time the consumer
warps waited for weight slabs to land, and the producer's waits for a free ring slot; then the
phase time by the number of tiles a block owned.
"""
import argparse
import struct
import sys
from collections import defaultdict

LN_PARTS = ["ln: to start", "ln: rows staged", "ln: mean", "ln: deviation", "ln: normalized"]
KINDS = ["embedding", "ln_1+qkv", "attention", "proj", "ln_2+fc", "fcproj", "ln_f+logits"]


def read_steps(path):
    data = open(path, "rb").read()
    off, steps = 0, []
    while off + 32 <= len(data):
        magic, L, B, n = struct.unpack_from("<4Q", data, off)
        if magic != 0x5446494E:
            sys.exit(f"{path}: bad record at byte {off}")
        off += 32
        words = struct.unpack_from(f"<{n}Q", data, off)
        off += 8 * n
        steps.append((L, B, words))
    return steps


def kind_of(k, L):
    return 0 if k == 0 else 6 if k == 5 * L + 1 else 1 + (k - 1) % 5


def tiles_of(b, B, oc):
    t = (oc + 15) // 16
    return (b + 1) * t // B - b * t // B


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trace")
    ap.add_argument("--n-embd", type=int, default=1600, help="the model's width (tile counts)")
    ap.add_argument("--ghz", type=float, default=1.98, help="SM clock for the cycle counts")
    ap.add_argument("--skip", type=int, default=1, help="first steps left out (warm-up)")
    args = ap.parse_args()
    steps = read_steps(args.trace)[args.skip:]
    if not steps:
        sys.exit("no steps in the trace")
    C = args.n_embd
    acc = defaultdict(float)
    cnt = defaultdict(int)
    by_tiles = defaultdict(lambda: [0.0, 0])
    for L, B, w in steps:
        nb = 2 * (5 * L + 2)
        cons = lambda k, b, i: w[nb + (k * B + b) * 8 + i]
        prod = lambda ph, b, i: w[nb + (5 * L + 2) * B * 8 + (ph * B + b) * 4 + i]
        for k in range(5 * L + 2):
            kd = KINDS[kind_of(k, L)]
            st = [cons(k, b, 0) for b in range(B)]
            ln = [cons(k, b, 1) for b in range(B)]
            en = [cons(k, b, 2) for b in range(B)]
            fw = [cons(k, b, 3) for b in range(B)]
            t0 = min(st)
            dur = [(en[b] - st[b]) * 1e-3 for b in range(B)]
            acc[kd, "blocks' mean"] += sum(dur) / B
            acc[kd, "slowest block"] += max(dur)
            acc[kd, "arrival spread"] += (max(en) - sum(en) / B) * 1e-3
            acc[kd, "release skew"] += (max(st) - t0) * 1e-3
            if any(ln):
                acc[kd, "ln/stage mean"] += sum((ln[b] - st[b]) for b in range(B)) / B * 1e-3
                acc[kd, "ln/stage max"] += max(ln[b] - st[b] for b in range(B)) * 1e-3
            if any(cons(k, b, 7) for b in range(B)):
                # LayerNorm parts (block means): until it begins, rows staged, mean, deviation,
                # normalized
                marks = [st, [cons(k, b, 7) for b in range(B)], [cons(k, b, 4) for b in range(B)],
                         [cons(k, b, 5) for b in range(B)], [cons(k, b, 6) for b in range(B)], ln]
                for i, name in enumerate(LN_PARTS):
                    acc[kd, name] += sum(marks[i + 1][b] - marks[i][b] for b in range(B)) / B * 1e-3
            acc[kd, "slab wait/warp"] += sum(fw) / B / 16 / args.ghz * 1e-3
            if k <= 5 * L:
                nxt = [cons(k + 1, b, 0) for b in range(B)]
                acc[kd, "barrier latency"] += (min(nxt) - max(en)) * 1e-3
            cnt[kd] += 1
            if kd in ("ln_1+qkv", "proj", "ln_2+fc", "fcproj"):
                oc = {"ln_1+qkv": 3 * C, "proj": C, "ln_2+fc": 4 * C, "fcproj": C}[kd]
                for b in range(B):
                    e = by_tiles[kd, tiles_of(b, B, oc)]
                    e[0] += dur[b]
                    e[1] += 1
        for ph in range(4 * L + 1):
            kd = KINDS[6] if ph == 4 * L else KINDS[[1, 3, 4, 5][ph % 4]]
            acc[kd, "producer slot wait"] += (
                sum(prod(ph, b, 2) for b in range(B)) / B / args.ghz * 1e-3)
    cols = ["blocks' mean", "slowest block", "arrival spread", "release skew", "ln/stage mean",
            "ln/stage max", "slab wait/warp", "producer slot wait", "barrier latency"]
    print(f"{len(steps)} steps, {steps[0][1]} blocks, {steps[0][0]} layers; microseconds per "
          "phase (mean over layers)")
    print(f"{'phase':<12}" + "".join(f"{c:>19}" for c in cols))
    for kd in KINDS:
        if not cnt[kd]:
            continue
        n = cnt[kd]
        print(f"{kd:<12}" + "".join(f"{acc[kd, c] / n:>19.2f}" for c in cols))
    tot = defaultdict(float)
    for kd in KINDS:
        for c in ("slowest block", "barrier latency"):
            tot[c] += acc[kd, c] / len(steps)
    print(f"per step: slowest blocks {tot['slowest block']:.1f} us, barriers "
          f"{tot['barrier latency']:.1f} us")
    print("LayerNorm phases, their parts (us, block means):")
    for kd in KINDS:
        if acc[kd, LN_PARTS[1]]:
            print(f"  {kd:<12}" + "".join(f" {c} {acc[kd, c] / cnt[kd]:.2f}" for c in LN_PARTS))
    print("phase time by tiles owned (us, mean):")
    for (kd, t), (s, n) in sorted(by_tiles.items()):
        print(f"  {kd:<10} {t} tiles: {s / n:6.2f}  ({n // len(steps)} block-phases a step)")


if __name__ == "__main__":
    main()
