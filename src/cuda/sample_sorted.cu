/* The sort-based sampler on the GPU (the baseline's), with the canonical rule of
 * sampling/sampling.h so that it keeps exactly the tokens the CPU keeps and, for the same
 * uniform, returns the same token as the CPU's ni_sample_sorted. Per row of logits (B, V):
 * (1) one block finds the max, the argmax (lowest index on ties) and whether the row is valid
 *     (no NaN, no +inf, some finite logit); greedy filters stop here;
 * (2) blocks over (row, chunk) compute the integer canonical weights W (rule 3) and write the
 *     sort keys (B - 1 - row) << 41 | W with the token index as value, and add the row's total
 *     mass and count of positive weights with 64-bit integer atomics (exact, order-free);
 * (3) one CUB radix sort (DeviceRadixSort, stable, descending) over all B * V pairs, on
 *     41 + ceil(log2 B) key bits: rows come out in order, each sorted by descending W with ties
 *     in ascending index, the CPU's order. One global sort keeps the whole GPU busy even for
 *     B = 1, where a segmented sort would give the single row to a single block;
 * (4) one block per row scans its sorted prefix: the top-k threshold is the k-th largest W,
 *     its mass a prefix sum; the top-p threshold is the W at the first position whose
 *     inclusive prefix mass, as a double, reaches ni_canon_topp_limit; min-p is a weight
 *     threshold; the kept set is {W >= max of the three}, a prefix of the sorted row. The
 *     uniform u (draw 0 of (seed, seq, step)) gives target = ni_canon_target(u, kept mass), and
 *     the token is the first in sorted order whose running sum exceeds it.
 * The workspace holds the two key and two value buffers of the sort (24 bytes per logit: 617 MB
 * for B = 512, V = 50257), per-row statistics and CUB's temporary storage. */
#include <cuda_runtime.h>
#include <float.h>
#include <math.h>
#include <stdint.h>

#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>

#include "cuda/kernels.h"
#include "cuda/pdl.cuh"
#include "sampling/sampling.h"

#define SS_STATS_THREADS 1024
#define SS_STATS_UNROLL 8 /* independent loads in flight per thread (one block reads a row) */
#define SS_KEYS_THREADS 256
#define SS_KEYS_ITEMS 4 /* logits per thread of the key kernel, loaded before use */
#define SS_KEYS_CHUNK (SS_KEYS_THREADS * SS_KEYS_ITEMS)
#define SS_PICK_THREADS 256
#define SS_PICK_ITEMS 4 /* consecutive sorted positions per thread and tile */
#define SS_W_BITS 41    /* W <= 2^40 */
#define SS_W_MASK ((1ull << SS_W_BITS) - 1)
#define SS_NONE 0xFFFFFFFFFFFFFFFFull
#define SS_ALIGN 256

/* Per-row statistics, written by the stats kernel and (total, n_pos) summed by the key kernel. */
typedef struct {
    unsigned long long total; /* sum of W */
    unsigned long long n_pos; /* tokens with W > 0 */
    float max;                /* largest logit */
    int done;                 /* 1: tokens[r] already written (greedy or invalid row) */
} ss_row;

/* ---- (1) row statistics, greedy ------------------------------------------------------------ */

/* (value, index) pairs: larger value wins, the lower index on equal values. */
static __device__ __forceinline__ void ss_argmax_merge(float *v, unsigned *i, float ov,
                                                       unsigned oi) {
    if (ov > *v || (ov == *v && oi < *i)) {
        *v = ov;
        *i = oi;
    }
}

