/* Matrix-vector products for small batches (N <= 32 rows): out (N, OC) = inp (N, IC) @ w^T +
 * bias [then GELU], the decode-step matmuls, where the weights are read once and the time is
 * the time to stream them from HBM (cuBLASLt reaches about half the read bandwidth there).
 * Each warp owns 16 output features (two tiles of 8 weight rows; 8 features, one tile, for
 * matrices of fewer than 4 x 132 such 16-feature tiles) and a slice of IC; per 32
 * columns each lane loads one 16-byte vector from each of its two weight rows (streamed, no L1
 * allocation) and the 16-byte vectors of the input rows it needs (plain loads through L1: the
 * inputs are small, read by every warp, and served by L1/L2, so no shared-memory staging, which
 * could not hold 16 x 6400 inputs anyway; not the non-coherent path, which the wait of a
 * programmatic launch does not order, see pdl.cuh), four such 32-column blocks in flight per
 * round (two for N > 16); in the 8-feature instances of up to 8 rows with 16-byte loads, a warp
 * whose slice spans more than one round rolls them: block u of the next round is requested as
 * soon as block u of this one is multiplied, so that four stay in flight all along instead of
 * dropping to none at the end of each round (H200, cuda_graphs,
 * batch 1 / 2 / 4 / 8: gpt2-large +6.8 / +5.7 / +2.5 / +0.4 %, gpt2-xl +1.8 / +2.9 / +2.8 /
 * +2.7 %, gpt2 and gpt2-medium within 1.4 % either way; the same sums in the same order). The
 * product runs on the tensor cores with mma.m16n8k16 (16-bit in, f32
 * accumulate; the bf16 or f16 instruction as the dtype says, dtype.cuh): the batch rows
 * (zero-padded to 16; 17..32 rows are two such A tiles, both multiplied with each weight fragment)
 * are the A operand, 8 weight rows the B operand, and the k order inside each 32-column block is
 * permuted so that a lane's 16-byte load is exactly its fragment (the sum over k does not depend on
 * that order). Tensor cores keep N = 16 as cheap as N = 1: on the CUDA cores N = 16 costs 16 FMAs
 * per weight, close to the FP32 peak at HBM speed. IC is split over up to 16 warps of a block
 * (fixed order reduction in shared memory) so that small matrices still put enough loads in flight:
 * blocks of 8 warps (16 when the split is 16), as many warps as fit in one wave on 132 SMs
 * (GEMV_MAX_WARPS), e.g. gpt2-xl 1600 -> 4800: 300 blocks x 8 warps with IC split 8; the logits
 * 1600 -> 50257: 393 blocks x 8 warps, no split. The split depends on (IC, OC) only, so a row's
 * result does not depend on the rest of the batch (the same bits for N = 1 .. 32). IC % 8 != 0 or
 * unaligned pointers take the same kernel with scalar loads. */
#include <cuda_runtime.h>
#include <stdint.h>

#include "cuda/device_math.cuh"
#include "cuda/dtype.cuh"
#include "cuda/kernels.h"
#include "cuda/pdl.cuh"
#include "cuda/timeline.cuh"

#define GEMV_WIDE_TILES 528 /* 16-feature tiles below which a warp takes 8 (4 per SM) */
#define GEMV_U 4            /* 32-column blocks loaded per round (loads in flight) */
#define GEMV_U_WIDE 2       /* the same for N > 16 (four input rows a lane: registers) */
#define GEMV_MIN_WARPS 8    /* warps per block when the IC split is below 8 */
#define GEMV_MAX_SPLIT 16   /* most warps sharing one tile's IC (one block) */
#define GEMV_MAX_WARPS 4096 /* about what 132 SMs hold at once (32 warps of <= 64 registers) */

/* Weights are read once: no L1 allocation, 256-byte L2 prefetch (the next loads of the row).
 * Predicated inside the asm (zeros when !pred) so that the unrolled round has no branches and
 * ptxas is free to issue all of its loads before the first mma waits on them. */
