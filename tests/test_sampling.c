/* Sampler unit tests: the canonical weight (exact points, exhaustive monotonicity, accuracy),
 * the exact distribution against a brute-force O(V^2) reading of the rule in sampling.h,
 * greedy and invalid rows, edge cases (V = 1, k >= V, tiny p, -inf), bitwise reproducibility,
 * hard checks that no sampler ever returns a token outside the kept set, the rejection
 * sampler's paths, and a timing print at GPT-2's vocabulary (no timing asserts). */
#include "test_util.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/philox.h"
#include "sampling/sampling.h"

/* Unoptimized builds (Debug, the sanitizer job) do a quarter of the long loops. */
#ifdef __OPTIMIZE__
#define WORK_DIV 1
#else
#define WORK_DIV 4
#endif

typedef int32_t (*sampler_fn)(const float *, size_t, const ni_filter *, ni_rng_key, void *);

static int32_t rej_exact(const float *l, size_t V, const ni_filter *f, ni_rng_key k, void *s) {
    return ni_sample_rejection_ex(l, V, f, k, s, 0, NULL);
}
static int32_t rej_one(const float *l, size_t V, const ni_filter *f, ni_rng_key k, void *s) {
    return ni_sample_rejection_ex(l, V, f, k, s, 1, NULL);
}

static const sampler_fn SAMPLERS[] = {ni_sample_sorted, ni_sample_rejection, rej_exact, rej_one};
static const char *const SAMPLER_NAMES[] = {"sorted", "rejection", "rejection-exact",
                                            "rejection-1round"};
#define N_SAMPLERS 4

static ni_filter filt(float T, size_t k, float p, float minp) {
    ni_filter f = {T, k, p, minp};
    return f;
}

/* ---- brute-force reference: the rule of sampling.h read literally, O(V^2) ---------------- */

static int ref_distribution(double *out, const float *l, size_t V, const ni_filter *f) {
    for (size_t i = 0; i < V; i++) out[i] = 0;
    if (V == 0 || isnan(f->temperature) || isnan(f->top_p) || isnan(f->min_p)) return -1;
    float m = -INFINITY;
    size_t arg = 0;
    int any = 0;
    for (size_t i = 0; i < V; i++) {
        if (isnan(l[i]) || l[i] == INFINITY) return -1;
        if (l[i] > m) {
            m = l[i];
            arg = i;
            any = 1;
        }
    }
    if (!any) return -1;
    double sd = 1.4426950408889634 / (double)f->temperature;
    if (f->temperature <= 0 || f->top_k == 1 || sd > FLT_MAX) {
        out[arg] = 1;
        return 0;
    }
    float s = (float)sd;
    uint64_t *W = malloc(V * sizeof *W);
    int *keep = malloc(V * sizeof *keep);
    for (size_t i = 0; i < V; i++) W[i] = ni_canon_weight((l[i] - m) * s);
    int topk = f->top_k >= 2 && f->top_k < V;
    uint64_t mk = 0;
    for (size_t i = 0; i < V; i++) {
        size_t gt = 0;
        for (size_t j = 0; j < V; j++) gt += W[j] > W[i];
        keep[i] = !topk || gt < f->top_k;
        if (keep[i]) mk += W[i];
    }
    uint64_t wmin = 0;
    if (f->min_p > 0) wmin = (uint64_t)ceil((f->min_p > 1 ? 1.0 : (double)f->min_p) * 0x1p40);
    int *keep2 = malloc(V * sizeof *keep2);
    for (size_t i = 0; i < V; i++) {
        keep2[i] = keep[i];
        if (!keep[i]) continue;
        if (f->top_p < 1) {
            uint64_t sgt = 0;
            for (size_t j = 0; j < V; j++)
                if (keep[j] && W[j] > W[i]) sgt += W[j];
            if (!(sgt == 0 || (double)sgt < (double)f->top_p * (double)mk)) keep2[i] = 0;
        }
        if (W[i] < wmin) keep2[i] = 0;
    }
    uint64_t mass = 0;
    for (size_t i = 0; i < V; i++)
        if (keep2[i]) mass += W[i];
    for (size_t i = 0; i < V; i++) out[i] = keep2[i] ? (double)W[i] / (double)mass : 0;
    free(W);
    free(keep);
    free(keep2);
    return 0;
}

/* Random logits: normal * scale, optionally quantized to multiples of q (ties) and with a
 * fraction of -inf entries. */
static void make_logits(float *l, size_t V, uint64_t seed, float scale, float q, double neginf) {
    for (size_t i = 0; i < V; i++) {
        float x = ni_rng_normal(seed, 7, i) * scale;
        if (q > 0) x = roundf(x / q) * q;
        if (ni_rng_uniform(seed, i, 99, 0) < neginf) x = -INFINITY;
        l[i] = x;
    }
}

