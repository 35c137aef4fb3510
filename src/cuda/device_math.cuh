/* Small device helpers shared by the kernels: word i of a 16-byte vector of packed 16-bit values,
 * GPT-2's tanh GELU (the CPU twin's formula, src/cpu/gelu.c), and warp-wide sum and max. */
#ifndef NI_CUDA_DEVICE_MATH_CUH
#define NI_CUDA_DEVICE_MATH_CUH

#include <cuda_runtime.h>
#include <stdint.h>

/* Word i (two 16-bit values) of a 16-byte vector; i is a compile-time constant after unrolling. */
static __device__ __forceinline__ uint32_t ni_u4_word(const uint4 &v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

static __device__ __forceinline__ float ni_gelu_tanh(float x) {
    const float k = 0.7978845608028654f; /* sqrt(2 / pi) */
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}

static __device__ __forceinline__ float ni_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float ni_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

#endif
