/* The GPT-2 tokenizer: ids known from tiktoken, exact round trips of random valid and invalid
 * UTF-8, special tokens both ways, the two BPE merge loops agreeing, the word cache staying
 * consistent when it fills, the streaming decoder (never half a character, U+FFFD for bad
 * bytes, the same text as Python's errors="replace"), malformed and missing files, and the
 * Hugging Face file names. Needs the tokenizer files in NI_TOKENIZER_DIR (tools/deps.sh); their
 * absence is a failure. */
#include "test_util.h"

#include "tokenizer/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    ni_tokenizer *t;
} fixture;

static int setup(void **state) {
    static fixture f;
    ni_status s = ni_tokenizer_open(NI_TOKENIZER_DIR, &f.t);
    if (s != NI_OK) {
        fprintf(stderr, "cannot open the tokenizer in %s (run tools/deps.sh): %s\n",
                NI_TOKENIZER_DIR, ni_last_error());
        return -1;
    }
    *state = &f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    ni_tokenizer_close(f->t);
    return 0;
}

/* Deterministic generator (splitmix64) so that failures reproduce. */
static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static size_t rng_below(uint64_t *s, size_t n) {
    return (size_t)(rng_next(s) % n);
}

static size_t put_utf8(uint32_t cp, char *o) {
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12);
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18);
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* A random valid UTF-8 string of up to max_cp code points, biased towards ASCII, spaces and
 * apostrophes (the pattern's interesting cases) but reaching every plane. */
static size_t random_utf8(uint64_t *s, char *out, size_t max_cp) {
    size_t n = 1 + rng_below(s, max_cp), k = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t cp;
        switch (rng_below(s, 8)) {
        case 0:
            cp = (uint32_t) " \t\n\r'"[rng_below(s, 5)];
            break;
        case 1:
        case 2:
            cp = 0x20 + (uint32_t)rng_below(s, 0x5F);
            break;
        case 3:
            cp = 0x80 + (uint32_t)rng_below(s, 0x780);
            break;
        case 4:
            cp = 0x800 + (uint32_t)rng_below(s, 0xF800);
            break;
        case 5:
            cp = 0x10000 + (uint32_t)rng_below(s, 0x100000);
            break;
        case 6:
            cp = (uint32_t)rng_below(s, 0x80);
            break;
        default:
            cp = 0x3000 + (uint32_t)rng_below(s, 0x100);
            break;
        }
        if (cp >= 0xD800 && cp <= 0xDFFF) cp = 'x'; /* surrogates are not characters */
        k += put_utf8(cp, out + k);
    }
    return k;
}

static void assert_ids(ni_tokenizer *t, const char *text, int allow_special, const int32_t *want,
                       size_t n_want) {
    int32_t *ids;
    size_t n;
    assert_int_equal(ni_tokenizer_encode(t, text, strlen(text), allow_special, &ids, &n), NI_OK);
    if (n != n_want || (n && memcmp(ids, want, n * sizeof *ids) != 0)) {
        fprintf(stderr, "encode(\"%s\", allow_special=%d):", text, allow_special);
        for (size_t i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "\n");
        fail_msg("ids differ from tiktoken's");
    }
    free(ids);
}

#define IDS(...) ((const int32_t[]){__VA_ARGS__}), sizeof((const int32_t[]){__VA_ARGS__}) / 4