/* ---- canonical arithmetic ------------------------------------------------------------------ */

static void test_canon_weight_points(void **state) {
    (void)state;
    assert_int_equal(ni_canon_weight(0.0f), (uint64_t)1 << 40);
    assert_int_equal(ni_canon_weight(-0.0f), (uint64_t)1 << 40);
    for (int n = 1; n < 40; n++)
        assert_int_equal(ni_canon_weight((float)-n), (uint64_t)1 << (40 - n));
    assert_int_equal(ni_canon_weight(-40.0f), 0);
    assert_int_equal(ni_canon_weight(-1000.0f), 0);
    assert_int_equal(ni_canon_weight(-INFINITY), 0);
    assert_int_equal(ni_canon_weight(NAN), 0);
    assert_true(ni_canon_weight(nextafterf(-40.0f, 0.0f)) >= 1);
}

/* The exact bits of the canonical weight are part of the contract (a GPU kernel must match
 * them): a checksum over 2^24 + 100k inputs and a few values. A change to ni_canon_weight that
 * stays accurate still fails here, on purpose: update the GPU twin and these constants
 * together. */
static void test_canon_weight_golden(void **state) {
    (void)state;
    uint64_t h = 1469598103934665603ull; /* FNV-1a over the little-endian bytes of each W */
    for (uint32_t i = 0; i < (1u << 24) + 100000u; i++) {
        float t = i < (1u << 24) ? -(float)i * 0x1p-24f
                                 : -40.0f * ni_rng_uniform(9, i - (1u << 24), 0, 0);
        uint64_t w = ni_canon_weight(t);
        for (int b = 0; b < 8; b++) {
            h ^= (w >> (8 * b)) & 255u;
            h *= 1099511628211ull;
        }
    }
    assert_int_equal(h, 0x58efba6c7ba6ba0eull);
    assert_int_equal(ni_canon_weight(-0.5f), 777472128000ull);
    assert_int_equal(ni_canon_weight(-1e-3f), 1098749778432ull);
    assert_int_equal(ni_canon_weight(-10.3f), 872149254ull);
    assert_int_equal(ni_canon_weight(-39.9f), 1ull);
    assert_int_equal(ni_canon_weight(-0.0625f), 1052895942144ull);
    assert_int_equal(ni_canon_weight(-23.5825329f), 87528ull);
}

/* The exponential's fraction part over all 2^24 inputs: non-increasing (the samplers' tie and
 * order semantics rely on W being monotone in the logit) and within 3e-9 of 2^t. */
static void test_canon_weight_exhaustive(void **state) {
    (void)state;
    uint64_t prev = ni_canon_weight(0.0f);
    long violations = 0;
    double max_rel = 0;
    for (uint32_t r = 1; r < (1u << 24); r++) {
        float t = -(float)r * 0x1p-24f; /* exact */
        uint64_t w = ni_canon_weight(t);
        violations += w > prev;
        prev = w;
        if ((r & 255u) == 0) {
            double ex = ldexp(exp2((double)t), 40);
            double rel = fabs((double)w - ex) / ex;
            if (rel > max_rel) max_rel = rel;
        }
    }
    assert_int_equal(violations, 0);
    assert_true(prev >= (uint64_t)1 << 39); /* joins W(-1) = 2^39 from above */
    assert_true(max_rel < 3e-9);
}

/* Arbitrary t: monotone across the integer boundaries, within 5e-8 relative (+1) of 2^t. */
static void test_canon_weight_accuracy(void **state) {
    (void)state;
    for (int n = 1; n < 40; n++) {
        float t = (float)-n;
        uint64_t prev = ni_canon_weight(t);
        for (int s = 0; s < 2000; s++) {
            t = nextafterf(t, 0.0f);
            uint64_t w = ni_canon_weight(t);
            assert_true(w >= prev);
            prev = w;
        }
    }
    for (uint64_t i = 0; i < 200000; i++) {
        float a = -40.0f * ni_rng_uniform(5, i, 0, 0), b = -40.0f * ni_rng_uniform(5, i, 0, 1);
        uint64_t wa = ni_canon_weight(a), wb = ni_canon_weight(b);
        if (a < b) assert_true(wa <= wb);
        if (a > b) assert_true(wa >= wb);
        double ex = ldexp(exp2((double)a), 40);
        assert_true(fabs((double)wa - ex) <= 5e-8 * ex + 1.0);
    }
}

