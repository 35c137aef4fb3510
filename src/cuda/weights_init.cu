/* Filling weights on the device: random normal weights for the named configs (so that a 10B
 * model never exists on the host) and f32 -> bf16 conversion for weights read from a file. Both
 * are flat element-wise kernels over a grid-stride loop, each thread owning groups of 8
 * consecutive elements so that a group's bf16 results leave in one 16-byte store when the
 * output is aligned (a scalar path serves unaligned pointers and the tail). The random values
 * come from ni_rng_normal (common/philox.h), the same counter-based function the CPU uses, so
 * both backends draw the same weights up to the last bit of logf/cosf before bf16 rounding;
 * init is compute-bound (ten Philox rounds, a log and a cosine per element), the conversion
 * bandwidth-bound. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "common/philox.h"
#include "cuda/kernels.h"
#include "cuda/pdl.cuh"

#define WI_THREADS 256
#define WI_MAX_BLOCKS 16384

static unsigned int wi_blocks(size_t groups) {
    size_t b = (groups + WI_THREADS - 1) / WI_THREADS;
    if (b > WI_MAX_BLOCKS) b = WI_MAX_BLOCKS;
    return (unsigned int)(b ? b : 1);
}

static __device__ __forceinline__ uint32_t wi_pack2(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&h);
}

__global__ void init_random_kernel(__nv_bfloat16 *out, // (n)
                                   size_t n, uint64_t seed, uint32_t tensor, float std, float value,
                                   int vec) {
    ni_pdl_wait(); /* out may still be read by the previous kernel */
    ni_pdl_launch_dependents();
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
            pk.x = wi_pack2(v[0], v[1]);
            pk.y = wi_pack2(v[2], v[3]);
            pk.z = wi_pack2(v[4], v[5]);
            pk.w = wi_pack2(v[6], v[7]);
            *reinterpret_cast<uint4 *>(out + i0) = pk;
        } else {
#pragma unroll
            for (int e = 0; e < 8; e++)
                if (i0 + (size_t)e < n) out[i0 + (size_t)e] = __float2bfloat16_rn(v[e]);
        }
    }
}

__global__ void f32_to_bf16_kernel(__nv_bfloat16 *out, // (n)
                                   const float *in,    // (n)
                                   size_t n, int vec) {
    ni_pdl_wait(); /* in may come from the previous kernel */
    ni_pdl_launch_dependents();
    size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t groups = (n + 7) / 8;
    for (size_t g = (size_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += stride) {
        size_t i0 = g * 8;
        if (vec && i0 + 8 <= n) {
            float4 a = __ldcs(reinterpret_cast<const float4 *>(in + i0));
            float4 b = __ldcs(reinterpret_cast<const float4 *>(in + i0) + 1);
            uint4 pk;
            pk.x = wi_pack2(a.x, a.y);
            pk.y = wi_pack2(a.z, a.w);
            pk.z = wi_pack2(b.x, b.y);
            pk.w = wi_pack2(b.z, b.w);
            *reinterpret_cast<uint4 *>(out + i0) = pk;
        } else {
            for (size_t i = i0; i < i0 + 8 && i < n; i++) out[i] = __float2bfloat16_rn(in[i]);
        }
    }
}

extern "C" int ni_cuda_init_random(ni_bf16 *out, size_t n, uint64_t seed, uint32_t tensor,
                                   float std, float value, ni_stream s) {
    if (n == 0) return (int)cudaGetLastError();
    int vec = ((uintptr_t)out % 16) == 0;
    return ni_launch_status(ni_launch_pdl(init_random_kernel, dim3(wi_blocks((n + 7) / 8)),
                                          dim3(WI_THREADS), 0, (cudaStream_t)s,
                                          (__nv_bfloat16 *)out, n, seed, tensor, std, value, vec));
}

extern "C" int ni_cuda_f32_to_bf16(ni_bf16 *out, const float *in, size_t n, ni_stream s) {
    if (n == 0) return (int)cudaGetLastError();
    int vec = ((uintptr_t)out % 16) == 0 && ((uintptr_t)in % 16) == 0;
    return ni_launch_status(ni_launch_pdl(f32_to_bf16_kernel, dim3(wi_blocks((n + 7) / 8)),
                                          dim3(WI_THREADS), 0, (cudaStream_t)s,
                                          (__nv_bfloat16 *)out, in, n, vec));
}
