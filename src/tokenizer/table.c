/* The tokenizer's hash tables (the hash itself is inline in internal.h): the vocabulary index,
 * token bytes -> id, open addressing with linear probing, each slot holding the token's first 8
 * bytes, length and 16 bits of its hash so that finding a short token is one memory access; and
 * the bounded cache of encoded words, which keeps its keys and ids in fixed arenas and is
 * emptied whole when one of them fills up. */
#include "tokenizer/internal.h"

#include <stdlib.h>
#include <string.h>

/* ---- vocabulary -------------------------------------------------------------------------- */

static size_t pow2_at_least(size_t n) {
    size_t p = 16;
    while (p < n) p *= 2;
    return p;
}

int ni_vocab_index(ni_vocab *v) {
    size_t cap = pow2_at_least(v->n * 2); /* load factor at most 1/2: short probes */
    free(v->slots);
    v->slots = calloc(cap, sizeof *v->slots);
    if (!v->slots) return -1;
    v->mask = cap - 1;
    for (size_t id = 0; id < v->n; id++) {
        const uint8_t *s = v->bytes + v->off[id];
        size_t len = v->off[id + 1] - v->off[id];
        uint64_t h = ni_tok_hash(s, len);
        if (ni_vocab_find_h(v, s, len, h) >= 0) continue; /* keep the first of duplicates */
        size_t i = (size_t)h & v->mask;
        while (v->slots[i].id1) i = (i + 1) & v->mask;
        v->slots[i] = (ni_vocab_slot){.key8 = ni_key8(s, len),
                                      .id1 = (uint32_t)id + 1,
                                      .len = (uint16_t)(len < 65535 ? len : 65535),
                                      .tag = (uint16_t)(h >> 32)};
    }
    return 0;
}

int32_t ni_vocab_find_h(const ni_vocab *v, const uint8_t *s, size_t n, uint64_t h) {
    uint64_t k8 = ni_key8(s, n);
    uint16_t tag = (uint16_t)(h >> 32), len = (uint16_t)(n < 65535 ? n : 65535);
    for (size_t i = (size_t)h & v->mask;; i = (i + 1) & v->mask) {
        const ni_vocab_slot *e = &v->slots[i];
        if (!e->id1) return -1;
        if (e->key8 != k8 || e->len != len || e->tag != tag) continue;
        if (n <= 8) return (int32_t)e->id1 - 1; /* key8 and the length say it all */
        uint32_t id = e->id1 - 1, o = v->off[id];
        if (v->off[id + 1] - o == n && memcmp(v->bytes + o + 8, s + 8, n - 8) == 0)
            return (int32_t)id;
    }
}

void ni_vocab_free(ni_vocab *v) {
    free(v->bytes);
    free(v->off);
    free(v->rank);
    free(v->slots);
    memset(v, 0, sizeof *v);
}

/* ---- word cache -------------------------------------------------------------------------- */

int ni_cache_init(ni_word_cache *c) {
    memset(c, 0, sizeof *c);
    c->max_entries = 1u << 15;
    c->mask = 2 * c->max_entries - 1; /* load factor at most 1/2 */
    c->keys_cap = (size_t)1 << 20;
    c->ids_cap = (size_t)1 << 18;
    c->slots = calloc(c->mask + 1, sizeof *c->slots);
    c->entries = malloc(c->max_entries * 4 * sizeof *c->entries);
    c->keys = malloc(c->keys_cap);
    c->ids = malloc(c->ids_cap * sizeof *c->ids);
    if (!c->slots || !c->entries || !c->keys || !c->ids) {
        ni_cache_free(c);
        return -1;
    }
    return 0;
}

void ni_cache_free(ni_word_cache *c) {
    free(c->slots);
    free(c->entries);
    free(c->keys);
    free(c->ids);
    memset(c, 0, sizeof *c);
}

void ni_cache_clear(ni_word_cache *c) {
    if (c->n_entries) memset(c->slots, 0, (c->mask + 1) * sizeof *c->slots);
    c->n_entries = c->keys_used = c->ids_used = 0;
}

const int32_t *ni_cache_get(const ni_word_cache *c, const uint8_t *s, size_t n, uint64_t h,
                            size_t *n_ids) {
    uint64_t tag = h & 0xffffffff00000000ull;
    for (size_t i = (size_t)h & c->mask;; i = (i + 1) & c->mask) {
        uint64_t e = c->slots[i];
        if (!e) return NULL;
        if ((e & 0xffffffff00000000ull) != tag) continue;
        const uint32_t *en = c->entries + 4 * ((uint32_t)e - 1);
        if (en[1] == n && memcmp(c->keys + en[0], s, n) == 0) {
            *n_ids = en[3];
            return c->ids + en[2];
        }
    }
}

void ni_cache_put(ni_word_cache *c, const uint8_t *s, size_t n, uint64_t h, const int32_t *ids,
                  size_t n_ids) {
    if (n > NI_CACHE_MAX_KEY || n_ids > n) return;
    if (c->n_entries == c->max_entries || c->keys_used + n > c->keys_cap ||
        c->ids_used + n_ids > c->ids_cap) {
        ni_cache_clear(c);
        c->n_evictions++;
    }
    size_t i = (size_t)h & c->mask;
    while (c->slots[i]) i = (i + 1) & c->mask;
    uint32_t *en = c->entries + 4 * c->n_entries;
    en[0] = (uint32_t)c->keys_used;
    en[1] = (uint32_t)n;
    en[2] = (uint32_t)c->ids_used;
    en[3] = (uint32_t)n_ids;
    memcpy(c->keys + c->keys_used, s, n);
    memcpy(c->ids + c->ids_used, ids, n_ids * sizeof *ids);
    c->keys_used += n;
    c->ids_used += n_ids;
    c->n_entries++;
    c->slots[i] = (h & 0xffffffff00000000ull) | (uint64_t)c->n_entries;
}
