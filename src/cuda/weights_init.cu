/* Filling weights on the device: random normal weights for the named configs (so that a 10B
 * model never exists on the host) and f32 -> bf16 / f16 conversion for weights read from a file,
 * both in the engine's 16-bit type (dtype.cuh). Both
 * are flat element-wise kernels over a grid-stride loop, each thread owning groups of 8
 * consecutive elements so that a group's 16-bit results leave in one 16-byte store when the
 * output is aligned (a scalar path serves unaligned pointers and the tail). The random values
 * come from ni_rng_normal (common/philox.h), the same counter-based function the CPU uses, so
 * both backends draw the same weights up to the last bit of logf/cosf before 16-bit rounding;
 * init is compute-bound (ten Philox rounds, a log and a cosine per element), the conversion
 * bandwidth-bound. */
#include <cuda_runtime.h>
#include <stdint.h>

#include "common/philox.h"
#include "cuda/dtype.cuh"
#include "cuda/kernels.h"
#include "cuda/pdl.cuh"

#define WI_THREADS 256
#define WI_MAX_BLOCKS 16384

static unsigned int wi_blocks(size_t groups) {
    size_t b = (groups + WI_THREADS - 1) / WI_THREADS;
    if (b > WI_MAX_BLOCKS) b = WI_MAX_BLOCKS;
    return (unsigned int)(b ? b : 1);
}

template <typename D>
__global__ void init_random_kernel(ni_half16 *out, // (n)
                                   size_t n, uint64_t seed, uint32_t tensor, float std, float value,
                                   int vec) {
    ni_pdl_wait();              /* out may still be read by the previous kernel */
    ni_pdl_launch_dependents(); /* the caller synchronizes before a GEMV preloads (pdl.cuh) */
    size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t groups = (n + 7) / 8;
    for (size_t g = (size_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += stride) {
        size_t i0 = g * 8;
        float v[8];
#pragma unroll
        for (int e = 0; e < 8; e++) {
            size_t i = i0 + (size_t)e;
            v[e] = (std == 0.0f || i >= n) ? value : std * ni_rng_normal(seed, tensor, i);
        }
        if (vec && i0 + 8 <= n) {
            uint4 pk;
            pk.x = D::pack2(v[0], v[1]);
            pk.y = D::pack2(v[2], v[3]);
            pk.z = D::pack2(v[4], v[5]);
            pk.w = D::pack2(v[6], v[7]);
            *reinterpret_cast<uint4 *>(out + i0) = pk;
        } else {
#pragma unroll
            for (int e = 0; e < 8; e++)
                if (i0 + (size_t)e < n) out[i0 + (size_t)e] = D::from_float(v[e]);
        }
    }
}

template <typename D>
__global__ void f32_to_half16_kernel(ni_half16 *out,  // (n)
                                     const float *in, // (n)
                                     size_t n, int vec) {
    ni_pdl_wait();              /* in may come from the previous kernel */
    ni_pdl_launch_dependents(); /* the caller synchronizes before a GEMV preloads (pdl.cuh) */
    size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t groups = (n + 7) / 8;
    for (size_t g = (size_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += stride) {
        size_t i0 = g * 8;
        if (vec && i0 + 8 <= n) {
            float4 a = __ldcs(reinterpret_cast<const float4 *>(in + i0));
            float4 b = __ldcs(reinterpret_cast<const float4 *>(in + i0) + 1);
            uint4 pk;
            pk.x = D::pack2(a.x, a.y);
            pk.y = D::pack2(a.z, a.w);
            pk.z = D::pack2(b.x, b.y);
            pk.w = D::pack2(b.z, b.w);
            *reinterpret_cast<uint4 *>(out + i0) = pk;
        } else {
            for (size_t i = i0; i < i0 + 8 && i < n; i++) out[i] = D::from_float(in[i]);
        }
    }
}

extern "C" int ni_cuda_init_random(ni_half16 *out, size_t n, uint64_t seed, uint32_t tensor,
                                   float std, float value, ni_cuda_dtype dt, ni_stream s) {
    if (dt != NI_CUDA_BF16 && dt != NI_CUDA_F16) return (int)cudaErrorInvalidValue;
    if (n == 0) return (int)cudaGetLastError();
    int vec = ((uintptr_t)out % 16) == 0;
    dim3 grid(wi_blocks((n + 7) / 8)), block(WI_THREADS);
    cudaStream_t st = (cudaStream_t)s;
    cudaError_t e = dt == NI_CUDA_F16 ? ni_launch_pdl(init_random_kernel<ni_dt_f16>, grid, block, 0,
                                                      st, out, n, seed, tensor, std, value, vec)
                                      : ni_launch_pdl(init_random_kernel<ni_dt_bf16>, grid, block,
                                                      0, st, out, n, seed, tensor, std, value, vec);
    return ni_launch_status(e);
}

extern "C" int ni_cuda_f32_to_half16(ni_half16 *out, const float *in, size_t n, ni_cuda_dtype dt,
                                     ni_stream s) {
    if (dt != NI_CUDA_BF16 && dt != NI_CUDA_F16) return (int)cudaErrorInvalidValue;
    if (n == 0) return (int)cudaGetLastError();
    int vec = ((uintptr_t)out % 16) == 0 && ((uintptr_t)in % 16) == 0;
    dim3 grid(wi_blocks((n + 7) / 8)), block(WI_THREADS);
    cudaStream_t st = (cudaStream_t)s;
    cudaError_t e =
        dt == NI_CUDA_F16
            ? ni_launch_pdl(f32_to_half16_kernel<ni_dt_f16>, grid, block, 0, st, out, in, n, vec)
            : ni_launch_pdl(f32_to_half16_kernel<ni_dt_bf16>, grid, block, 0, st, out, in, n, vec);
    return ni_launch_status(e);
}
