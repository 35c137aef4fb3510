"""tiktoken's `gpt2` encoding built offline from OpenAI's tokenizer files.

`gpt2_encoding(tokenizer_dir)` reads `encoder.json` and `vocab.bpe` (as fetched by
tools/deps.sh into .cache/tokenizer) and returns a `tiktoken.Encoding` equal to
`tiktoken.get_encoding("gpt2")`, without touching the network. The mergeable ranks are the
ids of encoder.json with each key mapped back from GPT-2's printable byte alphabet
(bytes_to_unicode) to raw bytes; vocab.bpe is only used to cross-check that the ids follow the
merge order, which is what makes the ids usable as BPE ranks.

    import gpt2_tiktoken
    enc = gpt2_tiktoken.gpt2_encoding(".cache/tokenizer")
    enc.encode_ordinary("Hello world")  # [15496, 995]
"""

import json
import os

GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"
ENDOFTEXT_ID = 50256
N_VOCAB = 50257
HELLO_WORLD_IDS = [15496, 995]


def bytes_to_unicode():
    """GPT-2's reversible map from each byte value to a printable unicode character."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1))
          + list(range(ord("\u00ae"), ord("\u00ff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _token_bytes(token, byte_decoder, what):
    try:
        return bytes(byte_decoder[ch] for ch in token)
    except KeyError as e:
        raise ValueError(f"{what}: token {token!r} has a character outside GPT-2's byte alphabet") from e


def load_mergeable_ranks(tokenizer_dir):
    """Return {token bytes: id} for every ordinary token of encoder.json (50256 entries).

    Checks that the first 256 ids are the single bytes and that id 256 + i is the
    concatenation of merge line i of vocab.bpe.
    """
    encoder_path = os.path.join(tokenizer_dir, "encoder.json")
    bpe_path = os.path.join(tokenizer_dir, "vocab.bpe")
    with open(encoder_path, encoding="utf-8") as f:
        encoder = json.load(f)
    with open(bpe_path, encoding="utf-8") as f:
        bpe_lines = f.read().split("\n")

    if encoder.get(ENDOFTEXT) != ENDOFTEXT_ID or len(encoder) != N_VOCAB:
        raise ValueError(f"{encoder_path}: expected {N_VOCAB} entries with {ENDOFTEXT} = {ENDOFTEXT_ID}")
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {}
    for token, idx in encoder.items():
        if token == ENDOFTEXT:
            continue
        ranks[_token_bytes(token, byte_decoder, encoder_path)] = idx
    if len(ranks) != N_VOCAB - 1 or sorted(ranks.values()) != list(range(N_VOCAB - 1)):
        raise ValueError(f"{encoder_path}: ids are not a permutation of 0..{N_VOCAB - 2}")

    for token_bytes, idx in ranks.items():
        if idx < 256 and len(token_bytes) != 1:
            raise ValueError(f"{encoder_path}: id {idx} is not a single byte")
    merges = [line for line in bpe_lines[1:] if line]  # line 0 is "#version: 0.2"
    if len(merges) != N_VOCAB - 1 - 256:
        raise ValueError(f"{bpe_path}: expected {N_VOCAB - 1 - 256} merges, found {len(merges)}")
    for i, line in enumerate(merges):
        parts = line.split(" ")
        if len(parts) != 2 or encoder.get(parts[0] + parts[1]) != 256 + i:
            raise ValueError(f"{bpe_path}: merge {i} ({line!r}) does not produce id {256 + i}")
    return ranks


def gpt2_encoding(tokenizer_dir):
    """tiktoken.Encoding for GPT-2 from `<tokenizer_dir>/encoder.json` and `vocab.bpe`."""
    import tiktoken  # imported here so the rank loader works without tiktoken

    enc = tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=load_mergeable_ranks(tokenizer_dir),
        special_tokens={ENDOFTEXT: ENDOFTEXT_ID},
        explicit_n_vocab=N_VOCAB,
    )
    got = enc.encode_ordinary("Hello world")
    if got != HELLO_WORLD_IDS:
        raise ValueError(f"gpt2 encoding from {tokenizer_dir}: 'Hello world' -> {got}, expected {HELLO_WORLD_IDS}")
    return enc
