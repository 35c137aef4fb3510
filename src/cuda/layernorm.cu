/* LayerNorm on the GPU, fused with the residual add that precedes it in GPT-2, and the plain
 * residual add. One block per output row: the block adds the 16-bit delta (bf16 or f16,
 * dtype.cuh) into the f32 residual
 * row (writing it back), keeps the updated row in shared memory, and takes the mean and then the
 * variance in two passes over that copy (the CPU twin's two-pass statistics, in f32), before
 * writing the normalized row in 16 bits. Rows are short (C floats), so a block per row gives
 * enough blocks for prefill and the smallest latency for decode; the optional row list lets the
 * final LayerNorm gather only the rows that need logits. Threads take groups of 8 columns with
 * 16-byte loads when C % 8 == 0 and the bases are aligned, single columns otherwise; a row
 * wider than the shared-memory copy allows (C > 12288) is re-read from the residual stream
 * itself, each thread reading back only what it wrote. */
#include <cuda_runtime.h>
#include <stdint.h>

#include "cuda/dtype.cuh"
#include "cuda/kernels.h"
#include "cuda/pdl.cuh"
#include "cuda/timeline.cuh"

#define LN_MAX_THREADS 256
#define LN_SMEM_MAX_C 12288 /* 48 KB of f32: the default dynamic shared-memory limit */
#define RA_THREADS 256

/* Sum over the block; every thread gets the total. red: 32 floats of shared memory. */
static __device__ float ln_block_sum(float v, float *red) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
    __syncthreads(); /* red may still be read from the previous call */
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < nwarps ? red[lane] : 0.0f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* The partial sums' delta (ni_cuda_partial_sums) as the kernel reads it. */
typedef struct {
    const float *ws; /* NULL: none */
    uint32_t parts, rows, stride;
    const ni_half16 *bias;
} ln_sums;

#define LN_PARTS_BATCH 8 /* parts whose loads are issued together (then added in order) */

/* Columns c .. c + 7 of row i of the sums' delta, rounded to 16 bits as the product would have
 * stored them (pairs, as gemm_stream packs them), back in f32. bias8: the bias of those columns
 * (16-bit, as loaded). The parts' loads go out LN_PARTS_BATCH at a time before any is added
 * (one L2 round trip for up to that many parts, not one each), and are added in part order. */
template <typename D>
static __device__ __forceinline__ void ln_sums_delta8(const ln_sums &sm, size_t i, size_t c,
                                                      uint4 bias8, float *d) {
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f), v2 = v;
    for (uint32_t p0 = 0; p0 < sm.parts; p0 += LN_PARTS_BATCH) {
        float4 a[LN_PARTS_BATCH], a2[LN_PARTS_BATCH];
#pragma unroll
        for (int k = 0; k < LN_PARTS_BATCH; k++) {
            const uint32_t p = p0 + (uint32_t)k;
            if (p < sm.parts) {
                const float4 *q = reinterpret_cast<const float4 *>(
                    sm.ws + ((size_t)p * sm.rows + i) * sm.stride + c);
                a[k] = q[0];
                a2[k] = q[1];
            }
        }
#pragma unroll
        for (int k = 0; k < LN_PARTS_BATCH; k++) {
            if (p0 + (uint32_t)k < sm.parts) {
                v.x += a[k].x, v.y += a[k].y, v.z += a[k].z, v.w += a[k].w;
                v2.x += a2[k].x, v2.y += a2[k].y, v2.z += a2[k].z, v2.w += a2[k].w;
            }
        }
    }
    float bf[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    if (sm.bias) ni_unpack8<D>(bias8, bf);
    uint4 pk;
    pk.x = D::pack2(v.x + bf[0], v.y + bf[1]);
    pk.y = D::pack2(v.z + bf[2], v.w + bf[3]);
    pk.z = D::pack2(v2.x + bf[4], v2.y + bf[5]);
    pk.w = D::pack2(v2.z + bf[6], v2.w + bf[7]);
    ni_unpack8<D>(pk, d);
}

