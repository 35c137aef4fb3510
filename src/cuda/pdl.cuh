/* Programmatic Dependent Launch (sm_90): a kernel launched through ni_launch_pdl may start while
 * the kernel before it in the stream is still draining, so that its launch latency hides behind
 * that kernel's tail. Every such kernel calls ni_pdl_wait() before any global memory access
 * other than loads of weights (below): griddepcontrol.wait returns only once the previous grid
 * has completed and all its memory operations are visible, so the order of effects is plain
 * stream order. ni_pdl_launch_dependents() only lets the next kernel's blocks be scheduled (to
 * wait) before this one ends; it is never needed for correctness. Data that an earlier kernel
 * writes must not be read with ld.global.nc / __ldg after the wait (the non-coherent path lies
 * outside the memory model that the wait orders, and ptxas may schedule such loads before it):
 * only weights, written before the last stream synchronization, go that way, and only they may
 * be loaded before the wait: the GEMV's biases and first round of weights, gemm_stream's TMA
 * stream and bias, the LayerNorm's scale and shift. Before its wait a kernel may run beside any
 * earlier kernel still in flight, not only the one just before it (see "Where to trigger"), so
 * the rule holds against all of them; the weights' writers (weights_init.cu) are followed by a
 * stream synchronization before any forward pass.
 * Exceptions, with plain loads: the decode attention that appends the step's keys and values
 * (attention_decode.cu) reads pos and slot before its wait, and with them the cached rows before
 * pos (into registers where the caller allows it and its chunk fits them, else, with 16-byte
 * loads, requested into L2). No kernel of a decode step writes them before it: every step begins
 * with the embedding kernel, which waits before it triggers its successor, so no kernel of the step
 * starts before every earlier writer (the copies before the step, the previous step's advance)
 * is done; the step's own advance writes pos after its wait. Likewise the prefill attention
 * (attention_prefill.cu) reads its sequence lists (start, length, slot, first position of each
 * piece) before its wait, and gemm_stream the rows' slots and positions where it stores keys and
 * values: the host copies them before the forward pass, no kernel of the pass writes them, and
 * the pass's first kernel (the embedding) waits before it triggers. A prefetch changes no data.
 * Where to trigger. The kernels that feed a matrix product (the LayerNorm, both attentions) and
 * the GEMV trigger at their start, before their own wait, so a decode layer's kernels are
 * resident together, each held at its wait, while their pre-wait work runs: the GEMV's first
 * round of weights, gemm_stream's producer, the attention's cache prefetch. That is safe for
 * every chain: a dependent's wait returns only once its predecessor has completed, which it
 * cannot before its own wait returned, and so on up the stream. That needs every kernel launched
 * here to execute ni_pdl_wait() unconditionally in at least one thread of each block (all do;
 * gemm_stream's producer warp skips it, its consumer warps do not). It cannot deadlock either: a
 * grid's dependents launch only once every block of it has triggered or exited, so every grid in
 * flight but the newest is wholly resident and the oldest always finishes. On the
 * H200 this took gpt2 batch 1 from 3,760 to 4,280 tokens/s and batch 8 +13 % (the preload alone,
 * with the triggers where they were, lost 3 %). The embedding, the sampler and the advance
 * trigger after their wait (no gain measured the other way).
 * NI_NO_PDL=1 in the environment turns the launch attribute off (read at each launch, so that a
 * captured graph keeps what was set when it was captured); compiling with -DNI_PDL_NO_TRIGGER
 * drops the early triggers. */
#ifndef NI_CUDA_PDL_CUH
#define NI_CUDA_PDL_CUH

#include <cuda_runtime.h>
#include <stdlib.h>

static __device__ __forceinline__ void ni_pdl_wait(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

static __device__ __forceinline__ void ni_pdl_launch_dependents(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !defined(NI_PDL_NO_TRIGGER)
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}

/* 16 bytes at p that an earlier kernel wrote, read after ni_pdl_wait(): a coherent load (not
 * ld.global.nc, above), through L1. Zeros where !pred, predicated inside the asm so that an
 * unrolled round of such loads has no branches and ptxas may issue them all at once. */
static __device__ __forceinline__ uint4 ni_ld_after_wait16(const void *p, bool pred) {
    uint4 v;
    asm volatile("{\n\t.reg .pred p;\n\t"
                 "setp.ne.b32 p, %5, 0;\n\t"
                 "mov.b32 %0, 0;\n\tmov.b32 %1, 0;\n\tmov.b32 %2, 0;\n\tmov.b32 %3, 0;\n\t"
                 "@p ld.global.v4.u32 {%0, %1, %2, %3}, [%4];\n\t}"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p), "r"((int)pred));
    return v;
}

/* 0 when NI_NO_PDL is set to anything but "" or "0". */
static inline int ni_pdl_enabled(void) {
    const char *e = getenv("NI_NO_PDL");
    return !e || e[0] == '\0' || (e[0] == '0' && e[1] == '\0');
}

/* kernel<<<grid, block, smem, s>>>(args...) with programmatic stream serialization allowed and,
 * cluster_x > 1, thread-block clusters of cluster_x blocks along x (sm_90; grid.x a multiple of
 * it). The arguments convert to the kernel's parameter types as in a <<< >>> launch. */
template <typename... KArgs, typename... Args>
static inline cudaError_t ni_launch_pdl_cluster(void (*kernel)(KArgs...), dim3 grid, dim3 block,
                                                size_t smem, cudaStream_t s, unsigned cluster_x,
                                                Args... args) {
    cudaLaunchAttribute attr[2] = {};
    unsigned n = 0;
    if (ni_pdl_enabled()) {
        attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[n].val.programmaticStreamSerializationAllowed = 1;
        n++;
    }
    if (cluster_x > 1) {
        attr[n].id = cudaLaunchAttributeClusterDimension;
        attr[n].val.clusterDim.x = cluster_x;
        attr[n].val.clusterDim.y = 1;
        attr[n].val.clusterDim.z = 1;
        n++;
    }
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    cfg.attrs = attr;
    cfg.numAttrs = n;
    return cudaLaunchKernelEx(&cfg, kernel, args...);
}

/* kernel<<<grid, block, smem, s>>>(args...) with programmatic stream serialization allowed. */
template <typename... KArgs, typename... Args>
static inline cudaError_t ni_launch_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 block,
                                        size_t smem, cudaStream_t s, Args... args) {
    return ni_launch_pdl_cluster(kernel, grid, block, smem, s, 1u, args...);
}

/* A launcher's result: the launch's own error, else (and in any case clearing it) the last one. */
static inline int ni_launch_status(cudaError_t launch) {
    cudaError_t last = cudaGetLastError();
    return (int)(launch != cudaSuccess ? launch : last);
}

#endif