static __device__ __forceinline__ uint4 gemv_ld_stream(const ni_half16 *p, bool pred) {
    uint4 v;
    asm volatile("{\n\t.reg .pred p;\n\t"
                 "setp.ne.b32 p, %5, 0;\n\t"
                 "mov.b32 %0, 0;\n\tmov.b32 %1, 0;\n\tmov.b32 %2, 0;\n\tmov.b32 %3, 0;\n\t"
                 "@p ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];\n\t}"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p), "r"((int)pred));
    return v;
}

/* Eight 16-bit values at row[col .. col + 8) with zeros past IC, without alignment requirements;
 * NC: through the non-coherent path (weights only, as above). */
template <bool NC>
static __device__ __forceinline__ uint4 gemv_ld_scalar(const ni_half16 *row, size_t col,
                                                       size_t IC) {
    uint32_t q[4];
#pragma unroll
    for (int j = 0; j < 4; j++) {
        size_t c = col + 2 * (size_t)j;
        uint32_t lo = c < IC ? (uint32_t)(NC ? __ldg(row + c) : row[c]) : 0u;
        uint32_t hi = c + 1 < IC ? (uint32_t)(NC ? __ldg(row + c + 1) : row[c + 1]) : 0u;
        q[j] = lo | (hi << 16);
    }
    return make_uint4(q[0], q[1], q[2], q[3]);
}

template <bool VEC>
static __device__ __forceinline__ uint4 gemv_ld_w(const ni_half16 *row, size_t col, size_t IC,
                                                  bool pred) {
    if (VEC) return gemv_ld_stream(row + col, pred);
    return pred ? gemv_ld_scalar<true>(row, col, IC) : make_uint4(0u, 0u, 0u, 0u);
}

template <bool VEC>
static __device__ __forceinline__ uint4 gemv_ld_x(const ni_half16 *row, size_t col, size_t IC,
                                                  bool pred) {
    /* the inputs, re-read by every warp: through L1, and coherent, since they are the previous
     * kernel's output, which with PDL may still have been running when this one started */
    if (VEC) return ni_ld_after_wait16(row + col, pred);
    return pred ? gemv_ld_scalar<false>(row, col, IC) : make_uint4(0u, 0u, 0u, 0u);
}

/* d += a (16 x 16, row-major) * b (16 x 8, column-major), 16-bit type D in, f32 accumulate. */
template <typename D>
static __device__ __forceinline__ void gemv_mma(float *d, uint32_t a0, uint32_t a1, uint32_t a2,
                                                uint32_t a3, uint32_t b0, uint32_t b1) {
    D::mma(d, a0, a1, a2, a3, b0, b1);
}

/* One 32-column block kb: the vectors of R rows (zeros past kb1 or IC, or where a row is not
 * ok), weight rows (streamed) or input rows (cached) as W says ... */
template <bool VEC, bool W, int R>
static __device__ __forceinline__ void
gemv_load_block(uint4 (&v)[R], const ni_half16 *const (&row)[R], const bool (&ok)[R], uint32_t kb,
                uint32_t kb1, uint32_t ic, size_t IC, int t) {
    const uint32_t col = kb * 32 + (uint32_t)(8 * t);
    const bool in = kb < kb1 && col < ic;
#pragma unroll
    for (int r = 0; r < R; r++)
        v[r] = W ? gemv_ld_w<VEC>(row[r], col, IC, in && ok[r])
                 : gemv_ld_x<VEC>(row[r], col, IC, in && ok[r]);
}

/* ... and a round of U of them from kb ... */
template <bool VEC, bool W, int R, int U>
static __device__ __forceinline__ void
gemv_load_round(uint4 (&v)[U][R], const ni_half16 *const (&row)[R], const bool (&ok)[R],
                uint32_t kb, uint32_t kb1, uint32_t ic, size_t IC, int t) {
#pragma unroll
    for (int u = 0; u < U; u++)
        gemv_load_block<VEC, W, R>(v[u], row, ok, kb + (uint32_t)u, kb1, ic, IC, t);
}

/* ... and the products of one block's weight and input vectors into the accumulators (the k
 * order of the kernel's comment). */
