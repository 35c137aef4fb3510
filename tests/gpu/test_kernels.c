/* The CUDA kernels of src/cuda/ against their CPU twins (src/cpu/ops.h) on seeded random inputs
 * of awkward shapes, once with bf16 and once with IEEE half (f16) as the 16-bit type (every test
 * runs for both; inputs are rounded to the type on the host, tolerances are stated per type): sizes
 * that are not multiples of the vector widths, ragged batches, cache entries past every sequence's
 * limit poisoned with NaN so that a kernel reading too far shows, and outputs poisoned with NaN
 * before each run so that an element left unwritten shows. Every comparison states its tolerance as
 * atol + rtol * |ref| and why. Without a GPU the program says "skipped: no GPU" and exits 77. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

#include "common/numeric.h"
#include "common/philox.h"
#include "cpu/ops.h"
#include "cuda/kernels.h"

/* ---- helpers ------------------------------------------------------------------------------ */

#define CK(call)                                                                                   \
    do {                                                                                           \
        int ck_err_ = (int)(call);                                                                 \
        if (ck_err_ != 0)                                                                          \
            fail_msg("%s:%d: %s: %s", __FILE__, __LINE__, #call,                                   \
                     cudaGetErrorString((cudaError_t)ck_err_));                                    \
    } while (0)

typedef struct {
    uint64_t s;
} rng;

static uint64_t rng_u64(rng *r) {
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float rng_unit(rng *r) {
    return (float)(rng_u64(r) >> 40) * (1.0f / 16777216.0f);
}

static float rng_normal(rng *r) {
    float u1 = rng_unit(r) + (1.0f / 16777216.0f);
    float u2 = rng_unit(r);
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}

static size_t rng_below(rng *r, size_t n) {
    return (size_t)(rng_u64(r) % n);
}

static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    assert_non_null(p);
    return p;
}

static void *dmalloc(size_t bytes) {
    void *p = NULL;
    CK(cudaMalloc(&p, bytes ? bytes : 16));
    return p;
}

static void h2d(void *d, const void *h, size_t bytes) {
    CK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
}

static void d2h(void *h, const void *d, size_t bytes) {
    CK(cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost));
}

/* 0xFF bytes: NaN as f32, as bf16 and as f16 (0xFFFF). */
static void poison(void *d, size_t bytes) {
    CK(cudaMemset(d, 0xFF, bytes));
}

static void sync_ok(void) {
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
}

/* The 16-bit type under test, set by each test's setup (main runs every test for both). */
static ni_cuda_dtype g_dt = NI_CUDA_BF16;

static int use_bf16(void **state) {
    (void)state;
    g_dt = NI_CUDA_BF16;
    return 0;
}

static int use_f16(void **state) {
    (void)state;
    g_dt = NI_CUDA_F16;
    return 0;
}

static const char *dt_name(void) {
    return g_dt == NI_CUDA_F16 ? "f16" : "bf16";
}

/* x rounded to the type under test (to nearest even), and back */
static uint16_t h16_from(float x) {
    return g_dt == NI_CUDA_F16 ? ni_f32_to_f16(x) : ni_f32_to_bf16(x);
}

static float h16_to(uint16_t h) {
    return g_dt == NI_CUDA_F16 ? ni_f16_to_f32(h) : ni_bf16_to_f32(h);
}

/* the tolerance for the type under test */
static float by_dt(float bf16, float f16) {
    return g_dt == NI_CUDA_F16 ? f16 : bf16;
}

/* n random 16-bit values ~ scale * normal + shift, and their f32 values in f (if non-NULL). */
static void fill_h16(uint16_t *h, float *f, size_t n, float scale, float shift, rng *r) {
    for (size_t i = 0; i < n; i++) {
        h[i] = h16_from(scale * rng_normal(r) + shift);
        if (f) f[i] = h16_to(h[i]);
    }
}

static void h16_to_f32_array(float *f, const uint16_t *h, size_t n) {
    for (size_t i = 0; i < n; i++) f[i] = h16_to(h[i]);
}

/* Every element written (no NaN left from the poison) and |got - ref| <= atol + rtol |ref|,
 * skipping the elements whose ref is NaN. Prints one line with the worst error relative to the
 * tolerance. */
static void expect_close(const char *what, const float *got, const float *ref, size_t n, float atol,
                         float rtol) {
    size_t bad = 0, unwritten = 0, worst_i = 0;
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(ref[i])) continue; /* not compared: the caller checks these elements */
        if (isnan(got[i])) {
            if (unwritten++ < 3) print_error("%s: element %zu not written (NaN)\n", what, i);
            continue;
        }
        double err = fabs((double)got[i] - (double)ref[i]);
        double tol = (double)atol + (double)rtol * fabs((double)ref[i]);
        double ratio = tol > 0.0 ? err / tol : (err > 0.0 ? INFINITY : 0.0);
        if (ratio > worst) worst = ratio, worst_i = i;
        if (!(err <= tol)) {
            if (bad++ < 5)
                print_error("%s: element %zu: got %.8g, want %.8g (err %.3g, tol %.3g)\n", what, i,
                            (double)got[i], (double)ref[i], err, tol);
        }
    }
    printf("  %-4s %-58s n=%-8zu worst err/tol %.3f (at %zu)\n", dt_name(), what, n, worst,
           worst_i);
    if (unwritten || bad)
        fail_msg("%s %s: %zu of %zu elements not written, %zu outside tolerance", dt_name(), what,
                 unwritten, n, bad);
}

static void expect_close_h16(const char *what, const uint16_t *got, const float *ref, size_t n,
                             float atol, float rtol) {
    float *g = xmalloc(n * sizeof(float));
    h16_to_f32_array(g, got, n);
    expect_close(what, g, ref, n, atol, rtol);
    free(g);
}

/* ---- zero sizes --------------------------------------------------------------------------- */

/* N = 0 (or n = 0) launches nothing and reports success, even with NULL pointers. */
static void test_zero_sizes(void **state) {
    (void)state;
    CK(ni_cuda_init_random(NULL, 0, 1, 2, 0.02f, 0.0f, g_dt, NULL));
    CK(ni_cuda_f32_to_half16(NULL, NULL, 0, g_dt, NULL));
    CK(ni_cuda_embedding(NULL, NULL, NULL, NULL, NULL, 0, 768, g_dt, NULL));
    CK(ni_cuda_residual_layernorm(NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 768, 1e-5f, g_dt,
                                  NULL));
    CK(ni_cuda_residual_add(NULL, NULL, 0, 768, g_dt, NULL));
    CK(ni_cuda_kv_append(NULL, NULL, NULL, NULL, NULL, 0, 12, 64, 1024, NULL));
    CK(ni_cuda_attention_prefill(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 0, 12, 64, 1024,
                                 g_dt, NULL));
    CK(ni_cuda_attention_decode(NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 0, 12, 64, 1024, g_dt,
                                NULL));
    sync_ok();
    /* head sizes past 128 are refused, not run */
    assert_int_not_equal(ni_cuda_attention_decode(NULL, NULL, NULL, NULL, NULL, NULL, NULL, 1, 0, 1,
                                                  136, 16, g_dt, NULL),
                         0);
    assert_int_not_equal(ni_cuda_attention_prefill(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                                                   1, 1, 1, 136, 16, g_dt, NULL),
                         0);
    /* a type that is neither is refused, not run */
    assert_int_not_equal(ni_cuda_residual_add(NULL, NULL, 1, 8, (ni_cuda_dtype)7, NULL), 0);
    assert_int_not_equal(ni_cuda_f32_to_half16(NULL, NULL, 1, (ni_cuda_dtype)7, NULL), 0);
    sync_ok();
}

