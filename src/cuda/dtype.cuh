/* Device-side traits of the two 16-bit storage types of the CUDA backend: bf16 (8 significant
 * bits, f32's exponent range) and IEEE half (11 significant bits, largest finite 65504). Weights,
 * activations and the KV cache are stored as 16-bit words (ni_half16 in C) in one of them, chosen
 * per engine; kernels are templated on a traits struct and the extern "C" launchers pick the
 * instance from an ni_cuda_dtype. Each struct converts one element or a packed pair (the low half
 * is the element at the lower address) to and from f32 with round-to-nearest-even, and runs the
 * tensor-core product mma.sync m16n8k16 with f32 accumulation in its type (A: 4 registers of the
 * row-major 16 x 16 fragment, B: 2 of the column-major 16 x 8 one).
 * Range: half overflows to inf past 65504. GPT-2's weights and activations (LayerNorm outputs,
 * attention outputs, MLP activations, the projections' outputs) stay far inside that for the
 * released models, and the residual stream, statistics and logits are f32; random or unusual
 * models may overflow in fp16 where bf16 would not (no scaling is applied). */
#ifndef NI_CUDA_DTYPE_CUH
#define NI_CUDA_DTYPE_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "cuda/kernels.h"

/* mma.sync m16n8k16, row-major A, column-major B, f32 accumulators in place (d[0..3]). */
#define NI_MMA_M16N8K16(T)                                                                         \
    "mma.sync.aligned.m16n8k16.row.col.f32." #T "." #T ".f32 {%0, %1, %2, %3}, "                   \
    "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
#define NI_MMA_OPERANDS                                                                            \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]),                                                            \
        "+f"(d[3]) : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1)

struct ni_dt_bf16 {
    static __device__ __forceinline__ float to_float(uint16_t u) {
        return __uint_as_float((uint32_t)u << 16);
    }
    static __device__ __forceinline__ uint16_t from_float(float f) {
        return __bfloat16_as_ushort(__float2bfloat16_rn(f));
    }
    static __device__ __forceinline__ float2 unpack2(uint32_t u) {
        return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
    }
    static __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
        __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&h);
    }
    /* d += a * b, bf16 in, f32 accumulate; plain asm (free to schedule, a pure function of its
     * operands) and volatile (kept in program order among volatile asm) */
    static __device__ __forceinline__ void mma(float *d, uint32_t a0, uint32_t a1, uint32_t a2,
                                               uint32_t a3, uint32_t b0, uint32_t b1) {
        asm(NI_MMA_M16N8K16(bf16) : NI_MMA_OPERANDS);
    }
    static __device__ __forceinline__ void mma_volatile(float *d, uint32_t a0, uint32_t a1,
                                                        uint32_t a2, uint32_t a3, uint32_t b0,
                                                        uint32_t b1) {
        asm volatile(NI_MMA_M16N8K16(bf16) : NI_MMA_OPERANDS);
    }
};

struct ni_dt_f16 {
    static __device__ __forceinline__ float to_float(uint16_t u) {
        return __half2float(__ushort_as_half(u));
    }
    static __device__ __forceinline__ uint16_t from_float(float f) {
        return __half_as_ushort(__float2half_rn(f));
    }
    static __device__ __forceinline__ float2 unpack2(uint32_t u) {
        return __half22float2(*reinterpret_cast<const __half2 *>(&u));
    }
    static __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
        __half2 h = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&h);
    }
    /* d += a * b, f16 in, f32 accumulate; plain asm (free to schedule, a pure function of its
     * operands) and volatile (kept in program order among volatile asm) */
    static __device__ __forceinline__ void mma(float *d, uint32_t a0, uint32_t a1, uint32_t a2,
                                               uint32_t a3, uint32_t b0, uint32_t b1) {
        asm(NI_MMA_M16N8K16(f16) : NI_MMA_OPERANDS);
    }
    static __device__ __forceinline__ void mma_volatile(float *d, uint32_t a0, uint32_t a1,
                                                        uint32_t a2, uint32_t a3, uint32_t b0,
                                                        uint32_t b1) {
        asm volatile(NI_MMA_M16N8K16(f16) : NI_MMA_OPERANDS);
    }
};

/* Eight packed elements (one 16-byte vector) to f32. */
template <typename D> static __device__ __forceinline__ void ni_unpack8(uint4 u, float *f) {
    float2 a = D::unpack2(u.x), b = D::unpack2(u.y), c = D::unpack2(u.z), d = D::unpack2(u.w);
    f[0] = a.x, f[1] = a.y, f[2] = b.x, f[3] = b.y, f[4] = c.x, f[5] = c.y, f[6] = d.x, f[7] = d.y;
}

#endif
