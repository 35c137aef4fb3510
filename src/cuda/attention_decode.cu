/* Decode attention on the GPU: one query per row, each attending to cache positions 0 .. pos[r]
 * of its slot. The work is reading the keys and values once, so the kernel is shaped for
 * bandwidth: the positions are split into chunks of AD_SPLIT, one block per (chunk, head, row),
 * so that even a single long sequence spreads over many SMs; a block has 256 threads for models
 * of few heads (ad_threads), else 128. The grid covers max_pos, not the
 * data: blocks past pos[r] return at once, which keeps the launch shape fixed for CUDA graphs.
 * Inside a block, groups of L lanes read one cached row with W-element loads (16 bytes when
 * HS % 8 == 0, so a warp reads consecutive rows as one coalesced run), reduce the q . k dot
 * product over the group with shuffles and leave the scores in shared memory; after the chunk's
 * max and sum, the same layout reads the value rows and accumulates p * v in registers, reduced
 * over the groups and the warps at the end; loads run a few steps ahead of their use, and the
 * first value rows are requested together with the first key rows. A row whose positions fit in
 * one chunk writes its
 * output directly; longer rows write (max, sum, unnormalized acc[HS]) per chunk to `partial`
 * and a small merge kernel combines them with the usual rescaling. Scores and softmax are f32
 * (the probabilities are not rounded to 16 bits), in the log2 domain with the 1/sqrt(HS) scale
 * folded in. Cache rows past pos[r] are never read.
 * With append set, the kernel also does the KV append of the step (kv_append.cu) and saves
 * its launch: the block whose chunk holds pos[r] reads that position's key and value from qkv
 * instead of the cache (no other block reads it), and the lanes that loaded them store them to
 * the cache from their registers; the result is the same to the bit. In the decode step (with
 * append) the chunk's cached rows are read before the programmatic-launch wait (no kernel of the
 * step writes them, pdl.cuh): where the caller says the qkv product lets the kernel launch at its
 * start (preload) and a chunk fits in registers, all of them into registers
 * (attention_decode_whole_kernel), else, with 16-byte loads, they are requested into L2. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "cuda/dtype.cuh"
#include "cuda/kernels.h"
#include "cuda/pdl.cuh"
#include "cuda/timeline.cuh"

#define AD_SPLIT NI_CUDA_ATTN_DECODE_CHUNK /* positions per chunk */
#define AD_MAX_HS 128
#ifndef AD_WHOLE_STEPS
#define AD_WHOLE_STEPS 8 /* chunks of at most this many steps load whole (the whole kernel) */
#endif

/* W 16-bit elements as one load */
template <int W> struct ad_vec;
template <> struct ad_vec<8> {
    typedef uint4 t;
    static __device__ __forceinline__ uint4 zero(void) { return make_uint4(0u, 0u, 0u, 0u); }
};
template <> struct ad_vec<2> {
    typedef uint32_t t;
    static __device__ __forceinline__ uint32_t zero(void) { return 0u; }
};
template <> struct ad_vec<1> {
    typedef uint16_t t;
    static __device__ __forceinline__ uint16_t zero(void) { return 0; }
};

/* A load's elements in f32, for 16-bit type D (dtype.cuh) */
template <typename D> static __device__ __forceinline__ void ad_cvt(uint4 u, float *f) {
    ni_unpack8<D>(u, f);
}
template <typename D> static __device__ __forceinline__ void ad_cvt(uint32_t u, float *f) {
    float2 a = D::unpack2(u);
    f[0] = a.x, f[1] = a.y;
}
template <typename D> static __device__ __forceinline__ void ad_cvt(uint16_t u, float *f) {
    f[0] = D::to_float(u);
}

/* Rows (s0 + u) * KPS + grp (u < U) of a chunk, this lane's loads of each; rows at or past
 * n_valid and elements at or past HS are never read (zeros instead); row cur_t (the step's own
 * token when the kernel appends it, else -1) is read from cur instead of the cache. */