/* ---- weights ------------------------------------------------------------------------------ */

/* Spacing of 16-bit values at x (one unit in the last place) in the type under test. */
static float h16_ulp(float x) {
    int e;
    if (g_dt == NI_CUDA_F16) {
        /* 11 significant bits -> 2^(e - 11), but never below the subnormals' spacing 2^-24 */
        if (x == 0.0f) return ldexpf(1.0f, -24);
        frexpf(x, &e);
        return e - 11 < -24 ? ldexpf(1.0f, -24) : ldexpf(1.0f, e - 11);
    }
    if (x == 0.0f) return 1e-38f;
    frexpf(x, &e); /* |x| = m 2^e, m in [0.5, 1): 8 significant bits -> ulp 2^(e - 8) */
    return ldexpf(1.0f, e - 8);
}

static void check_init_random(size_t n, size_t offset, uint64_t seed, uint32_t tensor, float std,
                              float value) {
    uint16_t *d = dmalloc((n + offset) * 2);
    poison(d, (n + offset) * 2);
    CK(ni_cuda_init_random(d + offset, n, seed, tensor, std, value, g_dt, NULL));
    sync_ok();
    uint16_t *h = xmalloc((n + offset) * 2);
    d2h(h, d, (n + offset) * 2);
    for (size_t i = 0; i < offset; i++) assert_int_equal(h[i], 0xFFFF); /* before: untouched */
    size_t off_by_one = 0;
    double sum = 0.0, sq = 0.0;
    for (size_t i = 0; i < n; i++) {
        float got = h16_to(h[offset + i]);
        if (std == 0.0f) {
            /* the constant, exactly */
            if (got != value)
                fail_msg("init_random const: element %zu = %g, want %g", i, (double)got,
                         (double)value);
            continue;
        }
        /* same Philox counter on both sides; device logf/cosf may differ from the host's in the
         * last f32 bits, so the 16-bit rounding may land one ulp away: atol = 1 ulp(ref) */
        float want = h16_to(h16_from(std * ni_rng_normal(seed, tensor, i)));
        if (got != want) {
            off_by_one++;
            if (!(fabsf(got - want) <= h16_ulp(want)))
                fail_msg("init_random %s: element %zu = %.8g, want %.8g (more than 1 ulp)",
                         dt_name(), i, (double)got, (double)want);
        }
        sum += got;
        sq += (double)got * got;
    }
    if (std != 0.0f && n >= 100000) {
        double mean = sum / (double)n, sd = sqrt(sq / (double)n - mean * mean);
        printf("  %-4s init_random n=%zu: mean %.3g, std %.5g (want 0, %g), %zu values 1 ulp off\n",
               dt_name(), n, mean, sd, (double)std, off_by_one);
        /* mean of n normals: standard error std / sqrt(n); allow 6 of them */
        assert_true(fabs(mean) < 6.0 * std / sqrt((double)n));
        /* std of the std estimate ~ std / sqrt(2n); 1% is > 10 of them for n >= 1e5 */
        assert_true(fabs(sd - std) < 0.01 * std);
    }
    /* almost all values must match exactly; a systematic difference is a bug, not libm */
    assert_true(off_by_one <= n / 100 + 1);
    free(h);
    CK(cudaFree(d));
}

static void test_init_random(void **state) {
    (void)state;
    check_init_random(1, 0, 1234, 7, 0.02f, 0.0f);
    check_init_random(17, 0, 1234, 7, 0.02f, 0.0f);
    check_init_random(1000, 3, 99, 65536 * 3 + 5, 0.02f, 0.0f); /* unaligned: scalar path */
    check_init_random((1u << 20) + 5, 0, 42, 65536 * 4 + 11, 0.02f, 0.0f);
    check_init_random(100003, 0, (uint64_t)1 << 40, 1, 0.0032f, 0.0f);
    check_init_random(1601, 0, 5, 9, 0.0f, 1.0f);
    check_init_random(1601, 1, 5, 9, 0.0f, 0.0f);
    /* another tensor id gives other numbers */
    float a = ni_rng_normal(42, 1, 10), b = ni_rng_normal(42, 2, 10);
    assert_true(a != b);
}

/* Values at the edges of the 16-bit types: half's largest finite value, its overflow threshold
 * (65520 and up round to inf), its smallest normal and subnormals, ties in both types. */
static const uint32_t h16_edges[] = {
    0x477fe000u, /* 65504 */
    0x477fefffu, /* just below 65520: 65504 */
    0x477ff000u, /* 65520: inf in f16 */
    0xc77ff000u, /* -65520 */
    0x38800000u, /* 2^-14, f16's smallest normal */
    0x387fffffu, /* just below it */
    0x33800000u, /* 2^-24, f16's smallest subnormal */
    0x33000000u, /* 2^-25: ties to zero in f16 */
    0x33c00000u, /* 1.5 * 2^-24: ties to 2 * 2^-24 */
    0x3f801000u, /* 1 + 2^-11: f16 tie, to even (1) */
    0x3f803000u, /* 1 + 3 * 2^-11: f16 tie, up */
    0x3f808000u, /* 1 + 2^-8: bf16 tie, to even (1) */
    0x3f818000u, /* 1 + 3 * 2^-8: bf16 tie, up */
    0x7f7fffffu, /* f32's largest: inf in f16, in bf16 too (rounds up) */
};

