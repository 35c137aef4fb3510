/* The MLP of a decode step for up to 8 rows in one kernel: the partial sums of
 * gelu(inp @ w_fc^T + b_fc) @ w_proj^T, which the next LayerNorm adds (with b_proj) in part order
 * (ni_cuda_partial_sums). As two GEMVs this is two kernels on the step's chain, and the second
 * one's weights cannot start streaming until the first one's blocks leave the SMs (they hold
 * the registers), so HBM idles between them. Here block b owns hidden features [64b, 64b + 64):
 * it needs only those 64 rows of w_fc and the same 64 columns of w_proj, so it requests both
 * before its programmatic-launch wait: w_fc's rows with 1D bulk copies into shared memory
 * (each row a few KB, the size the copy engine streams well), and the first MLP_PRE tiles of
 * w_proj's 128-byte row pieces into registers. After the wait it copies the input rows into
 * shared memory, makes its 64 features on the tensor cores (mma.m16n8k16, f32 accumulate; GELU,
 * then rounded to 16 bits, as the GEMV stores them), multiplies them with its 64 columns of
 * w_proj into partial sums for all C outputs, and the CL blocks of a thread-block cluster add
 * their partial sums through distributed shared memory (in rank order), so that
 * P = blocks / CL parts reach the LayerNorm. Every row's sums are made in the same order
 * whatever the number of rows, so a row's bits do not depend on the rest of the batch. The
 * k order inside a 32-column block is permuted as in gemv.cu, so that a lane's 16-byte load is
 * its fragment (the same map for both operands). */
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "cuda/dtype.cuh"
#include "cuda/kernels.h"
#include "cuda/pdl.cuh"
#include "cuda/timeline.cuh"
#include "cuda/tma.cuh"
#include "cuda/device_math.cuh"

namespace cg = cooperative_groups;

#define MLP_SLICE 64    /* hidden features per block */
#define MLP_THREADS 512 /* 16 warps: 8 feature tiles x 2 halves of C in the first product */
#define MLP_WARPS 16
#define MLP_PRE 6       /* w_proj tiles per warp requested before the wait (2 loads each) */
#define MLP_ROW_PAD 64  /* bytes after each shared row: rows 16 words apart mod 32 banks */
#define MLP_H_STRIDE 96 /* 16-bit values per shared feature row (64 + the same padding) */

/* Streamed weights (read once): no L1 allocation, the 128-byte piece only. Zeros if !pred. */
static __device__ __forceinline__ uint4 mlp_ld_stream(const ni_half16 *p, bool pred) {
    uint4 v;
    asm volatile("{\n\t.reg .pred p;\n\t"
                 "setp.ne.b32 p, %5, 0;\n\t"
                 "mov.b32 %0, 0;\n\tmov.b32 %1, 0;\n\tmov.b32 %2, 0;\n\tmov.b32 %3, 0;\n\t"
                 "@p ld.global.nc.L1::no_allocate.L2::128B.v4.u32 {%0, %1, %2, %3}, [%4];\n\t}"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p), "r"((int)pred));
    return v;
}

/* bytes of global memory at src to shared memory at dst (both 16-byte aligned, bytes a multiple
 * of 16), completing on mbarrier bar; L2 evict_first (the weights are read once a step). */
static __device__ __forceinline__ void mlp_bulk_copy(uint32_t dst, const void *src, uint32_t bytes,
                                                     uint32_t bar, uint64_t pol) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint"
                 " [%0], [%1], %2, [%3], %4;" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar), "l"(pol)
                 : "memory");
}

/* acc += A (16 x 16: rows g and g + 8 of lane (g, t); row g + 8 is zero here) * B (16 x 8), with
 * a lane's 16-byte vectors xv (row g) and wv (weight row g) over one 32-column block: the two
 * k-steps of gemv.cu's map. */
template <typename D>
static __device__ __forceinline__ void mlp_block_mma(float (&acc)[4], uint4 xv, uint4 wv) {
    D::mma(acc, xv.x, 0u, xv.y, 0u, wv.x, wv.y);
    D::mma(acc, xv.z, 0u, xv.w, 0u, wv.z, wv.w);
}

/* The shared-memory layout of a launch (bytes), the same on host and device. */
typedef struct {
    uint32_t row; /* a shared row of C 16-bit values, padded */
    uint32_t x;   /* offset of the input rows (n of them) */
    uint32_t h;   /* of the features (8 rows of MLP_H_STRIDE) */
    uint32_t red; /* of the second halves' sums (8 tiles x 32 lanes x 2 floats) */
    uint32_t bar; /* of the mbarrier */
    uint32_t total;
} mlp_layout;

