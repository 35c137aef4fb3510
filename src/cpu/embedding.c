/* Token plus position embedding on the CPU. */
#include "cpu/ops.h"

void cpu_embedding(float *out, const int32_t *tokens, const int32_t *pos, const float *wte,
                   const float *wpe, size_t N, size_t C, int n_threads) {
#pragma omp parallel for num_threads(n_threads) schedule(static) if (N * C > 65536)
    for (size_t i = 0; i < N; i++) {
        const float *te = wte + (size_t)tokens[i] * C;
        const float *pe = wpe + (size_t)pos[i] * C;
        float *o = out + i * C;
        for (size_t c = 0; c < C; c++) o[c] = te[c] + pe[c];
    }
}