static void check_f32_to_h16(size_t n, size_t offset) {
    rng r = {n * 31 + offset};
    float *h_in = xmalloc((n + offset) * 4);
    for (size_t i = 0; i < n + offset; i++) {
        uint32_t u = (uint32_t)rng_u64(&r);
        switch (i % 8) {
        case 0:
            h_in[i] = rng_normal(&r);
            break;
        case 1:
            h_in[i] = ni_bits_to_f32(u);
            break; /* any bits, NaN too */
        case 2:    /* exact ties (f16: inside its normal range) */
            h_in[i] = g_dt == NI_CUDA_F16
                          ? ni_bits_to_f32(((0x38800000u + u % 0x0f000000u) & ~0x1fffu) | 0x1000u |
                                           (u & 0x80000000u))
                          : ni_bits_to_f32((u & 0xffff0000u) | 0x8000u);
            break;
        case 3: /* subnormals (f16: its own, multiples of 2^-24 and ties between them) */
            h_in[i] = g_dt == NI_CUDA_F16
                          ? ldexpf((float)(u % 2048u) + 0.5f * (float)(u >> 31), -24)
                          : ni_bits_to_f32(u & 0x807fffffu);
            break;
        case 4:
            h_in[i] = (i & 8) ? INFINITY : -INFINITY;
            break;
        case 5:
            h_in[i] = 65504.0f * rng_normal(&r);
            break;
        case 6: /* just below a tie */
            h_in[i] = g_dt == NI_CUDA_F16
                          ? ni_bits_to_f32(((0x38800000u + u % 0x0f000000u) & ~0x1fffu) | 0x0fffu)
                          : ni_bits_to_f32((u & 0xffff0000u) | 0x7fffu);
            break;
        default:
            h_in[i] = 1e-3f * rng_normal(&r);
            break;
        }
    }
    size_t n_edges = sizeof h16_edges / sizeof h16_edges[0];
    for (size_t k = 0; k < n_edges && k < n; k++) h_in[offset + k] = ni_bits_to_f32(h16_edges[k]);
    float *d_in = dmalloc((n + offset) * 4);
    uint16_t *d_out = dmalloc((n + offset) * 2);
    h2d(d_in, h_in, (n + offset) * 4);
    poison(d_out, (n + offset) * 2);
    CK(ni_cuda_f32_to_half16(d_out + offset, d_in + offset, n, g_dt, NULL));
    sync_ok();
    uint16_t *h_out = xmalloc((n + offset) * 2);
    d2h(h_out, d_out, (n + offset) * 2);
    /* round to nearest even is exact: bits must match, except that any NaN is a NaN */
    for (size_t i = 0; i < n; i++) {
        float x = h_in[offset + i];
        uint16_t got = h_out[offset + i], want = h16_from(x);
        if (isnan(x)) {
            if (!isnan(h16_to(got))) fail_msg("f32_to_half16 %s: NaN became %#x", dt_name(), got);
        } else if (got != want) {
            fail_msg("f32_to_half16 %s n=%zu: element %zu (%a): got %#x, want %#x", dt_name(), n, i,
                     (double)x, got, want);
        }
    }
    free(h_in);
    free(h_out);
    CK(cudaFree(d_in));
    CK(cudaFree(d_out));
}

static void test_f32_to_half16(void **state) {
    (void)state;
    check_f32_to_h16(1, 0);
    check_f32_to_h16(13, 0);
    check_f32_to_h16(1003, 0);
    check_f32_to_h16(4096, 0);
    check_f32_to_h16(1003, 1); /* unaligned: scalar path */
}

/* ---- embedding ---------------------------------------------------------------------------- */

static void check_embedding(size_t N, size_t C) {
    size_t V = 50, P = 40;
    rng r = {N * 1000 + C};
    uint16_t *h_wte = xmalloc(V * C * 2), *h_wpe = xmalloc(P * C * 2);
    float *f_wte = xmalloc(V * C * 4), *f_wpe = xmalloc(P * C * 4);
    fill_h16(h_wte, f_wte, V * C, 0.5f, 0.0f, &r);
    fill_h16(h_wpe, f_wpe, P * C, 0.1f, 0.0f, &r);
    int32_t *h_tok = xmalloc(N * 4), *h_pos = xmalloc(N * 4);
    for (size_t i = 0; i < N; i++) {
        h_tok[i] = (int32_t)rng_below(&r, V);
        h_pos[i] = (int32_t)rng_below(&r, P);
    }
    h_tok[0] = (int32_t)V - 1; /* the last rows of the tables */
    h_pos[N - 1] = (int32_t)P - 1;
    uint16_t *d_wte = dmalloc(V * C * 2), *d_wpe = dmalloc(P * C * 2);
    int32_t *d_tok = dmalloc(N * 4), *d_pos = dmalloc(N * 4);
    float *d_x = dmalloc(N * C * 4);
    h2d(d_wte, h_wte, V * C * 2);
    h2d(d_wpe, h_wpe, P * C * 2);
    h2d(d_tok, h_tok, N * 4);
    h2d(d_pos, h_pos, N * 4);
    poison(d_x, N * C * 4);
    CK(ni_cuda_embedding(d_x, d_tok, d_pos, d_wte, d_wpe, N, C, g_dt, NULL));
    sync_ok();
    float *got = xmalloc(N * C * 4), *ref = xmalloc(N * C * 4);
    d2h(got, d_x, N * C * 4);
    cpu_embedding(ref, h_tok, h_pos, f_wte, f_wpe, N, C, 1);
    char what[96];
    snprintf(what, sizeof what, "embedding N=%zu C=%zu", N, C);
    /* one f32 addition of the same two values on both sides: exact */
    expect_close(what, got, ref, N * C, 0.0f, 0.0f);
    free(h_wte);
    free(h_wpe);
    free(f_wte);
    free(f_wpe);
    free(h_tok);
    free(h_pos);
    free(got);
    free(ref);
    CK(cudaFree(d_wte));
    CK(cudaFree(d_wpe));
    CK(cudaFree(d_tok));
    CK(cudaFree(d_pos));
    CK(cudaFree(d_x));
}

static void test_embedding(void **state) {
    (void)state;
    check_embedding(1, 24);
    check_embedding(5, 48);
    check_embedding(17, 768);
    check_embedding(129, 1600);
    check_embedding(3, 1601);
    check_embedding(4, 13);
    check_embedding(2, 1);
}

/* ---- residual + LayerNorm ------------------------------------------------------------------ */

/* N output rows over a residual stream of NX rows; rows != 0 gathers every other row backwards;
 * with_delta adds a 16-bit delta first. */
