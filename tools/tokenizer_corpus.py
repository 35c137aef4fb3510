#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizer/corpus_texts.json: the texts on which our GPT-2 tokenizer
must give exactly tiktoken's ids (tests/test_tokenizer_corpus.c checks them against
corpus_ids.json, which tools/tiktoken_ids.py makes from this file where tiktoken is installed).

The texts are hand-picked cases (prose, code, URLs, numbers, whitespace runs, contractions in
both cases, curly quotes, NFD accents, CJK, Cyrillic, Arabic, Hindi, emoji sequences, very long
words, the special token inside text, the empty string) and strings from a seeded generator that
mixes the characters the pre-tokenizer pattern treats differently. Plain python3, stdlib only;
the output is the same on every run (with the same Python, whose Unicode tables pick the
unassigned code points to avoid).

    python3 tools/tokenizer_corpus.py [--out PATH] [--seed N] [--random N]
"""

import argparse
import json
import os
import random
import sys
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "tests", "fixtures", "tokenizer", "corpus_texts.json")

PROSE = [
    "Hello world",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the "
    "age of foolishness, it was the epoch of belief, it was the epoch of incredulity.",
    "GPT-2 is a large transformer-based language model with 1.5 billion parameters, trained on "
    "a dataset of 8 million web pages.",
    "In 1492, Columbus sailed the ocean blue. In 2024, we tokenized it.",
    "Mr. and Mrs. Dursley, of number four, Privet Drive, were proud to say that they were "
    "perfectly normal, thank you very much.",
    "She said: \"Don't stop!\" -- and he didn't.",
    "e.g. i.e. etc. vs. Dr. St. U.S.A.",
    "ALL CAPS SENTENCE WITH SHOUTING!!!",
    "camelCaseIdentifier snake_case_identifier kebab-case-identifier SCREAMING_SNAKE",
]

CONTRACTIONS = [
    "I'LL be there; I'll be there; i'll be there",
    "don't DON'T Don't do n't",
    "They'Re they're THEY'RE they'RE",
    "we've WE'VE it's IT'S he'd HE'D I'm I'M",
    "'s 't 're 've 'm 'll 'd",
    "'S 'T 'RE 'VE 'M 'LL 'D",
    "rock 'n' roll, '90s, the dogs' bowls, O'Neil's",
    "''''''''",
    "'",
    "' s",
    "it’s curly ‘single’ and “double” quotes",
    "l'homme l'état aujourd'hui",
]

CODE = [
    '#include <stdio.h>\n\nint main(void) {\n    printf("hello, world\\n");\n    return 0;\n}\n',
    "for (size_t i = 0; i < n; i++) { sum += a[i] * b[i]; }",
    "static inline uint64_t mix(uint64_t h) { h ^= h >> 32; return h * 0x9e3779b97f4a7c15ull; }",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "class Foo(Bar):\n\tdef __init__(self, x: int = 3) -> None:\n\t\tself.x = x  # comment\n",
    "    \n\n    indented after blank\n        deeper\n",
    '{"name": "gpt2", "n_layer": 12, "n_head": 12, "vocab_size": 50257, "eps": 1e-05, '
    '"tags": ["a", "b"], "nested": {"k": null, "t": true}}',
    '[\n  {\n    "id": 1,\n    "text": "x"\n  },\n  {\n    "id": 2\n  }\n]',
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%son' ORDER BY id DESC;",
    "<html><body><p class=\"x\">Hi &amp; bye</p></body></html>",
    "$ make -j2 && ./build/nanoinfer tokenize --text 'hi' | tee out.txt 2>&1",
    "a+=b;c-=d;e*=f;g/=h;i%=j;k<<=1;l>>=2;m&&n||!o",
    "x = [1, 2, 3]; y = {'a': 1}; z = (4,)",
    "\\begin{equation} E = mc^2 \\end{equation}",
]

URLS = [
    "https://www.example.com/path/to/page?query=1&other=two#fragment",
    "http://localhost:8080/api/v1/users/42",
    "mailto:someone@example.org",
    "ftp://ftp.example.net/pub/file-1.2.3.tar.gz",
    "Visit https://github.com/openai/tiktoken for details.",
    "user@host:~/src/nanoinfer$ git status",
]

NUMBERS = [
    "0",
    "42",
    "3.14159265358979323846264338327950288419716939937510",
    "1234567890" * 12,
    "-17.5e-3 +6.02E23 0x1F 0b1010 0o777 1_000_000",
    "1,234,567.89 and 1.234.567,89",
    "Version 1.2.3-rc.4+build.5",
    "Phone: +1 (555) 123-4567",
    "2024-01-31T23:59:59.999Z",
    "٣٤٥ ١٢ ۱۲۳ १२३ ๑๒๓ 一二三 ⅣⅫ ½ ¾ ²³",
    "99 bottles; 100%; $3.50; €4,20; £5; ¥600",
]

WHITESPACE = [
    " ",
    "  ",
    "   ",
    " " * 40,
    "\t",
    "\t\t\t",
    "\n",
    "\n\n",
    "\n\n\n\n",
    "\r\n",
    "line one\r\nline two\r\n\r\nline four\r\n",
    "trailing space ",
    "trailing spaces   ",
    " leading space",
    "   leading spaces",
    "a  b   c    d",
    "a \n b \t c",
    "word\n\n  \n\tword",
    " \t \n \r\n ",
    "\u00a0non\u00a0breaking\u00a0spaces\u00a0",
    "ideographic\u3000space and\u2003em\u2002en\u2009thin\u200ahair",
    "line\u2028separator\u2029paragraph\u0085nel",
    "\u180emongolian vowel separator\u180e (not White_Space)",
    "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom",
    "\x0b\x0c vertical tab and form feed \x1c\x1d\x1e\x1f",
    "nul\x00byte and \x01\x02\x7f controls",
    "       \n",
    "x\n   ",
]

SCRIPTS = [
    "Café résumé naïve façade coöperate Zürich São Paulo",
    unicodedata.normalize("NFD", "Café résumé naïve façade Zürich São Paulo Ångström"),
    "e\u0301 a\u0300\u0323 o\u0308\u0304 n\u0303 combining marks",
    "Crème brûlée, piñata, jalapeño, smörgåsbord, Æsir, Œuvre, ß",
    "日本語のテキストです。東京は日本の首都です。",
    "中文文本测试：你好，世界！我们正在测试分词器。",
    "한국어 텍스트: 안녕하세요 세계",
    unicodedata.normalize("NFD", "한국어 텍스트: 안녕하세요"),
    "Русский текст: Привет, мир! Съешь же ещё этих мягких французских булок.",
    "Українська: Ґанок, їжак, єнот. Беларуская: ўсё.",
    "العربية: مرحبا بالعالم! هذا اختبار.",
    "עברית: שלום עולם",
    "हिन्दी: नमस्ते दुनिया। यह एक परीक्षण है।",
    "ภาษาไทย: สวัสดีชาวโลก",
    "Ελληνικά: Γειά σου Κόσμε, αβγδε ΑΒΓΔΕ",
    "Tiếng Việt: Xin chào thế giới",
    "ქართული ენა, Հայերեն, አማርኛ, தமிழ், বাংলা",
    "mixed: Hello世界Привет123مرحبا",
]

EMOJI = [
    "😀😃😄😁",
    "👍🏻👍🏼👍🏽👍🏾👍🏿",
    "👨‍👩‍👧‍👦 family, 👩🏽‍💻 coder, 🏳️‍🌈 flag, 🧑🏿‍🤝‍🧑🏻 people",
    "🇺🇸🇯🇵🇩🇪🇫🇷 flags",
    "I ❤️ Unicode ✨🚀 (variation selectors ︎ and ️)",
    "emoji at end 🎉",
    "🎉 emoji at start",
    "♠♣♥♦ ☃ ☂ ★ ☆ ✓ ✗ → ← ↑ ↓ ∀ ∃ ∑ ∫ ≤ ≥ ≠ ∞",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 𝐛𝐨𝐥𝐝 outside the BMP",
]

SPECIAL = [
    "<|endoftext|>",
    "Hello<|endoftext|>World",
    "end of one document.<|endoftext|>Start of the next.",
    "<|endoftext|><|endoftext|>",
    "  <|endoftext|>  ",
    "\n<|endoftext|>\n",
    "<|endoftext|",
    "<|endoftext|>|>",
    "<<|endoftext|>>",
    "<|startoftext|> is not special in gpt2",
    "<|endoftext|> at start",
    "at end <|endoftext|>",
]

PUNCT = [
    "!!!???...,,,;;;:::",
    "...",
    "--- *** ___ === +++ ~~~",
    "(parenthesized) [bracketed] {braced} <angled>",
    "@#$%^&*()_+-=[]{}|;':\",./<>?`~",
    "«guillemets» „low-high“ ‹single›",
    "a—b–c‒d―e…f",
    " !x ?y .z",
]

LONG = [
    "a" * 5000,
    "supercalifragilisticexpialidocious" * 150,
    "abcdefghijklmnopqrstuvwxyz" * 200,
    "9" * 3000,
    "漢字" * 1500,
    "!?" * 2000,
    " " * 3000,
    "\n" * 1000,
    "ab " * 2000,
    "Ж" * 2500,
    "😀" * 800,
    "x" * 4096 + " end",
]


def everything_else():
    """Lorem ipsum and the empty string."""
    lorem = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
             "incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud "
             "exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat.")
    return ["", lorem, lorem * 5]


# Characters for the generator, grouped by how the pattern treats them. Only code points that
# have been assigned for many Unicode versions: PCRE2 (Unicode 14/15) and tiktoken's regex crate
# (Unicode 15/16) agree on every one of them.
LETTERS = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
           "éèêëàâäôöûüçñßÆæØøÅåŒœ" "αβγδεΩΣΔ" "абвгдЖЗИЙЯ" "日本語中文字漢" "ひらがなカタカナ"
           "한국어" "عربية" "עברית" "हिन्दी" "ไทย")
MARKS = "\u0301\u0300\u0308\u0303\u0327\u064b\u093e\u0e31"
DIGITS = "0123456789٠١٢٣४५६७"
NUMERIC_OTHER = "½¾²³ⅣⅫ①"
PUNCTS = "!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~«»“”‘’—…·•€£¥©®°±×÷"
SPACES = [" ", " ", " ", "  ", "\t", "\n", "\n", "\r\n", "\u00a0", "\u3000", "\u2003", "\u2028",
          "\u0085", "\x0b", "\x0c"]
APOS = ["'", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'VE", "'M", "'LL",
        "'D", "'Ll", "'lL"]
EMOJIS = ["😀", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷", "❤\ufe0f", "\u200d", "\ufe0f", "🏻"]
OTHER = ["\u200b", "\u180e", "\ufeff", "\x00", "\x07", "\x7f", "\u00ad", "\u2060", "<|endoftext|>",
         "<|", "|>"]
WORDS = ["the", " the", "The", " of", "and", " token", "izer", "hello", " world", "GPT", "2",
         " 1000", "http", "://", ".com", "\u00e9t\u00e9", "naïve"]


def random_text(rng, max_units):
    """A string from the groups above: words, letters, digits, punctuation, space runs."""
    out = []
    for _ in range(rng.randint(1, max_units)):
        r = rng.random()
        if r < 0.22:
            out.append(rng.choice(WORDS))
        elif r < 0.42:
            out.append("".join(rng.choice(LETTERS) for _ in range(rng.randint(1, 8))))
        elif r < 0.47:
            out.append(rng.choice(MARKS))
        elif r < 0.55:
            out.append("".join(rng.choice(DIGITS) for _ in range(rng.randint(1, 6))))
        elif r < 0.57:
            out.append(rng.choice(NUMERIC_OTHER))
        elif r < 0.67:
            out.append("".join(rng.choice(PUNCTS) for _ in range(rng.randint(1, 3))))
        elif r < 0.83:
            out.append("".join(rng.choice(SPACES) for _ in range(rng.randint(1, 4))))
        elif r < 0.90:
            out.append(rng.choice(APOS))
        elif r < 0.96:
            out.append(rng.choice(EMOJIS))
        else:
            out.append(rng.choice(OTHER))
    return "".join(out)


def random_codepoints(rng, n):
    """Uniformly random code points from long-assigned blocks (no surrogates)."""
    blocks = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x5FF),
              (0x600, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F), (0x2000, 0x206F), (0x2100, 0x22FF),
              (0x3000, 0x30FF), (0x4E00, 0x9FA5), (0xAC00, 0xD7A3), (0x1F300, 0x1F5FF)]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(blocks)
        cp = rng.randint(lo, hi)
        if unicodedata.category(chr(cp)) == "Cn":  # unassigned: Unicode versions may disagree
            cp = 0x41 + cp % 26
        out.append(chr(cp))
    return "".join(out)


def corpus(seed, n_random):
    texts = (PROSE + CONTRACTIONS + CODE + URLS + NUMBERS + WHITESPACE + SCRIPTS + EMOJI + SPECIAL
             + PUNCT + LONG + everything_else())
    rng = random.Random(seed)
    for i in range(n_random):
        texts.append(random_text(rng, 12 if i % 3 else 60))
    for _ in range(n_random // 4):
        texts.append(random_codepoints(rng, rng.randint(1, 40)))
    return texts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=20240531)
    ap.add_argument("--random", type=int, default=120, help="generated strings (default 120)")
    args = ap.parse_args()
    texts = corpus(args.seed, args.random)
    for t in texts:  # valid UTF-8 throughout: tiktoken takes str, and so does JSON
        t.encode("utf-8")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("[\n")
        f.write(",\n".join(json.dumps(t, ensure_ascii=False) for t in texts))
        f.write("\n]\n")
    print(f"{args.out}: {len(texts)} texts, {sum(len(t.encode()) for t in texts)} bytes",
          file=sys.stderr)


if __name__ == "__main__":
    main()
