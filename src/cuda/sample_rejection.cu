/* The fused, sorting-free sampler on the GPU: the twin of the CPU's ni_sample_rejection
 * (src/sampling/sample_rejection.c), token for token. One launch for the batch, one block of
 * 1024 threads per row of logits (B, V):
 * (1) the row is read once with 16-byte loads (scalar ones at the unaligned ends) into shared
 *     memory while the block finds the max, the argmax (lowest index on ties) and whether the
 *     row is valid; greedy and invalid rows stop here;
 * (2) each thread owns a contiguous chunk of the row and replaces its logits by q, the
 *     fixed-point exponent from which the canonical weight W (sampling.h, rule 3) follows by
 *     integer arithmetic alone: one 32-bit word per token, so V = 50257 (201 KB) stays on chip.
 *     W does not increase with q, so "W > w" is "q < lim(w)" with lim(w) found by a warp-wide
 *     search; the passes below compare 32-bit words and re-derive W only for the tokens whose
 *     weight they add up;
 * (3) rounds as on the CPU: round r takes draw r of (seed, seq, step) and inverts the CDF of the
 *     tokens above the pivot in index order (a block scan of per-thread sums, then one warp walks
 *     the crossing chunk); one pass counts and sums the tokens above and at the candidate's
 *     weight, which decides exactly whether the candidate is kept (the top-k mass by radix
 *     select over q when the cheap bounds do not decide); a rejected candidate's weight becomes
 *     the pivot. After max_rounds rounds, the exact fallback: the kept threshold by radix select
 *     and one draw (index max_rounds). Every decision is exact and the picks use the CPU's order
 *     and draws, so the token equals the CPU's for the same (seed, seq, step).
 * A row too long for shared memory is re-read from global memory (L2) in every pass instead.
 * The parameters and steps are read from device memory, so a captured CUDA graph samples with
 * the current settings; nothing is allocated and the launch shape depends only on (B, V). */
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "cuda/kernels.h"
#include "cuda/pdl.cuh"
#include "sampling/sampling.h"

#define SR_THREADS 1024
#define SR_WARPS (SR_THREADS / 32)
#define SR_FULL 0xFFFFFFFFu
#define SR_UNROLL 8          /* 16-byte loads in flight per thread while reading the row */
#define SR_QMAX (40u << 24)  /* q of t = -40: W = 0 from here on */
#define SR_QZ 0xFFFFFFFFu    /* q of a token of zero weight (t <= -40, -inf, NaN) or of padding */
#define SR_BINS0 640u        /* first radix digit q >> 20, below SR_QMAX >> 20 */
#define SR_WMAX (1ull << 40) /* the weight of the max */
#define SR_NONE 0xFFFFFFFFu
#define SR_ROUNDS_CAP 64u /* largest max_rounds (ni_cuda_sample_rejection_ex) */

typedef unsigned long long sr_u64;

/* The fixed part of the dynamic shared memory; the row's q (SMEM mode) follows it. */
typedef struct {
    sr_u64 hist[SR_BINS0];  /* radix select: counts or masses per digit */
    sr_u64 red_s[SR_WARPS]; /* block scan: warp totals, then their exclusive prefixes */
    sr_u64 tot_s;
    sr_u64 cand_w;    /* the round's candidate: weight */
    sr_u64 cross_rem; /* target minus the prefix of the crossing thread */
    sr_u64 sel_below; /* radix select: acc below the chosen bin */
    unsigned red_a[SR_WARPS], red_b[SR_WARPS];
    unsigned tot_a, tot_b;
    unsigned tab[16];           /* 2^(-j/16) in Q31, the table of ni_canon_weight */
    float u[SR_ROUNDS_CAP + 1]; /* the row's draws */
    float wmaxv[SR_WARPS];      /* max and argmax per warp */
    unsigned wmaxi[SR_WARPS];
    int wbad[SR_WARPS];
    unsigned cand_q, lim, lim2, sel_bin;
    int cand, cross;
} sr_smem;

#define SR_FIXED_BYTES ((sizeof(sr_smem) + 15) / 16 * 16)

/* One row: where its q live and how to make them. Slot s holds token s - h0, so that 16-byte
 * groups of slots are 16-byte groups of the logits in global memory too; slots outside the row
 * have q = SR_QZ. Thread t owns the groups [t * c4, (t + 1) * c4) (c4 odd: conflict-free 16-byte
 * shared loads), so a block scan in thread order is a scan in index order. */
typedef struct {
    const float *row; /* (V) this row's logits */
    uint4 *q4;        /* (ns4) q per slot in shared memory (SMEM mode) */
    unsigned V, h0, ns4, c4;
    float m, s; /* max logit, ni_canon_scale(temperature) */
    const unsigned *tab;
} sr_row;

/* ---- canonical arithmetic ------------------------------------------------------------------ */

