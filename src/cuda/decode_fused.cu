/* The whole decode step of a small batch (N <= 16 rows, one new token each) as one persistent
 * kernel: embedding, every transformer block and the logits, with grid-wide barriers between
 * the phases instead of kernel boundaries. At batch 1 a step is 8 small kernels per layer, each
 * streaming a 5-20 MB matrix in a few microseconds; with separate kernels every boundary (drain,
 * launch, first loads) costs about as much as the transfer itself. Here one block per SM stays
 * resident for the step, and the phases are:
 *   embedding | per layer: ln_1 + qkv (+ KV append) | attention | proj (+ residual) |
 *   ln_2 + fc (+ GELU) | fcproj (+ residual) | ln_f + logits
 * with one barrier after each (1 + 5 L barriers).
 * GEMV phases: the matrix (OC, IC) is cut into units of 16 output rows x 32 columns, numbered
 * tile-major; warp w of the grid takes the contiguous units [w U / W, (w + 1) U / W), so every
 * warp streams the same number of weight bytes whatever the shape (balanced to one unit), with
 * the tensor-core product of gemv.cu (mma.m16n8k16, bf16 in, f32 accumulate; the batch rows are
 * the A operand, zero-padded to 8 or 16). A tile whose units one warp covers entirely gets its
 * epilogue from registers; a tile split between warps is summed by the last of them to finish
 * (per-tile counter), which adds every contributor's partial from memory in warp order, so the
 * sum does not depend on who finishes last: results are deterministic and, as the partition
 * depends only on (IC, OC) and the grid, independent of the batch size. The first round of a
 * GEMV phase's weight loads is issued before the barrier that precedes it (weights never depend
 * on the step), so HBM keeps streaming while the grid synchronizes.
 * LayerNorm phases normalize the N residual rows in every block (two-pass f32 statistics, like
 * the CPU twin) into shared memory, from where the GEMV reads them; the other GEMV inputs (the
 * attention output, the MLP activations), the residual stream and the caches are written by
 * other SMs during the kernel, so they are read with ld.global.cg (L2, never a stale L1 line).
 * Rounding follows the per-kernel path: qkv, attention output and fc activations are bf16, each
 * GEMV result is rounded to bf16 before the residual add, logits are f32.
 * Attention: one block per (row, head) item; each lane scores one cached position per pass
 * (q . k in f32, q pre-scaled in shared memory), online softmax per warp, values accumulated
 * with each lane owning HS/32 output dimensions, then the 16 warps' partial results merged.
 * All blocks must be resident at once (the barriers spin): the launcher sizes the grid from the
 * occupancy query and the kernel is launched without programmatic dependent launch. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "cuda/kernels.h"

#define DF_THREADS 512
#define DF_WARPS (DF_THREADS / 32)
#define DF_U 4 /* 32-column units loaded per round */
#define DF_PARTIAL 256 /* floats of one warp's partial tile (32 lanes x 8 accumulators) */

enum { DF_EPI_QKV, DF_EPI_RESIDUAL, DF_EPI_GELU, DF_EPI_LOGITS };

/* ---- loads -------------------------------------------------------------------------------- */

static __device__ __forceinline__ uint4 df_ld_weight(const uint16_t *p, bool pred) {
    uint4 v;
    asm volatile("{\n\t.reg .pred p;\n\t"
                 "setp.ne.b32 p, %5, 0;\n\t"
                 "mov.b32 %0, 0;\n\tmov.b32 %1, 0;\n\tmov.b32 %2, 0;\n\tmov.b32 %3, 0;\n\t"
                 "@p ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];\n\t}"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p), "r"((int)pred));
    return v;
}

/* Data written during this kernel by other SMs: L2 only. */
static __device__ __forceinline__ uint4 df_ld_cg16(const void *p, bool pred) {
    uint4 v;
    asm volatile("{\n\t.reg .pred p;\n\t"
                 "setp.ne.b32 p, %5, 0;\n\t"
                 "mov.b32 %0, 0;\n\tmov.b32 %1, 0;\n\tmov.b32 %2, 0;\n\tmov.b32 %3, 0;\n\t"
                 "@p ld.global.cg.v4.u32 {%0, %1, %2, %3}, [%4];\n\t}"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p), "r"((int)pred));
    return v;
}

static __device__ __forceinline__ uint4 df_ld_shared16(const uint16_t *p, bool pred) {
    return pred ? *reinterpret_cast<const uint4 *>(p) : make_uint4(0u, 0u, 0u, 0u);
}

