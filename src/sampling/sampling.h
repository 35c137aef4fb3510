/* Sampling one token from a row of logits, with the exact semantics of DESIGN.md §6, shared by
 * every backend. Two samplers draw from the same distribution: a sort-based one (the seed's
 * baseline) and a sorting-free rejection sampler (the CPU twin of the fused GPU kernel). This
 * header also holds the canonical arithmetic (inline, host and device) that fixes every
 * kept-set decision bit for bit, so that a GPU kernel keeps exactly the tokens the CPU keeps.
 *
 * THE CANONICAL RULE (every implementation must compute exactly this):
 *
 * 1. The row is invalid (NI_SAMPLE_INVALID) when V == 0, V > NI_SAMPLE_MAX_V, a logit is NaN or
 *    +inf, no logit is finite (all -inf), or temperature, top_p or min_p is NaN. +inf logits are
 *    rejected because softmax is undefined there (inf - inf); -inf logits are zero-prob tokens.
 * 2. Greedy (ni_filter_is_greedy): temperature <= 0, top_k == 1, or log2(e)/temperature
 *    overflows f32 (ni_canon_temp_greedy: temperature < ~4.2e-39). Result: argmax of the
 *    logits, lowest index on ties.
 * 3. Otherwise m = max logit, s = ni_canon_scale(temperature) = (float)(log2(e) / (double)T)
 *    (T = +inf gives s = 0: uniform over the finite logits), t_i = (logit_i - m) * s in f32
 *    (IEEE, round to nearest, no fast-math, no flush to zero), and the canonical weight
 *    W_i = ni_canon_weight(t_i), an integer in [0, 2^40], W = 2^40 exactly for the max:
 *    W_i / 2^40 is 2^t_i = exp((logit_i - m) / T) within 4e-9 relative plus one unit of the
 *    40-bit fixed point (t is first cut to 24 fraction bits, which costs up to 4e-8 relative
 *    for |t| < 1). The probability of token i is W_i / sum_j W_j: softmax(logits / T) to the
 *    accuracy of an f32 softmax (the f32 rounding of t dominates), with tokens below 2^-40 of
 *    the max at zero probability.
 *    W is computed with integer arithmetic only, so CPU and GPU get the same bits (unlike
 *    expf, whose last bit differs between libm and CUDA), and sums of W are exact and
 *    independent of summation order (uint64, V <= 2^23 keeps them below 2^63).
 * 4. Every comparison is on W (equal W = tied, kept or dropped together). With
 *    S_gt(i) = sum of W_j over tokens with W_j > W_i:
 *    - top-k (active for 2 <= top_k < V): K = {i : #{j : W_j > W_i} < top_k}; M_K = sum of W
 *      over K (M_K = sum of all W when top-k is off);
 *    - top-p (active for top_p < 1): i in K is kept iff S_gt(i) == 0 or
 *      (double)S_gt(i) < (double)top_p * (double)M_K  (uint64 -> double rounds to nearest;
 *      ni_canon_topp_limit gives the equivalent single threshold). top_p <= 0 keeps the
 *      most probable tokens only;
 *    - min-p (active for min_p > 0): kept iff W_i >= ni_canon_minp_weight(min_p) =
 *      ceil(min(min_p, 1) * 2^40), i.e. p_i >= min_p * p_max exactly in the canonical weights.
 *    The kept set is the intersection, always of the form {i : W_i >= theta}, and always holds
 *    the most probable tokens (W = 2^40).
 * 5. A sample is drawn with probability W_i / (sum of W over the kept set). A uniform u (24
 *    random bits) selects target = ni_canon_target(u, M) = floor(u * 2^24 * M / 2^24), an
 *    exact integer in [0, M); the sampler returns the first token, in its own fixed order,
 *    whose running sum of W exceeds target. The order (sorted or index order) changes which
 *    token a given u selects but not the distribution; tokens with W == 0 are never returned.
 */
#ifndef NI_SAMPLING_H
#define NI_SAMPLING_H

#include <stddef.h>
#include <stdint.h>

#include "common/philox.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The filter applied to softmax(logits / temperature) (precise form: the rule above):
 * - temperature <= 0 or top_k == 1: greedy (argmax, lowest index on ties);
 * - top_k (0 = off, >= V = off): keep i iff fewer than top_k probs are strictly larger;
 * - top_p (>= 1 = off): on the renormalized top-k distribution, keep i iff the mass of strictly
 *   larger probs is < top_p;
 * - min_p (<= 0 = off): keep i iff p_i >= min_p * max_j p_j. */