__global__ void __launch_bounds__(SS_STATS_THREADS)
    ss_stats_kernel(int32_t *tokens,     // (B)
                    ss_row *rows,        // (B) or NULL when greedy
                    const float *logits, // (B, V)
                    size_t V, int greedy) {
    __shared__ float s_v[SS_STATS_THREADS / 32];
    __shared__ unsigned s_i[SS_STATS_THREADS / 32];
    __shared__ int s_bad[SS_STATS_THREADS / 32];
    ni_pdl_wait(); /* the logits come from the previous kernel */
    const size_t r = blockIdx.x;
    const float *l = logits + r * V;
    float best = -INFINITY;
    unsigned arg = 0xFFFFFFFFu; /* none: every logit -inf */
    int bad = 0;
    /* each thread visits increasing indices: strict > keeps its lowest index among ties */
    const size_t stride = (size_t)blockDim.x;
    for (size_t i0 = threadIdx.x; i0 < V; i0 += stride * SS_STATS_UNROLL) {
        float x[SS_STATS_UNROLL];
#pragma unroll
        for (int j = 0; j < SS_STATS_UNROLL; j++) {
            const size_t i = i0 + (size_t)j * stride;
            x[j] = i < V ? l[i] : -INFINITY;
        }
#pragma unroll
        for (int j = 0; j < SS_STATS_UNROLL; j++) {
            bad |= (x[j] != x[j]) | (x[j] == INFINITY);
            if (x[j] > best) {
                best = x[j];
                arg = (unsigned)(i0 + (size_t)j * stride);
            }
        }
    }
    ni_pdl_launch_dependents(); /* the row is read; only the reductions are left */
    for (int off = 16; off > 0; off >>= 1) {
        float ov = __shfl_down_sync(0xFFFFFFFFu, best, off);
        unsigned oi = __shfl_down_sync(0xFFFFFFFFu, arg, off);
        bad |= __shfl_down_sync(0xFFFFFFFFu, bad, off);
        ss_argmax_merge(&best, &arg, ov, oi);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        s_v[warp] = best;
        s_i[warp] = arg;
        s_bad[warp] = bad;
    }
    __syncthreads();
    if (threadIdx.x != 0) return;
    for (int w = 1; w < (int)(blockDim.x >> 5); w++) {
        ss_argmax_merge(&best, &arg, s_v[w], s_i[w]);
        bad |= s_bad[w];
    }
    const int invalid = bad || arg == 0xFFFFFFFFu;
    if (invalid)
        tokens[r] = NI_SAMPLE_INVALID;
    else if (greedy)
        tokens[r] = (int32_t)arg;
    if (rows) {
        ss_row row;
        row.total = 0;
        row.n_pos = 0;
        row.max = best;
        row.done = invalid || greedy;
        rows[r] = row;
    }
}

/* ---- (2) canonical weights and sort keys --------------------------------------------------- */

__global__ void __launch_bounds__(SS_KEYS_THREADS)
    ss_keys_kernel(unsigned long long *keys, // (B, V)
                   int32_t *vals,            // (B, V)
                   ss_row *rows,             // (B)
                   const float *logits,      // (B, V)
                   size_t B, size_t V, float scale) {
    __shared__ unsigned long long s_tot[SS_KEYS_THREADS / 32], s_cnt[SS_KEYS_THREADS / 32];
    ni_pdl_wait(); /* rows come from the stats kernel */
    const size_t r = blockIdx.x;
    const size_t c0 = (size_t)blockIdx.y * SS_KEYS_CHUNK;
    const size_t c1 = c0 + SS_KEYS_CHUNK < V ? c0 + SS_KEYS_CHUNK : V;
    const unsigned long long prefix = (unsigned long long)(B - 1 - r) << SS_W_BITS;
    const float m = rows[r].max;
    const int live = !rows[r].done;
    const float *l = logits + r * V;
    unsigned long long tot = 0, cnt = 0;
    float x[SS_KEYS_ITEMS];
#pragma unroll
    for (int j = 0; j < SS_KEYS_ITEMS; j++) {
        const size_t i = c0 + threadIdx.x + (size_t)j * SS_KEYS_THREADS;
        x[j] = i < c1 ? l[i] : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < SS_KEYS_ITEMS; j++) {
        const size_t i = c0 + threadIdx.x + (size_t)j * SS_KEYS_THREADS;
        if (i >= c1) break;
        /* rule 3: t = (logit - max) * scale in f32 (no contraction possible), W integer */
        const unsigned long long wgt = live ? ni_canon_weight((x[j] - m) * scale) : 0ull;
        keys[r * V + i] = prefix | wgt;
        vals[r * V + i] = (int32_t)i;
        tot += wgt;
        cnt += wgt != 0;
    }
    ni_pdl_launch_dependents(); /* the keys are written; only the row sums are left */
    if (!live) return;          /* block-uniform */
    for (int off = 16; off > 0; off >>= 1) {
        tot += __shfl_down_sync(0xFFFFFFFFu, tot, off);
        cnt += __shfl_down_sync(0xFFFFFFFFu, cnt, off);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        s_tot[warp] = tot;
        s_cnt[warp] = cnt;
    }
    __syncthreads();
    if (threadIdx.x != 0) return;
    for (int w = 1; w < (int)(blockDim.x >> 5); w++) {
        tot += s_tot[w];
        cnt += s_cnt[w];
    }
    atomicAdd(&rows[r].total, tot);
    atomicAdd(&rows[r].n_pos, cnt);
}