static __device__ __forceinline__ float df_bf(uint16_t u) { return __uint_as_float((uint32_t)u << 16); }

static __device__ __forceinline__ uint16_t df_to_bf(float v) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

static __device__ __forceinline__ uint32_t df_word(const uint4 &v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

static __device__ __forceinline__ void df_mma(float *d, uint32_t a0, uint32_t a1, uint32_t a2,
                                              uint32_t a3, uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

static __device__ __forceinline__ float df_gelu(float x) {
    const float k = 0.7978845608028654f; /* sqrt(2 / pi) */
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}

static __device__ __forceinline__ float df_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float df_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* ---- grid barrier ------------------------------------------------------------------------- */

/* Every block arrives once per barrier; `target` (thread 0's) counts the arrivals to wait for.
 * The counter is zeroed before each launch. */
static __device__ __forceinline__ void df_grid_sync(unsigned *counter, unsigned &target) {
    __syncthreads();
    if (threadIdx.x == 0) {
        target += gridDim.x;
        __threadfence();
        atomicAdd(counter, 1u);
        unsigned seen;
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(counter));
        } while (seen < target);
        __threadfence();
    }
    __syncthreads();
}

/* ---- GEMV phase --------------------------------------------------------------------------- */

typedef struct {
    const uint16_t *w;    /* (OC, IC) */
    const uint16_t *bias; /* (OC) or NULL */
    const uint16_t *in;   /* (N, IC): shared memory (in_shared) or global */
    size_t IC, OC;
    int in_shared, epi;
} df_gemv;

/* A warp's share of a GEMV phase. */
typedef struct {
    uint64_t u0, u1, U;
    uint32_t W;
} df_range;

static __device__ __forceinline__ df_range df_range_of(const df_gemv &g, uint32_t gw, uint32_t W) {
    df_range r;
    const uint64_t tiles = (g.OC + 15) / 16, nkb = (g.IC + 31) / 32;
    r.U = tiles * nkb;
    r.W = (uint32_t)(r.U < W ? r.U : W);
    r.u0 = gw < r.W ? (uint64_t)gw * r.U / r.W : 0;
    r.u1 = gw < r.W ? (uint64_t)(gw + 1) * r.U / r.W : 0;
    return r;
}

/* First unit of warp w, and the warp whose range holds unit u. */
static __device__ __forceinline__ uint64_t df_start(uint64_t w, const df_range &r) {
    return w * r.U / r.W;
}
static __device__ __forceinline__ uint64_t df_owner(uint64_t u, const df_range &r) {
    return ((u + 1) * r.W - 1) / r.U;
}

/* The weights of units [u, u + DF_U) of one tile (those below end): this lane's 16 bytes of its
 * two weight rows per unit. */
static __device__ __forceinline__ void df_load_w(uint4 (&wv)[DF_U][2], const df_gemv &g,
                                                 uint64_t tile, uint64_t kb, uint64_t kb_end) {
    const int lane = threadIdx.x & 31, r = lane >> 2, t = lane & 3;
#pragma unroll
    for (int rt = 0; rt < 2; rt++) {
        const size_t o = (size_t)tile * 16 + (size_t)(rt * 8 + r);
        const bool ok = o < g.OC;
        const uint16_t *row = g.w + (ok ? o : 0) * g.IC;
#pragma unroll
        for (int u = 0; u < DF_U; u++) {
            const size_t col = (size_t)(kb + (uint64_t)u) * 32 + (size_t)(8 * t);
            wv[u][rt] = df_ld_weight(row + col, ok && kb + (uint64_t)u < kb_end && col < g.IC);
        }
    }
}

typedef struct {
    /* sizes */
    size_t N, C, NH, HS, T, V;
    float eps;
    /* per-row device inputs */
    const int32_t *slot, *pos;
    /* this layer's caches (S, NH, T, HS) */
    uint16_t *k_cache, *v_cache;
    float *x;
    uint16_t *qkv, *fc;
    float *logits;
} df_ctx;

/* The epilogue of one finished tile: acc holds (row g + 8 (e >> 1), feature 2t + (e & 1)) of
 * the tile's two 8-row halves. */
