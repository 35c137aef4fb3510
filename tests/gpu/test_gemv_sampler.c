/* GPU tests of the small-batch matmuls (ni_cuda_gemv, ni_cuda_gemm_stream) and the sort-based
 * sampler (ni_cuda_sample_sorted). Both matmuls are compared with their CPU twin cpu_matmul
 * (+ cpu_gelu) on the same bf16-rounded (and, again, f16-rounded) data for every batch size
 * 1..32 and awkward IC / OC, with poisoned outputs (rows past N must stay untouched) and a
 * bitwise batch-invariance check. The sampler must give exactly the token of the CPU's
 * ni_sample_sorted for the same (seed, seq, step) (the canonical rule of sampling.h fixes it bit
 * for bit), never a token outside the kept set of ni_sample_distribution, frequencies that pass a
 * chi-square test against that distribution, the argmax when greedy, and -1 for invalid rows. A
 * micro-benchmark prints GEMV bandwidth for the gpt2-xl shapes and the sampler's latency
 * (printed, not asserted). Exits 77 without a GPU. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/numeric.h"
#include "cpu/ops.h"
#include "cuda/kernels.h"
#include "cuda/matmul.h"
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

static float rng_uniform(uint64_t *s) { /* [-1, 1) */
    return (float)(rng_next(s) >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

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

/* ---- GEMV against cpu_matmul --------------------------------------------------------------- */

/* Tolerance, per element: |gpu - ref| <= atol + rtol * |ref| with
 *   atol = 1e-5 * A + 1e-6, A = sum_k |x_k w_k| + |b| (the f32 summation error bound scale:
 *          both sides add exact 16-bit x 16-bit products in f32 (8 + 8 or 11 + 11 significant
 *          bits fit in f32's 24), in different orders (the CPU in
 *          16 lanes, the GPU in tensor-core k-steps and a split over warps), so they differ by
 *          a few ulps of the partial sums, far below 1e-5 * A; a lost or doubled product
 *          moves the result by |x_k w_k| ~ 0.25, about 16x atol even at IC = 6400);
 *   GELU: atol * 1.13 (the slope of GELU is at most 1.13) + 1e-6 + 5e-7 * |pre-activation|
 *          (tanhf's last bits differ between glibc and CUDA, scaled by 0.5 x in GELU);
 *   rtol = 1e-6 for f32 outputs and u = 2^-8 for bf16 outputs, 2^-11 for f16 outputs (the
 *          relative rounding bound, half an ulp), whose atol is also scaled by 1 + u. */
typedef struct {
    size_t IC, OC;
    ni_cuda_dtype dt;
    ni_half16 *x, *w, *b;          /* host 16-bit: (R, IC), (OC, IC), (OC); R the most rows */
    float *ref, *ref_gelu, *absum; /* (R, OC) */
    ni_half16 *dx, *dw, *db;
    ni_half16 *dout;               /* (R, OC) */
    float *dout_f32;               /* (R, OC) */
    void *dtmap;                   /* w's TMA descriptor (device), NULL without TMA */
    ni_cuda_gemm_stream_plan plan; /* gemm_stream's share (plan.blocks 0: not taken) */
    float *dws;                    /* gemm_stream's partial sums, room for any share */
    unsigned *dcnt;                /* and its counters */
    const char *kernel;
} gemv_case;

static uint16_t h16_from(ni_cuda_dtype dt, float x) {
    return dt == NI_CUDA_F16 ? ni_f32_to_f16(x) : ni_f32_to_bf16(x);
}

static float h16_to(ni_cuda_dtype dt, uint16_t h) {
    return dt == NI_CUDA_F16 ? ni_f16_to_f32(h) : ni_bf16_to_f32(h);
}

static const char *dt_name(ni_cuda_dtype dt) {
    return dt == NI_CUDA_F16 ? "f16" : "bf16";
}

static void gemv_case_init(gemv_case *c, size_t IC, size_t OC, uint64_t seed, ni_cuda_dtype dt) {
    const size_t R = NI_CUDA_GEMV_MAX_ROWS;
    c->IC = IC;
    c->OC = OC;
    c->dt = dt;
    c->x = hmalloc(R * IC * sizeof *c->x);
    c->w = hmalloc(OC * IC * sizeof *c->w);
    c->b = hmalloc(OC * sizeof *c->b);
    float *xf = hmalloc(R * IC * sizeof *xf), *wf = hmalloc(OC * IC * sizeof *wf);
    float *bf = hmalloc(OC * sizeof *bf);
    uint64_t s = seed;
    for (size_t i = 0; i < R * IC; i++) {
        c->x[i] = h16_from(dt, rng_uniform(&s));
        xf[i] = h16_to(dt, c->x[i]);
    }
    for (size_t i = 0; i < OC * IC; i++) {
        c->w[i] = h16_from(dt, rng_uniform(&s));
        wf[i] = h16_to(dt, c->w[i]);
    }
    for (size_t i = 0; i < OC; i++) {
        c->b[i] = h16_from(dt, rng_uniform(&s));
        bf[i] = h16_to(dt, c->b[i]);
    }
    c->ref = hmalloc(R * OC * sizeof *c->ref);
    c->ref_gelu = hmalloc(R * OC * sizeof *c->ref_gelu);
    c->absum = hmalloc(R * OC * sizeof *c->absum);
    cpu_matmul(c->ref, xf, wf, bf, R, IC, OC, 0);
    cpu_gelu(c->ref_gelu, c->ref, R * OC, 0);
    for (size_t i = 0; i < R * IC; i++) xf[i] = fabsf(xf[i]);
    for (size_t i = 0; i < OC * IC; i++) wf[i] = fabsf(wf[i]);
    for (size_t i = 0; i < OC; i++) bf[i] = fabsf(bf[i]);
    cpu_matmul(c->absum, xf, wf, bf, R, IC, OC, 0);
    free(xf);
    free(wf);
    free(bf);

    c->dx = dmalloc(R * IC * sizeof *c->dx);
    c->dw = dmalloc(OC * IC * sizeof *c->dw);
    c->db = dmalloc(OC * sizeof *c->db);
    c->dout = dmalloc((R + 1) * OC * sizeof *c->dout); /* one guard row past the most */
    c->dout_f32 = dmalloc((R + 1) * OC * sizeof *c->dout_f32);
    CK(cudaMemcpy(c->dx, c->x, R * IC * sizeof *c->x, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(c->dw, c->w, OC * IC * sizeof *c->w, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(c->db, c->b, OC * sizeof *c->b, cudaMemcpyHostToDevice));
    c->kernel = "gemv";
    c->dtmap = NULL;
    memset(&c->plan, 0, sizeof c->plan);
    c->dws = NULL;
    c->dcnt = NULL;
}

/* Makes the case run gemm_stream: w's tensor map on the device and the grid for the shape. The
 * harness's row count is the GEMV's, which is gemm_stream's too. */
_Static_assert(NI_CUDA_GEMM_STREAM_MAX_ROWS == NI_CUDA_GEMV_MAX_ROWS, "one row bound for both");
static void gemv_case_use_stream_plan(gemv_case *c, size_t want_parts) {
    size_t sms = 0;
    CK(ni_cuda_gemm_stream_setup(&sms));
    void *map = aligned_alloc(64, 128);
    assert_non_null(map);
    CK(ni_cuda_weight_tensor_map(map, c->dw, c->IC, c->OC, c->dt));
    c->dtmap = dmalloc(128);
    CK(cudaMemcpy(c->dtmap, map, 128, cudaMemcpyHostToDevice));
    free(map);
    if (!ni_cuda_gemm_stream_plan_for(&c->plan, c->IC, c->OC, sms, want_parts))
        memset(&c->plan, 0, sizeof c->plan);
    c->kernel = "gemm_stream";
    /* room for any share (the small-grid test makes its own), counters zeroed */
    const size_t S = (c->IC + NI_CUDA_SLAB_COLS - 1) / NI_CUDA_SLAB_COLS;
    const size_t T = (c->OC + 15) / 16;
    c->dws = dmalloc(T * S * 32 * 16 * sizeof(float));
    c->dcnt = dmalloc((T > 1024 ? T : 1024) * sizeof(unsigned));
    CK(cudaMemset(c->dcnt, 0, (T > 1024 ? T : 1024) * sizeof(unsigned)));
}

static void gemv_case_use_stream(gemv_case *c) {
    gemv_case_use_stream_plan(c, 0);
}

/* "132 blocks, 5 parts" */
static const char *plan_name(const ni_cuda_gemm_stream_plan *p, char *buf, size_t n) {
    snprintf(buf, n, "%3zu blocks, %zu part%s", p->blocks, p->parts, p->parts > 1 ? "s" : "");
    return buf;
}

/* The case's gemm_stream launch: out (R + 1, OC) 16-bit, kv or NULL, bias or NULL. */
static int stream_launch(const gemv_case *c, ni_half16 *out, const ni_cuda_kv_dest *kv,
                         const ni_half16 *bias, size_t N, int gelu) {
    return ni_cuda_gemm_stream(out, c->dws, c->dcnt, kv, c->dx, c->dtmap, bias, N, c->IC, c->OC,
                               gelu, c->dt, &c->plan, NULL);
}

static void gemv_case_free(gemv_case *c) {
    free(c->x);
    free(c->w);
    free(c->b);
    free(c->ref);
    free(c->ref_gelu);
    free(c->absum);
    cudaFree(c->dx);
    cudaFree(c->dw);
    cudaFree(c->db);
    cudaFree(c->dout);
    cudaFree(c->dout_f32);
    cudaFree(c->dtmap);
    cudaFree(c->dws);
    cudaFree(c->dcnt);
}

/* Runs the GEMV (or, c->kernel "gemm_stream", that kernel, 16-bit outputs only) for N rows into
 * poisoned outputs; out_f32 / gelu select the variant. Returns the result as f32 in res (R + 1,
 * OC) and the raw bits in bits ((R + 1) * OC * 4 bytes), R the most rows and one guard row. */
static void gemv_run(const gemv_case *c, size_t N, int f32, int gelu, float *res, void *bits) {
    const size_t R1 = NI_CUDA_GEMV_MAX_ROWS + 1, OC = c->OC;  /* with the guard row */
    CK(cudaMemset(c->dout, 0xFF, R1 * OC * sizeof *c->dout)); /* 16-bit 0xFFFF, f32: NaN */
    CK(cudaMemset(c->dout_f32, 0xFF, R1 * OC * sizeof *c->dout_f32));
    if (strcmp(c->kernel, "gemm_stream") == 0)
        CK(stream_launch(c, c->dout, NULL, c->db, N, gelu));
    else
        CK(ni_cuda_gemv(f32 ? NULL : c->dout, f32 ? c->dout_f32 : NULL, c->dx, c->dw, c->db, N,
                        c->IC, OC, gelu, c->dt, NULL));
    CK(cudaDeviceSynchronize());
    if (f32) {
        CK(cudaMemcpy(bits, c->dout_f32, R1 * OC * 4, cudaMemcpyDeviceToHost));
        memcpy(res, bits, R1 * OC * 4);
    } else {
        CK(cudaMemcpy(bits, c->dout, R1 * OC * 2, cudaMemcpyDeviceToHost));
        const ni_half16 *h = bits;
        for (size_t i = 0; i < R1 * OC; i++) res[i] = h16_to(c->dt, h[i]);
    }
}

/* Checks rows < N against the reference and rows >= N still poisoned; returns the worst
 * err / tol seen (fails the test past 1). */
static double gemv_check(const gemv_case *c, size_t N, int f32, int gelu, const float *res,
                         const void *bits) {
    const size_t R = NI_CUDA_GEMV_MAX_ROWS, OC = c->OC;
    const float *ref = gelu ? c->ref_gelu : c->ref;
    for (size_t o = 0; o < OC; o++) { /* the guard row past the most rows: never written */
        const size_t i = R * OC + o;
        if (f32 ? ((const uint32_t *)bits)[i] != 0xFFFFFFFFu
                : ((const uint16_t *)bits)[i] != 0xFFFFu) {
            fprintf(stderr, "%s %s IC=%zu OC=%zu N=%zu: the guard row written\n", c->kernel,
                    dt_name(c->dt), c->IC, OC, N);
            fail();
        }
    }
    const double u = c->dt == NI_CUDA_F16 ? 1.0 / 2048.0 : 1.0 / 256.0;
    const double rtol = f32 ? 1e-6 : u;
    double worst = 0;
    for (size_t n = 0; n < R; n++) {
        for (size_t o = 0; o < OC; o++) {
            const size_t i = n * OC + o;
            if (n >= N) {
                int poisoned = f32 ? ((const uint32_t *)bits)[i] == 0xFFFFFFFFu
                                   : ((const uint16_t *)bits)[i] == 0xFFFFu;
                if (!poisoned) {
                    fprintf(stderr, "%s %s IC=%zu OC=%zu N=%zu f32=%d: row %zu written\n",
                            c->kernel, dt_name(c->dt), c->IC, OC, N, f32, n);
                    fail();
                }
                continue;
            }
            double atol = 1e-5 * (double)c->absum[i] + 1e-6;
            if (gelu) atol = 1.13 * atol + 1e-6 + 5e-7 * fabs((double)c->ref[i]);
            if (!f32) atol *= 1.0 + u; /* round(v) - ref <= |v - ref| (1 + u) + ... */
            const double tol = atol + rtol * fabs((double)ref[i]);
            const double err = fabs((double)res[i] - (double)ref[i]);
            const double q = err / tol;
            if (!(q <= 1.0)) { /* NaN fails too */
                fprintf(stderr,
                        "%s %s IC=%zu OC=%zu N=%zu f32=%d gelu=%d: out[%zu][%zu] = %.9g, ref "
                        "%.9g, tol %.3g\n",
                        c->kernel, dt_name(c->dt), c->IC, OC, N, f32, gelu, n, o, (double)res[i],
                        (double)ref[i], tol);
                fail();
            }
            if (q > worst) worst = q;
        }
    }
    return worst;
}

/* Runs and checks every N = 1 .. 32 with and without GELU, and with f32 outputs too when f32;
 * returns the worst err / tol. */
static double gemv_case_check_all_n(const gemv_case *c, int f32) {
    const size_t R = NI_CUDA_GEMV_MAX_ROWS;
    float *res = hmalloc((R + 1) * c->OC * sizeof *res);
    void *bits = hmalloc((R + 1) * c->OC * 4);
    double worst = 0;
    for (int variant = 0; variant < 4; variant++) {
        const int out_f32 = variant & 1, gelu = variant >> 1;
        if (out_f32 && !f32) continue;
        for (size_t N = 1; N <= R; N++) {
            gemv_run(c, N, out_f32, gelu, res, bits);
            double q = gemv_check(c, N, out_f32, gelu, res, bits);
            if (q > worst) worst = q;
        }
    }
    free(res);
    free(bits);
    return worst;
}

static void gemv_case_all_n(size_t IC, size_t OC, uint64_t seed, ni_cuda_dtype dt) {
    gemv_case c;
    gemv_case_init(&c, IC, OC, seed, dt);
    const double worst = gemv_case_check_all_n(&c, 1);
    printf("  gemv %-4s IC=%-5zu OC=%-6zu N=1..%d 16-bit/f32 x plain/gelu: worst err/tol %.3f\n",
           dt_name(dt), IC, OC, NI_CUDA_GEMV_MAX_ROWS, worst);
    gemv_case_free(&c);
}

static void test_gemv_shapes(void **state) {
    (void)state;
    static const size_t ics[] = {1, 7, 8, 9, 24, 129, 768, 1600, 6400};
    static const size_t ocs[] = {1, 7, 8, 9, 24, 129, 768, 1600};
    for (int k = 0; k < 2; k++) {
        const ni_cuda_dtype dt = k ? NI_CUDA_F16 : NI_CUDA_BF16;
        uint64_t seed = 1;
        for (size_t i = 0; i < sizeof ics / sizeof *ics; i++)
            for (size_t j = 0; j < sizeof ocs / sizeof *ocs; j++)
                gemv_case_all_n(ics[i], ocs[j], seed++, dt);
        /* the gpt2-xl shapes not above and the vocabulary (odd OC, also with odd IC) */
        gemv_case_all_n(1600, 4800, seed++, dt);
        gemv_case_all_n(1600, 6400, seed++, dt);
        gemv_case_all_n(9, 50257, seed++, dt);
        gemv_case_all_n(1600, 50257, seed++, dt);
        /* 16-feature warps with IC split over 4 warps (the only such shape here) */
        gemv_case_all_n(768, 8448, seed++, dt);
    }
}

/* A row's result must not depend on the other rows of the batch: the same bits for every N as
 * in a batch of 32 (f32 or 16-bit outputs, with or without GELU). */
static void gemv_case_check_invariance(const gemv_case *c, int f32, int gelu) {
    const size_t R = NI_CUDA_GEMV_MAX_ROWS, OC = c->OC, esz = f32 ? 4 : 2;
    float *res = hmalloc((R + 1) * OC * sizeof *res);
    uint8_t *full = hmalloc((R + 1) * OC * 4), *bits = hmalloc((R + 1) * OC * 4);
    gemv_run(c, R, f32, gelu, res, full);
    for (size_t N = 1; N < R; N++) {
        gemv_run(c, N, f32, gelu, res, bits);
        if (memcmp(bits, full, N * OC * esz) != 0) {
            fprintf(stderr, "%s %s IC=%zu OC=%zu: rows of N=%zu differ from N=%zu\n", c->kernel,
                    dt_name(c->dt), c->IC, OC, N, R);
            fail();
        }
    }
    free(res);
    free(full);
    free(bits);
}

/* The GEMV's rows, f32 outputs. */
static void test_gemv_batch_invariance(void **state) {
    (void)state;
    static const size_t shapes[][2] = {
        {768, 2304}, {6400, 1600}, {129, 129}, {1600, 50257}, {768, 8448}};
    for (size_t k = 0; k < 2 * (sizeof shapes / sizeof *shapes); k++) {
        gemv_case c;
        const size_t sk = k % (sizeof shapes / sizeof *shapes);
        gemv_case_init(&c, shapes[sk][0], shapes[sk][1], 100 + k,
                       k >= sizeof shapes / sizeof *shapes ? NI_CUDA_F16 : NI_CUDA_BF16);
        gemv_case_check_invariance(&c, 1, 0);
        gemv_case_free(&c);
    }
}

/* ---- gemm_stream (the TMA-streamed product for up to 32 rows), checked the same way ------- */

static size_t stream_sms(void) {
    size_t sms = 0;
    CK(ni_cuda_gemm_stream_setup(&sms));
    return sms;
}

/* With parts: the counters left zero, and a second launch (which finds them as the first did)
 * gives the same bits. */
static void stream_check_parts(const gemv_case *c) {
    if (c->plan.parts < 2) return;
    const size_t R1 = NI_CUDA_GEMM_STREAM_MAX_ROWS + 1, OC = c->OC, T = (OC + 15) / 16;
    unsigned *cnt = hmalloc(T * sizeof *cnt);
    CK(cudaMemcpy(cnt, c->dcnt, T * sizeof *cnt, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < T; i++)
        if (cnt[i] != 0)
            fail_msg("gemm_stream IC=%zu OC=%zu: counter %zu left %u", c->IC, OC, i, cnt[i]);
    float *res = hmalloc(R1 * OC * sizeof *res);
    uint8_t *a = hmalloc(R1 * OC * 4), *b = hmalloc(R1 * OC * 4);
    gemv_run(c, 32, 0, 1, res, a);
    gemv_run(c, 32, 0, 1, res, b);
    if (memcmp(a, b, R1 * OC * 2) != 0)
        fail_msg("gemm_stream IC=%zu OC=%zu: a second launch differs", c->IC, OC);
    /* letting the next kernel launch at the start (a decode step's products) changes no bit */
    gemv_case early = *c;
    early.plan.early = 1;
    gemv_run(&early, 32, 0, 1, res, b);
    if (memcmp(a, b, R1 * OC * 2) != 0)
        fail_msg("gemm_stream IC=%zu OC=%zu: the early-launch variant differs", c->IC, OC);
    /* deferred: the sums left in the workspace, added in part order with the bias and rounded,
     * are the bits of the outputs (GELU off: it cannot be deferred) */
    const size_t N = 27, P = c->plan.parts, stride = T * 16;
    gemv_run(c, N, 0, 0, res, a);
    ni_cuda_gemm_stream_plan dp = c->plan;
    dp.defer = 1;
    CK(cudaMemset(c->dout, 0xFF, R1 * OC * 2));
    /* the launch above left the same sums there: poison them (NaN), so that only the deferred
     * launch's writes can pass */
    CK(cudaMemset(c->dws, 0xFF, P * N * stride * sizeof(float)));
    CK(ni_cuda_gemm_stream(c->dout, c->dws, NULL, NULL, c->dx, c->dtmap, c->db, N, c->IC, OC, 0,
                           c->dt, &dp, NULL));
    float *ws = hmalloc(P * N * stride * sizeof *ws);
    uint16_t *bias = hmalloc(OC * 2); /* the device's: the small-grid test zeroes it */
    CK(cudaMemcpy(ws, c->dws, P * N * stride * sizeof *ws, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(bias, c->db, OC * 2, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(b, c->dout, R1 * OC * 2, cudaMemcpyDeviceToHost));
    const uint16_t *out = (const uint16_t *)a;
    for (size_t i = 0; i < R1 * OC; i++)
        if (((const uint16_t *)b)[i] != 0xFFFF)
            fail_msg("gemm_stream IC=%zu OC=%zu deferred: output %zu written", c->IC, OC, i);
    for (size_t n = 0; n < N; n++)
        for (size_t o = 0; o < OC; o++) {
            float v = 0.0f;
            for (size_t p = 0; p < P; p++) v += ws[(p * N + n) * stride + o];
            const uint16_t h = h16_from(c->dt, v + h16_to(c->dt, bias[o]));
            if (h != out[n * OC + o])
                fail_msg("gemm_stream IC=%zu OC=%zu deferred: out[%zu][%zu] sums to %04x, the "
                         "product stored %04x",
                         c->IC, OC, n, o, h, out[n * OC + o]);
        }
    /* a deferral needs parts and no GELU */
    assert_int_not_equal(ni_cuda_gemm_stream(c->dout, c->dws, NULL, NULL, c->dx, c->dtmap, c->db, N,
                                             c->IC, OC, 1, c->dt, &dp, NULL),
                         0);
    free(ws);
    free(bias);
    free(cnt);
    free(res);
    free(a);
    free(b);
}

/* Every N with and without GELU against the CPU, for the planner's share or one asked for. */
static void stream_case_all_n(size_t IC, size_t OC, size_t want_parts, uint64_t seed,
                              ni_cuda_dtype dt) {
    gemv_case c;
    char name[64];
    gemv_case_init(&c, IC, OC, seed, dt);
    gemv_case_use_stream_plan(&c, want_parts);
    assert_true(c.plan.blocks > 0);
    const double worst = gemv_case_check_all_n(&c, 0);
    stream_check_parts(&c);
    printf("  gemm_stream %-4s IC=%-5zu OC=%-6zu (%s) N=1..%d plain/gelu: worst err/tol %.3f\n",
           dt_name(dt), IC, OC, plan_name(&c.plan, name, sizeof name), NI_CUDA_GEMM_STREAM_MAX_ROWS,
           worst);
    gemv_case_free(&c);
}

static void test_gemm_stream_shapes(void **state) {
    (void)state;
    const size_t sms = stream_sms();
    if (sms == 0) {
        printf("  gemm_stream: no TMA on this device\n");
        skip();
    }
    ni_cuda_gemm_stream_plan p;
    char name[64];
    /* OC = 64 sms - 8: 4 tiles per block, the last one half past OC; one tile more is refused */
    const size_t full = 64 * sms - 8;
    assert_int_equal(ni_cuda_gemm_stream_plan_for(&p, 264, 64 * sms + 8, sms, 0), 0);
    assert_int_equal(p.blocks, 0);
    assert_int_equal(ni_cuda_gemm_stream_plan_for(&p, 260, 64, sms, 0), 0); /* IC % 8 */
    assert_int_equal(ni_cuda_gemm_stream_plan_for(&p, 2048, 64, sms, 0), 1);
    assert_true(p.parts == 1 && p.blocks == 4 && p.ws_floats == 0 && p.counters == 0);
    /* past 2048 columns IC is split: 9 slab columns of 4 tiles in 2 parts, gpt2-xl's fcproj in
     * at least 4 */
    assert_int_equal(ni_cuda_gemm_stream_plan_for(&p, 2056, 64, sms, 0), 1);
    assert_true(p.parts == 2 && p.blocks == 8 && p.ws_floats > 0 && p.counters == 4);
    assert_int_equal(ni_cuda_gemm_stream_plan_for(&p, 6400, 1600, sms, 0), 1);
    assert_true(p.parts >= 4 && p.blocks % p.parts == 0 && p.blocks <= sms);
    printf("  gemm_stream plan for IC=6400 OC=1600: %s, busiest block %zu slabs\n",
           plan_name(&p, name, sizeof name), p.max_slabs);
    assert_int_equal(ni_cuda_gemm_stream_plan_for(&p, 1600, 6400, sms, 0), 1);
    printf("  gemm_stream plan for IC=1600 OC=6400: %s, busiest block %zu slabs\n",
           plan_name(&p, name, sizeof name), p.max_slabs);
    /* parts on request, up to one a slab column; past that the planner's share */
    assert_int_equal(ni_cuda_gemm_stream_plan_for(&p, 1600, 129, sms, 7), 1);
    assert_int_equal(p.parts, 7);
    assert_int_equal(ni_cuda_gemm_stream_plan_for(&p, 1600, 4800, sms, 8), 1);
    assert_int_equal(p.parts, 1);
    assert_int_equal(ni_cuda_gemm_stream_plan_for(&p, 6400, 1600, sms, 2), 1);
    assert_true(p.parts >= 4);
    static const size_t shapes[][2] = {{8, 1},       {8, 7},       {24, 9},      {264, 129},
                                       {520, 24},    {768, 2304},  {768, 3072},  {2048, 768},
                                       {1600, 4800}, {1600, 6400}, {2048, 1600}, {2056, 24},
                                       {3072, 768},  {5120, 1280}, {6400, 1600}, {6408, 129}};
    for (int k = 0; k < 2; k++) {
        const ni_cuda_dtype dt = k ? NI_CUDA_F16 : NI_CUDA_BF16;
        uint64_t seed = 500;
        for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
            stream_case_all_n(shapes[i][0], shapes[i][1], 0, seed++, dt);
        stream_case_all_n(264, full, 0, seed++, dt);
        /* parts asked for: ranges of one slab column, and uneven ranges (7 columns in 3) */
        stream_case_all_n(1600, 129, 7, seed++, dt);
        stream_case_all_n(1600, 1600, 3, seed++, dt);
    }
}

/* The shares of other grids: every block 4 tiles, so the 6-slot ring wraps (IC = 2048: 32
 * slabs a block), whatever this card's SM count, in one part or several; and no bias, which
 * must equal a zero bias. */
static void test_gemm_stream_small_grid(void **state) {
    (void)state;
    if (stream_sms() == 0) skip();
    /* IC, OC, parts */
    static const size_t shapes[][3] = {{1600, 4800, 1}, {2048, 1600, 1}, {264, 129, 1},
                                       {6400, 1600, 4}, {6400, 1600, 5}, {1600, 1600, 7}};
    const size_t R = NI_CUDA_GEMM_STREAM_MAX_ROWS;
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        gemv_case c;
        char name[64];
        gemv_case_init(&c, shapes[k][0], shapes[k][1], 900 + k, NI_CUDA_BF16);
        gemv_case_use_stream(&c);
        const size_t OC = c.OC, tiles = (OC + 15) / 16, P = shapes[k][2];
        c.plan.parts = P;
        c.plan.blocks = P * ((tiles + 3) / 4);
        float *res = hmalloc((R + 1) * OC * sizeof *res);
        uint16_t *bits = hmalloc((R + 1) * OC * 4), *nobias = hmalloc(R * OC * 2);
        double worst = 0;
        for (size_t N = 1; N <= R; N += 7) {
            gemv_run(&c, N, 0, 1, res, bits);
            double q = gemv_check(&c, N, 0, 1, res, bits);
            if (q > worst) worst = q;
        }
        /* bias NULL against a zero bias, bit for bit */
        CK(stream_launch(&c, c.dout, NULL, NULL, R, 0));
        CK(cudaMemcpy(nobias, c.dout, R * OC * 2, cudaMemcpyDeviceToHost));
        CK(cudaMemset(c.db, 0, OC * 2));
        CK(stream_launch(&c, c.dout, NULL, c.db, R, 0));
        CK(cudaMemcpy(bits, c.dout, R * OC * 2, cudaMemcpyDeviceToHost));
        if (memcmp(bits, nobias, R * OC * 2) != 0)
            fail_msg("gemm_stream IC=%zu OC=%zu: no bias differs from a zero bias", c.IC, OC);
        stream_check_parts(&c);
        printf("  gemm_stream bf16 IC=%-5zu OC=%-6zu (%s) GELU: worst err/tol %.3f; no bias = "
               "zero bias\n",
               c.IC, OC, plan_name(&c.plan, name, sizeof name), worst);
        free(res);
        free(bits);
        free(nobias);
        gemv_case_free(&c);
    }
}

/* With a kv destination the keys and values go to the caches as ni_cuda_kv_append would put
 * them: every cache element a row owns holds that row's 16-bit output, the others stay
 * poisoned, and the outputs are the bits of the run without a destination. Heads of 64 (8-byte
 * stores) and of 10 (a group of 4 features straddles a head and the key/value boundary); in one
 * part, then through the parts' epilogue. */
static void test_gemm_stream_kv(void **state) {
    (void)state;
    if (stream_sms() == 0) skip();
    static const size_t heads[][2] = {{4, 64}, {3, 10}, {4, 64}, {3, 10}};
    const size_t S = 3, T = 40, IC = 264, N = 20;
    for (size_t k = 0; k < 4; k++) {
        const size_t NH = heads[k][0], HS = heads[k][1], C = NH * HS, OC = 3 * C;
        const size_t cache = S * NH * T * HS;
        gemv_case c;
        char name[64];
        gemv_case_init(&c, IC, OC, 1234 + k, NI_CUDA_BF16);
        gemv_case_use_stream_plan(&c, k >= 2 ? 2 : 0);
        int32_t hs[32], hp[32];
        for (size_t n = 0; n < N; n++) hs[n] = (int32_t)(n % S), hp[n] = (int32_t)(3 + n);
        int32_t *ds = dmalloc(N * 4), *dp = dmalloc(N * 4);
        CK(cudaMemcpy(ds, hs, N * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dp, hp, N * 4, cudaMemcpyHostToDevice));
        ni_half16 *kc = dmalloc(cache * 2), *vc = dmalloc(cache * 2);
        CK(cudaMemset(kc, 0xFF, cache * 2));
        CK(cudaMemset(vc, 0xFF, cache * 2));
        uint16_t *out = hmalloc(N * OC * 2), *plain = hmalloc(N * OC * 2);
        uint16_t *hk = hmalloc(cache * 2), *hv = hmalloc(cache * 2);
        const ni_cuda_kv_dest kv = {kc, vc, ds, dp, NH, HS, T};
        CK(stream_launch(&c, c.dout, &kv, c.db, N, 0));
        CK(cudaMemcpy(out, c.dout, N * OC * 2, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(hk, kc, cache * 2, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(hv, vc, cache * 2, cudaMemcpyDeviceToHost));
        CK(stream_launch(&c, c.dout, NULL, c.db, N, 0));
        CK(cudaMemcpy(plain, c.dout, N * OC * 2, cudaMemcpyDeviceToHost));
        if (memcmp(out, plain, N * OC * 2) != 0)
            fail_msg("gemm_stream HS=%zu: outputs differ with a kv destination", HS);
        for (size_t sl = 0; sl < S; sl++)
            for (size_t h = 0; h < NH; h++)
                for (size_t t = 0; t < T; t++)
                    for (size_t d = 0; d < HS; d++) {
                        const size_t i = ((sl * NH + h) * T + t) * HS + d;
                        uint16_t ek = 0xFFFF, ev = 0xFFFF;
                        for (size_t n = 0; n < N; n++)
                            if ((size_t)hs[n] == sl && (size_t)hp[n] == t) {
                                ek = out[n * OC + C + h * HS + d];
                                ev = out[n * OC + 2 * C + h * HS + d];
                            }
                        if (hk[i] != ek || hv[i] != ev)
                            fail_msg("gemm_stream HS=%zu: cache (%zu, %zu, %zu, %zu) holds %04x / "
                                     "%04x, want %04x / %04x",
                                     HS, sl, h, t, d, hk[i], hv[i], ek, ev);
                    }
        /* a destination for a product that is not 3 C wide is refused */
        const ni_cuda_kv_dest bad = {kc, vc, ds, dp, NH + 1, HS, T};
        assert_int_not_equal(stream_launch(&c, c.dout, &bad, c.db, N, 0), 0);
        printf("  gemm_stream kv destination: %zu heads of %zu, %zu rows (%s): caches as "
               "kv_append\n",
               NH, HS, N, plan_name(&c.plan, name, sizeof name));
        free(out);
        free(plain);
        free(hk);
        free(hv);
        cudaFree(ds);
        cudaFree(dp);
        cudaFree(kc);
        cudaFree(vc);
        gemv_case_free(&c);
    }
}

/* As for the GEMV: a row's bits do not depend on the rest of the batch, with any share. */
static void test_gemm_stream_batch_invariance(void **state) {
    (void)state;
    if (stream_sms() == 0) skip();
    /* IC, OC, parts asked for */
    static const size_t shapes[][3] = {{1600, 4800, 0}, {2048, 1600, 0}, {264, 129, 0},
                                       {6400, 1600, 0}, {1600, 1600, 3}, {264, 129, 2}};
    const size_t ns = sizeof shapes / sizeof *shapes;
    for (size_t k = 0; k < 2 * ns; k++) {
        gemv_case c;
        gemv_case_init(&c, shapes[k % ns][0], shapes[k % ns][1], 700 + k,
                       k >= ns ? NI_CUDA_F16 : NI_CUDA_BF16);
        gemv_case_use_stream_plan(&c, shapes[k % ns][2]);
        c.plan.early = (int)(k & 1); /* as in a decode step every other time (no bit changes) */
        gemv_case_check_invariance(&c, 0, 1);
        gemv_case_free(&c);
    }
}

static void test_gemm_stream_args(void **state) {
    (void)state;
    const size_t sms = stream_sms();
    if (sms == 0) skip();
    gemv_case c;
    gemv_case_init(&c, 264, 129, 9, NI_CUDA_BF16);
    gemv_case_use_stream(&c);
    const size_t R = NI_CUDA_GEMM_STREAM_MAX_ROWS;
    ni_half16 *o = c.dout, *b = c.db;
    const ni_half16 *x = c.dx;
    const void *m = c.dtmap;
    const ni_cuda_gemm_stream_plan ok = c.plan;
    /* too many rows, no descriptor or plan, an unknown type, then shares that do not fit:
     * a grid too small for the tiles or past them, one not a multiple of the parts, more parts
     * than slab columns, too few parts for IC's inputs, parts without a workspace or counters:
     * refused without a launch */
    assert_int_not_equal(ni_cuda_gemm_stream(o, NULL, NULL, NULL, x, m, b, R + 1, 264, 129, 0,
                                             NI_CUDA_BF16, &ok, NULL),
                         0);
    assert_int_not_equal(ni_cuda_gemm_stream(o, NULL, NULL, NULL, x, NULL, b, 1, 264, 129, 0,
                                             NI_CUDA_BF16, &ok, NULL),
                         0);
    assert_int_not_equal(
        ni_cuda_gemm_stream(o, NULL, NULL, NULL, x, m, b, 1, 264, 129, 0, NI_CUDA_BF16, NULL, NULL),
        0);
    assert_int_not_equal(ni_cuda_gemm_stream(o, NULL, NULL, NULL, x, m, b, 1, 264, 129, 0,
                                             (ni_cuda_dtype)7, &ok, NULL),
                         0);
    static const size_t bad[][4] = {/* IC, blocks, parts, with ws and counters */
                                    {264, 2, 1, 1}, {264, 10, 1, 1}, {264, 9, 2, 1},
                                    {264, 9, 3, 1}, {2056, 9, 1, 1}, {264, 18, 2, 0}};
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
        ni_cuda_gemm_stream_plan p = ok;
        p.blocks = bad[k][1], p.parts = bad[k][2];
        const int with = (int)bad[k][3];
        if (ni_cuda_gemm_stream(o, with ? c.dws : NULL, with ? c.dcnt : NULL, NULL, x, m, b, 1,
                                bad[k][0], 129, 0, NI_CUDA_BF16, &p, NULL) == 0)
            fail_msg("gemm_stream: bad share %zu (IC %zu, %zu blocks, %zu parts, workspace %zu) "
                     "taken",
                     k, bad[k][0], bad[k][1], bad[k][2], bad[k][3]);
    }
    CK(cudaMemset(c.dout, 0xFF, 129 * 2));
    CK(ni_cuda_gemm_stream(o, NULL, NULL, NULL, x, m, b, 0, 264, 129, 0, NI_CUDA_BF16, &ok, NULL));
    uint16_t h[129];
    CK(cudaMemcpy(h, c.dout, sizeof h, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < 129; i++) assert_int_equal(h[i], 0xFFFF);
    gemv_case_free(&c);
}

/* The product before a LayerNorm, end to end: ni_matmul_sums leaves gemm_stream's parts in the
 * workspace and ni_cuda_residual_layernorm adds them; the residual and the normalized rows must
 * be the bits of the plain path (the product's 16-bit output, then the LayerNorm of it). gpt2's
 * and gpt2-xl's MLP down projections, 27 rows, bf16 and f16. */
static void test_gemm_stream_sums_to_layernorm(void **state) {
    (void)state;
    if (stream_sms() == 0) skip();
    static const size_t shapes[][2] = {{3072, 768}, {6400, 1600}};
    const size_t N = 27;
    for (size_t k = 0; k < 4; k++) {
        const size_t IC = shapes[k % 2][0], C = shapes[k % 2][1];
        gemv_case c;
        gemv_case_init(&c, IC, C, 77 + k, k >= 2 ? NI_CUDA_F16 : NI_CUDA_BF16);
        gemv_case_use_stream(&c);
        ni_matmul_ctx mm;
        void *lt_ws = dmalloc((size_t)32 << 20);
        assert_int_equal(ni_matmul_init(&mm, lt_ws, (size_t)32 << 20), NI_OK);
        float *hx = hmalloc(N * C * 4);
        uint64_t r = 5 + k;
        for (size_t i = 0; i < N * C; i++) hx[i] = 4.0f * rng_uniform(&r);
        uint16_t *hw = hmalloc(C * 2), *hb = hmalloc(C * 2);
        for (size_t i = 0; i < C; i++) {
            hw[i] = h16_from(c.dt, 1.0f + 0.2f * rng_uniform(&r));
            hb[i] = h16_from(c.dt, 0.1f * rng_uniform(&r));
        }
        float *dx = dmalloc(N * C * 4);
        ni_half16 *dw = dmalloc(C * 2), *db = dmalloc(C * 2), *dln = dmalloc(N * C * 2);
        CK(cudaMemcpy(dw, hw, C * 2, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(db, hb, C * 2, cudaMemcpyHostToDevice));
        float *x[2] = {hmalloc(N * C * 4), hmalloc(N * C * 4)};
        uint16_t *ln[2] = {hmalloc(N * C * 2), hmalloc(N * C * 2)};
        size_t parts = 0;
        for (int deferred = 0; deferred < 2; deferred++) {
            CK(cudaMemcpy(dx, hx, N * C * 4, cudaMemcpyHostToDevice));
            CK(cudaMemset(c.dout, 0xFF, N * C * 2));
            ni_cuda_partial_sums sums;
            if (deferred) {
                assert_int_equal(ni_matmul_sums(&mm, c.dout, &sums, c.dx, c.dw, c.dtmap, c.db, N,
                                                IC, C, c.dt, NULL),
                                 NI_OK);
                assert_non_null(sums.ws); /* these shapes split: the sums are deferred */
                parts = sums.parts;
            } else {
                assert_int_equal(ni_matmul(&mm, c.dout, NULL, c.dx, c.dw, c.dtmap, c.db, N, IC, C,
                                           0, c.dt, NULL),
                                 NI_OK);
            }
            CK(ni_cuda_residual_layernorm(dln, dx, deferred ? NULL : c.dout,
                                          deferred ? &sums : NULL, dw, db, NULL, N, C, 1e-5f, c.dt,
                                          NULL));
            CK(cudaDeviceSynchronize());
            CK(cudaMemcpy(x[deferred], dx, N * C * 4, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(ln[deferred], dln, N * C * 2, cudaMemcpyDeviceToHost));
        }
        if (memcmp(x[0], x[1], N * C * 4) != 0 || memcmp(ln[0], ln[1], N * C * 2) != 0)
            fail_msg("%s IC=%zu C=%zu: the LayerNorm of the deferred parts differs from that of "
                     "the product's output",
                     dt_name(c.dt), IC, C);
        printf("  %s IC=%-5zu C=%-5zu: %zu parts added by the LayerNorm = the product, then the "
               "LayerNorm (bit for bit)\n",
               dt_name(c.dt), IC, C, parts);
        for (int i = 0; i < 2; i++) {
            free(x[i]);
            free(ln[i]);
        }
        free(hx);
        free(hw);
        free(hb);
        cudaFree(dx);
        cudaFree(dw);
        cudaFree(db);
        cudaFree(dln);
        ni_matmul_destroy(&mm);
        cudaFree(lt_ws);
        gemv_case_free(&c);
    }
}

static void test_gemv_args(void **state) {
    (void)state;
    /* N > NI_CUDA_GEMV_MAX_ROWS is refused without a launch; N = 0 is a no-op; an unknown type
     * is refused */
    assert_int_not_equal(ni_cuda_gemv(NULL, (float *)8, (const ni_half16 *)8, (const ni_half16 *)8,
                                      NULL, NI_CUDA_GEMV_MAX_ROWS + 1, 8, 8, 0, NI_CUDA_BF16, NULL),
                         0);
    assert_int_equal(ni_cuda_gemv(NULL, (float *)8, (const ni_half16 *)8, (const ni_half16 *)8,
                                  NULL, 0, 8, 8, 0, NI_CUDA_BF16, NULL),
                     0);
    assert_int_not_equal(ni_cuda_gemv(NULL, (float *)8, (const ni_half16 *)8, (const ni_half16 *)8,
                                      NULL, 1, 8, 8, 0, (ni_cuda_dtype)7, NULL),
                         0);
    /* 32 rows only where a warp owns 16 features: OC > 8432 */
    assert_int_equal(ni_cuda_gemv_rows(8432), 16);
    assert_int_equal(ni_cuda_gemv_rows(8433), NI_CUDA_GEMV_MAX_ROWS);
    assert_int_equal(ni_cuda_gemv_rows(50257), NI_CUDA_GEMV_MAX_ROWS);
    /* IC = 0: the output is the bias (through GELU), in either type */
    for (int k = 0; k < 2; k++) {
        const ni_cuda_dtype dt = k ? NI_CUDA_F16 : NI_CUDA_BF16;
        const size_t OC = 37;
        ni_half16 hb[37];
        uint64_t s = 9;
        for (size_t i = 0; i < OC; i++) hb[i] = h16_from(dt, rng_uniform(&s));
        ni_half16 *db = dmalloc(OC * 2);
        float *dout = dmalloc(3 * OC * 4);
        CK(cudaMemcpy(db, hb, OC * 2, cudaMemcpyHostToDevice));
        CK(ni_cuda_gemv(NULL, dout, NULL, NULL, db, 3, 0, OC, 0, dt, NULL));
        float out[3 * 37];
        CK(cudaMemcpy(out, dout, sizeof out, cudaMemcpyDeviceToHost));
        for (size_t i = 0; i < 3 * OC; i++) assert_true(out[i] == h16_to(dt, hb[i % OC]));
        cudaFree(db);
        cudaFree(dout);
    }
}

/* ---- sampler ------------------------------------------------------------------------------- */

typedef struct {
    size_t B, V;
    float *logits; /* host (B, V) */
    float *dlogits;
    uint64_t *seq, *dseq;
    int32_t *dtok;
    void *ws;
    size_t ws_bytes;
} samp_ctx;

static void samp_init(samp_ctx *c, size_t B, size_t V) {
    c->B = B;
    c->V = V;
    c->logits = hmalloc(B * V * sizeof *c->logits);
    c->seq = hmalloc(B * sizeof *c->seq);
    c->dlogits = dmalloc(B * V * sizeof *c->dlogits);
    c->dseq = dmalloc(B * sizeof *c->dseq);
    c->dtok = dmalloc(B * sizeof *c->dtok);
    c->ws_bytes = ni_cuda_sample_sorted_workspace(B, V);
    assert_true(c->ws_bytes > 0);
    c->ws = dmalloc(c->ws_bytes);
}

static void samp_free(samp_ctx *c) {
    free(c->logits);
    free(c->seq);
    cudaFree(c->dlogits);
    cudaFree(c->dseq);
    cudaFree(c->dtok);
    cudaFree(c->ws);
}

static void samp_upload(samp_ctx *c) {
    CK(cudaMemcpy(c->dlogits, c->logits, c->B * c->V * sizeof *c->logits, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(c->dseq, c->seq, c->B * sizeof *c->seq, cudaMemcpyHostToDevice));
}

static void samp_run(samp_ctx *c, const ni_filter *f, uint64_t seed, uint32_t step, int32_t *tok) {
    CK(cudaMemset(c->dtok, 0x7F, c->B * sizeof *c->dtok)); /* poison: 0x7F7F7F7F */
    CK(ni_cuda_sample_sorted(c->dtok, c->dlogits, c->dseq, c->B, c->V, f->temperature, f->top_k,
                             f->top_p, f->min_p, seed, step, c->ws, c->ws_bytes, NULL));
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(tok, c->dtok, c->B * sizeof *tok, cudaMemcpyDeviceToHost));
}

/* Logit rows of several kinds: 0 normal * 3; 1 quantized to 0.5 (many exact ties, top-k and
 * top-p cuts inside tie groups); 2 normal with a third of the tokens at -inf; 3 one dominant
 * token; 4 all equal. */
static void fill_row(float *l, size_t V, int kind, uint64_t *s) {
    for (size_t i = 0; i < V; i++) {
        float x = 3.0f * rng_normal(s);
        if (kind == 1) x = roundf(x * 2.0f) * 0.5f;
        if (kind == 2 && rng_next(s) % 3 == 0) x = -INFINITY;
        if (kind == 4) x = 0.25f;
        l[i] = x;
    }
    if (kind == 3) l[rng_next(s) % V] = 40.0f;
}

static void test_sample_greedy_and_invalid(void **state) {
    (void)state;
    const size_t B = 40;
    static const size_t Vs[] = {1, 7, 50257};
    for (size_t vi = 0; vi < 3; vi++) {
        const size_t V = Vs[vi];
        samp_ctx c;
        samp_init(&c, B, V);
        uint64_t s = 77 + V;
        for (size_t r = 0; r < B; r++) {
            float *l = c.logits + r * V;
            fill_row(l, V, (int)(r % 5), &s);
            c.seq[r] = rng_next(&s);
            if (r % 7 == 3 && V > 2) { /* a tie at the max: the lower index wins */
                size_t a = rng_next(&s) % V, b = rng_next(&s) % V;
                l[a] = l[b] = 1e4f;
            }
        }
        /* invalid rows: NaN, +inf, all -inf; and a row with one finite logit */
        for (size_t i = 0; i < V; i++) c.logits[1 * V + i] = -INFINITY;
        c.logits[2 * V + V / 2] = NAN;
        c.logits[5 * V + V - 1] = INFINITY;
        for (size_t i = 0; i < V; i++) c.logits[6 * V + i] = -INFINITY;
        c.logits[6 * V + V / 3] = -1e30f;
        samp_upload(&c);
        int32_t *tok = hmalloc(B * sizeof *tok);
        void *scratch = hmalloc(ni_sampler_scratch_bytes(V));
        static const ni_filter greedy[] = {{0.0f, 20, 0.9f, 0.0f},
                                           {-1.0f, 0, 1.0f, 0.0f},
                                           {1.0f, 1, 0.9f, 0.1f},
                                           {1e-39f, 50, 0.5f, 0.0f}};
        for (size_t fi = 0; fi < 4; fi++) {
            samp_run(&c, &greedy[fi], 5, 3, tok);
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
                /* the CPU's canonical sampler agrees */
                ni_rng_key key = {5, c.seq[r], 3};
                assert_int_equal(ni_sample_sorted(l, V, &greedy[fi], key, scratch), want);
            }
        }
        /* invalid rows also in sampling mode; the others get a kept token */
        const ni_filter f = {1.0f, 20, 0.9f, 0.0f};
        samp_run(&c, &f, 5, 3, tok);
        for (size_t r = 0; r < B; r++) {
            const float *l = c.logits + r * V;
            ni_rng_key key = {5, c.seq[r], 3};
            int32_t want = ni_sample_sorted(l, V, &f, key, scratch);
            assert_int_equal(tok[r], want);
            if (r == 1 || r == 2 || r == 5) assert_int_equal(tok[r], -1);
            if (r == 6) assert_int_equal(tok[r], (int32_t)(V / 3));
        }
        /* NaN parameters: every row invalid */
        static const ni_filter bad[] = {{NAN, 20, 0.9f, 0.0f},
                                        {1.0f, 20, NAN, 0.0f},
                                        {1.0f, 20, 0.9f, NAN},
                                        {NAN, 1, 0.9f, 0.0f}};
        for (size_t fi = 0; fi < 4; fi++) {
            samp_run(&c, &bad[fi], 5, 3, tok);
            for (size_t r = 0; r < B; r++) assert_int_equal(tok[r], -1);
        }
        free(scratch);
        free(tok);
        samp_free(&c);
    }
}

/* Exact agreement with the CPU sorted sampler, and never a token outside the kept set. */
static void test_sample_matches_cpu(void **state) {
    (void)state;
    static const ni_filter filters[] = {
        {1.0f, 20, 0.9f, 0.0f},    /* the seed's benchmark */
        {0.7f, 0, 0.95f, 0.0f},    /* top-p alone */
        {1.3f, 50, 1.0f, 0.05f},   /* top-k + min-p */
        {1.0f, 0, 1.0f, 0.0f},     /* plain softmax */
        {1.0f, 5, 0.0f, 0.0f},     /* top-p 0: the max group only */
        {2.0f, 1000, 0.5f, 0.01f}, /* top-k off when >= V */
        {0.5f, 3, 0.8f, 0.0f},     /* small k, ties at the cut */
        {INFINITY, 7, 1.0f, 0.0f}, /* T = inf: uniform over the finite logits */
    };
    static const size_t Vs[] = {1000, 50257};
    for (size_t vi = 0; vi < 2; vi++) {
        const size_t V = Vs[vi], B = V > 10000 ? 40 : 100;
        const uint32_t steps = V > 10000 ? 3 : 8;
        samp_ctx c;
        samp_init(&c, B, V);
        uint64_t s = 1234 + V;
        for (size_t r = 0; r < B; r++) {
            fill_row(c.logits + r * V, V, (int)(r % 5), &s);
            c.seq[r] = rng_next(&s);
        }
        samp_upload(&c);
        int32_t *tok = hmalloc(B * sizeof *tok);
        double *probs = hmalloc(B * V * sizeof *probs);
        void *scratch = hmalloc(ni_sampler_scratch_bytes(V));
        size_t checked = 0;
        for (size_t fi = 0; fi < sizeof filters / sizeof *filters; fi++) {
            const ni_filter *f = &filters[fi];
            for (size_t r = 0; r < B; r++)
                assert_int_equal(ni_sample_distribution(probs + r * V, c.logits + r * V, V, f), 0);
            for (uint32_t step = 0; step < steps; step++) {
                const uint64_t seed = 0xC0FFEEull + fi;
                samp_run(&c, f, seed, step, tok);
                for (size_t r = 0; r < B; r++) {
                    ni_rng_key key = {seed, c.seq[r], step};
                    int32_t want = ni_sample_sorted(c.logits + r * V, V, f, key, scratch);
                    if (tok[r] != want || tok[r] < 0 || (size_t)tok[r] >= V ||
                        !(probs[r * V + (size_t)tok[r]] > 0.0)) {
                        fprintf(stderr,
                                "sample V=%zu filter %zu step %u row %zu (kind %zu): GPU %d, "
                                "CPU %d\n",
                                V, fi, step, r, r % 5, tok[r], want);
                        fail();
                    }
                    checked++;
                }
            }
        }
        printf("  sample_sorted V=%zu: %zu draws equal to the CPU's, all kept\n", V, checked);
        free(scratch);
        free(probs);
        free(tok);
        samp_free(&c);
    }
}

static void test_sample_chi_square(void **state) {
    (void)state;
    const size_t V = 50, B = 4096;
    const uint32_t steps = 25;
    static const ni_filter filters[] = {
        {1.0f, 20, 0.9f, 0.0f}, {0.8f, 0, 0.95f, 0.0f}, {1.5f, 0, 1.0f, 0.02f}};
    samp_ctx c;
    samp_init(&c, B, V);
    uint64_t s = 4242;
    float row[50];
    for (size_t i = 0; i < V; i++) row[i] = 1.5f * rng_normal(&s);
    for (size_t r = 0; r < B; r++) {
        memcpy(c.logits + r * V, row, sizeof row);
        c.seq[r] = r;
    }
    samp_upload(&c);
    int32_t *tok = hmalloc(B * sizeof *tok);
    for (size_t fi = 0; fi < sizeof filters / sizeof *filters; fi++) {
        double probs[50], count[50] = {0};
        assert_int_equal(ni_sample_distribution(probs, row, V, &filters[fi]), 0);
        for (uint32_t step = 0; step < steps; step++) {
            samp_run(&c, &filters[fi], 99 + fi, step, tok);
            for (size_t r = 0; r < B; r++) {
                assert_true(tok[r] >= 0 && (size_t)tok[r] < V);
                assert_true(probs[tok[r]] > 0.0); /* never outside the kept set */
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
    samp_free(&c);
}

/* ---- micro-benchmark (printed, not asserted) ----------------------------------------------- */

static void test_bench(void **state) {
    (void)state;
    enum { RUNS = 50, WARM = 5 };
    cudaEvent_t ev[2 * (RUNS + WARM)];
    for (size_t i = 0; i < 2 * (RUNS + WARM); i++) CK(cudaEventCreate(&ev[i]));
    float ms[RUNS];
    struct {
        size_t IC, OC;
        int gelu, f32;
        const char *what;
    } shapes[] = {{1600, 4800, 0, 0, "qkv"},
                  {1600, 1600, 0, 0, "attn proj"},
                  {1600, 6400, 1, 0, "mlp up+gelu"},
                  {6400, 1600, 0, 0, "mlp down"},
                  {1600, 50257, 0, 1, "logits f32"}};
    static const size_t Ns[] = {1, 8, 16, 32};
    printf("  gemv (gpt2-xl shapes, weights rotated past L2, median of %d):\n", RUNS);
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        const size_t IC = shapes[k].IC, OC = shapes[k].OC, wbytes = IC * OC * 2;
        size_t nbuf = (512u << 20) / wbytes + 1;
        if (nbuf < 2) nbuf = 2;
        if (nbuf > 64) nbuf = 64;
        ni_half16 *w = dmalloc(nbuf * wbytes);
        CK(cudaMemset(w, 0x3C, nbuf * wbytes)); /* bf16 0x3C3C ~ 0.0115 */
        ni_half16 *x = dmalloc(32 * IC * 2), *b = dmalloc(OC * 2), *out = dmalloc(32 * OC * 2);
        float *outf = dmalloc(32 * OC * 4);
        CK(cudaMemset(x, 0x3C, 32 * IC * 2));
        CK(cudaMemset(b, 0, OC * 2));
        for (size_t ni = 0; ni < sizeof Ns / sizeof *Ns; ni++) {
            const size_t N = Ns[ni];
            for (size_t i = 0; i < RUNS + WARM; i++) {
                const ni_half16 *wi = w + (i % nbuf) * (IC * OC);
                CK(cudaEventRecord(ev[2 * i], NULL));
                CK(ni_cuda_gemv(shapes[k].f32 ? NULL : out, shapes[k].f32 ? outf : NULL, x, wi, b,
                                N, IC, OC, shapes[k].gelu, NI_CUDA_BF16, NULL));
                CK(cudaEventRecord(ev[2 * i + 1], NULL));
            }
            CK(cudaDeviceSynchronize());
            for (size_t i = 0; i < RUNS; i++)
                CK(cudaEventElapsedTime(&ms[i], ev[2 * (i + WARM)], ev[2 * (i + WARM) + 1]));
            const double t = median(ms, RUNS) * 1e-3;
            printf("    %-12s IC=%-5zu OC=%-6zu N=%-2zu %8.2f us %7.0f GB/s\n", shapes[k].what, IC,
                   OC, N, t * 1e6, (double)wbytes / t * 1e-9);
        }
        cudaFree(w);
        cudaFree(x);
        cudaFree(b);
        cudaFree(out);
        cudaFree(outf);
    }

    /* at 32 rows (a 32-token prefill): gemm_stream against cuBLASLt (ni_matmul without a
     * tensor map), the same rotated weights */
    size_t sms = 0;
    CK(ni_cuda_gemm_stream_setup(&sms));
    ni_matmul_ctx mm;
    void *lt_ws = dmalloc((size_t)32 << 20);
    assert_int_equal(ni_matmul_init(&mm, lt_ws, (size_t)32 << 20), NI_OK);
    printf("  32 rows, gemm_stream against cuBLASLt (gpt2-xl shapes, weights rotated past L2, "
           "median of %d):\n",
           RUNS);
    for (size_t k = 0; sms && k < 4; k++) {
        const size_t IC = shapes[k].IC, OC = shapes[k].OC, wbytes = IC * OC * 2, N = 32;
        const size_t nbuf = (512u << 20) / wbytes + 1 < 64 ? (512u << 20) / wbytes + 1 : 64;
        ni_half16 *w = dmalloc(nbuf * wbytes);
        CK(cudaMemset(w, 0x3C, nbuf * wbytes));
        ni_half16 *x = dmalloc(N * IC * 2), *b = dmalloc(OC * 2), *out = dmalloc(N * OC * 2);
        CK(cudaMemset(x, 0x3C, N * IC * 2));
        CK(cudaMemset(b, 0, OC * 2));
        uint8_t *maps = aligned_alloc(128, nbuf * 128), *dmaps = dmalloc(nbuf * 128);
        assert_non_null(maps);
        for (size_t i = 0; i < nbuf; i++)
            CK(ni_cuda_weight_tensor_map(maps + i * 128, w + i * (IC * OC), IC, OC, NI_CUDA_BF16));
        CK(cudaMemcpy(dmaps, maps, nbuf * 128, cudaMemcpyHostToDevice));
        ni_cuda_gemm_stream_plan plan;
        const size_t blocks = ni_cuda_gemm_stream_plan_for(&plan, IC, OC, sms, 0) &&
                                      plan.ws_floats <= mm.stream_ws_floats &&
                                      plan.counters <= NI_MATMUL_COUNTERS
                                  ? plan.blocks
                                  : 0;
        double t[2] = {0.0, 0.0};
        for (int lt = blocks ? 0 : 1; lt < 2; lt++) {
            for (size_t i = 0; i < RUNS + WARM; i++) {
                const size_t j = i % nbuf;
                CK(cudaEventRecord(ev[2 * i], NULL));
                if (lt)
                    assert_int_equal(ni_matmul(&mm, out, NULL, x, w + j * (IC * OC), NULL, b, N, IC,
                                               OC, shapes[k].gelu, NI_CUDA_BF16, NULL),
                                     NI_OK);
                else
                    CK(ni_cuda_gemm_stream(out, mm.stream_ws, mm.stream_counters, NULL, x,
                                           dmaps + j * 128, b, N, IC, OC, shapes[k].gelu,
                                           NI_CUDA_BF16, &plan, NULL));
                CK(cudaEventRecord(ev[2 * i + 1], NULL));
            }
            CK(cudaDeviceSynchronize());
            for (size_t i = 0; i < RUNS; i++)
                CK(cudaEventElapsedTime(&ms[i], ev[2 * (i + WARM)], ev[2 * (i + WARM) + 1]));
            t[lt] = median(ms, RUNS) * 1e-3;
        }
        if (blocks)
            printf("    %-12s IC=%-5zu OC=%-6zu gemm_stream %7.2f us %5.0f GB/s   cuBLASLt %7.2f "
                   "us %5.0f GB/s\n",
                   shapes[k].what, IC, OC, t[0] * 1e6, (double)wbytes / t[0] * 1e-9, t[1] * 1e6,
                   (double)wbytes / t[1] * 1e-9);
        else
            printf("    %-12s IC=%-5zu OC=%-6zu gemm_stream does not take it   cuBLASLt %7.2f us "
                   "%5.0f GB/s\n",
                   shapes[k].what, IC, OC, t[1] * 1e6, (double)wbytes / t[1] * 1e-9);
        free(maps);
        cudaFree(dmaps);
        cudaFree(w);
        cudaFree(x);
        cudaFree(b);
        cudaFree(out);
    }
    ni_matmul_destroy(&mm);
    cudaFree(lt_ws);

    static const size_t Bs[] = {1, 64, 512};
    const size_t V = 50257;
    const ni_filter f = {1.0f, 20, 0.9f, 0.0f};
    printf("  sample_sorted V=%zu T=1 top_k=20 top_p=0.9 (median of %d):\n", V, RUNS);
    for (size_t bi = 0; bi < 3; bi++) {
        const size_t B = Bs[bi];
        size_t wsb = ni_cuda_sample_sorted_workspace(B, V);
        float *lg = dmalloc(B * V * 4);
        uint64_t *seq = dmalloc(B * 8);
        int32_t *tok = dmalloc(B * 4);
        void *ws = dmalloc(wsb);
        float *h = hmalloc(B * V * 4);
        uint64_t *hs = hmalloc(B * 8);
        uint64_t s = 5;
        for (size_t i = 0; i < B * V; i++) h[i] = 3.0f * rng_normal(&s);
        for (size_t r = 0; r < B; r++) hs[r] = r;
        CK(cudaMemcpy(lg, h, B * V * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(seq, hs, B * 8, cudaMemcpyHostToDevice));
        for (int greedy = 0; greedy < 2; greedy++) {
            for (size_t i = 0; i < RUNS + WARM; i++) {
                CK(cudaEventRecord(ev[2 * i], NULL));
                CK(ni_cuda_sample_sorted(tok, lg, seq, B, V, greedy ? 0.0f : f.temperature, f.top_k,
                                         f.top_p, f.min_p, 1, (uint32_t)i, ws, wsb, NULL));
                CK(cudaEventRecord(ev[2 * i + 1], NULL));
            }
            CK(cudaDeviceSynchronize());
            for (size_t i = 0; i < RUNS; i++)
                CK(cudaEventElapsedTime(&ms[i], ev[2 * (i + WARM)], ev[2 * (i + WARM) + 1]));
            printf("    B=%-4zu %-7s %9.1f us  (workspace %.1f MB)\n", B,
                   greedy ? "greedy" : "sampled", median(ms, RUNS) * 1e3, (double)wsb / 1e6);
        }
        free(h);
        free(hs);
        cudaFree(lg);
        cudaFree(seq);
        cudaFree(tok);
        cudaFree(ws);
    }
    for (size_t i = 0; i < 2 * (RUNS + WARM); i++) cudaEventDestroy(ev[i]);
}

int main(void) {
    if (ni_test_no_gpu()) return NI_TEST_SKIP;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemv_args),
        cmocka_unit_test(test_gemv_shapes),
        cmocka_unit_test(test_gemv_batch_invariance),
        cmocka_unit_test(test_gemm_stream_args),
        cmocka_unit_test(test_gemm_stream_shapes),
        cmocka_unit_test(test_gemm_stream_small_grid),
        cmocka_unit_test(test_gemm_stream_kv),
        cmocka_unit_test(test_gemm_stream_batch_invariance),
        cmocka_unit_test(test_gemm_stream_sums_to_layernorm),
        cmocka_unit_test(test_sample_greedy_and_invalid),
        cmocka_unit_test(test_sample_matches_cpu),
        cmocka_unit_test(test_sample_chi_square),
        cmocka_unit_test(test_bench),
    };
    ni_test_filter_from_env();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
