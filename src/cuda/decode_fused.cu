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

enum { DF_EPI_QKV, DF_EPI_RESIDUAL, DF_EPI_GELU, DF_EPI_LOGITS };

/* ---- loads -------------------------------------------------------------------------------- */

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
static __device__ __forceinline__ uint64_t df_now(void) {
    uint64_t t;
    asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
    return t;
}

/* trace (optional): per barrier k, the latest arrival over the blocks [2k] and block 0's exit
 * [2k + 1], in ns (globaltimer). */
static __device__ __forceinline__ void df_grid_sync(unsigned *counter, unsigned &target,
                                                    unsigned long long *trace, uint32_t &k) {
    __syncthreads(); /* the block's writes happen before thread 0's release below */
    if (trace && threadIdx.x == 0) atomicMax(trace + 2 * k, (unsigned long long)df_now());
    if (threadIdx.x == 0) {
        target += gridDim.x;
        asm volatile("fence.acq_rel.gpu;\n\tred.relaxed.gpu.global.add.u32 [%0], 1;" ::"l"(counter)
                     : "memory");
        unsigned seen;
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(counter) : "memory");
        } while (seen < target);
        if (trace && blockIdx.x == 0) trace[2 * k + 1] = df_now();
    }
    k++;
    __syncthreads();
}

/* ---- weight streaming: a ring of cp.async units per warp ------------------------------------ */

/* A unit: 16 weight rows (two 8-row halves) x 32 columns; lane (g, t) copies 16 bytes of rows g and
 * 8 + g at columns 8t .. 8t + 8 into its own slot words, and later reads back exactly those: the
 * ring needs no synchronization beyond each thread's own cp.async.wait_group. Slot layout
 * [half][lane] x 16 bytes (conflict-free reads). */
#define DF_UNIT_BYTES 1024
#define DF_RING_MAX 16

typedef struct {
    const uint16_t *w;
    uint32_t IC, OC;
} df_geom;

/* Phase ph of the step's GEMVs: 4 per layer (qkv, proj, fc, fcproj), then the logits (4 L). */
static __device__ __forceinline__ df_geom df_phase_geom(const ni_decode_fused_args &a,
                                                        const ni_cuda_layer_weights *tab,
                                                        uint32_t ph) {
    const uint32_t C = (uint32_t)a.C;
    df_geom g;
    if (ph == 4 * (uint32_t)a.L) {
        g.w = a.wte, g.IC = C, g.OC = (uint32_t)a.V;
        return g;
    }
    const ni_cuda_layer_weights *y = tab + ph / 4;
    switch (ph % 4) {
    case 0:
        g.w = y->qkv_w, g.IC = C, g.OC = 3 * C;
        break;
    case 1:
        g.w = y->proj_w, g.IC = C, g.OC = C;
        break;
    case 2:
        g.w = y->fc_w, g.IC = C, g.OC = 4 * C;
        break;
    default:
        g.w = y->fcproj_w, g.IC = 4 * C, g.OC = C;
        break;
    }
    return g;
}

/* This block's tiles [t0, t1) of a phase and this warp's 32-column units [k0, k1) of each tile:
 * tiles are split evenly over the blocks, a tile's columns evenly over the block's warps. */
typedef struct {
    uint32_t t0, t1, k0, k1;
} df_share;

static __device__ __forceinline__ df_share df_share_of(const df_geom &g) {
    const uint32_t tiles = (g.OC + 15) / 16, nkb = (g.IC + 31) / 32;
    const uint32_t warp = threadIdx.x >> 5;
    df_share s;
    s.t0 = (uint32_t)((uint64_t)blockIdx.x * tiles / gridDim.x);
    s.t1 = (uint32_t)((uint64_t)(blockIdx.x + 1) * tiles / gridDim.x);
    s.k0 = warp * nkb / DF_WARPS;
    s.k1 = (warp + 1) * nkb / DF_WARPS;
    return s;
}

/* The producer side of a warp's ring: the next unit to copy, over all phases of the step. */
typedef struct {
    uint32_t issued, consumed, ring; /* units copied, units used, slots */
    uint32_t ph, n_ph;               /* phase of the next copy; phases in all */
    uint32_t tile, kb;               /* its tile and column block */
    const ni_cuda_layer_weights *tab; /* the layer table in shared memory */
    df_geom g;
    df_share sh;
} df_stream;

