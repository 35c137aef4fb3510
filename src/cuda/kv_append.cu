/* Appending keys and values to the GPU KV cache, one layer at a time: token i's key and value
 * heads, read from the [q | k | v] output of the QKV projection, go to (slot[i], head, pos[i])
 * of caches laid out (slot, head, position, head dim), the layout in which attention reads one
 * head's keys as one contiguous run. A pure copy: one thread per chunk of W elements of a
 * token's key (and the same chunk of its value), consecutive threads on consecutive chunks of a
 * head so that reads and writes coalesce. W = 8 (16-byte accesses) when HS % 8 == 0, W = 2 when
 * HS is even, W = 1 otherwise; a chunk never straddles two heads because W divides HS. The
 * elements are moved as bits, so one kernel serves bf16 and f16 caches alike. */
#include <cuda_runtime.h>
#include <stdint.h>

#include "cuda/kernels.h"
#include "cuda/pdl.cuh"
#include "cuda/timeline.cuh"

#define KV_THREADS 256

template <int W> struct kv_vec;
template <> struct kv_vec<8> { typedef uint4 t; };
template <> struct kv_vec<2> { typedef uint32_t t; };
template <> struct kv_vec<1> { typedef uint16_t t; };

template <int W>
__global__ void kv_append_kernel(ni_half16 *k_cache,   // (S, NH, T, HS)
                                 ni_half16 *v_cache,   // (S, NH, T, HS)
                                 const ni_half16 *qkv, // (N, 3C)
                                 const int32_t *slot,  // (N)
                                 const int32_t *pos,   // (N)
                                 size_t N, size_t NH, size_t HS, size_t T) {
    NI_TL_SCOPE(NI_TL_KV_APPEND);
    ni_pdl_wait(); /* qkv comes from the previous kernel */
    NI_TL_WAITED();
    ni_pdl_launch_dependents(); /* a single short copy: let attention queue up now */
    typedef typename kv_vec<W>::t vec_t;
    size_t C = NH * HS;
    size_t per_token = C / W;
    size_t total = N * per_token;
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t g = (size_t)blockIdx.x * blockDim.x + threadIdx.x; g < total; g += stride) {
        size_t i = g / per_token;
        size_t e = (g - i * per_token) * W; /* element within the token's C */
        size_t h = e / HS, d = e - h * HS;
        size_t dst = (((size_t)slot[i] * NH + h) * T + (size_t)pos[i]) * HS + d;
        const ni_half16 *src = qkv + i * 3 * C + C + e;
        vec_t kv = *reinterpret_cast<const vec_t *>(src);
        vec_t vv = *reinterpret_cast<const vec_t *>(src + C);
        *reinterpret_cast<vec_t *>(k_cache + dst) = kv;
        *reinterpret_cast<vec_t *>(v_cache + dst) = vv;
    }
}

template <int W>
static cudaError_t kv_append_launch(ni_half16 *k_cache, ni_half16 *v_cache, const ni_half16 *qkv,
                                    const int32_t *slot, const int32_t *pos, size_t N, size_t NH,
                                    size_t HS, size_t T, cudaStream_t s) {
    size_t total = N * (NH * HS / W);
    size_t blocks = (total + KV_THREADS - 1) / KV_THREADS;
    if (blocks > 16384) blocks = 16384;
    return ni_launch_pdl(kv_append_kernel<W>, dim3((unsigned int)blocks), dim3(KV_THREADS), 0, s,
                         k_cache, v_cache, qkv, slot, pos, N, NH, HS, T);
}

extern "C" int ni_cuda_kv_append(ni_half16 *k_cache, ni_half16 *v_cache, const ni_half16 *qkv,
                                 const int32_t *slot, const int32_t *pos, size_t N, size_t NH,
                                 size_t HS, size_t T, ni_stream s) {
    if (N == 0 || NH == 0 || HS == 0) return (int)cudaGetLastError();
    uintptr_t align = (uintptr_t)k_cache | (uintptr_t)v_cache | (uintptr_t)qkv;
    cudaStream_t st = (cudaStream_t)s;
    cudaError_t e;
    if (HS % 8 == 0 && align % 16 == 0)
        e = kv_append_launch<8>(k_cache, v_cache, qkv, slot, pos, N, NH, HS, T, st);
    else if (HS % 2 == 0 && align % 4 == 0)
        e = kv_append_launch<2>(k_cache, v_cache, qkv, slot, pos, N, NH, HS, T, st);
    else
        e = kv_append_launch<1>(k_cache, v_cache, qkv, slot, pos, N, NH, HS, T, st);
    return ni_launch_status(e);
}

NI_TL_SETTER(kv_append)
