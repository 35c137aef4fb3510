/* Statistical tests of the samplers: chi-square goodness of fit of empirical frequencies
 * against the exact distribution (ni_sample_distribution) on small vocabularies, for the sort
 * sampler, the rejection sampler, its exact fallback alone and a one-round cap (rounds mixed
 * with the fallback); a two-sample chi-square between the sort and the rejection samplers; and
 * negative controls showing that the same test rejects a wrong distribution (another
 * temperature, top-p without the top-k renormalization, top-k without its ties).
 *
 * Each (case, sampler) draws N = 200k tokens (50k unoptimized) with keys (seed, seq = draw, step =
 * case), so the draws are independent Philox streams. Bins of expected count < 5 are pooled; the
 * critical value is the chi-square quantile at p = 1e-6 by the Wilson-Hilferty approximation. The
 * draws are deterministic, so a pass is reproducible, and a wrong sampler fails with
 * overwhelming probability (see the controls). */
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/philox.h"
#include "sampling/sampling.h"

/* Unoptimized builds (Debug, the sanitizer job) draw a quarter as many tokens. */
#ifdef __OPTIMIZE__
#define N_DRAWS 200000u
#else
#define N_DRAWS 50000u
#endif
#define Z_1E6 4.753424308822899 /* standard normal quantile at 1 - 1e-6 */

typedef int32_t (*sampler_fn)(const float *, size_t, const ni_filter *, ni_rng_key, void *);

static int32_t rej_exact(const float *l, size_t V, const ni_filter *f, ni_rng_key k, void *s) {
    return ni_sample_rejection_ex(l, V, f, k, s, 0, NULL);
}
static int32_t rej_one(const float *l, size_t V, const ni_filter *f, ni_rng_key k, void *s) {
    return ni_sample_rejection_ex(l, V, f, k, s, 1, NULL);
}

static const sampler_fn SAMPLERS[] = {ni_sample_sorted, ni_sample_rejection, rej_exact, rej_one};
static const char *const NAMES[] = {"sorted", "rejection", "rejection-exact", "rejection-1round"};
#define N_SAMPLERS 4

/* ---- statistics ---------------------------------------------------------------------------- */

/* Chi-square quantile at 1 - 1e-6 for df degrees of freedom (Wilson-Hilferty). */
static double chi2_crit(size_t df) {
    double d = (double)df, a = 2.0 / (9.0 * d);
    double c = 1.0 - a + Z_1E6 * sqrt(a);
    return d * c * c * c;
}

/* Bins: the tokens of positive expected probability, those expected to have fewer than 5
 * counts (at N draws) pooled into one bin, grown by the next smallest bins until it reaches 5.
 * bin[i] gets the bin of token i (-1 for p = 0); returns the number of bins. */
static size_t make_bins(int *bin, const double *p, size_t V, double N) {
    size_t *order = malloc(V * sizeof *order), n = 0;
    for (size_t i = 0; i < V; i++) {
        bin[i] = -1;
        if (p[i] > 0) order[n++] = i;
    }
    for (size_t a = 1; a < n; a++) /* insertion sort by expected count, ascending */
        for (size_t b = a; b > 0 && p[order[b]] < p[order[b - 1]]; b--) {
            size_t t = order[b];
            order[b] = order[b - 1];
            order[b - 1] = t;
        }
    size_t nb = 0, i = 0;
    if (n > 0 && p[order[0]] * N < 5) {
        double pooled = 0;
        while (i < n && (pooled < 5.0 / N || p[order[i]] * N < 5)) {
            bin[order[i]] = 0;
            pooled += p[order[i]];
            i++;
        }
        nb = 1;
    }
    for (; i < n; i++) bin[order[i]] = (int)nb++;
    free(order);
    return nb;
}

/* Goodness of fit of counts[V] (N draws) to p: returns chi2, *df. */
static double chi2_gof(const uint64_t *counts, const double *p, size_t V, uint64_t N, size_t *df) {
    int *bin = malloc(V * sizeof *bin);
    size_t nb = make_bins(bin, p, V, (double)N);
    double *e = calloc(nb + 1, sizeof *e), *o = calloc(nb + 1, sizeof *o);
    for (size_t i = 0; i < V; i++)
        if (bin[i] >= 0) {
            e[bin[i]] += p[i] * (double)N;
            o[bin[i]] += (double)counts[i];
        }
    double x = 0;
    for (size_t b = 0; b < nb; b++) x += (o[b] - e[b]) * (o[b] - e[b]) / e[b];
    *df = nb > 0 ? nb - 1 : 0;
    free(bin);
    free(e);
    free(o);
    return x;
}