/* Moves the cursor to the first unit of phase >= ph that this warp has. */
static __device__ void df_stream_seek(df_stream &st, const ni_decode_fused_args &a, uint32_t ph) {
    for (st.ph = ph; st.ph < st.n_ph; st.ph++) {
        st.g = df_phase_geom(a, st.tab, st.ph);
        st.sh = df_share_of(st.g);
        if (st.sh.t0 < st.sh.t1 && st.sh.k0 < st.sh.k1) {
            st.tile = st.sh.t0;
            st.kb = st.sh.k0;
            return;
        }
    }
}

static __device__ __forceinline__ void df_cp_async16(uint32_t dst, const void *src, bool pred) {
    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                 "r"(pred ? 16 : 0));
}

/* Copies units until the ring is full or the step's weights are all requested. */
static __device__ void df_stream_fill(df_stream &st, const ni_decode_fused_args &a,
                                      uint32_t ring_base) {
    const uint32_t lane = threadIdx.x & 31, r = lane >> 2, t = lane & 3;
    while (st.ph < st.n_ph && st.issued - st.consumed < st.ring) {
        const uint32_t slot = ring_base + (st.issued % st.ring) * DF_UNIT_BYTES + lane * 16;
        const uint32_t col = st.kb * 32 + 8 * t;
#pragma unroll
        for (uint32_t half = 0; half < 2; half++) {
            const uint32_t o = st.tile * 16 + half * 8 + r;
            const bool ok = o < st.g.OC && col < st.g.IC;
            const uint16_t *src = ok ? st.g.w + (size_t)o * st.g.IC + col : st.g.w;
            df_cp_async16(slot + half * 512, src, ok);
        }
        asm volatile("cp.async.commit_group;\n" ::);
        st.issued++;
        if (++st.kb == st.sh.k1) {
            st.kb = st.sh.k0;
            if (++st.tile == st.sh.t1) df_stream_seek(st, a, st.ph + 1);
        }
    }
}

