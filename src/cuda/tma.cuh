/* Shared-memory pipelines of sm_90: mbarriers and TMA tensor copies (cp.async.bulk.tensor), and
 * the 16-byte cp.async, as used by the kernels that stream weights into rings of shared-memory
 * slots (decode_fused.cu, gemm_stream.cu). Addresses are shared-window (32-bit) addresses. A
 * slot's "full" barrier completes a phase when its copy's bytes have landed (one arrive with the
 * expected byte count, then the copy's transactions); an "empty" barrier when its consumers have
 * arrived. Waits name the phase by parity, so a waiter must know that the barrier is at most one
 * phase behind the one it wants (see each ring's comments). */
#ifndef NI_CUDA_TMA_CUH
#define NI_CUDA_TMA_CUH

#include <cuda_runtime.h>
#include <stdint.h>

static __device__ __forceinline__ uint32_t ni_smem_addr(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

static __device__ __forceinline__ void ni_mbar_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}

/* After the block's mbarrier.init calls, before a __syncthreads: the inits visible to the
 * asynchronous proxy (the TMA unit) too. */
static __device__ __forceinline__ void ni_mbar_init_fence(void) {
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

/* Until the phase of parity `parity` has completed (parity 1 on a fresh barrier: at once). */
static __device__ __forceinline__ void ni_mbar_wait(uint32_t bar, uint32_t parity) {
    asm volatile("{\n\t.reg .pred p;\n\t"
                 "NI_MBAR_WAIT_%=:\n\t"
                 "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n\t"
                 "@!p bra NI_MBAR_WAIT_%=;\n\t}" ::"r"(bar),
                 "r"(parity)
                 : "memory");
}

static __device__ __forceinline__ void ni_mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}

/* The producer's arrival, announcing `bytes` of copies that complete the phase when they land. */
static __device__ __forceinline__ void ni_mbar_expect(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes)
                 : "memory");
}

/* The box at (column c0, row r0) of the 2D tensor described by tmap (global memory, 64-byte
 * aligned) to shared memory at dst, completing on mbarrier bar. L2 evict_first: weights are read
 * once per step or prefill, so they go first when L2 needs room and the activations and caches
 * stay (+2 % at gpt2-xl batch 1 in the fused step, H200). */
static __device__ __forceinline__ void ni_tma_load_2d(uint32_t dst, const void *tmap, uint32_t c0,
                                                      uint32_t r0, uint32_t bar) {
    uint64_t pol;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
                 ".L2::cache_hint [%0], [%1, {%2, %3}], [%4], %5;" ::"r"(dst),
                 "l"(tmap), "r"(c0), "r"(r0), "r"(bar), "l"(pol)
                 : "memory");
}

/* 16 bytes of shared memory at a shared-window address (a piece of a ring slot). */
static __device__ __forceinline__ uint4 ni_ld_shared16(uint32_t addr) {
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(addr));
    return v;
}

/* 16 bytes from global memory through L2 only (so also data other SMs wrote during the kernel)
 * to shared memory, asynchronously. */
static __device__ __forceinline__ void ni_cp_async16(void *dst, const void *src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(ni_smem_addr(dst)), "l"(src)
                 : "memory");
}

/* The same, or 16 zero bytes where !valid (src must still be a valid address). */
static __device__ __forceinline__ void ni_cp_async16_or_zero(void *dst, const void *src,
                                                             bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(ni_smem_addr(dst)), "l"(src),
                 "r"(valid ? 16u : 0u)
                 : "memory");
}

static __device__ __forceinline__ void ni_cp_async_commit(void) {
    asm volatile("cp.async.commit_group;" ::: "memory");
}

/* Until at most n of this thread's committed groups are still in flight. */
template <int n> static __device__ __forceinline__ void ni_cp_async_wait(void) {
    asm volatile("cp.async.wait_group %0;" ::"n"(n) : "memory");
}

#endif
