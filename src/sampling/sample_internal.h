/* Helpers shared by the CPU samplers (sample_filter.c holds them): the row preparation of the
 * canonical rule (validation, greedy, filter parameters), the canonical weights, the radix
 * select that finds kept thresholds without sorting, and the inverse-CDF pick. Not part of the
 * engine's interface; sampling.h is. */
#ifndef NI_SAMPLE_INTERNAL_H
#define NI_SAMPLE_INTERNAL_H

#include "sampling/sampling.h"

/* Radix select works on 8-bit digits: 6 levels cover weights up to 2^48 > 2^40. */
#define NI_SAMP_RADIX_BINS 256u
#define NI_SAMP_RADIX_LEVELS 6u

/* One row after preparation: the filter in the canonical weight domain. */
typedef struct {
    size_t V;
    float max;    /* largest logit */
    float scale;  /* ni_canon_scale(temperature) */
    size_t top_k; /* active top-k (2 <= top_k < tokens of positive weight), else 0 */
    int top_p_on; /* top_p < 1 */
    float top_p;
    uint64_t wmin;  /* min-p weight threshold, 0 when off */
    uint64_t total; /* sum of all W (after ni_samp_weights) */
    size_t n_pos;   /* tokens with W > 0 (after ni_samp_weights) */
} ni_samp_row;

/* Validates the row and the filter (rule 1) and finds the greedy token (rule 2). Returns -1
 * for an invalid row, 1 when the filter is greedy (*token = argmax), 0 when the caller must
 * sample (row filled, weights not yet computed). */
int ni_samp_prepare(ni_samp_row *row, const float *logits, size_t V, const ni_filter *f,
                    int32_t *token);

/* W of one logit of a prepared row (rule 3). */
static inline uint64_t ni_samp_weight(const ni_samp_row *row, float logit) {
    return ni_canon_weight((logit - row->max) * row->scale);
}

/* Fills W[V], sets row->total and row->n_pos, and turns top-k off when it keeps every token
 * of positive weight (the kept set then differs only in zero-probability tokens). */
void ni_samp_weights(uint64_t *W, ni_samp_row *row, const float *logits);
/* Called by samplers that compute weights themselves, once total and n_pos are known. */
void ni_samp_finish_row(ni_samp_row *row, uint64_t total, size_t n_pos);

/* The largest w with acc(w) reaching the goal, acc(w) summing over the values >= w of vals[n]
 * either 1 (by_mass == 0: count >= kgoal, so w is the kgoal-th largest value) or the value
 * (by_mass == 1: (double)mass >= mgoal). The goal must be reachable at w = 0. Six passes
 * over vals; hist holds NI_SAMP_RADIX_BINS entries. */
uint64_t ni_samp_radix_select(const uint64_t *vals, size_t n, int by_mass, uint64_t kgoal,
                              double mgoal, uint64_t *hist);

/* Sum of the values >= lo. */
uint64_t ni_samp_mass_ge(const uint64_t *vals, size_t n, uint64_t lo);

/* The exact kept threshold theta (kept = {W >= theta}) of a row with weights W, by radix
 * select; *mass_kept gets the kept mass. */
uint64_t ni_samp_kept_threshold(const uint64_t *W, const ni_samp_row *row, uint64_t *hist,
                                uint64_t *mass_kept);

/* Inverse CDF in array order over the entries of W[n] with W >= lo (lo = 0 counts as 1: zero
 * weights are never picked): the position of the first whose running sum exceeds target
 * (target < their mass). */
size_t ni_samp_pick(const uint64_t *W, size_t n, uint64_t lo, uint64_t target);

/* The scratch pointer aligned up to 64 bytes (ni_sampler_scratch_bytes leaves room). */
static inline void *ni_samp_align(void *p) {
    return (void *)(((uintptr_t)p + 63u) & ~(uintptr_t)63u);
}

#endif
