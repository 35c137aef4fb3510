/* The matrix product for 17 to 32 rows: a prefill of a 17-32-token chunk, a decode batch of
 * 17-32. out (N, OC) = inp (N, IC) @ w^T + bias [then GELU], 16-bit in and out, f32 accumulate.
 * A block takes at most 2048 columns (8 slab columns) of the inputs: wider inputs (the MLP's
 * second product of gpt2 to gpt2-xl, 3072-6400 columns) are split into column ranges ("parts") of
 * the grid's blocks, so that every SM takes a share, whose sums meet in a workspace and are added
 * in part order by the last part to arrive (a fence and an atomic; ni_cuda_gemm_stream_plan_for
 * picks the parts), or, for the product before a LayerNorm, by that LayerNorm (defer). Against
 * cuBLASLt there (H200, same call, 32-token prompt): TTFT gpt2 0.40 / 0.41 -> 0.37 / 0.38 ms,
 * decode at batch 17 +6 %, 24 +4 %, 32 +3 %; gpt2-medium, -large and -xl even (xl's fcproj: 5 parts
 * of 5 columns). At these sizes the product is small and the weights (2-20 MB a GPT-2 matrix) are
 * the cost; cuBLASLt's kernels take 7-12 us for them (ncu, H200), and our GEMV, whose warps stream
 * the weights through their registers, loses to it above 16 rows. Here the weights go by TMA, as in
 * the fused decode step: one block per SM owns consecutive tiles of 16 output features (split
 * evenly, at most 4), and a producer warp copies the block's slabs (16 rows x 256 columns, one
 * 2D tensor copy each) into a ring of 6 shared-memory slots in the order they are consumed,
 * column of slabs by column, starting before the programmatic-launch wait (the weights never
 * depend on the previous kernel). The LayerNorm and the attention let this kernel launch at
 * their start (pdl.cuh), so the ring fills while they run.
 * The consumer warps take every slab together: warp w multiplies columns 32 w .. 32 w + 31 of
 * each, for all the block's tiles, on the tensor cores (mma.m16n8k16, the rows as the A operand
 * in two 16-row tiles, the weights as B), with those columns of the 32 input rows in registers,
 * loaded one slab column ahead (no warp reads another's inputs, so none are staged in shared
 * memory). Then the warps' partial tiles are added in warp order. Every sum's order
 * depends only on (IC, OC) and the grid, never on N: a row's output is the same in any batch.
 * For the qkv product of a prefill chunk the epilogue also stores the keys and values into the
 * caches (the KV append kernel's copy, saved: TTFT gpt2 0.48 -> 0.44 ms, H200).
 * The ring is small on purpose. Measured on the H200 in one call, against the inputs staged in
 * shared memory all at once with a 12-slot ring: inputs in registers, 12 slots: TTFT gpt2-xl
 * 2.22 -> 2.12 ms, decode batch 17 / 32 +3 / +5 %; with 26 slots (every slab of a block requested
 * at once) 2.20 ms; 8 slots 2.00-2.04; 7 slots 1.99-2.02; 6 slots 1.99 ms, batch 17 / 32 +9 / +10 %
 * (gpt2: TTFT 0.36 -> 0.34 ms, +3 / +4 %); 5 slots 2.02-2.05; 4 slots 2.08-2.10; 3 slots 2.25.
 * With fewer copies in flight per SM the slabs land closer to the order the warps take them, and
 * the inputs' loads queue behind fewer of them.
 * Measured in the engine against cuBLASLt (H200, same call, before the above): TTFT with a
 * 32-token prompt gpt2 0.53 -> 0.47 ms, gpt2-medium 1.00 -> 0.91, gpt2-large 1.55 -> 1.44, gpt2-xl
 * even; decode at batch 32 gpt2 +13 %, medium +10 %, large +6 %, xl even (+3 % at batch 17)
 * (docs/engines.md has the variants measured). */
#include <cuda_runtime.h>
#include <stdint.h>
#include <string.h>

#include "cuda/device_math.cuh"
#include "cuda/dtype.cuh"
#include "cuda/kernels.h"
#include "cuda/pdl.cuh"
#include "cuda/timeline.cuh"
#include "cuda/tma.cuh"

