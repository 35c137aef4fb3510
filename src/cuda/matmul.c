/* The GPU matrix multiply: GEMV kernel for a few rows, gemm_stream up to 32, cuBLASLt for the
 * rest. cuBLASLt works in
 * column-major terms: our row-major out (N, OC) is D = (OC, N) column-major, our w (OC, IC)
 * row-major is A = (IC, OC) column-major used transposed, and inp (N, IC) is B = (IC, N). The
 * bias then runs along D's rows, which is what cuBLASLt's bias epilogue broadcasts. Plans
 * (descriptors, layouts and the heuristic's algorithm) are made once per shape, output type and
 * 16-bit type (CUDA_R_16BF or CUDA_R_16F for A, B, the bias and a 16-bit D) and reused. */
#include "cuda/matmul.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/env.h"

ni_status ni_cuda_status(int err, const char *what) {
    if (err == 0) return NI_OK;
    if (err > 0 && err < 1000)
        return ni_fail(NI_ERR_DEVICE, "%s: %s", what, cudaGetErrorString((cudaError_t)err));
    return ni_fail(NI_ERR_DEVICE, "%s: error %d", what, err);
}

static ni_status lt_status(cublasStatus_t st, const char *what) {
    return st == CUBLAS_STATUS_SUCCESS
               ? NI_OK
               : ni_fail(NI_ERR_DEVICE, "cuBLASLt %s: status %d", what, (int)st);
}

ni_status ni_matmul_init(ni_matmul_ctx *m, void *workspace, size_t workspace_bytes) {
    memset(m, 0, sizeof *m);
    if (!workspace || workspace_bytes < 2 * NI_MATMUL_RESERVED_BYTES)
        return ni_fail(NI_ERR_INTERNAL, "matmul: a workspace of %zu bytes is too small",
                       workspace_bytes);
    /* gemm_stream's counters and partial sums first, then cuBLASLt's workspace */
    const size_t cnt_bytes = NI_MATMUL_COUNTERS * sizeof(unsigned);
    m->stream_counters = (unsigned *)workspace;
    m->stream_ws = (float *)((uint8_t *)workspace + cnt_bytes);
    m->stream_ws_floats = (NI_MATMUL_RESERVED_BYTES - cnt_bytes) / sizeof(float);
    m->workspace = (uint8_t *)workspace + NI_MATMUL_RESERVED_BYTES;
    m->workspace_bytes = workspace_bytes - NI_MATMUL_RESERVED_BYTES;
    NI_TRY(ni_cuda_status(cudaMemset(workspace, 0, cnt_bytes), "cudaMemset"));
    NI_TRY(ni_cuda_status(cudaDeviceSynchronize(), "cudaMemset (gemm_stream counters)"));
    /* switches to compare paths on one binary: NI_GEMV_MAX_ROWS, a lower hand-over from the
     * GEMV to cuBLASLt; NI_GEMM_STREAM=0, cuBLASLt instead of gemm_stream; NI_GEMM_STREAM_PARTS=P,
     * gemm_stream splits IC into P ranges where it can, =off never (cuBLASLt past 2048 columns) */
    long v = 0;
    m->gemv_max_rows = NI_CUDA_GEMV_MAX_ROWS;
    if (ni_env_int("NI_GEMV_MAX_ROWS", 0, NI_CUDA_GEMV_MAX_ROWS, NULL, 0, &v))
        m->gemv_max_rows = (size_t)v;
    int stream_on = 1;
    if (ni_env_int("NI_GEMM_STREAM", 0, 1, NULL, 0, &v)) stream_on = (int)v;
    if (ni_env_int("NI_GEMM_STREAM_PARTS", 1, 64, "off", 0, &v)) {
        if (v == 0)
            m->stream_parts_off = 1;
        else
            m->stream_parts = (size_t)v;
    }
    if (stream_on && ni_cuda_gemm_stream_setup(&m->stream_sms) != 0) {
        cudaGetLastError(); /* not available: cuBLASLt above the GEMV's rows */
        m->stream_sms = 0;
    }
    return lt_status(cublasLtCreate(&m->handle), "create");
}

static void destroy_plan(ni_lt_plan *p) {
    if (p->a) cublasLtMatrixLayoutDestroy(p->a);
    if (p->b) cublasLtMatrixLayoutDestroy(p->b);
    if (p->d) cublasLtMatrixLayoutDestroy(p->d);
    if (p->desc) cublasLtMatmulDescDestroy(p->desc);
    memset(p, 0, sizeof *p);
}