static __host__ __device__ mlp_layout mlp_layout_of(uint32_t C, uint32_t n) {
    mlp_layout l;
    l.row = C * 2 + MLP_ROW_PAD;
    l.x = MLP_SLICE * l.row;
    l.h = l.x + n * l.row;
    l.red = l.h + 8 * MLP_H_STRIDE * 2;
    l.bar = l.red + 8 * 32 * 2 * 4;
    l.total = l.bar + 16;
    return l;
}

/* Grid: H / 64 blocks of MLP_THREADS in clusters of CL (a divisor of the grid); C % 64 == 0,
 * (C / CL) % 4 == 0, n <= 8, and the layout's bytes of dynamic shared memory. */
template <typename D>
__global__ void __launch_bounds__(MLP_THREADS, 1)
    mlp_decode_kernel(float *parts,            // (blocks / CL, n, C)
                      const ni_half16 *inp,    // (n, C): the ln_2 output
                      const ni_half16 *w_fc,   // (H, C)
                      const ni_half16 *b_fc,   // (H)
                      const ni_half16 *w_proj, // (C, H)
                      uint32_t n, uint32_t C, uint32_t H) {
    NI_TL_SCOPE(NI_TL_MLP);
    extern __shared__ __align__(128) uint8_t mlp_smem[];
    cg::cluster_group cluster = cg::this_cluster();
    const mlp_layout L = mlp_layout_of(C, n);
    const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const uint32_t g = lane >> 2, t = lane & 3;
    const uint32_t j0 = blockIdx.x * MLP_SLICE;
    const uint32_t base = ni_smem_addr(mlp_smem);
    const uint32_t bar = base + L.bar;

    /* w_fc's 64 rows into shared memory, from the start (weights: before the wait, pdl.cuh) */
    if (threadIdx.x == 0) {
        ni_mbar_init(bar, 1);
        ni_mbar_init_fence();
    }
    __syncthreads();
    if (warp == 0) {
        if (lane == 0) ni_mbar_expect(bar, MLP_SLICE * C * 2);
        __syncwarp();
        uint64_t pol;
        asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
        for (uint32_t r = lane; r < MLP_SLICE; r += 32)
            mlp_bulk_copy(base + r * L.row, w_fc + (size_t)(j0 + r) * C, C * 2, bar, pol);
    }
    /* the first MLP_PRE of this warp's w_proj tiles (8 outputs x the block's 64 columns each):
     * lane (g, t) holds columns 8t.. and 32 + 8t.. of output row 8 * tile + g */
    const uint32_t tiles = C / 8;
    const ni_half16 *wp = w_proj + (size_t)(8 * warp + g) * H + j0 + 8 * t;
    const size_t tile_step = (size_t)8 * MLP_WARPS * H; /* from tile warp + 16 i to the next */
    uint4 wq[MLP_PRE][2];
#pragma unroll
    for (int i = 0; i < MLP_PRE; i++) {
        const bool in = warp + MLP_WARPS * (uint32_t)i < tiles;
        wq[i][0] = mlp_ld_stream(wp + (size_t)i * tile_step, in);
        wq[i][1] = mlp_ld_stream(wp + (size_t)i * tile_step + 32, in);
    }
    /* this lane's features' biases (feature tile warp % 8, features 2t, 2t + 1) */
    const uint32_t ftile = warp & 7, khalf = warp >> 3;
    const float bias0 = D::to_float(__ldg(b_fc + j0 + 8 * ftile + 2 * t));
    const float bias1 = D::to_float(__ldg(b_fc + j0 + 8 * ftile + 2 * t + 1));
    ni_pdl_launch_dependents(); /* the next kernels' own early work may start (pdl.cuh) */
    ni_pdl_wait();              /* inp comes from the kernel before */
    NI_TL_WAITED();

    /* the input rows into shared memory, all loads issued before any store */
    {
        const uint32_t vpr = C / 8, nv = n * vpr;
        for (uint32_t v0 = threadIdx.x; v0 < nv; v0 += 4 * MLP_THREADS) {
            uint4 v[4];
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const uint32_t i = v0 + (uint32_t)k * MLP_THREADS;
                const uint32_t r = i / vpr, c = i % vpr;
                v[k] = ni_ld_after_wait16(inp + (size_t)r * C + 8 * c, i < nv);
            }
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const uint32_t i = v0 + (uint32_t)k * MLP_THREADS;
                if (i < nv)
                    *reinterpret_cast<uint4 *>(mlp_smem + L.x + (i / vpr) * L.row +
                                               16 * (i % vpr)) = v[k];
            }
        }
    }
    __syncthreads();
    ni_mbar_wait(bar, 0);

    /* the 64 features: warp = feature tile (8) x half of C; 32-column blocks kb of the half */
    {
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        const uint32_t half = C / 2, kb0 = khalf * (half / 32), nkb = half / 32;
        const uint32_t wrow = base + (8 * ftile + g) * L.row + 16 * t;
        const uint32_t xrow = base + L.x + g * L.row + 16 * t;
        const bool xin = g < n;
        for (uint32_t kb = kb0; kb < kb0 + nkb; kb++) {
            const uint4 wv = ni_ld_shared16(wrow + 64 * kb);
            const uint4 xv = xin ? ni_ld_shared16(xrow + 64 * kb) : make_uint4(0u, 0u, 0u, 0u);
            mlp_block_mma<D>(acc, xv, wv);
        }
        /* the second half's sums to the first (row g: acc[0], acc[1]; rows g + 8 are zero) */
        float *red = reinterpret_cast<float *>(mlp_smem + L.red) + (ftile * 32 + lane) * 2;
        if (khalf == 1) red[0] = acc[0], red[1] = acc[1];
        __syncthreads();
        if (khalf == 0 && g < n) {
            const float f0 = ni_gelu_tanh(acc[0] + red[0] + bias0);
            const float f1 = ni_gelu_tanh(acc[1] + red[1] + bias1);
            *reinterpret_cast<uint32_t *>(reinterpret_cast<ni_half16 *>(mlp_smem + L.h) +
                                          g * MLP_H_STRIDE + 8 * ftile + 2 * t) = D::pack2(f0, f1);
        }
        __syncthreads(); /* the features are in; w_fc's rows are free for the partial sums */
    }

    /* the partial sums (n, C) of the 64 features times w_proj's 64 columns; tile = warp + 16 i */
    {
        float *part = reinterpret_cast<float *>(mlp_smem);
        const uint32_t hrow = base + L.h + g * MLP_H_STRIDE * 2 + 16 * t;
        const bool hin = g < n;
        const uint4 h0 = hin ? ni_ld_shared16(hrow) : make_uint4(0u, 0u, 0u, 0u);
        const uint4 h1 = hin ? ni_ld_shared16(hrow + 64) : make_uint4(0u, 0u, 0u, 0u);
        for (uint32_t i0 = 0; warp + MLP_WARPS * i0 < tiles; i0 += MLP_PRE) {
#pragma unroll
            for (int k = 0; k < MLP_PRE; k++) {
                const uint32_t i = i0 + (uint32_t)k, tile = warp + MLP_WARPS * i;
                if (tile < tiles) {
                    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                    mlp_block_mma<D>(acc, h0, wq[k][0]);
                    mlp_block_mma<D>(acc, h1, wq[k][1]);
                    /* the next round's tile into the freed registers */
                    const bool in = tile + MLP_WARPS * MLP_PRE < tiles;
                    const size_t off = (size_t)(i + MLP_PRE) * tile_step;
                    wq[k][0] = mlp_ld_stream(wp + off, in);
                    wq[k][1] = mlp_ld_stream(wp + off + 32, in);
                    if (hin)
                        *reinterpret_cast<float2 *>(part + (size_t)g * C + 8 * tile + 2 * t) =
                            make_float2(acc[0], acc[1]);
                }
            }
        }
    }

    /* the cluster's sums: rank r adds columns [r * C / CL, (r + 1) * C / CL) of every member's
     * partial sums, in rank order */
    cluster.sync();
    {
        const uint32_t CL = cluster.num_blocks(), r = cluster.block_rank();
        const uint32_t cw = C / CL, c0 = r * cw, vpr = cw / 4;
        const size_t p = blockIdx.x / CL;
        float *part = reinterpret_cast<float *>(mlp_smem);
        for (uint32_t i = threadIdx.x; i < n * vpr; i += MLP_THREADS) {
            const uint32_t row = i / vpr, c = c0 + 4 * (i % vpr);
            float4 v[8];
#pragma unroll
            for (uint32_t q = 0; q < 8; q++)
                if (q < CL)
                    v[q] = *reinterpret_cast<const float4 *>(
                        cluster.map_shared_rank(part + (size_t)row * C + c, q));
            float4 s = v[0];
#pragma unroll
            for (uint32_t q = 1; q < 8; q++)
                if (q < CL) s.x += v[q].x, s.y += v[q].y, s.z += v[q].z, s.w += v[q].w;
            *reinterpret_cast<float4 *>(parts + (p * n + row) * C + c) = s;
        }
    }
    cluster.sync(); /* no block leaves while others read its shared memory */
}