/* Two-sample chi-square of counts a and b (N draws each), bins from p: returns chi2, *df. */
static double chi2_two(const uint64_t *a, const uint64_t *b, const double *p, size_t V, uint64_t N,
                       size_t *df) {
    int *bin = malloc(V * sizeof *bin);
    size_t nb = make_bins(bin, p, V, (double)N);
    double *sa = calloc(nb + 1, sizeof *sa), *sb = calloc(nb + 1, sizeof *sb);
    for (size_t i = 0; i < V; i++)
        if (bin[i] >= 0) {
            sa[bin[i]] += (double)a[i];
            sb[bin[i]] += (double)b[i];
        }
    double x = 0;
    for (size_t k = 0; k < nb; k++)
        if (sa[k] + sb[k] > 0) x += (sa[k] - sb[k]) * (sa[k] - sb[k]) / (sa[k] + sb[k]);
    *df = nb > 0 ? nb - 1 : 0;
    free(bin);
    free(sa);
    free(sb);
    return x;
}

/* ---- cases ----------------------------------------------------------------------------------- */

typedef struct {
    const char *name;
    size_t V;
    int kind; /* logits: 0 normal, 1 flat, 2 peaked, 3 ties at k, 4 -inf half, 5 quantized */
    float scale;
    ni_filter f;
} chi_case;

static const chi_case CASES[] = {
    {"plain V7", 7, 0, 1.5f, {1.0f, 0, 1.0f, 0.0f}},
    {"T0.7 V16", 16, 0, 1.0f, {0.7f, 0, 1.0f, 0.0f}},
    {"T1.5 V16", 16, 0, 1.0f, {1.5f, 0, 1.0f, 0.0f}},
    {"top-k 5 V50", 50, 0, 1.0f, {1.0f, 5, 1.0f, 0.0f}},
    {"top-p 0.8 V50", 50, 0, 1.5f, {1.0f, 0, 0.8f, 0.0f}},
    {"top-k 10 + top-p 0.7 V50", 50, 0, 1.0f, {1.0f, 10, 0.7f, 0.0f}},
    {"min-p 0.1 V50", 50, 0, 1.0f, {1.0f, 0, 1.0f, 0.1f}},
    {"flat V16 top-k 5", 16, 1, 0.0f, {1.0f, 5, 1.0f, 0.0f}},
    {"flat V16 top-p 0.5", 16, 1, 0.0f, {1.3f, 0, 0.5f, 0.0f}},
    {"peaked V257 top-p 0.95", 257, 2, 1.0f, {1.0f, 0, 0.95f, 0.0f}},
    {"ties at k V20 top-k 3", 20, 3, 0.0f, {1.0f, 3, 1.0f, 0.0f}},
    {"-inf half V33 top-k 10", 33, 4, 1.0f, {0.9f, 10, 1.0f, 0.0f}},
    {"combo V257", 257, 0, 1.5f, {0.8f, 50, 0.9f, 0.02f}},
    {"quantized V30 top-p 0.6", 30, 5, 1.0f, {1.0f, 0, 0.6f, 0.0f}},
    {"quantized V40 top-k 8 + top-p 0.8", 40, 5, 1.0f, {1.0f, 8, 0.8f, 0.0f}},
    {"V400 top-k 30 + top-p 0.9", 400, 0, 2.0f, {1.0f, 30, 0.9f, 0.0f}},
    /* flat enough for the rejection sampler's chunk pivot (the cases above start from the row) */
    {"V1000 top-k 20 + top-p 0.9", 1000, 0, 1.0f, {1.0f, 20, 0.9f, 0.0f}},
    {"quantized V1000 top-k 20 + top-p 0.8", 1000, 5, 1.0f, {1.0f, 20, 0.8f, 0.0f}},
};
#define N_CASES (sizeof CASES / sizeof CASES[0])

static void case_logits(float *l, const chi_case *c, uint64_t seed) {
    for (size_t i = 0; i < c->V; i++) l[i] = c->scale * ni_rng_normal(seed, 3, i);
    switch (c->kind) {
    case 1:
        for (size_t i = 0; i < c->V; i++) l[i] = 0.25f;
        break;
    case 2:
        l[c->V / 3] = 7.0f;
        break;
    case 3: /* 3.0, then five tokens tied at 2.0 (ranks 2-6), the rest below */
        for (size_t i = 0; i < c->V; i++) l[i] = 0.5f * (float)(i % 3) - 1.0f;
        l[4] = 3.0f;
        for (size_t i = 7; i < 17; i += 2) l[i] = 2.0f;
        break;
    case 4:
        for (size_t i = 0; i < c->V; i += 2) l[i] = -INFINITY;
        break;
    case 5:
        for (size_t i = 0; i < c->V; i++) l[i] = roundf(l[i] * 2.0f) / 2.0f;
        break;
    default:
        break;
    }
}