/* Ids checked against tiktoken's gpt2 encoding by hand. */
static void test_known_ids(void **state) {
    ni_tokenizer *t = ((fixture *)*state)->t;
    assert_int_equal(ni_tokenizer_vocab_size(t), 50257);
    assert_int_equal(ni_tokenizer_eos_id(t), 50256);
    assert_ids(t, "Hello world", 0, IDS(15496, 995));
    assert_ids(t, "Hello, world!", 0, IDS(15496, 11, 995, 0));
    assert_ids(t, " the", 0, IDS(262));
    assert_ids(t, "the", 0, IDS(1169));
    assert_ids(t, " ", 0, IDS(220));
    assert_ids(t, "  ", 0, IDS(220, 220));
    assert_ids(t, "   a", 0, IDS(220, 220, 257));
    assert_ids(t, "\n", 0, IDS(198));
    assert_ids(t, "\n\n", 0, IDS(628));
    assert_ids(t,
               "a\xc2\xa0"
               "b",
               0, IDS(64, 1849, 65));
    assert_ids(t, "I'LL don't They'Re", 0, IDS(40, 6, 3069, 836, 470, 1119, 6, 3041));
    assert_ids(t, "The quick brown fox jumps over the lazy dog.", 0,
               IDS(464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13));
    /* U+180E is not White_Space for tiktoken (it is for PCRE2's own \s) */
    assert_ids(t, "\xe1\xa0\x8e", 0, IDS(157, 254, 236));
    int32_t *ids = (int32_t *)1;
    size_t n = 99;
    assert_int_equal(ni_tokenizer_encode(t, "", 0, 0, &ids, &n), NI_OK);
    assert_int_equal(n, 0);
    free(ids);
}

static void test_special_tokens(void **state) {
    ni_tokenizer *t = ((fixture *)*state)->t;
    assert_ids(t, "<|endoftext|>", 1, IDS(50256));
    assert_ids(t, "<|endoftext|>", 0, IDS(27, 91, 437, 1659, 5239, 91, 29));
    assert_ids(t, "a<|endoftext|>b", 1, IDS(64, 50256, 65));
    assert_ids(t, "<|endoftext|><|endoftext|>", 1, IDS(50256, 50256));
    /* the text on each side is encoded on its own: "  " before the token is one piece */
    assert_ids(t, "  <|endoftext|>", 1, IDS(220, 220, 50256));
    assert_ids(t, "  <|endoftext|>", 0, IDS(220, 1279, 91, 437, 1659, 5239, 91, 29));
    assert_ids(t, "<|endoftext|", 1, IDS(27, 91, 437, 1659, 5239, 91));
    /* ordinary encoding never yields the special id, and both decode to the same text */
    const char *text = "end.<|endoftext|>Start <|endoftext|>";
    for (int allow = 0; allow < 2; allow++) {
        int32_t *ids;
        size_t n;
        char *back;
        size_t len;
        assert_int_equal(ni_tokenizer_encode(t, text, strlen(text), allow, &ids, &n), NI_OK);
        size_t eos = 0;
        for (size_t i = 0; i < n; i++) eos += ids[i] == 50256;
        assert_int_equal(eos, allow ? 2 : 0);
        assert_int_equal(ni_tokenizer_decode(t, ids, n, &back, &len), NI_OK);
        assert_int_equal(len, strlen(text));
        assert_string_equal(back, text);
        free(ids);
        free(back);
    }
}

static void roundtrip(ni_tokenizer *t, const char *text, size_t len, int allow_special) {
    int32_t *ids;
    size_t n;
    char *back;
    size_t back_len;
    assert_int_equal(ni_tokenizer_encode(t, text, len, allow_special, &ids, &n), NI_OK);
    assert_true(n <= len);
    assert_int_equal(ni_tokenizer_decode(t, ids, n, &back, &back_len), NI_OK);
    assert_int_equal(back_len, len);
    assert_memory_equal(back, text, len);
    assert_int_equal(back[len], '\0');
    free(ids);
    free(back);
}

static void test_roundtrip_random_utf8(void **state) {
    ni_tokenizer *t = ((fixture *)*state)->t;
    uint64_t seed = 12345;
    char *buf = malloc(4 * 400 + 1);
    for (int i = 0; i < 3000; i++) {
        size_t len = random_utf8(&seed, buf, i % 10 == 0 ? 400 : 40);
        assert_int_equal(ni_utf8_valid_prefix((const uint8_t *)buf, len), len);
        roundtrip(t, buf, len, i & 1);
    }
    free(buf);
}