template <int NT, int W, int L, int CPL, int U, bool CG = false>
static __device__ __forceinline__ void
ad_load_rows(typename ad_vec<W>::t (&buf)[U][CPL], const uint16_t *base, const uint16_t *cur,
             int cur_t, int s0, int grp, int gl, int n_valid, int HS) {
    constexpr int KPS = NT / L;
#pragma unroll
    for (int u = 0; u < U; u++) {
        int t = (s0 + u) * KPS + grp;
        const uint16_t *row = t == cur_t ? cur : base + (size_t)t * HS;
#pragma unroll
        for (int i = 0; i < CPL; i++) {
            int d = (gl + i * L) * W;
            const typename ad_vec<W>::t *src =
                reinterpret_cast<const typename ad_vec<W>::t *>(row + d);
            buf[u][i] = (t < n_valid && d < HS) ? (CG ? __ldcg(src) : *src) : ad_vec<W>::zero();
        }
    }
}

/* Where chunk row 0 of head h of a slot's cache starts (elements): rows t0 .. of (S, NH, T, HS). */
static __device__ __forceinline__ size_t ad_chunk_base(int slot, int NH, int h, int T, int t0,
                                                       int HS) {
    return (((size_t)slot * NH + h) * (size_t)T + (size_t)t0) * HS;
}

template <int W, int CPL, int U>
static __device__ __forceinline__ void ad_copy_rows(typename ad_vec<W>::t (&dst)[U][CPL],
                                                    const typename ad_vec<W>::t (&src)[U][CPL]) {
#pragma unroll
    for (int u = 0; u < U; u++)
#pragma unroll
        for (int i = 0; i < CPL; i++) dst[u][i] = src[u][i];
}

/* This lane's slice of q: elements (gl + i * L) * W .. + W of the head's HS, in f32. */
template <typename D, int W, int L, int CPL>
static __device__ __forceinline__ void ad_load_q(float (&qv)[CPL][W], const uint16_t *q, int gl,
                                                 int HS) {
#pragma unroll
    for (int i = 0; i < CPL; i++) {
        int d = (gl + i * L) * W;
        typename ad_vec<W>::t u =
            d < HS ? *reinterpret_cast<const typename ad_vec<W>::t *>(q + d) : ad_vec<W>::zero();
        ad_cvt<D>(u, qv[i]);
    }
}

/* Phase 1 for chunk row t, whose key this lane holds in k: its q . k score (the lanes' parts
 * added over the row's L lanes) to scores[t], and the key to the cache at Kc when t is the
 * appended row cur_t (from the registers that hold it). */
template <typename D, int W, int L, int CPL>
static __device__ __forceinline__ void
ad_score_row(float *scores, uint16_t *Kc, const float (&qv)[CPL][W],
             const typename ad_vec<W>::t (&k)[CPL], int t, int cur_t, int gl, int n_valid, int HS,
             float scale_log2) {
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < CPL; i++) {
        float kf[W];
        ad_cvt<D>(k[i], kf);
#pragma unroll
        for (int e = 0; e < W; e++) dot += qv[i][e] * kf[e];
        const int d = (gl + i * L) * W;
        if (t == cur_t && d < HS)
            *reinterpret_cast<typename ad_vec<W>::t *>(Kc + (size_t)t * HS + d) = k[i];
    }
#pragma unroll
    for (int o = L / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    if (gl == 0 && t < n_valid) scores[t] = dot * scale_log2;
}

/* Phase 2 for chunk row t, whose value this lane holds in v: acc += p_t v (p_t from the row's
 * score and the chunk's max), and the value to the cache at Vc when t is the appended row. */
template <typename D, int W, int L, int CPL>
static __device__ __forceinline__ void
ad_accumulate_row(float (&acc)[CPL][W], uint16_t *Vc, const float *scores, float mx,
                  const typename ad_vec<W>::t (&v)[CPL], int t, int cur_t, int gl, int n_valid,
                  int HS) {
    float pw = t < n_valid ? exp2f(scores[t] - mx) : 0.0f;
#pragma unroll
    for (int i = 0; i < CPL; i++) {
        float vf[W];
        ad_cvt<D>(v[i], vf);
#pragma unroll
        for (int e = 0; e < W; e++) acc[i][e] += pw * vf[e];
        const int d = (gl + i * L) * W;
        if (t == cur_t && d < HS)
            *reinterpret_cast<typename ad_vec<W>::t *>(Vc + (size_t)t * HS + d) = v[i];
    }
}

/* The chunk's max and sum of 2^(score - max) over scores[0, n_valid), computed by every warp
 * alike. */