/* The cluster size for a grid of B blocks: the largest divisor up to 8 (the portable cluster
 * size) that splits C into float4 columns evenly; 0 if none. */
static uint32_t mlp_cluster(uint32_t B, uint32_t C) {
    for (uint32_t c = 8; c >= 2; c--)
        if (B % c == 0 && C % (4 * c) == 0) return c;
    return 0;
}

static int mlp_smem_limit(void) {
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return 0;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
        return 0;
    return v;
}

extern "C" size_t ni_cuda_mlp_decode_rows(size_t C, size_t H) {
    if (C == 0 || H == 0 || C % 64 != 0 || H % MLP_SLICE != 0 || C > 16384 || H > 65536) return 0;
    if (mlp_cluster((uint32_t)(H / MLP_SLICE), (uint32_t)C) == 0) return 0;
    const int limit = mlp_smem_limit();
    size_t rows = 0;
    while (rows < NI_CUDA_MLP_DECODE_MAX_ROWS &&
           mlp_layout_of((uint32_t)C, (uint32_t)rows + 1).total <= (uint32_t)limit)
        rows++;
    return rows;
}

extern "C" int ni_cuda_mlp_decode_setup(void) {
    const int limit = mlp_smem_limit();
    if (limit <= 0) return (int)cudaErrorNotSupported;
    cudaError_t e = cudaFuncSetAttribute(mlp_decode_kernel<ni_dt_bf16>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, limit);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(mlp_decode_kernel<ni_dt_f16>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, limit);
    return (int)e;
}

