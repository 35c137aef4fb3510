/* The fused, sorting-free sampler on the GPU: the twin of the CPU's ni_sample_rejection
 * (src/sampling/sample_rejection.c), token for token. One launch for the batch; each row of
 * logits (B, V) is sampled by a thread-block cluster of ncl blocks of NT threads (sm_90; NT =
 * 512 when ncl > 1, else 1024: sr_threads), the row cut into ncl contiguous slices in index
 * order, block rank b holding slice b:
 * (1) each block reads its slice once with 16-byte loads (scalar ones at the unaligned ends) into
 *     shared memory while finding the max, the argmax (lowest index on ties) and whether the
 *     slice is valid; the blocks swap these through distributed shared memory (DSMEM); greedy
 *     and invalid rows stop here;
 * (2) each thread owns a contiguous chunk of its slice and replaces its logits by q, the
 *     fixed-point exponent from which the canonical weight W (sampling.h, rule 3) follows by
 *     integer arithmetic alone: one 32-bit word per token (V = 50257: 201 KB in one block).
 *     W does not increase with q, so "W > w" is "q < lim(w)" with lim(w) found by a warp-wide
 *     search; the passes compare 32-bit words and re-derive W only where they add weights up;
 *     With top-k on and k <= SR_NCH (= NI_REJECTION_CHUNKS), the same pass takes the smallest q
 *     of each of the SR_NCH fixed chunks of the row's index range (of ceil(V / SR_NCH) tokens: a
 *     function of V alone, not of the cluster or the threads): per thread a running minimum,
 *     atomicMin into the block's array where the chunk changes (once per chunk and warp at the
 *     end: the lanes sharing a chunk reduce first), then into every block's cluster array (DSMEM
 *     reductions, one per chunk and block, seen after the next cluster barrier); min is
 *     order-independent, so the result is deterministic. The k-th smallest chunk minimum q_k
 *     and S_k, the sum of W over the k smallest, decide as the CPU twin does
 *     (sample_rejection.c): when W(q_k) > 1 and S_k * NI_REJECTION_PIVOT_DIV < the row's mass,
 *     the first pivot is W(q_k) - 1 (it excludes no kept token) and one pass and exchange count
 *     and sum the tokens above it, the state a rejected candidate would leave (the next pass
 *     compacts them, and a top-k mass selection then reads that short list); else (with DIV = 1,
 *     when those k tokens hold the whole mass) the rounds start from the whole row;
 * (3) rounds as on the CPU: round r takes draw r of (seed, seq, step) and inverts the CDF of the
 *     tokens above the pivot in index order; one pass counts and sums the tokens above and at the
 *     candidate's weight, which decides exactly whether the candidate is kept (the top-k mass,
 *     when the cheap bounds do not decide, by a gather of the few tokens above the pivot into one
 *     warp, else by a cluster-wide radix select over q); a rejected
 *     candidate's weight becomes the pivot. After max_rounds rounds, the exact fallback: the kept
 *     threshold by radix select and one draw (index max_rounds). Every decision is exact and the
 *     picks use the CPU's order and draws, so the token equals the CPU's for the same
 *     (seed, seq, step), whatever ncl is.
 * Why it is fast. One block per row left most SMs idle at small B and paid, per round, several
 * block barriers and a pass of ~50 tokens per thread. Now:
 * - a row is spread over ncl = 8 blocks (B <= 8), 4 (B <= 24), 2 (B <= 64), 1 (larger B; at
 *   least 2048 tokens per block): a function of (B, V) alone, and the token does not depend on it;
 * - a round costs two cluster barriers and no block barrier: every reduction is a warp scan whose
 *   warp totals each block pushes into every block of the cluster (DSMEM stores, double
 *   buffered), so that after one barrier each block reads, locally, the cluster totals, its
 *   block's offset and its warps' offsets; the crossing warp (the one whose prefix interval holds
 *   the target) walks the chunk, finds the candidate, its two limits, and pushes them to every
 *   block before the second barrier. Only pushes cross blocks, so a block may exit after any
 *   barrier;
 * - once a block's tokens above the pivot fit in its compaction buffers (cap entries of q and
 *   token, two of them), a pass copies them there in index order (the offsets are the previous
 *   pass's count prefixes, hence at most every other round), and later rounds, and the top-k
 *   radix select when at least k tokens lie above the pivot, read that short list instead of the
 *   slice. Flat rows (~8 rounds) then touch about two slices' worth of tokens in all.
 * The short path. With top-k on (2 <= k <= SR_NCH) the first pivot usually leaves a few dozen
 * tokens, and the passes and cluster barriers of (2) and (3) cost more than those tokens'
 * rounds. So (1) also takes each chunk's largest logit (q is monotone in the logit, so the chunk
 * minima of q follow once the max is known), the blocks swap them with the max, and every block
 * derives q_k, w_k and lim(w_k) itself; one pass counts the tokens above the first pivot, lists
 * them (W and token, in index order) into block 0 and checks whether a token below has positive
 * weight (else top-k is off, as on the CPU); after one more cluster barrier, when at most
 * SR_SHORT tokens are listed, block 0's first warp runs the CPU's rounds, its top-k mass and its
 * exact fallback on that list alone (sr_short_rounds), and the other blocks are done. Every token
 * the rounds can count or keep is in the list, so the token is the CPU's. Otherwise (no first
 * pivot, a longer list) the row goes on to (2) with nothing changed. Two cluster barriers in all
 * instead of five or more: at V = 50,257 a row takes 18 us instead of 32 at batch 1 and 130 us
 * instead of 248 at 512 (H200, tests/gpu/test_sample_rejection.c).
 * A slice too long for shared memory is re-read from global memory (L2) in every pass instead.
 * The parameters and steps are read from device memory, so a captured CUDA graph samples with
 * the current settings; nothing is allocated and the launch shape depends only on (B, V). */
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "cuda/kernels.h"
#include "cuda/pdl.cuh"
#include "cuda/timeline.cuh"
#include "sampling/sampling.h"

#define SR_THREADS_ONE 1024 /* threads per block when a row is one block (large B) */
#define SR_THREADS_CL 512   /* ... when a row is a cluster of several (small B): see sr_threads */
#define SR_WARPS 32         /* the most warps of a block (the per-warp arrays and slots) */
#define SR_FULL 0xFFFFFFFFu
#define SR_UNROLL 8          /* 16-byte loads in flight per thread while reading the row */
#define SR_QMAX (40u << 24)  /* q of t = -40: W = 0 from here on */
#define SR_QZ 0xFFFFFFFFu    /* q of a token of zero weight (t <= -40, -inf, NaN) or of padding */
#define SR_BINS0 640u        /* first radix digit q >> 20, below SR_QMAX >> 20 */
#define SR_WMAX (1ull << 40) /* the weight of the max */
#define SR_NONE 0xFFFFFFFFu
#define SR_ROUNDS_CAP 64u /* largest max_rounds (ni_cuda_sample_rejection_ex) */
#define SR_CMAX 16u       /* largest cluster */
#define SR_CAPMAX 8192u   /* largest compaction buffer (entries) */
#define SR_SMALL 128u /* the most tokens above the pivot whose top-k mass is found by a gather */
#define SR_MIN_PER_BLOCK 2048u     /* tokens per block at least, for the automatic cluster size */
#define SR_NCH NI_REJECTION_CHUNKS /* chunks of the first pivot (sampling.h) */
/* the short path (sr_short_rounds): the most tokens above the first pivot it takes, and the
 * least V it serves (a chunk of ceil(V / SR_NCH) tokens outlasts a warp's 128 slots) */
#define SR_SHORT 128u
#define SR_SHORT_MIN_V (SR_NCH * 132u)

/* a warp reads the per-warp arrays (<= 32 warps); one thread per draw */
static_assert(SR_THREADS_ONE % 32 == 0 && SR_THREADS_ONE <= 32 * SR_WARPS &&
                  SR_THREADS_ONE > SR_ROUNDS_CAP,
              "SR_THREADS_ONE");
static_assert(SR_CMAX + SR_SMALL <= 2 * SR_BINS0, "SR_SMALL: the gather lives in lhist");
static_assert(SR_NCH == 64, "SR_NCH: a warp holds two chunk minima per lane (sr_chunk_top)");
static_assert(SR_THREADS_CL % 32 == 0 && SR_THREADS_CL <= 32 * SR_WARPS &&
                  SR_THREADS_CL > SR_ROUNDS_CAP,
              "SR_THREADS_CL");

typedef unsigned long long sr_u64;
namespace cg = cooperative_groups;

/* The fixed part of the dynamic shared memory; the exchange arrays, histograms, the slice's q
 * (SMEM mode) and the compaction buffers follow it (sr_lay). */
typedef struct {
    sr_u64 cand_w;    /* the round's candidate (pushed by the crossing warp): weight */
    sr_u64 sel_below; /* radix select: acc below the chosen bin */
    unsigned cand_q, cand_lge, cand_lgt, cand_stamp;
    int cand;
    unsigned sel_bin, lim;
    unsigned tab[16];           /* 2^(-j/16) in Q31, the table of ni_canon_weight */
    float u[SR_ROUNDS_CAP + 1]; /* the row's draws */
    float wmaxv[SR_WARPS];      /* max and argmax per warp */
    unsigned wmaxi[SR_WARPS];
    int wbad[SR_WARPS];
    float xmax[SR_CMAX]; /* max, argmax, invalid per block of the cluster */
    unsigned xarg[SR_CMAX];
    int xbad[SR_CMAX];
    alignas(16) unsigned cmin[SR_NCH];  /* the smallest q per chunk of the first pivot: this
                                           block's (16-byte loads: sr_chunk_top) */
    alignas(16) unsigned ccmin[SR_NCH]; /* ... the cluster's (ncl > 1) */
    /* the short path: the largest logit per chunk as an ordered key (sr_key), this block's and
     * the cluster's; their q; the first pivot's limit; per warp and per block, the tokens above
     * it and whether a token below it has positive weight */
    unsigned kmax[SR_NCH], ckmax[SR_NCH];
    alignas(16) unsigned kq[SR_NCH];
    unsigned slim;
    sr_u64 swk; /* w_k */
    unsigned wcnt[SR_WARPS], wpos[SR_WARPS];
    unsigned bcnt[SR_CMAX], bpos[SR_CMAX];
} sr_smem;

#define SR_FIXED_BYTES ((sizeof(sr_smem) + 15) / 16 * 16)

/* Byte offsets of the parts of the dynamic shared memory (host and device agree). */
typedef struct {
    size_t xs, xa, xb, lhist, ghist, row, cq, ci, total;
} sr_offs;

static __host__ __device__ sr_offs sr_offsets(unsigned ncl, unsigned G, int smem, unsigned cap) {
    sr_offs o;
    o.xs = SR_FIXED_BYTES;                        /* [2][ncl][32] u64 */
    o.xa = o.xs + 2 * (size_t)ncl * SR_WARPS * 8; /* [2][ncl][32] u32 */
    o.xb = o.xa + 2 * (size_t)ncl * SR_WARPS * 4;
    o.lhist = o.xb + 2 * (size_t)ncl * SR_WARPS * 4;    /* [SR_BINS0] u64 */
    o.ghist = o.lhist + SR_BINS0 * 8;                   /* [2][SR_BINS0] u64, ncl > 1 */
    o.row = o.ghist + (ncl > 1 ? 2 * SR_BINS0 * 8 : 0); /* [G] uint4, SMEM mode */
    o.cq = o.row + (smem ? (size_t)G * 16 : 0);         /* [2][cap] u32 */
    o.ci = o.cq + 2 * (size_t)cap * 4;                  /* [2][cap] u32 */
    o.total = o.ci + 2 * (size_t)cap * 4;
    return o;
}