static __device__ __forceinline__ void ad_softmax_stats(float &mx, float &sum, const float *scores,
                                                        int n_valid) {
    const int lane = threadIdx.x & 31;
    mx = -INFINITY;
    for (int t = lane; t < n_valid; t += 32) mx = fmaxf(mx, scores[t]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    sum = 0.0f;
    for (int t = lane; t < n_valid; t += 32) sum += exp2f(scores[t] - mx);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
}

/* The end of a chunk's block: this thread's p * v sums acc reduced over the groups of a warp
 * (lanes gl, gl + L, ...), then over the warps in warp order through s_red; a row whose positions
 * fit one chunk writes its output, a longer one its chunk's (max, sum, acc[HS]) to partial. */
template <typename D, int W, int L, int CPL, int NT>
static __device__ __forceinline__ void
ad_finish(uint16_t *out, float *partial, float (&acc)[CPL][W], float (*s_red)[AD_MAX_HS], float mx,
          float sum, int p, int r, int h, int c, int NH, int HS, int NCH) {
    constexpr int NW = NT / 32;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, gl = tid % L;
    const size_t C = (size_t)NH * HS;
#pragma unroll
    for (int o = L; o < 32; o <<= 1)
#pragma unroll
        for (int i = 0; i < CPL; i++)
#pragma unroll
            for (int e = 0; e < W; e++) acc[i][e] += __shfl_xor_sync(0xffffffffu, acc[i][e], o);
    if (lane < L) {
#pragma unroll
        for (int i = 0; i < CPL; i++)
#pragma unroll
            for (int e = 0; e < W; e++) {
                int d = (gl + i * L) * W + e;
                if (d < HS) s_red[warp][d] = acc[i][e];
            }
    }
    __syncthreads();

    if (p < AD_SPLIT) { /* the only chunk of this row: finish here */
        uint16_t *o = out + (size_t)r * C + (size_t)h * HS;
        float inv = 1.0f / sum;
        for (int d = tid; d < HS; d += NT) {
            float a = 0.0f;
#pragma unroll
            for (int w = 0; w < NW; w++) a += s_red[w][d];
            o[d] = D::from_float(a * inv);
        }
    } else {
        float *pp = partial + (((size_t)r * NH + h) * NCH + c) * (size_t)(HS + 2);
        for (int d = tid; d < HS; d += NT) {
            float a = 0.0f;
#pragma unroll
            for (int w = 0; w < NW; w++) a += s_red[w][d];
            pp[2 + d] = a;
        }
        if (tid == 0) {
            pp[0] = mx;
            pp[1] = sum;
        }
    }
}

/* One block per (chunk c, head h, row r). D: the 16-bit type (dtype.cuh); W: elements per load;
 * L: lanes per cached row (a power of two up to 32); CPL: loads per lane and row
 * (L * CPL * W >= HS); NT: threads (NT / L rows at a time, at most a chunk). */
template <typename D, int W, int L, int CPL, int NT>
__global__ void __launch_bounds__(NT)
    attention_decode_chunk_kernel(uint16_t *out,       // (B, C) 16-bit
                                  float *partial,      // (B, NH, NCH, HS + 2)
                                  uint16_t *k_cache,   // (S, NH, T, HS) 16-bit (written: append)
                                  uint16_t *v_cache,   // (S, NH, T, HS) 16-bit (written: append)
                                  const uint16_t *qkv, // (B, 3C) 16-bit
                                  const int32_t *slot, // (B)
                                  const int32_t *pos,  // (B)
                                  int NH, int HS, int T, int NCH, float scale_log2, int append) {
    NI_TL_SCOPE(NI_TL_ATTN_CHUNK);
    typedef ad_vec<W> V;
    typedef typename V::t vec_t;
    constexpr int KPS = NT / L; /* rows per step of the block */
    constexpr int NW = NT / 32;
    static_assert(KPS <= AD_SPLIT, "a step of rows fits a chunk");
    constexpr int STEPS = AD_SPLIT / KPS;    /* steps per chunk */
    constexpr int U = STEPS < 4 ? STEPS : 4; /* steps whose loads are in flight together */
    /* unroll the step loops fully up to 4 batches (L <= 16); beyond, unrolling only inflates
     * the registers (one warp per row, L == 32) */
    constexpr int UNROLL = STEPS / U <= 4 ? STEPS / U : 1;
    __shared__ float s_score[AD_SPLIT];
    __shared__ float s_red[NW][AD_MAX_HS];

    ni_pdl_launch_dependents(); /* the next product loads weights before its wait (pdl.cuh) */
    if (W == 8 && append && threadIdx.x < 2) { /* W == 8: 16-byte aligned rows (bulk copies) */
        /* the decode step: pos, slot and the cached rows before pos were written before the
         * step began (pdl.cuh), so the chunk's rows are requested into L2 before the wait and
         * their latency hides behind the qkv product's tail */
        const int p_pre = pos[blockIdx.z], s_pre = slot[blockIdx.z], t0_pre = blockIdx.x * AD_SPLIT;
        if (p_pre >= t0_pre && p_pre < T && s_pre >= 0) {
            const unsigned bytes = (unsigned)(min(AD_SPLIT, p_pre - t0_pre + 1) * HS * 2) & ~15u;
            const uint16_t *src = (threadIdx.x ? v_cache : k_cache) +
                                  ad_chunk_base(s_pre, NH, (int)blockIdx.y, T, t0_pre, HS);
            if (bytes)
                asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(src), "r"(bytes)
                             : "memory");
        }
    }
    ni_pdl_wait(); /* pos, qkv and the caches come from earlier kernels */
    NI_TL_WAITED();
    const int c = blockIdx.x, h = blockIdx.y, r = blockIdx.z;
    const int p = pos[r];
    const int t0 = c * AD_SPLIT;
    if (t0 > p) return;
    const int n_valid = min(AD_SPLIT, p - t0 + 1);
    const size_t C = (size_t)NH * HS;
    const size_t head = ad_chunk_base(slot[r], NH, h, T, t0, HS);
    uint16_t *Kc = k_cache + head, *Vc = v_cache + head;
    const int tid = threadIdx.x;
    /* append: the row's own key and value heads, at chunk row cur_t when this chunk holds pos */
    const uint16_t *kcur = qkv + (size_t)r * 3 * C + C + (size_t)h * HS, *vcur = kcur + C;
    const int cur_t = append && p - t0 < AD_SPLIT ? p - t0 : -1;
    const int gl = tid % L, grp = tid / L;

    float qv[CPL][W];
    ad_load_q<D, W, L, CPL>(qv, qkv + (size_t)r * 3 * C + (size_t)h * HS, gl, HS);

    /* Software pipeline: the loads of U steps are in flight while the previous U steps are
     * used, and the first value batch is issued with the first key batch so that its latency
     * hides behind phase 1 and the barrier. */
    vec_t kb[U][CPL], vb[U][CPL];
    ad_load_rows<NT, W, L, CPL, U>(kb, Kc, kcur, cur_t, 0, grp, gl, n_valid, HS);
    ad_load_rows<NT, W, L, CPL, U>(vb, Vc, vcur, cur_t, 0, grp, gl, n_valid, HS);

    /* phase 1: scores of the chunk's rows */
#pragma unroll(UNROLL)
    for (int s0 = 0; s0 < STEPS; s0 += U) {
        vec_t kn[U][CPL];
        if (s0 + U < STEPS)
            ad_load_rows<NT, W, L, CPL, U>(kn, Kc, kcur, cur_t, s0 + U, grp, gl, n_valid, HS);
#pragma unroll
        for (int u = 0; u < U; u++)
            ad_score_row<D, W, L, CPL>(s_score, Kc, qv, kb[u], (s0 + u) * KPS + grp, cur_t, gl,
                                       n_valid, HS, scale_log2);
        if (s0 + U < STEPS) ad_copy_rows<W, CPL, U>(kb, kn);
    }
    __syncthreads();

    float mx, sum;
    ad_softmax_stats(mx, sum, s_score, n_valid);

    /* phase 2: acc = sum_t p_t v_t over this thread's rows and elements */
    float acc[CPL][W];
#pragma unroll
    for (int i = 0; i < CPL; i++)
#pragma unroll
        for (int e = 0; e < W; e++) acc[i][e] = 0.0f;
#pragma unroll(UNROLL)
    for (int s0 = 0; s0 < STEPS; s0 += U) {
        vec_t vn[U][CPL];
        if (s0 + U < STEPS)
            ad_load_rows<NT, W, L, CPL, U>(vn, Vc, vcur, cur_t, s0 + U, grp, gl, n_valid, HS);
#pragma unroll
        for (int u = 0; u < U; u++)
            ad_accumulate_row<D, W, L, CPL>(acc, Vc, s_score, mx, vb[u], (s0 + u) * KPS + grp,
                                            cur_t, gl, n_valid, HS);
        if (s0 + U < STEPS) ad_copy_rows<W, CPL, U>(vb, vn);
    }
    ad_finish<D, W, L, CPL, NT>(out, partial, acc, s_red, mx, sum, p, r, h, c, NH, HS, NCH);
}

