/* Token plus position embedding on the GPU: x[i] = wte[tokens[i]] + wpe[pos[i]], 16-bit tables
 * (bf16 or f16, dtype.cuh) into the f32 residual stream. A pure gather, bandwidth-bound: blockIdx.x
 * picks the token row, the blocks along y share its C columns in groups of 8, so that each thread
 * reads one 16-byte vector from each table and writes two 16-byte vectors of f32. The vector path
 * needs C % 8 == 0 and 16-byte aligned bases (then every row is aligned too); any other C goes
 * through the scalar path, which is the same arithmetic one element at a time. */
#include <cuda_runtime.h>
#include <stdint.h>

#include "cuda/dtype.cuh"
#include "cuda/kernels.h"
#include "cuda/pdl.cuh"
#include "cuda/timeline.cuh"

#define EMB_THREADS 128

template <typename D>
__global__ void embedding_kernel(float *x,              // (N, C)
                                 const int32_t *tokens, // (N)
                                 const int32_t *pos,    // (N)
                                 const ni_half16 *wte,  // (V, C)
                                 const ni_half16 *wpe,  // (P, C)
                                 size_t C, int vec) {
    NI_TL_SCOPE(NI_TL_EMBEDDING);
    ni_pdl_wait(); /* tokens and pos may come from the previous kernel */
    NI_TL_WAITED();
    /* a single short pass: let the next kernel queue up now. The trigger must stay after the
     * wait: the decode attention's early reads of pos and slot rest on it (pdl.cuh) */
    ni_pdl_launch_dependents();
    size_t i = blockIdx.x;
    const ni_half16 *te = wte + (size_t)tokens[i] * C;
    const ni_half16 *pe = wpe + (size_t)pos[i] * C;
    float *o = x + i * C;
    size_t step = (size_t)gridDim.y * blockDim.x * 8;
    for (size_t c = ((size_t)blockIdx.y * blockDim.x + threadIdx.x) * 8; c < C; c += step) {
        if (vec) {
            uint4 a = __ldg(reinterpret_cast<const uint4 *>(te + c));
            uint4 b = __ldg(reinterpret_cast<const uint4 *>(pe + c));
            float2 a0 = D::unpack2(a.x), a1 = D::unpack2(a.y), a2 = D::unpack2(a.z),
                   a3 = D::unpack2(a.w);
            float2 b0 = D::unpack2(b.x), b1 = D::unpack2(b.y), b2 = D::unpack2(b.z),
                   b3 = D::unpack2(b.w);
            float4 r0 = make_float4(a0.x + b0.x, a0.y + b0.y, a1.x + b1.x, a1.y + b1.y);
            float4 r1 = make_float4(a2.x + b2.x, a2.y + b2.y, a3.x + b3.x, a3.y + b3.y);
            reinterpret_cast<float4 *>(o + c)[0] = r0;
            reinterpret_cast<float4 *>(o + c)[1] = r1;
        } else {
            for (size_t k = c; k < c + 8 && k < C; k++)
                o[k] = D::to_float(te[k]) + D::to_float(pe[k]);
        }
    }
}

extern "C" int ni_cuda_embedding(float *x, const int32_t *tokens, const int32_t *pos,
                                 const ni_half16 *wte, const ni_half16 *wpe, size_t N, size_t C,
                                 ni_cuda_dtype dt, ni_stream s) {
    if (dt != NI_CUDA_BF16 && dt != NI_CUDA_F16) return (int)cudaErrorInvalidValue;
    if (N == 0 || C == 0) return (int)cudaGetLastError();
    int vec = C % 8 == 0 && (uintptr_t)x % 16 == 0 && (uintptr_t)wte % 16 == 0 &&
              (uintptr_t)wpe % 16 == 0;
    size_t groups = (C + 7) / 8;
    size_t by = (groups + EMB_THREADS - 1) / EMB_THREADS;
    if (by > 64) by = 64;
    dim3 grid((unsigned int)N, (unsigned int)by);
    cudaStream_t st = (cudaStream_t)s;
    cudaError_t e = dt == NI_CUDA_F16
                        ? ni_launch_pdl(embedding_kernel<ni_dt_f16>, grid, dim3(EMB_THREADS), 0, st,
                                        x, tokens, pos, wte, wpe, C, vec)
                        : ni_launch_pdl(embedding_kernel<ni_dt_bf16>, grid, dim3(EMB_THREADS), 0,
                                        st, x, tokens, pos, wte, wpe, C, vec);
    return ni_launch_status(e);
}

NI_TL_SETTER(embedding)