/* ni_canon_weight's table of 2^(-j/16) in Q31, into shared memory (one thread). */
static __device__ __forceinline__ void sr_init_tab(unsigned *tab) {
    tab[0] = 2147483648u, tab[1] = 2056437387u, tab[2] = 1969251188u, tab[3] = 1885761398u;
    tab[4] = 1805811301u, tab[5] = 1729250827u, tab[6] = 1655936265u, tab[7] = 1585730000u;
    tab[8] = 1518500250u, tab[9] = 1454120821u, tab[10] = 1392470869u, tab[11] = 1333434672u;
    tab[12] = 1276901417u, tab[13] = 1222764986u, tab[14] = 1170923762u, tab[15] = 1121280436u;
}

/* q of a logit: as ni_canon_weight computes it from t = (logit - max) * scale, or SR_QZ where
 * ni_canon_weight returns 0 before computing it (t <= -40, -inf, NaN). */
static __device__ __forceinline__ unsigned sr_q(float x, float m, float s) {
    const float t = (x - m) * s;
    return t > -40.0f ? (unsigned)(-(int)(t * 16777216.0f)) : SR_QZ;
}

/* W from q: the steps of ni_canon_weight after q, bit for bit, with each 32 x 32 -> 64-bit
 * product whose high part is wanted written as one __umulhi (x << 1 or << 8 fit 32 bits
 * there: r < 2^20, z and zp < 2^27), so the table lives in shared memory. */
static __device__ __forceinline__ sr_u64 sr_weight(unsigned q, const unsigned *tab) {
    if (q >= SR_QMAX) return 0;
    const unsigned one = 1u << 31;
    const unsigned n = q >> 24, j = (q >> 20) & 15u, r = q & 0xFFFFFu;
    const unsigned z = __umulhi(r << 8, 1488522236u); /* (r * ln2 2^31) >> 24 */
    unsigned p = one - (z >> 2);                      /* 1 - z/4 */
    unsigned zp = __umulhi(z << 1, p);                /* (z * p) >> 31 */
    p = one - __umulhi(zp << 1, 715827883u);          /* 1 - z/3 (.) */
    zp = __umulhi(z << 1, p);
    p = one - (zp >> 1);           /* 1 - z/2 (.) */
    p = one - __umulhi(z << 1, p); /* 1 - z (.) */
    const unsigned t = tab[j];     /* (t * p) >> 31, t and p <= 2^31 */
    const unsigned v = (__umulhi(t, p) << 1) | ((t * p) >> 31);
    return ((sr_u64)v << 9) >> n;
}

/* ---- row access ------------------------------------------------------------------------------ */

/* Logits of slots 4j .. 4j + 3, -inf outside the row: one 16-byte load when all four are in the
 * row (the address is 16-byte aligned by the choice of h0), else scalar loads. Plain (coherent)
 * loads: the logits come from the previous kernel (cuda/pdl.cuh). */
static __device__ __forceinline__ float4 sr_ld4(const sr_row *R, unsigned j) {
    const int i0 = (int)(4u * j) - (int)R->h0;
    if (i0 >= 0 && (unsigned)i0 + 4u <= R->V) return *(const float4 *)(R->row + i0);
    float4 x;
    x.x = (i0 >= 0 && (unsigned)i0 < R->V) ? R->row[i0] : -INFINITY;
    x.y = (i0 + 1 >= 0 && (unsigned)(i0 + 1) < R->V) ? R->row[i0 + 1] : -INFINITY;
    x.z = (i0 + 2 >= 0 && (unsigned)(i0 + 2) < R->V) ? R->row[i0 + 2] : -INFINITY;
    x.w = (i0 + 3 >= 0 && (unsigned)(i0 + 3) < R->V) ? R->row[i0 + 3] : -INFINITY;
    return x;
}

/* q of slots 4j .. 4j + 3 (SR_QZ past the last group). */
template <int SMEM> static __device__ __forceinline__ uint4 sr_q4(const sr_row *R, unsigned j) {
    if (j >= R->ns4) return make_uint4(SR_QZ, SR_QZ, SR_QZ, SR_QZ);
    if (SMEM) return R->q4[j];
    const float4 x = sr_ld4(R, j);
    return make_uint4(sr_q(x.x, R->m, R->s), sr_q(x.y, R->m, R->s), sr_q(x.z, R->m, R->s),
                      sr_q(x.w, R->m, R->s));
}

/* q of one slot (SR_QZ outside the row). */
template <int SMEM>
static __device__ __forceinline__ unsigned sr_q1(const sr_row *R, unsigned slot) {
    if (slot >= 4u * R->ns4) return SR_QZ;
    if (SMEM) return ((const unsigned *)R->q4)[slot];
    const int i = (int)slot - (int)R->h0;
    return (i >= 0 && (unsigned)i < R->V) ? sr_q(R->row[i], R->m, R->s) : SR_QZ;
}

/* ---- block and warp primitives ------------------------------------------------------------ */