static __device__ void df_epilogue(const df_gemv &g, const df_ctx &c, uint64_t tile,
                                   const float (&acc)[2][4]) {
    const int lane = threadIdx.x & 31, r = lane >> 2, t = lane & 3;
#pragma unroll
    for (int rt = 0; rt < 2; rt++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const size_t n = (size_t)(r + 8 * (e >> 1));
            const size_t o = (size_t)tile * 16 + (size_t)(rt * 8 + 2 * t + (e & 1));
            if (n >= c.N || o >= g.OC) continue;
            float v = acc[rt][e];
            if (g.bias) v += df_bf(g.bias[o]);
            switch (g.epi) {
            case DF_EPI_QKV: {
                const uint16_t b = df_to_bf(v);
                if (o < c.C) {
                    c.qkv[n * 3 * c.C + o] = b;
                } else {
                    const size_t ch = (o - c.C) % c.C, h = ch / c.HS, d = ch % c.HS;
                    uint16_t *cache = o < 2 * c.C ? c.k_cache : c.v_cache;
                    cache[(((size_t)c.slot[n] * c.NH + h) * c.T + (size_t)c.pos[n]) * c.HS + d] = b;
                }
                break;
            }
            case DF_EPI_RESIDUAL: {
                float *xp = c.x + n * c.C + o;
                *xp = __ldcg(xp) + df_bf(df_to_bf(v));
                break;
            }
            case DF_EPI_GELU:
                c.fc[n * g.OC + o] = df_to_bf(df_gelu(v));
                break;
            default:
                c.logits[n * g.OC + o] = v;
                break;
            }
        }
    }
}

/* One GEMV phase for this warp; wv holds the first round of its first segment (df_prefetch). */
template <int NT>
static __device__ void df_gemv_phase(const df_gemv &g, const df_ctx &c, uint4 (&wv)[DF_U][2],
                                     float *partial, unsigned *counters, uint32_t gw, uint32_t W) {
    const int lane = threadIdx.x & 31, r = lane >> 2, t = lane & 3;
    const df_range R = df_range_of(g, gw, W);
    const uint64_t nkb = (g.IC + 31) / 32;
    const uint16_t *xrow[NT];
    bool xok[NT];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        const size_t n = (size_t)(r + 8 * nt);
        xok[nt] = n < c.N;
        xrow[nt] = g.in + (xok[nt] ? n : 0) * g.IC;
    }
    bool first_round = true;
    for (uint64_t u = R.u0; u < R.u1;) {
        const uint64_t tile = u / nkb, t0 = tile * nkb;
        const uint64_t seg_end = R.u1 < t0 + nkb ? R.u1 : t0 + nkb;
        const uint64_t kb_end = seg_end - t0;
        float acc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
        for (uint64_t kb = u - t0; kb < kb_end; kb += DF_U) {
            if (!first_round) df_load_w(wv, g, tile, kb, kb_end);
            first_round = false;
            uint4 xv[DF_U][NT];
#pragma unroll
            for (int uu = 0; uu < DF_U; uu++) {
                const size_t col = (size_t)(kb + (uint64_t)uu) * 32 + (size_t)(8 * t);
                const bool in = kb + (uint64_t)uu < kb_end && col < g.IC;
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
                    xv[uu][nt] = g.in_shared ? df_ld_shared16(xrow[nt] + col, in && xok[nt])
                                             : df_ld_cg16(xrow[nt] + col, in && xok[nt]);
            }
#pragma unroll
            for (int uu = 0; uu < DF_U; uu++) {
#pragma unroll
                for (int ks = 0; ks < 2; ks++) {
                    const uint32_t a0 = df_word(xv[uu][0], 2 * ks);
                    const uint32_t a2 = df_word(xv[uu][0], 2 * ks + 1);
                    const uint32_t a1 = NT > 1 ? df_word(xv[uu][NT - 1], 2 * ks) : 0u;
                    const uint32_t a3 = NT > 1 ? df_word(xv[uu][NT - 1], 2 * ks + 1) : 0u;
#pragma unroll
                    for (int rt = 0; rt < 2; rt++)
                        df_mma(acc[rt], a0, a1, a2, a3, df_word(wv[uu][rt], 2 * ks),
                               df_word(wv[uu][rt], 2 * ks + 1));
                }
            }
        }
        if (u == t0 && seg_end == t0 + nkb) {
            df_epilogue(g, c, tile, acc); /* the whole tile is this warp's */
        } else {
            /* a shared tile: publish this segment, the last contributor sums them in order */
            const uint64_t slot = 2 * (uint64_t)gw + (u == R.u0 ? 0 : 1);
            float *mine = partial + slot * DF_PARTIAL + (size_t)lane * 8;
#pragma unroll
            for (int e = 0; e < 8; e++) __stcg(mine + e, acc[e >> 2][e & 3]);
            __threadfence();
            __syncwarp();
            const uint64_t w_first = df_owner(t0, R), w_last = df_owner(t0 + nkb - 1, R);
            unsigned prev = 0;
            if (lane == 0) prev = atomicAdd(&counters[tile], 1u);
            prev = __shfl_sync(0xffffffffu, prev, 0);
            if (prev == (unsigned)(w_last - w_first)) {
                __threadfence();
                float sum[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
                for (uint64_t w = w_first; w <= w_last; w++) {
                    const uint64_t s = 2 * w + (df_start(w, R) >= t0 ? 0 : 1);
                    const float *p = partial + s * DF_PARTIAL + (size_t)lane * 8;
#pragma unroll
                    for (int e = 0; e < 8; e++) sum[e >> 2][e & 3] += __ldcg(p + e);
                }
                df_epilogue(g, c, tile, sum);
                if (lane == 0) counters[tile] = 0; /* reused after the next barrier */
            }
        }
        u = seg_end;
    }
}

