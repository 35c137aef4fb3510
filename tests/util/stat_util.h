/* Statistics shared by the sampler tests: a seeded generator, medians for timings, and the
 * chi-square goodness-of-fit test of sampled counts against an exact distribution. */
#ifndef NI_STAT_UTIL_H
#define NI_STAT_UTIL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

static inline uint64_t rng_next(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline float rng_normal(uint64_t *s) {
    float u1 = ((float)(rng_next(s) >> 40) + 1.0f) / 16777216.0f;
    float u2 = (float)(rng_next(s) >> 40) / 16777216.0f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}

static inline int stat_cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Sorts v in place. */
static inline double median(float *v, size_t n) {
    qsort(v, n, sizeof *v, stat_cmp_float);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Upper quantile of chi-square with d degrees of freedom at normal score z (Wilson-Hilferty). */
static inline double chi2_quantile(double d, double z) {
    double a = 2.0 / (9.0 * d);
    double t = 1.0 - a + z * sqrt(a);
    return d * t * t * t;
}

/* Chi-square of count[V] (n draws) against probs[V] over the kept tokens (probs > 0, at most
 * 64), by decreasing probability merged into bins of expected count >= 5 (a remainder below 5
 * joins the last bin). Returns -1 when no bin forms. */
static inline double binned_chi2(const double *probs, const double *count, size_t V, double n,
                                 int *kept_out, int *bins_out) {
    size_t order[64];
    int kept = 0;
    for (size_t i = 0; i < V && kept < 64; i++)
        if (probs[i] > 0.0) order[kept++] = i;
    for (int i = 1; i < kept; i++)
        for (int j = i; j > 0 && probs[order[j]] > probs[order[j - 1]]; j--) {
            size_t t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    double be[64], bo[64], e = 0, o = 0;
    int bins = 0;
    for (int i = 0; i < kept; i++) {
        e += n * probs[order[i]];
        o += count[order[i]];
        if (e >= 5.0) {
            be[bins] = e;
            bo[bins++] = o;
            e = o = 0;
        }
    }
    *kept_out = kept;
    *bins_out = bins;
    if (bins == 0) return -1.0;
    be[bins - 1] += e;
    bo[bins - 1] += o;
    double chi2 = 0;
    for (int i = 0; i < bins; i++) chi2 += (bo[i] - be[i]) * (bo[i] - be[i]) / be[i];
    return chi2;
}

#endif