/* Invalid UTF-8 is no reference's concern, but it must not crash and must round-trip. */
static void test_invalid_utf8(void **state) {
    ni_tokenizer *t = ((fixture *)*state)->t;
    static const char *cases[] = {"\xff",
                                  "abc\xe2\x82",
                                  "\xe2\x82"
                                  "abc",
                                  "\xc0\xaf x",
                                  "\xed\xa0\x80 surrogate",
                                  "\xf4\x90\x80\x80",
                                  "a\x80\x80\x80 b",
                                  "  \xfe  ",
                                  "\xf0\x9f\x98",
                                  "caf\xe9 cr\xe8me"};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        roundtrip(t, cases[i], strlen(cases[i]), 0);
        roundtrip(t, cases[i], strlen(cases[i]), 1);
    }
    /* an invalid byte splits the text: each side is encoded as if it stood alone */
    int32_t *a, *b;
    size_t na, nb;
    assert_int_equal(ni_tokenizer_encode(t, "Hello\xffworld", 11, 0, &a, &na), NI_OK);
    assert_int_equal(na, 3);
    assert_int_equal(a[0], 15496);
    assert_int_equal(a[2], 6894); /* "world" */
    free(a);
    /* random bytes: exact round trip, and the same ids on a second (cached) pass */
    uint64_t seed = 777;
    char buf[300];
    for (int i = 0; i < 2000; i++) {
        size_t len = 1 + rng_below(&seed, sizeof buf);
        static const char common[] = "a 's\xc3\xa9\xe2\x82\xac";
        for (size_t k = 0; k < len; k++)
            buf[k] = rng_below(&seed, 3) ? (char)rng_next(&seed)
                                         : common[rng_below(&seed, sizeof common - 1)];
        roundtrip(t, buf, len, 0);
        assert_int_equal(ni_tokenizer_encode(t, buf, len, 0, &a, &na), NI_OK);
        assert_int_equal(ni_tokenizer_encode(t, buf, len, 0, &b, &nb), NI_OK);
        assert_int_equal(na, nb);
        assert_memory_equal(a, b, na * sizeof *a);
        free(a);
        free(b);
    }
}

/* Long pieces take the heap; it must merge exactly as tiktoken's scan does. */
static void test_bpe_heap_matches_scan(void **state) {
    ni_tokenizer *t = ((fixture *)*state)->t;
    ni_bpe_scratch s1 = {0}, s2 = {0};
    uint64_t seed = 99;
    static const char *alpha[] = {
        "abcdefghijklmnopqrstuvwxyz", "etaoinshrdlu", "ab", " e", "0123456789",
        "\xe4\xb8\xad\xe6\x96\x87",   "!?.,-"};
    uint8_t buf[600];
    int32_t o1[600], o2[600];
    for (int i = 0; i < 3000; i++) {
        const char *a = alpha[rng_below(&seed, sizeof alpha / sizeof *alpha)];
        size_t na = strlen(a), len = 1 + rng_below(&seed, i < 2900 ? 80 : sizeof buf);
        for (size_t k = 0; k < len; k++) buf[k] = (uint8_t)a[rng_below(&seed, na)];
        size_t n1 = ni_bpe_scan(&t->vocab, &s1, buf, len, o1);
        size_t n2 = ni_bpe_heap(&t->vocab, &s2, buf, len, o2);
        assert_int_equal(n1, n2);
        assert_memory_equal(o1, o2, n1 * sizeof *o1);
        for (size_t k = 0; k < n1; k++) assert_true(o1[k] >= 0 && o1[k] < 50256);
    }
    ni_bpe_scratch_free(&s1);
    ni_bpe_scratch_free(&s2);
}

/* Very long words and whitespace runs: no stack or time blow-up, exact round trip. */
static void test_long_pieces(void **state) {
    ni_tokenizer *t = ((fixture *)*state)->t;
    size_t n = 1 << 20;
    char *buf = malloc(n + 2);
    memset(buf, ' ', n);
    buf[n] = 'a';
    int32_t *ids;
    size_t k;
    /* a megabyte of spaces then "a": n-1 spaces (no multi-space tokens in GPT-2) and " a" */
    assert_int_equal(ni_tokenizer_encode(t, buf, n + 1, 0, &ids, &k), NI_OK);
    assert_int_equal(k, n);
    assert_int_equal(ids[0], 220);
    assert_int_equal(ids[k - 1], 257);
    free(ids);
    for (size_t i = 0; i < n; i++) buf[i] = "abcdefghij"[i % 7];
    roundtrip(t, buf, n, 0);
    for (size_t i = 0; i < n; i++) buf[i] = "\n\t 1"[i % 3];
    roundtrip(t, buf, n, 0);
    free(buf);
}