static void check_layernorm(size_t NX, size_t C, int with_delta, int gather) {
    rng r = {NX * 7919 + C * 3 + (size_t)with_delta * 2 + (size_t)gather};
    float eps = 1e-5f;
    size_t N = gather ? (NX + 1) / 2 : NX;
    int32_t *h_rows = xmalloc(N * 4);
    for (size_t k = 0; k < N; k++) h_rows[k] = (int32_t)(NX - 1 - 2 * k);
    float *h_x = xmalloc(NX * C * 4);
    for (size_t i = 0; i < NX * C; i++) h_x[i] = 3.0f * rng_normal(&r) + 1.0f;
    uint16_t *h_d = xmalloc(NX * C * 2), *h_w = xmalloc(C * 2), *h_b = xmalloc(C * 2);
    float *f_d = xmalloc(NX * C * 4), *f_w = xmalloc(C * 4), *f_b = xmalloc(C * 4);
    fill_h16(h_d, f_d, NX * C, 1.0f, 0.0f, &r);
    fill_h16(h_w, f_w, C, 0.3f, 1.0f, &r);
    fill_h16(h_b, f_b, C, 0.2f, 0.0f, &r);

    float *d_x = dmalloc(NX * C * 4);
    uint16_t *d_d = dmalloc(NX * C * 2), *d_w = dmalloc(C * 2), *d_b = dmalloc(C * 2);
    uint16_t *d_out = dmalloc(N * C * 2);
    int32_t *d_rows = dmalloc(N * 4);
    h2d(d_x, h_x, NX * C * 4);
    h2d(d_d, h_d, NX * C * 2);
    h2d(d_w, h_w, C * 2);
    h2d(d_b, h_b, C * 2);
    h2d(d_rows, h_rows, N * 4);
    poison(d_out, N * C * 2);
    CK(ni_cuda_residual_layernorm(d_out, d_x, with_delta ? d_d : NULL, NULL, d_w, d_b,
                                  gather ? d_rows : NULL, N, C, eps, g_dt, NULL));
    sync_ok();

    float *ref_x = xmalloc(NX * C * 4), *ref_out = xmalloc(N * C * 4);
    memcpy(ref_x, h_x, NX * C * 4);
    for (size_t k = 0; k < N; k++) {
        size_t i = gather ? (size_t)h_rows[k] : k;
        if (with_delta)
            cpu_residual_layernorm(ref_out + k * C, ref_x + i * C, f_d + i * C, f_w, f_b, 1, C, eps,
                                   1);
        else
            cpu_layernorm(ref_out + k * C, ref_x + i * C, f_w, f_b, 1, C, eps, 1);
    }
    float *got_x = xmalloc(NX * C * 4);
    uint16_t *got_out = xmalloc(N * C * 2);
    d2h(got_x, d_x, NX * C * 4);
    d2h(got_out, d_out, N * C * 2);
    char what[96];
    snprintf(what, sizeof what, "residual x N=%zu C=%zu delta=%d gather=%d", NX, C, with_delta,
             gather);
    /* the residual update is one f32 addition of the same values: exact, and rows outside the
     * gather list are untouched */
    expect_close(what, got_x, ref_x, NX * C, 0.0f, 0.0f);
    snprintf(what, sizeof what, "layernorm N=%zu C=%zu delta=%d gather=%d", NX, C, with_delta,
             gather);
    /* the output is the f32 result rounded to 16 bits (bf16, 8 significant bits: relative error
     * up to 2^-8 = 3.9e-3; f16, 11 bits: 2^-11 = 4.9e-4); the f32 statistics differ from the
     * CPU's only in summation order (~1e-6 relative, a few 1e-6 absolute for outputs up to ~5):
     * rtol twice the rounding bound (8e-3, 1e-3), atol for outputs near zero (1e-4, 2e-5) */
    expect_close_h16(what, got_out, ref_out, N * C, by_dt(1e-4f, 2e-5f), by_dt(8e-3f, 1e-3f));
    free(h_rows);
    free(h_x);
    free(h_d);
    free(h_w);
    free(h_b);
    free(f_d);
    free(f_w);
    free(f_b);
    free(ref_x);
    free(ref_out);
    free(got_x);
    free(got_out);
    CK(cudaFree(d_x));
    CK(cudaFree(d_d));
    CK(cudaFree(d_w));
    CK(cudaFree(d_b));
    CK(cudaFree(d_out));
    CK(cudaFree(d_rows));
}

static void test_residual_layernorm(void **state) {
    (void)state;
    static const size_t shapes[][2] = {{1, 24},   {5, 48}, {17, 64},  {129, 768}, {5, 1600},
                                       {3, 1601}, {2, 7},  {4, 4608}, {2, 13001}, {3, 12800}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        check_layernorm(shapes[k][0], shapes[k][1], 1, 0);
        check_layernorm(shapes[k][0], shapes[k][1], 0, 0);
        check_layernorm(shapes[k][0], shapes[k][1], 1, 1);
    }
}

/* The delta as partial sums (a product's parts left unadded, ni_cuda_partial_sums): the same
 * bits, residual and output, as the 16-bit delta those sums round to (summed in part order from
 * 0, plus the bias, rounded to nearest), for NX rows of sums, gathered or not, with a bias or
 * none. */
static void check_layernorm_sums(size_t NX, size_t C, size_t parts, int gather, int with_bias) {
    rng r = {NX * 31 + C * 7 + parts * 3 + (size_t)gather + 17 * (size_t)with_bias};
    const float eps = 1e-5f;
    const size_t stride = (C + 15) / 16 * 16, N = gather ? (NX + 1) / 2 : NX;
    int32_t *h_rows = xmalloc(N * 4);
    for (size_t k = 0; k < N; k++) h_rows[k] = (int32_t)(NX - 1 - 2 * k);
    float *h_x = xmalloc(NX * C * 4), *h_ws = xmalloc(parts * NX * stride * 4);
    for (size_t i = 0; i < NX * C; i++) h_x[i] = 3.0f * rng_normal(&r) + 1.0f;
    for (size_t i = 0; i < parts * NX * stride; i++) h_ws[i] = rng_normal(&r);
    uint16_t *h_w = xmalloc(C * 2), *h_b = xmalloc(C * 2), *h_bias = xmalloc(C * 2);
    float *f_w = xmalloc(C * 4), *f_b = xmalloc(C * 4), *f_bias = xmalloc(C * 4);
    fill_h16(h_w, f_w, C, 0.3f, 1.0f, &r);
    fill_h16(h_b, f_b, C, 0.2f, 0.0f, &r);
    fill_h16(h_bias, f_bias, C, 0.5f, 0.0f, &r);
    uint16_t *h_d = xmalloc(NX * C * 2);
    for (size_t i = 0; i < NX; i++)
        for (size_t c = 0; c < C; c++) {
            float v = 0.0f;
            for (size_t p = 0; p < parts; p++) v += h_ws[(p * NX + i) * stride + c];
            h_d[i * C + c] = h16_from(v + (with_bias ? f_bias[c] : 0.0f));
        }
    float *d_x = dmalloc(NX * C * 4), *d_ws = dmalloc(parts * NX * stride * 4);
    uint16_t *d_d = dmalloc(NX * C * 2), *d_w = dmalloc(C * 2), *d_b = dmalloc(C * 2);
    uint16_t *d_bias = dmalloc(C * 2), *d_out = dmalloc(N * C * 2);
    int32_t *d_rows = dmalloc(N * 4);
    h2d(d_ws, h_ws, parts * NX * stride * 4);
    h2d(d_d, h_d, NX * C * 2);
    h2d(d_w, h_w, C * 2);
    h2d(d_b, h_b, C * 2);
    h2d(d_bias, h_bias, C * 2);
    h2d(d_rows, h_rows, N * 4);
    float *x16 = xmalloc(NX * C * 4), *xs = xmalloc(NX * C * 4);
    uint16_t *o16 = xmalloc(N * C * 2), *os = xmalloc(N * C * 2);
    const ni_cuda_partial_sums sums = {d_ws, parts, NX, stride, with_bias ? d_bias : NULL};
    for (int k = 0; k < 2; k++) {
        h2d(d_x, h_x, NX * C * 4);
        poison(d_out, N * C * 2);
        CK(ni_cuda_residual_layernorm(d_out, d_x, k ? NULL : d_d, k ? &sums : NULL, d_w, d_b,
                                      gather ? d_rows : NULL, N, C, eps, g_dt, NULL));
        sync_ok();
        d2h(k ? xs : x16, d_x, NX * C * 4);
        d2h(k ? os : o16, d_out, N * C * 2);
    }
    if (memcmp(x16, xs, NX * C * 4) != 0 || memcmp(o16, os, N * C * 2) != 0)
        fail_msg("layernorm N=%zu C=%zu parts=%zu gather=%d bias=%d: the sums' bits differ from "
                 "their 16-bit delta's",
                 NX, C, parts, gather, with_bias);
    /* sums with a delta too, or too short a stride: refused */
    ni_cuda_partial_sums bad = sums;
    assert_int_not_equal(
        ni_cuda_residual_layernorm(d_out, d_x, d_d, &sums, d_w, d_b, NULL, N, C, eps, g_dt, NULL),
        0);
    bad.stride = C - 1;
    assert_int_not_equal(
        ni_cuda_residual_layernorm(d_out, d_x, NULL, &bad, d_w, d_b, NULL, N, C, eps, g_dt, NULL),
        0);
    free(h_rows);
    free(h_x);
    free(h_ws);
    free(h_w);
    free(h_b);
    free(h_bias);
    free(f_w);
    free(f_b);
    free(f_bias);
    free(h_d);
    free(x16);
    free(xs);
    free(o16);
    free(os);
    CK(cudaFree(d_x));
    CK(cudaFree(d_ws));
    CK(cudaFree(d_d));
    CK(cudaFree(d_w));
    CK(cudaFree(d_b));
    CK(cudaFree(d_bias));
    CK(cudaFree(d_out));
    CK(cudaFree(d_rows));
}