/* The chunk kernel of a decode step (append) whose predecessor lets it launch at its start
 * (preload), where a whole chunk fits in registers: 16-byte loads (W = 8, CPL = 1) and at most
 * AD_WHOLE_STEPS steps of NT / L rows (gpt2 to gpt2-xl). Every cached row's key and value is
 * loaded at once, before the programmatic-launch wait: pos, slot and the cached rows before pos
 * were written before the step began (pdl.cuh), so only q and the step's own key and value (from
 * qkv) are read after it, and the rows' latency hides behind the qkv product. The sums are those
 * of attention_decode_chunk_kernel, in the same order (the same bits, tested). Measured against
 * that kernel (H200, cuda_graphs, same call): batch 1 / 2 / 4 / 16 / 32 gpt2-xl +2.8 / +2.9 /
 * +3.5 / +1.8 / +0.5 %, gpt2 +4.8 / +4.8 / +4.6 / +4.7 / +2.2 %, gpt2-medium (16 heads, 256
 * threads) +5.3 / +5.2 / +1.9 / +1.3 % (batch 2 / 4 / 16 / 32); at 48 rows and more, where
 * cuBLASLt's qkv product does not let it launch early, the same loads cost 1-2 %. */
template <typename D, int L, int NT>
__global__ void __launch_bounds__(NT)
    attention_decode_whole_kernel(uint16_t *out,       // (B, C) 16-bit
                                  float *partial,      // (B, NH, NCH, HS + 2)
                                  uint16_t *k_cache,   // (S, NH, T, HS) 16-bit (written: append)
                                  uint16_t *v_cache,   // (S, NH, T, HS) 16-bit (written: append)
                                  const uint16_t *qkv, // (B, 3C) 16-bit
                                  const int32_t *slot, // (B)
                                  const int32_t *pos,  // (B)
                                  int NH, int HS, int T, int NCH, float scale_log2, int append) {
    NI_TL_SCOPE(NI_TL_ATTN_WHOLE);
    constexpr int W = 8, CPL = 1;
    typedef ad_vec<W>::t vec_t;
    constexpr int KPS = NT / L, NW = NT / 32, STEPS = AD_SPLIT / KPS;
    static_assert(KPS <= AD_SPLIT && STEPS <= AD_WHOLE_STEPS, "a chunk fits the registers");
    __shared__ float s_score[AD_SPLIT];
    __shared__ float s_red[NW][AD_MAX_HS];

    ni_pdl_launch_dependents(); /* the next product loads weights before its wait (pdl.cuh) */
    const int c = blockIdx.x, h = blockIdx.y, r = blockIdx.z;
    const int t0 = c * AD_SPLIT;
    const int tid = threadIdx.x, gl = tid % L, grp = tid / L;
    (void)append; /* launched with append only */
    /* the cached rows before pos, before the wait, through L2 only (each is read once, and they
     * were written by earlier grids on other SMs) */
    const int p = pos[r], sl = slot[r];
    const int n_pre = p < t0 || sl < 0 ? 0 : min(AD_SPLIT, p - t0);
    const size_t head = sl < 0 ? 0 : ad_chunk_base(sl, NH, h, T, t0, HS);
    vec_t kb[STEPS][CPL], vb[STEPS][CPL];
    ad_load_rows<NT, W, L, CPL, STEPS, true>(kb, k_cache + head, NULL, -1, 0, grp, gl, n_pre, HS);
    ad_load_rows<NT, W, L, CPL, STEPS, true>(vb, v_cache + head, NULL, -1, 0, grp, gl, n_pre, HS);
    ni_pdl_wait(); /* qkv comes from the previous kernel */
    NI_TL_WAITED();
    /* a row without a slot is outside the contract (kernels.h): nothing is written for it */
    if (t0 > p || sl < 0) return;
    const int n_valid = min(AD_SPLIT, p - t0 + 1);
    const size_t C = (size_t)NH * HS;
    uint16_t *Kc = k_cache + head, *Vc = v_cache + head;
    /* the row's own key and value heads, at chunk row cur_t when this chunk holds pos */
    const uint16_t *kcur = qkv + (size_t)r * 3 * C + C + (size_t)h * HS, *vcur = kcur + C;
    const int cur_t = p - t0 < AD_SPLIT ? p - t0 : -1;
    const int d0 = gl * W;
#pragma unroll
    for (int st = 0; st < STEPS; st++)
        if (st * KPS + grp == cur_t && d0 < HS) { /* the own row, from qkv */
            kb[st][0] = *reinterpret_cast<const vec_t *>(kcur + d0);
            vb[st][0] = *reinterpret_cast<const vec_t *>(vcur + d0);
        }
    float qv[CPL][W];
    ad_load_q<D, W, L, CPL>(qv, qkv + (size_t)r * 3 * C + (size_t)h * HS, gl, HS);

    /* phase 1: scores of the chunk's rows (and the appended key to the cache) */
#pragma unroll
    for (int st = 0; st < STEPS; st++)
        ad_score_row<D, W, L, CPL>(s_score, Kc, qv, kb[st], st * KPS + grp, cur_t, gl, n_valid, HS,
                                   scale_log2);
    __syncthreads();
    float mx, sum;
    ad_softmax_stats(mx, sum, s_score, n_valid);

    /* phase 2: acc = sum_t p_t v_t (and the appended value to the cache) */
    float acc[CPL][W];
#pragma unroll
    for (int e = 0; e < W; e++) acc[0][e] = 0.0f;
#pragma unroll
    for (int st = 0; st < STEPS; st++)
        ad_accumulate_row<D, W, L, CPL>(acc, Vc, s_score, mx, vb[st], st * KPS + grp, cur_t, gl,
                                        n_valid, HS);
    ad_finish<D, W, L, CPL, NT>(out, partial, acc, s_red, mx, sum, p, r, h, c, NH, HS, NCH);
}

