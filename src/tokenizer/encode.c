/* Encoding and decoding. Text is cut at special tokens (only when they are allowed), each
 * segment is cut into maximal valid-UTF-8 runs, each run into pieces by the pre-tokenizer, and
 * each piece becomes one token when its bytes are one, its cached ids when it was seen before,
 * or the result of BPE. Bytes that are not valid UTF-8 form pieces of their own (one per
 * ill-formed stretch), so any input encodes and decodes back to itself exactly. */
#include "tokenizer/internal.h"

#include "common/error.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    int32_t *a;
    size_t n, cap;
} id_vec;

static ni_status reserve(id_vec *v, size_t extra) {
    if (v->n + extra <= v->cap) return NI_OK;
    size_t cap = v->cap ? v->cap : 64;
    while (cap < v->n + extra) cap *= 2;
    int32_t *a = realloc(v->a, cap * sizeof *a);
    if (!a) return ni_fail(NI_ERR_NO_MEMORY, "tokenizer: out of memory (%zu ids)", cap);
    v->a = a;
    v->cap = cap;
    return NI_OK;
}

static ni_status encode_piece(ni_tokenizer *t, const uint8_t *s, size_t n, id_vec *out) {
    if (n > (size_t)INT32_MAX) /* BPE indexes parts with 32 bits */
        return ni_fail(NI_ERR_INVALID_ARG, "tokenizer: a word of %zu bytes is too long", n);
    NI_TRY(reserve(out, n)); /* BPE never makes more tokens than bytes */
    uint64_t h = ni_tok_hash(s, n);
    int32_t id = ni_vocab_find_h(&t->vocab, s, n, h);
    if (id >= 0 && t->vocab.rank[id] != NI_RANK_NONE) {
        out->a[out->n++] = id;
        return NI_OK;
    }
    size_t k;
    const int32_t *hit = ni_cache_get(&t->cache, s, n, h, &k);
    if (hit) {
        memcpy(out->a + out->n, hit, k * sizeof *hit);
        out->n += k;
        return NI_OK;
    }
    k = ni_bpe(&t->vocab, &t->scratch, s, n, out->a + out->n);
    if (k == (size_t)-1) return ni_fail(NI_ERR_NO_MEMORY, "tokenizer: out of memory (BPE)");
    ni_cache_put(&t->cache, s, n, h, out->a + out->n, k);
    out->n += k;
    return NI_OK;
}

/* tiktoken's encode_ordinary on s[0..n). */
static ni_status encode_ordinary(ni_tokenizer *t, const uint8_t *s, size_t n, id_vec *out) {
    size_t p = 0;
    while (p < n) {
        size_t v = ni_utf8_valid_prefix(s + p, n - p);
        /* the valid run is the regex's whole subject, so "end of text" is where it ends */
        for (size_t off = 0; off < v;) {
            size_t end = ni_pretok_next(&t->pretok, s + p, v, off);
            NI_TRY(encode_piece(t, s + p + off, end - off, out));
            off = end;
        }
        p += v;
        if (p == n) break;
        size_t q = p;
        do q += ni_utf8_subpart_len(s + q, n - q);
        while (q < n && ni_utf8_char_len(s + q, n - q) == 0);
        NI_TRY(encode_piece(t, s + p, q - p, out));
        p = q;
    }
    return NI_OK;
}

/* First occurrence of needle in hay[0..n), or n. */
static size_t find_bytes(const uint8_t *hay, size_t n, const uint8_t *needle, size_t m) {
    if (m == 0 || m > n) return n;
    for (size_t i = 0; i + m <= n;) {
        const uint8_t *c = memchr(hay + i, needle[0], n - m + 1 - i);
        if (!c) return n;
        i = (size_t)(c - hay);
        if (memcmp(c, needle, m) == 0) return i;
        i++;
    }
    return n;
}

/* tiktoken's encode with every special token allowed: split at the leftmost special (the
 * longest where two start together), encode the text between ordinarily. */