static void test_canon_helpers(void **state) {
    (void)state;
    assert_true(ni_canon_temp_greedy(0.0f));
    assert_true(ni_canon_temp_greedy(-1.0f));
    assert_true(ni_canon_temp_greedy(-INFINITY));
    assert_true(ni_canon_temp_greedy(1e-40f)); /* log2(e)/T overflows f32 */
    assert_false(ni_canon_temp_greedy(1e-30f));
    assert_false(ni_canon_temp_greedy(NAN));
    assert_false(ni_canon_temp_greedy(INFINITY));
    assert_true(ni_canon_scale(1.0f) == (float)1.4426950408889634);
    assert_true(ni_canon_scale(INFINITY) == 0.0f);
    assert_true(ni_canon_scale(2.0f) == (float)(1.4426950408889634 / 2.0));
    assert_int_equal(ni_canon_minp_weight(0.0f), 0);
    assert_int_equal(ni_canon_minp_weight(-0.5f), 0);
    assert_int_equal(ni_canon_minp_weight(0.5f), (uint64_t)1 << 39);
    assert_int_equal(ni_canon_minp_weight(1.0f), (uint64_t)1 << 40);
    assert_int_equal(ni_canon_minp_weight(7.0f), (uint64_t)1 << 40);
    assert_int_equal(ni_canon_minp_weight(0.1f), (uint64_t)ceil((double)0.1f * 0x1p40));
    assert_true(ni_canon_topp_limit(0.0f, 1000) == 0.5);
    assert_true(ni_canon_topp_limit(-1.0f, 1000) == 0.5);
    assert_true(ni_canon_topp_limit(0.5f, (uint64_t)1 << 41) == 0x1p40);
    /* target: exact floor(U * M / 2^24), always < M */
    for (uint64_t i = 0; i < 100000; i++) {
        float u = ni_rng_uniform(11, i, 0, 0);
        uint64_t M = ((uint64_t)ni_philox4x32((uint32_t)i, 1, 2, 3, 4, 5).v[1] << 31) |
                     ni_philox4x32((uint32_t)i, 1, 2, 3, 4, 5).v[2];
        M = (M >> (i % 40)) + 1;
        unsigned __int128 U = (unsigned __int128)(uint64_t)(u * 0x1p24f);
        uint64_t want = (uint64_t)((U * M) >> 24);
        assert_int_equal(ni_canon_target(u, M), want);
        assert_true(want < M);
    }
    assert_int_equal(ni_canon_target(0.0f, 12345), 0);
    assert_int_equal(ni_canon_target(1.0f - 0x1p-24f, 1), 0);
}

/* ---- the exact distribution ------------------------------------------------------------------ */

static const float TEMPS[] = {0.3f, 0.7f, 1.0f, 1.5f, 3.0f, 50.0f};
static const float TOPPS[] = {1.0f, 0.95f, 0.9f, 0.5f, 0.2f, 1e-6f, 0.0f, -1.0f, 2.0f};
static const float MINPS[] = {0.0f, 0.0f, 0.05f, 0.3f, 1.0f, 2.0f, -1.0f};

static ni_filter random_filter(uint64_t seed, size_t V) {
    uint32_t a = ni_philox4x32((uint32_t)seed, 77, 0, 0, 1, 2).v[0];
    uint32_t b = ni_philox4x32((uint32_t)seed, 77, 0, 0, 1, 2).v[1];
    size_t ks[] = {0, 2, 3, 5, V > 1 ? V - 1 : 0, V, V + 3, 10};
    ni_filter f = {TEMPS[a % 6], ks[(a >> 8) % 8], TOPPS[(a >> 16) % 9], MINPS[b % 7]};
    if ((b >> 8) % 3 == 0) f.top_p = 1.0f; /* plenty of top-k only */
    return f;
}

static void test_distribution_bruteforce(void **state) {
    (void)state;
    static const size_t Vs[] = {1, 2, 3, 5, 7, 13, 50, 100};
    double *ref = malloc(100 * sizeof *ref), *got = malloc(100 * sizeof *got);
    float *l = malloc(100 * sizeof *l);
    int n_nontrivial = 0;
    for (uint64_t it = 0; it < 3000; it++) {
        size_t V = Vs[it % 8];
        float q = (it % 3 == 0) ? 0.0f : (it % 3 == 1 ? 0.5f : 1.0f);
        make_logits(l, V, it, 1.5f, q, (it % 5 == 0) ? 0.3 : 0.0);
        ni_filter f = random_filter(it, V);
        int rr = ref_distribution(ref, l, V, &f), rg = ni_sample_distribution(got, l, V, &f);
        assert_int_equal(rr, rg);
        if (rr) continue;
        double sum = 0;
        size_t kept = 0;
        for (size_t i = 0; i < V; i++) {
            assert_true((ref[i] > 0) == (got[i] > 0));
            assert_true(fabs(ref[i] - got[i]) <= 1e-15);
            sum += got[i];
            kept += got[i] > 0;
        }
        assert_true(fabs(sum - 1.0) < 1e-12);
        n_nontrivial += kept > 1 && kept < V;
    }
    assert_true(n_nontrivial > 500); /* the filters did cut */
    free(ref);
    free(got);
    free(l);
}