/* Waits until unit `consumed` has landed: at most issued - consumed - 1 newer groups pending. */
static __device__ __forceinline__ void df_stream_wait(const df_stream &st) {
    switch (st.issued - st.consumed - 1) {
#define DF_WAIT(n)                                                                                 \
    case n:                                                                                        \
        asm volatile("cp.async.wait_group " #n ";\n" ::: "memory");                                \
        break;
        DF_WAIT(0) DF_WAIT(1) DF_WAIT(2) DF_WAIT(3) DF_WAIT(4) DF_WAIT(5) DF_WAIT(6) DF_WAIT(7)
        DF_WAIT(8) DF_WAIT(9) DF_WAIT(10) DF_WAIT(11) DF_WAIT(12) DF_WAIT(13) DF_WAIT(14)
#undef DF_WAIT
    default:
        asm volatile("cp.async.wait_group 15;\n" ::: "memory");
        break;
    }
}

/* ---- GEMV phase --------------------------------------------------------------------------- */

typedef struct {
    /* sizes */
    size_t N, C, NH, HS, T, V;
    /* per-row device inputs */
    const int32_t *slot, *pos;
    /* this layer's caches (S, NH, T, HS) */
    uint16_t *k_cache, *v_cache;
    float *x;
    uint16_t *qkv, *fc;
    float *logits;
} df_ctx;

/* Output (row n, feature o) of phase kind `epi`: v = the product + bias; xold: the residual's
 * value (loaded before the tile's products, so that no load waits here). */
static __device__ __forceinline__ void df_epilogue(int epi, const df_ctx &c, size_t OC, size_t n,
                                                   size_t o, float v, float xold) {
    switch (epi) {
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
    case DF_EPI_RESIDUAL:
        c.x[n * c.C + o] = xold + df_bf(df_to_bf(v));
        break;
    case DF_EPI_GELU:
        c.fc[n * OC + o] = df_to_bf(df_gelu(v));
        break;
    default:
        c.logits[n * OC + o] = v;
        break;
    }
}

/* One GEMV phase: the block's tiles one after another; each warp multiplies its units (weights
 * from its ring, inputs xs (N, IC) bf16 from shared memory) on the tensor cores, the 16 warps'
 * partial tiles are added in warp order in shared memory (red: DF_WARPS x 128 floats) and the
 * epilogue writes the tile. */
static __device__ void df_gemv_phase(const ni_decode_fused_args &a, const df_ctx &c, uint32_t ph,
                                     int epi, const uint16_t *bias, const uint16_t *xs,
                                     float *red, df_stream &st, uint32_t ring_base) {
    const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5, r = lane >> 2, t = lane & 3;
    const df_geom g = df_phase_geom(a, st.tab, ph);
    const df_share sh = df_share_of(g);
    const bool row_ok = r < c.N;
    const uint16_t *xrow = xs + (row_ok ? r : 0) * (size_t)g.IC;
    /* thread (n, f) < N x 16 finishes feature f of row n of each tile */
    const bool fin = threadIdx.x < c.N * 16;
    const uint32_t fn = threadIdx.x / 16, ff = threadIdx.x % 16;
    for (uint32_t tile = sh.t0; tile < sh.t1; tile++) {
        const size_t fo = (size_t)tile * 16 + ff;
        float fbias = 0.0f, xold = 0.0f;
        if (fin && fo < g.OC) {
            if (bias) fbias = df_bf(bias[fo]);
            if (epi == DF_EPI_RESIDUAL) xold = __ldcg(c.x + fn * c.C + fo);
        }
        float acc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
        for (uint32_t kb = sh.k0; kb < sh.k1; kb++) {
            df_stream_wait(st);
            const uint32_t slot = ring_base + (st.consumed % st.ring) * DF_UNIT_BYTES + lane * 16;
            uint4 w0, w1;
            asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
                         : "=r"(w0.x), "=r"(w0.y), "=r"(w0.z), "=r"(w0.w)
                         : "r"(slot));
            asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
                         : "=r"(w1.x), "=r"(w1.y), "=r"(w1.z), "=r"(w1.w)
                         : "r"(slot + 512));
            const uint32_t col = kb * 32 + 8 * t;
            const uint4 xv = row_ok && col < g.IC ? *reinterpret_cast<const uint4 *>(xrow + col)
                                                  : make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
            for (int ks = 0; ks < 2; ks++) {
                const uint32_t a0 = df_word(xv, 2 * ks), a2 = df_word(xv, 2 * ks + 1);
                df_mma(acc[0], a0, 0u, a2, 0u, df_word(w0, 2 * ks), df_word(w0, 2 * ks + 1));
                df_mma(acc[1], a0, 0u, a2, 0u, df_word(w1, 2 * ks), df_word(w1, 2 * ks + 1));
            }
            st.consumed++;
            df_stream_fill(st, a, ring_base);
        }
        /* rows g (< 8): features 8 half + 2t + e in acc[half][e] */
        float *mine = red + warp * 128 + lane * 4;
        mine[0] = acc[0][0], mine[1] = acc[0][1], mine[2] = acc[1][0], mine[3] = acc[1][1];
        __syncthreads();
        if (fin && fo < g.OC) {
            const uint32_t idx = (fn * 4 + (ff % 8) / 2) * 4 + (ff / 8) * 2 + (ff % 2);
            float v = 0.0f;
            for (int w = 0; w < DF_WARPS; w++) v += red[w * 128 + idx];
            df_epilogue(epi, c, g.OC, fn, fo, v + fbias, xold);
        }
        __syncthreads();
    }
}

/* Copies src (N, K) bf16 (written during this kernel: through L2) to shared memory, all loads in
 * flight together. K % 8 == 0. */
static __device__ void df_stage(uint16_t *dst, const uint16_t *src, size_t N, size_t K) {
    const size_t n16 = N * K / 8;
    const uint4 *s4 = reinterpret_cast<const uint4 *>(src);
    uint4 *d4 = reinterpret_cast<uint4 *>(dst);
    for (size_t i0 = threadIdx.x; i0 < n16; i0 += 4 * DF_THREADS) {
        uint4 v[4];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const size_t i = i0 + (size_t)k * DF_THREADS;
            v[k] = df_ld_cg16(s4 + (i < n16 ? i : 0), i < n16);
        }
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const size_t i = i0 + (size_t)k * DF_THREADS;
            if (i < n16) d4[i] = v[k];
        }
    }
    __syncthreads();
}