static void test_residual_layernorm_sums(void **state) {
    (void)state;
    /* gpt2-xl's fcproj in 5 parts, gpt2's in 2; columns not a multiple of 8 (the scalar path) */
    check_layernorm_sums(32, 1600, 5, 0, 1);
    check_layernorm_sums(32, 1600, 5, 1, 1);
    check_layernorm_sums(20, 768, 2, 0, 0);
    check_layernorm_sums(17, 1601, 3, 1, 1);
    check_layernorm_sums(3, 13, 1, 0, 1);
    /* the parts' loads go out 8 at a time: exactly 8, and 11 (a second batch); 4096 columns
     * give a thread two groups (the bias of the second loaded after the wait) */
    check_layernorm_sums(5, 1600, 8, 1, 0);
    check_layernorm_sums(9, 1600, 11, 0, 1);
    check_layernorm_sums(4, 4096, 3, 0, 1);
}

static void check_residual_add(size_t N, size_t C, size_t offset) {
    rng r = {N * 131 + C + offset};
    size_t n = N * C;
    float *h_x = xmalloc((n + offset) * 4);
    uint16_t *h_d = xmalloc((n + offset) * 2);
    float *f_d = xmalloc((n + offset) * 4);
    for (size_t i = 0; i < n + offset; i++) h_x[i] = 2.0f * rng_normal(&r);
    fill_h16(h_d, f_d, n + offset, 1.0f, 0.0f, &r);
    float *d_x = dmalloc((n + offset) * 4);
    uint16_t *d_d = dmalloc((n + offset) * 2);
    h2d(d_x, h_x, (n + offset) * 4);
    h2d(d_d, h_d, (n + offset) * 2);
    CK(ni_cuda_residual_add(d_x + offset, d_d + offset, N, C, g_dt, NULL));
    sync_ok();
    float *got = xmalloc((n + offset) * 4);
    d2h(got, d_x, (n + offset) * 4);
    cpu_residual_add(h_x + offset, f_d + offset, N, C, 1);
    char what[96];
    snprintf(what, sizeof what, "residual_add N=%zu C=%zu offset=%zu", N, C, offset);
    /* one f32 addition of the same values: exact (and the elements before offset untouched) */
    expect_close(what, got, h_x, n + offset, 0.0f, 0.0f);
    free(h_x);
    free(h_d);
    free(f_d);
    free(got);
    CK(cudaFree(d_x));
    CK(cudaFree(d_d));
}

static void test_residual_add(void **state) {
    (void)state;
    check_residual_add(1, 24, 0);
    check_residual_add(5, 1601, 0);
    check_residual_add(129, 768, 0);
    check_residual_add(3, 7, 0);
    check_residual_add(17, 64, 1); /* unaligned: scalar path */
}

/* ---- KV cache append ----------------------------------------------------------------------- */

