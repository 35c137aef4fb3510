/* The CPU backend's operators, f32, one per file, outputs first, then inputs, then sizes. They
 * are also the reference twins that the CUDA kernels are tested against. Work is split over
 * OpenMP threads (n_threads <= 0: OpenMP's default). Every op gives each output element the
 * same arithmetic whatever the batch around it, so a sequence's result does not depend on the
 * other sequences of its batch. */
#ifndef NI_CPU_OPS_H
#define NI_CPU_OPS_H

#include <stddef.h>
#include <stdint.h>

/* out[i] = wte[tokens[i]] + wpe[pos[i]]. out (N, C); wte (V, C); wpe (P, C). */
void cpu_embedding(float *out, const int32_t *tokens, const int32_t *pos, const float *wte,
                   const float *wpe, size_t N, size_t C, int n_threads);

/* out = LayerNorm(inp) * w + b per row, statistics in f32 (two passes). out, inp (N, C). */
void cpu_layernorm(float *out, const float *inp, const float *w, const float *b, size_t N, size_t C,
                   float eps, int n_threads);

/* resid += delta, then out = LayerNorm(resid). resid, delta, out (N, C). */
void cpu_residual_layernorm(float *out, float *resid, const float *delta, const float *w,
                            const float *b, size_t N, size_t C, float eps, int n_threads);

/* resid += delta. (N, C) */
void cpu_residual_add(float *resid, const float *delta, size_t N, size_t C, int n_threads);

/* out = inp @ w^T + bias. out (N, OC); inp (N, IC); w (OC, IC); bias (OC) or NULL. */
void cpu_matmul(float *out, const float *inp, const float *w, const float *bias, size_t N,
                size_t IC, size_t OC, int n_threads);

/* out = GELU(inp), tanh approximation (GPT-2's gelu_new). In place allowed. (n) */
void cpu_gelu(float *out, const float *inp, size_t n, int n_threads);

/* Writes token i's key and value (from qkv, (N, 3C) = [q | k | v], heads of HS inside each)
 * into the caches at (slot[i], pos[i]). k_cache, v_cache (S, NH, T, HS). */
void cpu_kv_append(float *k_cache, float *v_cache, const float *qkv, const int32_t *slot,
                   const int32_t *pos, size_t N, size_t NH, size_t HS, size_t T, int n_threads);

/* Causal attention of token i over cache entries 0..pos[i] of slot[i]:
 * out[i, h] = softmax(q . k_t / sqrt(HS)) @ v. out (N, C); qkv (N, 3C); caches (S, NH, T, HS);
 * scratch: n_threads_max * T floats (one score row per thread). */
void cpu_attention(float *out, const float *qkv, const float *k_cache, const float *v_cache,
                   const int32_t *slot, const int32_t *pos, size_t N, size_t NH, size_t HS,
                   size_t T, float *scratch, int n_threads);

#endif
