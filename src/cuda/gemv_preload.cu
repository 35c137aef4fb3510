/* Matrix-vector product for up to 8 rows whose weights are copied into shared memory before the
 * programmatic-launch wait: out (N, OC) = inp (N, IC) @ w^T + bias [then GELU], for matrices of
 * at most 16 weight rows per SM (the MLP's down projection, 6400 -> 1600 on gpt2-xl).
 *
 * Why. The GEMV (gemv.cu) keeps its loads in flight in registers, and the product before it
 * holds every register of the SM until its blocks leave, so the MLP's second product finds no
 * room to start its stream before the first one ends. This kernel needs few registers: its
 * blocks become resident beside the product before it, and copy their share of the weights into
 * shared memory (1D bulk copies, one per weight row and chunk, completing on an mbarrier) while
 * that product still runs. After the wait only the inputs are loaded, and the copies that did not
 * fit are issued as the warps free their slots.
 *
 * Layout. One block per SM (grid B): block b owns weight rows [b OC / B, (b + 1) OC / B), at
 * most 16, as the B operand of mma.m16n8k16 (two 8-row tiles). Its GP_WARPS warps split IC: warp
 * w owns 32-column blocks [w nkb / W, (w + 1) nkb / W) for all of the block's rows and streams
 * them in chunks of GP_CHUNK 32-column blocks through its own ring of slots (each slot the
 * chunk's piece of every row, rows padded by 16 bytes so that a warp's 16-byte reads hit distinct
 * banks). Lane (g, t) reads, per 32-column block, 16 bytes of input row g and of weight rows g
 * and g + 8 at column 8t, the k order of gemv.cu. The warps' sums are added in warp order, so a
 * feature's sum depends on IC and the warp count only, not on the block, the grid or the batch:
 * the same bits for every N <= 8. */
#include <cuda_runtime.h>
#include <stdint.h>

#include "cuda/device_math.cuh"
#include "cuda/dtype.cuh"
#include "cuda/kernels.h"
#include "cuda/pdl.cuh"
#include "cuda/timeline.cuh"
#include "cuda/tma.cuh"

#define GP_SPLIT 4 /* warps sharing an 8-row tile's IC: the order of every sum */
#define GP_TILES 2 /* 8-row tiles per block */
#define GP_WARPS (GP_SPLIT * GP_TILES)
#define GP_ROWS (8 * GP_TILES) /* most weight rows per block */
#define GP_MAX_ROWS 8          /* most input rows */
#define GP_CHUNK_MAX 13 /* 32-column blocks per chunk: 832-byte copies (smaller ones are slow) */

/* 1D bulk copy of `bytes` (a multiple of 16) from global src to shared dst, completing on bar;
 * L2 evict_first (the weights are read once per step). */
static __device__ __forceinline__ void gp_bulk_copy(uint32_t dst, const void *src, uint32_t bytes,
                                                    uint32_t bar, uint64_t pol) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint"
                 " [%0], [%1], %2, [%3], %4;" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar), "l"(pol)
                 : "memory");
}

/* The plan of a launch, the same on host and device. */
typedef struct {
    uint32_t nkb;     /* 32-column blocks of IC */
    uint32_t chunk;   /* 32-column blocks per chunk */
    uint32_t nchunks; /* chunks of the largest IC slice */
    uint32_t slots;   /* slots per warp */
    uint32_t row_b;   /* a row's piece of a slot: chunk * 64 + 16 bytes (16 * odd) */
    uint32_t rows0;   /* rows of the block's first tile (8, or fewer when the block has fewer) */
    uint32_t rows1;   /* ... and of its second (0 when none) */
    uint32_t x_b;     /* the input rows' copy at the start of shared memory: N (IC * 2 + 16) */
} gp_plan;

/* A warp's slots for `rows` rows, at least its 512 bytes of partial sums. */
static __host__ __device__ __forceinline__ uint32_t gp_region_b(const gp_plan &p, uint32_t rows) {
    const uint32_t b = rows * p.row_b * p.slots;
    return b < 512u ? 512u : b;
}