/* One block per (head, row) whose positions span several chunks: out = sum_c 2^(m_c - M) acc_c
 * / sum_c 2^(m_c - M) l_c. */
template <typename D>
__global__ void attention_decode_merge_kernel(uint16_t *out,        // (B, C) 16-bit
                                              const float *partial, // (B, NH, NCH, HS + 2)
                                              const int32_t *pos,   // (B)
                                              int NH, int HS, int NCH) {
    NI_TL_SCOPE(NI_TL_ATTN_MERGE);
    ni_pdl_wait(); /* partial comes from the chunk kernel */
    NI_TL_WAITED();
    ni_pdl_launch_dependents(); /* a short pass */
    const int h = blockIdx.x, r = blockIdx.y;
    const int p = pos[r];
    if (p < AD_SPLIT) return; /* written by its single chunk */
    const int nc = p / AD_SPLIT + 1;
    const size_t stride = (size_t)HS + 2;
    const float *base = partial + ((size_t)r * NH + h) * NCH * stride;
    float M = -INFINITY;
    for (int c = 0; c < nc; c++) M = fmaxf(M, base[c * stride]);
    float l = 0.0f;
    for (int c = 0; c < nc; c++) l += base[c * stride + 1] * exp2f(base[c * stride] - M);
    const float inv = 1.0f / l;
    uint16_t *o = out + (size_t)r * NH * HS + (size_t)h * HS;
    for (int d = threadIdx.x; d < HS; d += blockDim.x) {
        float a = 0.0f;
        for (int c = 0; c < nc; c++) a += base[c * stride + 2 + d] * exp2f(base[c * stride] - M);
        o[d] = D::from_float(a * inv);
    }
}