/* Pointers into the dynamic shared memory of this block. */
typedef struct {
    sr_smem *sm;
    sr_u64 *xs;    /* (2, ncl, 32) exchange: sums per block and warp */
    unsigned *xa;  /* (2, ncl, 32) exchange: counts */
    unsigned *xb;  /* (2, ncl, 32) */
    sr_u64 *lhist; /* (SR_BINS0) this block's histogram */
    sr_u64 *ghist; /* (2, SR_BINS0) the cluster's histogram (ncl > 1) */
    unsigned *cq;  /* (2, cap) compacted q */
    unsigned *ci;  /* (2, cap) compacted token ids */
    unsigned ncl, rank, cap;
} sr_lay;

/* One block's slice of a row: where its q live and how to make them. Slot s of the row holds
 * token s - h0, so that 16-byte groups of slots are 16-byte groups of the logits in global memory
 * too; slots outside the row have q = SR_QZ. The block holds groups [g0, g0 + ng) (local group j
 * is global group g0 + j); thread t owns the local groups [t * c4, (t + 1) * c4) (c4 odd:
 * conflict-free 16-byte shared loads), so a scan in (rank, thread) order is in index order. */
typedef struct {
    const float *row; /* (V) this row's logits */
    uint4 *q4;        /* (ng) q per slot in shared memory (SMEM mode) */
    unsigned V, h0, ns4, g0, ng, c4;
    float m, s; /* max logit, ni_canon_scale(temperature) */
    const unsigned *tab;
} sr_row;

/* The list a pass reads: the block's slice (buf < 0) or compacted buffer buf with n entries,
 * thread t owning entries [t * cc, (t + 1) * cc). */
typedef struct {
    int buf;
    unsigned n, cc;
} sr_list;

/* What an exchange returns (sr_exchange). */
typedef struct {
    sr_u64 S;       /* the cluster's total of s */
    sr_u64 blk_off; /* the total of s over the blocks of lower rank */
    sr_u64 blk_s;   /* this block's total of s */
    sr_u64 texcl;   /* this thread's exclusive prefix of s within the block */
    unsigned A, B;  /* the cluster's totals of a and b */
    unsigned blk_a; /* this block's total of a */
    unsigned aexcl; /* this thread's exclusive prefix of a within the block */
} sr_xres;

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

/* Logits of the global group g (slots 4g .. 4g + 3), -inf outside the row: one 16-byte load when
 * all four are in the row (the address is 16-byte aligned by the choice of h0), else scalar
 * loads. Plain (coherent) loads: the logits come from the previous kernel (cuda/pdl.cuh). */
static __device__ __forceinline__ float4 sr_ld4(const sr_row *R, unsigned g) {
    const int i0 = (int)(4u * g) - (int)R->h0;
    if (i0 >= 0 && (unsigned)i0 + 4u <= R->V) return *(const float4 *)(R->row + i0);
    float4 x;
    x.x = (i0 >= 0 && (unsigned)i0 < R->V) ? R->row[i0] : -INFINITY;
    x.y = (i0 + 1 >= 0 && (unsigned)(i0 + 1) < R->V) ? R->row[i0 + 1] : -INFINITY;
    x.z = (i0 + 2 >= 0 && (unsigned)(i0 + 2) < R->V) ? R->row[i0 + 2] : -INFINITY;
    x.w = (i0 + 3 >= 0 && (unsigned)(i0 + 3) < R->V) ? R->row[i0 + 3] : -INFINITY;
    return x;
}

/* q of four logits. */
static __device__ __forceinline__ uint4 sr_q4_of(float4 x, const sr_row *R) {
    return make_uint4(sr_q(x.x, R->m, R->s), sr_q(x.y, R->m, R->s), sr_q(x.z, R->m, R->s),
                      sr_q(x.w, R->m, R->s));
}

/* The logits of the local group j (j < ng): from the slice in shared memory while it still holds
 * them (SMEM mode, before the long path's q pass), else from global memory. */
template <int SMEM>
static __device__ __forceinline__ float4 sr_logits4(const sr_row *R, unsigned j) {
    if (!SMEM) return sr_ld4(R, R->g0 + j);
    const uint4 raw = R->q4[j];
    return make_float4(__uint_as_float(raw.x), __uint_as_float(raw.y), __uint_as_float(raw.z),
                       __uint_as_float(raw.w));
}

/* q of the local group j (SR_QZ past the block's last group). */
template <int SMEM> static __device__ __forceinline__ uint4 sr_q4(const sr_row *R, unsigned j) {
    if (j >= R->ng) return make_uint4(SR_QZ, SR_QZ, SR_QZ, SR_QZ);
    if (SMEM) return R->q4[j];
    return sr_q4_of(sr_ld4(R, R->g0 + j), R);
}

/* q of one local slot (SR_QZ outside the row). */
template <int SMEM>
static __device__ __forceinline__ unsigned sr_q1(const sr_row *R, unsigned slot) {
    if (slot >= 4u * R->ng) return SR_QZ;
    if (SMEM) return ((const unsigned *)R->q4)[slot];
    const int i = (int)(4u * R->g0 + slot) - (int)R->h0;
    return (i >= 0 && (unsigned)i < R->V) ? sr_q(R->row[i], R->m, R->s) : SR_QZ;
}

/* The token of a local slot (meaningful for slots inside the row). */
static __device__ __forceinline__ unsigned sr_tok(const sr_row *R, unsigned slot) {
    return 4u * R->g0 + slot - R->h0;
}

/* ---- cluster, block and warp primitives ----------------------------------------------------- */

/* A barrier over the cluster (release / acquire: pushes before it are seen after it), the
 * block's barrier when the cluster is one block. Called by every thread of every block. */
static __device__ __forceinline__ void sr_csync(unsigned ncl) {
    if (ncl > 1)
        cg::this_cluster().sync();
    else
        __syncthreads();
}

/* The first cluster barrier split in two: every block arrives once it has started, and waits
 * before its first push into another block's shared memory, which must have started (a block's
 * shared memory exists only from then); the work in between hides the barrier. */
static __device__ __forceinline__ void sr_cluster_arrive(unsigned ncl) {
    if (ncl > 1) asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}

/* The same arrive with release semantics: this block's shared-memory writes before it are seen
 * by a peer once its sr_cluster_wait returns. */
static __device__ __forceinline__ void sr_cluster_arrive_release(unsigned ncl) {
    if (ncl > 1) asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
}

static __device__ __forceinline__ void sr_cluster_wait(unsigned ncl) {
    if (ncl > 1) asm volatile("barrier.cluster.wait.aligned;" ::: "memory");
}

/* p in the shared memory of block rank r of the cluster (p itself for this block). */
template <typename T>
static __device__ __forceinline__ T *sr_peer(const sr_lay *Y, T *p, unsigned r) {
    return (Y->ncl == 1 || r == Y->rank) ? p : cg::this_cluster().map_shared_rank(p, r);
}

/* Inclusive scan and total over the warp, for the 64-bit masses and the 32-bit counts. */
template <typename T> static __device__ __forceinline__ T sr_warp_incl(T x) {
    const unsigned lane = threadIdx.x & 31u;
#pragma unroll
    for (unsigned off = 1; off < 32; off <<= 1) {
        const T y = __shfl_up_sync(SR_FULL, x, off);
        if (lane >= off) x += y;
    }
    return x;
}