static __host__ __device__ __forceinline__ gp_plan gp_make_plan(uint32_t IC, uint32_t N,
                                                                uint32_t rows_max,
                                                                uint32_t slots_max) {
    gp_plan p;
    p.x_b = N * (IC * 2u + 16u);
    p.rows0 = rows_max < 8u ? rows_max : 8u;
    p.rows1 = rows_max - p.rows0;
    p.nkb = IC / 32;
    const uint32_t slice = (p.nkb + GP_SPLIT - 1) / GP_SPLIT;
    const uint32_t n = (slice + GP_CHUNK_MAX - 1) / GP_CHUNK_MAX;
    p.chunk = (slice + n - 1) / n;
    p.nchunks = (slice + p.chunk - 1) / p.chunk;
    p.slots = slots_max < p.nchunks ? slots_max : p.nchunks;
    p.row_b = p.chunk * 64u + 16u;
    return p;
}

/* Warp-level: chunk c of the warp's slice into its slot (lane 0 announces the bytes, lane r
 * copies row r). */
static __device__ __forceinline__ void gp_issue(uint32_t slot_addr, uint32_t bar,
                                                const ni_half16 *wrow0, size_t IC, uint32_t rows,
                                                uint32_t row_b, uint32_t kb, uint32_t nkb_chunk,
                                                int lane, uint64_t pol) {
    const uint32_t bytes = nkb_chunk * 64u;
    if (lane == 0) ni_mbar_expect(bar, bytes * rows);
    __syncwarp();
    if ((uint32_t)lane < rows)
        gp_bulk_copy(slot_addr + (uint32_t)lane * row_b,
                     wrow0 + (size_t)lane * IC + (size_t)kb * 32, bytes, bar, pol);
}

/* Block: GP_TILES x GP_SPLIT warps; warp w multiplies tile w / GP_SPLIT (8 weight rows of the
 * block's) over IC slice w % GP_SPLIT. */