/* Without a filter the distribution is softmax(logits / T) (double reference). */
static void test_distribution_is_softmax(void **state) {
    (void)state;
    size_t V = 1000;
    float *l = malloc(V * sizeof *l);
    double *p = malloc(V * sizeof *p);
    static const float Ts[] = {0.5f, 1.0f, 2.0f};
    for (int ti = 0; ti < 3; ti++) {
        make_logits(l, V, 42 + ti, 3.0f, 0, 0);
        ni_filter f = filt(Ts[ti], 0, 1.0f, 0.0f);
        assert_int_equal(ni_sample_distribution(p, l, V, &f), 0);
        double m = -INFINITY, z = 0;
        for (size_t i = 0; i < V; i++) m = fmax(m, (double)l[i]);
        for (size_t i = 0; i < V; i++) z += exp(((double)l[i] - m) / Ts[ti]);
        for (size_t i = 0; i < V; i++) {
            /* f32 rounding of t = (l - m) * log2(e) / T costs ~|t| * 2^-24 relative, as for
             * any f32 softmax; the 40-bit fixed point adds 2^-40 absolute */
            double t = ((double)l[i] - m) / Ts[ti] * 1.4426950408889634;
            double s = exp(((double)l[i] - m) / Ts[ti]) / z;
            if (!(fabs(p[i] - s) <= 1.2e-7 * (fabs(t) + 2.0) * s + 0x1p-39))
                fail_msg("T %g token %zu: %.17g vs softmax %.17g (t %g)", Ts[ti], i, p[i], s, t);
        }
    }
    free(l);
    free(p);
}

/* top_k >= V, top_p >= 1 and min_p <= 0 are the same as off. */
static void test_filters_off(void **state) {
    (void)state;
    size_t V = 37;
    float l[37];
    double a[37], b[37];
    make_logits(l, V, 3, 2.0f, 0.5f, 0.1);
    ni_filter off = filt(0.9f, 0, 1.0f, 0.0f);
    assert_int_equal(ni_sample_distribution(a, l, V, &off), 0);
    ni_filter same[] = {filt(0.9f, V, 1.0f, 0.0f), filt(0.9f, V + 5, 1.0f, 0.0f),
                        filt(0.9f, 0, 1.5f, 0.0f), filt(0.9f, 0, 1.0f, -0.2f),
                        filt(0.9f, 1000, 3.0f, 0.0f)};
    for (size_t c = 0; c < sizeof same / sizeof same[0]; c++) {
        assert_int_equal(ni_sample_distribution(b, l, V, &same[c]), 0);
        assert_memory_equal(a, b, sizeof a);
    }
}

/* ---- greedy, invalid rows, edge cases ------------------------------------------------------- */

static void expect_all(const float *l, size_t V, const ni_filter *f, int32_t want, int draws) {
    void *scratch = malloc(ni_sampler_scratch_bytes(V));
    for (int s = 0; s < N_SAMPLERS; s++)
        for (int d = 0; d < draws; d++) {
            ni_rng_key key = {123, (uint64_t)d, 7};
            int32_t got = SAMPLERS[s](l, V, f, key, scratch);
            if (got != want)
                fail_msg("%s: got %d, want %d (V %zu, T %g, k %zu, p %g, min_p %g)",
                         SAMPLER_NAMES[s], got, want, V, f->temperature, f->top_k, f->top_p,
                         f->min_p);
        }
    free(scratch);
}

static void test_greedy(void **state) {
    (void)state;
    float l[] = {-INFINITY, 1.0f, 3.0f, -2.0f, 3.0f, 2.9999998f, 0.0f};
    size_t V = 7;
    ni_filter greedy[] = {filt(0.0f, 0, 1.0f, 0.0f),   filt(-1.0f, 50, 0.5f, 0.2f),
                          filt(1.0f, 1, 1.0f, 0.0f),   filt(1e-40f, 0, 0.9f, 0.0f),
                          filt(100.0f, 1, 0.1f, 0.0f), filt(0.0f, 1, 1.0f, 0.0f)};
    for (size_t i = 0; i < sizeof greedy / sizeof greedy[0]; i++) {
        assert_true(ni_filter_is_greedy(&greedy[i]));
        expect_all(l, V, &greedy[i], 2, 50);
        double p[7];
        assert_int_equal(ni_sample_distribution(p, l, V, &greedy[i]), 0);
        assert_true(p[2] == 1.0 && p[4] == 0.0);
    }
    ni_filter notg[] = {filt(1.0f, 0, 1.0f, 0.0f), filt(1e-30f, 2, 1.0f, 0.0f),
                        filt(NAN, 1, 1.0f, 0.0f)};
    for (size_t i = 0; i < 3; i++) assert_false(ni_filter_is_greedy(&notg[i]));
    assert_false(ni_filter_is_greedy(NULL));
    /* temperature 1e-30 is not greedy by rule but keeps the ties at the max only, both drawn */
    int seen[7] = {0};
    void *scratch = malloc(ni_sampler_scratch_bytes(V));
    for (int s = 0; s < N_SAMPLERS; s++)
        for (uint64_t d = 0; d < 400; d++) {
            ni_rng_key key = {1, d, 0};
            int32_t t = SAMPLERS[s](l, V, &notg[1], key, scratch);
            assert_true(t == 2 || t == 4);
            seen[t]++;
        }
    assert_true(seen[2] > 500 && seen[4] > 500);
    free(scratch);
}

