/* GPU tests of the fused rejection sampler (ni_cuda_sample_rejection). The kernel must give
 * exactly the token of the CPU's ni_sample_rejection for the same (seed, seq, step), draw for
 * draw: over many rows (flat, peaked, tied, with -inf), filters (top-k, top-p, both, min-p,
 * k = 1, k = V, tiny p, several temperatures) and steps, for V = 1 .. 50257, through the exact
 * fallback (small round caps, against ni_sample_rejection_ex), through the path that re-reads
 * rows too long for shared memory from global memory, and on the short path's edges (the rounds
 * on the few tokens above the first pivot, in one warp). It must also pass a chi-square test
 * against ni_sample_distribution, never return a token outside the kept set over millions of
 * draws, be deterministic and independent of a row's place in the batch, return -1 for invalid
 * rows and NaN parameters, and follow parameters and steps changed in device memory under a
 * captured CUDA graph, whatever the cluster size (the blocks sharing a row). A micro-benchmark
 * prints its latency beside the sort-based sampler's (printed, not asserted). Exits 77 without a
 * GPU. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/kernels.h"
#include "sampling/sampling.h"
#include "gpu_test_util.h"
#include "stat_util.h"
#include "test_util.h"

#define CK(call)                                                                                   \
    do {                                                                                           \
        cudaError_t e_ = (cudaError_t)(call);                                                      \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            fail();                                                                                \
        }                                                                                          \
    } while (0)

/* ---- helpers ------------------------------------------------------------------------------ */

static void *dmalloc(size_t bytes) {
    void *p = NULL;
    CK(cudaMalloc(&p, bytes ? bytes : 1));
    return p;
}

static void *hmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    assert_non_null(p);
    return p;
}

/* Logit rows of several kinds: 0 normal * 3; 1 quantized to 0.5 (many exact ties, top-k and
 * top-p cuts inside tie groups); 2 normal with a third of the tokens at -inf; 3 one dominant
 * token; 4 all equal; 5 flat (normal * 0.55, like a random-weight GPT-2); 6 normal * 12 (a
 * peaked row with a deep tail of zero weights); 7 four values only (huge tie groups). */
#define N_KINDS 8
static void fill_row(float *l, size_t V, int kind, uint64_t *s) {
    for (size_t i = 0; i < V; i++) {
        float x = 3.0f * rng_normal(s);
        if (kind == 1) x = roundf(x * 2.0f) * 0.5f;
        if (kind == 2 && rng_next(s) % 3 == 0) x = -INFINITY;
        if (kind == 4) x = 0.25f;
        if (kind == 5) x *= 0.55f / 3.0f;
        if (kind == 6) x *= 4.0f;
        if (kind == 7) x = (float)(rng_next(s) % 4);
        l[i] = x;
    }
    if (kind == 3) l[rng_next(s) % V] = 40.0f;
}

static ni_sample_params params_of(const ni_filter *f, uint64_t seed) {
    ni_sample_params p = {f->temperature, f->top_k > 0xFFFFFFFFu ? 0xFFFFFFFFu : (uint32_t)f->top_k,
                          f->top_p, f->min_p, seed};
    return p;
}

/* A batch on the device: logits (B, V), seq ids and steps (B), the parameters, the tokens. */
typedef struct {
    size_t B, V;
    float *logits; /* host (B, V) */
    uint64_t *seq;
    uint32_t *steps;
    float *dlogits;
    uint64_t *dseq;
    uint32_t *dsteps;
    int32_t *dtok;
    ni_sample_params *dparams;
} rj_ctx;

static void rj_init(rj_ctx *c, size_t B, size_t V) {
    c->B = B;
    c->V = V;
    c->logits = hmalloc(B * V * sizeof *c->logits);
    c->seq = hmalloc(B * sizeof *c->seq);
    c->steps = hmalloc(B * sizeof *c->steps);
    c->dlogits = dmalloc(B * V * sizeof *c->dlogits);
    c->dseq = dmalloc(B * sizeof *c->dseq);
    c->dsteps = dmalloc(B * sizeof *c->dsteps);
    c->dtok = dmalloc(B * sizeof *c->dtok);
    c->dparams = dmalloc(sizeof *c->dparams);
}

static void rj_free(rj_ctx *c) {
    free(c->logits);
    free(c->seq);
    free(c->steps);
    cudaFree(c->dlogits);
    cudaFree(c->dseq);
    cudaFree(c->dsteps);
    cudaFree(c->dtok);
    cudaFree(c->dparams);
}