/* Column c of the same. */
template <typename D>
static __device__ __forceinline__ float ln_sums_delta1(const ln_sums &sm, size_t i, size_t c) {
    float v = 0.0f;
    for (uint32_t p = 0; p < sm.parts; p++) v += sm.ws[((size_t)p * sm.rows + i) * sm.stride + c];
    return D::to_float(D::from_float(v + (sm.bias ? D::to_float(sm.bias[c]) : 0.0f)));
}

/* blockDim.x: a multiple of 32, at most 1024. Dynamic shared memory: C floats when cached.
 * SUMS: the delta comes as partial sums (sm.ws), else from delta or none; an instance of its own,
 * since the parts' loads in flight take registers that the plain LayerNorm, resident beside the
 * decode step's products, must not. */
template <typename D, bool SUMS>
__global__ void residual_layernorm_kernel(ni_half16 *out,         // (N, C)
                                          float *x,               // (*, C)
                                          const ni_half16 *delta, // (*, C) or NULL
                                          ln_sums sm,             // or sm.ws NULL
                                          const ni_half16 *w,     // (C)
                                          const ni_half16 *b,     // (C)
                                          const int32_t *rows,    // (N) or NULL
                                          size_t C, float eps, int vec, int cached) {
    NI_TL_SCOPE(NI_TL_LAYERNORM);
    /* the first column group's scale and shift before the wait (no kernel writes them,
     * pdl.cuh), so that the normalize does not wait on a load after the statistics */
    const size_t c_first = (size_t)threadIdx.x * 8;
    uint4 w_first = make_uint4(0u, 0u, 0u, 0u), b_first = w_first, sb_first = w_first;
    if (vec && c_first < C) {
        w_first = __ldg(reinterpret_cast<const uint4 *>(w + c_first));
        b_first = __ldg(reinterpret_cast<const uint4 *>(b + c_first));
        /* the product's bias too, where the partial sums are added here (a weight as well) */
        if (SUMS && sm.bias) sb_first = __ldg(reinterpret_cast<const uint4 *>(sm.bias + c_first));
    }
    ni_pdl_launch_dependents(); /* the next product loads weights before its wait (pdl.cuh) */
    ni_pdl_wait();              /* x, delta and rows come from earlier kernels */
    NI_TL_WAITED();
    extern __shared__ float4 ln_smem[];
    __shared__ float red[32];
    size_t r = blockIdx.x;
    size_t i = rows ? (size_t)rows[r] : r;
    float *xr = x + i * C;
    const ni_half16 *dr = delta ? delta + i * C : NULL;
    ni_half16 *orow = out + r * C;
    float *buf = cached ? reinterpret_cast<float *>(ln_smem) : xr;
    size_t tid = threadIdx.x, nt = blockDim.x;

    /* pass 1: residual add, copy, sum */
    float sum = 0.0f;
    if (vec) {
        for (size_t c = tid * 8; c < C; c += nt * 8) {
            float4 a = reinterpret_cast<const float4 *>(xr + c)[0];
            float4 a2 = reinterpret_cast<const float4 *>(xr + c)[1];
            if (dr || SUMS) {
                float d[8];
                if (SUMS)
                    ln_sums_delta8<D>(sm, i, c,
                                      c == c_first || !sm.bias
                                          ? sb_first
                                          : __ldg(reinterpret_cast<const uint4 *>(sm.bias + c)),
                                      d);
                else
                    ni_unpack8<D>(*reinterpret_cast<const uint4 *>(dr + c), d);
                a.x += d[0], a.y += d[1], a.z += d[2], a.w += d[3];
                a2.x += d[4], a2.y += d[5], a2.z += d[6], a2.w += d[7];
                reinterpret_cast<float4 *>(xr + c)[0] = a;
                reinterpret_cast<float4 *>(xr + c)[1] = a2;
            }
            if (cached) {
                reinterpret_cast<float4 *>(buf + c)[0] = a;
                reinterpret_cast<float4 *>(buf + c)[1] = a2;
            }
            sum += ((a.x + a.y) + (a.z + a.w)) + ((a2.x + a2.y) + (a2.z + a2.w));
        }
    } else {
        for (size_t c = tid; c < C; c += nt) {
            float v = xr[c];
            if (dr || SUMS) {
                v += SUMS ? ln_sums_delta1<D>(sm, i, c) : D::to_float(dr[c]);
                xr[c] = v;
            }
            if (cached) buf[c] = v;
            sum += v;
        }
    }
    float mean = ln_block_sum(sum, red) / (float)C;

    /* pass 2: variance around the mean */
    float sq = 0.0f;
    if (vec) {
        for (size_t c = tid * 8; c < C; c += nt * 8) {
            float4 a = reinterpret_cast<const float4 *>(buf + c)[0];
            float4 a2 = reinterpret_cast<const float4 *>(buf + c)[1];
            float d0 = a.x - mean, d1 = a.y - mean, d2 = a.z - mean, d3 = a.w - mean;
            float d4 = a2.x - mean, d5 = a2.y - mean, d6 = a2.z - mean, d7 = a2.w - mean;
            sq += ((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)) +
                  ((d4 * d4 + d5 * d5) + (d6 * d6 + d7 * d7));
        }
    } else {
        for (size_t c = tid; c < C; c += nt) {
            float d = buf[c] - mean;
            sq += d * d;
        }
    }
    float var = ln_block_sum(sq, red) / (float)C;
    float rstd = 1.0f / sqrtf(var + eps);

    /* pass 3: normalize, scale, shift */
    if (vec) {
        for (size_t c = tid * 8; c < C; c += nt * 8) {
            float4 a = reinterpret_cast<const float4 *>(buf + c)[0];
            float4 a2 = reinterpret_cast<const float4 *>(buf + c)[1];
            float v[8] = {a.x, a.y, a.z, a.w, a2.x, a2.y, a2.z, a2.w};
            float wf[8], bf[8];
            ni_unpack8<D>(c == c_first ? w_first : __ldg(reinterpret_cast<const uint4 *>(w + c)),
                          wf);
            ni_unpack8<D>(c == c_first ? b_first : __ldg(reinterpret_cast<const uint4 *>(b + c)),
                          bf);
            float o[8];
#pragma unroll
            for (int e = 0; e < 8; e++) o[e] = (v[e] - mean) * rstd * wf[e] + bf[e];
            uint4 pk;
            pk.x = D::pack2(o[0], o[1]);
            pk.y = D::pack2(o[2], o[3]);
            pk.z = D::pack2(o[4], o[5]);
            pk.w = D::pack2(o[6], o[7]);
            *reinterpret_cast<uint4 *>(orow + c) = pk;
        }
    } else {
        for (size_t c = tid; c < C; c += nt) {
            float o = (buf[c] - mean) * rstd * D::to_float(w[c]) + D::to_float(b[c]);
            orow[c] = D::from_float(o);
        }
    }
}