template <typename D, int NT, int RT, int MT>
static __device__ __forceinline__ void
gemv_block_math(float (&acc)[RT][MT][4], const uint4 (&wv)[RT], const uint4 (&xv)[NT]) {
#pragma unroll
    for (int ks = 0; ks < 2; ks++) {
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            const uint32_t a0 = ni_u4_word(xv[2 * mt], 2 * ks);
            const uint32_t a2 = ni_u4_word(xv[2 * mt], 2 * ks + 1);
            const uint32_t a1 = 2 * mt + 1 < NT ? ni_u4_word(xv[2 * mt + 1], 2 * ks) : 0u;
            const uint32_t a3 = 2 * mt + 1 < NT ? ni_u4_word(xv[2 * mt + 1], 2 * ks + 1) : 0u;
#pragma unroll
            for (int rt = 0; rt < RT; rt++)
                gemv_mma<D>(acc[rt][mt], a0, a1, a2, a3, ni_u4_word(wv[rt], 2 * ks),
                            ni_u4_word(wv[rt], 2 * ks + 1));
        }
    }
}

/* ... and those of a round, block after block. */
template <typename D, int NT, int RT, int U, int MT>
static __device__ __forceinline__ void
gemv_round_math(float (&acc)[RT][MT][4], const uint4 (&wv)[U][RT], const uint4 (&xv)[U][NT]) {
#pragma unroll
    for (int u = 0; u < U; u++) gemv_block_math<D, NT, RT, MT>(acc, wv[u], xv[u]);
}

/* Block: (blockDim.x / 32) warps = G tiles x S slices of IC; warp w works on tile
 * blockIdx.x * G + w / S (8 RT output features) over slice w % S of the 32-column blocks.
 * D: the 16-bit type (dtype.cuh).
 * NT: 8-row groups of the batch loaded (1: N <= 8, rows 8..15 are zero; 2: N <= 16; 4: N <= 32,
 *     two 16-row A tiles).
 * RT: 8-row weight tiles per warp (1 or 2).
 * Lane (g = lane / 4, t = lane % 4) loads, per 32-column block kb, columns kb*32 + 8t .. +8 of
 * weight rows o_base + g and o_base + 8 + g and of input rows g and g + 8. For the two mma
 * k-steps s of that block, logical k = 2t + j (j < 2) is column kb*32 + 8t + 4s + j and
 * logical k = 2t + 8 + j is column kb*32 + 8t + 4s + 2 + j, the same map for A and B, so a
 * lane's vector word 2s feeds the fragment registers of k 2t.., word 2s + 1 those of k 2t+8..:
 * A = {x_g[2s], x_g+8[2s], x_g[2s+1], x_g+8[2s+1]}, B = {w_g[2s], w_g[2s+1]}. The accumulator
 * of weight tile rt holds (batch row g, features o_base + 8rt + 2t, +1) in d0, d1 and batch
 * row g + 8 in d2, d3; with NT = 4 a second accumulator holds rows g + 16 and g + 24 (input rows
 * loaded the same way). NT = 4 needs about twice the registers: one block a slot, not two, and
 * two 32-column blocks a round (GEMV_U_WIDE). */
template <typename D, int NT, bool VEC, int RT>
__global__ void __launch_bounds__(GEMV_MAX_SPLIT * 32, (VEC && NT <= 2) ? 2 : 1)
    gemv_kernel(ni_half16 *out,        // (N, OC) or NULL
                float *out_f32,        // (N, OC) or NULL
                const ni_half16 *inp,  // (N, IC)
                const ni_half16 *w,    // (OC, IC)
                const ni_half16 *bias, // (OC) or NULL
                int N, size_t IC, size_t OC, int S, int gelu) {
    NI_TL_SCOPE(NI_TL_GEMV);
    constexpr int MT = (NT + 1) / 2;                 // 16-row A tiles
    constexpr int U = NT > 2 ? GEMV_U_WIDE : GEMV_U; // 32-column blocks per round
    extern __shared__ float gemv_red[]; // (warps, RT * MT * 4, 32) partial sums when S > 1
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int s = warp % S;
    const int G = (int)(blockDim.x >> 5) / S;
    const size_t tile = (size_t)blockIdx.x * G + (size_t)(warp / S);
    const size_t o_base = tile * (size_t)(8 * RT);
    const bool live = o_base < OC; // warp-uniform
    /* the epilogue's biases before the wait (no kernel writes them, pdl.cuh), so that the
     * stores do not wait on a load after the reduction; not with RT = 2 (the logits, which have
     * no bias), whose 64-register bound has no room for them */
    constexpr bool PRE_BIAS = RT == 1;
    float bv[RT][2];
#pragma unroll
    for (int rt = 0; rt < RT; rt++)
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const size_t o = o_base + (size_t)(rt * 8 + 2 * t + j);
            bv[rt][j] = PRE_BIAS && bias && s == 0 && o < OC ? D::to_float(__ldg(bias + o)) : 0.0f;
        }
    /* the warp's weight rows and IC slice, before the wait too: this address and division work
     * then overlaps the previous kernel's tail (+2 to +3 % at batch 1 to 16, H200); column
     * indices in 32 bits (the launcher checks IC < 2^31) */
    const ni_half16 *wrow[RT];
    bool wok[RT];