static void rj_upload(rj_ctx *c) {
    CK(cudaMemcpy(c->dlogits, c->logits, c->B * c->V * sizeof *c->logits, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(c->dseq, c->seq, c->B * sizeof *c->seq, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(c->dsteps, c->steps, c->B * sizeof *c->steps, cudaMemcpyHostToDevice));
}

static void rj_set_steps(rj_ctx *c, uint32_t step) {
    for (size_t r = 0; r < c->B; r++) c->steps[r] = step + (uint32_t)(r % 3);
    CK(cudaMemcpy(c->dsteps, c->steps, c->B * sizeof *c->steps, cudaMemcpyHostToDevice));
}

/* Samples every row (max_rounds, force_global, cluster as ni_cuda_sample_rejection_cfg) into
 * tok; returns the launcher's status (CK'd by the caller or tolerated for cluster 16). */
static int rj_run_cfg(rj_ctx *c, const ni_filter *f, uint64_t seed, uint32_t max_rounds,
                      int force_global, uint32_t cluster, int32_t *tok) {
    const ni_sample_params p = params_of(f, seed);
    CK(cudaMemcpy(c->dparams, &p, sizeof p, cudaMemcpyHostToDevice));
    CK(cudaMemset(c->dtok, 0x7F, c->B * sizeof *c->dtok)); /* poison: 0x7F7F7F7F */
    const int st =
        ni_cuda_sample_rejection_cfg(c->dtok, c->dlogits, c->dseq, c->dsteps, c->dparams, c->B,
                                     c->V, max_rounds, force_global, cluster, NULL);
    if (st != 0) return st;
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(tok, c->dtok, c->B * sizeof *tok, cudaMemcpyDeviceToHost));
    return 0;
}

/* Samples every row (max_rounds, force_global as ni_cuda_sample_rejection_ex) into tok. */
static void rj_run(rj_ctx *c, const ni_filter *f, uint64_t seed, uint32_t max_rounds,
                   int force_global, int32_t *tok) {
    CK(rj_run_cfg(c, f, seed, max_rounds, force_global, 0, tok));
}

/* What the CPU rejection sampler did over the compared draws. */
typedef struct {
    size_t draws, multi_round, fallback, topk_sel, chunk_pivot;
    size_t short_list; /* from the chunk pivot with at most 128 tokens above it (the GPU's short
                          path where V >= 64 x 132) */
} cpu_paths;

/* Compares every row of the last run with ni_sample_rejection_ex; with probs (B, V) also checks
 * that valid tokens lie in the kept set. Returns the mismatches (printed). */
static size_t rj_compare(const rj_ctx *c, const ni_filter *f, uint64_t seed, uint32_t max_rounds,
                         const int32_t *tok, const double *probs, void *scratch, cpu_paths *cp,
                         const char *what) {
    size_t bad = 0;
    for (size_t r = 0; r < c->B; r++) {
        ni_rng_key key = {seed, c->seq[r], c->steps[r]};
        ni_rejection_stats st;
        const int32_t want =
            ni_sample_rejection_ex(c->logits + r * c->V, c->V, f, key, scratch, max_rounds, &st);
        int ok = tok[r] == want;
        if (ok && probs && want >= 0) ok = probs[r * c->V + (size_t)want] > 0.0;
        if (!ok) {
            if (bad < 10)
                fprintf(stderr,
                        "%s V=%zu row %zu (kind %zu) filter {T %g, k %zu, p %g, min_p %g} "
                        "step %u rounds cap %u: GPU %d, CPU %d (CPU: %u rounds, fallback %d)\n",
                        what, c->V, r, r % N_KINDS, (double)f->temperature, f->top_k,
                        (double)f->top_p, (double)f->min_p, c->steps[r], max_rounds, tok[r], want,
                        st.rounds, st.fallback);
            bad++;
        }
        if (cp) {
            cp->draws++;
            cp->multi_round += st.rounds > 1;
            cp->fallback += (size_t)st.fallback;
            cp->topk_sel += (size_t)st.topk_mass_sel;
            cp->chunk_pivot += (size_t)st.chunk_pivot;
            cp->short_list += st.chunk_pivot && st.n_above0 <= 128;
        }
    }
    return bad;
}

static void rj_fill(rj_ctx *c, uint64_t s) {
    for (size_t r = 0; r < c->B; r++) {
        fill_row(c->logits + r * c->V, c->V, (int)(r % N_KINDS), &s);
        c->seq[r] = rng_next(&s);
        c->steps[r] = 0;
    }
}

/* ---- (1) the CPU's token, draw for draw ---------------------------------------------------- */

static const ni_filter common_filters[] = {
    {1.0f, 20, 0.9f, 0.0f},    /* the seed's benchmark */
    {1.0f, 20, 1.0f, 0.0f},    /* top-k only */
    {0.7f, 0, 0.95f, 0.0f},    /* top-p only */
    {1.5f, 50, 0.8f, 0.0f},    /* both */
    {1.3f, 0, 1.0f, 0.05f},    /* min-p only */
    {1.0f, 40, 0.3f, 0.001f},  /* all three */
    {1.0f, 0, 1.0f, 0.0f},     /* plain softmax: one draw */
    {1.0f, 5, 0.0f, 0.0f},     /* top-p 0: the max group only */
    {1.0f, 0, 1e-6f, 0.0f},    /* tiny p */
    {0.5f, 3, 0.8f, 0.0f},     /* small k, ties at the cut */
    {0.7f, 2, 0.99f, 0.0f},    /* k = 2 */
    {1.0f, 1, 0.9f, 0.0f},     /* k = 1: greedy */
    {INFINITY, 7, 0.6f, 0.0f}, /* T = inf: uniform over the finite logits */
    {1e-30f, 0, 1.0f, 0.0f},   /* tiny T, not greedy: the max group */
    {2.0f, 1000, 0.5f, 0.01f}, /* k >= V for small V */
    {1.0f, 10, 0.999f, 0.0f},  /* p close to 1 */
};
#define N_COMMON (sizeof common_filters / sizeof *common_filters)

static void test_matches_cpu(void **state) {
    (void)state;
    static const size_t Vs[] = {1, 2, 3, 7, 50, 1000, 50257};
    for (size_t vi = 0; vi < sizeof Vs / sizeof *Vs; vi++) {
        const size_t V = Vs[vi], B = V > 10000 ? 32 : 96;
        const uint32_t steps = V > 10000 ? 2 : 4;
        rj_ctx c;
        rj_init(&c, B, V);
        rj_fill(&c, 1234 + V);
        rj_upload(&c);
        int32_t *tok = hmalloc(B * sizeof *tok);
        double *probs = hmalloc(B * V * sizeof *probs);
        void *scratch = hmalloc(ni_sampler_scratch_bytes(V));
        ni_filter filters[N_COMMON + 2];
        memcpy(filters, common_filters, sizeof common_filters);
        filters[N_COMMON] = (ni_filter){1.0f, V, 0.9f, 0.0f};                      /* k = V */
        filters[N_COMMON + 1] = (ni_filter){0.8f, V > 1 ? V - 1 : 1, 0.95f, 0.0f}; /* k = V - 1 */
        cpu_paths cp = {0, 0, 0, 0, 0, 0};
        size_t bad = 0;
        for (size_t fi = 0; fi < N_COMMON + 2; fi++) {
            const ni_filter *f = &filters[fi];
            for (size_t r = 0; r < B; r++) /* -1 (and zeros) for rows of -inf only (tiny V) */
                ni_sample_distribution(probs + r * V, c.logits + r * V, V, f);
            for (uint32_t step = 0; step < steps; step++) {
                const uint64_t seed = 0xC0FFEEull + fi;
                rj_set_steps(&c, step * 7);
                rj_run(&c, f, seed, NI_REJECTION_MAX_ROUNDS, 0, tok);
                bad += rj_compare(&c, f, seed, NI_REJECTION_MAX_ROUNDS, tok, probs, scratch, &cp,
                                  "sample");
            }
        }
        printf("  V=%-5zu %5zu draws equal to the CPU's (CPU: %zu needed several rounds, %zu the "
               "top-k mass by selection, %zu from the chunk pivot)\n",
               V, cp.draws - bad, cp.multi_round, cp.topk_sel, cp.chunk_pivot);
        assert_int_equal(bad, 0);
        free(scratch);
        free(probs);
        free(tok);
        rj_free(&c);
    }
}

/* The exact fallback (round caps 0 .. 3) and the global-memory path, forced on short rows and
 * natural on rows too long for shared memory. */
static void test_fallback_and_global(void **state) {
    (void)state;
    static const size_t Vs[] = {7, 50, 1000, 50257, 70001, 150001};
    for (size_t vi = 0; vi < sizeof Vs / sizeof *Vs; vi++) {
        const size_t V = Vs[vi], B = V > 10000 ? 16 : 64;
        rj_ctx c;
        rj_init(&c, B, V);
        rj_fill(&c, 99 + V);
        rj_upload(&c);
        int32_t *tok = hmalloc(B * sizeof *tok);
        void *scratch = hmalloc(ni_sampler_scratch_bytes(V));
        cpu_paths cp = {0, 0, 0, 0, 0, 0};
        size_t bad = 0;
        for (size_t fi = 0; fi < N_COMMON; fi++) {
            const ni_filter *f = &common_filters[fi];
            const uint64_t seed = 31 + fi;
            rj_set_steps(&c, (uint32_t)fi);
            for (uint32_t mr = 0; mr < 4; mr++) {
                if (V > 60000 && mr != 1) continue; /* long rows: global path, cap 1 */
                rj_run(&c, f, seed, mr, 0, tok);
                bad += rj_compare(&c, f, seed, mr, tok, NULL, scratch, &cp, "fallback");
            }
            rj_run(&c, f, seed, NI_REJECTION_MAX_ROUNDS, 1, tok);
            bad +=
                rj_compare(&c, f, seed, NI_REJECTION_MAX_ROUNDS, tok, NULL, scratch, &cp, "global");
        }
        printf("  V=%-6zu %5zu draws with round caps 0..3 and from global memory equal to the "
               "CPU's (CPU fallbacks: %zu)\n",
               V, cp.draws - bad, cp.fallback);
        assert_int_equal(bad, 0);
        free(scratch);
        free(tok);
        rj_free(&c);
    }
}

/* Every cluster size (the blocks sharing a row: 1 .. 16, also more blocks than the row has
 * groups) gives the CPU's token, in both memory paths and through the fallback, on short rows
 * (compacted at once) and long ones (compacted after some rounds). */
static void test_cluster_sizes(void **state) {
    (void)state;
    static const size_t Vs[] = {1, 3, 50, 1000, 5003, 50257};
    static const uint32_t clusters[] = {1, 2, 4, 8, 16};
    static const size_t fis[] = {0, 2, 3, 5, 9, 12};
    for (size_t vi = 0; vi < sizeof Vs / sizeof *Vs; vi++) {
        const size_t V = Vs[vi], B = V > 10000 ? 16 : 40;
        rj_ctx c;
        rj_init(&c, B, V);
        rj_fill(&c, 4321 + V);
        rj_upload(&c);
        int32_t *tok = hmalloc(B * sizeof *tok);
        void *scratch = hmalloc(ni_sampler_scratch_bytes(V));
        for (size_t ci = 0; ci < sizeof clusters / sizeof *clusters; ci++) {
            const uint32_t cl = clusters[ci];
            cpu_paths cp = {0, 0, 0, 0, 0, 0};
            size_t bad = 0;
            int skipped = 0;
            for (size_t i = 0; i < sizeof fis / sizeof *fis && !skipped; i++) {
                const ni_filter *f = &common_filters[fis[i]];
                const uint64_t seed = 77 + fis[i];
                rj_set_steps(&c, (uint32_t)(i * 13));
                for (int run = 0; run < 3; run++) {
                    const uint32_t mr = run == 1 ? 2u : NI_REJECTION_MAX_ROUNDS;
                    const int st = rj_run_cfg(&c, f, seed, mr, run == 2, cl, tok);
                    if (st != 0 && cl == 16) { /* non-portable size: the GPU may not place it */
                        printf("  cluster 16 not launchable here (%s): skipped\n",
                               cudaGetErrorString((cudaError_t)st));
                        skipped = 1;
                        break;
                    }
                    CK(st);
                    bad += rj_compare(&c, f, seed, mr, tok, NULL, scratch, &cp, "cluster");
                }
            }
            if (!skipped)
                printf("  V=%-5zu cluster %2u: %4zu draws equal to the CPU's (CPU: %zu needed "
                       "several rounds, %zu fell back, %zu from the chunk pivot)\n",
                       V, cl, cp.draws - bad, cp.multi_round, cp.fallback, cp.chunk_pivot);
            assert_int_equal(bad, 0);
        }
        /* a bad cluster size is refused */
        assert_int_not_equal(ni_cuda_sample_rejection_cfg(c.dtok, c.dlogits, c.dseq, c.dsteps,
                                                          c.dparams, B, V, 4, 0, 3, NULL),
                             0);
        free(scratch);
        free(tok);
        rj_free(&c);
    }
}

/* The short path (rounds on the few tokens above the first pivot, in one warp) and its edges,
 * at V = 50257, at the least V it serves (64 x 132) and just below: a top group of 20, 64 or 100
 * tokens spread over the chunks with the rest at -inf (when top-k keeps the group, n_pos = k:
 * top-k is off, the long path) or at a small positive weight (the short path, n = k included);
 * flat rows; a tie group of ~1,360 (the long path); exactly 128 and 129 tied tokens on top (the
 * list's limit); k = 2, 20, 30, 64 and 100 (no first pivot); min-p rejecting candidates; round
 * caps 1 and 2 (its exact fallback); clusters of 1 to 8. Every token must be the CPU's, and the
 * rows must reach the short path's cases (counted from the CPU's own path). */
static void test_short_path(void **state) {
    (void)state;
    static const size_t Vs[] = {50257, 8448, 8447};
    static const uint32_t clusters[] = {1, 2, 4, 8};
    static const ni_filter filters[] = {{1.0f, 20, 0.9f, 0.0f}, {1.0f, 64, 0.95f, 0.0f},
                                        {0.7f, 2, 0.99f, 0.0f}, {1.0f, 20, 1.0f, 0.5f},
                                        {1.0f, 30, 0.2f, 0.0f}, {1.0f, 20, 0.9f, 0.02f},
                                        {1.0f, 64, 0.5f, 0.0f}, {1.5f, 100, 0.9f, 0.0f}};
    enum { B = 18 };
    for (size_t vi = 0; vi < sizeof Vs / sizeof *Vs; vi++) {
        const size_t V = Vs[vi];
        rj_ctx c;
        rj_init(&c, B, V);
        uint64_t s = 555 + V;
        for (size_t r = 0; r < B; r++) {
            float *l = c.logits + r * V;
            const int kind = (int)(r / 3);
            const size_t g = kind == 4    ? 128
                             : kind == 5  ? 129
                             : r % 3 == 0 ? 20
                             : r % 3 == 1 ? 64
                                          : 100;
            for (size_t i = 0; i < V; i++) {
                switch (kind) {
                case 0:
                    l[i] = -INFINITY;
                    break; /* zero weight below */
                case 2:
                    l[i] = 0.55f * rng_normal(&s);
                    break; /* flat */
                case 3:
                    l[i] = (i % 37 == 0) ? 1.0f : -3.0f;
                    break; /* ~1,360 tied on top */
                default:
                    l[i] = -15.0f + 0.5f * rng_normal(&s);
                    break; /* small positive weight */
                }
            }
            if (kind == 0 || kind == 1 || kind == 4 || kind == 5) /* the group, over every chunk */
                for (size_t j = 0; j < g; j++)
                    l[j * (V / g) + r % 7] = kind >= 4 ? 1.0f : 0.3f * rng_normal(&s);
            c.seq[r] = rng_next(&s);
        }
        rj_upload(&c);
        int32_t *tok = hmalloc(B * sizeof *tok);
        void *scratch = hmalloc(ni_sampler_scratch_bytes(V));
        size_t bad = 0, k64 = 0;
        cpu_paths cp = {0, 0, 0, 0, 0, 0};
        for (size_t ci = 0; ci < sizeof clusters / sizeof *clusters; ci++)
            for (size_t fi = 0; fi < sizeof filters / sizeof *filters; fi++)
                for (uint32_t step = 0; step < 3; step++) {
                    const ni_filter *f = &filters[fi];
                    const uint32_t mr = step == 1 ? 1u : step == 2 ? 2u : NI_REJECTION_MAX_ROUNDS;
                    rj_set_steps(&c, step * 5 + (uint32_t)ci);
                    CK(rj_run_cfg(&c, f, 1000 + fi, mr, 0, clusters[ci], tok));
                    const size_t before = cp.short_list;
                    bad += rj_compare(&c, f, 1000 + fi, mr, tok, NULL, scratch, &cp, "short");
                    if (f->top_k == 64) k64 += cp.short_list - before;
                }
        printf("  V=%-5zu %4zu draws on the short path's edges equal to the CPU's (%zu with a "
               "first pivot and at most 128 tokens above it, %zu of them with k = 64)\n",
               V, cp.draws - bad, cp.short_list, k64);
        assert_int_equal(bad, 0);
        assert_true(cp.short_list > cp.draws / 5); /* the cases reach the short list */
        assert_true(k64 > 0);
        free(scratch);
        free(tok);
        rj_free(&c);
    }
}

/* ---- (2) chi-square, (3) the kept set ------------------------------------------------------ */

static void test_chi_square(void **state) {
    (void)state;
    const size_t V = 50, B = 4096;
    const uint32_t steps = 25;
    static const ni_filter filters[] = {{1.0f, 20, 0.9f, 0.0f},
                                        {0.8f, 0, 0.95f, 0.0f},
                                        {1.5f, 0, 1.0f, 0.02f},
                                        {0.7f, 5, 1.0f, 0.0f},
                                        {1.0f, 0, 1.0f, 0.0f}};
    rj_ctx c;
    rj_init(&c, B, V);
    uint64_t s = 4242;
    float row[50];
    for (size_t i = 0; i < V; i++) row[i] = 1.5f * rng_normal(&s);
    for (size_t r = 0; r < B; r++) {
        memcpy(c.logits + r * V, row, sizeof row);
        c.seq[r] = r;
        c.steps[r] = 0;
    }
    rj_upload(&c);
    int32_t *tok = hmalloc(B * sizeof *tok);
    for (size_t fi = 0; fi < sizeof filters / sizeof *filters; fi++) {
        double probs[50], count[50] = {0};
        assert_int_equal(ni_sample_distribution(probs, row, V, &filters[fi]), 0);
        for (uint32_t step = 0; step < steps; step++) {
            for (size_t r = 0; r < B; r++) c.steps[r] = step;
            CK(cudaMemcpy(c.dsteps, c.steps, B * sizeof *c.steps, cudaMemcpyHostToDevice));
            rj_run(&c, &filters[fi], 99 + fi, NI_REJECTION_MAX_ROUNDS, 0, tok);
            for (size_t r = 0; r < B; r++) {
                assert_true(tok[r] >= 0 && (size_t)tok[r] < V);
                assert_true(probs[tok[r]] > 0.0);
                count[tok[r]] += 1.0;
            }
        }
        int kept, bins;
        double chi2 = binned_chi2(probs, count, V, (double)B * steps, &kept, &bins);
        assert_true(bins > 0);
        const double dof = bins > 1 ? bins - 1 : 1;
        const double limit = chi2_quantile(dof, 4.75); /* p ~ 1e-6 */
        printf("  chi-square filter %zu: %d kept, %d bins, chi2 %.1f (limit %.1f)\n", fi, kept,
               bins, chi2, limit);
        assert_true(chi2 < limit);
    }
    free(tok);
    rj_free(&c);
}

/* 4096 rows (64 patterns, ties and -inf among them) x 256 steps per filter: never a token
 * outside the kept set of ni_sample_distribution. */
static void test_kept_set(void **state) {
    (void)state;
    const size_t V = 50, B = 4096, NP = 64;
    const uint32_t steps = 256;
    static const ni_filter filters[] = {{1.0f, 20, 0.9f, 0.0f},
                                        {0.5f, 3, 0.8f, 0.0f},
                                        {1.0f, 0, 1e-6f, 0.0f},
                                        {1.2f, 8, 0.7f, 0.1f},
                                        {1.0f, 2, 1.0f, 0.0f}};
    rj_ctx c;
    rj_init(&c, B, V);
    uint64_t s = 777;
    for (size_t p = 0; p < NP; p++) fill_row(c.logits + p * V, V, (int)(p % N_KINDS), &s);
    for (size_t r = 0; r < B; r++) {
        if (r >= NP) memcpy(c.logits + r * V, c.logits + (r % NP) * V, V * sizeof *c.logits);
        c.seq[r] = rng_next(&s);
        c.steps[r] = 0;
    }
    rj_upload(&c);
    int32_t *tok = hmalloc(B * sizeof *tok);
    double *probs = hmalloc(NP * V * sizeof *probs);
    size_t draws = 0;
    for (size_t fi = 0; fi < sizeof filters / sizeof *filters; fi++) {
        for (size_t p = 0; p < NP; p++)
            assert_int_equal(
                ni_sample_distribution(probs + p * V, c.logits + p * V, V, &filters[fi]), 0);
        for (uint32_t step = 0; step < steps; step++) {
            rj_set_steps(&c, step * 3);
            rj_run(&c, &filters[fi], 5 + fi, NI_REJECTION_MAX_ROUNDS, 0, tok);
            for (size_t r = 0; r < B; r++) {
                const int32_t t = tok[r];
                if (!(t >= 0 && (size_t)t < V && probs[(r % NP) * V + (size_t)t] > 0.0)) {
                    fprintf(stderr, "kept set: filter %zu step %u row %zu: token %d\n", fi, step, r,
                            t);
                    fail();
                }
            }
            draws += B;
        }
    }
    printf("  %zu draws, all in the kept set\n", draws);
    free(probs);
    free(tok);
    rj_free(&c);
}

/* ---- (4) determinism, batch invariance, CUDA graphs ---------------------------------------- */

static void test_deterministic_and_batch_invariant(void **state) {
    (void)state;
    const size_t V = 50257, B = 64;
    const ni_filter f = {1.0f, 20, 0.9f, 0.0f};
    rj_ctx c;
    rj_init(&c, B, V);
    rj_fill(&c, 2024);
    for (size_t r = 0; r < B; r++) c.steps[r] = (uint32_t)(r * 5);
    rj_upload(&c);
    int32_t *a = hmalloc(B * sizeof *a), *b = hmalloc(B * sizeof *b);
    rj_run(&c, &f, 11, NI_REJECTION_MAX_ROUNDS, 0, a);
    rj_run(&c, &f, 11, NI_REJECTION_MAX_ROUNDS, 0, b);
    assert_memory_equal(a, b, B * sizeof *a);
    /* a different seed changes some tokens (a test that cannot fail is a defect) */
    rj_run(&c, &f, 12, NI_REJECTION_MAX_ROUNDS, 0, b);
    size_t differ = 0;
    for (size_t r = 0; r < B; r++) differ += a[r] != b[r];
    assert_true(differ > 0);

    /* reversed batch order: each sequence keeps its token */
    rj_ctx p;
    rj_init(&p, B, V);
    for (size_t r = 0; r < B; r++) {
        const size_t q = B - 1 - r;
        memcpy(p.logits + q * V, c.logits + r * V, V * sizeof *c.logits);
        p.seq[q] = c.seq[r];
        p.steps[q] = c.steps[r];
    }
    rj_upload(&p);
    rj_run(&p, &f, 11, NI_REJECTION_MAX_ROUNDS, 0, b);
    for (size_t r = 0; r < B; r++) assert_int_equal(b[B - 1 - r], a[r]);
    /* a batch of the first 5 rows alone */
    p.B = 5;
    memcpy(p.logits, c.logits, 5 * V * sizeof *c.logits);
    memcpy(p.seq, c.seq, 5 * sizeof *c.seq);
    memcpy(p.steps, c.steps, 5 * sizeof *c.steps);
    rj_upload(&p);
    rj_run(&p, &f, 11, NI_REJECTION_MAX_ROUNDS, 0, b);
    assert_memory_equal(a, b, 5 * sizeof *a);
    p.B = B;
    printf("  same seed: same tokens; reversed and partial batches: same token per sequence\n");
    free(a);
    free(b);
    rj_free(&p);
    rj_free(&c);
}

/* One launch captured in a graph; parameters and steps changed in device memory between
 * replays: the replay samples with the new ones. */
static void test_cuda_graph(void **state) {
    (void)state;
    const size_t V = 1000, B = 48;
    rj_ctx c;
    rj_init(&c, B, V);
    rj_fill(&c, 55);
    rj_upload(&c);
    int32_t *tok = hmalloc(B * sizeof *tok);
    void *scratch = hmalloc(ni_sampler_scratch_bytes(V));
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    const ni_sample_params p0 = params_of(&common_filters[0], 1);
    CK(cudaMemcpy(c.dparams, &p0, sizeof p0, cudaMemcpyHostToDevice));
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    CK(ni_cuda_sample_rejection(c.dtok, c.dlogits, c.dseq, c.dsteps, c.dparams, B, V,
                                (ni_stream)st));
    CK(cudaStreamEndCapture(st, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    for (size_t fi = 0; fi < N_COMMON; fi++) {
        const uint64_t seed = 1000 + fi;
        const ni_sample_params p = params_of(&common_filters[fi], seed);
        CK(cudaMemcpy(c.dparams, &p, sizeof p, cudaMemcpyHostToDevice));
        rj_set_steps(&c, (uint32_t)(fi * 11));
        CK(cudaMemset(c.dtok, 0x7F, B * sizeof *c.dtok));
        CK(cudaGraphLaunch(ge, st));
        CK(cudaStreamSynchronize(st));
        CK(cudaMemcpy(tok, c.dtok, B * sizeof *tok, cudaMemcpyDeviceToHost));
        assert_int_equal(rj_compare(&c, &common_filters[fi], seed, NI_REJECTION_MAX_ROUNDS, tok,
                                    NULL, scratch, NULL, "graph"),
                         0);
    }
    printf("  one captured graph replayed with %zu settings: the CPU's tokens each time\n",
           (size_t)N_COMMON);
    CK(cudaGraphExecDestroy(ge));
    CK(cudaGraphDestroy(g));
    CK(cudaStreamDestroy(st));
    free(scratch);
    free(tok);
    rj_free(&c);
}

/* ---- (5) greedy and invalid rows ----------------------------------------------------------- */

static void test_greedy_and_invalid(void **state) {
    (void)state;
    const size_t B = 40;
    static const size_t Vs[] = {1, 7, 50257};
    for (size_t vi = 0; vi < 3; vi++) {
        const size_t V = Vs[vi];
        rj_ctx c;
        rj_init(&c, B, V);
        uint64_t s = 77 + V;
        for (size_t r = 0; r < B; r++) {
            float *l = c.logits + r * V;
            fill_row(l, V, (int)(r % N_KINDS), &s);
            c.seq[r] = rng_next(&s);
            c.steps[r] = 3;
            if (r % 7 == 3 && V > 2) { /* a tie at the max: the lower index wins */
                size_t a = rng_next(&s) % V, b = rng_next(&s) % V;
                l[a] = l[b] = 1e4f;
            }
        }
        /* invalid rows: all -inf, NaN, +inf, NaN and -inf; a row with one finite logit */
        for (size_t i = 0; i < V; i++) c.logits[1 * V + i] = -INFINITY;
        c.logits[2 * V + V / 2] = NAN;
        c.logits[5 * V + V - 1] = INFINITY;
        for (size_t i = 0; i < V; i++) c.logits[9 * V + i] = i % 2 ? -INFINITY : NAN;
        for (size_t i = 0; i < V; i++) c.logits[6 * V + i] = -INFINITY;
        c.logits[6 * V + V / 3] = -1e30f;
        rj_upload(&c);
        int32_t *tok = hmalloc(B * sizeof *tok);
        void *scratch = hmalloc(ni_sampler_scratch_bytes(V));
        static const ni_filter greedy[] = {{0.0f, 20, 0.9f, 0.0f},
                                           {-1.0f, 0, 1.0f, 0.0f},
                                           {1.0f, 1, 0.9f, 0.1f},
                                           {1e-39f, 50, 0.5f, 0.0f}};
        for (size_t fi = 0; fi < 4; fi++) {
            rj_run(&c, &greedy[fi], 5, NI_REJECTION_MAX_ROUNDS, 0, tok);
            for (size_t r = 0; r < B; r++) {
                const float *l = c.logits + r * V;
                int32_t want = -1;
                float best = -INFINITY;
                for (size_t i = 0; i < V; i++) {
                    if (l[i] != l[i] || l[i] == INFINITY) {
                        want = -1;
                        break;
                    }
                    if (l[i] > best) {
                        best = l[i];
                        want = (int32_t)i;
                    }
                }
                if (tok[r] != want) {
                    fprintf(stderr, "greedy V=%zu filter %zu row %zu: got %d, want %d\n", V, fi, r,
                            tok[r], want);
                    fail();
                }
                ni_rng_key key = {5, c.seq[r], 3};
                assert_int_equal(ni_sample_rejection(l, V, &greedy[fi], key, scratch), want);
            }
        }
        /* invalid rows also when sampling, in both memory paths; the others as the CPU */
        const ni_filter f = {1.0f, 20, 0.9f, 0.0f};
        for (int glob = 0; glob < 2; glob++) {
            rj_run(&c, &f, 5, NI_REJECTION_MAX_ROUNDS, glob, tok);
            assert_int_equal(rj_compare(&c, &f, 5, NI_REJECTION_MAX_ROUNDS, tok, NULL, scratch,
                                        NULL, "invalid rows"),
                             0);
            assert_int_equal(tok[1], -1);
            assert_int_equal(tok[2], -1);
            assert_int_equal(tok[5], -1);
            assert_int_equal(tok[9], -1);
            assert_int_equal(tok[6], (int32_t)(V / 3));
        }
        /* NaN parameters: every row invalid, greedy or not */
        static const ni_filter bad[] = {{NAN, 20, 0.9f, 0.0f},
                                        {1.0f, 20, NAN, 0.0f},
                                        {1.0f, 20, 0.9f, NAN},
                                        {NAN, 1, 0.9f, 0.0f},
                                        {0.0f, 1, NAN, 0.0f}};
        for (size_t fi = 0; fi < sizeof bad / sizeof *bad; fi++) {
            rj_run(&c, &bad[fi], 5, NI_REJECTION_MAX_ROUNDS, 0, tok);
            for (size_t r = 0; r < B; r++) assert_int_equal(tok[r], -1);
        }
        free(scratch);
        free(tok);
        rj_free(&c);
    }
    /* V = 0: every row -1; B = 0: nothing launched */
    int32_t *dtok = dmalloc(4 * sizeof *dtok);
    ni_sample_params *dp = dmalloc(sizeof *dp);
    const ni_sample_params p = {1.0f, 20, 0.9f, 0.0f, 1};
    CK(cudaMemcpy(dp, &p, sizeof p, cudaMemcpyHostToDevice));
    CK(cudaMemset(dtok, 0x7F, 4 * sizeof *dtok));
    CK(ni_cuda_sample_rejection(dtok, (const float *)dp, NULL, NULL, dp, 4, 0, NULL));
    int32_t h[4];
    CK(cudaMemcpy(h, dtok, sizeof h, cudaMemcpyDeviceToHost));
    for (int i = 0; i < 4; i++) assert_int_equal(h[i], -1);
    CK(ni_cuda_sample_rejection(NULL, NULL, NULL, NULL, NULL, 0, 50257, NULL));
    assert_int_not_equal(
        ni_cuda_sample_rejection_ex(dtok, (const float *)dp, NULL, NULL, dp, 4, 7, 65, 0, NULL),
        0); /* round cap above 64 refused */
    cudaFree(dtok);
    cudaFree(dp);
}

/* ---- (6) micro-benchmark (printed, not asserted) ------------------------------------------- */

/* NI_SR_PER_ROW=n: the cost of each of the first 64 rows alone on a cluster of n blocks (2, as at
 * B = 64, where a batch takes as long as its slowest row, unless n is 1, 2, 4, 8 or 16), beside
 * what the CPU twin did for it (and its token, which must be the kernel's): which rows and which
 * paths make the batch slow. */
static void bench_per_row(const float *lg, const float *h, const uint64_t *seq,
                          const uint32_t *steps, const ni_sample_params *dp, size_t V,
                          const ni_filter *f, unsigned cluster, cudaEvent_t *ev, float *ms) {
    enum { ROWS = 64, RUNS = 11 };
    void *scratch = hmalloc(ni_sampler_scratch_bytes(V));
    int32_t *tok = dmalloc(sizeof *tok);
    double sum = 0, worst = 0;
    printf("    row  alone us  cpu rounds  pivot  above0  topk select  (cluster of %u)\n", cluster);
    for (size_t r = 0; r < ROWS; r++) {
        for (size_t i = 0; i < RUNS; i++) {
            CK(cudaEventRecord(ev[2 * i], NULL));
            CK(ni_cuda_sample_rejection_cfg(tok, lg + r * V, seq + r, steps + r, dp, 1, V,
                                            NI_REJECTION_MAX_ROUNDS, 0, cluster, NULL));
            CK(cudaEventRecord(ev[2 * i + 1], NULL));
        }
        CK(cudaDeviceSynchronize());
        for (size_t i = 0; i < RUNS; i++)
            CK(cudaEventElapsedTime(&ms[i], ev[2 * i], ev[2 * i + 1]));
        const double us = median(ms, RUNS) * 1e3;
        ni_rejection_stats st;
        const ni_rng_key key = {1, r, 0};
        const int32_t want =
            ni_sample_rejection_ex(h + r * V, V, f, key, scratch, NI_REJECTION_MAX_ROUNDS, &st);
        int32_t got;
        CK(cudaMemcpy(&got, tok, sizeof got, cudaMemcpyDeviceToHost));
        assert_int_equal(got, want);
        printf("    %3zu %9.1f %11u %6d %7zu %12d\n", r, us, st.rounds, st.chunk_pivot, st.n_above0,
               st.topk_mass_sel);
        sum += us;
        worst = us > worst ? us : worst;
    }
    printf("    mean %.1f us, slowest %.1f us\n", sum / ROWS, worst);
    cudaFree(tok);
    free(scratch);
}

static void test_bench(void **state) {
    (void)state;
    enum { RUNS = 20, WARM = 3 };
    static const size_t Bs[] = {1, 8, 16, 32, 64, 128, 256, 512};
    const size_t V = 50257, BMAX = 512;
    const ni_filter f = {1.0f, 20, 0.9f, 0.0f};
    cudaEvent_t ev[2 * (RUNS + WARM)];
    for (size_t i = 0; i < 2 * (RUNS + WARM); i++) CK(cudaEventCreate(&ev[i]));
    float ms[RUNS];
    float *lg = dmalloc(BMAX * V * 4);
    uint64_t *seq = dmalloc(BMAX * 8);
    uint32_t *steps = dmalloc(BMAX * 4);
    int32_t *tok = dmalloc(BMAX * 4);
    ni_sample_params *dp = dmalloc(sizeof *dp);
    const ni_sample_params p = params_of(&f, 1);
    CK(cudaMemcpy(dp, &p, sizeof p, cudaMemcpyHostToDevice));
    float *h = hmalloc(BMAX * V * 4);
    uint64_t *hs = hmalloc(BMAX * 8);
    uint32_t *hst = hmalloc(BMAX * 4);
    size_t wsb = ni_cuda_sample_sorted_workspace(BMAX, V);
    void *ws = dmalloc(wsb);
    for (size_t r = 0; r < BMAX; r++) {
        hs[r] = r;
        hst[r] = 0;
    }
    CK(cudaMemcpy(seq, hs, BMAX * 8, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(steps, hst, BMAX * 4, cudaMemcpyHostToDevice));
    for (int flat = 0; flat < 2; flat++) {
        uint64_t s = 5;
        const float scale = flat ? 0.55f : 3.0f;
        for (size_t i = 0; i < BMAX * V; i++) h[i] = scale * rng_normal(&s);
        CK(cudaMemcpy(lg, h, BMAX * V * 4, cudaMemcpyHostToDevice));
        printf("  V=%zu T=1 top_k=20 top_p=0.9, logits %s N(0,1) (median of %d):\n", V,
               flat ? "0.55 x" : "3 x", RUNS);
        printf("    %-5s %14s %14s %10s %16s\n", "B", "rejection us", "sorted us", "speedup",
               "rejection GB/s");
        for (size_t bi = 0; bi < sizeof Bs / sizeof *Bs; bi++) {
            const size_t B = Bs[bi];
            double t[2];
            for (int which = 0; which < 2; which++) {
                for (size_t i = 0; i < RUNS + WARM; i++) {
                    CK(cudaEventRecord(ev[2 * i], NULL));
                    if (which == 0)
                        CK(ni_cuda_sample_rejection(tok, lg, seq, steps, dp, B, V, NULL));
                    else
                        CK(ni_cuda_sample_sorted(tok, lg, seq, B, V, f.temperature, f.top_k,
                                                 f.top_p, f.min_p, 1, (uint32_t)i, ws, wsb, NULL));
                    CK(cudaEventRecord(ev[2 * i + 1], NULL));
                }
                CK(cudaDeviceSynchronize());
                for (size_t i = 0; i < RUNS; i++)
                    CK(cudaEventElapsedTime(&ms[i], ev[2 * (i + WARM)], ev[2 * (i + WARM) + 1]));
                t[which] = median(ms, RUNS) * 1e-3;
            }
            printf("    %-5zu %14.1f %14.1f %9.1fx %16.0f\n", B, t[0] * 1e6, t[1] * 1e6,
                   t[1] / t[0], (double)B * V * 4 / t[0] * 1e-9);
        }
        const char *per_row = getenv("NI_SR_PER_ROW");
        if (per_row) {
            const unsigned cl = (unsigned)atoi(per_row); /* a cluster: 1, 2, 4, 8 or 16 */
            const int ok = cl >= 1 && cl <= 16 && (cl & (cl - 1)) == 0;
            bench_per_row(lg, h, seq, steps, dp, V, &f, ok ? cl : 2, ev, ms);
        }
    }
    free(h);
    free(hs);
    free(hst);
    cudaFree(lg);
    cudaFree(seq);
    cudaFree(steps);
    cudaFree(tok);
    cudaFree(dp);
    cudaFree(ws);
    for (size_t i = 0; i < 2 * (RUNS + WARM); i++) cudaEventDestroy(ev[i]);
}

int main(void) {
    if (ni_test_no_gpu()) return NI_TEST_SKIP;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_and_invalid),
        cmocka_unit_test(test_matches_cpu),
        cmocka_unit_test(test_fallback_and_global),
        cmocka_unit_test(test_cluster_sizes),
        cmocka_unit_test(test_short_path),
        cmocka_unit_test(test_chi_square),
        cmocka_unit_test(test_kept_set),
        cmocka_unit_test(test_deterministic_and_batch_invariant),
        cmocka_unit_test(test_cuda_graph),
        cmocka_unit_test(test_bench),
    };
    ni_test_filter_from_env();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