static void test_invalid_rows(void **state) {
    (void)state;
    size_t V = 9;
    float base[9] = {0.1f, 2.0f, -1.0f, 0.5f, 3.0f, -INFINITY, 1.0f, 0.0f, -0.3f};
    ni_filter fs[] = {filt(1.0f, 0, 1.0f, 0.0f), filt(0.0f, 0, 1.0f, 0.0f),
                      filt(0.7f, 3, 0.9f, 0.1f), filt(1.0f, 1, 1.0f, 0.0f)};
    size_t bad_pos[] = {0, 4, 8};
    float bad_val[] = {NAN, -NAN, INFINITY};
    double p[9];
    void *scratch = malloc(ni_sampler_scratch_bytes(V));
    for (size_t fi = 0; fi < 4; fi++) {
        for (size_t bi = 0; bi < 3; bi++)
            for (size_t vi = 0; vi < 3; vi++) {
                float l[9];
                memcpy(l, base, sizeof l);
                l[bad_pos[bi]] = bad_val[vi];
                expect_all(l, V, &fs[fi], NI_SAMPLE_INVALID, 3);
                assert_int_equal(ni_sample_distribution(p, l, V, &fs[fi]), -1);
            }
        float ninf[9];
        for (size_t i = 0; i < V; i++) ninf[i] = -INFINITY;
        expect_all(ninf, V, &fs[fi], NI_SAMPLE_INVALID, 3);
        assert_int_equal(ni_sample_distribution(p, ninf, V, &fs[fi]), -1);
        for (size_t i = 0; i < V; i++) assert_true(p[i] == 0.0);
    }
    ni_filter nanf[] = {filt(NAN, 0, 1.0f, 0.0f), filt(1.0f, 0, NAN, 0.0f),
                        filt(1.0f, 0, 1.0f, NAN), filt(NAN, 1, 1.0f, 0.0f)};
    for (size_t i = 0; i < 4; i++) expect_all(base, V, &nanf[i], NI_SAMPLE_INVALID, 2);
    ni_rng_key key = {1, 2, 3};
    for (int s = 0; s < N_SAMPLERS; s++) {
        assert_int_equal(SAMPLERS[s](base, 0, &fs[0], key, scratch), NI_SAMPLE_INVALID);
        assert_int_equal(SAMPLERS[s](NULL, 4, &fs[0], key, scratch), NI_SAMPLE_INVALID);
        assert_int_equal(SAMPLERS[s](base, NI_SAMPLE_MAX_V + 1, &fs[0], key, scratch),
                         NI_SAMPLE_INVALID);
    }
    assert_int_equal(ni_sample_distribution(p, base, 0, &fs[0]), -1);
    /* a NULL filter means temperature 1, no cut */
    assert_true(ni_sample_sorted(base, V, NULL, key, scratch) >= 0);
    assert_true(ni_sample_rejection(base, V, NULL, key, scratch) >= 0);
    free(scratch);
}

static void test_v1_and_single_finite(void **state) {
    (void)state;
    ni_filter fs[] = {filt(1.0f, 0, 1.0f, 0.0f),  filt(0.5f, 3, 0.5f, 0.5f),
                      filt(2.0f, 2, 1e-6f, 0.0f), filt(1.0f, 0, 1.0f, 1.0f),
                      filt(0.0f, 0, 1.0f, 0.0f),  filt(1.0f, 1, 0.1f, 0.0f)};
    float one[1] = {-12.5f};
    float row[37];
    for (size_t i = 0; i < 37; i++) row[i] = -INFINITY;
    row[17] = 4.0f;
    for (size_t i = 0; i < sizeof fs / sizeof fs[0]; i++) {
        expect_all(one, 1, &fs[i], 0, 50);
        expect_all(row, 37, &fs[i], 17, 200);
    }
    float bad[1] = {-INFINITY};
    expect_all(bad, 1, &fs[0], NI_SAMPLE_INVALID, 2);
    bad[0] = NAN;
    expect_all(bad, 1, &fs[0], NI_SAMPLE_INVALID, 2);
}