#pragma unroll
    for (int rt = 0; rt < RT; rt++) {
        size_t o = o_base + (size_t)(rt * 8 + g);
        wok[rt] = live && o < OC;
        wrow[rt] = w + (wok[rt] ? o : 0) * IC;
    }
    const uint32_t ic = (uint32_t)IC, nkb = (ic + 31) / 32;
    const uint32_t kb0 = (uint32_t)((uint64_t)nkb * (uint32_t)s / (uint32_t)S);
    const uint32_t kb1 = (uint32_t)((uint64_t)nkb * (uint32_t)(s + 1) / (uint32_t)S);
    /* the first round of weights before the wait too (no kernel writes them, pdl.cuh): their
     * HBM latency then overlaps the kernels before instead of following them; not with RT = 2
     * (the logits), whose 64-register instances would spill */
    constexpr bool PRELOAD = RT == 1;
    /* rolling rounds (below) where the registers allow: the 8-feature instances of up to 8 rows
     * (64 registers without spills; with 16 rows or 16 features they spill) */
    constexpr bool ROLL = RT == 1 && NT == 1 && VEC;
    uint4 wv[U][RT];
    if (PRELOAD) gemv_load_round<VEC, true, RT, U>(wv, wrow, wok, kb0, kb1, ic, IC, t);
    ni_pdl_launch_dependents(); /* the next kernel's own early work may start too (pdl.cuh) */
    ni_pdl_wait(); /* inp comes from the previous kernel, which may also still read out */
    NI_TL_WAITED();

    float acc[RT][MT][4];
#pragma unroll
    for (int rt = 0; rt < RT; rt++)
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[rt][mt][e] = 0.0f;

    if (live) {
        const ni_half16 *xrow[NT];
        bool xok[NT];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            int n = g + 8 * nt;
            xok[nt] = n < N;
            xrow[nt] = inp + (size_t)(xok[nt] ? n : 0) * IC;
        }
        if (ROLL && kb1 - kb0 > (uint32_t)U) {
            /* rolling rounds: block u of the next round is requested as soon as block u of this
             * one is multiplied, so that the warp keeps U blocks in flight through its slice
             * instead of waiting for a whole round before asking for the next one */
            uint4 xv[U][NT];
            if (!PRELOAD) gemv_load_round<VEC, true, RT, U>(wv, wrow, wok, kb0, kb1, ic, IC, t);
            gemv_load_round<VEC, false, NT, U>(xv, xrow, xok, kb0, kb1, ic, IC, t);
            for (uint32_t kb = kb0; kb < kb1; kb += U) {
                const uint32_t next = kb + (uint32_t)U;
                const bool more = next < kb1;
#pragma unroll
                for (int u = 0; u < U; u++) {
                    gemv_block_math<D, NT, RT, MT>(acc, wv[u], xv[u]);
                    if (more) {
                        gemv_load_block<VEC, true, RT>(wv[u], wrow, wok, next + (uint32_t)u, kb1,
                                                       ic, IC, t);
                        gemv_load_block<VEC, false, NT>(xv[u], xrow, xok, next + (uint32_t)u, kb1,
                                                        ic, IC, t);
                    }
                }
            }
        } else {
            for (uint32_t kb = kb0; kb < kb1; kb += U) {
                uint4 xv[U][NT];
                /* all loads of the round first, then the math */
                if (!PRELOAD || kb != kb0)
                    gemv_load_round<VEC, true, RT, U>(wv, wrow, wok, kb, kb1, ic, IC, t);
                gemv_load_round<VEC, false, NT, U>(xv, xrow, xok, kb, kb1, ic, IC, t);
                gemv_round_math<D, NT, RT, U, MT>(acc, wv, xv);
            }
        }
    }

    if (S > 1) {
        /* fixed-order reduction of the S slices: slice 0 + slice 1 + ... */
#pragma unroll
        for (int rt = 0; rt < RT; rt++)
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    gemv_red[((size_t)warp * (RT * MT * 4) + (size_t)((rt * MT + mt) * 4 + e)) *
                                 32 +
                             lane] = acc[rt][mt][e];
        __syncthreads();
        if (s != 0 || !live) return;
        for (int s2 = 1; s2 < S; s2++) {
#pragma unroll
            for (int rt = 0; rt < RT; rt++)
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        acc[rt][mt][e] += gemv_red[((size_t)(warp + s2) * (RT * MT * 4) +
                                                    (size_t)((rt * MT + mt) * 4 + e)) *
                                                       32 +
                                                   lane];
        }
    }
    if (!live) return;

