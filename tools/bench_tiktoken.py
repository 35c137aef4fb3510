#!/usr/bin/env python3
"""tiktoken's single-thread encode_ordinary throughput, the reference for `nanoinfer tokenize
--bench FILE` on the same file and machine.

    python3 tools/bench_tiktoken.py --tokenizer .cache/tokenizer FILE [--runs 5]
    python3 tools/bench_tiktoken.py --make-text OUT [--max-mb 12]

The first form builds tiktoken's gpt2 Encoding offline from encoder.json + vocab.bpe
(tools/gpt2_tiktoken.py; no network needed), encodes FILE (UTF-8) with encode_ordinary on one
thread RUNS times, and prints the median and best MB/s (1 MB = 10^6 bytes of UTF-8) and the
token count, which must equal nanoinfer's. The second form (stdlib only) writes a benchmark
text: the license texts under /usr/share/common-licenses and the copyright and *.txt files
under /usr/share/doc, sorted by path, valid UTF-8 files only, up to --max-mb megabytes. The
GPU machine has other files there, so make the text once and carry it along.
"""

import argparse
import os
import statistics
import sys
import time


def make_text(out, max_mb):
    paths = []
    for root in ("/usr/share/common-licenses", "/usr/share/doc"):
        for d, _, files in os.walk(root):
            for f in files:
                p = os.path.join(d, f)
                if root.endswith("licenses") or f == "copyright" or f.endswith(".txt"):
                    if os.path.isfile(p) and not os.path.islink(p):
                        paths.append(p)
    total, parts = 0, []
    for p in sorted(paths):
        with open(p, "rb") as f:
            data = f.read()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if total + len(data) > max_mb * 1e6:
            break
        parts.append(data)
        total += len(data)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "wb") as f:
        f.write(b"".join(parts))
    print(f"{out}: {total} bytes from {len(parts)} files")


def bench(tokenizer_dir, path, runs):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import gpt2_tiktoken
    import tiktoken

    enc = gpt2_tiktoken.gpt2_encoding(tokenizer_dir)
    with open(path, "rb") as f:
        data = f.read()
    text = data.decode("utf-8")  # a benchmark text must be valid UTF-8
    enc.encode_ordinary("warm up")
    rates, n_tokens = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        ids = enc.encode_ordinary(text)
        dt = time.perf_counter() - t0
        rates.append(len(data) / 1e6 / dt)
        n_tokens = len(ids)
    print(f"file     {path} ({len(data)} bytes, {n_tokens} tokens, "
          f"{len(data) / max(n_tokens, 1):.2f} bytes/token)")
    print(f"tiktoken {statistics.median(rates):.2f} MB/s median, {max(rates):.2f} MB/s best of "
          f"{runs} runs (encode_ordinary, one thread, tiktoken {tiktoken.__version__})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file", nargs="?", help="UTF-8 text to encode")
    ap.add_argument("--tokenizer", default=".cache/tokenizer",
                    help="directory with encoder.json and vocab.bpe")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--make-text", metavar="OUT", help="write a benchmark text to OUT and stop")
    ap.add_argument("--max-mb", type=float, default=12.0)
    args = ap.parse_args()
    if args.make_text:
        make_text(args.make_text, args.max_mb)
    elif args.file:
        bench(args.tokenizer, args.file, max(1, args.runs))
    else:
        ap.error("give FILE to benchmark, or --make-text OUT")


if __name__ == "__main__":
    main()