void ni_matmul_destroy(ni_matmul_ctx *m) {
    for (size_t i = 0; i < m->n_plans; i++) destroy_plan(&m->plans[i]);
    m->n_plans = 0;
    if (m->handle) cublasLtDestroy(m->handle);
    m->handle = NULL;
}

static ni_status make_plan(ni_matmul_ctx *m, ni_lt_plan *p) {
    cudaDataType_t ht = p->dt == NI_CUDA_F16 ? CUDA_R_16F : CUDA_R_16BF; /* A, B, bias */
    cudaDataType_t dt = p->out_f32 ? CUDA_R_32F : ht;
    cublasOperation_t opT = CUBLAS_OP_T, opN = CUBLAS_OP_N;
    NI_TRY(lt_status(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "desc"));
    NI_TRY(lt_status(
        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opT, sizeof opT),
        "transa"));
    NI_TRY(lt_status(
        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opN, sizeof opN),
        "transb"));
    cublasLtEpilogue_t epi = p->epilogue == 2   ? CUBLASLT_EPILOGUE_GELU_BIAS
                             : p->epilogue == 1 ? CUBLASLT_EPILOGUE_BIAS
                                                : CUBLASLT_EPILOGUE_DEFAULT;
    NI_TRY(lt_status(
        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi),
        "epilogue"));
    if (p->epilogue) {
        cudaDataType_t bt = ht;
        NI_TRY(lt_status(cublasLtMatmulDescSetAttribute(
                             p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt),
                         "bias type"));
    }
    NI_TRY(lt_status(cublasLtMatrixLayoutCreate(&p->a, ht, p->ic, p->oc, p->ic), "A"));
    NI_TRY(lt_status(cublasLtMatrixLayoutCreate(&p->b, ht, p->ic, p->n, p->ic), "B"));
    NI_TRY(lt_status(cublasLtMatrixLayoutCreate(&p->d, dt, p->oc, p->n, p->oc), "D"));
    cublasLtMatmulPreference_t pref;
    NI_TRY(lt_status(cublasLtMatmulPreferenceCreate(&pref), "preference"));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                         &m->workspace_bytes, sizeof m->workspace_bytes);
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(m->handle, p->desc, p->a, p->b, p->d, p->d,
                                                       pref, 1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS || found == 0)
        return ni_fail(NI_ERR_DEVICE, "cuBLASLt: no algorithm for (%zu x %zu) @ (%zu x %zu)^T",
                       p->n, p->ic, p->oc, p->ic);
    p->algo = res.algo;
    return NI_OK;
}

static ni_status get_plan(ni_matmul_ctx *m, size_t N, size_t IC, size_t OC, int epilogue,
                          int out_f32, ni_cuda_dtype dt, ni_lt_plan **out) {
    for (size_t i = 0; i < m->n_plans; i++) {
        ni_lt_plan *p = &m->plans[i];
        if (p->n == N && p->ic == IC && p->oc == OC && p->epilogue == epilogue &&
            p->out_f32 == out_f32 && p->dt == dt) {
            *out = p;
            return NI_OK;
        }
    }
    size_t slot = m->n_plans;
    if (slot == NI_LT_MAX_PLANS) {
        /* the baseline's growing sequence makes a new N every step: recycle round robin */
        slot = m->next_evict;
        m->next_evict = (m->next_evict + 1) % NI_LT_MAX_PLANS;
        destroy_plan(&m->plans[slot]);
    }
    ni_lt_plan *p = &m->plans[slot];
    memset(p, 0, sizeof *p);
    p->n = N;
    p->ic = IC;
    p->oc = OC;
    p->epilogue = epilogue;
    p->out_f32 = out_f32;
    p->dt = dt;
    ni_status s = make_plan(m, p);
    if (s != NI_OK) {
        destroy_plan(p); /* a zeroed slot (n = 0) matches no lookup */
        return s;
    }
    if (slot == m->n_plans) m->n_plans++;
    *out = p;
    return NI_OK;
}

/* ni_matmul, and with kv the keys and values to the caches where gemm_stream runs the product
 * (*appended = 1; else 0, and the caller appends them). */