typedef struct {
    float temperature;
    size_t top_k;
    float top_p;
    float min_p;
} ni_filter;

/* The random stream of one draw: (seed, seq, step) as in common/philox.h. */
typedef struct {
    uint64_t seed;
    uint64_t seq;
    uint32_t step;
} ni_rng_key;

/* Result of a sampler: a token id in [0, V), or NI_SAMPLE_INVALID when the row holds a NaN or
 * +inf, no finite logit, or the filter holds a NaN (nothing can be sampled). */
#define NI_SAMPLE_INVALID (-1)

/* Largest vocabulary: sums of 2^40-scaled weights stay below 2^63. */
#define NI_SAMPLE_MAX_V ((size_t)1 << 23)

/* Rounds of the rejection sampler before its exact fallback. */
#define NI_REJECTION_MAX_ROUNDS 32u

/* The rejection sampler's first pivot with top-k on (2 <= k <= NI_REJECTION_CHUNKS): the row's
 * index range cut into this many chunks of ceil(V / NI_REJECTION_CHUNKS) tokens (the last ones
 * shorter or empty); the k-th largest of the chunks' largest weights bounds the top-k threshold
 * from below (sample_rejection.c). A function of V alone, shared by the CPU and the GPU. */
#define NI_REJECTION_CHUNKS 64u

/* ... skipped when the k largest chunk maxima, summed (S_k, a lower bound of the top-k mass),
 * hold at least 1 / NI_REJECTION_PIVOT_DIV of the row's mass M (S_k * DIV >= M, exact integers).
 * DIV = 1: the pivot is taken unless those k tokens are the whole mass. It pays on peaked rows
 * too: from the whole row they need up to five rounds and, when a candidate's top-p test needs
 * the top-k mass, a selection over the whole row; from the pivot, one or two rounds and a
 * selection over a few dozen tokens (batch of 64 peaked rows on an H200: 76 us with DIV = 4,
 * 49 us with 1). A build option only for such measurements. */
#ifndef NI_REJECTION_PIVOT_DIV
#define NI_REJECTION_PIVOT_DIV 1u
#endif

/* Scratch bytes a sampler needs for a row of V logits (caller allocates once, reuses; any
 * alignment of malloc's is enough). The same size serves both samplers. */
size_t ni_sampler_scratch_bytes(size_t V);

/* Sort-based: sort probabilities descending, apply the filter by prefix, draw one uniform
 * (draw 0 of the key's stream) and invert the CDF of the kept set in sorted order (descending
 * W, ascending index among ties). */
int32_t ni_sample_sorted(const float *logits, size_t V, const ni_filter *f, ni_rng_key key,
                         void *scratch);

/* Rejection (sorting-free): rounds of inverse-transform sampling over the tokens above a pivot
 * (round r uses draw r), accepting a candidate once it passes the filter; after
 * NI_REJECTION_MAX_ROUNDS rounds an exact selection (radix select, no sort) of the kept
 * threshold and one draw (the next draw index). Same distribution as ni_sample_sorted. */
int32_t ni_sample_rejection(const float *logits, size_t V, const ni_filter *f, ni_rng_key key,
                            void *scratch);

/* What one rejection sample did (tests, benchmarks). */
typedef struct {
    uint32_t rounds;   /* rejection rounds run (candidates drawn) */
    int fallback;      /* 1: the exact fallback produced the token */
    int topk_mass_sel; /* 1: the top-k mass needed a selection pass (radix select) */
    int chunk_pivot;   /* 1: the rounds started from the chunk-maxima pivot, not from 0 */
    size_t n_above0;   /* tokens above the first pivot (W > pivot) when round 0 drew */
} ni_rejection_stats;

/* ni_sample_rejection with a chosen round cap (0 = the exact method alone) and optional stats. */
int32_t ni_sample_rejection_ex(const float *logits, size_t V, const ni_filter *f, ni_rng_key key,
                               void *scratch, uint32_t max_rounds, ni_rejection_stats *stats);

/* The exact distribution both samplers draw from, in double (tests, reference): probs_out[V]
 * sums to 1, zero outside the kept set (W_i / sum of kept W). Returns 0, or -1 for an invalid
 * row (probs_out then all zero) or when memory runs out. */
int ni_sample_distribution(double *probs_out, const float *logits, size_t V, const ni_filter *f);

/* True when the filter reduces to argmax (rule 2; a NaN temperature is not greedy but
 * invalid). */
int ni_filter_is_greedy(const ni_filter *f);

#ifdef __cplusplus
}
#endif

/* ---- canonical arithmetic (rule 3-5), identical on host and device ---------------------- */

