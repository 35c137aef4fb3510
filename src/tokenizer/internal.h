/* Internals of the GPT-2 byte-level BPE tokenizer, shared by the files of src/tokenizer and by
 * the tests: the vocabulary (token bytes, merge ranks and an open-addressing hash table from
 * bytes to id), the bounded cache of already-encoded words, the PCRE2 pre-tokenizer, the two
 * BPE merge loops (tiktoken's linear scan for short pieces, a heap for long ones) and the UTF-8
 * helpers behind invalid-input handling and the streaming decoder. */
#ifndef NI_TOKENIZER_INTERNAL_H
#define NI_TOKENIZER_INTERNAL_H

#include "nanoinfer.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

/* Rank of a token that no merge produces (special tokens): never merged, never a whole piece. */
#define NI_RANK_NONE UINT32_MAX

/* ---- hashing ----------------------------------------------------------------------------- */

/* Up to 8 bytes of s packed in a word: for n <= 8 the word and n together determine the bytes,
 * so short keys compare without touching memory elsewhere. */
static inline uint64_t ni_key8(const uint8_t *s, size_t n) {
    uint64_t w = 0;
    if (n >= 8) {
        memcpy(&w, s, 8);
    } else if (n >= 4) {
        uint32_t a, b; /* two overlapping loads cover all n bytes */
        memcpy(&a, s, 4);
        memcpy(&b, s + n - 4, 4);
        w = (uint64_t)a | (uint64_t)b << 32;
    } else if (n) {
        w = (uint64_t)s[0] | (uint64_t)s[n / 2] << 8 | (uint64_t)s[n - 1] << 16;
    }
    return w;
}

static inline uint64_t ni_hash_step(uint64_t h, uint64_t w) {
    h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
    return h ^ (h >> 29);
}

static inline uint64_t ni_tok_hash(const uint8_t *s, size_t n) {
    uint64_t h =
        ni_hash_step(0x9e3779b97f4a7c15ull ^ ((uint64_t)n * 0xff51afd7ed558ccdull), ni_key8(s, n));
    if (n > 8) {
        size_t i = 8;
        for (; i + 8 <= n; i += 8) h = ni_hash_step(h, ni_key8(s + i, 8));
        if (i < n) h = ni_hash_step(h, ni_key8(s + i, n - i));
    }
    h ^= h >> 32;
    h *= 0xd6e8feb86659fd93ull;
    return h ^ (h >> 32);
}

/* ---- vocabulary -------------------------------------------------------------------------- */

/* A slot of the vocabulary's hash table: the key's first bytes, its length and part of its
 * hash sit in the slot, so that a lookup of a token of up to 8 bytes (most of them) costs one
 * memory access. */
typedef struct {
    uint64_t key8; /* ni_key8 of the token */
    uint32_t id1;  /* id + 1; 0 marks an empty slot */
    uint16_t len;  /* token length, saturated at 65535 */
    uint16_t tag;  /* bits 32..47 of the hash */
} ni_vocab_slot;

typedef struct {
    size_t n;             /* ids are 0 .. n-1 */
    uint8_t *bytes;       /* the bytes of every token, back to back in id order */
    uint32_t *off;        /* n + 1 offsets into bytes: token i is bytes[off[i] .. off[i+1]) */
    uint32_t *rank;       /* merge priority (lower merges first); NI_RANK_NONE: not mergeable */
    ni_vocab_slot *slots; /* open addressing with linear probing */
    size_t mask;          /* slots - 1 (a power of two minus one) */
} ni_vocab;

/* Builds the hash table over the n tokens already in v (bytes, off). 0 on success, -1 if out
 * of memory. */
int ni_vocab_index(ni_vocab *v);
/* The id of the token with exactly these bytes, or -1. */
int32_t ni_vocab_find_h(const ni_vocab *v, const uint8_t *s, size_t n, uint64_t h);
static inline int32_t ni_vocab_find(const ni_vocab *v, const uint8_t *s, size_t n) {
    return ni_vocab_find_h(v, s, n, ni_tok_hash(s, n));
}
/* The merge rank of the token with these bytes; NI_RANK_NONE if there is none. */
static inline uint32_t ni_vocab_rank(const ni_vocab *v, const uint8_t *s, size_t n) {
    int32_t id = ni_vocab_find(v, s, n);
    return id < 0 ? NI_RANK_NONE : v->rank[id];
}
void ni_vocab_free(ni_vocab *v);

/* ---- word cache -------------------------------------------------------------------------- */

/* Pieces (pre-tokenizer matches) already run through BPE, with their ids. Bounded: when any
 * part fills up the whole cache is emptied, which costs one re-encode per word at worst. */
typedef struct {
    uint64_t *slots; /* (hash >> 32) << 32 | (entry + 1) */
    size_t mask;
    uint32_t *entries; /* 4 per entry: key offset, key length, ids offset, ids count */
    size_t n_entries, max_entries;
    uint8_t *keys;
    size_t keys_used, keys_cap;
    int32_t *ids;
    size_t ids_used, ids_cap;
    size_t n_evictions; /* times it filled up and was emptied */
} ni_word_cache;