/* ---- LayerNorm into shared memory --------------------------------------------------------- */

/* out (N, C) bf16 in shared memory = LayerNorm(x rows) * w + b. The rows are first staged in
 * shared memory (xs, N * C floats) with every load in flight at once (one L2 round trip); then
 * each row gets a group of 16 / N' warps (N' = N rounded up to a power of two) for the CPU twin's
 * two-pass statistics (fixed-order sums) and the normalized, scaled output. red: DF_WARPS floats. */
static __device__ void df_layernorm(uint16_t *out, float *xs, float *red, const float *x,
                                    const uint16_t *w_g, const uint16_t *b_g, size_t N, size_t C,
                                    float eps) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const size_t n4 = N * C / 4; /* C % 8 == 0 */
    /* the scale and shift to shared memory too (after the rows), requested first */
    uint16_t *w = reinterpret_cast<uint16_t *>(xs + N * C), *b = w + C;
    const uint2 *w4 = reinterpret_cast<const uint2 *>(w_g), *b4 = reinterpret_cast<const uint2 *>(b_g);
    const bool wb0 = threadIdx.x < C / 4;
    const uint2 wv0 = wb0 ? __ldg(w4 + threadIdx.x) : make_uint2(0u, 0u);
    const uint2 bv0 = wb0 ? __ldg(b4 + threadIdx.x) : make_uint2(0u, 0u);
    const float4 *x4 = reinterpret_cast<const float4 *>(x);
    float4 *xs4 = reinterpret_cast<float4 *>(xs);
    for (size_t i0 = threadIdx.x; i0 < n4; i0 += 4 * DF_THREADS) {
        float4 v[4];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const size_t i = i0 + (size_t)k * DF_THREADS;
            v[k] = i < n4 ? __ldcg(x4 + i) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const size_t i = i0 + (size_t)k * DF_THREADS;
            if (i < n4) xs4[i] = v[k];
        }
    }
    if (wb0) {
        reinterpret_cast<uint2 *>(w)[threadIdx.x] = wv0;
        reinterpret_cast<uint2 *>(b)[threadIdx.x] = bv0;
    }
    for (size_t i = threadIdx.x + DF_THREADS; i < C / 4; i += DF_THREADS) { /* C > 2048 */
        reinterpret_cast<uint2 *>(w)[i] = __ldg(w4 + i);
        reinterpret_cast<uint2 *>(b)[i] = __ldg(b4 + i);
    }
    int np = 1;
    while (np < (int)N) np *= 2;
    const int gw = DF_WARPS / np;          /* warps per row */
    const size_t n = (size_t)(warp / gw);  /* this warp's row (>= N: idle) */
    const int li = (warp % gw) * 32 + lane, stride = gw * 32;
    const float *xr = xs + (n < N ? n : 0) * C;
    __syncthreads();
    float sum = 0.0f;
    if (n < N)
        for (size_t i = (size_t)li; i < C; i += (size_t)stride) sum += xr[i];
    sum = df_warp_sum(sum);
    if (lane == 0) red[warp] = sum;
    __syncthreads();
    float tot = 0.0f;
    for (int k = 0; k < gw; k++) tot += red[(warp / gw) * gw + k];
    const float mean = tot / (float)C;
    __syncthreads(); /* red is reused */
    float sq = 0.0f;
    if (n < N)
        for (size_t i = (size_t)li; i < C; i += (size_t)stride) {
            const float d = xr[i] - mean;
            sq += d * d;
        }
    sq = df_warp_sum(sq);
    if (lane == 0) red[warp] = sq;
    __syncthreads();
    tot = 0.0f;
    for (int k = 0; k < gw; k++) tot += red[(warp / gw) * gw + k];
    const float rstd = rsqrtf(tot / (float)C + eps);
    if (n < N) {
        uint32_t *o2 = reinterpret_cast<uint32_t *>(out + n * C);
        const uint32_t *w2 = reinterpret_cast<const uint32_t *>(w);
        const uint32_t *b2 = reinterpret_cast<const uint32_t *>(b);
        for (size_t i = (size_t)li; i < C / 2; i += (size_t)stride) {
            const uint32_t wp = w2[i], bp = b2[i];
            const float lo = (xr[2 * i] - mean) * rstd * __uint_as_float(wp << 16) +
                             __uint_as_float(bp << 16);
            const float hi = (xr[2 * i + 1] - mean) * rstd * __uint_as_float(wp & 0xffff0000u) +
                             __uint_as_float(bp & 0xffff0000u);
            o2[i] = (uint32_t)df_to_bf(lo) | ((uint32_t)df_to_bf(hi) << 16);
        }
    }
    __syncthreads();
}