/* top_p tiny (or <= 0) keeps only the most probable tokens: a tie at the top is kept whole. */
static void test_tiny_top_p(void **state) {
    (void)state;
    float l[13];
    make_logits(l, 13, 9, 1.0f, 0, 0);
    l[3] = l[11] = 5.0f; /* tied maximum */
    float ps[] = {1e-6f, 0.0f, -3.0f};
    void *scratch = malloc(ni_sampler_scratch_bytes(13));
    for (int pi = 0; pi < 3; pi++) {
        ni_filter f = filt(1.0f, 0, ps[pi], 0.0f);
        for (int s = 0; s < N_SAMPLERS; s++) {
            int seen3 = 0, seen11 = 0;
            for (uint64_t d = 0; d < 400; d++) {
                ni_rng_key key = {5, d, 1};
                int32_t t = SAMPLERS[s](l, 13, &f, key, scratch);
                assert_true(t == 3 || t == 11);
                seen3 += t == 3;
                seen11 += t == 11;
            }
            assert_true(seen3 > 100 && seen11 > 100);
        }
    }
    free(scratch);
}

/* ---- reproducibility --------------------------------------------------------------------- */

static void test_reproducible(void **state) {
    (void)state;
    size_t V = 300;
    float *l = malloc(V * sizeof *l);
    make_logits(l, V, 17, 2.0f, 0.25f, 0.05);
    size_t bytes = ni_sampler_scratch_bytes(V);
    unsigned char *s1 = malloc(bytes), *s2 = malloc(bytes);
    ni_filter fs[] = {filt(1.0f, 20, 0.9f, 0.0f), filt(0.8f, 0, 1.0f, 0.05f),
                      filt(1.3f, 0, 0.7f, 0.0f)};
    for (size_t fi = 0; fi < 3; fi++)
        for (int s = 0; s < N_SAMPLERS; s++) {
            int differ_seed = 0, differ_step = 0;
            for (uint64_t d = 0; d < 2000; d++) {
                memset(s1, (int)(d & 255), bytes); /* scratch contents must not matter */
                memset(s2, (int)(~d & 255), bytes);
                ni_rng_key k = {99, d, 4}, k_seed = {100, d, 4}, k_step = {99, d, 5};
                int32_t a = SAMPLERS[s](l, V, &fs[fi], k, s1);
                int32_t b = SAMPLERS[s](l, V, &fs[fi], k, s2);
                assert_int_equal(a, b);
                differ_seed += a != SAMPLERS[s](l, V, &fs[fi], k_seed, s1);
                differ_step += a != SAMPLERS[s](l, V, &fs[fi], k_step, s1);
            }
            assert_true(differ_seed > 500);
            assert_true(differ_step > 500);
        }
    free(l);
    free(s1);
    free(s2);
}

/* ---- hard checks: never outside the kept set --------------------------------------------------
 */

static void test_never_outside_kept(void **state) {
    (void)state;
    size_t Vmax = 200;
    float *l = malloc(Vmax * sizeof *l);
    double *p = malloc(Vmax * sizeof *p);
    void *scratch = malloc(ni_sampler_scratch_bytes(Vmax));
    static const long draws[N_SAMPLERS] = {1200000 / WORK_DIV, 1200000 / WORK_DIV,
                                           300000 / WORK_DIV, 300000 / WORK_DIV};
    for (int s = 0; s < N_SAMPLERS; s++) {
        long done = 0;
        for (uint64_t row = 0; done < draws[s]; row++) {
            size_t V = 2 + (size_t)(ni_rng_uniform(31, row, 0, 0) * (float)(Vmax - 2));
            float q = (row % 2) ? 0.25f : 0.0f;
            make_logits(l, V, 1000 + row, 2.5f, q, (row % 7 == 0) ? 0.4 : 0.0);
            ni_filter f = random_filter(row * 31 + 5, V);
            if (ni_sample_distribution(p, l, V, &f) != 0) continue;
            for (uint64_t d = 0; d < 300; d++, done++) {
                ni_rng_key key = {(uint64_t)s, row, (uint32_t)d};
                int32_t t = SAMPLERS[s](l, V, &f, key, scratch);
                if (t < 0 || (size_t)t >= V || !(p[t] > 0))
                    fail_msg("%s: token %d outside the kept set (row %llu, V %zu)",
                             SAMPLER_NAMES[s], t, (unsigned long long)row, V);
            }
        }
    }
    free(l);
    free(p);
    free(scratch);
}

/* The rejection sampler's top-k-mass paths (from bounds or a gathered few, or a selection over
 * the whole row), its first pivot from the chunk maxima (k <= NI_REJECTION_CHUNKS and a flat
 * enough row) or from 0 (larger k or a peaked row) and its fallback all occur, and stay in the kept
 * set; their distribution is checked by the chi-square tests. */