extern "C" int ni_cuda_mlp_decode(ni_cuda_partial_sums *sums, float *ws, size_t ws_floats,
                                  const ni_half16 *inp, const ni_half16 *w_fc,
                                  const ni_half16 *b_fc, const ni_half16 *w_proj,
                                  const ni_half16 *b_proj, size_t N, size_t C, size_t H,
                                  ni_cuda_dtype dt, ni_stream s) {
    if (dt != NI_CUDA_BF16 && dt != NI_CUDA_F16) return (int)cudaErrorInvalidValue;
    if (!sums || !ws || !inp || !w_fc || !b_fc || !w_proj || N == 0 ||
        N > ni_cuda_mlp_decode_rows(C, H))
        return (int)cudaErrorInvalidValue;
    if (((uintptr_t)ws | (uintptr_t)inp | (uintptr_t)w_fc | (uintptr_t)w_proj) & 15u)
        return (int)cudaErrorMisalignedAddress;
    const uint32_t B = (uint32_t)(H / MLP_SLICE), CL = mlp_cluster(B, (uint32_t)C);
    const size_t P = B / CL;
    if (P * N * C > ws_floats) return (int)cudaErrorInvalidValue;
    const mlp_layout L = mlp_layout_of((uint32_t)C, (uint32_t)N);
    cudaStream_t st = (cudaStream_t)s;
    cudaError_t e;
    if (dt == NI_CUDA_BF16)
        e = ni_launch_pdl_cluster(mlp_decode_kernel<ni_dt_bf16>, dim3(B), dim3(MLP_THREADS),
                                  L.total, st, CL, ws, inp, w_fc, b_fc, w_proj, (uint32_t)N,
                                  (uint32_t)C, (uint32_t)H);
    else
        e = ni_launch_pdl_cluster(mlp_decode_kernel<ni_dt_f16>, dim3(B), dim3(MLP_THREADS), L.total,
                                  st, CL, ws, inp, w_fc, b_fc, w_proj, (uint32_t)N, (uint32_t)C,
                                  (uint32_t)H);
    sums->ws = ws;
    sums->parts = P;
    sums->rows = N;
    sums->stride = C;
    sums->bias = b_proj;
    return ni_launch_status(e);
}

NI_TL_SETTER(mlp_decode)