/* The word cache is bounded: fill it past its size and the ids must not change. */
static void test_cache_bounded(void **state) {
    ni_tokenizer *t = ((fixture *)*state)->t;
    uint64_t seed = 4242;
    size_t cap = 3u << 20, len = 0;
    char *buf = malloc(cap);
    while (len + 16 < cap) { /* ~500k words of random letters: far more than the cache holds */
        buf[len++] = ' ';
        size_t w = 2 + rng_below(&seed, 8);
        for (size_t i = 0; i < w; i++) buf[len++] = (char)('a' + rng_below(&seed, 26));
    }
    ni_tokenizer *fresh;
    assert_int_equal(ni_tokenizer_open(NI_TOKENIZER_DIR, &fresh), NI_OK);
    int32_t *a, *b;
    size_t na, nb;
    assert_int_equal(ni_tokenizer_encode(t, buf, len, 0, &a, &na), NI_OK);
    assert_true(t->cache.n_entries <= t->cache.max_entries);
    assert_true(t->cache.n_evictions > 0); /* or this test would prove nothing */
    /* the same through a second tokenizer, whose cache fills and empties on its own */
    assert_int_equal(ni_tokenizer_encode(fresh, buf, len, 0, &b, &nb), NI_OK);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na * sizeof *a);
    free(b);
    assert_int_equal(ni_tokenizer_encode(t, buf, len, 0, &b, &nb), NI_OK); /* warm */
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na * sizeof *a);
    /* and word by word on a cleared cache, so that no id comes from the cache */
    size_t at = 0;
    for (size_t p = 0; p < 20000;) {
        size_t q = p + 1;
        while (q < len && buf[q] != ' ') q++;
        ni_cache_clear(&fresh->cache);
        int32_t *w;
        size_t nw;
        assert_int_equal(ni_tokenizer_encode(fresh, buf + p, q - p, 0, &w, &nw), NI_OK);
        assert_memory_equal(w, a + at, nw * sizeof *w);
        at += nw;
        free(w);
        p = q;
    }
    free(a);
    free(b);
    free(buf);
    ni_tokenizer_close(fresh);
}

/* PCRE2's interpreter (used where the JIT is missing) cuts the same pieces as the JIT. */
static void test_pretok_interpreter(void **state) {
    ni_tokenizer *t = ((fixture *)*state)->t;
    ni_pretok *p = &t->pretok;
    int had_jit = p->jit;
    const char *text = "  Hello  world's\n\n  x1 23?! \xe4\xb8\xad  ";
    static const size_t want[] = {1, 7, 8, 14, 16, 19, 21, 22, 25, 27, 31, 33};
    size_t big = 1 << 20;
    uint8_t *spaces = malloc(big + 1);
    memset(spaces, ' ', big);
    spaces[big] = 'a';
    for (int jit = had_jit; jit >= 0; jit--) {
        p->jit = jit;
        size_t k = 0, n = strlen(text);
        for (size_t off = 0; off < n; k++) {
            off = ni_pretok_next(p, (const uint8_t *)text, n, off);
            assert_true(k < sizeof want / sizeof *want);
            assert_int_equal(off, want[k]);
        }
        assert_int_equal(k, sizeof want / sizeof *want);
        /* a long whitespace run: one piece up to the space before "a", no resource limit */
        assert_int_equal(ni_pretok_next(p, spaces, big + 1, 0), big - 1);
        assert_int_equal(ni_pretok_next(p, spaces, big + 1, big - 1), big + 1);
    }
    free(spaces);
    /* and the same ids on random text */
    uint64_t seed = 555;
    char *buf = malloc(4 * 200 + 1);
    for (int i = 0; i < 300; i++) {
        size_t len = random_utf8(&seed, buf, 200);
        int32_t *a, *b;
        size_t na, nb;
        p->jit = had_jit;
        ni_cache_clear(&t->cache);
        assert_int_equal(ni_tokenizer_encode(t, buf, len, 0, &a, &na), NI_OK);
        p->jit = 0;
        ni_cache_clear(&t->cache);
        assert_int_equal(ni_tokenizer_encode(t, buf, len, 0, &b, &nb), NI_OK);
        assert_int_equal(na, nb);
        assert_memory_equal(a, b, na * sizeof *a);
        free(a);
        free(b);
    }
    p->jit = had_jit;
    free(buf);
}