template <typename T> static __device__ __forceinline__ T sr_warp_sum(T x) {
#pragma unroll
    for (unsigned off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(SR_FULL, x, off);
    return x;
}

/* Cluster-wide sums of (s, a, b) over every thread of every block, with the prefixes in index
 * order (sr_xres). Every thread of every block calls it, with *xk the same count of earlier
 * exchanges in every block: exchange k uses buffer k & 1, so its pushes cannot overwrite values
 * that a slow block still reads from exchange k - 1 (every block has passed exchange k - 1's
 * barrier, and so finished reading exchange k - 2, before anyone pushes for exchange k). */
static __device__ void sr_exchange(const sr_lay *Y, unsigned *xk, sr_u64 s, unsigned a, unsigned b,
                                   sr_xres *o) {
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const unsigned ncl = Y->ncl, rank = Y->rank;
    const size_t base = (size_t)(*xk & 1u) * ncl * SR_WARPS;
    *xk += 1;
    const sr_u64 is = sr_warp_incl<sr_u64>(s);
    const unsigned ia = sr_warp_incl<unsigned>(a);
    const unsigned wb = sr_warp_sum<unsigned>(b);
    const sr_u64 ws = __shfl_sync(SR_FULL, is, 31);
    const unsigned wa = __shfl_sync(SR_FULL, ia, 31);
    if (lane < ncl) { /* lane l pushes this warp's totals to block l */
        const size_t at = base + (size_t)rank * SR_WARPS + warp;
        *sr_peer(Y, Y->xs + at, lane) = ws;
        *sr_peer(Y, Y->xa + at, lane) = wa;
        *sr_peer(Y, Y->xb + at, lane) = wb;
    }
    sr_csync(ncl);
    /* lane l: warp l of every block */
    sr_u64 below = 0, all = 0, mine = 0;
    unsigned aall = 0, amine = 0, ball = 0;
    for (unsigned r = 0; r < (lane < nw ? ncl : 0u); r++) {
        const size_t at = base + (size_t)r * SR_WARPS + lane;
        const sr_u64 v = Y->xs[at];
        const unsigned va = Y->xa[at];
        all += v;
        aall += va;
        ball += Y->xb[at];
        if (r < rank) below += v;
        if (r == rank) {
            mine = v;
            amine = va;
        }
    }
    o->S = sr_warp_sum<sr_u64>(all);
    o->blk_off = sr_warp_sum<sr_u64>(below);
    const sr_u64 mi = sr_warp_incl<sr_u64>(mine);
    o->blk_s = __shfl_sync(SR_FULL, mi, 31);
    o->texcl = __shfl_sync(SR_FULL, mi - mine, warp) + is - s;
    const unsigned ai = sr_warp_incl<unsigned>(amine);
    o->blk_a = __shfl_sync(SR_FULL, ai, 31);
    o->aexcl = __shfl_sync(SR_FULL, ai - amine, warp) + ia - a;
    o->A = sr_warp_sum<unsigned>(aall);
    o->B = sr_warp_sum<unsigned>(ball);
}

/* The probe of this lane in [lo, hi] (lo < hi): lo + (hi - lo) * lane / 31 (lane 31: hi), in
 * 32-bit arithmetic: with d = 31 a + b, d * lane / 31 = a * lane + b * lane / 31. */
static __device__ __forceinline__ unsigned sr_probe(unsigned lo, unsigned hi) {
    const unsigned lane = threadIdx.x & 31u, d = hi - lo;
    return lo + d / 31u * lane + d % 31u * lane / 31u;
}

/* One step of the search below, from the ballot hit of the probes x over [*lo, *hi]: returns 1
 * with *res set when the answer is known, else narrows [*lo, *hi]. Warp-uniform. */
static __device__ __forceinline__ int sr_search_step(unsigned hit, unsigned x, unsigned *lo,
                                                     unsigned *hi, unsigned *res) {
    if (!hit) { /* not monotone: impossible, but never loop */
        *res = *hi;
        return 1;
    }
    const int f = __ffs(hit) - 1;
    const unsigned xf = __shfl_sync(SR_FULL, x, f);
    const unsigned xp = __shfl_sync(SR_FULL, x, f > 0 ? f - 1 : 0);
    if (f == 0) {
        *res = xf;
        return 1;
    }
    *lo = xp + 1;
    *hi = xf;
    if (*lo >= *hi) {
        *res = *lo;
        return 1;
    }
    return 0;
}

/* Warp-wide: the smallest q in [lo, hi] with W(q) < w, where that predicate is false below its
 * answer and true from it on (W does not increase with q) and true at hi. 32 probes a step. */
static __device__ unsigned sr_search(sr_u64 w, unsigned lo, unsigned hi, const unsigned *tab) {
    unsigned res = lo;
    if (lo >= hi) return lo;
    for (;;) {
        const unsigned x = sr_probe(lo, hi);
        if (sr_search_step(__ballot_sync(SR_FULL, sr_weight(x, tab) < w), x, &lo, &hi, &res))
            return res;
    }
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

/* The candidate's two limits, for w = W(a) >= 1: *lge = lim(w) as sr_lim_up(w, a) and *lgt =
 * lim(w + 1) knowing W(a) < w + 1, probing a - 2^i first. The two searches are independent;
 * their steps are interleaved (one warp, two ballots a step) so that their latencies overlap.
 * Each answer is the unique smallest q of its predicate, as found by sr_search alone. */
static __device__ void sr_lims(sr_u64 w, unsigned a, const unsigned *tab, unsigned *lge,
                               unsigned *lgt) {
    const unsigned lane = threadIdx.x & 31u;
    const sr_u64 w1 = w + 1;
    const sr_u64 ul = lane < 31 ? (sr_u64)a + (1ull << lane) : SR_QMAX;
    const unsigned xu = ul < SR_QMAX ? (unsigned)ul : SR_QMAX;
    const long long dl = lane < 31 ? (long long)a - (1ll << lane) : 0;
    const unsigned xd = dl > 0 ? (unsigned)dl : 0u;
    const unsigned hit = __ballot_sync(SR_FULL, sr_weight(xu, tab) < w); /* lane 31: W = 0 */
    const unsigned miss = __ballot_sync(SR_FULL, !(sr_weight(xd, tab) < w1));
    unsigned lo0 = 0, hi0 = 0, r0 = SR_QMAX, lo1 = 0, hi1 = 0, r1 = 0;
    int d0 = !hit, d1 = !miss; /* no hit: SR_QMAX; no miss: W(0) < w + 1, so 0 */
    if (hit) {
        const int f = __ffs(hit) - 1;
        const unsigned xf = __shfl_sync(SR_FULL, xu, f);
        const unsigned xp = __shfl_sync(SR_FULL, xu, f > 0 ? f - 1 : 0);
        lo0 = f > 0 ? xp + 1 : a + 1;
        hi0 = xf;
        if (lo0 >= hi0) {
            r0 = lo0;
            d0 = 1;
        }
    }
    if (miss) {
        const int g = __ffs(miss) - 1;
        const unsigned xg = __shfl_sync(SR_FULL, xd, g);
        const unsigned xp = __shfl_sync(SR_FULL, xd, g > 0 ? g - 1 : 0);
        lo1 = xg + 1;
        hi1 = g > 0 ? xp : a;
        if (lo1 >= hi1) {
            r1 = lo1;
            d1 = 1;
        }
    }
    while (!d0 || !d1) {
        const unsigned x0 = d0 ? 0u : sr_probe(lo0, hi0), x1 = d1 ? 0u : sr_probe(lo1, hi1);
        const unsigned h0 = __ballot_sync(SR_FULL, sr_weight(x0, tab) < w);
        const unsigned h1 = __ballot_sync(SR_FULL, sr_weight(x1, tab) < w1);
        if (!d0) d0 = sr_search_step(h0, x0, &lo0, &hi0, &r0);
        if (!d1) d1 = sr_search_step(h1, x1, &lo1, &hi1, &r1);
    }
    *lge = r0;
    *lgt = r1;
}

/* Block-wide lim(w) for w >= 1 (warp 0 searches, from an anchor a with W(a) >= w when
 * anchored, else over [0, SR_QMAX]). Every block of the cluster gets the same answer. */
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

/* ---- passes over a list ------------------------------------------------------------------- */

/* Per-thread accumulators of a pass. */
typedef struct {
    unsigned a, b, woff;
    sr_u64 s;
} sr_acc;

/* One token of a pass: counts q < lgt and q < lge, sums W over q < lgt (W derived only in the
 * warps that need it: every lane runs the same trip count, so the vote is converged) and, when
 * wq is set, appends the token to the compaction buffer if q < plim (a member of the list). */
static __device__ __forceinline__ void sr_acc1(sr_acc *A, unsigned q, unsigned tok, unsigned plim,
                                               unsigned lgt, unsigned lge, unsigned *wq,
                                               unsigned *wi, const unsigned *tab) {
    A->a += q < lgt;
    A->b += q < lge;
    if (__any_sync(SR_FULL, q < lgt)) {
        const sr_u64 w = sr_weight(q, tab);
        A->s += q < lgt ? w : 0;
    }
    if (wq && q < plim) {
        wq[A->woff] = q;
        wi[A->woff] = tok;
        A->woff++;
    }
}

/* sr_acc1 for the four tokens tok .. tok + 3 of a group (the same sums and appends), with one
 * vote for the group and four independent weights (their chains overlap). */
static __device__ __forceinline__ void sr_acc4(sr_acc *A, uint4 v, unsigned tok, unsigned plim,
                                               unsigned lgt, unsigned lge, unsigned *wq,
                                               unsigned *wi, const unsigned *tab) {
    A->a += (unsigned)(v.x < lgt) + (v.y < lgt) + (v.z < lgt) + (v.w < lgt);
    A->b += (unsigned)(v.x < lge) + (v.y < lge) + (v.z < lge) + (v.w < lge);
    const unsigned mn = min(min(v.x, v.y), min(v.z, v.w));
    if (__any_sync(SR_FULL, mn < lgt)) {
        const sr_u64 w0 = sr_weight(v.x, tab), w1 = sr_weight(v.y, tab);
        const sr_u64 w2 = sr_weight(v.z, tab), w3 = sr_weight(v.w, tab);
        A->s += ((v.x < lgt ? w0 : 0) + (v.y < lgt ? w1 : 0)) +
                ((v.z < lgt ? w2 : 0) + (v.w < lgt ? w3 : 0));
    }
    if (wq) {
        const unsigned qq[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int e = 0; e < 4; e++)
            if (qq[e] < plim) {
                wq[A->woff] = qq[e];
                wi[A->woff] = tok + (unsigned)e;
                A->woff++;
            }
    }
}

/* A pass over this thread's chunk of list L: the count of q < lgt, of q < lge and the sum of W
 * over q < lgt (W > w and W >= w for lgt = lim(w + 1), lge = lim(w)); with wq set, the members
 * (q < plim) are copied to wq / wi from index woff on, in order. lgt, lge <= plim. */
template <int SMEM>
static __device__ sr_acc sr_pass(const sr_lay *Y, const sr_row *R, const sr_list *L, unsigned plim,
                                 unsigned lgt, unsigned lge, unsigned *wq, unsigned *wi,
                                 unsigned woff) {
    sr_acc A = {0, 0, woff, 0};
    if (L->buf < 0) {
        const unsigned j0 = threadIdx.x * R->c4;
        for (unsigned i = 0; i < R->c4; i++) {
            const uint4 v = sr_q4<SMEM>(R, j0 + i);
            sr_acc4(&A, v, sr_tok(R, 4u * (j0 + i)), plim, lgt, lge, wq, wi, R->tab);
        }
    } else {
        const unsigned *cq = Y->cq + (size_t)L->buf * Y->cap, *ci = Y->ci + (size_t)L->buf * Y->cap;
        const unsigned e0 = threadIdx.x * L->cc;
        for (unsigned i = 0; i < L->cc; i++) {
            const unsigned e = e0 + i;
            const unsigned q = e < L->n ? cq[e] : SR_QZ;
            sr_acc1(&A, q, e < L->n ? ci[e] : 0u, plim, lgt, lge, wq, wi, R->tab);
        }
    }
    return A;
}

/* Sum of W over the members of L with q < lim (lim <= the list's own limit): per thread
 * (*mine) and the exchange's prefixes and totals (*x). */
template <int SMEM>
static __device__ void sr_mass_below(const sr_lay *Y, unsigned *xk, const sr_row *R,
                                     const sr_list *L, unsigned lim, sr_u64 *mine, sr_xres *x) {
    const sr_acc A = sr_pass<SMEM>(Y, R, L, SR_QMAX, lim, 0, NULL, NULL, 0);
    *mine = A.s;
    sr_exchange(Y, xk, A.s, A.a, 0, x);
}

/* Warp 0: the first of the nb bins of sm->hist where below plus the running sum reaches the
 * goal (count: >= goal; MASS: as a double >= goal_d); sm->sel_bin gets it, sm->sel_below the
 * acc before it. */
template <int MASS>
static __device__ void sr_find_bin(sr_smem *sm, const sr_u64 *hist, unsigned nb, sr_u64 below,
                                   sr_u64 goal, double goal_d) {
    const unsigned lane = threadIdx.x & 31u;
    const unsigned per = (nb + 31u) / 32u, b0 = lane * per;
    const unsigned b1 = b0 + per < nb ? b0 + per : nb;
    sr_u64 ls = 0;
    for (unsigned b = b0; b < b1; b++) ls += hist[b];
    const sr_u64 incl = sr_warp_incl<sr_u64>(ls);
    const sr_u64 acc = below + incl;
    const unsigned hit = __ballot_sync(SR_FULL, MASS ? (double)acc >= goal_d : acc >= goal);
    /* no lane reaches the goal only when the caller's precondition is broken: the last bin */
    const unsigned f = hit ? (unsigned)(__ffs(hit) - 1) : 31u;
    if (lane == f) {
        sr_u64 run = acc - ls;
        unsigned b = b0;
        for (; b < b1; b++) {
            const sr_u64 nx = run + hist[b];
            if (MASS ? (double)nx >= goal_d : nx >= goal) break;
            run = nx;
        }
        if (b >= b1) { /* only without a hit (then f = 31 and acc is the whole) */
            b = nb - 1;
            run = acc - hist[nb - 1];
        }
        sm->sel_bin = b;
        sm->sel_below = run;
    }
}

/* One token of a radix level: among the tokens with q < flim, q < SR_QMAX and q >> hs == prefix,
 * adds 1 (count) or W (MASS) to hist[(q >> sh) & mask]. Counts: the lanes sharing the first
 * lane's digit add once (rows of equal weights would otherwise serialize 32 atomics on one
 * address), the others one by one. Every lane calls it the same number of times. */
template <int MASS>
static __device__ __forceinline__ void sr_hist1(sr_u64 *hist, unsigned q, unsigned flim,
                                                unsigned prefix, unsigned hs, unsigned sh,
                                                unsigned mask, const unsigned *tab) {
    const unsigned lane = threadIdx.x & 31u;
    const int in = q < flim && q < SR_QMAX && (q >> hs) == prefix;
    const unsigned d = (q >> sh) & mask;
    if (MASS) {
        if (in) atomicAdd(&hist[d], sr_weight(q, tab));
        return;
    }
    const unsigned inm = __ballot_sync(SR_FULL, in);
    if (!inm) return;
    const int l0 = __ffs(inm) - 1;
    const unsigned d0 = __shfl_sync(SR_FULL, d, l0);
    const unsigned same = __ballot_sync(SR_FULL, in && d == d0);
    if ((int)lane == l0)
        atomicAdd(&hist[d0], (sr_u64)__popc(same));
    else if (in && d != d0)
        atomicAdd(&hist[d], 1ull);
}

/* One radix level over the members of L with q < flim: a histogram of (q >> sh) & (2^(hs - sh)
 * - 1) by count or by W among those with q >> hs == prefix, summed over the cluster; returns the
 * prefix extended by the bin where the acc (starting at *below) reaches the goal, and updates
 * *below. Level *lvl sums into ghist[*lvl & 1] and clears the other half for the next level
 * (whose pushes come only after this level's cluster barrier; its last readers, the previous
 * level's find_bin, are done by the block barrier below). Every block of the cluster calls it. */
template <int SMEM, int MASS>
static __device__ unsigned sr_radix_level(const sr_lay *Y, unsigned *lvl, const sr_row *R,
                                          const sr_list *L, unsigned flim, unsigned prefix,
                                          unsigned hs, unsigned sh, unsigned nb, sr_u64 *below,
                                          sr_u64 goal, double goal_d) {
    sr_smem *sm = Y->sm;
    const unsigned mask = (1u << (hs - sh)) - 1u, tid = threadIdx.x;
    sr_u64 *gh = Y->ghist + (size_t)(*lvl & 1u) * SR_BINS0;
    sr_u64 *gnext = Y->ghist + (size_t)((*lvl + 1u) & 1u) * SR_BINS0;
    *lvl += 1;
    __syncthreads(); /* earlier readers of lhist, ghist and sel_* are done */
    for (unsigned i = tid; i < nb; i += blockDim.x) Y->lhist[i] = 0;
    if (Y->ncl > 1)
        for (unsigned i = tid; i < SR_BINS0; i += blockDim.x) gnext[i] = 0;
    __syncthreads();
    if (L->buf < 0) {
        const unsigned j0 = tid * R->c4;
        for (unsigned i = 0; i < R->c4; i++) { /* the same trip count in every lane */
            const uint4 v = sr_q4<SMEM>(R, j0 + i);
            sr_hist1<MASS>(Y->lhist, v.x, flim, prefix, hs, sh, mask, R->tab);
            sr_hist1<MASS>(Y->lhist, v.y, flim, prefix, hs, sh, mask, R->tab);
            sr_hist1<MASS>(Y->lhist, v.z, flim, prefix, hs, sh, mask, R->tab);
            sr_hist1<MASS>(Y->lhist, v.w, flim, prefix, hs, sh, mask, R->tab);
        }
    } else {
        const unsigned *cq = Y->cq + (size_t)L->buf * Y->cap;
        const unsigned e0 = tid * L->cc;
        for (unsigned i = 0; i < L->cc; i++) {
            const unsigned e = e0 + i;
            sr_hist1<MASS>(Y->lhist, e < L->n ? cq[e] : SR_QZ, flim, prefix, hs, sh, mask, R->tab);
        }
    }
    __syncthreads();
    const sr_u64 *hist = Y->lhist;
    if (Y->ncl > 1) { /* add this block's histogram into every block's ghist half */
        for (unsigned i = tid; i < nb; i += blockDim.x) {
            const sr_u64 v = Y->lhist[i];
            if (v)
                for (unsigned r = 0; r < Y->ncl; r++) atomicAdd(sr_peer(Y, gh + i, r), v);
        }
        sr_csync(Y->ncl);
        hist = gh;
    }
    if (tid < 32) sr_find_bin<MASS>(sm, hist, nb, *below, goal, goal_d);
    __syncthreads();
    *below = sm->sel_below;
    return (prefix << (hs - sh)) | sm->sel_bin;
}

/* The smallest X such that the members of L with q < flim and q <= X reach the goal: their
 * count >= goal (the goal-th smallest q, whose W is the goal-th largest weight) or, MASS, their
 * summed W as a double >= goal_d. Four passes, one per digit of q: [29:20], [19:12], [11:4],
 * [3:0]. */
template <int SMEM, int MASS>
static __device__ unsigned sr_select(const sr_lay *Y, unsigned *lvl, const sr_row *R,
                                     const sr_list *L, unsigned flim, sr_u64 goal, double goal_d) {
    sr_u64 below = 0;
    unsigned p =
        sr_radix_level<SMEM, MASS>(Y, lvl, R, L, flim, 0, 30, 20, SR_BINS0, &below, goal, goal_d);
    p = sr_radix_level<SMEM, MASS>(Y, lvl, R, L, flim, p, 20, 12, 256, &below, goal, goal_d);
    p = sr_radix_level<SMEM, MASS>(Y, lvl, R, L, flim, p, 12, 4, 256, &below, goal, goal_d);
    p = sr_radix_level<SMEM, MASS>(Y, lvl, R, L, flim, p, 4, 0, 16, &below, goal, goal_d);
    return p;
}

/* The top-k mass M_K (rule 4): the k-th largest weight tk by radix select over the members of L
 * with q < flim (which must hold the k largest weights: the whole row, or every token above a
 * pivot when at least k are), then the sum of W >= tk. */
template <int SMEM>
static __device__ sr_u64 sr_topk_mass(const sr_lay *Y, unsigned *xk, unsigned *lvl, const sr_row *R,
                                      const sr_list *L, unsigned flim, unsigned k, sr_u64 *tk) {
    const unsigned X = sr_select<SMEM, 0>(Y, lvl, R, L, flim, k, 0.0);
    *tk = sr_weight(X, R->tab);
    const unsigned lim = sr_lim_block(Y->sm, *tk, 1, X);
    sr_u64 mine;
    sr_xres x;
    sr_mass_below<SMEM>(Y, xk, R, L, lim, &mine, &x);
    return x.S;
}

/* sr_topk_mass for few members (q < flim, at most SR_SMALL over the cluster, which must hold the k
 * largest weights), each block's in its compacted list L: every block gathers the members'
 * q into its own shared memory (two cluster barriers), and warp 0 finds the k-th smallest q and
 * sums W over the members at or above its weight, with no radix levels, limit search or mass
 * pass. Returns 0 in every block alike (nothing changed, the caller takes sr_topk_mass) when a
 * block's members are not in a compacted list or there are more than SR_SMALL of them. The
 * gather lives in lhist, which nothing else uses between the radix levels (they clear it). */
static __device__ __noinline__ int sr_topk_mass_small(const sr_lay *Y, const sr_list *L,
                                                      unsigned flim, unsigned k, sr_u64 *mass,
                                                      sr_u64 *tk, const unsigned *tab) {
    sr_smem *sm = Y->sm;
    unsigned *g = reinterpret_cast<unsigned *>(Y->lhist); /* [SR_CMAX] counts, then the q */
    const unsigned tid = threadIdx.x, lane = tid & 31u, ncl = Y->ncl, rank = Y->rank;
    const unsigned *cq = L->buf >= 0 ? Y->cq + (size_t)L->buf * Y->cap : NULL;
    const unsigned n_list = L->buf >= 0 ? L->n : 0u;
    if (tid < 32) { /* this block's members: count, or SR_NONE when they are not in a list */
        unsigned cnt = 0;
        for (unsigned e0 = 0; e0 < n_list && cnt <= SR_SMALL; e0 += 32) {
            const unsigned e = e0 + lane;
            cnt += __popc(__ballot_sync(SR_FULL, e < n_list && cq[e] < flim));
        }
        const unsigned v = L->buf < 0 || cnt > SR_SMALL ? SR_NONE : cnt;
        if (lane < ncl) *sr_peer(Y, g + rank, lane) = v;
    }
    sr_csync(ncl);
    unsigned n = 0, off = 0;
    int ok = 1;
    for (unsigned b = 0; b < ncl; b++) {
        const unsigned v = g[b];
        ok &= v != SR_NONE;
        if (ok) {
            n += v;
            if (b < rank) off += v;
        }
    }
    if (!ok || n > SR_SMALL || n < k) return 0; /* the same in every block */
    if (tid < 32) /* the members in list order, after the lower ranks': index order */
        for (unsigned e0 = 0; e0 < n_list; e0 += 32) {
            const unsigned e = e0 + lane;
            const unsigned q = e < n_list ? cq[e] : SR_QZ;
            const unsigned hit = __ballot_sync(SR_FULL, q < flim);
            if (q < flim) {
                const unsigned at = SR_CMAX + off + __popc(hit & ((1u << lane) - 1u));
                for (unsigned r = 0; r < ncl; r++) *sr_peer(Y, g + at, r) = q;
            }
            off += __popc(hit);
        }
    sr_csync(ncl);
    if (tid < 32) {
        /* the k-th smallest q: fewer than k members below it, at least k at or below it */
        unsigned qk = SR_NONE;
        for (unsigned e = lane; e < n; e += 32) {
            const unsigned q = g[SR_CMAX + e];
            unsigned lt = 0, le = 0;
            for (unsigned f = 0; f < n; f++) {
                const unsigned q2 = g[SR_CMAX + f];
                lt += q2 < q;
                le += q2 <= q;
            }
            if (lt < k && k <= le) qk = q;
        }
        qk = __reduce_min_sync(SR_FULL, qk);
        const sr_u64 wk = sr_weight(qk, tab);
        sr_u64 s = 0; /* W >= W(q_k): the top-k mass (equal weights may have other q) */
        for (unsigned e = lane; e < n; e += 32) {
            const sr_u64 w = sr_weight(g[SR_CMAX + e], tab);
            s += w >= wk ? w : 0;
        }
        s = sr_warp_sum<sr_u64>(s);
        if (lane == 0) {
            sm->sel_below = s;
            sm->sel_bin = qk;
        }
    }
    __syncthreads();
    *mass = sm->sel_below;
    *tk = sr_weight(sm->sel_bin, tab);
    __syncthreads(); /* everyone has read them before the next writer */
    return 1;
}

/* Inverse CDF in index order over the members of L with q < plim (W >= lo for plim = lim(lo)),
 * from the last exchange over them (X, this thread's sum tsum): the block whose interval holds
 * the target, in it the warp whose lane's interval holds it, walks that lane's chunk 32 entries
 * at a time; with lims it also finds lim(W_c) and lim(W_c + 1); then it pushes the candidate
 * (-1 if none: impossible when the sums are consistent) with the stamp to every block. The
 * caller's cluster barrier follows; a block whose cand_stamp differs got no candidate. */
template <int SMEM>
static __device__ void sr_pick(const sr_lay *Y, const sr_row *R, const sr_list *L, unsigned plim,
                               sr_u64 tsum, const sr_xres *X, sr_u64 target, unsigned stamp,
                               int lims) {
    if (!(X->blk_s > 0 && X->blk_off <= target && target - X->blk_off < X->blk_s)) return;
    const unsigned lane = threadIdx.x & 31u;
    const sr_u64 tb = target - X->blk_off;
    const unsigned hit = __ballot_sync(SR_FULL, tsum > 0 && X->texcl <= tb && tb - X->texcl < tsum);
    if (!hit) return; /* another warp's */
    const int f = __ffs(hit) - 1;
    const unsigned owner = (threadIdx.x & ~31u) + (unsigned)f;
    const sr_u64 rem = __shfl_sync(SR_FULL, tb - X->texcl, f);
    const unsigned *bq = NULL, *bi = NULL;
    unsigned s0, s1;
    if (L->buf < 0) {
        s0 = owner * 4u * R->c4;
        s1 = s0 + 4u * R->c4;
    } else {
        bq = Y->cq + (size_t)L->buf * Y->cap;
        bi = Y->ci + (size_t)L->buf * Y->cap;
        s0 = owner * L->cc;
        s1 = s0 + L->cc < L->n ? s0 + L->cc : L->n;
    }
    int c = -1;
    unsigned cq = SR_QZ;
    sr_u64 cw = 0, carry = 0;
    for (unsigned base = s0; base < s1; base += 32) {
        const unsigned p = base + lane;
        unsigned q = SR_QZ;
        if (p < s1) q = bq ? bq[p] : sr_q1<SMEM>(R, p);
        const sr_u64 take = q < plim ? sr_weight(q, R->tab) : 0;
        const sr_u64 incl = sr_warp_incl<sr_u64>(take);
        const unsigned h = __ballot_sync(SR_FULL, take != 0 && carry + incl > rem);
        if (h) {
            const int g = __ffs(h) - 1;
            const unsigned pg = base + (unsigned)g;
            c = (int)(bq ? bi[pg] : sr_tok(R, pg));
            cq = __shfl_sync(SR_FULL, q, g);
            cw = __shfl_sync(SR_FULL, take, g);
            break;
        }
        carry += __shfl_sync(SR_FULL, incl, 31);
    }
    unsigned lge = 0, lgt = 0;
    if (lims && c >= 0) {
        sr_lims(cw, cq, R->tab, &lge, &lgt);
    }
    if (lane < Y->ncl) {
        sr_smem *d = sr_peer(Y, Y->sm, lane);
        d->cand = c;
        d->cand_w = cw;
        d->cand_q = cq;
        d->cand_lge = lge;
        d->cand_lgt = lgt;
        d->cand_stamp = stamp;
    }
}

/* Warp-wide, over the SR_NCH chunk minima cm: q_k, the k-th smallest of them (1 <= k <= SR_NCH,
 * ties counted with multiplicity: the smallest with at least k of them at or below it), and
 * *sk = S_k, the sum of W over the k smallest (fewer than k lie below q_k; the rest of the k
 * are copies of q_k). W does not increase with q, so these are the k largest chunk maxima of W
 * and their sum, as the CPU twin's. Integer sums: the same in every warp and block. */
static __device__ unsigned sr_chunk_top(const unsigned *cm, unsigned k, const unsigned *tab,
                                        sr_u64 *sk) {
    const unsigned lane = threadIdx.x & 31u;
    const unsigned v0 = cm[lane], v1 = cm[lane + 32];
    unsigned c0 = 0, c1 = 0;
#pragma unroll 4
    for (unsigned j = 0; j < SR_NCH; j += 4) { /* broadcast 16-byte loads */
        const uint4 x = *(const uint4 *)(cm + j);
        c0 += (unsigned)(x.x <= v0) + (x.y <= v0) + (x.z <= v0) + (x.w <= v0);
        c1 += (unsigned)(x.x <= v1) + (x.y <= v1) + (x.z <= v1) + (x.w <= v1);
    }
    unsigned best = c0 >= k ? v0 : SR_QZ;
    if (c1 >= k && v1 < best) best = v1;
    const unsigned qk = __reduce_min_sync(SR_FULL, best);
    const sr_u64 s = (v0 < qk ? sr_weight(v0, tab) : 0) + (v1 < qk ? sr_weight(v1, tab) : 0);
    const unsigned below = __reduce_add_sync(SR_FULL, (unsigned)(v0 < qk) + (v1 < qk));
    *sk = sr_warp_sum<sr_u64>(s) + (sr_u64)(k - below) * sr_weight(qk, tab);
    return qk;
}

/* ---- the short path ------------------------------------------------------------------------ */

/* A logit as an unsigned key whose order is the floats' (0: none; -inf and every real are > 0),
 * and back. */
static __device__ __forceinline__ unsigned sr_key(float x) {
    const unsigned b = __float_as_uint(x);
    return (b & 0x80000000u) ? ~b : b | 0x80000000u;
}

static __device__ __forceinline__ float sr_unkey(unsigned k) {
    return __uint_as_float((k & 0x80000000u) ? k & 0x7FFFFFFFu : ~k);
}

/* q of the local group j from the logits themselves (the slice in shared memory still holds
 * them before the long path's q pass), SR_QZ past the block's last group. */
template <int SMEM>
static __device__ __forceinline__ uint4 sr_q4_logits(const sr_row *R, unsigned j) {
    if (j >= R->ng) return make_uint4(SR_QZ, SR_QZ, SR_QZ, SR_QZ);
    return sr_q4_of(sr_logits4<SMEM>(R, j), R);
}

template <typename T> static __device__ __forceinline__ T sr_warp_max(T x) {
#pragma unroll
    for (unsigned off = 16; off > 0; off >>= 1) {
        const T y = __shfl_xor_sync(SR_FULL, x, off);
        x = y > x ? y : x;
    }
    return x;
}

/* Over the n entries of the short list (entry 32 it + lane in w[it], 0 past n): the k-th largest
 * weight *tk (k <= n) and the mass at or above it, returned; with lim >= 0, *tp = the largest
 * weight whose mass at or above it reaches lim ((double) mass >= lim, the top-p threshold).
 * Warp-wide; each entry is ranked against all n (n <= SR_SHORT, so at most 4 x 128 steps). */
static __device__ sr_u64 sr_short_topk(const sr_u64 *w, unsigned n, unsigned k, double lim,
                                       sr_u64 *tk, sr_u64 *tp) {
    const unsigned lane = threadIdx.x & 31u;
    unsigned gt[4] = {0, 0, 0, 0}, ge[4] = {0, 0, 0, 0};
    sr_u64 mge[4] = {0, 0, 0, 0};
#pragma unroll
    for (int it2 = 0; it2 < 4; it2++) {
        if (32u * (unsigned)it2 >= n) break;
        const unsigned jn = n - 32u * (unsigned)it2 < 32u ? n - 32u * (unsigned)it2 : 32u;
        for (unsigned jj = 0; jj < jn; jj++) {
            const sr_u64 v = __shfl_sync(SR_FULL, w[it2], jj);
#pragma unroll
            for (int it = 0; it < 4; it++) {
                gt[it] += v > w[it];
                ge[it] += v >= w[it];
                mge[it] += v >= w[it] ? v : 0;
            }
        }
    }
    sr_u64 t = 0, p = 0;
#pragma unroll
    for (int it = 0; it < 4; it++) {
        if (32u * (unsigned)it + lane >= n) continue;
        if (gt[it] < k && k <= ge[it]) t = w[it];
        if (lim >= 0.0 && (double)mge[it] >= lim && w[it] > p) p = w[it];
    }
    t = sr_warp_max<sr_u64>(t);
    *tk = t;
    if (tp) *tp = sr_warp_max<sr_u64>(p);
    sr_u64 m = 0;
#pragma unroll
    for (int it = 0; it < 4; it++) m += w[it] >= t ? w[it] : 0;
    return sr_warp_sum<sr_u64>(m);
}

/* The first entry in index order whose running sum of the weights w >= lo exceeds target:
 * *c and *wc, or 0 when none does (inconsistent sums: impossible). Warp-wide. */
static __device__ int sr_short_pick(const sr_u64 *w, const unsigned *tok, unsigned n, sr_u64 lo,
                                    sr_u64 target, int32_t *c, sr_u64 *wc) {
    const unsigned lane = threadIdx.x & 31u;
    sr_u64 carry = 0;
#pragma unroll
    for (int it = 0; it < 4; it++) {
        if (32u * (unsigned)it >= n) break;
        const sr_u64 take = 32u * (unsigned)it + lane < n && w[it] >= lo ? w[it] : 0;
        const sr_u64 incl = sr_warp_incl<sr_u64>(take);
        const unsigned h = __ballot_sync(SR_FULL, take != 0 && carry + incl > target);
        if (h) {
            const int g = __ffs(h) - 1;
            *c = (int32_t)__shfl_sync(SR_FULL, tok[it], g);
            *wc = __shfl_sync(SR_FULL, w[it], g);
            return 1;
        }
        carry += __shfl_sync(SR_FULL, incl, 31);
    }
    return 0;
}

/* This block's largest logit per chunk (of ceil(V / SR_NCH) tokens), as sr_key, into sm->kmax:
 * thread t's groups [t c4, (t + 1) c4) are consecutive tokens, so a running maximum per group
 * of 4 serves but for the group holding the next chunk boundary (as the long path's q pass). */
template <int SMEM> static __device__ void sr_chunk_keys(sr_smem *sm, const sr_row *R) {
    const unsigned clen = (R->V + SR_NCH - 1) / SR_NCH, lane = threadIdx.x & 31u;
    const unsigned j0 = threadIdx.x * R->c4;
    const int t0 = (int)(4u * (R->g0 + j0)) - (int)R->h0; /* this thread's first token */
    unsigned cur = (t0 > 0 ? (unsigned)t0 : 0u) / clen, cend = (cur + 1u) * clen, km = 0;
    for (unsigned i = 0; i < R->c4; i++) {
        const unsigned j = j0 + i;
        if (j >= R->ng) break;
        const float4 x = sr_logits4<SMEM>(R, j);
        const unsigned k4[4] = {sr_key(x.x), sr_key(x.y), sr_key(x.z), sr_key(x.w)};
        const int tg = t0 + 4 * (int)i;
        if (tg >= 0 && tg + 3 < (int)R->V && (unsigned)tg + 3u < cend) {
            km = max(km, max(max(k4[0], k4[1]), max(k4[2], k4[3])));
            continue;
        }
#pragma unroll
        for (int e = 0; e < 4; e++) { /* slots outside the row hold -inf: skipped */
            const int t = tg + e;
            if (t < 0 || t >= (int)R->V) continue;
            while ((unsigned)t >= cend) {
                if (km) atomicMax(&sm->kmax[cur], km);
                km = 0;
                cur++;
                cend += clen;
            }
            km = max(km, k4[e]);
        }
    }
    const unsigned same = __match_any_sync(SR_FULL, cur); /* lanes sharing a chunk: once */
    km = __reduce_max_sync(same, km);
    if (lane == (unsigned)(__ffs(same) - 1) && km) atomicMax(&sm->kmax[cur], km);
}

/* The rounds of the short path: the CPU twin's rounds from the first pivot w_k - 1 and its exact
 * fallback (sample_rejection.c), by warp 0 of the cluster's block 0 alone, on the n <= SR_SHORT
 * tokens above that pivot. Every kept token and every one of the top k is among them, so each
 * round's counts and masses, the top-k mass and the fallback's thresholds come from this list,
 * with no pass over the row and no cluster barrier. The blocks' lists (W in cq, read as u64, and
 * the token in ci) start at entry b * SR_SHORT for block b (sm->bcnt[b] of them), each in index
 * order, so that in rank order they are in the row's. Returns the token. */
static __device__ __noinline__ int32_t sr_short_rounds(const sr_lay *Y, const sr_smem *sm,
                                                       unsigned n, unsigned k, sr_u64 pivot,
                                                       float top_p, sr_u64 wmin,
                                                       unsigned max_rounds) {
    const unsigned lane = threadIdx.x & 31u;
    /* entry e is entry e - off[b] of block b's list, b the last block with off[b] <= e */
    const unsigned cnt = lane < Y->ncl ? sm->bcnt[lane] : 0u;
    const unsigned off = sr_warp_incl<unsigned>(cnt) - cnt;
    unsigned blk[4] = {0, 0, 0, 0}, boff[4] = {0, 0, 0, 0};
    for (unsigned b = 1; b < Y->ncl; b++) {
        const unsigned ob = __shfl_sync(SR_FULL, off, b);
#pragma unroll
        for (int it = 0; it < 4; it++)
            if (32u * (unsigned)it + lane >= ob) blk[it] = b, boff[it] = ob;
    }
    const sr_u64 *lw = (const sr_u64 *)Y->cq;
    sr_u64 w[4];
    unsigned tok[4];
    sr_u64 mass_above = 0;
#pragma unroll
    for (int it = 0; it < 4; it++) {
        const unsigned e = 32u * (unsigned)it + lane;
        const unsigned at = blk[it] * SR_SHORT + e - boff[it];
        w[it] = e < n ? lw[at] : 0;
        tok[it] = e < n ? Y->ci[at] : 0u;
        mass_above += w[it];
    }
    mass_above = sr_warp_sum<sr_u64>(mass_above);
    unsigned n_above = n;
    const int top_p_on = top_p < 1.0f;
    int have_mk = !top_p_on;
    sr_u64 mass_topk = 0, tk;
    for (unsigned rd = 0; rd < max_rounds; rd++) {
        int32_t c;
        sr_u64 wc;
        if (!sr_short_pick(w, tok, n, pivot + 1, ni_canon_target(sm->u[rd], mass_above), &c, &wc))
            return NI_SAMPLE_INVALID;
        /* every token at or above wc is above the pivot, so in the list */
        unsigned cnt_gt = 0, cnt_ge = 0;
        sr_u64 s_gt = 0, s_ge = 0;
#pragma unroll
        for (int it = 0; it < 4; it++) {
            const int in = 32u * (unsigned)it + lane < n;
            cnt_gt += __popc(__ballot_sync(SR_FULL, in && w[it] > wc));
            cnt_ge += __popc(__ballot_sync(SR_FULL, in && w[it] >= wc));
            s_gt += w[it] > wc ? w[it] : 0;
            s_ge += w[it] >= wc ? w[it] : 0;
        }
        s_gt = sr_warp_sum<sr_u64>(s_gt);
        s_ge = sr_warp_sum<sr_u64>(s_ge);
        int ok = wc >= wmin && cnt_gt < k;
        if (ok && top_p_on && s_gt > 0) {
            if (!have_mk && cnt_ge >= k) { /* c's tie group holds the k-th largest */
                mass_topk = s_ge;
                have_mk = 1;
            }
            if (have_mk) {
                ok = (double)s_gt < ni_canon_topp_limit(top_p, mass_topk);
            } else if ((double)s_gt < ni_canon_topp_limit(top_p, s_ge)) {
                ok = 1; /* M_K >= s_ge */
            } else if (n_above >= k && !((double)s_gt < ni_canon_topp_limit(top_p, mass_above))) {
                ok = 0; /* M_K <= the mass above the pivot */
            } else {
                mass_topk = sr_short_topk(w, n, k, -1.0, &tk, NULL);
                have_mk = 1;
                ok = (double)s_gt < ni_canon_topp_limit(top_p, mass_topk);
            }
        }
        if (ok) return c;
        pivot = wc;
        mass_above = s_gt;
        n_above = cnt_gt;
    }
    /* exact fallback (ni_samp_kept_threshold): theta = max(min-p, top-k, top-p thresholds), all
     * at or above the k-th largest weight, so in the list; one draw (index max_rounds) */
    sr_u64 tp = 0;
    const sr_u64 mk = sr_short_topk(w, n, k, -1.0, &tk, NULL);
    if (top_p_on) sr_short_topk(w, n, k, ni_canon_topp_limit(top_p, mk), &tk, &tp);
    sr_u64 theta = wmin > tk ? wmin : tk;
    if (tp > theta) theta = tp;
    sr_u64 mass = 0;
#pragma unroll
    for (int it = 0; it < 4; it++) mass += w[it] >= theta ? w[it] : 0;
    mass = sr_warp_sum<sr_u64>(mass);
    int32_t c;
    sr_u64 wc;
    if (!sr_short_pick(w, tok, n, theta, ni_canon_target(sm->u[max_rounds], mass), &c, &wc))
        return NI_SAMPLE_INVALID;
    return c;
}

/* ---- the kernel ---------------------------------------------------------------------------- */

template <int SMEM, int NT>
__global__ void __launch_bounds__(NT, 1)
    sr_kernel(int32_t *tokens,                // (B)
              const float *logits,            // (B, V)
              const uint64_t *seq_ids,        // (B) or NULL (then the row index)
              const uint32_t *steps,          // (B) or NULL (then 0)
              const ni_sample_params *params, // (1)
              size_t V, unsigned max_rounds, unsigned ncl, unsigned cap) {
    NI_TL_SCOPE(NI_TL_SAMPLER);
    extern __shared__ uint4 sr_dyn[];
    ni_pdl_wait(); /* logits, steps and parameters come from earlier kernels or copies */
    NI_TL_WAITED();
    sr_smem *sm = (sr_smem *)sr_dyn;
    const size_t r = blockIdx.x / ncl;
    const unsigned rank = blockIdx.x % ncl; /* the cluster is ncl consecutive blocks */
    const unsigned tid = threadIdx.x, lane = tid & 31u, warp = tid >> 5;
    const int writer = rank == 0 && tid == 0;
    const ni_sample_params P = *params;

    /* rule 1 for the parameters, rule 2 */
    if (P.temperature != P.temperature || P.top_p != P.top_p || P.min_p != P.min_p) {
        if (writer) tokens[r] = NI_SAMPLE_INVALID;
        return;
    }
    const int greedy = P.top_k == 1 || ni_canon_temp_greedy(P.temperature);
    /* the short path (sr_short_rounds) may serve the row: a function of the launch alone */
    const int shortk = NI_REJECTION_PIVOT_DIV == 1 && !greedy && max_rounds > 0 && P.top_k >= 2 &&
                       P.top_k <= SR_NCH && (size_t)P.top_k < V && V >= SR_SHORT_MIN_V &&
                       cap >= ncl * SR_SHORT;

    const unsigned ns4 = (unsigned)((V + 6) / 4), G = (ns4 + ncl - 1) / ncl;
    const sr_offs O = sr_offsets(ncl, G, SMEM, cap);
    sr_lay Y;
    Y.sm = sm;
    Y.xs = (sr_u64 *)((char *)sr_dyn + O.xs);
    Y.xa = (unsigned *)((char *)sr_dyn + O.xa);
    Y.xb = (unsigned *)((char *)sr_dyn + O.xb);
    Y.lhist = (sr_u64 *)((char *)sr_dyn + O.lhist);
    Y.ghist = (sr_u64 *)((char *)sr_dyn + O.ghist);
    Y.cq = (unsigned *)((char *)sr_dyn + O.cq);
    Y.ci = (unsigned *)((char *)sr_dyn + O.ci);
    Y.ncl = ncl;
    Y.rank = rank;
    Y.cap = cap;

    sr_row R;
    R.row = logits + r * V;
    R.V = (unsigned)V;
    R.h0 = (unsigned)(((uintptr_t)R.row >> 2) & 3u);
    R.ns4 = ns4;
    R.g0 = rank * G;
    R.ng = R.g0 < ns4 ? (ns4 - R.g0 < G ? ns4 - R.g0 : G) : 0u;
    R.c4 = ((R.ng + NT - 1) / NT) | 1u;
    R.q4 = (uint4 *)((char *)sr_dyn + O.row);
    R.m = 0.0f;
    R.s = 0.0f;
    R.tab = sm->tab;

    /* Before the first full cluster barrier: the fields set here are pushed to only after it
     * (the pushes before it, after sr_cluster_wait, go to xmax, xarg and xbad alone). */
    if (!shortk) sr_cluster_arrive(ncl);
    if (tid == 0) {
        sr_init_tab(sm->tab);
        sm->cand_stamp = SR_NONE;
    }
    if (ncl > 1)
        for (unsigned i = tid; i < 2 * SR_BINS0; i += NT) Y.ghist[i] = 0;
    if (tid < SR_NCH) {
        sm->cmin[tid] = SR_QZ;
        sm->ccmin[tid] = SR_QZ;
    }
    if (!greedy && tid <= max_rounds) {
        const uint64_t seq = seq_ids ? seq_ids[r] : (uint64_t)r;
        const uint32_t step = steps ? steps[r] : 0u;
        sm->u[tid] = ni_rng_uniform(P.seed, seq, step, tid);
    }
    if (shortk) { /* the chunk maxima are zero before any peer's go in (and this block's, after
                     the barrier that ends the read below) */
        if (tid < SR_NCH) sm->kmax[tid] = sm->ckmax[tid] = 0u;
        sr_cluster_arrive_release(ncl);
    }

    /* (1) read the slice: max, argmax, validity; keep it in shared memory */
    float best = -INFINITY;
    unsigned arg = SR_NONE;
    int bad = 0;
    for (unsigned j0 = tid; j0 < R.ng; j0 += NT * SR_UNROLL) {
        float4 x[SR_UNROLL];
#pragma unroll
        for (int u = 0; u < SR_UNROLL; u++) {
            const unsigned j = j0 + (unsigned)u * NT;
            x[u] = j < R.ng ? sr_ld4(&R, R.g0 + j)
                            : make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
        }
#pragma unroll
        for (int u = 0; u < SR_UNROLL; u++) {
            const unsigned j = j0 + (unsigned)u * NT;
            const float xv[4] = {x[u].x, x[u].y, x[u].z, x[u].w};
#pragma unroll
            for (int e = 0; e < 4; e++) {
                bad |= (xv[e] != xv[e]) | (xv[e] == INFINITY);
                if (xv[e] > best) { /* increasing index per thread: the lowest wins ties */
                    best = xv[e];
                    arg = sr_tok(&R, 4u * j + (unsigned)e);
                }
            }
            if (SMEM && !greedy && j < R.ng)
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
    if (shortk) {
        sr_chunk_keys<SMEM>(sm, &R);
        __syncthreads();
    }
    sr_cluster_wait(ncl);  /* every block of the cluster has started */
    if (shortk && ncl > 1) /* one thread per (chunk, block): reductions, seen after the barrier */
        for (unsigned i = tid; i < SR_NCH * ncl; i += NT) {
            const unsigned v = sm->kmax[i % SR_NCH];
            if (v) atomicMax(sr_peer(&Y, &sm->ckmax[i % SR_NCH], i / SR_NCH), v);
        }
    if (warp == 0) { /* the block's result, pushed to every block of the cluster */
        best = lane < NT / 32 ? sm->wmaxv[lane] : -INFINITY;
        arg = lane < NT / 32 ? sm->wmaxi[lane] : SR_NONE;
        bad = lane < NT / 32 ? sm->wbad[lane] : 0;
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
        best = __shfl_sync(SR_FULL, best, 0);
        arg = __shfl_sync(SR_FULL, arg, 0);
        bad = __shfl_sync(SR_FULL, bad, 0);
        if (lane < ncl) {
            sr_smem *d = sr_peer(&Y, sm, lane);
            d->xmax[rank] = best;
            d->xarg[rank] = arg;
            d->xbad[rank] = bad;
        }
    }
    sr_csync(ncl);
    best = sm->xmax[0];
    arg = sm->xarg[0];
    bad = sm->xbad[0];
    for (unsigned b = 1; b < ncl; b++) { /* rank order is index order */
        const float ov = sm->xmax[b];
        const unsigned oi = sm->xarg[b];
        bad |= sm->xbad[b];
        if (ov > best || (ov == best && oi < arg)) {
            best = ov;
            arg = oi;
        }
    }
    if (bad || arg == SR_NONE) { /* NaN or +inf, or no finite logit */
        if (writer) tokens[r] = NI_SAMPLE_INVALID;
        return;
    }
    if (greedy) {
        if (writer) tokens[r] = (int32_t)arg;
        return;
    }
    R.m = best;
    R.s = ni_canon_scale(P.temperature);

    /* The short path. The chunk maxima of the logits give those of W (q is monotone in the
     * logit), hence q_k, w_k = W(q_k) and the first pivot w_k - 1 (sample_rejection.c). One pass
     * lists the tokens above it (q < lim(w_k)) into block 0 and finds whether any token below it
     * has positive weight (W of the smallest q outside the list); after one cluster barrier,
     * when the list is short and the first pivot applies, block 0's first warp runs the rounds on
     * it alone (sr_short_rounds) and the other blocks are done. Else the long path below. */
    if (shortk) {
        const unsigned ks = P.top_k;
        const unsigned *cx = ncl > 1 ? sm->ckmax : sm->kmax;
        if (tid < SR_NCH) sm->kq[tid] = cx[tid] ? sr_q(sr_unkey(cx[tid]), R.m, R.s) : SR_QZ;
        __syncthreads();
        if (warp == 0) {
            sr_u64 sk;
            const unsigned qk = sr_chunk_top(sm->kq, ks, R.tab, &sk);
            const sr_u64 wk = sr_weight(qk, R.tab);
            const unsigned lk = wk > 1 ? sr_lim_up(wk, qk, R.tab) : 0u;
            if (lane == 0) {
                sm->slim = lk;
                sm->swk = wk;
            }
        }
        __syncthreads();
        const unsigned lk = sm->slim; /* 0: w_k <= 1, no first pivot */
        if (lk) {
            const unsigned j0 = tid * R.c4;
            unsigned cnt = 0, qout = SR_QZ;
            for (unsigned i = 0; i < R.c4; i++) {
                const uint4 v = sr_q4_logits<SMEM>(&R, j0 + i);
                cnt += (unsigned)(v.x < lk) + (v.y < lk) + (v.z < lk) + (v.w < lk);
                qout = min(qout, min(min(v.x < lk ? SR_QZ : v.x, v.y < lk ? SR_QZ : v.y),
                                     min(v.z < lk ? SR_QZ : v.z, v.w < lk ? SR_QZ : v.w)));
            }
            const unsigned incl = sr_warp_incl<unsigned>(cnt);
            const int pos = __any_sync(SR_FULL, sr_weight(qout, R.tab) != 0);
            if (lane == 31) sm->wcnt[warp] = incl;
            if (lane == 0) sm->wpos[warp] = (unsigned)pos;
            __syncthreads();
            unsigned off = incl - cnt, btot = 0, bpos = 0;
            for (unsigned w2 = 0; w2 < NT / 32; w2++) {
                const unsigned c2 = sm->wcnt[w2];
                off += w2 < warp ? c2 : 0u;
                btot += c2;
                bpos |= sm->wpos[w2];
            }
            if (btot <= SR_SHORT && cnt) { /* this thread's tokens above the pivot, in order */
                sr_u64 *dw = sr_peer(&Y, (sr_u64 *)Y.cq, 0) + rank * SR_SHORT;
                unsigned *di = sr_peer(&Y, Y.ci, 0) + rank * SR_SHORT;
                for (unsigned i = 0; i < R.c4; i++) {
                    const uint4 v = sr_q4_logits<SMEM>(&R, j0 + i);
                    const unsigned qq[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        if (qq[e] < lk) {
                            dw[off] = sr_weight(qq[e], R.tab);
                            di[off] = sr_tok(&R, 4u * (j0 + i) + (unsigned)e);
                            off++;
                        }
                }
            }
            if (warp == 0 && lane < ncl) {
                sr_smem *d = sr_peer(&Y, sm, lane);
                d->bcnt[rank] = btot;
                d->bpos[rank] = bpos;
            }
            sr_csync(ncl);
            unsigned n = 0, fits = 1, any = 0;
            for (unsigned b = 0; b < ncl; b++) {
                n += sm->bcnt[b];
                fits &= sm->bcnt[b] <= SR_SHORT;
                any |= sm->bpos[b];
            }
            /* n >= k tokens have W >= w_k; k < n_pos (else top-k is off) when n > k or a token
             * below them has positive weight; then S_k < the row's mass, so the first pivot
             * applies (NI_REJECTION_PIVOT_DIV = 1) */
            if (fits && n <= SR_SHORT && (n > ks || any)) {
                if (rank == 0 && warp == 0) {
                    const int32_t c = sr_short_rounds(&Y, sm, n, ks, sm->swk - 1, P.top_p,
                                                      ni_canon_minp_weight(P.min_p), max_rounds);
                    if (lane == 0) tokens[r] = c;
                }
                return;
            }
        }
    }

    /* (2) q and W per token: the row's mass and the per-thread sums of round 0; with a top-k
     * that the first pivot may serve, the smallest q of each chunk. This thread's tokens are
     * consecutive and a chunk (ceil(V / SR_NCH) tokens) is much longer than a thread's run, so
     * the run crosses a chunk boundary rarely: a running minimum per group of 4 (padding and
     * tokens of zero weight have q = SR_QZ, which a minimum ignores), and only the group that
     * holds the next boundary (local group ib) goes token by token, flushing the minimum into
     * the block's cmin and moving to the next chunk (the lanes sharing the last chunk flush once
     * at the end). No chunks: ib = SR_NONE, never reached. */
    sr_u64 tsum = 0;
    unsigned npos = 0;
    const int chunks = max_rounds > 0 && P.top_k >= 2 && P.top_k <= SR_NCH && (size_t)P.top_k < V;
    {
        const unsigned j0 = tid * R.c4;
        const unsigned clen = (unsigned)((V + SR_NCH - 1) / SR_NCH);
        const int t0 = (int)(4u * (R.g0 + j0)) - (int)R.h0; /* this thread's first token */
        unsigned ccur = (t0 > 0 ? (unsigned)t0 : 0u) / clen, cmn = SR_QZ;
        unsigned ib = chunks ? (unsigned)((int)((ccur + 1) * clen) - t0) >> 2 : SR_NONE;
        for (unsigned i = 0; i < R.c4; i++) {
            const unsigned j = j0 + i;
            if (j >= R.ng) break;
            const uint4 v = sr_q4_logits<SMEM>(&R, j);
            if (SMEM) R.q4[j] = v; /* the slice holds q from here on */
            const unsigned qq[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const sr_u64 w = sr_weight(qq[e], R.tab);
                tsum += w;
                npos += w != 0;
            }
            if (i != ib) {
                cmn = min(cmn, min(min(v.x, v.y), min(v.z, v.w)));
            } else { /* the group holding the end of chunk ccur: token by token */
                const int tg = t0 + 4 * (int)i;
                unsigned cend = (ccur + 1) * clen;
                for (int e = 0; e < 4; e++) {
                    if (tg + e < 0 || tg + e >= (int)V) continue; /* padding */
                    while ((unsigned)(tg + e) >= cend) {
                        if (cmn != SR_QZ) atomicMin(&sm->cmin[ccur], cmn);
                        cmn = SR_QZ;
                        ccur++;
                        cend += clen;
                    }
                    cmn = min(cmn, qq[e]);
                }
                ib = (unsigned)((int)cend - t0) >> 2; /* the next boundary's group (> i) */
            }
        }
        if (chunks) { /* the lanes sharing a chunk (consecutive ones) flush their minimum once */
            const unsigned same = __match_any_sync(SR_FULL, ccur);
            cmn = __reduce_min_sync(same, cmn);
            if (lane == (unsigned)(__ffs(same) - 1) && cmn != SR_QZ)
                atomicMin(&sm->cmin[ccur], cmn);
        }
    }
    /* the tokens of positive weight are q < lim(1) (a few q just below SR_QMAX give W = 0) */
    unsigned plim = sr_lim_block(sm, 1, 0, 0); /* its block barrier: the block's cmin is done */
    if (chunks && ncl > 1) /* one thread per (chunk, block): reductions, no return */
        for (unsigned i = tid; i < SR_NCH * ncl; i += NT) {
            const unsigned v = sm->cmin[i % SR_NCH];
            if (v != SR_QZ) atomicMin(sr_peer(&Y, &sm->ccmin[i % SR_NCH], i / SR_NCH), v);
        }
    unsigned xk = 0, lvl = 0; /* exchanges and radix levels so far (the same in every block) */
    sr_xres X;
    sr_exchange(&Y, &xk, tsum, npos, 0, &X); /* its cluster barrier: every push to ccmin is seen */
    const sr_u64 total = X.S;
    const unsigned n_pos = X.A;

    /* the filter in the weight domain (as ni_samp_prepare and ni_samp_finish_row) */
    unsigned k = (P.top_k >= 2 && (size_t)P.top_k < V) ? P.top_k : 0u;
    if (k >= n_pos) k = 0;
    const int top_p_on = P.top_p < 1.0f;
    const sr_u64 wmin = ni_canon_minp_weight(P.min_p);

    /* (3) rounds. Lp: the list the last pass read (the pick walks it: X and tsum are over it);
     * Ln: the list the next pass reads (Lp, or the compacted copy the last pass wrote). */
    const sr_list Lfull = {-1, 0, 0};
    sr_list Lp = Lfull, Ln = Lfull;
    sr_list Ltk = Lfull; /* a list that holds every token of the top k (members q < ltk) */
    unsigned ltk = SR_QMAX;
    sr_u64 mass_above = total, mass_topk = total;
    unsigned n_above = n_pos;
    int have_mk = !k || !top_p_on;
    if (chunks && k) { /* the first pivot (sample_rejection.c): w_k - 1 for w_k = W(q_k) */
        sr_u64 sk;
        const unsigned qk = sr_chunk_top(ncl > 1 ? sm->ccmin : sm->cmin, k, R.tab, &sk);
        const sr_u64 wk = sr_weight(qk, R.tab);
        /* pivot wk - 1 > 0 (the tokens above it are q < lim(wk)), unless the k largest chunk
         * maxima hold 1 / NI_REJECTION_PIVOT_DIV of the mass: then from the whole row */
        if (wk > 1 && sk * NI_REJECTION_PIVOT_DIV < total) {
            const unsigned lk = sr_lim_block(sm, wk, 1, qk);
            sr_mass_below<SMEM>(&Y, &xk, &R, &Lfull, lk, &tsum, &X);
            plim = lk; /* as after a rejected candidate of weight wk - 1 (no compaction) */
            mass_above = X.S;
            n_above = X.A;
        }
    }
    for (unsigned rd = 0; rd < max_rounds; rd++) {
        const sr_u64 target = ni_canon_target(sm->u[rd], mass_above);
        sr_pick<SMEM>(&Y, &R, &Lp, plim, tsum, &X, target, rd, 1);
        sr_csync(ncl);
        const int c = sm->cand;
        const sr_u64 wc = sm->cand_w;
        const unsigned lge = sm->cand_lge, lgt = sm->cand_lgt;
        if (sm->cand_stamp != rd ||
            c < 0) { /* inconsistent sums: impossible, never a wrong token */
            if (writer) tokens[r] = NI_SAMPLE_INVALID;
            return;
        }
        /* the max is always kept; with neither top-k nor top-p only min-p decides */
        if (wc == SR_WMAX || (!k && !top_p_on && wc >= wmin)) {
            if (writer) tokens[r] = c;
            return;
        }
        /* the tokens above and at the candidate's weight; the members of Ln (q < plim) are
         * copied to the other buffer when they fit and the offsets (the last exchange's count
         * prefixes) are in Ln's layout, i.e. when the last pass did not compact */
        const unsigned len = Ln.buf < 0 ? 4u * R.ng : Ln.n;
        const int wr = cap > 0 && Ln.buf == Lp.buf && X.blk_a <= cap && X.blk_a < len;
        const int dst = Ln.buf < 0 ? 0 : 1 - Ln.buf;
        const sr_acc A =
            sr_pass<SMEM>(&Y, &R, &Ln, plim, lgt, lge, wr ? Y.cq + (size_t)dst * cap : NULL,
                          wr ? Y.ci + (size_t)dst * cap : NULL, X.aexcl);
        sr_xres Xn;
        sr_exchange(&Y, &xk, A.s, A.a, A.b, &Xn);
        const sr_list Lread = Ln;
        if (wr) {
            Ln.buf = dst;
            Ln.n = X.blk_a;
            Ln.cc = ((X.blk_a + NT - 1) / NT) | 1u;
            if (n_above >= k) { /* at least k above the pivot: the copy holds the top k */
                Ltk = Ln;
                ltk = plim;
            } else if (Ltk.buf == dst) { /* overwritten */
                Ltk = Lfull;
                ltk = SR_QMAX;
            }
        }
        Lp = Lread;
        const sr_u64 s_gt = Xn.S;
        const unsigned cnt_gt = Xn.A, cnt_ge = Xn.B;
        const sr_u64 s_ge = s_gt + wc * (sr_u64)(cnt_ge - cnt_gt);

        /* exactly the CPU's decision (cluster-uniform: every input is) */
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
                /* the k largest lie above the pivot when at least k tokens do: select among
                 * its members (q < plim), in the copy this pass just compacted when it did (a
                 * few dozen entries after the first pivot, instead of the slice); else among
                 * the last compacted copy known to hold them (Ltk), else over the whole row.
                 * Blocks may differ in the list (compaction is per block), not in the result:
                 * every list holds the k largest, and the extra tokens are all below them */
                const int above = n_above >= k;
                sr_u64 tk;
                if (!(NT == SR_THREADS_CL && above && n_above <= SR_SMALL && /* not in the
                                                   1,024-thread instance: it would spill more */
                      sr_topk_mass_small(&Y, &Ln, plim, k, &mass_topk, &tk, R.tab)))
                    mass_topk = sr_topk_mass<SMEM>(&Y, &xk, &lvl, &R, above ? &Ln : &Ltk,
                                                   above ? plim : ltk, k, &tk);
                have_mk = 1;
                ok = (double)s_gt < ni_canon_topp_limit(P.top_p, mass_topk);
            }
        }
        if (ok) {
            if (writer) tokens[r] = c;
            return;
        }
        plim = lgt; /* the pivot is wc now */
        mass_above = s_gt;
        n_above = cnt_gt;
        tsum = A.s;
        X = Xn;
    }

    /* exact fallback: the kept threshold (as ni_samp_kept_threshold), one draw */
    sr_u64 theta = wmin, mk = total;
    if (k) {
        sr_u64 tk;
        mk = sr_topk_mass<SMEM>(&Y, &xk, &lvl, &R, &Lfull, SR_QMAX, k, &tk);
        if (tk > theta) theta = tk;
    }
    if (top_p_on) {
        const double lim = ni_canon_topp_limit(P.top_p, mk);
        const unsigned Xp = sr_select<SMEM, 1>(&Y, &lvl, &R, &Lfull, SR_QMAX, 0, lim);
        const sr_u64 tp = sr_weight(Xp, R.tab);
        if (tp > theta) theta = tp;
    }
    const sr_u64 lo = theta ? theta : 1;
    const unsigned L = sr_lim_block(sm, lo, 0, 0);
    sr_u64 mine;
    sr_xres Xf;
    sr_mass_below<SMEM>(&Y, &xk, &R, &Lfull, L, &mine, &Xf);
    sr_pick<SMEM>(&Y, &R, &Lfull, L, mine, &Xf, ni_canon_target(sm->u[max_rounds], Xf.S),
                  max_rounds, 0);
    sr_csync(ncl);
    if (writer) tokens[r] = sm->cand_stamp == max_rounds ? sm->cand : NI_SAMPLE_INVALID;
}

/* ---- launch ------------------------------------------------------------------------------- */

__global__ void sr_fill_invalid_kernel(int32_t *tokens, size_t B) {
    ni_pdl_wait(); /* tokens may still be read by the previous kernel */
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < B) tokens[i] = NI_SAMPLE_INVALID;
}

/* The cluster size: the blocks of a row, with at least SR_MIN_PER_BLOCK tokens per block, and
 * no more clusters than a 132-SM Hopper places at once: its GPCs host fewer than 16 clusters of
 * 8 or 32 of 4 (a second wave). Measured with the short path (H200, V = 50,257, us per launch):
 * batch 16 in clusters of 8 / 4 / 2: 26.4 / 17.3 / 21.8, batch 32 in 4 / 2: 26.2 / 22.0, batch 8
 * in 8 / 4: 15.9 / 16.7. A function of (B, V) alone. */
static unsigned sr_auto_cluster(size_t B, size_t V) {
    unsigned c = B <= 8 ? 8u : B <= 24 ? 4u : B <= 64 ? 2u : 1u;
    while (c > 1 && V < (size_t)c * SR_MIN_PER_BLOCK) c >>= 1;
    return c;
}

/* Threads per block. A row spread over a cluster is latency-bound: 512 threads (128 registers
 * each, no spills with the row in shared memory, 16 warps per exchange) beat 1024 (64 registers,
 * spills in every round) there, while one block per row (large B) wants the shorter per-thread
 * chunks of 1024 threads. A function of ncl, so of (B, V), alone; the token does not depend on it.
 */
static unsigned sr_threads(unsigned ncl) {
    return ncl > 1 ? SR_THREADS_CL : SR_THREADS_ONE;
}

extern "C" int ni_cuda_sample_rejection_cfg(int32_t *tokens, const float *logits,
                                            const uint64_t *seq_ids, const uint32_t *steps,
                                            const ni_sample_params *params, size_t B, size_t V,
                                            uint32_t max_rounds, int force_global, uint32_t cluster,
                                            ni_stream s) {
    cudaStream_t st = (cudaStream_t)s;
    if (B == 0) return (int)cudaGetLastError();
    if (!tokens || !params || B > 0x7fffffffu / SR_CMAX || max_rounds > SR_ROUNDS_CAP ||
        (cluster != 0 && (cluster > SR_CMAX || (cluster & (cluster - 1)) != 0)))
        return (int)cudaErrorInvalidValue;
    if (!logits || V == 0 || V > NI_SAMPLE_MAX_V) { /* rule 1: every row invalid */
        return ni_launch_status(ni_launch_pdl(sr_fill_invalid_kernel,
                                              dim3((unsigned)((B + 255) / 256)), dim3(256), 0, st,
                                              tokens, B));
    }
    const unsigned ncl = cluster ? cluster : sr_auto_cluster(B, V);
    const unsigned nt = sr_threads(ncl);
    int dev = 0, optin = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (e != cudaSuccess) return (int)e;
    const unsigned ns4 = (unsigned)((V + 6) / 4), G = (ns4 + ncl - 1) / ncl;
    const int smem = !force_global && sr_offsets(ncl, G, 1, 0).total <= (size_t)optin;
    /* compaction buffers from what is left, no longer than the slice */
    const size_t base = sr_offsets(ncl, G, smem, 0).total;
    size_t cap = base < (size_t)optin ? ((size_t)optin - base) / 16 : 0;
    if (cap > SR_CAPMAX) cap = SR_CAPMAX;
    if (cap > 4 * (size_t)G) cap = 4 * (size_t)G;
    cap &= ~(size_t)3;
    if (cap < 64) cap = 0;
    const size_t bytes = sr_offsets(ncl, G, smem, (unsigned)cap).total;
    if (bytes > (size_t)optin) return (int)cudaErrorInvalidValue; /* fixed part too large */
    void (*kernel)(int32_t *, const float *, const uint64_t *, const uint32_t *,
                   const ni_sample_params *, size_t, unsigned, unsigned, unsigned) =
        nt == SR_THREADS_CL ? (smem ? sr_kernel<1, SR_THREADS_CL> : sr_kernel<0, SR_THREADS_CL>)
                            : (smem ? sr_kernel<1, SR_THREADS_ONE> : sr_kernel<0, SR_THREADS_ONE>);
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    if (e == cudaSuccess && ncl > 8)
        e = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
    if (e != cudaSuccess) return (int)e;
    return ni_launch_status(ni_launch_pdl_cluster(
        kernel, dim3((unsigned)(B * ncl)), dim3(nt), bytes, st, ncl, tokens, logits, seq_ids, steps,
        params, V, (unsigned)max_rounds, ncl, (unsigned)cap));
}

extern "C" int ni_cuda_sample_rejection_ex(int32_t *tokens, const float *logits,
                                           const uint64_t *seq_ids, const uint32_t *steps,
                                           const ni_sample_params *params, size_t B, size_t V,
                                           uint32_t max_rounds, int force_global, ni_stream s) {
    return ni_cuda_sample_rejection_cfg(tokens, logits, seq_ids, steps, params, B, V, max_rounds,
                                        force_global, 0, s);
}

extern "C" int ni_cuda_sample_rejection(int32_t *tokens, const float *logits,
                                        const uint64_t *seq_ids, const uint32_t *steps,
                                        const ni_sample_params *params, size_t B, size_t V,
                                        ni_stream s) {
    return ni_cuda_sample_rejection_ex(tokens, logits, seq_ids, steps, params, B, V,
                                       NI_REJECTION_MAX_ROUNDS, 0, s);
}

NI_TL_SETTER(sample_rejection)