/* Draws N tokens with sampler s; checks each is in the support of p (a hard check). */
static void draw_counts(uint64_t *counts, const float *l, const chi_case *c, int s, uint64_t seed,
                        uint32_t step, const double *p, void *scratch) {
    memset(counts, 0, c->V * sizeof *counts);
    for (uint32_t d = 0; d < N_DRAWS; d++) {
        ni_rng_key key = {seed, d, step};
        int32_t t = SAMPLERS[s](l, c->V, &c->f, key, scratch);
        if (t < 0 || (size_t)t >= c->V || !(p[t] > 0))
            fail_msg("%s / %s: token %d outside the kept set", c->name, NAMES[s], t);
        counts[t]++;
    }
}

static void test_goodness_of_fit(void **state) {
    (void)state;
    int failures = 0;
    for (size_t ci = 0; ci < N_CASES; ci++) {
        const chi_case *c = &CASES[ci];
        float *l = malloc(c->V * sizeof *l);
        double *p = malloc(c->V * sizeof *p);
        uint64_t *counts[N_SAMPLERS];
        void *scratch = malloc(ni_sampler_scratch_bytes(c->V));
        case_logits(l, c, 100 + ci);
        assert_int_equal(ni_sample_distribution(p, l, c->V, &c->f), 0);
        size_t kept = 0;
        for (size_t i = 0; i < c->V; i++) kept += p[i] > 0;
        for (int s = 0; s < N_SAMPLERS; s++) {
            counts[s] = malloc(c->V * sizeof *counts[s]);
            draw_counts(counts[s], l, c, s, 1000 + (uint64_t)s, (uint32_t)ci, p, scratch);
            size_t df;
            double x = chi2_gof(counts[s], p, c->V, N_DRAWS, &df);
            double crit = df ? chi2_crit(df) : 0;
            int bad = df > 0 && x > crit;
            printf("[ chi2     ] %-34s %-16s kept %4zu  chi2 %8.2f  df %4zu  crit %8.2f%s\n",
                   c->name, NAMES[s], kept, x, df, crit, bad ? "  FAIL" : "");
            failures += bad;
        }
        size_t df;
        double x = chi2_two(counts[0], counts[1], p, c->V, N_DRAWS, &df);
        int bad = df > 0 && x > chi2_crit(df);
        printf("[ chi2     ] %-34s sorted~rejection two-sample chi2 %8.2f  df %4zu  crit %8.2f%s\n",
               c->name, x, df, df ? chi2_crit(df) : 0.0, bad ? "  FAIL" : "");
        failures += bad;
        for (int s = 0; s < N_SAMPLERS; s++) free(counts[s]);
        free(l);
        free(p);
        free(scratch);
    }
    assert_int_equal(failures, 0);
}

/* ---- negative controls: the same machinery rejects wrong distributions ---------------------- */

/* Top-k then top-p without renormalizing: top-p measured against the whole mass (the "joint"
 * order some libraries use). */
static void joint_topk_topp(double *out, const float *l, size_t V, const ni_filter *f) {
    ni_filter k_only = {f->temperature, f->top_k, 1.0f, 0.0f}, plain = *f;
    plain.top_k = 0;
    double *pk = malloc(V * sizeof *pk), *pp = malloc(V * sizeof *pp);
    ni_sample_distribution(pk, l, V, &k_only);
    ni_sample_distribution(pp, l, V, &plain);
    double z = 0;
    for (size_t i = 0; i < V; i++) z += (pk[i] > 0 && pp[i] > 0) ? pk[i] : 0;
    for (size_t i = 0; i < V; i++) out[i] = (pk[i] > 0 && pp[i] > 0) ? pk[i] / z : 0;
    free(pk);
    free(pp);
}

/* Tokens outside a wrong distribution keep a tiny probability so that draws there count. */
static void normalize(double *q, size_t V) {
    double z = 0;
    for (size_t i = 0; i < V; i++) z += q[i];
    for (size_t i = 0; i < V; i++) q[i] /= z;
}