static void test_decode_errors(void **state) {
    ni_tokenizer *t = ((fixture *)*state)->t;
    char *text;
    size_t len;
    int32_t bad[] = {15496, 50257};
    assert_int_equal(ni_tokenizer_decode(t, bad, 2, &text, &len), NI_ERR_INVALID_ARG);
    assert_non_null(strstr(ni_last_error(), "50257"));
    int32_t neg[] = {-1};
    assert_int_equal(ni_tokenizer_decode(t, neg, 1, &text, &len), NI_ERR_INVALID_ARG);
    assert_int_equal(ni_tokenizer_decode(t, NULL, 0, &text, &len), NI_OK);
    assert_int_equal(len, 0);
    assert_string_equal(text, "");
    free(text);
    int32_t eot = 50256;
    assert_int_equal(ni_tokenizer_decode(t, &eot, 1, &text, &len), NI_OK);
    assert_string_equal(text, "<|endoftext|>");
    free(text);
    const char *b;
    assert_int_equal(ni_tokenizer_token_bytes(t, 995, &b, &len), NI_OK);
    assert_int_equal(len, 6);
    assert_memory_equal(b, " world", 6);
    assert_int_equal(ni_tokenizer_token_bytes(t, 60000, &b, &len), NI_ERR_INVALID_ARG);
}

/* ---- streaming decode -------------------------------------------------------------------- */

/* Reference for errors="replace": the maximal-subpart rule written directly. */
static size_t replace_decode(const uint8_t *s, size_t n, char *out) {
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        size_t c = ni_utf8_char_len(s + i, n - i);
        if (c) {
            memcpy(out + k, s + i, c);
            k += c;
            i += c;
        } else {
            memcpy(out + k, "\xef\xbf\xbd", 3);
            k += 3;
            i += ni_utf8_subpart_len(s + i, n - i);
        }
    }
    return k;
}

static int32_t byte_token(ni_tokenizer *t, uint8_t b) {
    return ni_vocab_find(&t->vocab, &b, 1);
}

/* Streams the ids; checks every chunk is valid UTF-8; returns the whole text (malloc'ed). */
static char *stream_all(ni_tokenizer *t, const int32_t *ids, size_t n, size_t *len) {
    ni_tokenizer_stream *s;
    assert_int_equal(ni_tokenizer_stream_new(t, &s), NI_OK);
    char *all = malloc(16 * n + 16);
    size_t k = 0;
    for (size_t i = 0; i <= n; i++) {
        const char *chunk;
        size_t c;
        if (i < n)
            assert_int_equal(ni_tokenizer_stream_push(s, ids[i], &chunk, &c), NI_OK);
        else
            assert_int_equal(ni_tokenizer_stream_flush(s, &chunk, &c), NI_OK);
        assert_int_equal(ni_utf8_valid_prefix((const uint8_t *)chunk, c), c);
        assert_int_equal(chunk[c], '\0');
        memcpy(all + k, chunk, c);
        k += c;
    }
    ni_tokenizer_stream_free(s);
    all[k] = '\0';
    *len = k;
    return all;
}

static void stream_bytes_expect(ni_tokenizer *t, const char *bytes, const char *want) {
    int32_t ids[16];
    size_t n = strlen(bytes), len;
    for (size_t i = 0; i < n; i++) ids[i] = byte_token(t, (uint8_t)bytes[i]);
    char *got = stream_all(t, ids, n, &len);
    assert_string_equal(got, want);
    free(got);
}