static ni_status matmul(ni_matmul_ctx *m, ni_half16 *out16, float *out_f32,
                        ni_cuda_partial_sums *sums, const ni_cuda_kv_dest *kv, int *appended,
                        const ni_half16 *inp, const ni_half16 *w, const void *w_tmap,
                        const ni_half16 *bias, size_t N, size_t IC, size_t OC, int gelu,
                        ni_cuda_dtype dt, cudaStream_t stream) {
    if (appended) *appended = 0;
    if (sums) memset(sums, 0, sizeof *sums);
    m->last_early = 0;
    if (N == 0) return NI_OK;
    if (dt != NI_CUDA_BF16 && dt != NI_CUDA_F16)
        return ni_fail(NI_ERR_INTERNAL, "matmul: unknown 16-bit type %d", (int)dt);
    if (N <= m->gemv_max_rows && N <= ni_cuda_gemv_rows(OC)) {
        NI_CUDA_TRY(
            ni_cuda_gemv(out16, out_f32, inp, w, bias, N, IC, OC, gelu, dt, (ni_stream)stream),
            "gemv kernel");
        m->last_early = 1; /* the GEMV triggers at its start */
        return NI_OK;
    }
    ni_cuda_gemm_stream_plan gp;
    if (out16 && w_tmap && N <= NI_CUDA_GEMM_STREAM_MAX_ROWS && ((uintptr_t)inp & 15u) == 0 &&
        ni_cuda_gemm_stream_plan_for(&gp, IC, OC, m->stream_sms, m->stream_parts) &&
        !(m->stream_parts_off && gp.parts > 1) && gp.ws_floats <= m->stream_ws_floats &&
        gp.counters <= NI_MATMUL_COUNTERS) {
        gp.defer = sums && gp.parts > 1 && !kv && !gelu;
        gp.early = m->decode;
        NI_CUDA_TRY(ni_cuda_gemm_stream(out16, m->stream_ws, m->stream_counters, kv, inp, w_tmap,
                                        bias, N, IC, OC, gelu, dt, &gp, (ni_stream)stream),
                    "gemm_stream kernel");
        if (gp.defer) {
            sums->ws = m->stream_ws;
            sums->parts = gp.parts;
            sums->rows = N;
            sums->stride = (OC + 15) / 16 * 16;
            sums->bias = bias;
        }
        if (appended) *appended = kv != NULL;
        m->last_early = gp.early;
        return NI_OK;
    }
    if (gelu && !bias) return ni_fail(NI_ERR_INTERNAL, "matmul: GELU needs a bias here");
    int epilogue = gelu ? 2 : bias ? 1 : 0;
    ni_lt_plan *p = NULL;
    NI_TRY(get_plan(m, N, IC, OC, epilogue, out_f32 != NULL, dt, &p));
    if (bias)
        NI_TRY(lt_status(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                        &bias, sizeof bias),
                         "bias pointer"));
    const float alpha = 1.0f, beta = 0.0f;
    void *d = out_f32 ? (void *)out_f32 : (void *)out16;
    return lt_status(cublasLtMatmul(m->handle, p->desc, &alpha, w, p->a, inp, p->b, &beta, d, p->d,
                                    d, p->d, &p->algo, m->workspace, m->workspace_bytes, stream),
                     "matmul");
}

ni_status ni_matmul(ni_matmul_ctx *m, ni_half16 *out16, float *out_f32, const ni_half16 *inp,
                    const ni_half16 *w, const void *w_tmap, const ni_half16 *bias, size_t N,
                    size_t IC, size_t OC, int gelu, ni_cuda_dtype dt, cudaStream_t stream) {
    return matmul(m, out16, out_f32, NULL, NULL, NULL, inp, w, w_tmap, bias, N, IC, OC, gelu, dt,
                  stream);
}

ni_status ni_matmul_sums(ni_matmul_ctx *m, ni_half16 *out16, ni_cuda_partial_sums *sums,
                         const ni_half16 *inp, const ni_half16 *w, const void *w_tmap,
                         const ni_half16 *bias, size_t N, size_t IC, size_t OC, ni_cuda_dtype dt,
                         cudaStream_t stream) {
    return matmul(m, out16, NULL, sums, NULL, NULL, inp, w, w_tmap, bias, N, IC, OC, 0, dt, stream);
}

ni_status ni_matmul_qkv(ni_matmul_ctx *m, ni_half16 *out16, const ni_cuda_kv_dest *kv,
                        int *appended, const ni_half16 *inp, const ni_half16 *w, const void *w_tmap,
                        const ni_half16 *bias, size_t N, size_t IC, size_t OC, ni_cuda_dtype dt,
                        cudaStream_t stream) {
    return matmul(m, out16, NULL, NULL, kv, appended, inp, w, w_tmap, bias, N, IC, OC, 0, dt,
                  stream);
}