/* ---- attention ---------------------------------------------------------------------------- */

/* Block max or sum of v; red: DF_WARPS floats of shared memory. */
template <bool MAX> static __device__ __forceinline__ float df_block_reduce(float v, float *red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = MAX ? df_warp_max(v) : df_warp_sum(v);
    __syncthreads(); /* red may still be read from the previous call */
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = red[lane % DF_WARPS];
    return MAX ? df_warp_max(v) : df_warp_sum(v); /* lanes >= 16 repeat lanes 0..15: max only */
}

/* One block per (row, head) item: q (pre-scaled) to shared memory; thread j scores position j
 * with all of its key loads in flight; block max and sum; then warp w accumulates positions
 * w, w + 16, ... with lane l owning the dimension pairs 2l + 64k of the value rows (coalesced
 * loads, several positions in flight); the 16 warps' sums are added in shared memory. */
static __device__ void df_attention(uint16_t *att, const df_ctx &c, float *sm) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const size_t HS = c.HS, C = c.C;
    float *q = sm;                  /* (128) */
    float *red = q + 128;           /* (DF_WARPS) */
    float *wacc = red + DF_WARPS;   /* (DF_WARPS, 128) */
    float *sc = wacc + DF_WARPS * 128; /* (T) scores, then probabilities */
    const float scale = rsqrtf((float)HS);
    for (size_t item = blockIdx.x; item < c.N * c.NH; item += gridDim.x) {
        const size_t n = item / c.NH, h = item % c.NH;
        const int p = c.pos[n];
        const uint16_t *qs = c.qkv + n * 3 * C + h * HS;
        for (size_t d = threadIdx.x; d < HS; d += DF_THREADS) q[d] = df_bf(__ldcg(qs + d)) * scale;
        __syncthreads();
        const size_t head = ((size_t)c.slot[n] * c.NH + h) * c.T * HS;
        const uint16_t *kc = c.k_cache + head, *vc = c.v_cache + head;
        /* value words of positions warp + 16 u (u < 8) for lane dims 2 lane + 64 k, requested
         * now with the keys: neither depends on the softmax */
        uint32_t vv[8][2];
#pragma unroll
        for (int u = 0; u < 8; u++) {
            const int j = warp + u * DF_WARPS;
#pragma unroll
            for (int k = 0; k < 2; k++) {
                const size_t d = (size_t)(2 * lane + 64 * k);
                vv[u][k] = j <= p && d < HS
                               ? __ldcg(reinterpret_cast<const unsigned *>(vc + (size_t)j * HS + d))
                               : 0u;
            }
        }
        float mx = -INFINITY;
        for (int j = (int)threadIdx.x; j <= p; j += DF_THREADS) {
            const uint16_t *kr = kc + (size_t)j * HS;
            float dot = 0.0f;
#pragma unroll
            for (int k0 = 0; k0 < 16; k0 += 8) {
                if ((size_t)(8 * k0) >= HS) break;
                uint4 kv[8];
#pragma unroll
                for (int k = 0; k < 8; k++)
                    kv[k] = df_ld_cg16(kr + 8 * (k0 + k), (size_t)(8 * (k0 + k)) < HS);
#pragma unroll
                for (int k = 0; k < 8; k++) {
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const uint32_t wd = df_word(kv[k], e);
                        const int d = 8 * (k0 + k) + 2 * e;
                        if ((size_t)d < HS)
                            dot += q[d] * __uint_as_float(wd << 16) +
                                   q[d + 1] * __uint_as_float(wd & 0xffff0000u);
                    }
                }
            }
            sc[j] = dot;
            mx = fmaxf(mx, dot);
        }
        const float M = df_block_reduce<true>(mx, red);
        float sum = 0.0f;
        for (int j = (int)threadIdx.x; j <= p; j += DF_THREADS) {
            const float e = __expf(sc[j] - M);
            sc[j] = e;
            sum += e;
        }
        /* the sum over warps: each warp's total in red, added in a fixed order below */
        sum = df_warp_sum(sum);
        __syncthreads();
        if (lane == 0) red[warp] = sum;
        __syncthreads(); /* also publishes sc */
        float Ls = 0.0f;
        for (int w = 0; w < DF_WARPS; w++) Ls += red[w];
        float acc[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
        for (int j0 = warp; j0 <= p; j0 += 8 * DF_WARPS) {
            if (j0 != warp) { /* later rounds (contexts past 128) load here */
#pragma unroll
                for (int u = 0; u < 8; u++) {
                    const int j = j0 + u * DF_WARPS;
#pragma unroll
                    for (int k = 0; k < 2; k++) {
                        const size_t d = (size_t)(2 * lane + 64 * k);
                        vv[u][k] = j <= p && d < HS ? __ldcg(reinterpret_cast<const unsigned *>(
                                                          vc + (size_t)j * HS + d))
                                                    : 0u;
                    }
                }
            }
#pragma unroll
            for (int u = 0; u < 8; u++) {
                const int j = j0 + u * DF_WARPS;
                const float pj = j <= p ? sc[j] : 0.0f;
#pragma unroll
                for (int k = 0; k < 2; k++) {
                    acc[k][0] += pj * __uint_as_float(vv[u][k] << 16);
                    acc[k][1] += pj * __uint_as_float(vv[u][k] & 0xffff0000u);
                }
            }
        }
#pragma unroll
        for (int k = 0; k < 2; k++) {
            const size_t d = (size_t)(2 * lane + 64 * k);
            if (d < HS) {
                wacc[warp * 128 + d] = acc[k][0];
                wacc[warp * 128 + d + 1] = acc[k][1];
            }
        }
        __syncthreads();
        for (size_t d = threadIdx.x; d < HS; d += DF_THREADS) {
            float a = 0.0f;
            for (int w = 0; w < DF_WARPS; w++) a += wacc[w * 128 + d];
            att[n * C + h * HS + d] = df_to_bf(a / Ls);
        }
        __syncthreads();
    }
}