#define GS_WARPS 8 /* consumers; one more warp issues the copies */
#define GS_THREADS (GS_WARPS * 32)
#define GS_BLOCK (GS_THREADS + 32)
#define GS_MAX_TILES 4 /* 16-feature tiles per block: gpt2-xl's fc (400) on 132 SMs */
#define GS_ROWS NI_CUDA_GEMM_STREAM_MAX_ROWS
#define GS_SLAB_PITCH (NI_CUDA_SLAB_COLS * 2)
#define GS_SLAB_BYTES (NI_CUDA_SLAB_ROWS * GS_SLAB_PITCH)
#define GS_RING 6     /* weight slots: 48 KB in flight per SM (see above) */
#define GS_MAX_COLS 8 /* slab columns per block: IC <= 2048, wider inputs in parts */
/* the partial tiles, [warp][tile][row][feature] */
#define GS_RED_BYTES (GS_WARPS * GS_MAX_TILES * GS_ROWS * 16 * 4)
#define GS_RING_BYTES (GS_RING * GS_SLAB_BYTES)
/* the ring, then the reduction's partial tiles where they do not fit it, then the barriers */
#define GS_AREA_BYTES (GS_RING_BYTES > GS_RED_BYTES ? GS_RING_BYTES : GS_RED_BYTES)
#define GS_SMEM (GS_AREA_BYTES + GS_RING * 16)

/* the partial tiles reuse the area once every slab is consumed; the barriers follow it */
static_assert(GS_AREA_BYTES % 16 == 0, "the barriers must stay aligned");
static_assert(GS_MAX_TILES * 16 <= GS_THREADS, "one thread per bias");

/* The 8 consumer warps only (named barrier 1): the producer warp never joins. */
static __device__ __forceinline__ void gs_bar(void) {
    asm volatile("bar.sync 1, %0;" ::"n"(GS_THREADS) : "memory");
}

/* This lane's inputs of slab column s: rows r, r + 8, r + 16, r + 24 (zeros past N or IC),
 * matrix columns s * 256 + 32 w + 8 t .. + 7; the previous kernel's output (pdl.cuh). */
static __device__ __forceinline__ void gs_load_inputs(uint4 (&xv)[4], const uint16_t *inp,
                                                      uint32_t N, uint32_t IC, uint32_t s,
                                                      uint32_t warp, uint32_t lane) {
    const uint32_t r = lane >> 2, col = s * NI_CUDA_SLAB_COLS + warp * 32 + 8 * (lane & 3);
#pragma unroll
    for (uint32_t g = 0; g < 4; g++) {
        const uint32_t row = r + 8 * g;
        const bool ok = row < N && col < IC;
        xv[g] = ni_ld_after_wait16(inp + (ok ? (size_t)row * IC + col : 0), ok);
    }
}

/* Slab column s of every tile of the block: wait for each slab, multiply this warp's 32 columns
 * of it by the rows' inputs xv, release the slot; q counts the block's slabs. */
template <typename D>
static __device__ __forceinline__ void gs_column(float (&acc)[GS_MAX_TILES][2][2][4],
                                                 const uint4 (&xv)[4], uint32_t s, uint32_t nt,
                                                 uint32_t &q, uint32_t IC, uint32_t ring_base,
                                                 uint32_t bars, uint32_t warp, uint32_t lane) {
    const uint32_t r = lane >> 2, t = lane & 3;
    const bool live = s * NI_CUDA_SLAB_COLS + warp * 32 < IC; /* warp-uniform */
#pragma unroll
    for (uint32_t tl = 0; tl < GS_MAX_TILES; tl++) {
        if (tl >= nt) break;
        const uint32_t slot = q % GS_RING, full = bars + slot * 16;
        /* this warp consumed the slot's previous fill itself, so the barrier is at most one
         * phase behind the one awaited */
        ni_mbar_wait(full, (q / GS_RING) & 1u);
        q++;
        if (live) {
            const uint32_t base =
                ring_base + slot * GS_SLAB_BYTES + r * GS_SLAB_PITCH + warp * 64 + t * 16;
            /* features r and 8 + r of the tile, the lane's 8 columns */
            const uint4 w0 = ni_ld_shared16(base), w1 = ni_ld_shared16(base + 8 * GS_SLAB_PITCH);
            /* the lane's 8 columns as two k-steps of (2 t, 2 t + 1 | 2 t + 8, 2 t + 9): the
             * same permutation of k for the rows and the weights */
#pragma unroll
            for (int ks = 0; ks < 2; ks++) {
#pragma unroll
                for (int m = 0; m < 2; m++) {
                    const uint32_t a0 = ni_u4_word(xv[2 * m], 2 * ks),
                                   a1 = ni_u4_word(xv[2 * m + 1], 2 * ks),
                                   a2 = ni_u4_word(xv[2 * m], 2 * ks + 1),
                                   a3 = ni_u4_word(xv[2 * m + 1], 2 * ks + 1);
                    D::mma(acc[tl][m][0], a0, a1, a2, a3, ni_u4_word(w0, 2 * ks),
                           ni_u4_word(w0, 2 * ks + 1));
                    D::mma(acc[tl][m][1], a0, a1, a2, a3, ni_u4_word(w1, 2 * ks),
                           ni_u4_word(w1, 2 * ks + 1));
                }
            }
        }
        __syncwarp();
        if (lane == 0) ni_mbar_arrive(full + 8); /* this warp is done with the slot */
    }
}

