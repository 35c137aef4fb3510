/* Appending keys and values to the CPU KV cache, laid out (slot, head, position, head dim) so
 * that one head's keys are contiguous for the attention loop. */
#include <string.h>

#include "cpu/ops.h"

void cpu_kv_append(float *k_cache, float *v_cache, const float *qkv, const int32_t *slot,
                   const int32_t *pos, size_t N, size_t NH, size_t HS, size_t T, int n_threads) {
    size_t C = NH * HS;
#pragma omp parallel for num_threads(n_threads) schedule(static) if (N > 16)
    for (size_t i = 0; i < N; i++) {
        const float *k = qkv + i * 3 * C + C;
        const float *v = qkv + i * 3 * C + 2 * C;
        for (size_t h = 0; h < NH; h++) {
            size_t dst = (((size_t)slot[i] * NH + h) * T + (size_t)pos[i]) * HS;
            memcpy(k_cache + dst, k + h * HS, HS * sizeof(float));
            memcpy(v_cache + dst, v + h * HS, HS * sizeof(float));
        }
    }
}