#pragma unroll
    for (int rt = 0; rt < RT; rt++) {
#pragma unroll
        for (int i4 = 0; i4 < MT * 4; i4++) {
            const int mt = i4 >> 2, e = i4 & 3;
            const int n = 16 * mt + g + 8 * (e >> 1);
            const size_t o = o_base + (size_t)(rt * 8 + 2 * t + (e & 1));
            if (n >= N || o >= OC) continue;
            float v = acc[rt][mt][e];
            if (bias) v += PRE_BIAS ? bv[rt][e & 1] : D::to_float(bias[o]);
            if (gelu) v = ni_gelu_tanh(v);
            const size_t i = (size_t)n * OC + o;
            if (out_f32)
                out_f32[i] = v;
            else
                out[i] = D::from_float(v);
        }
    }
}

template <typename D, int NT, int RT>
static cudaError_t gemv_launch_rt(int vec, dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                                  ni_half16 *out, float *out_f32, const ni_half16 *inp,
                                  const ni_half16 *w, const ni_half16 *bias, int N, size_t IC,
                                  size_t OC, int S, int gelu) {
    if (vec)
        return ni_launch_pdl(gemv_kernel<D, NT, true, RT>, grid, block, smem, s, out, out_f32, inp,
                             w, bias, N, IC, OC, S, gelu);
    return ni_launch_pdl(gemv_kernel<D, NT, false, RT>, grid, block, smem, s, out, out_f32, inp, w,
                         bias, N, IC, OC, S, gelu);
}

template <typename D, int NT>
static cudaError_t gemv_launch(int rt, int vec, dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                               ni_half16 *out, float *out_f32, const ni_half16 *inp,
                               const ni_half16 *w, const ni_half16 *bias, int N, size_t IC,
                               size_t OC, int S, int gelu) {
    if (rt == 1)
        return gemv_launch_rt<D, NT, 1>(vec, grid, block, smem, s, out, out_f32, inp, w, bias, N,
                                        IC, OC, S, gelu);
    return gemv_launch_rt<D, NT, 2>(vec, grid, block, smem, s, out, out_f32, inp, w, bias, N, IC,
                                    OC, S, gelu);
}

/* Tiles of 16 output features per warp (2), or 8 (1) below four 16-feature tiles per SM: the
 * decode-step matrices of GPT-2 up to gpt2-xl (48-400 tiles), not the logits (3,141): more
 * warps stream the small matrices sooner (measured: 132 and 264 and 528 as the threshold,
 * the last best for gpt2-xl). */
static int gemv_rt(size_t OC) {
    return (OC + 15) / 16 < GEMV_WIDE_TILES ? 1 : 2;
}

/* In the engine, up to 16 rows the GEMV beats cuBLASLt on every GPT-2 matrix; from 17 to 32 only
 * where a warp owns 16 features (RT = 2: OC > 8432, the vocabulary projection), where the four
 * input vectors a lane loads per 32 columns serve two weight rows, not one. Measured on the H200,
 * decode tokens/s at batch 17 / 24 / 32 against cuBLASLt for the logits: gpt2 +14 / +15 / +15 %,
 * gpt2-medium +10 %, gpt2-large +7 %, gpt2-xl +6 %. For the 8-feature matrices of the layers it
 * was 3 to 26 % slower than cuBLASLt except on gpt2 (+7 %). */