static void test_stream(void **state) {
    ni_tokenizer *t = ((fixture *)*state)->t;
    /* a character split over tokens is held back, never printed in halves */
    const char *text = "caf\xc3\xa9 \xf0\x9f\x98\x80\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd \xe4\xb8\xad "
                       "\xe2\x80\x9cquoted\xe2\x80\x9d";
    int32_t *ids;
    size_t n, len;
    assert_int_equal(ni_tokenizer_encode(t, text, strlen(text), 0, &ids, &n), NI_OK);
    ni_tokenizer_stream *s;
    assert_int_equal(ni_tokenizer_stream_new(t, &s), NI_OK);
    size_t held = 0;
    for (size_t i = 0; i < n; i++) {
        const char *chunk;
        size_t c;
        assert_int_equal(ni_tokenizer_stream_push(s, ids[i], &chunk, &c), NI_OK);
        assert_int_equal(ni_utf8_valid_prefix((const uint8_t *)chunk, c), c);
        held += c == 0; /* the emoji's bytes come in several tokens */
    }
    assert_true(held > 0);
    const char *chunk;
    size_t c;
    assert_int_equal(ni_tokenizer_stream_push(s, 60000, &chunk, &c), NI_ERR_INVALID_ARG);
    ni_tokenizer_stream_free(s);
    char *all = stream_all(t, ids, n, &len);
    assert_string_equal(all, text);
    free(all);
    free(ids);

    /* ill-formed bytes: Python's b"...".decode("utf-8", "replace") gives these */
    stream_bytes_expect(t, "\xff", "\xef\xbf\xbd");
    stream_bytes_expect(t,
                        "\xe2\x82"
                        "a",
                        "\xef\xbf\xbd"
                        "a");
    stream_bytes_expect(t, "\xf0\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    stream_bytes_expect(t, "\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    stream_bytes_expect(t, "\xf4\x90", "\xef\xbf\xbd\xef\xbf\xbd");
    stream_bytes_expect(t, "\xc3", "\xef\xbf\xbd"); /* cut off at the end: flush replaces it */
    stream_bytes_expect(t, "a\xc3\xa9\xc3", "a\xc3\xa9\xef\xbf\xbd");
    stream_bytes_expect(t, "\xe2\x82\xac", "\xe2\x82\xac");

    /* random bytes, as single-byte tokens and as whatever tokens encode them: the stream
     * equals the replace-decode of the whole, whatever the chunking */
    uint64_t seed = 31337;
    uint8_t buf[200];
    char want[3 * 200 + 1];
    int32_t bids[200];
    for (int i = 0; i < 2000; i++) {
        size_t blen = 1 + rng_below(&seed, sizeof buf);
        for (size_t k = 0; k < blen; k++) {
            uint64_t r = rng_next(&seed);
            buf[k] =
                (uint8_t)(r % 4 == 0 ? r >> 8
                                     : (r % 4 == 1 ? 0x80 + (r >> 8) % 64
                                                   : (r % 4 == 2 ? 0xC2 + (r >> 8) % 51 : 'a')));
        }
        size_t wlen = replace_decode(buf, blen, want);
        want[wlen] = '\0';
        for (size_t k = 0; k < blen; k++) bids[k] = byte_token(t, buf[k]);
        char *got = stream_all(t, bids, blen, &len);
        assert_int_equal(len, wlen);
        assert_memory_equal(got, want, wlen);
        free(got);
        assert_int_equal(ni_tokenizer_encode(t, (const char *)buf, blen, 0, &ids, &n), NI_OK);
        got = stream_all(t, ids, n, &len);
        assert_int_equal(len, wlen);
        assert_memory_equal(got, want, wlen);
        free(got);
        free(ids);
    }
}

/* ---- files ------------------------------------------------------------------------------- */

static void write_text(const char *dir, const char *name, const char *data, size_t len) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    assert_int_equal(ni_test_write_file(p, data, len), 0);
}