static ni_status encode_special(ni_tokenizer *t, const uint8_t *s, size_t n, id_vec *out) {
    const ni_vocab *v = &t->vocab;
    size_t ns = t->n_special, local[16];
    size_t *next = ns <= 16 ? local : malloc(ns * sizeof *next);
    if (!next) return ni_fail(NI_ERR_NO_MEMORY, "tokenizer: out of memory");
    for (size_t k = 0; k < ns; k++) next[k] = SIZE_MAX; /* not searched yet */
    ni_status st = NI_OK;
    size_t p = 0;
    while (p < n && st == NI_OK) {
        size_t best = n, best_len = 0;
        int32_t best_id = -1;
        for (size_t k = 0; k < ns; k++) {
            int32_t id = t->special_ids[k];
            const uint8_t *tok = v->bytes + v->off[id];
            size_t len = v->off[id + 1] - v->off[id];
            if (next[k] == SIZE_MAX || next[k] < p)
                next[k] = p + find_bytes(s + p, n - p, tok, len);
            if (next[k] < best || (next[k] == best && next[k] < n && len > best_len)) {
                best = next[k];
                best_len = len;
                best_id = id;
            }
        }
        st = encode_ordinary(t, s + p, best - p, out);
        if (st != NI_OK || best == n) break;
        st = reserve(out, 1);
        if (st == NI_OK) out->a[out->n++] = best_id;
        p = best + best_len;
    }
    if (next != local) free(next);
    return st;
}

ni_status ni_tokenizer_encode(ni_tokenizer *t, const char *text, size_t len, int allow_special,
                              int32_t **ids, size_t *n_ids) {
    if (!t || (!text && len) || !ids || !n_ids)
        return ni_fail(NI_ERR_INVALID_ARG, "ni_tokenizer_encode: NULL argument");
    *ids = NULL;
    *n_ids = 0;
    id_vec out = {0};
    ni_status st = reserve(&out, len / 3 + 16);
    const uint8_t *s = (const uint8_t *)text;
    if (st == NI_OK)
        st = allow_special ? encode_special(t, s, len, &out) : encode_ordinary(t, s, len, &out);
    if (st != NI_OK) {
        free(out.a);
        return st;
    }
    *ids = out.a;
    *n_ids = out.n;
    return NI_OK;
}

ni_status ni_tokenizer_token_bytes(const ni_tokenizer *t, int32_t id, const char **bytes,
                                   size_t *len) {
    if (!t || !bytes || !len)
        return ni_fail(NI_ERR_INVALID_ARG, "ni_tokenizer_token_bytes: NULL argument");
    if (id < 0 || (size_t)id >= t->vocab.n)
        return ni_fail(NI_ERR_INVALID_ARG, "token id %ld is out of range [0, %zu)", (long)id,
                       t->vocab.n);
    *bytes = (const char *)t->vocab.bytes + t->vocab.off[id];
    *len = t->vocab.off[id + 1] - t->vocab.off[id];
    return NI_OK;
}

ni_status ni_tokenizer_decode(const ni_tokenizer *t, const int32_t *ids, size_t n_ids, char **text,
                              size_t *len) {
    if (!t || (!ids && n_ids) || !text || !len)
        return ni_fail(NI_ERR_INVALID_ARG, "ni_tokenizer_decode: NULL argument");
    *text = NULL;
    *len = 0;
    const ni_vocab *v = &t->vocab;
    size_t total = 0;
    for (size_t i = 0; i < n_ids; i++) {
        if (ids[i] < 0 || (size_t)ids[i] >= v->n)
            return ni_fail(NI_ERR_INVALID_ARG, "token id %ld (at %zu) is out of range [0, %zu)",
                           (long)ids[i], i, v->n);
        total += v->off[ids[i] + 1] - v->off[ids[i]];
    }
    char *out = malloc(total + 1);
    if (!out) return ni_fail(NI_ERR_NO_MEMORY, "tokenizer: out of memory (%zu bytes)", total);
    size_t o = 0;
    for (size_t i = 0; i < n_ids; i++) {
        size_t k = v->off[ids[i] + 1] - v->off[ids[i]];
        memcpy(out + o, v->bytes + v->off[ids[i]], k);
        o += k;
    }
    out[o] = '\0';
    *text = out;
    *len = o;
    return NI_OK;
}