static void check_kv_append(size_t N, size_t NH, size_t HS) {
    size_t S = 3, T = 40, C = NH * HS;
    rng r = {N * 17 + NH * 5 + HS};
    size_t cache_n = S * NH * T * HS;
    uint16_t *h_qkv = xmalloc(N * 3 * C * 2);
    float *f_qkv = xmalloc(N * 3 * C * 4);
    fill_h16(h_qkv, f_qkv, N * 3 * C, 1.0f, 0.0f, &r);
    /* N distinct (slot, position) pairs */
    size_t *perm = xmalloc(S * T * sizeof(size_t));
    for (size_t i = 0; i < S * T; i++) perm[i] = i;
    for (size_t i = S * T - 1; i > 0; i--) {
        size_t j = rng_below(&r, i + 1), t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    int32_t *h_slot = xmalloc(N * 4), *h_pos = xmalloc(N * 4);
    for (size_t i = 0; i < N; i++) {
        h_slot[i] = (int32_t)(perm[i] / T);
        h_pos[i] = (int32_t)(perm[i] % T);
    }
    uint16_t *d_qkv = dmalloc(N * 3 * C * 2), *d_k = dmalloc(cache_n * 2),
             *d_v = dmalloc(cache_n * 2);
    int32_t *d_slot = dmalloc(N * 4), *d_pos = dmalloc(N * 4);
    h2d(d_qkv, h_qkv, N * 3 * C * 2);
    h2d(d_slot, h_slot, N * 4);
    h2d(d_pos, h_pos, N * 4);
    poison(d_k, cache_n * 2);
    poison(d_v, cache_n * 2);
    CK(ni_cuda_kv_append(d_k, d_v, d_qkv, d_slot, d_pos, N, NH, HS, T, NULL));
    sync_ok();
    float *ref_k = xmalloc(cache_n * 4), *ref_v = xmalloc(cache_n * 4);
    for (size_t i = 0; i < cache_n; i++) ref_k[i] = ref_v[i] = NAN; /* untouched: still NaN */
    cpu_kv_append(ref_k, ref_v, f_qkv, h_slot, h_pos, N, NH, HS, T, 1);
    uint16_t *got = xmalloc(cache_n * 2);
    /* a copy: bit-exact, and every other entry keeps its poison */
    for (int which = 0; which < 2; which++) {
        d2h(got, which ? d_v : d_k, cache_n * 2);
        const float *ref = which ? ref_v : ref_k;
        for (size_t i = 0; i < cache_n; i++) {
            float g = h16_to(got[i]);
            if (isnan(ref[i]) ? got[i] != 0xFFFF : g != ref[i])
                fail_msg("kv_append N=%zu NH=%zu HS=%zu %s cache element %zu: got %#x, want %g", N,
                         NH, HS, which ? "value" : "key", i, got[i], (double)ref[i]);
        }
    }
    printf("  kv_append N=%zu NH=%zu HS=%zu: exact\n", N, NH, HS);
    free(h_qkv);
    free(f_qkv);
    free(perm);
    free(h_slot);
    free(h_pos);
    free(ref_k);
    free(ref_v);
    free(got);
    CK(cudaFree(d_qkv));
    CK(cudaFree(d_k));
    CK(cudaFree(d_v));
    CK(cudaFree(d_slot));
    CK(cudaFree(d_pos));
}

static void test_kv_append(void **state) {
    (void)state;
    check_kv_append(1, 2, 8);
    check_kv_append(17, 3, 16);
    check_kv_append(5, 4, 24);
    check_kv_append(17, 12, 64);
    check_kv_append(17, 2, 86); /* 4-byte path */
    check_kv_append(5, 3, 7);   /* 2-byte path */
    check_kv_append(100, 2, 128);
}

/* ---- attention ------------------------------------------------------------------------------ */

/* Host-side model of a batch of sequences in the caches: qkv (N, 3C) random (queries scaled by
 * q_scale so that the softmax is peaked enough for a wrong key to matter), each sequence's
 * cache positions [0, pos0) random and [pos0, pos0 + len) its tokens' keys and values, every
 * other cache entry NaN. tok_slot/tok_pos give each token of qkv its slot and position. */
typedef struct {
    size_t N, NH, HS, T, S, C;
    uint16_t *qkv, *kc, *vc; /* 16-bit, the type under test */
    float *fqkv, *fkc, *fvc; /* the same values in f32 for the CPU */
    int32_t *tok_slot, *tok_pos;
} attn_case;

static void attn_case_init(attn_case *a, size_t N, size_t NH, size_t HS, size_t T, size_t S,
                           rng *r) {
    a->N = N, a->NH = NH, a->HS = HS, a->T = T, a->S = S, a->C = NH * HS;
    size_t cn = S * NH * T * HS;
    a->qkv = xmalloc(N * 3 * a->C * 2);
    a->fqkv = xmalloc(N * 3 * a->C * 4);
    a->kc = xmalloc(cn * 2), a->vc = xmalloc(cn * 2);
    a->fkc = xmalloc(cn * 4), a->fvc = xmalloc(cn * 4);
    a->tok_slot = xmalloc(N * 4), a->tok_pos = xmalloc(N * 4);
    for (size_t i = 0; i < N; i++) {
        for (size_t c = 0; c < 3 * a->C; c++) {
            float scale = c < a->C ? 1.5f : 1.0f;
            uint16_t h = h16_from(scale * rng_normal(r));
            a->qkv[i * 3 * a->C + c] = h;
            a->fqkv[i * 3 * a->C + c] = h16_to(h);
        }
        a->tok_slot[i] = 0, a->tok_pos[i] = 0;
    }
    for (size_t i = 0; i < cn; i++) a->kc[i] = a->vc[i] = 0xFFFF;
}

/* Cache positions [0, pos0) of `slot` random, [pos0, pos0 + len) from tokens first.. of qkv. */
static void attn_case_fill(attn_case *a, size_t slot, size_t pos0, size_t len, size_t first,
                           rng *r) {
    for (size_t h = 0; h < a->NH; h++) {
        for (size_t t = 0; t < pos0 + len; t++) {
            size_t dst = ((slot * a->NH + h) * a->T + t) * a->HS;
            for (size_t d = 0; d < a->HS; d++) {
                if (t < pos0) {
                    a->kc[dst + d] = h16_from(rng_normal(r));
                    a->vc[dst + d] = h16_from(rng_normal(r));
                } else {
                    const uint16_t *row = a->qkv + (first + t - pos0) * 3 * a->C;
                    a->kc[dst + d] = row[a->C + h * a->HS + d];
                    a->vc[dst + d] = row[2 * a->C + h * a->HS + d];
                }
            }
        }
    }
    for (size_t j = 0; j < len; j++) {
        a->tok_slot[first + j] = (int32_t)slot;
        a->tok_pos[first + j] = (int32_t)(pos0 + j);
    }
}

/* The CPU reference out (N, C) from the f32 copies. */
static float *attn_case_reference(attn_case *a) {
    size_t cn = a->S * a->NH * a->T * a->HS;
    h16_to_f32_array(a->fkc, a->kc, cn);
    h16_to_f32_array(a->fvc, a->vc, cn);
    float *ref = xmalloc(a->N * a->C * 4), *scratch = xmalloc(a->T * 4);
    cpu_attention(ref, a->fqkv, a->fkc, a->fvc, a->tok_slot, a->tok_pos, a->N, a->NH, a->HS, a->T,
                  scratch, 1);
    free(scratch);
    return ref;
}

static void attn_case_free(attn_case *a) {
    free(a->qkv);
    free(a->fqkv);
    free(a->kc);
    free(a->vc);
    free(a->fkc);
    free(a->fvc);
    free(a->tok_slot);
    free(a->tok_pos);
}

typedef struct {
    int len, pos0;
} seq_spec;

/* A ragged prefill: sequence q has len and pos0 from seqs[q], lives in slot n_seq - q (slot 0
 * unused, all NaN), and its tokens are followed by one gap token that no sequence lists (its
 * output must stay unwritten). extra: added to max_len (blocks past every sequence). */
static void check_prefill(size_t NH, size_t HS, size_t T, const seq_spec *seqs, size_t n_seq,
                          size_t extra) {
    rng r = {NH * 1000003 + HS * 1009 + n_seq * 17 + T};
    size_t N = 0, max_len = 0;
    for (size_t q = 0; q < n_seq; q++) {
        N += (size_t)seqs[q].len + 1;
        if ((size_t)seqs[q].len > max_len) max_len = (size_t)seqs[q].len;
        assert_true((size_t)(seqs[q].pos0 + seqs[q].len) <= T);
    }
    attn_case a;
    attn_case_init(&a, N, NH, HS, T, n_seq + 1, &r);
    int32_t *h_start = xmalloc(n_seq * 4), *h_len = xmalloc(n_seq * 4),
            *h_slot = xmalloc(n_seq * 4), *h_pos0 = xmalloc(n_seq * 4);
    uint8_t *listed = xmalloc(N);
    memset(listed, 0, N);
    size_t at = 0;
    for (size_t q = 0; q < n_seq; q++) {
        h_start[q] = (int32_t)at, h_len[q] = seqs[q].len, h_slot[q] = (int32_t)(n_seq - q),
        h_pos0[q] = seqs[q].pos0;
        attn_case_fill(&a, (size_t)h_slot[q], (size_t)seqs[q].pos0, (size_t)seqs[q].len, at, &r);
        memset(listed + at, 1, (size_t)seqs[q].len);
        at += (size_t)seqs[q].len + 1;
    }
    for (size_t i = 0; i < N; i++)
        if (!listed[i]) a.tok_slot[i] = h_slot[0], a.tok_pos[i] = 0; /* gap: any finite row */
    float *ref = attn_case_reference(&a);

    size_t C = a.C, cn = a.S * NH * T * HS;
    uint16_t *d_qkv = dmalloc(N * 3 * C * 2), *d_k = dmalloc(cn * 2), *d_v = dmalloc(cn * 2),
             *d_out = dmalloc(N * C * 2);
    int32_t *d_start = dmalloc(n_seq * 4), *d_len = dmalloc(n_seq * 4),
            *d_slot = dmalloc(n_seq * 4), *d_pos0 = dmalloc(n_seq * 4);
    h2d(d_qkv, a.qkv, N * 3 * C * 2);
    h2d(d_k, a.kc, cn * 2);
    h2d(d_v, a.vc, cn * 2);
    h2d(d_start, h_start, n_seq * 4);
    h2d(d_len, h_len, n_seq * 4);
    h2d(d_slot, h_slot, n_seq * 4);
    h2d(d_pos0, h_pos0, n_seq * 4);
    poison(d_out, N * C * 2);
    CK(ni_cuda_attention_prefill(d_out, d_qkv, d_k, d_v, d_start, d_len, d_slot, d_pos0, n_seq,
                                 max_len + extra, NH, HS, T, g_dt, NULL));
    sync_ok();
    uint16_t *got = xmalloc(N * C * 2);
    d2h(got, d_out, N * C * 2);
    /* gap tokens: never written */
    for (size_t i = 0; i < N; i++)
        if (!listed[i])
            for (size_t c = 0; c < C; c++)
                if (got[i * C + c] != 0xFFFF)
                    fail_msg("prefill wrote the unlisted token %zu (element %zu)", i, c);
    /* listed tokens: compare; the gap rows of ref are replaced by NaN so that they are skipped */
    for (size_t i = 0; i < N; i++)
        if (!listed[i])
            for (size_t c = 0; c < C; c++) ref[i * C + c] = NAN;
    char what[128];
    snprintf(what, sizeof what, "attention_prefill NH=%zu HS=%zu seqs=%zu max_len=%zu", NH, HS,
             n_seq, max_len);
    /* The probabilities enter the P V product rounded to 16 bits (relative error up to u = 2^-8
     * each in bf16, 2^-11 in f16), as in FlashAttention, while the normalizing sum uses their f32
     * values: an error of at most u * sum p|v| / sum p, about u * E_p|v| (E|v| ~ 0.8 here) and
     * far less on average, plus the 16-bit rounding of the output (u relative) and f32 summation
     * order (~1e-6): bf16 atol 5e-3, rtol 1e-2; f16 (u / 8) a fifth of that, 1e-3 and 2e-3. */
    expect_close_h16(what, got, ref, N * C, by_dt(5e-3f, 1e-3f), by_dt(1e-2f, 2e-3f));
    free(ref);
    free(got);
    free(listed);
    free(h_start);
    free(h_len);
    free(h_slot);
    free(h_pos0);
    attn_case_free(&a);
    CK(cudaFree(d_qkv));
    CK(cudaFree(d_k));
    CK(cudaFree(d_v));
    CK(cudaFree(d_out));
    CK(cudaFree(d_start));
    CK(cudaFree(d_len));
    CK(cudaFree(d_slot));
    CK(cudaFree(d_pos0));
}

static void test_attention_prefill(void **state) {
    (void)state;
    static const seq_spec one[] = {{1, 0}};
    static const seq_spec ragged[] = {{1, 0}, {3, 0}, {63, 0}, {64, 0}, {65, 0}, {300, 0}};
    static const seq_spec offset[] = {{5, 7}, {64, 100}, {17, 1}, {129, 64}, {1, 299}, {70, 0}};
    static const seq_spec long_one[] = {{1024, 0}};
    static const seq_spec long_tail[] = {{200, 824}, {33, 30}};
    check_prefill(2, 64, 16, one, 1, 0);
    check_prefill(3, 64, 320, ragged, 6, 0);
    check_prefill(2, 8, 320, ragged, 6, 0);
    check_prefill(2, 16, 320, ragged, 6, 70);
    check_prefill(3, 24, 320, ragged, 6, 0);
    check_prefill(2, 64, 330, offset, 6, 0);
    check_prefill(2, 24, 330, offset, 6, 0);
    check_prefill(1, 64, 1024, long_one, 1, 0);
    check_prefill(2, 64, 1024, long_tail, 2, 0);
    /* other head sizes: even but not a multiple of 8 (4-byte loads), odd (2-byte), large */
    check_prefill(2, 86, 330, offset, 6, 0);
    check_prefill(2, 7, 320, ragged, 6, 0);
    check_prefill(2, 40, 330, offset, 6, 0);
    check_prefill(2, 72, 330, offset, 6, 0);
    check_prefill(1, 112, 320, ragged, 6, 0);
    check_prefill(1, 128, 330, offset, 6, 0);
}

/* B decode rows at positions pos[], row r in slot B - 1 - r; max_pos as given (>= every pos). */
static void check_decode(size_t NH, size_t HS, size_t T, const int32_t *pos, size_t B,
                         size_t max_pos) {
    rng r = {NH * 7 + HS * 1013 + B * 31 + T + max_pos};
    attn_case a;
    attn_case_init(&a, B, NH, HS, T, B, &r);
    int32_t *h_slot = xmalloc(B * 4);
    for (size_t i = 0; i < B; i++) {
        h_slot[i] = (int32_t)(B - 1 - i);
        attn_case_fill(&a, (size_t)h_slot[i], (size_t)pos[i], 1, i, &r);
    }
    float *ref = attn_case_reference(&a);
    size_t C = a.C, cn = B * NH * T * HS;
    size_t pf = ni_cuda_attention_decode_partial_floats(B, NH, HS, T);
    uint16_t *d_qkv = dmalloc(B * 3 * C * 2), *d_k = dmalloc(cn * 2), *d_v = dmalloc(cn * 2),
             *d_out = dmalloc(B * C * 2);
    float *d_partial = dmalloc(pf * 4);
    int32_t *d_slot = dmalloc(B * 4), *d_pos = dmalloc(B * 4);
    h2d(d_qkv, a.qkv, B * 3 * C * 2);
    h2d(d_k, a.kc, cn * 2);
    h2d(d_v, a.vc, cn * 2);
    h2d(d_slot, h_slot, B * 4);
    h2d(d_pos, pos, B * 4);
    poison(d_out, B * C * 2);
    poison(d_partial, pf * 4);
    CK(ni_cuda_attention_decode(d_out, d_partial, d_qkv, d_k, d_v, d_slot, d_pos, B, max_pos, NH,
                                HS, T, g_dt, NULL));
    sync_ok();
    uint16_t *got = xmalloc(B * C * 2);
    d2h(got, d_out, B * C * 2);
    char what[128];
    snprintf(what, sizeof what, "attention_decode NH=%zu HS=%zu B=%zu T=%zu max_pos=%zu", NH, HS, B,
             T, max_pos);
    /* f32 scores and probabilities from the same 16-bit inputs as the CPU: they differ only in
     * summation order and exp2 vs exp (~1e-6 relative); the output is rounded to 16 bits (up to
     * 2^-8 = 3.9e-3 relative in bf16, 2^-11 = 4.9e-4 in f16): rtol twice that (8e-3, 1e-3), atol
     * for outputs near zero (2e-4, 2e-5: the f32 differences are ~1e-6 absolute) */
    expect_close_h16(what, got, ref, B * C, by_dt(2e-4f, 2e-5f), by_dt(8e-3f, 1e-3f));
    /* the same call again gives the same bits (no dependence on the partial buffer's past) */
    uint16_t *again = xmalloc(B * C * 2);
    poison(d_out, B * C * 2);
    CK(ni_cuda_attention_decode(d_out, d_partial, d_qkv, d_k, d_v, d_slot, d_pos, B, max_pos, NH,
                                HS, T, g_dt, NULL));
    sync_ok();
    d2h(again, d_out, B * C * 2);
    assert_memory_equal(got, again, B * C * 2);
    /* a row alone, its grid covering only its own chunks: the same bits as in the batch (the
     * block width and the order of the sums do not depend on the batch or the grid) */
    poison(d_out, B * C * 2);
    CK(ni_cuda_attention_decode(d_out, d_partial, d_qkv, d_k, d_v, d_slot, d_pos, 1, (size_t)pos[0],
                                NH, HS, T, g_dt, NULL));
    sync_ok();
    d2h(again, d_out, C * 2);
    assert_memory_equal(got, again, C * 2);
    /* with the append: each row's own position poisoned in the caches, the kernel writes it
     * from qkv (the caches must come back equal to the full ones) and the output is the same,
     * with the cached rows loaded after the wait (preload 0) or before it (1: where a chunk fits
     * the registers, another kernel, whose sums must give the same bits) */
    uint16_t *hk = xmalloc(cn * 2), *hv = xmalloc(cn * 2);
    for (int preload = 0; preload < 2; preload++) {
        memcpy(hk, a.kc, cn * 2);
        memcpy(hv, a.vc, cn * 2);
        for (size_t i = 0; i < B; i++)
            for (size_t h = 0; h < NH; h++) {
                size_t at = (((size_t)h_slot[i] * NH + h) * T + (size_t)pos[i]) * HS;
                for (size_t d = 0; d < HS; d++)
                    hk[at + d] = hv[at + d] = 0x7FC1; /* NaN, both types */
            }
        h2d(d_k, hk, cn * 2);
        h2d(d_v, hv, cn * 2);
        poison(d_out, B * C * 2);
        poison(d_partial, pf * 4); /* the chunks of long rows must write their partials again */
        CK(ni_cuda_attention_decode_append(d_out, d_partial, d_k, d_v, d_qkv, d_slot, d_pos, B,
                                           max_pos, NH, HS, T, preload, g_dt, NULL));
        sync_ok();
        d2h(again, d_out, B * C * 2);
        assert_memory_equal(got, again, B * C * 2);
        d2h(hk, d_k, cn * 2);
        d2h(hv, d_v, cn * 2);
        assert_memory_equal(hk, a.kc, cn * 2);
        assert_memory_equal(hv, a.vc, cn * 2);
    }
    free(hk);
    free(hv);
    free(ref);
    free(got);
    free(again);
    free(h_slot);
    attn_case_free(&a);
    CK(cudaFree(d_qkv));
    CK(cudaFree(d_k));
    CK(cudaFree(d_v));
    CK(cudaFree(d_out));
    CK(cudaFree(d_partial));
    CK(cudaFree(d_slot));
    CK(cudaFree(d_pos));
}

static void test_attention_decode(void **state) {
    (void)state;
    static const int32_t spread[] = {0,   1,   2,   63,  64,  127,  128,  129, 255,
                                     256, 300, 511, 512, 700, 1000, 1022, 1023};
    static const int32_t short_pos[] = {0, 5, 31, 64, 127};
    static const int32_t one_long[] = {1023};
    static const int32_t mid[] = {129, 3, 400};
    size_t ns = sizeof spread / sizeof spread[0];
    check_decode(2, 64, 1024, spread, ns, 1023);
    check_decode(3, 8, 1024, spread, ns, 1023);
    check_decode(2, 16, 1024, spread, ns, 1023);
    check_decode(3, 24, 1024, spread, ns, 1023);
    check_decode(2, 86, 1024, spread, ns, 1023); /* 4-byte loads, two per lane */
    check_decode(2, 7, 1024, spread, ns, 1023);  /* 2-byte loads */
    check_decode(2, 128, 1024, spread, ns, 1023);
    check_decode(2, 112, 1024, spread, ns, 1023);
    check_decode(12, 64, 1024, short_pos, 5, 127);  /* one chunk each: no merge */
    check_decode(12, 64, 1024, short_pos, 5, 1023); /* grid for the whole cache (graphs) */
    check_decode(25, 64, 1024, one_long, 1, 1023);
    check_decode(2, 64, 450, mid, 3, 400);        /* T not a multiple of the chunk */
    check_decode(2, 64, 1024, spread + 3, 1, 63); /* B = 1, one chunk */
    check_decode(16, 64, 1024, spread, ns, 1023); /* 16 heads: the most at 256 threads */
    check_decode(25, 64, 1024, spread, ns, 1023); /* gpt2-xl's heads: 128 threads, 8 lanes a row */
    check_decode(17, 32, 1024, spread, ns, 1023); /* 128 threads, 4 lanes a row */
    check_decode(2, 86, 450, mid, 3, 400);        /* 4-byte loads, rows not 16-byte aligned */
}

/* each test once per 16-bit type, named "test (bf16)" and "test (f16)" */
// clang-format off
#define BOTH_TYPES(f) {#f " (bf16)", f, use_bf16, NULL, NULL}, {#f " (f16)", f, use_f16, NULL, NULL}
// clang-format on

int main(void) {
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        printf("skipped: no GPU\n");
        return NI_TEST_SKIP;
    }
    const struct CMUnitTest tests[] = {
        BOTH_TYPES(test_zero_sizes),         BOTH_TYPES(test_init_random),
        BOTH_TYPES(test_f32_to_half16),      BOTH_TYPES(test_embedding),
        BOTH_TYPES(test_residual_layernorm), BOTH_TYPES(test_residual_layernorm_sums),
        BOTH_TYPES(test_residual_add),       BOTH_TYPES(test_kv_append),
        BOTH_TYPES(test_attention_prefill),  BOTH_TYPES(test_attention_decode),
    };
#undef BOTH_TYPES
    ni_test_filter_from_env();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