static __device__ __forceinline__ sr_u64 sr_warp_incl(sr_u64 x) {
    const unsigned lane = threadIdx.x & 31u;
#pragma unroll
    for (unsigned off = 1; off < 32; off <<= 1) {
        const sr_u64 y = __shfl_up_sync(SR_FULL, x, off);
        if (lane >= off) x += y;
    }
    return x;
}

/* The exclusive prefix of s in thread order; the block's totals of s, a, b. Every thread
 * calls it (it synchronizes first, so the scratch of an earlier call is free). */
static __device__ sr_u64 sr_block_scan(sr_smem *sm, sr_u64 s, unsigned a, unsigned b, sr_u64 *ts,
                                       unsigned *ta, unsigned *tb) {
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    const sr_u64 incl = sr_warp_incl(s);
#pragma unroll
    for (unsigned off = 16; off > 0; off >>= 1) {
        a += __shfl_xor_sync(SR_FULL, a, off);
        b += __shfl_xor_sync(SR_FULL, b, off);
    }
    __syncthreads();
    if (lane == 31) {
        sm->red_s[warp] = incl;
        sm->red_a[warp] = a;
        sm->red_b[warp] = b;
    }
    __syncthreads();
    if (warp == 0) {
        const sr_u64 ws = lane < SR_WARPS ? sm->red_s[lane] : 0;
        unsigned wa = lane < SR_WARPS ? sm->red_a[lane] : 0;
        unsigned wb = lane < SR_WARPS ? sm->red_b[lane] : 0;
        const sr_u64 wi = sr_warp_incl(ws);
#pragma unroll
        for (unsigned off = 16; off > 0; off >>= 1) {
            wa += __shfl_xor_sync(SR_FULL, wa, off);
            wb += __shfl_xor_sync(SR_FULL, wb, off);
        }
        if (lane < SR_WARPS) sm->red_s[lane] = wi - ws;
        if (lane == 31) {
            sm->tot_s = wi;
            sm->tot_a = wa;
            sm->tot_b = wb;
        }
    }
    __syncthreads();
    *ts = sm->tot_s;
    *ta = sm->tot_a;
    *tb = sm->tot_b;
    return sm->red_s[warp] + incl - s;
}

/* Warp-wide: the smallest q in [lo, hi] with W(q) < w, where that predicate is false below its
 * answer and true from it on (W does not increase with q) and true at hi. 32 probes a step. */
static __device__ unsigned sr_search(sr_u64 w, unsigned lo, unsigned hi, const unsigned *tab) {
    const unsigned lane = threadIdx.x & 31u;
    while (lo < hi) {
        const unsigned x = lo + (unsigned)((sr_u64)(hi - lo) * lane / 31u); /* lane 31: hi */
        const unsigned hit = __ballot_sync(SR_FULL, sr_weight(x, tab) < w);
        if (!hit) return hi; /* not monotone: impossible, but never loop */
        const int f = __ffs(hit) - 1;
        const unsigned xf = __shfl_sync(SR_FULL, x, f);
        const unsigned xp = __shfl_sync(SR_FULL, x, f > 0 ? f - 1 : 0);
        if (f == 0) return xf;
        lo = xp + 1;
        hi = xf;
    }
    return lo;
}

/* lim(w) = the smallest q with W(q) < w (w >= 1), knowing W(a) >= w: probes a + 2^i first,
 * so a weight whose tie group is narrow (almost every weight) costs one or two steps. */
static __device__ unsigned sr_lim_up(sr_u64 w, unsigned a, const unsigned *tab) {
    const unsigned lane = threadIdx.x & 31u;
    const sr_u64 xl = lane < 31 ? (sr_u64)a + (1ull << lane) : SR_QMAX;
    const unsigned x = xl < SR_QMAX ? (unsigned)xl : SR_QMAX;
    const unsigned hit = __ballot_sync(SR_FULL, sr_weight(x, tab) < w); /* lane 31: W = 0 */
    if (!hit) return SR_QMAX;
    const int f = __ffs(hit) - 1;
    const unsigned xf = __shfl_sync(SR_FULL, x, f);
    const unsigned xp = __shfl_sync(SR_FULL, x, f > 0 ? f - 1 : 0);
    return sr_search(w, f > 0 ? xp + 1 : a + 1, xf, tab);
}

/* lim(w) knowing W(a) < w: probes a - 2^i first. */
static __device__ unsigned sr_lim_down(sr_u64 w, unsigned a, const unsigned *tab) {
    const unsigned lane = threadIdx.x & 31u;
    const long long xl = lane < 31 ? (long long)a - (1ll << lane) : 0;
    const unsigned x = xl > 0 ? (unsigned)xl : 0u;
    const unsigned miss = __ballot_sync(SR_FULL, !(sr_weight(x, tab) < w));
    if (!miss) return 0; /* W(0) < w */
    const int g = __ffs(miss) - 1;
    const unsigned xg = __shfl_sync(SR_FULL, x, g);
    const unsigned xp = __shfl_sync(SR_FULL, x, g > 0 ? g - 1 : 0);
    return sr_search(w, xg + 1, g > 0 ? xp : a, tab);
}

