/* Byte-pair merging of one piece, with tiktoken's semantics: the rank of a pair is the rank of
 * the token spelled by the two parts' bytes together, and the lowest-ranked pair merges first,
 * the leftmost on a tie. Short pieces use tiktoken's own scheme (an array of parts rescanned
 * after each merge: quadratic, but tiny and cache-friendly); long ones (a word thousands of
 * characters long) use a linked list of parts and a min-heap of pairs, O(n log n). */
#include "tokenizer/internal.h"

#include <stdlib.h>
#include <string.h>

static int reserve(ni_bpe_scratch *s, size_t n) {
    if (n <= s->cap) return 0;
    size_t cap = s->cap ? s->cap : 64;
    while (cap < n) cap *= 2;
    uint32_t *a = realloc(s->start, cap * sizeof *a);
    if (!a) return -1;
    s->start = a;
    if (!(a = realloc(s->rank, cap * sizeof *a))) return -1;
    s->rank = a;
    if (!(a = realloc(s->next, cap * sizeof *a))) return -1;
    s->next = a;
    if (!(a = realloc(s->prev, cap * sizeof *a))) return -1;
    s->prev = a;
    uint64_t *h = realloc(s->heap, 2 * cap * sizeof *h); /* each merge pushes at most 2 */
    if (!h) return -1;
    s->heap = h;
    s->cap = cap;
    return 0;
}

void ni_bpe_scratch_free(ni_bpe_scratch *s) {
    free(s->start);
    free(s->rank);
    free(s->next);
    free(s->prev);
    free(s->heap);
    memset(s, 0, sizeof *s);
}

/* The id of bytes that must be a token: single bytes always are, and merges only make
 * tokens. */
static int32_t token_id(const ni_vocab *v, const uint8_t *s, size_t n) {
    return ni_vocab_find(v, s, n);
}

size_t ni_bpe_scan(const ni_vocab *v, ni_bpe_scratch *s, const uint8_t *piece, size_t n,
                   int32_t *out) {
    if (n == 1) {
        out[0] = token_id(v, piece, 1);
        return 1;
    }
    if (reserve(s, n + 1) != 0) return (size_t)-1;
    /* part i spans start[i] .. start[i+1]; rank[i] is the rank of merging parts i and i+1 */
    uint32_t *start = s->start, *rank = s->rank;
    size_t m = n + 1; /* entries, the last one a sentinel holding the end */
    for (size_t i = 0; i <= n; i++) start[i] = (uint32_t)i;
    for (size_t i = 0; i + 1 < n; i++) rank[i] = ni_vocab_rank(v, piece + i, 2);
    rank[n - 1] = rank[n] = NI_RANK_NONE;
    for (;;) {
        uint32_t best = NI_RANK_NONE;
        size_t bi = 0;
        for (size_t i = 0; i + 1 < m; i++)
            if (rank[i] < best) {
                best = rank[i];
                bi = i;
            }
        if (best == NI_RANK_NONE) break;
        /* merge parts bi and bi+1: drop entry bi+1, then rerank the pairs either side */
        memmove(start + bi + 1, start + bi + 2, (m - bi - 2) * sizeof *start);
        memmove(rank + bi + 1, rank + bi + 2, (m - bi - 2) * sizeof *rank);
        m--;
        rank[bi] = bi + 2 < m ? ni_vocab_rank(v, piece + start[bi], start[bi + 2] - start[bi])
                              : NI_RANK_NONE;
        if (bi > 0)
            rank[bi - 1] = ni_vocab_rank(v, piece + start[bi - 1], start[bi + 1] - start[bi - 1]);
    }
    for (size_t i = 0; i + 1 < m; i++)
        out[i] = token_id(v, piece + start[i], start[i + 1] - start[i]);
    return m - 1;
}

/* ---- the heap variant -------------------------------------------------------------------- */

/* Heap entries are (rank << 32 | part): the smallest is the lowest rank, then the leftmost part,
 * since a part keeps the index of its first byte. */
static void heap_push(uint64_t *h, size_t *n, uint64_t x) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= x) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = x;
}

static uint64_t heap_pop(uint64_t *h, size_t *n) {
    uint64_t top = h[0], x = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && h[c + 1] < h[c]) c++;
        if (h[c] >= x) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = x;
    return top;
}

size_t ni_bpe_heap(const ni_vocab *v, ni_bpe_scratch *s, const uint8_t *piece, size_t n,
                   int32_t *out) {
    if (n == 1) {
        out[0] = token_id(v, piece, 1);
        return 1;
    }
    if (reserve(s, n + 1) != 0) return (size_t)-1;
    /* part i starts at byte i; next[i] is the following part (n: none), rank[i] the rank of
     * the pair (i, next[i]); a merged-away part has prev[i] == UINT32_MAX - 1 */
    const uint32_t dead = UINT32_MAX - 1;
    uint32_t *next = s->next, *prev = s->prev, *rank = s->rank;
    uint64_t *heap = s->heap;
    size_t hn = 0;
    for (size_t i = 0; i < n; i++) {
        next[i] = (uint32_t)(i + 1);
        prev[i] = i ? (uint32_t)(i - 1) : UINT32_MAX;
        rank[i] = i + 1 < n ? ni_vocab_rank(v, piece + i, 2) : NI_RANK_NONE;
        if (rank[i] != NI_RANK_NONE) heap_push(heap, &hn, (uint64_t)rank[i] << 32 | i);
    }
    /* end of the part after j, i.e. where the pair (j, next[j]) ends */
#define PAIR_END(j) (next[j] < n ? (next[next[j]] < n ? next[next[j]] : n) : n)
    while (hn) {
        uint64_t e = heap_pop(heap, &hn);
        uint32_t i = (uint32_t)e, r = (uint32_t)(e >> 32);
        /* stale entries: a pair's span only grows, so a live part whose rank is still r is
         * still that very pair */
        if (prev[i] == dead || rank[i] != r) continue;
        uint32_t j = next[i];
        next[i] = next[j];
        if (next[j] < n) prev[next[j]] = i;
        prev[j] = dead;
        rank[i] = next[i] < n ? ni_vocab_rank(v, piece + i, PAIR_END(i) - i) : NI_RANK_NONE;
        if (rank[i] != NI_RANK_NONE) heap_push(heap, &hn, (uint64_t)rank[i] << 32 | i);
        if (prev[i] != UINT32_MAX) {
            uint32_t p = prev[i];
            rank[p] = ni_vocab_rank(v, piece + p, PAIR_END(p) - p);
            if (rank[p] != NI_RANK_NONE) heap_push(heap, &hn, (uint64_t)rank[p] << 32 | p);
        }
    }
#undef PAIR_END
    size_t k = 0;
    for (uint32_t i = 0; i < n; i = next[i]) {
        size_t end = next[i] < n ? next[i] : n;
        out[k++] = token_id(v, piece + i, end - i);
    }
    return k;
}

size_t ni_bpe(const ni_vocab *v, ni_bpe_scratch *s, const uint8_t *piece, size_t n, int32_t *out) {
    return n < NI_BPE_HEAP_MIN ? ni_bpe_scan(v, s, piece, n, out)
                               : ni_bpe_heap(v, s, piece, n, out);
}