/* The keys' and values' destination of a qkv product (k == NULL: none), sizes in 32 bits. */
typedef struct {
    uint16_t *k, *v;
    const int32_t *slot, *pos;
    uint32_t C, NH, HS, T;
} gs_kv;

/* Element o (C <= o < 3 C) of row n's qkv output in the key or value cache. */
static __device__ __forceinline__ uint16_t *gs_kv_at(const gs_kv &kv, uint32_t n, uint32_t o) {
    const uint32_t ch = (o - kv.C) % kv.C, h = ch / kv.HS, d = ch % kv.HS;
    uint16_t *cache = o < 2 * kv.C ? kv.k : kv.v;
    return cache + (((size_t)kv.slot[n] * kv.NH + h) * kv.T + (size_t)kv.pos[n]) * kv.HS + d;
}

/* Bias, GELU and the stores of features o .. o + 3 (v, before the bias) of row n, tile tl of
 * the block. */
template <typename D>
static __device__ __forceinline__ void gs_finish(uint16_t *out, const gs_kv &kv, float4 v,
                                                 const float *sbias, uint32_t tl, uint32_t f,
                                                 uint32_t n, uint32_t o, uint32_t OC, int gelu) {
    float e[4] = {v.x + sbias[tl * 16 + f], v.y + sbias[tl * 16 + f + 1],
                  v.z + sbias[tl * 16 + f + 2], v.w + sbias[tl * 16 + f + 3]};
    if (gelu)
#pragma unroll
        for (int k = 0; k < 4; k++) e[k] = ni_gelu_tanh(e[k]);
    const uint32_t w01 = D::pack2(e[0], e[1]), w23 = D::pack2(e[2], e[3]);
    const uint16_t hv[4] = {(uint16_t)(w01 & 0xffffu), (uint16_t)(w01 >> 16),
                            (uint16_t)(w23 & 0xffffu), (uint16_t)(w23 >> 16)};
    uint16_t *dst = out + (size_t)n * OC + o;
    if (o + 4 <= OC && ((uintptr_t)dst & 7u) == 0) {
        *reinterpret_cast<uint2 *>(dst) = make_uint2(w01, w23);
    } else {
        for (uint32_t k = 0; k < 4 && o + k < OC; k++) dst[k] = hv[k];
    }
    if (kv.k && o + 3 >= kv.C) {
        /* the key or value: four features of one head in one 8-byte store where they can be */
        uint16_t *c0 = gs_kv_at(kv, n, o >= kv.C ? o : kv.C);
        if (o >= kv.C && o + 4 <= OC && kv.HS % 4 == 0 && ((uintptr_t)c0 & 7u) == 0) {
            *reinterpret_cast<uint2 *>(c0) = make_uint2(w01, w23);
        } else {
            for (uint32_t k = 0; k < 4 && o + k < OC; k++)
                if (o + k >= kv.C) *gs_kv_at(kv, n, o + k) = hv[k];
        }
    }
}