/* Block-wide lim(w) for w >= 1 (warp 0 searches, from an anchor a with W(a) >= w when
 * anchored, else over [0, SR_QMAX]). */
static __device__ unsigned sr_lim_block(sr_smem *sm, sr_u64 w, int anchored, unsigned a) {
    if (threadIdx.x < 32) {
        const unsigned l = anchored ? sr_lim_up(w, a, sm->tab) : sr_search(w, 0, SR_QMAX, sm->tab);
        if (threadIdx.x == 0) sm->lim = l;
    }
    __syncthreads();
    const unsigned l = sm->lim;
    __syncthreads(); /* everyone has read it before the next writer */
    return l;
}

/* ---- passes over the row ----------------------------------------------------------------- */

/* Per thread over its chunk: the count of q < lgt, of q < lge, and the sum of W over q < lgt
 * (W > w and W >= w for lgt = lim(w + 1), lge = lim(w)). W is derived only in the warps that
 * need it (every lane runs the same c4 groups, so the vote is converged). */
template <int SMEM>
static __device__ void sr_count(const sr_row *R, unsigned lgt, unsigned lge, unsigned *cgt,
                                unsigned *cge, sr_u64 *sgt) {
    unsigned a = 0, b = 0;
    sr_u64 s = 0;
    const unsigned j0 = threadIdx.x * R->c4;
    for (unsigned i = 0; i < R->c4; i++) {
        const uint4 v = sr_q4<SMEM>(R, j0 + i);
        const unsigned qq[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const unsigned q = qq[e];
            a += q < lgt;
            b += q < lge;
            if (__any_sync(SR_FULL, q < lgt)) {
                const sr_u64 w = sr_weight(q, R->tab);
                s += q < lgt ? w : 0;
            }
        }
    }
    *cgt = a;
    *cge = b;
    *sgt = s;
}

/* Sum of W over q < L: per thread (*mine, its exclusive prefix returned) and in all (*total). */
template <int SMEM>
static __device__ sr_u64 sr_mass_below(sr_smem *sm, const sr_row *R, unsigned L, sr_u64 *mine,
                                       sr_u64 *total) {
    unsigned a, b, ta, tb;
    sr_count<SMEM>(R, L, 0, &a, &b, mine);
    return sr_block_scan(sm, *mine, a, 0, total, &ta, &tb);
}

/* Warp 0: the first of the nb bins of sm->hist where below plus the running sum reaches the
 * goal (count: >= goal; MASS: as a double >= goal_d); sm->sel_bin gets it, sm->sel_below the
 * acc before it. */
template <int MASS>
static __device__ void sr_find_bin(sr_smem *sm, unsigned nb, sr_u64 below, sr_u64 goal,
                                   double goal_d) {
    const unsigned lane = threadIdx.x & 31u;
    const unsigned per = (nb + 31u) / 32u, b0 = lane * per;
    const unsigned b1 = b0 + per < nb ? b0 + per : nb;
    sr_u64 ls = 0;
    for (unsigned b = b0; b < b1; b++) ls += sm->hist[b];
    const sr_u64 incl = sr_warp_incl(ls);
    const sr_u64 acc = below + incl;
    const unsigned hit = __ballot_sync(SR_FULL, MASS ? (double)acc >= goal_d : acc >= goal);
    /* no lane reaches the goal only when the caller's precondition is broken: the last bin */
    const unsigned f = hit ? (unsigned)(__ffs(hit) - 1) : 31u;
    if (lane == f) {
        sr_u64 run = acc - ls;
        unsigned b = b0;
        for (; b < b1; b++) {
            const sr_u64 nx = run + sm->hist[b];
            if (MASS ? (double)nx >= goal_d : nx >= goal) break;
            run = nx;
        }
        if (b >= b1) { /* only without a hit (then f = 31 and acc is the whole) */
            b = nb - 1;
            run = acc - sm->hist[nb - 1];
        }
        sm->sel_bin = b;
        sm->sel_below = run;
    }
}

/* One radix level over the row: among the tokens with q >> hs == prefix (and q < SR_QMAX), a
 * histogram of (q >> sh) & (2^(hs - sh) - 1) by count or by W; returns the prefix extended by
 * the bin where the acc (starting at *below) reaches the goal, and updates *below. */