static void link_real(const char *dir, const char *name, const char *real) {
    char src[1024], dst[1024];
    snprintf(src, sizeof src, "%s/%s", NI_TOKENIZER_DIR, real);
    snprintf(dst, sizeof dst, "%s/%s", dir, name);
    unlink(dst);
    if (symlink(src, dst) != 0) fail_msg("symlink %s -> %s failed", dst, src);
}

static void remove_dir(const char *dir) {
    char cmd[1100];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    int st;
    free(ni_test_run(cmd, &st));
}

/* Opening dir must fail with status s and a message naming the file. */
static void expect_open_error(const char *dir, ni_status s, const char *name) {
    ni_tokenizer *t = (ni_tokenizer *)1;
    ni_status got = ni_tokenizer_open(dir, &t);
    if (got != s || !strstr(ni_last_error(), name))
        fail_msg("open(%s): got %s \"%s\", want %s naming %s", dir, ni_status_name(got),
                 ni_last_error(), ni_status_name(s), name);
    assert_null(t);
}

static void test_malformed_files(void **state) {
    (void)state;
    char dir[256];
    ni_test_tmpdir(dir, sizeof dir);
    assert_true(dir[0]);
    char missing[300];
    snprintf(missing, sizeof missing, "%s/nope", dir);
    expect_open_error(missing, NI_ERR_IO, "nope");
    expect_open_error(dir, NI_ERR_IO, dir); /* no tokenizer files at all */

    /* encoder.json without vocab.bpe */
    link_real(dir, "encoder.json", "encoder.json");
    expect_open_error(dir, NI_ERR_IO, "vocab.bpe");

    /* truncated or wrong-shaped encoder.json */
    link_real(dir, "vocab.bpe", "vocab.bpe");
    size_t len;
    char p[1024];
    snprintf(p, sizeof p, "%s/encoder.json", NI_TOKENIZER_DIR);
    char *enc = ni_test_read_file(p, &len);
    assert_non_null(enc);
    unlink(strcat(strcpy(p, dir), "/encoder.json"));
    write_text(dir, "encoder.json", enc, len / 2);
    expect_open_error(dir, NI_ERR_FORMAT, "encoder.json");
    write_text(dir, "encoder.json", "", 0);
    expect_open_error(dir, NI_ERR_FORMAT, "encoder.json");
    write_text(dir, "encoder.json", "[1, 2]", 6);
    expect_open_error(dir, NI_ERR_FORMAT, "encoder.json");
    write_text(dir, "encoder.json", "{\"a\": \"x\"}", 10);
    expect_open_error(dir, NI_ERR_FORMAT, "encoder.json");
    /* an id out of range, and the end-of-text token missing */
    char *bad = malloc(len + 64);
    memcpy(bad, enc, len);
    char *eot = strstr(bad, "\"<|endoftext|>\": 50256");
    assert_non_null(eot);
    memcpy(eot, "\"<|endoftext|>\": 99999", 22);
    write_text(dir, "encoder.json", bad, len);
    expect_open_error(dir, NI_ERR_FORMAT, "encoder.json");
    memcpy(eot, "\"<|endoftexx|>\": 50256", 22);
    write_text(dir, "encoder.json", bad, len);
    expect_open_error(dir, NI_ERR_FORMAT, "<|endoftext|>");
    /* a token with a character outside the byte alphabet */
    memcpy(bad, enc, len);
    char *hello = strstr(bad, "\"Hello\": 15496");
    assert_non_null(hello);
    memcpy(hello, "\"\xe4\xb8\xad\x6co\": 15496", 14);
    write_text(dir, "encoder.json", bad, len);
    expect_open_error(dir, NI_ERR_FORMAT, "encoder.json");
    free(bad);
    free(enc);

    /* garbage in vocab.bpe: the line is named */
    unlink(strcat(strcpy(p, dir), "/encoder.json"));
    link_real(dir, "encoder.json", "encoder.json");
    unlink(strcat(strcpy(p, dir), "/vocab.bpe"));
    const char *three = "#version: 0.2\n\xc4\xa0 t\nthis has three\n";
    write_text(dir, "vocab.bpe", three, strlen(three));
    expect_open_error(dir, NI_ERR_FORMAT, "vocab.bpe:3");
    const char *unknown = "#version: 0.2\n\xc4\xa0 t\nzzzq qqqz\n";
    write_text(dir, "vocab.bpe", unknown, strlen(unknown));
    expect_open_error(dir, NI_ERR_FORMAT, "vocab.bpe:3");
    const char *alien = "#version: 0.2\n\xe4\xb8\xad t\n";
    write_text(dir, "vocab.bpe", alien, strlen(alien));
    expect_open_error(dir, NI_ERR_FORMAT, "vocab.bpe:2");
    /* cut short: the tokens of the missing merges are made by none */
    snprintf(p, sizeof p, "%s/vocab.bpe", NI_TOKENIZER_DIR);
    char *merges = ni_test_read_file(p, &len);
    assert_non_null(merges);
    write_text(dir, "vocab.bpe", merges, len / 2);
    expect_open_error(dir, NI_ERR_FORMAT, "vocab.bpe");
    free(merges);
    remove_dir(dir);
}

