/* A per-block timeline of every kernel of the forward pass and the samplers, for a build with
 * -DNI_TIMELINE (cmake -DCMAKE_CUDA_FLAGS=-DNI_TIMELINE -DCMAKE_C_FLAGS=-DNI_TIMELINE). With
 * NI_TIMELINE_FILE=F in the environment, one thread of every block records its kernel's tag,
 * grid size, block, SM and three globaltimer stamps: its start, the return of its programmatic-
 * launch wait, and its end (when that thread leaves the kernel); the backend writes the records
 * to F when it is destroyed (timeline.h), and tools/timeline.py reads them (its TAGS follow the
 * enum below). That shows, inside a replayed graph where kernels overlap, when each kernel's
 * blocks arrived, when its wait released them and when its last block ended, which Nsight
 * Compute (one kernel at a time, serialized) cannot. A record's slot comes from one atomic add
 * at the block's start on its SM's counter, into that SM's share of the buffer (empty slots keep
 * tag 0); the result is needed only at the block's end. The recording slows gpt2-xl's batch-1
 * step by about 6 % (H200). Without NI_TIMELINE every macro here is empty. */
#ifndef NI_CUDA_TIMELINE_CUH
#define NI_CUDA_TIMELINE_CUH

#include <stdint.h>

#include "cuda/timeline.h"

enum {
    NI_TL_EMBEDDING = 1,
    NI_TL_LAYERNORM,
    NI_TL_GEMV,
    NI_TL_ATTN_CHUNK,
    NI_TL_ATTN_WHOLE,
    NI_TL_ATTN_MERGE,
    NI_TL_SAMPLER,
    NI_TL_ADVANCE,
    NI_TL_GEMM_STREAM,
    NI_TL_ATTN_PREFILL,
    NI_TL_KV_APPEND,
    NI_TL_RESIDUAL_ADD
};

static_assert(sizeof(ni_tl_record) == 48, "tools/timeline.py reads 48-byte records");

#ifdef NI_TIMELINE

/* per translation unit: each .cu file that records defines its setter (NI_TL_SETTER) */
static __device__ ni_tl_record *ni_tl_buf;
static __device__ unsigned long long *ni_tl_count;
static __device__ unsigned long long ni_tl_cap;

static __device__ __forceinline__ uint64_t ni_tl_now(void) {
    uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

/* Thread 0 of the block records (every kernel's thread 0 waits; gemm_stream's producer warp,
 * which does not, is its last). */
struct ni_tl_scope {
    bool on;
    uint32_t tag, sm;
    unsigned long long slot;
    uint64_t t0, t1;
    __device__ ni_tl_scope(uint32_t tag_) {
        on = threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0 && ni_tl_buf != NULL;
        tag = tag_;
        t1 = 0;
        if (on) {
            t0 = ni_tl_now();
            /* a counter and a share of the buffer per SM: one counter for all blocks slowed
             * the step by a sixth */
            asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
            const unsigned counter = sm & (NI_TL_SMS - 1);
            const unsigned long long share = ni_tl_cap / NI_TL_SMS;
            const unsigned long long i = atomicAdd(ni_tl_count + counter, 1ull);
            slot = i < share ? counter * share + i : ni_tl_cap;
        }
    }
    __device__ void waited(void) {
        if (on) t1 = ni_tl_now();
    }
    __device__ ~ni_tl_scope() {
        if (!on || slot >= ni_tl_cap) return;
        const uint32_t grid = gridDim.x * gridDim.y * gridDim.z;
        const uint32_t block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
        ni_tl_record r = {tag, grid, block, sm, t0, t1, ni_tl_now(), 0};
        ni_tl_buf[slot] = r;
    }
};

#define NI_TL_SCOPE(tag) ni_tl_scope ni_tl_(tag)
#define NI_TL_WAITED() ni_tl_.waited()
#define NI_TL_SETTER(name)                                                                         \
    extern "C" int ni_tl_set_##name(void *buf, unsigned long long *count,                          \
                                    unsigned long long cap) {                                      \
        cudaError_t e = cudaMemcpyToSymbol(ni_tl_buf, &buf, sizeof buf);                           \
        if (e == cudaSuccess) e = cudaMemcpyToSymbol(ni_tl_count, &count, sizeof count);           \
        if (e == cudaSuccess) e = cudaMemcpyToSymbol(ni_tl_cap, &cap, sizeof cap);                 \
        return (int)e;                                                                             \
    }

#else

#define NI_TL_SCOPE(tag) ((void)0)
#define NI_TL_WAITED() ((void)0)
#define NI_TL_SETTER(name)

#endif

#endif