/* Longest piece the cache keeps; longer ones are rare and cheap to re-encode by comparison. */
#define NI_CACHE_MAX_KEY 128

int ni_cache_init(ni_word_cache *c);
void ni_cache_free(ni_word_cache *c);
void ni_cache_clear(ni_word_cache *c);
/* The cached ids of the piece (and their count), or NULL. */
const int32_t *ni_cache_get(const ni_word_cache *c, const uint8_t *s, size_t n, uint64_t h,
                            size_t *n_ids);
/* Remembers ids for the piece; silently does nothing for pieces too long to keep. */
void ni_cache_put(ni_word_cache *c, const uint8_t *s, size_t n, uint64_t h, const int32_t *ids,
                  size_t n_ids);

/* ---- BPE --------------------------------------------------------------------------------- */

/* Working memory of the merge loops, grown on demand and kept between pieces. */
typedef struct {
    uint32_t *start, *rank, *next, *prev; /* per part */
    uint64_t *heap;
    size_t cap;
} ni_bpe_scratch;

/* Pieces longer than this use the heap; shorter ones tiktoken's scan (faster when short). */
#define NI_BPE_HEAP_MIN 64

/* Splits piece (n >= 1 bytes) into tokens exactly as tiktoken's byte-pair merge does: repeatedly
 * merge the adjacent pair whose concatenated bytes have the lowest rank, the leftmost one on a
 * tie. Writes at most n ids to out and returns their count, or (size_t)-1 when out of memory.
 * Every single byte must be a token of v. */
size_t ni_bpe(const ni_vocab *v, ni_bpe_scratch *s, const uint8_t *piece, size_t n, int32_t *out);
/* The two algorithms behind ni_bpe, exposed so that the tests can check they agree. */
size_t ni_bpe_scan(const ni_vocab *v, ni_bpe_scratch *s, const uint8_t *piece, size_t n,
                   int32_t *out);
size_t ni_bpe_heap(const ni_vocab *v, ni_bpe_scratch *s, const uint8_t *piece, size_t n,
                   int32_t *out);
void ni_bpe_scratch_free(ni_bpe_scratch *s);

/* ---- pre-tokenizer ----------------------------------------------------------------------- */

typedef struct {
    pcre2_code *re;
    pcre2_match_data *md;
    int jit; /* 1 when the JIT compiled the pattern */
} ni_pretok;

ni_status ni_pretok_init(ni_pretok *p);
void ni_pretok_free(ni_pretok *p);
/* The end of the piece that starts at off in s[0..n), which must be valid UTF-8. */
size_t ni_pretok_next(ni_pretok *p, const uint8_t *s, size_t n, size_t off);

/* ---- UTF-8 ------------------------------------------------------------------------------- */

/* Length of the longest valid UTF-8 prefix of s[0..n). */
size_t ni_utf8_valid_prefix(const uint8_t *s, size_t n);
/* Length of the well-formed character at s, or 0 when s does not start one. */
size_t ni_utf8_char_len(const uint8_t *s, size_t n);
/* Length (>= 1) of the maximal subpart of an ill-formed sequence at s (Unicode §3.9): the bytes
 * that one U+FFFD replaces. s must not start a well-formed character. */
size_t ni_utf8_subpart_len(const uint8_t *s, size_t n);

/* Incremental UTF-8 sanitizer: complete characters pass through, incomplete ones wait for
 * their next bytes, and each maximal subpart of an ill-formed sequence becomes U+FFFD — the
 * same text as Python's bytes.decode("utf-8", "replace") of everything fed. */
typedef struct {
    uint8_t buf[4];
    uint8_t have, need; /* bytes held of the pending character, and its full length */
    uint8_t lo, hi;     /* the range the next byte must be in */
} ni_utf8_state;

/* Bound on the bytes ni_utf8_feed writes for n input bytes. */
#define NI_UTF8_FEED_MAX(n) (3 * ((n) + 4))

/* Feeds n bytes; writes sanitized UTF-8 to out (room for NI_UTF8_FEED_MAX(n)); returns its
 * length. */
size_t ni_utf8_feed(ni_utf8_state *st, const uint8_t *in, size_t n, uint8_t *out);
/* Ends the input: a held incomplete character becomes U+FFFD. Writes at most 3 bytes. */
size_t ni_utf8_finish(ni_utf8_state *st, uint8_t *out);

/* ---- the tokenizer ----------------------------------------------------------------------- */

struct ni_tokenizer {
    ni_vocab vocab;
    int32_t eos_id;
    int32_t *special_ids; /* tokens no merge produces, "<|endoftext|>" among them */
    size_t n_special;
    ni_pretok pretok;
    ni_word_cache cache;
    ni_bpe_scratch scratch;
};

#endif