template <typename D>
__global__ void residual_add_kernel(float *x,               // (n)
                                    const ni_half16 *delta, // (n)
                                    size_t n, int vec) {
    NI_TL_SCOPE(NI_TL_RESIDUAL_ADD);
    ni_pdl_wait();
    NI_TL_WAITED();
    ni_pdl_launch_dependents(); /* a single short pass */
    size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t groups = (n + 7) / 8;
    for (size_t g = (size_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += stride) {
        size_t c = g * 8;
        if (vec && c + 8 <= n) {
            float4 a = reinterpret_cast<const float4 *>(x + c)[0];
            float4 a2 = reinterpret_cast<const float4 *>(x + c)[1];
            float d[8];
            ni_unpack8<D>(*reinterpret_cast<const uint4 *>(delta + c), d);
            a.x += d[0], a.y += d[1], a.z += d[2], a.w += d[3];
            a2.x += d[4], a2.y += d[5], a2.z += d[6], a2.w += d[7];
            reinterpret_cast<float4 *>(x + c)[0] = a;
            reinterpret_cast<float4 *>(x + c)[1] = a2;
        } else {
            for (size_t k = c; k < c + 8 && k < n; k++) x[k] += D::to_float(delta[k]);
        }
    }
}

/* The LayerNorm's launch for type D: the instance that adds partial sums where sm has them. */
template <typename D>
static cudaError_t ln_launch(dim3 grid, dim3 block, size_t smem, cudaStream_t st, ni_half16 *out,
                             float *x, const ni_half16 *delta, ln_sums sm, const ni_half16 *w,
                             const ni_half16 *b, const int32_t *rows, size_t C, float eps, int vec,
                             int cached) {
    if (sm.ws)
        return ni_launch_pdl(residual_layernorm_kernel<D, true>, grid, block, smem, st, out, x,
                             delta, sm, w, b, rows, C, eps, vec, cached);
    return ni_launch_pdl(residual_layernorm_kernel<D, false>, grid, block, smem, st, out, x, delta,
                         sm, w, b, rows, C, eps, vec, cached);
}

/* With both rows and delta (or sums), the listed rows must be distinct (each adds its delta
 * once). */
extern "C" int ni_cuda_residual_layernorm(ni_half16 *out, float *x, const ni_half16 *delta,
                                          const ni_cuda_partial_sums *sums, const ni_half16 *w,
                                          const ni_half16 *b, const int32_t *rows, size_t N,
                                          size_t C, float eps, ni_cuda_dtype dt, ni_stream s) {
    if (dt != NI_CUDA_BF16 && dt != NI_CUDA_F16) return (int)cudaErrorInvalidValue;
    ln_sums sm = {NULL, 0, 0, 0, NULL};
    if (sums) {
        if (delta || !sums->ws || sums->parts == 0 || sums->parts > 0xffffu || sums->rows == 0 ||
            sums->rows > 0xffffffu || sums->stride < C || sums->stride % 4 != 0 ||
            sums->stride > 0xffffffu || (uintptr_t)sums->ws % 16 != 0 || (!rows && N > sums->rows))
            return (int)cudaErrorInvalidValue;
        sm.ws = sums->ws, sm.parts = (uint32_t)sums->parts, sm.rows = (uint32_t)sums->rows;
        sm.stride = (uint32_t)sums->stride, sm.bias = sums->bias;
    }
    if (N == 0 || C == 0) return (int)cudaGetLastError();
    int vec = C % 8 == 0 && (uintptr_t)out % 16 == 0 && (uintptr_t)x % 16 == 0 &&
              (uintptr_t)delta % 16 == 0 && (uintptr_t)w % 16 == 0 && (uintptr_t)b % 16 == 0 &&
              (uintptr_t)sm.bias % 16 == 0;
    int cached = C <= LN_SMEM_MAX_C;
    size_t work = vec ? C / 8 : C; /* one thread per group of 8 columns, or per column */
    size_t nt = (work + 31) / 32 * 32;
    if (nt > LN_MAX_THREADS) nt = LN_MAX_THREADS;
    size_t smem = cached ? C * sizeof(float) : 0;
    dim3 grid((unsigned int)N), block((unsigned int)nt);
    cudaStream_t st = (cudaStream_t)s;
    cudaError_t e = dt == NI_CUDA_F16 ? ln_launch<ni_dt_f16>(grid, block, smem, st, out, x, delta,
                                                             sm, w, b, rows, C, eps, vec, cached)
                                      : ln_launch<ni_dt_bf16>(grid, block, smem, st, out, x, delta,
                                                              sm, w, b, rows, C, eps, vec, cached);
    return ni_launch_status(e);
}

extern "C" int ni_cuda_residual_add(float *x, const ni_half16 *delta, size_t N, size_t C,
                                    ni_cuda_dtype dt, ni_stream s) {
    if (dt != NI_CUDA_BF16 && dt != NI_CUDA_F16) return (int)cudaErrorInvalidValue;
    size_t n = N * C;
    if (n == 0) return (int)cudaGetLastError();
    int vec = (uintptr_t)x % 16 == 0 && (uintptr_t)delta % 16 == 0;
    size_t blocks = ((n + 7) / 8 + RA_THREADS - 1) / RA_THREADS;
    if (blocks > 16384) blocks = 16384;
    dim3 grid((unsigned int)blocks), block(RA_THREADS);
    cudaStream_t st = (cudaStream_t)s;
    cudaError_t e =
        dt == NI_CUDA_F16
            ? ni_launch_pdl(residual_add_kernel<ni_dt_f16>, grid, block, 0, st, x, delta, n, vec)
            : ni_launch_pdl(residual_add_kernel<ni_dt_bf16>, grid, block, 0, st, x, delta, n, vec);
    return ni_launch_status(e);
}

NI_TL_SETTER(layernorm)