/* Greedy by temperature: T <= 0, or log2(e) / T overflows f32 (T < ~4.2e-39). A NaN T is
 * not greedy (the row is invalid). */
NI_HD int ni_canon_temp_greedy(float temperature) {
    return temperature <= 0.0f ||
           1.4426950408889634074 / (double)temperature > 3.4028234663852886e38;
}

/* log2(e) / temperature as f32, for a temperature that is neither greedy nor NaN. T = +inf
 * gives 0: every token whose logit is finitely below the max gets t = 0 (uniform). */
NI_HD float ni_canon_scale(float temperature) {
    return (float)(1.4426950408889634074 / (double)temperature);
}

/* The canonical weight of a token at base-2 exponent t = (logit - max) * scale <= 0: about
 * 2^t * 2^40, by integer arithmetic only. t is truncated to 24 fraction bits; q = -t in that
 * fixed point splits into n = q >> 24, j = the next 4 bits and r = the low 20 bits, and
 * 2^(-q/2^24) = 2^-n * 2^(-j/16) * exp(-z), z = r ln2 / 2^24 < ln2/16 in Q31: a table of
 * 2^(-j/16) in Q31 (rounded) times the nested Taylor form 1 - z(1 - z/2(1 - z/3(1 - z/4)))
 * with truncating Q31 steps (2^31/k rounded). Relative error < 4e-9; the result is
 * non-increasing in q, checked exhaustively by the tests. Every product is 32 x 32 -> 64 bits.
 * t <= -40, -inf and NaN give 0. */
NI_HD uint64_t ni_canon_weight(float t) {
    if (!(t > -40.0f)) return 0;
    const uint32_t tab[16] = {2147483648u, 2056437387u, 1969251188u, 1885761398u,
                              1805811301u, 1729250827u, 1655936265u, 1585730000u,
                              1518500250u, 1454120821u, 1392470869u, 1333434672u,
                              1276901417u, 1222764986u, 1170923762u, 1121280436u};
    const uint32_t one = 1u << 31;
    uint32_t q = (uint32_t)(-(int32_t)(t * 16777216.0f)); /* t * 2^24 is exact */
    uint32_t n = q >> 24, j = (q >> 20) & 15u, r = q & 0xFFFFFu;
    uint32_t z = (uint32_t)(((uint64_t)r * 1488522236u) >> 24);      /* ln2 * 2^31 */
    uint32_t p = one - (uint32_t)(((uint64_t)z * 536870912u) >> 31); /* 1 - z/4 */
    uint32_t zp = (uint32_t)(((uint64_t)z * p) >> 31);
    p = one - (uint32_t)(((uint64_t)zp * 715827883u) >> 31); /* 1 - z/3 (.) */
    zp = (uint32_t)(((uint64_t)z * p) >> 31);
    p = one - (uint32_t)(((uint64_t)zp * 1073741824u) >> 31); /* 1 - z/2 (.) */
    p = one - (uint32_t)(((uint64_t)z * p) >> 31);            /* 1 - z (.) */
    uint32_t v = (uint32_t)(((uint64_t)tab[j] * p) >> 31);
    return ((uint64_t)v << 9) >> n;
}

/* The min-p weight threshold: ceil(min(min_p, 1) * 2^40); 0 (off) for min_p <= 0. */
NI_HD uint64_t ni_canon_minp_weight(float min_p) {
    if (!(min_p > 0.0f)) return 0;
    double x = (min_p >= 1.0f ? 1.0 : (double)min_p) * 1099511627776.0; /* exact */
    uint64_t w = (uint64_t)x;
    return w + ((double)w < x ? 1u : 0u);
}

/* Top-p keeps i iff (double)S_gt(i) < ni_canon_topp_limit(top_p, M_K): the same decision as
 * "S_gt == 0 or (double)S_gt < (double)top_p * (double)M_K" (S_gt is an integer). */
NI_HD double ni_canon_topp_limit(float top_p, uint64_t mass_topk) {
    double lim = (double)top_p * (double)mass_topk;
    return lim > 0.5 ? lim : 0.5;
}

/* floor(U * M / 2^24) with U = u * 2^24 (the draw's 24 bits), exactly: the inverse-CDF target
 * in [0, M) for a total mass M < 2^63. */
NI_HD uint64_t ni_canon_target(float u, uint64_t mass) {
    uint64_t U = (uint64_t)(u * 16777216.0f);
    return ((U * (mass >> 32)) << 8) + ((U * (mass & 0xFFFFFFFFu)) >> 24);
}

#endif