/* ---- the kernel --------------------------------------------------------------------------- */

/* Dynamic shared memory: the rings (DF_WARPS x ring units), the reduction tile (DF_WARPS x 128
 * floats), then the staging area: the GEMV inputs (N, IC) bf16 (LayerNorm: + (N, C) f32 rows)
 * or the attention scratch. */
__global__ void __launch_bounds__(DF_THREADS, 1)
    decode_fused_kernel(ni_decode_fused_args a, uint32_t ring) {
    extern __shared__ uint4 df_smem4[];
    const size_t L = a.L, tab_bytes = (L * sizeof(ni_cuda_layer_weights) + 15) & ~(size_t)15;
    ni_cuda_layer_weights *tab = reinterpret_cast<ni_cuda_layer_weights *>(df_smem4);
    int32_t *s_slot = reinterpret_cast<int32_t *>(reinterpret_cast<uint8_t *>(df_smem4) + tab_bytes);
    int32_t *s_pos = s_slot + NI_CUDA_DECODE_FUSED_MAX_ROWS;
    uint8_t *smem = reinterpret_cast<uint8_t *>(df_smem4) + tab_bytes + 64;
    const uint32_t warp = threadIdx.x >> 5;
    const uint32_t ring_base =
        (uint32_t)__cvta_generic_to_shared(smem) + warp * ring * DF_UNIT_BYTES;
    float *red = reinterpret_cast<float *>(smem + (size_t)DF_WARPS * ring * DF_UNIT_BYTES);
    uint8_t *stage = reinterpret_cast<uint8_t *>(red + DF_WARPS * 128);
    uint16_t *xs = reinterpret_cast<uint16_t *>(stage);                     /* (N, IC) */
    float *ln_tmp = reinterpret_cast<float *>(stage + (a.N * a.C + 3) / 4 * 8); /* (N, C) */
    float *att_tmp = reinterpret_cast<float *>(stage);
    const size_t C = a.C, N = a.N;
    /* the layer table and the rows' slots and positions, read once */
    for (size_t i = threadIdx.x; i < tab_bytes / 8; i += DF_THREADS)
        reinterpret_cast<uint64_t *>(tab)[i] = __ldg(reinterpret_cast<const uint64_t *>(a.layers) + i);
    if (threadIdx.x < N) {
        s_slot[threadIdx.x] = a.slot[threadIdx.x];
        s_pos[threadIdx.x] = a.pos[threadIdx.x];
    }
    __syncthreads();
    unsigned target = 0;
    uint32_t bk = 0; /* barriers passed */
    if (a.trace && blockIdx.x == 0 && threadIdx.x == 0) a.trace[2 * (5 * L + 1) + 1] = df_now();

    df_ctx c;
    c.N = N, c.C = C, c.NH = a.NH, c.HS = C / a.NH, c.T = a.T, c.V = a.V;
    c.slot = s_slot, c.pos = s_pos;
    c.x = a.x, c.qkv = a.qkv, c.fc = a.fc, c.logits = a.logits;

    /* start streaming the step's weights, then the embedding */
    df_stream st;
    st.issued = st.consumed = 0;
    st.ring = ring;
    st.n_ph = 4 * (uint32_t)L + 1;
    st.tab = tab;
    df_stream_seek(st, a, 0);
    df_stream_fill(st, a, ring_base);
    for (size_t i = (size_t)blockIdx.x * DF_THREADS + threadIdx.x; i < N * C;
         i += (size_t)gridDim.x * DF_THREADS) {
        const size_t n = i / C, k = i % C;
        a.x[i] = df_bf(a.wte[(size_t)a.tok[n] * C + k]) + df_bf(a.wpe[(size_t)s_pos[n] * C + k]);
    }
    df_grid_sync(a.barrier, target, a.trace, bk);

    for (uint32_t l = 0; l < (uint32_t)L; l++) {
        const ni_cuda_layer_weights *y = tab + l;
        c.k_cache = a.k_cache + l * a.kv_layer;
        c.v_cache = a.v_cache + l * a.kv_layer;
        if (!(a.skip & 4)) df_layernorm(xs, ln_tmp, red, a.x, y->ln1_w, y->ln1_b, N, C, a.eps);
        df_gemv_phase(a, c, 4 * l, DF_EPI_QKV, y->qkv_b, xs, red, st, ring_base);
        df_grid_sync(a.barrier, target, a.trace, bk);

        if (!(a.skip & 2)) df_attention(a.att, c, att_tmp);
        df_grid_sync(a.barrier, target, a.trace, bk);

        df_stage(xs, a.att, N, C);
        df_gemv_phase(a, c, 4 * l + 1, DF_EPI_RESIDUAL, y->proj_b, xs, red, st, ring_base);
        df_grid_sync(a.barrier, target, a.trace, bk);

        if (!(a.skip & 4)) df_layernorm(xs, ln_tmp, red, a.x, y->ln2_w, y->ln2_b, N, C, a.eps);
        df_gemv_phase(a, c, 4 * l + 2, DF_EPI_GELU, y->fc_b, xs, red, st, ring_base);
        df_grid_sync(a.barrier, target, a.trace, bk);

        df_stage(xs, a.fc, N, 4 * C);
        df_gemv_phase(a, c, 4 * l + 3, DF_EPI_RESIDUAL, y->fcproj_b, xs, red, st, ring_base);
        df_grid_sync(a.barrier, target, a.trace, bk);
    }
    df_layernorm(xs, ln_tmp, red, a.x, a.lnf_w, a.lnf_b, N, C, a.eps);
    df_gemv_phase(a, c, 4 * (uint32_t)L, DF_EPI_LOGITS, NULL, xs, red, st, ring_base);
    __syncthreads();
    if (a.trace && threadIdx.x == 0) atomicMax(a.trace + 2 * bk, (unsigned long long)df_now());
}