static void test_hf_directory(void **state) {
    ni_tokenizer *ref = ((fixture *)*state)->t;
    char dir[256];
    ni_test_tmpdir(dir, sizeof dir);
    link_real(dir, "vocab.json", "encoder.json");
    expect_open_error(dir, NI_ERR_IO, "merges.txt");
    link_real(dir, "merges.txt", "vocab.bpe");
    ni_tokenizer *t;
    assert_int_equal(ni_tokenizer_open(dir, &t), NI_OK);
    assert_int_equal(ni_tokenizer_vocab_size(t), 50257);
    assert_int_equal(ni_tokenizer_eos_id(t), 50256);
    const char *text =
        "Hugging Face's vocab.json + merges.txt: the same ids <|endoftext|> \xe4\xb8\xad";
    for (int allow = 0; allow < 2; allow++) {
        int32_t *a, *b;
        size_t na, nb;
        assert_int_equal(ni_tokenizer_encode(t, text, strlen(text), allow, &a, &na), NI_OK);
        assert_int_equal(ni_tokenizer_encode(ref, text, strlen(text), allow, &b, &nb), NI_OK);
        assert_int_equal(na, nb);
        assert_memory_equal(a, b, na * sizeof *a);
        free(a);
        free(b);
    }
    ni_tokenizer_close(t);
    remove_dir(dir);
}

static void test_utf8_helpers(void **state) {
    (void)state;
    const uint8_t ok[] = "a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80";
    assert_int_equal(ni_utf8_valid_prefix(ok, sizeof ok - 1), sizeof ok - 1);
    assert_int_equal(ni_utf8_valid_prefix((const uint8_t *)"abcdefghij\xff", 11), 10);
    assert_int_equal(ni_utf8_char_len((const uint8_t *)"\xe2\x82", 2), 0);
    assert_int_equal(ni_utf8_subpart_len((const uint8_t *)"\xe2\x82", 2), 2);
    assert_int_equal(ni_utf8_subpart_len((const uint8_t *)"\xe0\x80", 2), 1); /* overlong */
    assert_int_equal(ni_utf8_subpart_len((const uint8_t *)"\xc0\x80", 2), 1);
    assert_int_equal(ni_utf8_char_len((const uint8_t *)"\xf4\x8f\xbf\xbf", 4), 4);
    assert_int_equal(ni_utf8_char_len((const uint8_t *)"\xf4\x90\x80\x80", 4), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8_helpers),
        cmocka_unit_test(test_known_ids),
        cmocka_unit_test(test_special_tokens),
        cmocka_unit_test(test_roundtrip_random_utf8),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_bpe_heap_matches_scan),
        cmocka_unit_test(test_long_pieces),
        cmocka_unit_test(test_cache_bounded),
        cmocka_unit_test(test_pretok_interpreter),
        cmocka_unit_test(test_decode_errors),
        cmocka_unit_test(test_stream),
        cmocka_unit_test(test_malformed_files),
        cmocka_unit_test(test_hf_directory),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