/* The share (ni_cuda_gemm_stream_plan): a grid of parts x bp blocks; block p bp + i takes the
 * tiles i T / bp .. (i + 1) T / bp - 1 over slab columns p S / parts .. (p + 1) S / parts - 1.
 * With parts > 1 every block writes its sums to ws ([part][row][tile x 16 + feature]) and counts
 * itself in counters[i]; the last of the parts to arrive adds the parts' sums in part order, so
 * that the order is fixed whoever arrives last, finishes the tiles and zeroes the counter for
 * the next launch. With defer, the blocks only write their sums: the next kernel (the residual
 * add + LayerNorm) adds them (ni_cuda_partial_sums). That saves the handshake, a fence, an
 * atomic and the reads back on the kernel's critical path: TTFT gpt2-xl 2.27 / 2.29 -> 2.16 /
 * 2.18 ms, decode at batch 32 +3 % (H200, same call). */
template <typename D>
__global__ void __launch_bounds__(GS_BLOCK, 1)
    gemm_stream_kernel(uint16_t *__restrict__ out, gs_kv kv, float *ws, unsigned *counters,
                       const uint16_t *inp, const void *tmap, const uint16_t *__restrict__ bias,
                       uint32_t N, uint32_t IC, uint32_t OC, uint32_t parts, int gelu, int defer,
                       int early) {
    NI_TL_SCOPE(NI_TL_GEMM_STREAM);
    /* 128-byte aligned: the ring's slots, the TMA copies' destinations, lie at multiples of
     * 8 KB from here */
    extern __shared__ __align__(128) uint8_t gs_smem[];
    __shared__ float sbias[GS_MAX_TILES * 16];
    __shared__ uint32_t last_part;
    __shared__ int32_t s_slot[GS_ROWS], s_pos[GS_ROWS];
    const uint32_t warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const uint32_t tiles = (OC + 15) / 16, S_all = (IC + NI_CUDA_SLAB_COLS - 1) / NI_CUDA_SLAB_COLS;
    const uint32_t bp = gridDim.x / parts, part = blockIdx.x / bp, bi = blockIdx.x % bp;
    const uint32_t t0 = (uint32_t)((uint64_t)bi * tiles / bp);
    const uint32_t nt = (uint32_t)((uint64_t)(bi + 1) * tiles / bp) - t0;
    const uint32_t c0 = (uint32_t)((uint64_t)part * S_all / parts);
    const uint32_t S = (uint32_t)((uint64_t)(part + 1) * S_all / parts) - c0;
    const uint32_t ring_base = ni_smem_addr(gs_smem);
    const uint32_t bars = ring_base + GS_AREA_BYTES;

    if (threadIdx.x == 0) {
        for (uint32_t k = 0; k < GS_RING; k++) {
            ni_mbar_init(bars + k * 16, 1);            /* full: the producer's expect_tx */
            ni_mbar_init(bars + k * 16 + 8, GS_WARPS); /* empty: every consumer warp */
        }
        ni_mbar_init_fence();
    }
    /* the rows' cache slots and positions for the keys' and values' stores, before the wait: the
     * host copies them before the forward pass and no kernel of it writes them (pdl.cuh), so that
     * the epilogue's stores do not wait on their loads */
    gs_kv kvs = kv;
    if (kv.k) {
        if (threadIdx.x < N) {
            s_slot[threadIdx.x] = kv.slot[threadIdx.x];
            s_pos[threadIdx.x] = kv.pos[threadIdx.x];
        }
        kvs.slot = s_slot;
        kvs.pos = s_pos;
    }
    __syncthreads();

    /* in a decode step, let the next kernel launch now: a LayerNorm or the attention fits beside
     * this one and lets its own successor's weights start early too (after fc the next is
     * fcproj, often gemm_stream again, whose blocks just wait for free SMs): batch 17 / 24 /
     * 32 +9 / +6.5 / +7 % on gpt2, +3.5 / +4 / +2 % on gpt2-xl (H200). Not in a prefill, where it
     * cost gpt2-xl 0.03-0.06 ms of TTFT. */
    if (early) ni_pdl_launch_dependents();
    if (warp == GS_WARPS) {
        /* slab q = (s - c0) nt + tile: column s of every tile, then the next column. Slot
         * q % ring's previous fill was consumed by all 8 warps before it is refilled. */
        if (lane == 0)
            for (uint32_t q = 0; q < S * nt; q++) {
                const uint32_t slot = q % GS_RING, full = bars + slot * 16;
                if (q >= GS_RING) ni_mbar_wait(full + 8, ((q / GS_RING) & 1u) ^ 1u);
                ni_mbar_expect(full, GS_SLAB_BYTES);
                ni_tma_load_2d(ring_base + slot * GS_SLAB_BYTES, tmap,
                               (c0 + q / nt) * NI_CUDA_SLAB_COLS, (t0 + q % nt) * 16, full);
            }
        return;
    }

    /* weights (the bias too) may be read before the wait; kept in a register until the
     * epilogue, so that the load's latency (an HBM miss) hides behind the whole product */
    const uint32_t bias_o = t0 * 16 + threadIdx.x;
    const uint16_t my_bias = bias && threadIdx.x < nt * 16 && bias_o < OC ? bias[bias_o] : 0;
    ni_pdl_wait(); /* inp comes from the previous kernel */
    NI_TL_WAITED();
    /* the first slab column's inputs now, each next one while this one is multiplied */
    uint4 xv[4];
    gs_load_inputs(xv, inp, N, IC, c0, warp, lane);
    float acc[GS_MAX_TILES][2][2][4]; /* [tile][16-row tile][8-feature half][fragment] */
#pragma unroll
    for (int i = 0; i < GS_MAX_TILES; i++)
#pragma unroll
        for (int m = 0; m < 2; m++)
#pragma unroll
            for (int h = 0; h < 2; h++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[i][m][h][e] = 0.0f;
    uint32_t q = 0;
    for (uint32_t s = 0; s < S; s++) {
        uint4 xn[4] = {};
        if (s + 1 < S) gs_load_inputs(xn, inp, N, IC, c0 + s + 1, warp, lane);
        gs_column<D>(acc, xv, c0 + s, nt, q, IC, ring_base, bars, warp, lane);
#pragma unroll
        for (int g = 0; g < 4; g++) xv[g] = xn[g];
    }

    /* every slab consumed, so landed: the area now holds the partial tiles,
     * red[warp][tile][row][feature] */
    if (threadIdx.x < nt * 16) sbias[threadIdx.x] = D::to_float(my_bias);
    gs_bar();
    float *red = reinterpret_cast<float *>(gs_smem);
    {
        const uint32_t r = lane >> 2, t = lane & 3;
#pragma unroll
        for (uint32_t tl = 0; tl < GS_MAX_TILES; tl++) {
            if (tl >= nt) break;
#pragma unroll
            for (int m = 0; m < 2; m++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    /* fragment: rows 16 m + r (e 0, 1) and 16 m + r + 8 (e 2, 3), features
                     * 8 h + 2 t + (e & 1) */
                    float *p = red +
                               (((size_t)warp * GS_MAX_TILES + tl) * GS_ROWS + 16 * m + r) * 16 +
                               8 * h + 2 * t;
                    *reinterpret_cast<float2 *>(p) =
                        make_float2(acc[tl][m][h][0], acc[tl][m][h][1]);
                    *reinterpret_cast<float2 *>(p + 8 * 16) =
                        make_float2(acc[tl][m][h][2], acc[tl][m][h][3]);
                }
        }
    }
    gs_bar();
    ni_pdl_launch_dependents(); /* only the sums and stores are left */
    /* thread i: features 4 k .. 4 k + 3 (k = i % 4) of row n of tile tl, one 16-byte read of
     * each warp's partials, added in warp order */
    const size_t OCp = (size_t)tiles * 16; /* a row of a part's sums in ws */
    for (uint32_t i = threadIdx.x; i < nt * N * 4; i += GS_THREADS) {
        const uint32_t tl = i / (N * 4), n = i / 4 % N, f = 4 * (i % 4), o = (t0 + tl) * 16 + f;
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
        for (int w = 0; w < GS_WARPS; w++) {
            const float4 p = *reinterpret_cast<const float4 *>(
                red + (((size_t)w * GS_MAX_TILES + tl) * GS_ROWS + n) * 16 + f);
            v.x += p.x, v.y += p.y, v.z += p.z, v.w += p.w;
        }
        if (parts == 1)
            gs_finish<D>(out, kvs, v, sbias, tl, f, n, o, OC, gelu);
        else
            *reinterpret_cast<float4 *>(ws + ((size_t)part * N + n) * OCp + o) = v;
    }
    if (parts == 1 || defer) return; /* defer: the next kernel adds the parts */
    /* the parts' handshake: every thread's sums visible before the count, and the last
     * block's reads after it */
    __threadfence();
    gs_bar();
    if (threadIdx.x == 0) last_part = atomicAdd(counters + bi, 1u) == parts - 1;
    gs_bar();
    if (!last_part) return;
    __threadfence();
    for (uint32_t i = threadIdx.x; i < nt * N * 4; i += GS_THREADS) {
        const uint32_t tl = i / (N * 4), n = i / 4 % N, f = 4 * (i % 4), o = (t0 + tl) * 16 + f;
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        for (uint32_t p = 0; p < parts; p++) {
            const float4 w =
                __ldcg(reinterpret_cast<const float4 *>(ws + ((size_t)p * N + n) * OCp + o));
            v.x += w.x, v.y += w.y, v.z += w.z, v.w += w.w;
        }
        gs_finish<D>(out, kvs, v, sbias, tl, f, n, o, OC, gelu);
    }
    if (threadIdx.x == 0) counters[bi] = 0u; /* every part has counted: ready for the next launch */
}

static size_t gs_columns(size_t IC) {
    return (IC + NI_CUDA_SLAB_COLS - 1) / NI_CUDA_SLAB_COLS;
}

extern "C" int ni_cuda_gemm_stream_setup(size_t *sms) {
    *sms = 0;
    int dev = 0, major = 0, count = 0, optin = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, dev);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (e != cudaSuccess) return (int)e;
    if (major < 9 || (size_t)optin < GS_SMEM + GS_MAX_TILES * 16 * 4) return 0;
    e = cudaFuncSetAttribute(gemm_stream_kernel<ni_dt_bf16>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, GS_SMEM);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(gemm_stream_kernel<ni_dt_f16>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, GS_SMEM);
    if (e != cudaSuccess) return (int)e;
    *sms = (size_t)count;
    return 0;
}