/* The first round of this warp's first segment in phase g, issued before the barrier. */
static __device__ __forceinline__ void df_prefetch(uint4 (&wv)[DF_U][2], const df_gemv &g,
                                                   uint32_t gw, uint32_t W) {
    const df_range R = df_range_of(g, gw, W);
    if (R.u0 >= R.u1) return;
    const uint64_t nkb = (g.IC + 31) / 32, tile = R.u0 / nkb, t0 = tile * nkb;
    const uint64_t seg_end = R.u1 < t0 + nkb ? R.u1 : t0 + nkb;
    df_load_w(wv, g, tile, R.u0 - t0, seg_end - t0);
}

/* ---- LayerNorm into shared memory --------------------------------------------------------- */

/* out (N, C) bf16 in shared memory = LayerNorm(x rows) * w + b; warp n handles rows n, n + 16. */
static __device__ void df_layernorm(uint16_t *out, const float *x, const uint16_t *w,
                                    const uint16_t *b, size_t N, size_t C, float eps) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (size_t n = (size_t)warp; n < N; n += DF_WARPS) {
        const float *xr = x + n * C;
        float s = 0.0f;
        for (size_t i = (size_t)lane; i < C; i += 32) s += __ldcg(xr + i);
        const float mean = df_warp_sum(s) / (float)C;
        float q = 0.0f;
        for (size_t i = (size_t)lane; i < C; i += 32) {
            const float d = __ldcg(xr + i) - mean;
            q += d * d;
        }
        const float rstd = rsqrtf(df_warp_sum(q) / (float)C + eps);
        for (size_t i = (size_t)lane; i < C; i += 32)
            out[n * C + i] = df_to_bf((__ldcg(xr + i) - mean) * rstd * df_bf(w[i]) + df_bf(b[i]));
    }
    __syncthreads();
}

/* ---- attention ---------------------------------------------------------------------------- */

/* Shared memory of the attention phase: q (HS), and per warp (max, sum, acc[HS]). */
static __device__ void df_attention(uint16_t *att, const df_ctx &c, float *sm) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const size_t HS = c.HS, C = c.C;
    float *q = sm;                  /* (HS) */
    float *wm = sm + 128;           /* (DF_WARPS) */
    float *wl = wm + DF_WARPS;      /* (DF_WARPS) */
    float *wacc = wl + DF_WARPS;    /* (DF_WARPS, HS) */
    const float scale = rsqrtf((float)HS);
    for (size_t item = blockIdx.x; item < c.N * c.NH; item += gridDim.x) {
        const size_t n = item / c.NH, h = item % c.NH;
        const int p = c.pos[n];
        const uint16_t *qs = c.qkv + n * 3 * C + h * HS;
        for (size_t d = threadIdx.x; d < HS; d += DF_THREADS) q[d] = df_bf(__ldcg(qs + d)) * scale;
        __syncthreads();
        const size_t head = ((size_t)c.slot[n] * c.NH + h) * c.T * HS;
        const uint16_t *kc = c.k_cache + head, *vc = c.v_cache + head;
        float m = -INFINITY, l = 0.0f, acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int j0 = warp * 32; j0 <= p; j0 += DF_THREADS) {
            const int j = j0 + lane;
            float s = -INFINITY;
            if (j <= p) {
                const uint16_t *kr = kc + (size_t)j * HS;
                float dot = 0.0f;
                for (size_t d = 0; d < HS; d += 8) {
                    const uint4 kv = df_ld_cg16(kr + d, true);
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const uint32_t wd = df_word(kv, e);
                        dot += q[d + 2 * e] * __uint_as_float(wd << 16) +
                               q[d + 2 * e + 1] * __uint_as_float(wd & 0xffff0000u);
                    }
                }
                s = dot;
            }
            const float m_new = fmaxf(m, df_warp_max(s));
            const float pj = j <= p ? __expf(s - m_new) : 0.0f;
            const float corr = __expf(m - m_new); /* 0 on the first pass (m = -inf) */
            l = l * corr + df_warp_sum(pj);
