/* Causal attention on the CPU for a list of tokens, each attending to its own sequence's KV
 * cache up to its position. The same code serves prefill (many tokens per sequence), decode
 * (one) and the baseline's recompute; only the token list differs. */
#include <math.h>
#include <omp.h>

#include "cpu/ops.h"

void cpu_attention(float *out, const float *qkv, const float *k_cache, const float *v_cache,
                   const int32_t *slot, const int32_t *pos, size_t N, size_t NH, size_t HS,
                   size_t T, float *scratch, int n_threads) {
    size_t C = NH * HS;
    float scale = 1.0f / sqrtf((float)HS);
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 1) collapse(2)
    for (size_t i = 0; i < N; i++) {
        for (size_t h = 0; h < NH; h++) {
            float *att = scratch + (size_t)omp_get_thread_num() * T;
            const float *q = qkv + i * 3 * C + h * HS;
            size_t base = ((size_t)slot[i] * NH + h) * T * HS;
            const float *K = k_cache + base;
            const float *V = v_cache + base;
            size_t len = (size_t)pos[i] + 1;
            float maxv = -INFINITY;
            for (size_t t = 0; t < len; t++) {
                const float *k = K + t * HS;
                float s = 0.0f;
                for (size_t d = 0; d < HS; d++) s += q[d] * k[d];
                s *= scale;
                att[t] = s;
                if (s > maxv) maxv = s;
            }
            float sum = 0.0f;
            for (size_t t = 0; t < len; t++) {
                att[t] = expf(att[t] - maxv);
                sum += att[t];
            }
            float inv = 1.0f / sum;
            float *o = out + i * C + h * HS;
            for (size_t d = 0; d < HS; d++) o[d] = 0.0f;
            for (size_t t = 0; t < len; t++) {
                const float *v = V + t * HS;
                float p = att[t] * inv;
                for (size_t d = 0; d < HS; d++) o[d] += p * v[d];
            }
        }
    }
}