/* Checks a share of T tiles of S slab columns over G blocks in parts (the kernel's) and fills
 * what it needs; 0 where it is not valid: more than GS_MAX_TILES tiles or GS_MAX_COLS columns
 * in a block, or a grid that does not divide into the parts. */
static int gs_plan_check(ni_cuda_gemm_stream_plan *p, size_t T, size_t S, size_t G, size_t parts) {
    memset(p, 0, sizeof *p);
    if (G == 0 || G > 0x7fffffffu || T == 0 || S == 0 || parts == 0 || parts > S ||
        G % parts != 0 || G / parts > T)
        return 0;
    const size_t bp = G / parts, tb = (T + bp - 1) / bp, cols = (S + parts - 1) / parts;
    if (tb > GS_MAX_TILES || cols > GS_MAX_COLS) return 0;
    p->blocks = G, p->parts = parts, p->max_slabs = tb * cols;
    p->ws_floats = parts > 1 ? parts * GS_ROWS * T * 16 : 0;
    p->counters = parts > 1 ? bp : 0;
    return 1;
}

/* The share of P parts on sms multiprocessors: as many blocks a part as fit, at most one a tile. */
static int gs_plan_parts(ni_cuda_gemm_stream_plan *p, size_t T, size_t S, size_t sms, size_t P) {
    const size_t bp = sms / P < T ? sms / P : T;
    return gs_plan_check(p, T, S, P * bp, P);
}