static size_t ad_n_chunks(size_t T) {
    return (T + AD_SPLIT - 1) / AD_SPLIT;
}

extern "C" size_t ni_cuda_attention_decode_partial_floats(size_t B, size_t NH, size_t HS,
                                                          size_t T) {
    return B * NH * ad_n_chunks(T) * (HS + 2);
}

template <typename D, int W, int L, int CPL, int NT = 128>
static cudaError_t ad_launch(dim3 grid, uint16_t *out, float *partial, uint16_t *k_cache,
                             uint16_t *v_cache, const uint16_t *qkv, const int32_t *slot,
                             const int32_t *pos, int NH, int HS, int T, int NCH, float scale_log2,
                             int append, int preload, cudaStream_t s) {
    /* L <= 8: heads of up to 64 (every GPT-2); the 16-lane instances spill in f16 */
    if constexpr (W == 8 && CPL == 1 && L <= 8 && NT / L <= AD_SPLIT &&
                  AD_SPLIT / (NT / L) <= AD_WHOLE_STEPS)
        if (append && preload)
            return ni_launch_pdl(attention_decode_whole_kernel<D, L, NT>, grid, dim3(NT), 0, s, out,
                                 partial, k_cache, v_cache, qkv, slot, pos, NH, HS, T, NCH,
                                 scale_log2, append);
    return ni_launch_pdl(attention_decode_chunk_kernel<D, W, L, CPL, NT>, grid, dim3(NT), 0, s, out,
                         partial, k_cache, v_cache, qkv, slot, pos, NH, HS, T, NCH, scale_log2,
                         append);
}