/* ---- (4) filter and pick on the sorted row -------------------------------------------------- */

typedef cub::BlockScan<unsigned long long, SS_PICK_THREADS> ss_scan_t;

typedef struct {
    typename ss_scan_t::TempStorage scan;
    unsigned long long hit;
    unsigned long long excl;
} ss_pick_smem;

enum { SS_BELOW = 0, SS_MASS_GE = 1, SS_MASS_GT = 2 };

/* The first sorted position p of the row (w[p] = key & SS_W_MASK, incl(p) = w[0] + .. + w[p])
 * where MODE holds: SS_BELOW w[p] < thr; SS_MASS_GE (double)incl(p) >= lim; SS_MASS_GT
 * incl(p) > thr. Returns p, or V when there is none; *excl = w[0] + .. + w[p - 1] (the whole
 * row's mass when none). Tiles of SS_PICK_THREADS * SS_PICK_ITEMS positions, stopping at the
 * first tile with a hit. Called by the whole block. */
template <int MODE>
static __device__ size_t ss_find(const unsigned long long *key, size_t V, unsigned long long thr,
                                 double lim, unsigned long long *excl, ss_pick_smem *sm) {
    __syncthreads(); /* the previous call's readers of sm are done */
    if (threadIdx.x == 0) sm->hit = SS_NONE;
    __syncthreads();
    unsigned long long carry = 0;
    const size_t tile = (size_t)SS_PICK_THREADS * SS_PICK_ITEMS;
    for (size_t base = 0; base < V; base += tile) {
        const size_t p0 = base + (size_t)threadIdx.x * SS_PICK_ITEMS;
        unsigned long long w[SS_PICK_ITEMS], tsum = 0;
#pragma unroll
        for (int j = 0; j < SS_PICK_ITEMS; j++) {
            w[j] = p0 + j < V ? (key[p0 + j] & SS_W_MASK) : 0ull;
            tsum += w[j];
        }
        unsigned long long texcl, agg;
        ss_scan_t(sm->scan).ExclusiveSum(tsum, texcl, agg);
        unsigned long long run = carry + texcl, myhit = SS_NONE, myexcl = 0;
#pragma unroll
        for (int j = 0; j < SS_PICK_ITEMS; j++) {
            const unsigned long long incl = run + w[j];
            bool h;
            if (MODE == SS_BELOW)
                h = w[j] < thr;
            else if (MODE == SS_MASS_GE)
                h = (double)incl >= lim;
            else
                h = incl > thr;
            if (p0 + j < V && h && myhit == SS_NONE) {
                myhit = p0 + j;
                myexcl = run;
            }
            run = incl;
        }
        if (myhit != SS_NONE) atomicMin(&sm->hit, myhit);
        __syncthreads();
        const unsigned long long hit = sm->hit;
        if (hit != SS_NONE) { /* block-uniform */
            if (myhit == hit) sm->excl = myexcl;
            __syncthreads();
            *excl = sm->excl;
            return (size_t)hit;
        }
        carry += agg;
    }
    *excl = carry;
    return V;
}

