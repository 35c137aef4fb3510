/* GELU, tanh approximation, as GPT-2 (gelu_new) computes it. */
#include <math.h>

#include "cpu/ops.h"

void cpu_gelu(float *out, const float *inp, size_t n, int n_threads) {
    const float k = 0.7978845608028654f; /* sqrt(2 / pi) */
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
    }
}