#pragma unroll
            for (int k = 0; k < 4; k++) acc[k] *= corr;
            const int nj = p - j0 + 1 < 32 ? p - j0 + 1 : 32;
            for (int jj = 0; jj < nj; jj++) {
                const float pw = __shfl_sync(0xffffffffu, pj, jj);
                const uint16_t *vr = vc + (size_t)(j0 + jj) * HS;
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    const size_t d = (size_t)(lane + 32 * k);
                    if (d < HS) acc[k] += pw * df_bf(__ldcg(vr + d));
                }
            }
            m = m_new;
        }
        if (lane == 0) {
            wm[warp] = m;
            wl[warp] = l;
        }
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const size_t d = (size_t)(lane + 32 * k);
            if (d < HS) wacc[warp * HS + d] = acc[k];
        }
        __syncthreads();
        for (size_t d = threadIdx.x; d < HS; d += DF_THREADS) {
            float M = -INFINITY;
            for (int w = 0; w < DF_WARPS; w++) M = fmaxf(M, wm[w]);
            float L = 0.0f, a = 0.0f;
            for (int w = 0; w < DF_WARPS; w++) {
                if (wm[w] == -INFINITY) continue; /* a warp without positions */
                const float f = __expf(wm[w] - M);
                L += wl[w] * f;
                a += wacc[w * HS + d] * f;
            }
            att[n * C + h * HS + d] = df_to_bf(a / L);
        }
        __syncthreads();
    }
}

/* ---- the kernel --------------------------------------------------------------------------- */

template <int NT>
__global__ void __launch_bounds__(DF_THREADS, 1) decode_fused_kernel(ni_decode_fused_args a) {
    extern __shared__ uint4 df_smem4[];
    uint16_t *sm_ln = reinterpret_cast<uint16_t *>(df_smem4); /* (N, C) normalized rows */
    float *sm_f = reinterpret_cast<float *>(df_smem4);        /* attention scratch */
    const uint32_t W = gridDim.x * DF_WARPS;
    const uint32_t gw = blockIdx.x * DF_WARPS + (threadIdx.x >> 5);
    const size_t C = a.C, N = a.N, L = a.L;
    unsigned target = 0;
    uint4 wv[DF_U][2];

    df_ctx c;
    c.N = N, c.C = C, c.NH = a.NH, c.HS = C / a.NH, c.T = a.T, c.V = a.V, c.eps = a.eps;
    c.slot = a.slot, c.pos = a.pos;
    c.x = a.x, c.qkv = a.qkv, c.fc = a.fc, c.logits = a.logits;

    /* embedding; the first layer's qkv weights are requested meanwhile */
    df_gemv g_qkv = {a.layers[0].qkv_w, a.layers[0].qkv_b, sm_ln, C, 3 * C, 1, DF_EPI_QKV};
    df_prefetch(wv, g_qkv, gw, W);
    for (size_t i = (size_t)blockIdx.x * DF_THREADS + threadIdx.x; i < N * C;
         i += (size_t)gridDim.x * DF_THREADS) {
        const size_t n = i / C, k = i % C;
        a.x[i] = df_bf(a.wte[(size_t)a.tok[n] * C + k]) + df_bf(a.wpe[(size_t)a.pos[n] * C + k]);
    }
    df_grid_sync(a.barrier, target);

    for (size_t l = 0; l < L; l++) {
        const ni_cuda_layer_weights y = a.layers[l];
        c.k_cache = a.k_cache + l * a.kv_layer;
        c.v_cache = a.v_cache + l * a.kv_layer;
        g_qkv.w = y.qkv_w, g_qkv.bias = y.qkv_b;
        df_layernorm(sm_ln, a.x, y.ln1_w, y.ln1_b, N, C, a.eps);
        df_gemv_phase<NT>(g_qkv, c, wv, a.partial, a.barrier + 1, gw, W);
        const df_gemv g_proj = {y.proj_w, y.proj_b, a.att, C, C, 0, DF_EPI_RESIDUAL};
        df_prefetch(wv, g_proj, gw, W);
        df_grid_sync(a.barrier, target);

        df_attention(a.att, c, sm_f);
        df_grid_sync(a.barrier, target);

        df_gemv_phase<NT>(g_proj, c, wv, a.partial, a.barrier + 1, gw, W);
        const df_gemv g_fc = {y.fc_w, y.fc_b, sm_ln, C, 4 * C, 1, DF_EPI_GELU};
        df_prefetch(wv, g_fc, gw, W);
        df_grid_sync(a.barrier, target);

        df_layernorm(sm_ln, a.x, y.ln2_w, y.ln2_b, N, C, a.eps);
        df_gemv_phase<NT>(g_fc, c, wv, a.partial, a.barrier + 1, gw, W);
        const df_gemv g_fcproj = {y.fcproj_w, y.fcproj_b, a.fc, 4 * C, C, 0, DF_EPI_RESIDUAL};
        df_prefetch(wv, g_fcproj, gw, W);
        df_grid_sync(a.barrier, target);

        df_gemv_phase<NT>(g_fcproj, c, wv, a.partial, a.barrier + 1, gw, W);
        if (l + 1 < L) {
            g_qkv.w = a.layers[l + 1].qkv_w;
            df_prefetch(wv, g_qkv, gw, W);
        } else {
            const df_gemv g_lm = {a.wte, NULL, sm_ln, C, a.V, 1, DF_EPI_LOGITS};
            df_prefetch(wv, g_lm, gw, W);
        }
        df_grid_sync(a.barrier, target);
    }
    const df_gemv g_lm = {a.wte, NULL, sm_ln, C, a.V, 1, DF_EPI_LOGITS};
    df_layernorm(sm_ln, a.x, a.lnf_w, a.lnf_b, N, C, a.eps);
    df_gemv_phase<NT>(g_lm, c, wv, a.partial, a.barrier + 1, gw, W);
}