template <int SMEM, int MASS>
static __device__ unsigned sr_radix_level(sr_smem *sm, const sr_row *R, unsigned prefix,
                                          unsigned hs, unsigned sh, unsigned nb, sr_u64 *below,
                                          sr_u64 goal, double goal_d) {
    const unsigned mask = (1u << (hs - sh)) - 1u;
    __syncthreads(); /* earlier readers of hist and sel_* are done */
    for (unsigned i = threadIdx.x; i < nb; i += SR_THREADS) sm->hist[i] = 0;
    __syncthreads();
    const unsigned lane = threadIdx.x & 31u, j0 = threadIdx.x * R->c4;
    for (unsigned i = 0; i < R->c4; i++) { /* the same trip count in every lane */
        const uint4 v = sr_q4<SMEM>(R, j0 + i);
        const unsigned qq[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const unsigned q = qq[e];
            const int in = q < SR_QMAX && (q >> hs) == prefix;
            const unsigned d = (q >> sh) & mask;
            if (MASS) {
                if (in) atomicAdd(&sm->hist[d], sr_weight(q, R->tab));
                continue;
            }
            /* counts: the lanes sharing the first lane's digit add once (rows of equal weights
             * would otherwise serialize 32 atomics on one address), the others one by one */
            const unsigned inm = __ballot_sync(SR_FULL, in);
            if (!inm) continue;
            const int l0 = __ffs(inm) - 1;
            const unsigned d0 = __shfl_sync(SR_FULL, d, l0);
            const unsigned same = __ballot_sync(SR_FULL, in && d == d0);
            if ((int)lane == l0)
                atomicAdd(&sm->hist[d0], (sr_u64)__popc(same));
            else if (in && d != d0)
                atomicAdd(&sm->hist[d], 1ull);
        }
    }
    __syncthreads();
    if (threadIdx.x < 32) sr_find_bin<MASS>(sm, nb, *below, goal, goal_d);
    __syncthreads();
    *below = sm->sel_below;
    return (prefix << (hs - sh)) | sm->sel_bin;
}

/* The smallest X such that the tokens with q <= X reach the goal: their count >= goal (the
 * goal-th smallest q, whose W is the goal-th largest weight) or, MASS, their summed W as a
 * double >= goal_d. Four passes, one per digit of q: [29:20], [19:12], [11:4], [3:0]. */
template <int SMEM, int MASS>
static __device__ unsigned sr_select(sr_smem *sm, const sr_row *R, sr_u64 goal, double goal_d) {
    sr_u64 below = 0;
    unsigned prefix = sr_radix_level<SMEM, MASS>(sm, R, 0, 30, 20, SR_BINS0, &below, goal, goal_d);
    prefix = sr_radix_level<SMEM, MASS>(sm, R, prefix, 20, 12, 256, &below, goal, goal_d);
    prefix = sr_radix_level<SMEM, MASS>(sm, R, prefix, 12, 4, 256, &below, goal, goal_d);
    prefix = sr_radix_level<SMEM, MASS>(sm, R, prefix, 4, 0, 16, &below, goal, goal_d);
    return prefix;
}

/* The top-k mass M_K (rule 4): the k-th largest weight tk (k below the count of positive
 * weights) by radix select, then the sum of W >= tk. */
template <int SMEM>
static __device__ sr_u64 sr_topk_mass(sr_smem *sm, const sr_row *R, unsigned k, sr_u64 *tk) {
    const unsigned X = sr_select<SMEM, 0>(sm, R, k, 0.0);
    *tk = sr_weight(X, R->tab);
    const unsigned L = sr_lim_block(sm, *tk, 1, X);
    sr_u64 mine, total;
    sr_mass_below<SMEM>(sm, R, L, &mine, &total);
    return total;
}

/* Inverse CDF in index order over the tokens with W >= lo (lo >= 1): the thread whose chunk
 * holds the target (exclusive prefix texcl <= target < texcl + tsum) hands it to warp 0, which
 * walks that chunk 32 slots at a time. sm->cand gets the token (-1 if none: impossible when
 * the sums are consistent), sm->cand_w its weight, sm->cand_q its q. Every thread calls it. */
template <int SMEM>
static __device__ void sr_pick(sr_smem *sm, const sr_row *R, sr_u64 tsum, sr_u64 texcl,
                               sr_u64 target, sr_u64 lo) {
    if (tsum > 0 && texcl <= target && target - texcl < tsum) {
        sm->cross = (int)threadIdx.x;
        sm->cross_rem = target - texcl;
    }
    __syncthreads();
    if (threadIdx.x < 32) {
        const unsigned lane = threadIdx.x;
        const int tc = sm->cross;
        int c = -1;
        unsigned cq = SR_QZ;
        sr_u64 cw = 0;
        if (tc >= 0) {
            const sr_u64 rem = sm->cross_rem;
            const unsigned s0 = (unsigned)tc * 4u * R->c4, s1 = s0 + 4u * R->c4;
            sr_u64 carry = 0;
            for (unsigned base = s0; base < s1; base += 32) {
                const unsigned slot = base + lane;
                const unsigned q = slot < s1 ? sr_q1<SMEM>(R, slot) : SR_QZ;
                const sr_u64 w = sr_weight(q, R->tab);
                const sr_u64 take = w >= lo ? w : 0;
                const sr_u64 incl = sr_warp_incl(take);
                const unsigned hit = __ballot_sync(SR_FULL, take != 0 && carry + incl > rem);
                if (hit) {
                    const int f = __ffs(hit) - 1;
                    c = (int)(base + (unsigned)f) - (int)R->h0;
                    cq = __shfl_sync(SR_FULL, q, f);
                    cw = __shfl_sync(SR_FULL, take, f);
                    break;
                }
                carry += __shfl_sync(SR_FULL, incl, 31);
            }
        }
        if (lane == 0) {
            sm->cand = c;
            sm->cand_q = cq;
            sm->cand_w = cw;
            sm->cross = -1;
        }
    }
    __syncthreads();
}