/* ---- launcher ----------------------------------------------------------------------------- */

/* Shared memory besides the rings: the reduction tile and the staging area. */
static size_t df_fixed_smem(size_t N, size_t C, size_t T, size_t L) {
    size_t gemv_in = N * 4 * C * 2, ln = (N * C + 3) / 4 * 8 + N * C * 4 + 4 * C;
    size_t attn = (128 + DF_WARPS + DF_WARPS * 128 + T) * 4;
    size_t st = gemv_in > ln ? gemv_in : ln;
    if (attn > st) st = attn;
    const size_t tab = (L * sizeof(ni_cuda_layer_weights) + 15) & ~(size_t)15;
    return tab + 64 + (size_t)DF_WARPS * 128 * 4 + ((st + 15) & ~(size_t)15);
}

/* The largest dynamic shared memory of a block on this device. */
static size_t df_smem_limit(void) {
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
        return 0;
    return (size_t)v;
}

/* Ring slots per warp that fit next to the fixed part (0: the sizes don't fit). */
static uint32_t df_ring_units(size_t N, size_t C, size_t T, size_t L, size_t limit) {
    const size_t fixed = df_fixed_smem(N, C, T, L);
    if (fixed >= limit) return 0;
    size_t ring = (limit - fixed) / ((size_t)DF_WARPS * DF_UNIT_BYTES);
    if (ring > DF_RING_MAX) ring = DF_RING_MAX;
    return ring < 4 ? 0 : (uint32_t)ring;
}

