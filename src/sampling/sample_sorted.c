/* The sort-based sampler (the seed's baseline): canonical weights of the tokens of positive
 * weight, packed with their index into one 64-bit key and sorted descending by weight (LSD
 * radix sort, stable, so ties stay in ascending index order); top-k, top-p and min-p are then
 * prefixes of the sorted row, cut at tie-group boundaries, and one uniform (draw 0) inverts the
 * CDF of the kept prefix in sorted order. */
#include "sampling/sample_internal.h"

#include <string.h>

#define IDX_BITS 23u /* NI_SAMPLE_MAX_V == 2^23 */
#define IDX_MASK ((1u << IDX_BITS) - 1u)
#define W_ONE ((uint64_t)1 << 40)
#define DIGIT_BITS 10u
#define DIGIT_BINS (1u << DIGIT_BITS)
#define PASSES 4u /* 40 key bits */

/* Packed entry: (2^40 - W) << 23 | index; ascending order = descending W, then index. */
static inline uint64_t entry_weight(uint64_t e) {
    return W_ONE - (e >> IDX_BITS);
}

/* Stable LSD radix sort of a[n] by bits 23..62; b is a buffer of n. Returns the sorted array.
 * Entries are distinct (the index is part of them), so a short row is insertion-sorted as a
 * whole, with the same result. */
static uint64_t *radix_sort(uint64_t *a, uint64_t *b, size_t n, uint32_t *hist) {
    if (n <= 64) {
        for (size_t i = 1; i < n; i++) {
            uint64_t e = a[i];
            size_t j = i;
            for (; j > 0 && a[j - 1] > e; j--) a[j] = a[j - 1];
            a[j] = e;
        }
        return a;
    }
    memset(hist, 0, PASSES * DIGIT_BINS * sizeof *hist);
    for (size_t i = 0; i < n; i++) {
        uint64_t key = a[i] >> IDX_BITS;
        for (unsigned p = 0; p < PASSES; p++)
            hist[p * DIGIT_BINS + ((key >> (p * DIGIT_BITS)) & (DIGIT_BINS - 1))]++;
    }
    for (unsigned p = 0; p < PASSES; p++) {
        uint32_t *h = hist + p * DIGIT_BINS;
        unsigned sh = IDX_BITS + p * DIGIT_BITS;
        if (h[(a[0] >> sh) & (DIGIT_BINS - 1)] == n) continue; /* one digit value: no-op */
        uint32_t sum = 0;
        for (unsigned d = 0; d < DIGIT_BINS; d++) {
            uint32_t c = h[d];
            h[d] = sum;
            sum += c;
        }
        for (size_t i = 0; i < n; i++) b[h[(a[i] >> sh) & (DIGIT_BINS - 1)]++] = a[i];
        uint64_t *t = a;
        a = b;
        b = t;
    }
    return a;
}

/* End of the tie group that starts or continues at position i. */
static inline size_t group_end(const uint64_t *s, size_t n, size_t i) {
    uint64_t key = s[i] >> IDX_BITS;
    while (i < n && (s[i] >> IDX_BITS) == key) i++;
    return i;
}

int32_t ni_sample_sorted(const float *logits, size_t V, const ni_filter *f, ni_rng_key key,
                         void *scratch) {
    ni_samp_row row;
    int32_t token;
    int st = ni_samp_prepare(&row, logits, V, f, &token);
    if (st < 0) return NI_SAMPLE_INVALID;
    if (st > 0) return token;

    uint64_t *a = ni_samp_align(scratch), *b = a + V;
    uint32_t *hist = (uint32_t *)(b + V);
    size_t n = 0;
    uint64_t total = 0;
    for (size_t i = 0; i < V; i++) {
        uint64_t w = ni_samp_weight(&row, logits[i]);
        if (w) a[n++] = ((W_ONE - w) << IDX_BITS) | (uint64_t)i;
        total += w;
    }
    ni_samp_finish_row(&row, total, n);
    const uint64_t *s = radix_sort(a, b, n, hist);

    /* Every filter keeps a prefix of s ending on a tie-group boundary. */
    size_t keep = n;
    uint64_t mass_topk = total;
    if (row.top_k) {
        keep = group_end(s, n, row.top_k - 1);
        mass_topk = 0;
        for (size_t i = 0; i < keep; i++) mass_topk += entry_weight(s[i]);
    }
    if (row.top_p_on) {
        double lim = ni_canon_topp_limit(row.top_p, mass_topk);
        uint64_t above = 0; /* mass strictly above the group at i */
        size_t i = 0;
        while (i < keep && (double)above < lim) {
            size_t e = group_end(s, keep, i);
            above += entry_weight(s[i]) * (uint64_t)(e - i);
            i = e;
        }
        keep = i;
    }
    if (row.wmin) {
        size_t i = 0;
        while (i < keep && entry_weight(s[i]) >= row.wmin) i++;
        keep = i;
    }

    uint64_t mass = 0;
    for (size_t i = 0; i < keep; i++) mass += entry_weight(s[i]);
    uint64_t target = ni_canon_target(ni_rng_uniform(key.seed, key.seq, key.step, 0), mass);
    uint64_t cum = 0;
    for (size_t i = 0; i < keep; i++) {
        cum += entry_weight(s[i]);
        if (cum > target) return (int32_t)(s[i] & IDX_MASK);
    }
    return (int32_t)(s[keep - 1] & IDX_MASK); /* not reached: target < mass */
}