/* ---- the kernel ---------------------------------------------------------------------------- */

template <int SMEM>
__global__ void __launch_bounds__(SR_THREADS, 1)
    sr_kernel(int32_t *tokens,                // (B)
              const float *logits,            // (B, V)
              const uint64_t *seq_ids,        // (B) or NULL (then the row index)
              const uint32_t *steps,          // (B) or NULL (then 0)
              const ni_sample_params *params, // (1)
              size_t V, unsigned max_rounds) {
    extern __shared__ uint4 sr_dyn[];
    ni_pdl_wait(); /* logits, steps and parameters come from earlier kernels or copies */
    sr_smem *sm = (sr_smem *)sr_dyn;
    const size_t r = blockIdx.x;
    const unsigned tid = threadIdx.x, lane = tid & 31u, warp = tid >> 5;
    const ni_sample_params P = *params;

    /* rule 1 for the parameters, rule 2 */
    if (P.temperature != P.temperature || P.top_p != P.top_p || P.min_p != P.min_p) {
        if (tid == 0) tokens[r] = NI_SAMPLE_INVALID;
        return;
    }
    const int greedy = P.top_k == 1 || ni_canon_temp_greedy(P.temperature);

    sr_row R;
    R.row = logits + r * V;
    R.V = (unsigned)V;
    R.h0 = (unsigned)(((uintptr_t)R.row >> 2) & 3u);
    R.ns4 = (unsigned)((V + 6) / 4);
    R.c4 = ((R.ns4 + SR_THREADS - 1) / SR_THREADS) | 1u;
    R.q4 = (uint4 *)((char *)sr_dyn + SR_FIXED_BYTES);
    R.m = 0.0f;
    R.s = 0.0f;
    R.tab = sm->tab;

    if (tid == 0) sr_init_tab(sm->tab);
    if (!greedy && tid <= max_rounds) {
        const uint64_t seq = seq_ids ? seq_ids[r] : (uint64_t)r;
        const uint32_t step = steps ? steps[r] : 0u;
        sm->u[tid] = ni_rng_uniform(P.seed, seq, step, tid);
    }
    if (tid == 0) sm->cross = -1;

    /* (1) read the row: max, argmax, validity; keep it in shared memory */
    float best = -INFINITY;
    unsigned arg = SR_NONE;
    int bad = 0;
    for (unsigned j0 = tid; j0 < R.ns4; j0 += SR_THREADS * SR_UNROLL) {
        float4 x[SR_UNROLL];
#pragma unroll
        for (int u = 0; u < SR_UNROLL; u++) {
            const unsigned j = j0 + (unsigned)u * SR_THREADS;
            x[u] =
                j < R.ns4 ? sr_ld4(&R, j) : make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
        }
#pragma unroll
        for (int u = 0; u < SR_UNROLL; u++) {
            const unsigned j = j0 + (unsigned)u * SR_THREADS;
            const float xv[4] = {x[u].x, x[u].y, x[u].z, x[u].w};
#pragma unroll
            for (int e = 0; e < 4; e++) {
                bad |= (xv[e] != xv[e]) | (xv[e] == INFINITY);
                if (xv[e] > best) { /* increasing index per thread: the lowest wins ties */
                    best = xv[e];
                    arg = 4u * j + (unsigned)e - R.h0;
                }
            }
            if (SMEM && !greedy && j < R.ns4)
                R.q4[j] = make_uint4(__float_as_uint(x[u].x), __float_as_uint(x[u].y),
                                     __float_as_uint(x[u].z), __float_as_uint(x[u].w));
        }
    }
    ni_pdl_launch_dependents(); /* the row is read (the rest works on chip or in L2) */
#pragma unroll
    for (unsigned off = 16; off > 0; off >>= 1) {
        const float ov = __shfl_down_sync(SR_FULL, best, off);
        const unsigned oi = __shfl_down_sync(SR_FULL, arg, off);
        bad |= __shfl_down_sync(SR_FULL, bad, off);
        if (ov > best || (ov == best && oi < arg)) {
            best = ov;
            arg = oi;
        }
    }
    if (lane == 0) {
        sm->wmaxv[warp] = best;
        sm->wmaxi[warp] = arg;
        sm->wbad[warp] = bad;
    }
    __syncthreads();
    if (warp == 0) {
        best = lane < SR_WARPS ? sm->wmaxv[lane] : -INFINITY;
        arg = lane < SR_WARPS ? sm->wmaxi[lane] : SR_NONE;
        bad = lane < SR_WARPS ? sm->wbad[lane] : 0;
#pragma unroll
        for (unsigned off = 16; off > 0; off >>= 1) {
            const float ov = __shfl_down_sync(SR_FULL, best, off);
            const unsigned oi = __shfl_down_sync(SR_FULL, arg, off);
            bad |= __shfl_down_sync(SR_FULL, bad, off);
            if (ov > best || (ov == best && oi < arg)) {
                best = ov;
                arg = oi;
            }
        }
        if (lane == 0) {
            sm->wmaxv[0] = best;
            sm->wmaxi[0] = arg;
            sm->wbad[0] = bad;
        }
    }
    __syncthreads();
    best = sm->wmaxv[0];
    arg = sm->wmaxi[0];
    bad = sm->wbad[0];
    if (bad || arg == SR_NONE) { /* NaN or +inf, or no finite logit */
        if (tid == 0) tokens[r] = NI_SAMPLE_INVALID;
        return;
    }
    if (greedy) {
        if (tid == 0) tokens[r] = (int32_t)arg;
        return;
    }
    R.m = best;
    R.s = ni_canon_scale(P.temperature);

    /* (2) q and W per token: the row's mass and the per-thread sums of round 0 */
    sr_u64 tsum = 0;
    unsigned npos = 0;
    {
        const unsigned j0 = tid * R.c4;
        for (unsigned i = 0; i < R.c4; i++) {
            const unsigned j = j0 + i;
            if (j >= R.ns4) break;
            uint4 v;
            if (SMEM) {
                const uint4 raw = R.q4[j];
                v = make_uint4(
                    sr_q(__uint_as_float(raw.x), R.m, R.s), sr_q(__uint_as_float(raw.y), R.m, R.s),
                    sr_q(__uint_as_float(raw.z), R.m, R.s), sr_q(__uint_as_float(raw.w), R.m, R.s));
                R.q4[j] = v;
            } else {
                v = sr_q4<SMEM>(&R, j);
            }
            const unsigned qq[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const sr_u64 w = sr_weight(qq[e], R.tab);
                tsum += w;
                npos += w != 0;
            }
        }
    }
    sr_u64 total;
    unsigned n_pos, unused;
    sr_u64 texcl = sr_block_scan(sm, tsum, npos, 0, &total, &n_pos, &unused);

    /* the filter in the weight domain (as ni_samp_prepare and ni_samp_finish_row) */
    unsigned k = (P.top_k >= 2 && (size_t)P.top_k < V) ? P.top_k : 0u;
    if (k >= n_pos) k = 0;
    const int top_p_on = P.top_p < 1.0f;
    const sr_u64 wmin = ni_canon_minp_weight(P.min_p);

    /* (3) rounds */
    sr_u64 pivot = 0, mass_above = total, mass_topk = total;
    unsigned n_above = n_pos;
    int have_mk = !k || !top_p_on;
    for (unsigned rd = 0; rd < max_rounds; rd++) {
        const sr_u64 target = ni_canon_target(sm->u[rd], mass_above);
        sr_pick<SMEM>(sm, &R, tsum, texcl, target, pivot + 1);
        const int c = sm->cand;
        const sr_u64 wc = sm->cand_w;
        const unsigned qc = sm->cand_q;
        if (c < 0) { /* inconsistent sums: impossible, but never a wrong token */
            if (tid == 0) tokens[r] = NI_SAMPLE_INVALID;
            return;
        }
        /* the max is always kept; with neither top-k nor top-p only min-p decides */
        if (wc == SR_WMAX || (!k && !top_p_on && wc >= wmin)) {
            if (tid == 0) tokens[r] = c;
            return;
        }
        /* the tokens above and at the candidate's weight */
        if (tid < 32) {
            const unsigned lge = sr_lim_up(wc, qc, R.tab);
            const unsigned lgt = sr_lim_down(wc + 1, qc, R.tab);
            if (tid == 0) {
                sm->lim = lge;
                sm->lim2 = lgt;
            }
        }
        __syncthreads();
        const unsigned lge = sm->lim, lgt = sm->lim2;
        unsigned cgt, cge;
        sr_u64 sgt;
        sr_count<SMEM>(&R, lgt, lge, &cgt, &cge, &sgt);
        sr_u64 s_gt;
        unsigned cnt_gt, cnt_ge;
        const sr_u64 excl = sr_block_scan(sm, sgt, cgt, cge, &s_gt, &cnt_gt, &cnt_ge);
        const sr_u64 s_ge = s_gt + wc * (sr_u64)(cnt_ge - cnt_gt);

        /* exactly the CPU's decision (block-uniform: every input is) */
        int ok = wc >= wmin && (!k || cnt_gt < k);
        if (ok && top_p_on && s_gt > 0) {
            if (!have_mk && cnt_ge >= k) { /* c's tie group holds the k-th largest */
                mass_topk = s_ge;
                have_mk = 1;
            }
            if (have_mk) {
                ok = (double)s_gt < ni_canon_topp_limit(P.top_p, mass_topk);
            } else if ((double)s_gt < ni_canon_topp_limit(P.top_p, s_ge)) {
                ok = 1; /* M_K >= s_ge */
            } else if (n_above >= k && !((double)s_gt < ni_canon_topp_limit(P.top_p, mass_above))) {
                ok = 0; /* M_K <= mass above the pivot */
            } else {
                sr_u64 tk;
                mass_topk = sr_topk_mass<SMEM>(sm, &R, k, &tk);
                have_mk = 1;
                ok = (double)s_gt < ni_canon_topp_limit(P.top_p, mass_topk);
            }
        }
        if (ok) {
            if (tid == 0) tokens[r] = c;
            return;
        }
        pivot = wc;
        mass_above = s_gt;
        n_above = cnt_gt;
        tsum = sgt;
        texcl = excl;
    }

    /* exact fallback: the kept threshold (as ni_samp_kept_threshold), one draw */
    sr_u64 theta = wmin, mk = total;
    if (k) {
        sr_u64 tk;
        mk = sr_topk_mass<SMEM>(sm, &R, k, &tk);
        if (tk > theta) theta = tk;
    }
    if (top_p_on) {
        const double lim = ni_canon_topp_limit(P.top_p, mk);
        const unsigned X = sr_select<SMEM, 1>(sm, &R, 0, lim);
        const sr_u64 tp = sr_weight(X, R.tab);
        if (tp > theta) theta = tp;
    }
    const sr_u64 lo = theta ? theta : 1;
    const unsigned L = sr_lim_block(sm, lo, 0, 0);
    sr_u64 mass;
    texcl = sr_mass_below<SMEM>(sm, &R, L, &tsum, &mass);
    sr_pick<SMEM>(sm, &R, tsum, texcl, ni_canon_target(sm->u[max_rounds], mass), lo);
    if (tid == 0) tokens[r] = sm->cand;
}