static void test_controls_reject(void **state) {
    (void)state;
    for (int s = 0; s < 2; s++) {
        /* 1. temperature 0.7 draws against the T = 0.8 distribution */
        const chi_case *c = &CASES[1];
        float l[64];
        double p[64], q[64];
        uint64_t counts[64], counts2[64];
        void *scratch = malloc(ni_sampler_scratch_bytes(64));
        case_logits(l, c, 101);
        assert_int_equal(ni_sample_distribution(p, l, c->V, &c->f), 0);
        ni_filter other = c->f;
        other.temperature = 0.8f;
        assert_int_equal(ni_sample_distribution(q, l, c->V, &other), 0);
        draw_counts(counts, l, c, s, 77, 1, p, scratch);
        size_t df;
        double x = chi2_gof(counts, q, c->V, N_DRAWS, &df);
        printf("[ control  ] %s: T 0.7 draws vs T 0.8: chi2 %.1f crit %.1f\n", NAMES[s], x,
               chi2_crit(df));
        assert_true(x > chi2_crit(df));

        /* 2. two-sample: T 0.7 draws vs T 1.5 draws of the same logits */
        chi_case hot = *c;
        hot.f.temperature = 1.5f;
        double ph[64];
        assert_int_equal(ni_sample_distribution(ph, l, c->V, &hot.f), 0);
        draw_counts(counts2, l, &hot, s, 78, 1, ph, scratch);
        x = chi2_two(counts, counts2, p, c->V, N_DRAWS, &df);
        printf("[ control  ] %s: two-sample T 0.7 vs T 1.5: chi2 %.1f crit %.1f\n", NAMES[s], x,
               chi2_crit(df));
        assert_true(x > chi2_crit(df));

        /* 3. top-k + top-p draws against top-p applied without the top-k renormalization */
        c = &CASES[5];
        case_logits(l, c, 105);
        assert_int_equal(ni_sample_distribution(p, l, c->V, &c->f), 0);
        joint_topk_topp(q, l, c->V, &c->f);
        size_t kp = 0, kq = 0;
        for (size_t i = 0; i < c->V; i++) {
            kp += p[i] > 0;
            kq += q[i] > 0;
        }
        assert_true(kp < kq); /* renormalized, top-p keeps fewer: the case discriminates */
        draw_counts(counts, l, c, s, 79, 2, p, scratch);
        for (size_t i = 0; i < c->V; i++) q[i] = q[i] > 0 ? q[i] : (p[i] > 0 ? 1e-9 : 0);
        normalize(q, c->V);
        x = chi2_gof(counts, q, c->V, N_DRAWS, &df);
        printf("[ control  ] %s: top-k+top-p vs unrenormalized: chi2 %.3g crit %.1f\n", NAMES[s], x,
               chi2_crit(df));
        assert_true(x > chi2_crit(df));

        /* 4. ties at the k-th value: draws against a strict top-k (first k by index) */
        c = &CASES[10];
        case_logits(l, c, 110);
        assert_int_equal(ni_sample_distribution(p, l, c->V, &c->f), 0);
        size_t kept = 0;
        for (size_t i = 0; i < c->V; i++) kept += p[i] > 0;
        assert_int_equal(kept, 6); /* 3.0 and all five 2.0s, though k = 3 */
        draw_counts(counts, l, c, s, 80, 3, p, scratch);
        memcpy(q, p, c->V * sizeof *q);
        for (size_t i = 11; i < 17; i += 2) q[i] = 1e-9; /* strict top-3: 4, 7, 9 */
        normalize(q, c->V);
        x = chi2_gof(counts, q, c->V, N_DRAWS, &df);
        printf("[ control  ] %s: ties at k vs strict top-k: chi2 %.3g crit %.1f\n", NAMES[s], x,
               chi2_crit(df));
        assert_true(x > chi2_crit(df));
        free(scratch);
    }
}

/* The critical values against exact chi-square quantiles at p = 1e-6 (df 1: 23.93, 10: 46.86,
 * 100: 182.13, 1000: 1227.15); Wilson-Hilferty errs on the large (conservative) side. */
static void test_crit_values(void **state) {
    (void)state;
    assert_true(chi2_crit(1) > 23.9 && chi2_crit(1) < 28.0);
    assert_true(chi2_crit(10) > 46.8 && chi2_crit(10) < 48.5);
    assert_true(fabs(chi2_crit(100) - 182.13) < 1.0);
    assert_true(fabs(chi2_crit(1000) - 1227.15) < 1.0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crit_values),
        cmocka_unit_test(test_goodness_of_fit),
        cmocka_unit_test(test_controls_reject),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
