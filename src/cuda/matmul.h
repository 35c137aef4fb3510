/* The GPU matrix multiply used by the forward pass: out (N, OC) = inp (N, IC) @ w^T + bias
 * [then GELU], w (OC, IC) 16-bit (bf16 or f16, ni_cuda_dtype: A, B, the bias and a 16-bit D all
 * in that type). Up to 16 rows (32 for the logits) it runs our GEMV kernel, up to 32 rows our
 * TMA-streamed product (gemm_stream.cu) where w has a tensor map, and beyond that cuBLASLt with
 * a cached plan per shape and the bias / bias+GELU epilogue fused. */
#ifndef NI_CUDA_MATMUL_H
#define NI_CUDA_MATMUL_H

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include "cuda/kernels.h"
#include "nanoinfer.h"

#define NI_LT_MAX_PLANS 96

typedef struct {
    size_t n, ic, oc;
    int epilogue; /* 0 none, 1 bias, 2 bias + GELU */
    int out_f32;
    ni_cuda_dtype dt;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, d;
    cublasLtMatmulAlgo_t algo;
} ni_lt_plan;

typedef struct {
    cublasLtHandle_t handle;
    void *workspace; /* device, from the engine's arena */
    size_t workspace_bytes;
    ni_lt_plan plans[NI_LT_MAX_PLANS];
    size_t n_plans;
    size_t next_evict;         /* round-robin victim once the cache is full */
    size_t gemv_max_rows;      /* N up to this (and ni_cuda_gemv_rows) uses ni_cuda_gemv */
    size_t stream_sms;         /* ni_cuda_gemm_stream_setup's; 0: gemm_stream off */
    size_t stream_parts;       /* NI_GEMM_STREAM_PARTS: IC ranges wanted (0: the planner's) */
    int stream_parts_off;      /* NI_GEMM_STREAM_PARTS=off: cuBLASLt where IC must be split */
    unsigned *stream_counters; /* device, NI_MATMUL_COUNTERS zeros: gemm_stream's parts */
    float *stream_ws;          /* device: gemm_stream's partial sums (not cuBLASLt's) */
    size_t stream_ws_floats;
    int decode;     /* set by the caller: the products are a decode step's (gemm_stream's early) */
    int last_early; /* the last product lets the next kernel launch at its start (pdl.cuh) */
} ni_matmul_ctx;

/* workspace: device memory for cuBLASLt and gemm_stream, of which the first
 * NI_MATMUL_RESERVED_BYTES hold gemm_stream's counters (zeroed here) and partial sums and are not
 * cuBLASLt's: the sums a product leaves for the next kernel (ni_matmul_sums) must outlive any
 * cuBLASLt call between. */
#define NI_MATMUL_COUNTERS 4096
#define NI_MATMUL_RESERVED_BYTES ((size_t)4 << 20)
ni_status ni_matmul_init(ni_matmul_ctx *m, void *workspace, size_t workspace_bytes);
void ni_matmul_destroy(ni_matmul_ctx *m);

/* out: 16-bit (out16, type dt like inp, w and bias) or f32 (out_f32), exactly one non-NULL.
 * bias may be NULL. w_tmap: w's TMA descriptor in device memory (ni_cuda_weight_tensor_maps),
 * or NULL. */
ni_status ni_matmul(ni_matmul_ctx *m, ni_half16 *out16, float *out_f32, const ni_half16 *inp,
                    const ni_half16 *w, const void *w_tmap, const ni_half16 *bias, size_t N,
                    size_t IC, size_t OC, int gelu, ni_cuda_dtype dt, cudaStream_t stream);

/* ni_matmul with a 16-bit output for a product whose output only the next residual add +
 * LayerNorm reads: where gemm_stream splits IC into parts, their sums stay in the workspace and
 * *sums describes them (that kernel adds them, ni_cuda_residual_layernorm, the same bits as
 * out16 would have held; out16 is not written); else out16 holds the output and sums->ws is
 * NULL. The sums stay valid until the next gemm_stream launch through m that splits its
 * inputs; kernels between must be stream-ordered (programmatic launches included: each waits
 * for the one before). */
ni_status ni_matmul_sums(ni_matmul_ctx *m, ni_half16 *out16, ni_cuda_partial_sums *sums,
                         const ni_half16 *inp, const ni_half16 *w, const void *w_tmap,
                         const ni_half16 *bias, size_t N, size_t IC, size_t OC, ni_cuda_dtype dt,
                         cudaStream_t stream);

/* The qkv product of a prefill chunk: ni_matmul (16-bit out), and where gemm_stream runs it, the
 * keys and values also go to the caches as kv says (*appended = 1); else *appended = 0 and the
 * caller runs ni_cuda_kv_append. Saves the append's launch for 17-32-token chunks. */
ni_status ni_matmul_qkv(ni_matmul_ctx *m, ni_half16 *out16, const ni_cuda_kv_dest *kv,
                        int *appended, const ni_half16 *inp, const ni_half16 *w, const void *w_tmap,
                        const ni_half16 *bias, size_t N, size_t IC, size_t OC, ni_cuda_dtype dt,
                        cudaStream_t stream);

/* NI_OK where the process sees a CUDA GPU, else NI_ERR_UNSUPPORTED saying there is none
 * (device_info.c). */
ni_status ni_cuda_require_gpu(void);

/* Turns a CUDA error code into an ni_status naming the call (NI_OK for cudaSuccess). */
ni_status ni_cuda_status(int err, const char *what);
#define NI_CUDA_TRY(call, what)                                                                    \
    do {                                                                                           \
        int ni_cuda_err_ = (int)(call);                                                            \
        if (ni_cuda_err_ != 0) return ni_cuda_status(ni_cuda_err_, what);                          \
    } while (0)

#endif