/* ---- launch ------------------------------------------------------------------------------- */

__global__ void sr_fill_invalid_kernel(int32_t *tokens, size_t B) {
    ni_pdl_wait(); /* tokens may still be read by the previous kernel */
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < B) tokens[i] = NI_SAMPLE_INVALID;
}

extern "C" int ni_cuda_sample_rejection_ex(int32_t *tokens, const float *logits,
                                           const uint64_t *seq_ids, const uint32_t *steps,
                                           const ni_sample_params *params, size_t B, size_t V,
                                           uint32_t max_rounds, int force_global, ni_stream s) {
    cudaStream_t st = (cudaStream_t)s;
    if (B == 0) return (int)cudaGetLastError();
    if (!tokens || !params || B > 0x7fffffffu || max_rounds > SR_ROUNDS_CAP)
        return (int)cudaErrorInvalidValue;
    if (!logits || V == 0 || V > NI_SAMPLE_MAX_V) { /* rule 1: every row invalid */
        return ni_launch_status(ni_launch_pdl(sr_fill_invalid_kernel,
                                              dim3((unsigned)((B + 255) / 256)), dim3(256), 0, st,
                                              tokens, B));
    }
    int dev = 0, optin = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (e != cudaSuccess) return (int)e;
    const size_t row_bytes = (V + 6) / 4 * 16;
    const int smem = !force_global && SR_FIXED_BYTES + row_bytes <= (size_t)optin;
    const size_t bytes = SR_FIXED_BYTES + (smem ? row_bytes : 0);
    void (*kernel)(int32_t *, const float *, const uint64_t *, const uint32_t *,
                   const ni_sample_params *, size_t, unsigned) = smem ? sr_kernel<1> : sr_kernel<0>;
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    if (e != cudaSuccess) return (int)e;
    return ni_launch_status(ni_launch_pdl(kernel, dim3((unsigned)B), dim3(SR_THREADS), bytes, st,
                                          tokens, logits, seq_ids, steps, params, V,
                                          (unsigned)max_rounds));
}

extern "C" int ni_cuda_sample_rejection(int32_t *tokens, const float *logits,
                                        const uint64_t *seq_ids, const uint32_t *steps,
                                        const ni_sample_params *params, size_t B, size_t V,
                                        ni_stream s) {
    return ni_cuda_sample_rejection_ex(tokens, logits, seq_ids, steps, params, B, V,
                                       NI_REJECTION_MAX_ROUNDS, 0, s);
}