__global__ void __launch_bounds__(SS_PICK_THREADS)
    ss_pick_kernel(int32_t *tokens,                // (B)
                   const ss_row *rows,             // (B)
                   const unsigned long long *keys, // (B, V) sorted
                   const int32_t *vals,            // (B, V) sorted
                   const uint64_t *seq_ids,        // (B) or NULL (then r)
                   size_t V, size_t top_k, float top_p, unsigned long long wmin, uint64_t seed,
                   uint32_t step) {
    __shared__ ss_pick_smem sm;
    ni_pdl_wait(); /* keys and vals come from the sort, rows from the key kernel */
    const size_t r = blockIdx.x;
    const ss_row row = rows[r];
    if (row.done) return;
    const unsigned long long *key = keys + r * V;
    unsigned long long dummy;

    /* top-k (rule 4): active for 2 <= k < V and k < tokens of positive weight */
    size_t k = (top_k >= 2 && top_k < V) ? top_k : 0;
    if (k >= row.n_pos) k = 0;
    unsigned long long theta = wmin, tk = 0, mass_topk = row.total;
    if (k) {
        tk = key[k - 1] & SS_W_MASK; /* the k-th largest W */
        ss_find<SS_BELOW>(key, V, tk, 0.0, &mass_topk, &sm);
        if (tk > theta) theta = tk;
    }
    /* top-p: the W at the first position whose prefix mass reaches the limit */
    if (top_p < 1.0f) {
        const double lim = ni_canon_topp_limit(top_p, mass_topk);
        size_t q = ss_find<SS_MASS_GE>(key, V, 0, lim, &dummy, &sm);
        unsigned long long tp = q < V ? (key[q] & SS_W_MASK) : 0ull;
        if (tp > theta) theta = tp;
    }
    /* kept = {W >= theta}, a prefix of the sorted row */
    unsigned long long mass = row.total;
    if (theta > 0) {
        if (k && theta == tk)
            mass = mass_topk;
        else
            ss_find<SS_BELOW>(key, V, theta, 0.0, &mass, &sm);
    }
    const uint64_t seq = seq_ids ? seq_ids[r] : (uint64_t)r;
    const float u = ni_rng_uniform(seed, seq, step, 0);
    const unsigned long long target = ni_canon_target(u, mass);
    size_t p = ss_find<SS_MASS_GT>(key, V, target, 0.0, &dummy, &sm);
    if (threadIdx.x == 0) tokens[r] = p < V ? vals[r * V + p] : NI_SAMPLE_INVALID;
}

/* ---- launch ------------------------------------------------------------------------------- */

__global__ void ss_fill_invalid_kernel(int32_t *tokens, size_t B) {
    ni_pdl_wait(); /* tokens may still be read by the previous kernel */
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < B) tokens[i] = NI_SAMPLE_INVALID;
}

/* Byte offsets of the workspace parts. */
typedef struct {
    size_t keys0, keys1, vals0, vals1, rows, temp, temp_bytes, total;
    int end_bit;
} ss_layout;

static size_t ss_align(size_t x) {
    return (x + SS_ALIGN - 1) / SS_ALIGN * SS_ALIGN;
}

/* 0 on success; fails when B * V does not fit CUB's 32-bit item count. */
static int ss_layout_for(ss_layout *L, size_t B, size_t V) {
    if (B == 0 || V == 0 || V > NI_SAMPLE_MAX_V || B > ((size_t)1 << 22)) return -1;
    const size_t n = B * V;
    if (n > (size_t)0x7fffffff) return -1;
    int rb = 0;
    while (((size_t)1 << rb) < B) rb++;
    L->end_bit = SS_W_BITS + rb;
    size_t off = 0;
    L->keys0 = off;
    off += ss_align(n * sizeof(unsigned long long));
    L->keys1 = off;
    off += ss_align(n * sizeof(unsigned long long));
    L->vals0 = off;
    off += ss_align(n * sizeof(int32_t));
    L->vals1 = off;
    off += ss_align(n * sizeof(int32_t));
    L->rows = off;
    off += ss_align(B * sizeof(ss_row));
    L->temp = off;
    cub::DoubleBuffer<unsigned long long> dk(NULL, NULL);
    cub::DoubleBuffer<int32_t> dv(NULL, NULL);
    size_t tb = 0;
    if (cub::DeviceRadixSort::SortPairsDescending(NULL, tb, dk, dv, (int)n, 0, L->end_bit,
                                                  (cudaStream_t)0) != cudaSuccess)
        return -1;
    L->temp_bytes = tb;
    L->total = off + ss_align(tb);
    return 0;
}