static void test_rejection_paths(void **state) {
    (void)state;
    size_t V = 5000; /* above the gather cap: the top-k mass may need a full selection */
    float *l = malloc(V * sizeof *l);
    double *p = malloc(V * sizeof *p);
    void *scratch = malloc(ni_sampler_scratch_bytes(V));
    int sel = 0, nosel = 0, fb = 0, multi = 0, cpiv = 0, nopiv = 0;
    for (uint64_t row = 0; row < 40; row++) {
        make_logits(l, V, 500 + row, 1.0f + (float)(row % 4), 0, 0);
        size_t kept = 0;
        /* odd rows: k above the chunk count (the rounds start from pivot 0) */
        size_t k = (row % 2 ? NI_REJECTION_CHUNKS + 1 : 5) + row % 30;
        ni_filter f = filt(1.0f, k, 0.8f, 0.0f);
        assert_int_equal(ni_sample_distribution(p, l, V, &f), 0);
        for (size_t i = 0; i < V; i++) kept += p[i] > 0;
        for (uint64_t d = 0; d < 50; d++) {
            ni_rejection_stats st;
            ni_rng_key key = {3, row, (uint32_t)d};
            int32_t t = ni_sample_rejection_ex(l, V, &f, key, scratch, 3, &st);
            assert_true(t >= 0 && p[t] > 0);
            sel += st.topk_mass_sel;
            nosel += !st.topk_mass_sel && !st.fallback;
            fb += st.fallback;
            multi += st.rounds > 1;
            cpiv += st.chunk_pivot;
            nopiv += !st.chunk_pivot;
            /* the first pivot excludes no kept token and leaves at least k above it */
            assert_true(st.n_above0 >= k && st.n_above0 >= kept);
        }
    }
    assert_true(sel > 0 && nosel > 0 && fb > 0 && multi > 0 && cpiv > 0 && nopiv > 0);
    free(l);
    free(p);
    free(scratch);
}

/* The rule for the first pivot, read literally: the chunk maxima of W, w_k = their k-th largest
 * and S_k = the sum of their k largest (by repeated extraction of the largest), the row's mass
 * M; the chunk pivot when w_k > 1 and S_k * NI_REJECTION_PIVOT_DIV < M. Returns the number of
 * tokens above the first pivot (W >= w_k with the chunk pivot, else W > 0), *piv the choice. */
static size_t first_pivot_ref(const float *l, size_t V, size_t k, int *piv) {
    float m = -INFINITY;
    for (size_t i = 0; i < V; i++) m = l[i] > m ? l[i] : m;
    const float sc = ni_canon_scale(1.0f);
    uint64_t cmax[NI_REJECTION_CHUNKS] = {0}, total = 0, sk = 0, wk = 0;
    const size_t len = (V + NI_REJECTION_CHUNKS - 1) / NI_REJECTION_CHUNKS;
    for (size_t i = 0; i < V; i++) {
        uint64_t w = ni_canon_weight((l[i] - m) * sc);
        total += w;
        if (w > cmax[i / len]) cmax[i / len] = w;
    }
    int taken[NI_REJECTION_CHUNKS] = {0};
    for (size_t j = 0; j < k; j++) {
        size_t b = NI_REJECTION_CHUNKS;
        for (size_t c = 0; c < NI_REJECTION_CHUNKS; c++)
            if (!taken[c] && (b == NI_REJECTION_CHUNKS || cmax[c] > cmax[b])) b = c;
        taken[b] = 1;
        sk += cmax[b];
        wk = cmax[b];
    }
    *piv = wk > 1 && sk * NI_REJECTION_PIVOT_DIV < total;
    size_t n = 0;
    for (size_t i = 0; i < V; i++) {
        uint64_t w = ni_canon_weight((l[i] - m) * sc);
        n += *piv ? w >= wk : w > 0;
    }
    return n;
}

/* The first pivot follows the rule exactly, on rows of many shapes at GPT-2's vocabulary: flat
 * rows (the top-k chunk maxima hold a small share of the mass) start from the chunk pivot, and
 * so do peaked ones unless NI_REJECTION_PIVOT_DIV says otherwise; a row whose finite logits all
 * lie in one chunk (w_k = 0, top-k still on) starts from the whole row. */
