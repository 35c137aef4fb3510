/* LayerNorm on the CPU, alone and fused with the residual add that precedes it in GPT-2. */
#include <math.h>

#include "cpu/ops.h"

static void layernorm_row(float *o, const float *x, const float *w, const float *b, size_t C,
                          float eps) {
    float mean = 0.0f;
    for (size_t c = 0; c < C; c++) mean += x[c];
    mean /= (float)C;
    float var = 0.0f;
    for (size_t c = 0; c < C; c++) {
        float d = x[c] - mean;
        var += d * d;
    }
    var /= (float)C;
    float rstd = 1.0f / sqrtf(var + eps);
    for (size_t c = 0; c < C; c++) o[c] = (x[c] - mean) * rstd * w[c] + b[c];
}

void cpu_layernorm(float *out, const float *inp, const float *w, const float *b, size_t N, size_t C,
                   float eps, int n_threads) {
#pragma omp parallel for num_threads(n_threads) schedule(static) if (N > 16)
    for (size_t i = 0; i < N; i++) layernorm_row(out + i * C, inp + i * C, w, b, C, eps);
}

void cpu_residual_layernorm(float *out, float *resid, const float *delta, const float *w,
                            const float *b, size_t N, size_t C, float eps, int n_threads) {
#pragma omp parallel for num_threads(n_threads) schedule(static) if (N > 16)
    for (size_t i = 0; i < N; i++) {
        float *r = resid + i * C;
        const float *d = delta + i * C;
        for (size_t c = 0; c < C; c++) r[c] += d[c];
        layernorm_row(out + i * C, r, w, b, C, eps);
    }
}

void cpu_residual_add(float *resid, const float *delta, size_t N, size_t C, int n_threads) {
    size_t n = N * C;
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) resid[i] += delta[i];
}
