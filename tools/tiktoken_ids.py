#!/usr/bin/env python3
"""Writes tiktoken's ids for the tokenizer corpus: the reference that
tests/test_tokenizer_corpus.c holds our encoder to.

    python3 tools/tiktoken_ids.py .cache/tokenizer \\
        tests/fixtures/tokenizer/corpus_texts.json tests/fixtures/tokenizer/corpus_ids.json

Reads a JSON list of strings (tools/tokenizer_corpus.py writes it) and writes a JSON list of
{"text": str, "ordinary": encode_ordinary(text), "special": encode(text, allowed_special="all")},
in the same order, one object a line. tiktoken's gpt2 Encoding is built offline from
encoder.json + vocab.bpe in the tokenizer directory (tools/gpt2_tiktoken.py), so this runs on a
machine with tiktoken and no network.
"""

import argparse
import json
import os
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tokenizer_dir", help="directory with encoder.json and vocab.bpe")
    ap.add_argument("texts", help="input: JSON list of strings")
    ap.add_argument("out", help="output: JSON list of {text, ordinary, special}")
    args = ap.parse_args()

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import gpt2_tiktoken

    enc = gpt2_tiktoken.gpt2_encoding(args.tokenizer_dir)
    with open(args.texts, encoding="utf-8") as f:
        texts = json.load(f)
    rows = []
    for t in texts:
        row = {"text": t, "ordinary": enc.encode_ordinary(t),
               "special": enc.encode(t, allowed_special="all")}
        rows.append(json.dumps(row, ensure_ascii=False, separators=(",", ":")))
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("[\n" + ",\n".join(rows) + "\n]\n")
    print(f"{args.out}: {len(rows)} texts", file=sys.stderr)


if __name__ == "__main__":
    main()