extern "C" int ni_cuda_decode_fused_supported(size_t N, size_t C, size_t NH, size_t T, size_t L) {
    if (N == 0 || N > NI_CUDA_DECODE_FUSED_MAX_ROWS || NH == 0 || C % NH) return 0;
    const size_t HS = C / NH;
    if (C % 8 || HS % 8 || HS > 128 || 4 * C > 0xffffffu) return 0;
    const size_t limit = df_smem_limit();
    cudaGetLastError();
    return df_ring_units(N, C, T, L, limit) != 0;
}

extern "C" int ni_cuda_decode_fused_grid(size_t *blocks, size_t *warps) {
    int dev = 0, sms = 0, per_sm = 0;
    const size_t limit = df_smem_limit();
    cudaError_t e = limit ? cudaGetDevice(&dev) : cudaErrorInvalidConfiguration;
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(decode_fused_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)limit);
    if (e == cudaSuccess)
        e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, decode_fused_kernel, DF_THREADS,
                                                          limit);
    if (e == cudaSuccess && per_sm < 1) e = cudaErrorInvalidConfiguration;
    if (e != cudaSuccess) return (int)e;
    /* one block per SM: the barriers need every block resident */
    *blocks = (size_t)sms;
    *warps = (size_t)sms * DF_WARPS;
    return 0;
}

extern "C" int ni_cuda_decode_fused(const ni_decode_fused_args *a, size_t blocks, ni_stream s) {
    if (!ni_cuda_decode_fused_supported(a->N, a->C, a->NH, a->T, a->L) || blocks == 0)
        return (int)cudaErrorInvalidValue;
    const size_t limit = df_smem_limit();
    const uint32_t ring = df_ring_units(a->N, a->C, a->T, a->L, limit);
    const size_t smem =
        df_fixed_smem(a->N, a->C, a->T, a->L) + (size_t)DF_WARPS * ring * DF_UNIT_BYTES;
    cudaStream_t st = (cudaStream_t)s;
    /* the barrier counter starts at zero */
    cudaError_t e = cudaMemsetAsync(a->barrier, 0, sizeof(unsigned), st);
    if (e == cudaSuccess && a->trace)
        e = cudaMemsetAsync(a->trace, 0, ni_cuda_decode_fused_trace_words(a->L) * 8, st);
    if (e != cudaSuccess) return (int)e;
    decode_fused_kernel<<<(unsigned)blocks, DF_THREADS, smem, st>>>(*a, ring);
    return (int)cudaGetLastError();
}