typedef cudaError_t (*ad_launch_fn)(dim3, uint16_t *, float *, uint16_t *, uint16_t *,
                                    const uint16_t *, const int32_t *, const int32_t *, int, int,
                                    int, int, float, int, int, cudaStream_t);

/* Lanes per cached row for nck loads per row: the smallest power of two >= nck, at most 32. */
static int ad_lanes(size_t nck) {
    int L = 1;
    while ((size_t)L < nck && L < 32) L *= 2;
    return L;
}

/* Threads per block: 256 for models of at most 16 heads whose rows take 16-byte loads with at
 * least 2 lanes (a step of NT / L rows must fit a chunk), else 128. More warps per chunk shorten
 * each warp's chain of loads, shuffles and barriers, which pays where the grid is small at every
 * batch (few heads) and costs where it is large. The width sets the order of a row's sums, so it
 * depends on the model alone, never on the batch or the grid: a row's output has the same bits
 * alone as in any batch, in every engine (test_attention_decode). Measured (cuda_graphs, H200,
 * tokens/s with 128 / 256 threads): gpt2 (12 heads) batch 1 3,645 / 3,771, 8 25,636 / 26,473, 64
 * 106,022 / 108,112, 256 255,976 / 252,401; gpt2-xl (25 heads) batch 8 4,307 / 4,273, 64 21,312 /
 * 21,227, 256 47,162 / 45,481. A width chosen by grid size (512 up to 264 blocks) gained 0.4 %
 * more at gpt2 batch 1 but made a row's bits depend on its batch. */
static int ad_threads(int W, int L, size_t NH) {
    return W == 8 && L >= 2 && NH <= 16 ? 256 : 128;
}

/* The W == 8 instance with L >= 2 lanes a row and NT threads. */
template <typename D, int NT> static ad_launch_fn ad_pick_wide(int L) {
    switch (L) {
    case 2:
        return ad_launch<D, 8, 2, 1, NT>;
    case 4:
        return ad_launch<D, 8, 4, 1, NT>;
    case 8:
        return ad_launch<D, 8, 8, 1, NT>;
    case 16:
        return ad_launch<D, 8, 16, 1, NT>;
    default:
        return ad_launch<D, 8, 32, 1, NT>;
    }
}

/* The instance for type D, load width W, nck loads per row (nck <= 64, or <= 128 for W == 1)
 * and NT threads (ad_threads). */
template <typename D> static ad_launch_fn ad_pick(int W, size_t nck, int NT) {
    const int L = ad_lanes(nck);
    if (NT == 256) return ad_pick_wide<D, 256>(L);
    size_t cpl = (nck + (size_t)L - 1) / (size_t)L;
#define AD_BY_L(w)                                                                                 \
    switch (L) {                                                                                   \
    case 1:                                                                                        \
        return ad_launch<D, w, 1, 1>;                                                              \
    case 2:                                                                                        \
        return ad_launch<D, w, 2, 1>;                                                              \
    case 4:                                                                                        \
        return ad_launch<D, w, 4, 1>;                                                              \
    case 8:                                                                                        \
        return ad_launch<D, w, 8, 1>;                                                              \
    case 16:                                                                                       \
        return ad_launch<D, w, 16, 1>;                                                             \
    default:                                                                                       \
        break;                                                                                     \
    }
    if (W == 8) {
        AD_BY_L(8)
        return ad_launch<D, 8, 32, 1>;
    }
    if (W == 2) {
        AD_BY_L(2)
        return cpl <= 1 ? ad_launch<D, 2, 32, 1> : ad_launch<D, 2, 32, 2>;
    }
    AD_BY_L(1)
    return cpl <= 1   ? ad_launch<D, 1, 32, 1>
           : cpl <= 2 ? ad_launch<D, 1, 32, 2>
                      : ad_launch<D, 1, 32, 4>;
#undef AD_BY_L
}