extern "C" size_t ni_cuda_sample_sorted_workspace(size_t B, size_t V) {
    ss_layout L;
    return ss_layout_for(&L, B, V) == 0 ? L.total : 0;
}

extern "C" int ni_cuda_sample_sorted(int32_t *tokens, const float *logits, const uint64_t *seq_ids,
                                     size_t B, size_t V, float temperature, size_t top_k,
                                     float top_p, float min_p, uint64_t seed, uint32_t step,
                                     void *workspace, size_t workspace_bytes, ni_stream s) {
    cudaStream_t st = (cudaStream_t)s;
    if (B == 0) return (int)cudaGetLastError();
    if (!tokens) return (int)cudaErrorInvalidValue;
    if (B > 0x7fffffffu) return (int)cudaErrorInvalidValue;
    /* rule 1 for the whole batch: bad sizes or a NaN parameter make every row invalid */
    if (!logits || V == 0 || V > NI_SAMPLE_MAX_V || temperature != temperature || top_p != top_p ||
        min_p != min_p) {
        return ni_launch_status(ni_launch_pdl(ss_fill_invalid_kernel,
                                              dim3((unsigned)((B + 255) / 256)), dim3(256), 0, st,
                                              tokens, B));
    }
    if (top_k == 1 || ni_canon_temp_greedy(temperature)) { /* rule 2: greedy, no workspace */
        return ni_launch_status(ni_launch_pdl(ss_stats_kernel, dim3((unsigned)B),
                                              dim3(SS_STATS_THREADS), 0, st, tokens, (ss_row *)NULL,
                                              logits, V, 1));
    }

    ss_layout L;
    if (ss_layout_for(&L, B, V) != 0 || !workspace || workspace_bytes < L.total)
        return (int)cudaErrorInvalidValue;
    char *ws = (char *)workspace;
    unsigned long long *keys0 = (unsigned long long *)(ws + L.keys0);
    unsigned long long *keys1 = (unsigned long long *)(ws + L.keys1);
    int32_t *vals0 = (int32_t *)(ws + L.vals0), *vals1 = (int32_t *)(ws + L.vals1);
    ss_row *rows = (ss_row *)(ws + L.rows);

    const float scale = ni_canon_scale(temperature);
    int err =
        ni_launch_status(ni_launch_pdl(ss_stats_kernel, dim3((unsigned)B), dim3(SS_STATS_THREADS),
                                       0, st, tokens, rows, logits, V, 0));
    if (err) return err;
    dim3 kgrid((unsigned)B, (unsigned)((V + SS_KEYS_CHUNK - 1) / SS_KEYS_CHUNK));
    err = ni_launch_status(ni_launch_pdl(ss_keys_kernel, kgrid, dim3(SS_KEYS_THREADS), 0, st, keys0,
                                         vals0, rows, logits, B, V, scale));
    if (err) return err;

    cub::DoubleBuffer<unsigned long long> dk(keys0, keys1);
    cub::DoubleBuffer<int32_t> dv(vals0, vals1);
    size_t tb = L.temp_bytes;
    cudaError_t ce = cub::DeviceRadixSort::SortPairsDescending(ws + L.temp, tb, dk, dv,
                                                               (int)(B * V), 0, L.end_bit, st);
    if (ce != cudaSuccess) return (int)ce;

    return ni_launch_status(ni_launch_pdl(ss_pick_kernel, dim3((unsigned)B), dim3(SS_PICK_THREADS),
                                          0, st, tokens, (const ss_row *)rows,
                                          (const unsigned long long *)dk.Current(),
                                          (const int32_t *)dv.Current(), seq_ids, V, top_k, top_p,
                                          ni_canon_minp_weight(min_p), seed, step));
}