static void test_rejection_first_pivot(void **state) {
    (void)state;
    const size_t V = 50257;
    float *l = malloc(V * sizeof *l);
    void *scratch = malloc(ni_sampler_scratch_bytes(V));
    static const float scales[] = {0.55f, 1.0f, 2.0f, 2.5f, 3.0f, 3.0f, 6.0f};
    int piv_seen[2] = {0, 0};
    for (size_t si = 0; si < sizeof scales / sizeof *scales; si++)
        for (uint64_t row = 0; row < 6; row++) {
            make_logits(l, V, 900 + 10 * si + row, scales[si], 0, 0);
            const size_t k = 2 + (size_t)(row * 11 % 63); /* 2 .. 57 */
            const ni_filter f = filt(1.0f, k, 0.9f, 0.0f);
            int piv;
            const size_t n0 = first_pivot_ref(l, V, k, &piv);
            ni_rejection_stats st;
            ni_rng_key key = {5, row, (uint32_t)si};
            int32_t t =
                ni_sample_rejection_ex(l, V, &f, key, scratch, NI_REJECTION_MAX_ROUNDS, &st);
            assert_true(t >= 0);
            assert_int_equal(st.chunk_pivot, piv);
            assert_int_equal(st.n_above0, n0);
            if (scales[si] < 1.5f) assert_int_equal(piv, 1); /* flat: the chunk pivot */
            piv_seen[piv]++;
        }
    for (size_t k = 2; k <= NI_REJECTION_CHUNKS; k *= 2) { /* every finite logit in chunk 0 */
        for (size_t i = 0; i < V; i++) l[i] = i < 100 ? (float)(i % 7) * 0.5f : -INFINITY;
        const ni_filter f = filt(1.0f, k, 0.9f, 0.0f); /* on: 100 tokens of positive weight */
        int piv;
        const size_t n0 = first_pivot_ref(l, V, k, &piv);
        ni_rejection_stats st;
        ni_rng_key key = {5, k, 0};
        const int32_t t =
            ni_sample_rejection_ex(l, V, &f, key, scratch, NI_REJECTION_MAX_ROUNDS, &st);
        assert_true(t >= 0 && l[t] > -INFINITY);
        assert_int_equal(piv, 0); /* w_k = 0: one chunk holds every token of positive weight */
        assert_int_equal(st.chunk_pivot, 0);
        assert_int_equal(st.n_above0, n0);
        assert_int_equal(n0, 100);
        piv_seen[piv]++;
    }
    assert_true(piv_seen[0] > 0 && piv_seen[1] > 0);
    free(l);
    free(scratch);
}

/* ---- timing (printed, not asserted) --------------------------------------------------------- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void test_speed_gpt2_vocab(void **state) {
    (void)state;
    size_t V = 50257, rows = 200 / WORK_DIV;
    float *l = malloc(V * sizeof *l);
    double *p = malloc(V * sizeof *p);
    void *scratch = malloc(ni_sampler_scratch_bytes(V));
    ni_filter f = filt(1.0f, 20, 0.9f, 0.0f);
    static const float scales[] = {1.0f, 0.55f}; /* 0.55: flat rows (random-weight models) */
    for (size_t si = 0; si < sizeof scales / sizeof *scales; si++) {
        double t_sorted = 0, t_rej = 0, rounds = 0, above0 = 0;
        int sel = 0;
        for (uint64_t r = 0; r < rows; r++) {
            make_logits(l, V, 7000 + r, scales[si], 0, 0);
            assert_int_equal(ni_sample_distribution(p, l, V, &f), 0);
            ni_rng_key key = {1, r, 0};
            double t0 = now_s();
            int32_t a = ni_sample_sorted(l, V, &f, key, scratch);
            double t1 = now_s();
            ni_rejection_stats st;
            int32_t b =
                ni_sample_rejection_ex(l, V, &f, key, scratch, NI_REJECTION_MAX_ROUNDS, &st);
            double t2 = now_s();
            t_sorted += t1 - t0;
            t_rej += t2 - t1;
            rounds += st.rounds;
            above0 += (double)st.n_above0;
            sel += st.topk_mass_sel;
            assert_true(a >= 0 && p[a] > 0);
            assert_true(b >= 0 && p[b] > 0);
        }
        printf("[ speed    ] V=%zu logits %.2f N(0,1) T=1 top_k=20 top_p=0.9, one thread: sorted "
               "%.1f us/row, rejection %.1f us/row (%.2f rounds/row from %.0f candidates, top-k "
               "mass selection in %d of %zu rows)\n",
               V, (double)scales[si], 1e6 * t_sorted / (double)rows, 1e6 * t_rej / (double)rows,
               rounds / (double)rows, above0 / (double)rows, sel, rows);
    }
    free(l);
    free(p);
    free(scratch);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_canon_weight_points),
        cmocka_unit_test(test_canon_weight_golden),
        cmocka_unit_test(test_canon_weight_exhaustive),
        cmocka_unit_test(test_canon_weight_accuracy),
        cmocka_unit_test(test_canon_helpers),
        cmocka_unit_test(test_distribution_bruteforce),
        cmocka_unit_test(test_distribution_is_softmax),
        cmocka_unit_test(test_filters_off),
        cmocka_unit_test(test_greedy),
        cmocka_unit_test(test_invalid_rows),
        cmocka_unit_test(test_v1_and_single_finite),
        cmocka_unit_test(test_tiny_top_p),
        cmocka_unit_test(test_reproducible),
        cmocka_unit_test(test_never_outside_kept),
        cmocka_unit_test(test_rejection_paths),
        cmocka_unit_test(test_rejection_first_pivot),
        cmocka_unit_test(test_speed_gpt2_vocab),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