/* The planner's cost of a share: a block's first GS_RING slabs are in flight at once, and the
 * parts' handshake (a fence, an atomic, the sums through L2) costs more than 6 slabs (counted as
 * 8): whole
 * tiles plus the 4 tiles left over from 132 x 3 spread as single-column pieces, which took
 * gpt2-xl's fc from 28 slabs to 22 for the busiest block, cost 0.2 ms of TTFT. The busiest
 * block sets the kernel's time: gpt2-xl's fcproj in 4 parts gives one block 28 slabs (33
 * blocks for 100 tiles) and took TTFT from 2.31 to 2.51 ms against 5 parts of 20 slabs (H200,
 * same call). */
static size_t gs_plan_cost(const ni_cuda_gemm_stream_plan *p) {
    return (p->max_slabs > GS_RING ? p->max_slabs : GS_RING) + (p->ws_floats ? 8 : 0);
}

extern "C" int ni_cuda_gemm_stream_plan_for(ni_cuda_gemm_stream_plan *out, size_t IC, size_t OC,
                                            size_t sms, size_t want_parts) {
    memset(out, 0, sizeof *out);
    if (sms == 0 || OC == 0 || IC == 0 || IC % 8 != 0 || OC > 0x7fffff00u || IC > 0x7fffff00u)
        return 0;
    const size_t T = (OC + 15) / 16, S = gs_columns(IC);
    const size_t P0 = (S + GS_MAX_COLS - 1) / GS_MAX_COLS;
    ni_cuda_gemm_stream_plan c;
    int found = 0;
    if (want_parts > P0 && want_parts <= sms && gs_plan_parts(&c, T, S, sms, want_parts)) {
        *out = c;
        return 1;
    }
    /* from the fewest parts that fit, the cheapest */
    for (size_t P = P0; P <= S && P <= P0 + 8 && P <= sms; P++)
        if (gs_plan_parts(&c, T, S, sms, P) && (!found || gs_plan_cost(&c) < gs_plan_cost(out)))
            *out = c, found = 1;
    return found;
}