extern "C" size_t ni_cuda_gemv_rows(size_t OC) {
    return gemv_rt(OC) == 2 ? NI_CUDA_GEMV_MAX_ROWS : 16;
}

extern "C" int ni_cuda_gemv(ni_half16 *out, float *out_f32, const ni_half16 *inp,
                            const ni_half16 *w, const ni_half16 *bias, size_t N, size_t IC,
                            size_t OC, int gelu, ni_cuda_dtype dt, ni_stream s) {
    if (dt != NI_CUDA_BF16 && dt != NI_CUDA_F16) return (int)cudaErrorInvalidValue;
    if (N > NI_CUDA_GEMV_MAX_ROWS || (!out && !out_f32)) return (int)cudaErrorInvalidValue;
    if (N == 0 || OC == 0) return (int)cudaGetLastError();
    if (IC > 0 && (!inp || !w)) return (int)cudaErrorInvalidValue;
    if (IC > (size_t)0x7fffffe0) return (int)cudaErrorInvalidValue; /* 32-bit column math */

    /* Split IC over S warps (a power of two): the most warps that still run in one wave
     * (GEMV_MAX_WARPS; for N > 16 the kernel holds half as many, and the grid may take two),
     * at least two 32-column blocks per warp. A function of (IC, OC) only: S fixes the order of
     * every sum, so it must not depend on N. */
    const int nt = N > 16 ? 4 : N > 8 ? 2 : 1; /* 8-row groups of the batch */
    const int rt = gemv_rt(OC);
    const size_t tiles = (OC + 8 * (size_t)rt - 1) / (8 * (size_t)rt), nkb = (IC + 31) / 32;
    int S = 1;
    while (S < GEMV_MAX_SPLIT && tiles * (size_t)(2 * S) <= GEMV_MAX_WARPS &&
           nkb >= 2 * (size_t)(2 * S))
        S *= 2;
    const int warps = S < GEMV_MIN_WARPS ? GEMV_MIN_WARPS : S;
    const size_t G = (size_t)(warps / S);
    const size_t blocks = (tiles + G - 1) / G;
    const size_t mt = (size_t)(nt + 1) / 2;
    const size_t smem = S > 1 ? (size_t)warps * (size_t)rt * mt * 4 * 32 * sizeof(float) : 0;
    const int vec = IC % 8 == 0 && ((uintptr_t)w & 15u) == 0 && ((uintptr_t)inp & 15u) == 0;

    dim3 grid((unsigned)blocks), block((unsigned)warps * 32);
    cudaStream_t st = (cudaStream_t)s;
    ni_half16 *o = out;
    cudaError_t e;
    if (dt == NI_CUDA_F16 && nt == 4)
        e = gemv_launch<ni_dt_f16, 4>(rt, vec, grid, block, smem, st, o, out_f32, inp, w, bias,
                                      (int)N, IC, OC, S, gelu);
    else if (dt == NI_CUDA_F16 && nt == 2)
        e = gemv_launch<ni_dt_f16, 2>(rt, vec, grid, block, smem, st, o, out_f32, inp, w, bias,
                                      (int)N, IC, OC, S, gelu);
    else if (dt == NI_CUDA_F16)
        e = gemv_launch<ni_dt_f16, 1>(rt, vec, grid, block, smem, st, o, out_f32, inp, w, bias,
                                      (int)N, IC, OC, S, gelu);
    else if (nt == 4)
        e = gemv_launch<ni_dt_bf16, 4>(rt, vec, grid, block, smem, st, o, out_f32, inp, w, bias,
                                       (int)N, IC, OC, S, gelu);
    else if (nt == 2)
        e = gemv_launch<ni_dt_bf16, 2>(rt, vec, grid, block, smem, st, o, out_f32, inp, w, bias,
                                       (int)N, IC, OC, S, gelu);
    else
        e = gemv_launch<ni_dt_bf16, 1>(rt, vec, grid, block, smem, st, o, out_f32, inp, w, bias,
                                       (int)N, IC, OC, S, gelu);
    return ni_launch_status(e);
}

NI_TL_SETTER(gemv)
