/* The CPU matrix multiply, out = inp @ w^T + bias, with w stored (OC, IC) so that each output is
 * a dot product over contiguous memory. Threads split the output columns (each thread streams
 * its slice of the weights once); rows go four at a time so that a weight row loaded from memory
 * serves four tokens. Every dot product uses the same lane split and reduction order in the
 * four-row and the one-row path, so results do not depend on the batch around a row. Built
 * twice (AVX2 and baseline x86-64) and chosen at load time. */
#include <string.h>

#include "cpu/ops.h"

#define LANES 16

#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define NI_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define NI_CLONES
#endif

static inline float reduce_lanes(const float *acc) {
    float s8[8], s4[4];
    for (int j = 0; j < 8; j++) s8[j] = acc[j] + acc[j + 8];
    for (int j = 0; j < 4; j++) s4[j] = s8[j] + s8[j + 4];
    return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

/* Four rows of inp against one weight row. */
static inline void dot4(float *res, const float *x0, const float *x1, const float *x2,
                        const float *x3, const float *w, size_t n) {
    float a0[LANES] = {0}, a1[LANES] = {0}, a2[LANES] = {0}, a3[LANES] = {0};
    size_t c = 0;
    for (; c + LANES <= n; c += LANES) {
        for (int j = 0; j < LANES; j++) {
            float wv = w[c + j];
            a0[j] += x0[c + j] * wv;
            a1[j] += x1[c + j] * wv;
            a2[j] += x2[c + j] * wv;
            a3[j] += x3[c + j] * wv;
        }
    }
    float t0 = 0.0f, t1 = 0.0f, t2 = 0.0f, t3 = 0.0f;
    for (; c < n; c++) {
        t0 += x0[c] * w[c];
        t1 += x1[c] * w[c];
        t2 += x2[c] * w[c];
        t3 += x3[c] * w[c];
    }
    res[0] = reduce_lanes(a0) + t0;
    res[1] = reduce_lanes(a1) + t1;
    res[2] = reduce_lanes(a2) + t2;
    res[3] = reduce_lanes(a3) + t3;
}

static inline float dot1(const float *x, const float *w, size_t n) {
    float a[LANES] = {0};
    size_t c = 0;
    for (; c + LANES <= n; c += LANES)
        for (int j = 0; j < LANES; j++) a[j] += x[c + j] * w[c + j];
    float t = 0.0f;
    for (; c < n; c++) t += x[c] * w[c];
    return reduce_lanes(a) + t;
}

NI_CLONES
static void matmul_cols(float *out, const float *inp, const float *w, const float *bias, size_t N,
                        size_t IC, size_t OC, size_t o_begin, size_t o_end) {
    for (size_t o = o_begin; o < o_end; o++) {
        const float *wr = w + o * IC;
        float b = bias ? bias[o] : 0.0f;
        size_t r = 0;
        for (; r + 4 <= N; r += 4) {
            float res[4];
            dot4(res, inp + r * IC, inp + (r + 1) * IC, inp + (r + 2) * IC, inp + (r + 3) * IC, wr,
                 IC);
            for (int j = 0; j < 4; j++) out[(r + j) * OC + o] = res[j] + b;
        }
        for (; r < N; r++) out[r * OC + o] = dot1(inp + r * IC, wr, IC) + b;
    }
}

void cpu_matmul(float *out, const float *inp, const float *w, const float *bias, size_t N,
                size_t IC, size_t OC, int n_threads) {
    /* Row tiles of 64 keep the activations of a tile in cache while the weight slice streams. */
    const size_t row_tile = 64, col_block = 16;
    size_t n_blocks = (OC + col_block - 1) / col_block;
    for (size_t r0 = 0; r0 < N; r0 += row_tile) {
        size_t nr = N - r0 < row_tile ? N - r0 : row_tile;
#pragma omp parallel for num_threads(n_threads) schedule(static) if (nr * IC * OC > 100000)
        for (size_t blk = 0; blk < n_blocks; blk++) {
            size_t o0 = blk * col_block;
            size_t o1 = o0 + col_block < OC ? o0 + col_block : OC;
            matmul_cols(out + r0 * OC, inp + r0 * IC, w, bias, nr, IC, OC, o0, o1);
        }
    }
}