extern "C" int ni_cuda_gemm_stream(ni_half16 *out, float *ws, unsigned *counters,
                                   const ni_cuda_kv_dest *kv, const ni_half16 *inp,
                                   const void *tmap, const ni_half16 *bias, size_t N, size_t IC,
                                   size_t OC, int gelu, ni_cuda_dtype dt,
                                   const ni_cuda_gemm_stream_plan *plan, ni_stream s) {
    if (dt != NI_CUDA_BF16 && dt != NI_CUDA_F16) return (int)cudaErrorInvalidValue;
    ni_cuda_gemm_stream_plan chk;
    if (!plan || N > GS_ROWS || !out || !inp || !tmap || IC == 0 || OC == 0 || OC > 0x7fffff00u ||
        IC > 0x7fffff00u || IC % 8 != 0 || ((uintptr_t)inp & 15u) != 0 ||
        ((uintptr_t)tmap & 63u) != 0 ||
        !gs_plan_check(&chk, (OC + 15) / 16, gs_columns(IC), plan->blocks, plan->parts) ||
        (chk.ws_floats && (!ws || (!counters && !plan->defer) || ((uintptr_t)ws & 15u) != 0)) ||
        (plan->defer && (chk.parts == 1 || kv || gelu)))
        return (int)cudaErrorInvalidValue;
    gs_kv k = {};
    if (kv) {
        const size_t C = kv->NH * kv->HS;
        if (!kv->k_cache || !kv->v_cache || !kv->slot || !kv->pos || C == 0 || OC != 3 * C ||
            kv->T == 0 || kv->T > 0x7fffffffu)
            return (int)cudaErrorInvalidValue;
        k.k = kv->k_cache, k.v = kv->v_cache, k.slot = kv->slot, k.pos = kv->pos;
        k.C = (uint32_t)C, k.NH = (uint32_t)kv->NH, k.HS = (uint32_t)kv->HS, k.T = (uint32_t)kv->T;
    }
    if (N == 0) return (int)cudaGetLastError();
    cudaStream_t st = (cudaStream_t)s;
    const dim3 grid((unsigned)chk.blocks), block(GS_BLOCK);
    const size_t smem = GS_SMEM;
    const uint32_t n = (uint32_t)N, ic = (uint32_t)IC, oc = (uint32_t)OC;
    const uint32_t parts = (uint32_t)chk.parts;
    const int defer = plan->defer != 0, early = plan->early != 0;
    cudaError_t e =
        dt == NI_CUDA_F16
            ? ni_launch_pdl(gemm_stream_kernel<ni_dt_f16>, grid, block, smem, st, out, k, ws,
                            counters, inp, tmap, bias, n, ic, oc, parts, gelu, defer, early)
            : ni_launch_pdl(gemm_stream_kernel<ni_dt_bf16>, grid, block, smem, st, out, k, ws,
                            counters, inp, tmap, bias, n, ic, oc, parts, gelu, defer, early);
    return ni_launch_status(e);
}

NI_TL_SETTER(gemm_stream)