template <typename D>
__global__ void __launch_bounds__(GP_WARPS * 32, 4)
    gemv_preload_kernel(ni_half16 *out,        // (N, OC)
                        const ni_half16 *inp,  // (N, IC)
                        const ni_half16 *w,    // (OC, IC)
                        const ni_half16 *bias, // (OC) or NULL
                        int N, uint32_t IC, uint32_t OC, uint32_t rows_max, gp_plan p, int gelu) {
    NI_TL_SCOPE(NI_TL_GEMV_PRELOAD);
    extern __shared__ __align__(128) uint8_t gp_smem[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int tile = warp / GP_SPLIT, ks = warp % GP_SPLIT;
    const uint32_t b0 = blockIdx.x * rows_max;
    const uint32_t brows = OC - b0 < rows_max ? OC - b0 : rows_max;
    const uint32_t t0 = 8u * (uint32_t)tile;
    const uint32_t rows = brows > t0 ? (brows - t0 < 8u ? brows - t0 : 8u) : 0u; /* warp-uniform */
    const uint32_t kb0 = (uint32_t)((uint64_t)p.nkb * (uint32_t)ks / GP_SPLIT);
    const uint32_t kb1 = (uint32_t)((uint64_t)p.nkb * (uint32_t)(ks + 1) / GP_SPLIT);
    const uint32_t nchunks = (kb1 - kb0 + p.chunk - 1) / p.chunk;
    /* the first tile's warps' regions, then the second's, then the barriers (one per slot) */
    const uint32_t reg0 = gp_region_b(p, p.rows0), reg1 = gp_region_b(p, p.rows1);
    const uint32_t region_off = tile ? GP_SPLIT * reg0 + (uint32_t)ks * reg1 : (uint32_t)ks * reg0;
    const uint32_t slot_b = (tile ? p.rows1 : p.rows0) * p.row_b;
    const uint32_t xs = ni_smem_addr(gp_smem);
    const uint32_t region = xs + p.x_b + region_off;
    const uint32_t bars_all = xs + p.x_b + GP_SPLIT * (reg0 + reg1);
    const uint32_t bars = bars_all + (uint32_t)warp * p.slots * 8u;
    const uint32_t xbar = bars_all + GP_WARPS * p.slots * 8u;
    const ni_half16 *wrow0 = w + (size_t)(b0 + t0) * IC;

    /* before the wait: the barriers, every slot's first chunk in flight, the biases (no kernel
     * writes weights or biases, pdl.cuh) */
    uint64_t pol;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
    if (threadIdx.x == 0) {
        ni_mbar_init(xbar, 1);
        ni_mbar_init_fence();
    }
    if (rows > 0) {
        if (lane == 0) {
            for (uint32_t s = 0; s < p.slots; s++) ni_mbar_init(bars + 8u * s, 1);
            ni_mbar_init_fence();
        }
        __syncwarp();
        for (uint32_t c = 0; c < nchunks && c < p.slots; c++) {
            const uint32_t kb = kb0 + c * p.chunk;
            const uint32_t n = kb1 - kb < p.chunk ? kb1 - kb : p.chunk;
            gp_issue(region + c * slot_b, bars + 8u * c, wrow0, IC, rows, p.row_b, kb, n, lane,
                     pol);
        }
    }
    float bv[2];
#pragma unroll
    for (int j = 0; j < 2; j++) {
        const uint32_t r = (uint32_t)(2 * t + j);
        bv[j] = bias && ks == 0 && r < rows ? D::to_float(__ldg(bias + b0 + t0 + r)) : 0.0f;
    }
    __syncthreads(); /* the input rows' barrier initialized before any warp waits on it */
    ni_pdl_launch_dependents();
    ni_pdl_wait(); /* inp comes from the previous kernel */
    NI_TL_WAITED();

    /* the input rows, written by the previous kernel, copied whole into shared memory by one
     * thread (a copy per row), so that every warp then reads them without a round trip each */
    if (threadIdx.x == 0) {
        asm volatile("fence.proxy.async.global;" ::: "memory");
        ni_mbar_expect(xbar, (uint32_t)N * IC * 2u);
        for (int n = 0; n < N; n++)
            gp_bulk_copy(xs + (uint32_t)n * (IC * 2u + 16u), inp + (size_t)n * IC, IC * 2u, xbar,
                         pol);
    }

    /* lane (g, t): input row g, weight row g of the tile (clamped to its rows: a column past them
     * is computed from a real row and never stored) */
    const bool xok = g < N;
    const uint32_t xr = xs + (uint32_t)(xok ? g : 0) * (IC * 2u + 16u) + 16u * t;
    const uint32_t wr = (uint32_t)(g < (int)rows ? g : (int)rows - 1) * p.row_b + 16u * t;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (rows > 0) {
        ni_mbar_wait(xbar, 0);
        uint32_t kb = kb0;
        for (uint32_t c = 0; c < nchunks; c++) {
            const uint32_t s = c % p.slots;
            const uint32_t slot = region + s * slot_b;
            const uint32_t kbe = kb + p.chunk < kb1 ? kb + p.chunk : kb1;
            ni_mbar_wait(bars + 8u * s, (c / p.slots) & 1u);
#pragma unroll 4
            for (uint32_t k = kb; k < kbe; k++) {
                const uint4 wv = ni_ld_shared16(slot + wr + 64u * (k - kb));
                const uint4 xv = xok ? ni_ld_shared16(xr + 64u * k) : make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
                for (int q = 0; q < 2; q++)
                    D::mma(acc, ni_u4_word(xv, 2 * q), 0u, ni_u4_word(xv, 2 * q + 1), 0u,
                           ni_u4_word(wv, 2 * q), ni_u4_word(wv, 2 * q + 1));
            }
            const uint32_t cn = c + p.slots;
            if (cn < nchunks) {
                /* the slot's reads are done (their values fed the mma above): hand it to the
                 * copy engine for the chunk `slots` ahead */
                __syncwarp();
                asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
                const uint32_t kbn = kb0 + cn * p.chunk;
                const uint32_t n = kb1 - kbn < p.chunk ? kb1 - kbn : p.chunk;
                gp_issue(slot, bars + 8u * s, wrow0, IC, rows, p.row_b, kbn, n, lane, pol);
            }
            kb = kbe;
        }
    }

    /* each tile's slices added in slice order, through the start of each warp's own region (its
     * slots are all consumed and their copies landed) */
    float *red = reinterpret_cast<float *>(gp_smem + p.x_b + region_off);
#pragma unroll
    for (int i = 0; i < 4; i++) red[i * 32 + lane] = acc[i];
    __syncthreads();
    if (ks != 0 || rows == 0) return;
    for (int s2 = 1; s2 < GP_SPLIT; s2++) {
        const float *r2 = reinterpret_cast<const float *>(gp_smem + p.x_b + region_off +
                                                          (uint32_t)s2 * (tile ? reg1 : reg0));
#pragma unroll
        for (int i = 0; i < 4; i++) acc[i] += r2[i * 32 + lane];
    }
    if (!xok) return;
#pragma unroll
    for (int j = 0; j < 2; j++) {
        const uint32_t r = (uint32_t)(2 * t + j);
        if (r >= rows) continue;
        float v = acc[j] + bv[j];
        if (gelu) v = ni_gelu_tanh(v);
        out[(size_t)g * OC + b0 + t0 + r] = D::from_float(v);
    }
}

/* Shared memory of a plan: the warps' regions and their barriers. */
static size_t gp_smem_bytes(const gp_plan &p) {
    return (size_t)p.x_b + (size_t)GP_SPLIT * (gp_region_b(p, p.rows0) + gp_region_b(p, p.rows1)) +
           (size_t)GP_WARPS * 8u * p.slots + 8u;
}

extern "C" int ni_cuda_gemv_preload_fits(size_t N, size_t IC, size_t OC, size_t sms) {
    return N >= 1 && N <= GP_MAX_ROWS && sms > 0 && IC % 32 == 0 && IC / 32 >= GP_SPLIT &&
           IC <= (size_t)0x7fffffe0 && OC >= 1 && (OC + sms - 1) / sms <= GP_ROWS &&
           OC <= 0xffffffffu;
}

extern "C" int ni_cuda_gemv_preload(ni_half16 *out, const ni_half16 *inp, const ni_half16 *w,
                                    const ni_half16 *bias, size_t N, size_t IC, size_t OC,
                                    size_t sms, size_t smem_budget, int gelu, ni_cuda_dtype dt,
                                    ni_stream s) {
    if (dt != NI_CUDA_BF16 && dt != NI_CUDA_F16) return (int)cudaErrorInvalidValue;
    if (!ni_cuda_gemv_preload_fits(N, IC, OC, sms) || !out || !inp || !w)
        return (int)cudaErrorInvalidValue;
    if (((uintptr_t)w & 15u) != 0 || ((uintptr_t)inp & 15u) != 0) return (int)cudaErrorInvalidValue;
    /* rows a block: the fewest that spread OC over the SMs; blocks: the fewest that take OC in
     * such shares (the busiest block is the same, and the SMs left over may hold the next
     * kernel) */
    const uint32_t rows_max = (uint32_t)((OC + sms - 1) / sms);
    const uint32_t blocks = (uint32_t)((OC + rows_max - 1) / rows_max);
    /* as many slots as the budget holds, at least 2 (or the chunks) */
    gp_plan p = gp_make_plan((uint32_t)IC, (uint32_t)N, rows_max, 64u);
    while (p.slots > 2 && gp_smem_bytes(p) > smem_budget)
        p = gp_make_plan((uint32_t)IC, (uint32_t)N, rows_max, p.slots - 1);
    const size_t smem = gp_smem_bytes(p);
    cudaError_t e;
    if (dt == NI_CUDA_F16) {
        e = cudaFuncSetAttribute(gemv_preload_kernel<ni_dt_f16>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e == cudaSuccess)
            e = ni_launch_pdl(gemv_preload_kernel<ni_dt_f16>, dim3(blocks), dim3(GP_WARPS * 32),
                              smem, (cudaStream_t)s, out, inp, w, bias, (int)N, (uint32_t)IC,
                              (uint32_t)OC, rows_max, p, gelu);
    } else {
        e = cudaFuncSetAttribute(gemv_preload_kernel<ni_dt_bf16>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e == cudaSuccess)
            e = ni_launch_pdl(gemv_preload_kernel<ni_dt_bf16>, dim3(blocks), dim3(GP_WARPS * 32),
                              smem, (cudaStream_t)s, out, inp, w, bias, (int)N, (uint32_t)IC,
                              (uint32_t)OC, rows_max, p, gelu);
    }
    return ni_launch_status(e);
}

NI_TL_SETTER(gemv_preload)