/* ---- launcher ----------------------------------------------------------------------------- */

static size_t df_smem_bytes(size_t N, size_t C, size_t HS) {
    size_t ln = N * C * 2, attn = (128 + 2 * DF_WARPS + DF_WARPS * HS) * 4;
    size_t b = ln > attn ? ln : attn;
    return (b + 15) & ~(size_t)15;
}

extern "C" int ni_cuda_decode_fused_supported(size_t N, size_t C, size_t NH) {
    if (N == 0 || N > NI_CUDA_DECODE_FUSED_MAX_ROWS || NH == 0 || C % NH) return 0;
    const size_t HS = C / NH;
    return C % 8 == 0 && HS % 8 == 0 && HS <= 128 && df_smem_bytes(N, C, HS) <= (size_t)200 << 10;
}

extern "C" int ni_cuda_decode_fused_grid(size_t *blocks, size_t *warps) {
    int dev = 0, sms = 0, per_sm = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    /* sized for the largest shared memory a launch may ask */
    const size_t smem = (size_t)200 << 10;
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(decode_fused_kernel<2>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(decode_fused_kernel<1>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e == cudaSuccess)
        e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, decode_fused_kernel<2>,
                                                          DF_THREADS, smem);
    if (e == cudaSuccess && per_sm < 1) e = cudaErrorInvalidConfiguration;
    if (e != cudaSuccess) return (int)e;
    /* one block per SM: the barriers need every block resident */
    *blocks = (size_t)sms;
    *warps = (size_t)sms * DF_WARPS;
    return 0;
}

extern "C" int ni_cuda_decode_fused(const ni_decode_fused_args *a, size_t blocks, ni_stream s) {
    if (!ni_cuda_decode_fused_supported(a->N, a->C, a->NH) || blocks == 0)
        return (int)cudaErrorInvalidValue;
    cudaStream_t st = (cudaStream_t)s;
    /* the barrier and the per-tile counters start at zero (the counters also return to zero by
     * themselves; this keeps a failed launch from poisoning the next) */
    cudaError_t e =
        cudaMemsetAsync(a->barrier, 0, (1 + ni_cuda_decode_fused_tiles(a->C, a->V)) * 4, st);
    if (e != cudaSuccess) return (int)e;
    const size_t smem = df_smem_bytes(a->N, a->C, a->C / a->NH);
    if (a->N > 8)
        decode_fused_kernel<2><<<(unsigned)blocks, DF_THREADS, smem, st>>>(*a);
    else
        decode_fused_kernel<1><<<(unsigned)blocks, DF_THREADS, smem, st>>>(*a);
    return (int)cudaGetLastError();
}
