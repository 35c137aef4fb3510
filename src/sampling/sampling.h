/* Sampling one token from a row of logits, with the exact semantics of DESIGN.md §6, shared by
 * every backend. Two samplers draw from the same distribution: a sort-based one (the seed's
 * baseline) and a sorting-free rejection sampler (the CPU twin of the fused GPU kernel). */
#ifndef NI_SAMPLING_H
#define NI_SAMPLING_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The filter applied to softmax(logits / temperature):
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
 * no finite logit (nothing can be sampled). */
#define NI_SAMPLE_INVALID (-1)

/* Scratch bytes a sampler needs for a row of V logits (caller allocates once, reuses). */
size_t ni_sampler_scratch_bytes(size_t V);

/* Sort-based: sort probabilities descending, apply the filter by prefix, draw one uniform
 * (draw 0 of the key's stream) and invert the CDF of the kept set. */
int32_t ni_sample_sorted(const float *logits, size_t V, const ni_filter *f, ni_rng_key key,
                         void *scratch);

/* Rejection (sorting-free): rounds of inverse-transform sampling over the tokens above a pivot,
 * accepting a candidate once it passes the filter; a hard cap on rounds, then an exact fallback.
 * Same distribution as ni_sample_sorted. */
int32_t ni_sample_rejection(const float *logits, size_t V, const ni_filter *f, ni_rng_key key,
                            void *scratch);

/* The exact distribution both samplers draw from, in double (tests, reference): probs_out[V]
 * sums to 1, zero outside the kept set. Returns 0, or -1 for an invalid row. */
int ni_sample_distribution(double *probs_out, const float *logits, size_t V, const ni_filter *f);

/* True when the filter reduces to argmax. */
int ni_filter_is_greedy(const ni_filter *f);

#ifdef __cplusplus
}
#endif
#endif