/* Contract beyond kernels.h: 0 <= pos[r] <= max_pos < T (a row with pos[r] > max_pos loses its
 * last chunks, one with pos[r] < 0 is not written); HS <= 128, else cudaErrorInvalidValue and
 * nothing runs. */
static int ad_run(ni_half16 *out, float *partial, ni_half16 *k_cache, ni_half16 *v_cache,
                  const ni_half16 *qkv, const int32_t *slot, const int32_t *pos, size_t B,
                  size_t max_pos, size_t NH, size_t HS, size_t T, int append, int preload,
                  ni_cuda_dtype dt, ni_stream s) {
    if (dt != NI_CUDA_BF16 && dt != NI_CUDA_F16) return (int)cudaErrorInvalidValue;
    if (B == 0 || NH == 0 || T == 0) return (int)cudaGetLastError();
    if (HS == 0 || HS > AD_MAX_HS || B > 65535 || NH > 65535) return (int)cudaErrorInvalidValue;
    uintptr_t align = (uintptr_t)qkv | (uintptr_t)k_cache | (uintptr_t)v_cache;
    int W = (HS % 8 == 0 && align % 16 == 0) ? 8 : (HS % 2 == 0 && align % 4 == 0) ? 2 : 1;
    size_t nch = ad_n_chunks(T);
    size_t grid_chunks = max_pos / AD_SPLIT + 1; /* positions 0 .. max_pos */
    if (grid_chunks > nch) grid_chunks = nch;
    float scale_log2 = 1.4426950408889634f / sqrtf((float)HS);
    cudaStream_t st = (cudaStream_t)s;
    size_t nck = (HS + (size_t)W - 1) / (size_t)W;
    const int NT = ad_threads(W, ad_lanes(nck), NH);
    ad_launch_fn fn =
        dt == NI_CUDA_F16 ? ad_pick<ni_dt_f16>(W, nck, NT) : ad_pick<ni_dt_bf16>(W, nck, NT);
    cudaError_t e =
        fn(dim3((unsigned int)grid_chunks, (unsigned int)NH, (unsigned int)B), (uint16_t *)out,
           partial, (uint16_t *)k_cache, (uint16_t *)v_cache, (const uint16_t *)qkv, slot, pos,
           (int)NH, (int)HS, (int)T, (int)nch, scale_log2, append, preload, st);
    if (e == cudaSuccess && grid_chunks > 1) {
        unsigned int threads = (unsigned int)((HS + 31) / 32 * 32);
        dim3 grid((unsigned int)NH, (unsigned int)B);
        e = dt == NI_CUDA_F16
                ? ni_launch_pdl(attention_decode_merge_kernel<ni_dt_f16>, grid, dim3(threads), 0,
                                st, (uint16_t *)out, (const float *)partial, pos, (int)NH, (int)HS,
                                (int)nch)
                : ni_launch_pdl(attention_decode_merge_kernel<ni_dt_bf16>, grid, dim3(threads), 0,
                                st, (uint16_t *)out, (const float *)partial, pos, (int)NH, (int)HS,
                                (int)nch);
    }
    return ni_launch_status(e);
}

extern "C" int ni_cuda_attention_decode(ni_half16 *out, float *partial, const ni_half16 *qkv,
                                        const ni_half16 *k_cache, const ni_half16 *v_cache,
                                        const int32_t *slot, const int32_t *pos, size_t B,
                                        size_t max_pos, size_t NH, size_t HS, size_t T,
                                        ni_cuda_dtype dt, ni_stream s) {
    /* append = 0: the caches are only read */
    return ad_run(out, partial, (ni_half16 *)k_cache, (ni_half16 *)v_cache, qkv, slot, pos, B,
                  max_pos, NH, HS, T, 0, 0, dt, s);
}

extern "C" int ni_cuda_attention_decode_append(ni_half16 *out, float *partial, ni_half16 *k_cache,
                                               ni_half16 *v_cache, const ni_half16 *qkv,
                                               const int32_t *slot, const int32_t *pos, size_t B,
                                               size_t max_pos, size_t NH, size_t HS, size_t T,
                                               int preload, ni_cuda_dtype dt, ni_stream s) {
    return ad_run(out, partial, k_cache, v_cache, qkv, slot, pos, B, max_pos, NH, HS, T, 1, preload,
                  dt, s);
}

NI_TL_SETTER(attention_decode)
