/* The whole decode step of a small batch (N <= 8 rows, one new token each) as one persistent
 * kernel: embedding, every transformer block and the logits, with grid-wide barriers between
 * the phases instead of kernel boundaries. At batch 1 the per-kernel path runs 8 small kernels
 * per layer, each streaming a 5-20 MB matrix in a few microseconds, and every boundary (drain,
 * launch, first loads) costs about as much as the transfer. Here one block per SM stays resident
 * for the whole step, and the phases are
 *   embedding | per layer: ln_1 + qkv (+ KV append) | attention | proj (+ residual) |
 *   ln_2 + fc (+ GELU) | fcproj (+ residual) | ln_f + logits
 * with one barrier after each (1 + 5 L barriers).
 * Weight streaming is decoupled from the barriers: weights never depend on the step, so a
 * producer warp per block copies the block's share of every GEMV of the step, in order, with TMA
 * (cp.async.bulk.tensor: 16 rows x 256 columns per copy) into a ring of shared-memory slots
 * guarded by mbarriers, as far ahead as the ring allows, while the 16 consumer warps wait at
 * barriers, normalize, or attend. (Loads through the load units, cp.async included, were tried
 * first: they stay near 30 GB/s per SM, which left HBM at 1.2-2 TB/s in the short GEMV phases.)
 * GEMV phases: the blocks own consecutive 16-row tiles (split evenly), taken up to 4 at a time;
 * slab j of such a group goes to consumer warp j % 16, which runs the tensor-core product of
 * gemv.cu (mma.m16n8k16, bf16 in, f32 accumulate, the batch rows as the A operand padded to 8)
 * over its 8 units of 32 columns; the warps' partial tiles are added in warp order in shared
 * memory, so results are deterministic and, the partition depending only on the shapes and the
 * grid, independent of the batch. The epilogue's inputs (biases, residual values) are copied
 * into shared memory while the phase's LayerNorm or staging runs.
 * LayerNorm phases stage the N residual rows and the scale and shift in shared memory (one L2
 * round trip) and normalize them in every block (the CPU twin's two-pass statistics); the other
 * GEMV inputs (attention output, MLP activations) are staged the same way. Data written during
 * the kernel by other SMs (residual stream, activations, caches) is read with ld.global.cg (L2,
 * never a stale L1 line). Rounding follows the per-kernel path: qkv, attention output and fc
 * activations are bf16, each GEMV result is rounded to bf16 before the residual add, logits f32.
 * Attention: one block per (row, head) item: thread j scores position j with all its key loads
 * in flight, block max and sum, then warp w accumulates positions w, w + 16, ... (the first
 * value rows requested together with q), lanes owning dimension pairs.
 * All blocks must be resident at once (the barriers spin): one block per SM, sized from the
 * occupancy query, a cooperative launch (which fails rather than hang when they cannot be),
 * without programmatic dependent launch. bf16 only. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "cuda/device_math.cuh"
#include "cuda/dtype.cuh"
#include "cuda/kernels.h"
#include "cuda/tma.cuh"

#define DF_THREADS 512 /* the consumers: 16 warps; one more warp streams the weights */
#define DF_WARPS (DF_THREADS / 32)
#define DF_BLOCK (DF_THREADS + 32)

/* A barrier of the 16 consumer warps only (named barrier 1): the producer warp never joins. */
static __device__ __forceinline__ void df_bar(void) {
    asm volatile("bar.sync 1, %0;" ::"n"(DF_THREADS) : "memory");
}

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

/* ---- a phase's epilogue inputs, copied ahead -----------------------------------------------
 * While the producers keep HBM saturated with weight slabs, a demand miss of the consumers waits
 * behind them: the GEMV tiles' biases, read once per step, were such misses on the critical path
 * of every tile, and the residual values an L2 round trip. So each GEMV phase, at its start,
 * copies those of its tiles into shared memory with cp.async while its LayerNorm or input staging
 * runs (gpt2-xl, H200: +1.2 % at batch 1, +2.6 % at 2). Copying the next phase's biases and
 * LayerNorm parameters a phase ahead instead measured slower (+1.6 % at 2, -0.5 % at 1): the
 * extra loads delayed the staging loads issued after them. */

/* This thread's copies have landed. */
static __device__ __forceinline__ void df_cp_async_wait_all(void) {
    asm volatile("cp.async.commit_group;\n\tcp.async.wait_all;" ::: "memory");
}

/* ---- grid barrier ------------------------------------------------------------------------- */

/* Every block arrives once per barrier; `target` (thread 0's) counts the arrivals to wait for.
 * The counter is zeroed before each launch. */
static __device__ __forceinline__ uint64_t df_now(void) {
    uint64_t t;
    asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
    return t;
}

/* -DDF_TRACE_DETAIL (a diagnostic build, never the default): besides the barrier times, per
 * block and phase the words of ni_cuda_decode_fused_trace_detail_words, written after the
 * basic trace words: for each of the 5 L + 2 consumer phases k (the embedding, per layer ln_1 +
 * qkv, attention, proj, ln_2 + fc, fcproj, then ln_f + logits) and block b, at
 * [(k * blocks + b) * 8]: the phase's start (barrier left), the end of its LayerNorm or input
 * staging (0: none), its end (barrier reached), in globaltimer ns, the cycles its warps spent
 * waiting for weight slabs to land (summed over the warps), then for LayerNorm phases the times
 * at which the rows were staged, the mean and the deviation were known, and the LayerNorm began;
 * then for each of the 4 L + 1 GEMV phases and block, 4 words: the producer's first and last
 * slab issue (ns) and the cycles it waited for a free ring slot while issuing that phase's slabs.
 */
#ifdef DF_TRACE_DETAIL
#define DF_TD(...) __VA_ARGS__
#define DF_TD_LN(k) (a.trace ? df_td_cons(a.trace, (uint32_t)a.L, k) + 4 : NULL)
#else
#define DF_TD(...)
#define DF_TD_LN(k) NULL
#endif

#ifdef DF_TRACE_DETAIL
static __device__ __forceinline__ unsigned long long *df_td_cons(unsigned long long *trace,
                                                                 uint32_t L, uint32_t k) {
    return trace + ni_cuda_decode_fused_trace_words(L) + ((size_t)k * gridDim.x + blockIdx.x) * 8;
}

static __device__ __forceinline__ unsigned long long *df_td_prod(unsigned long long *trace,
                                                                 uint32_t L, uint32_t ph) {
    return trace + ni_cuda_decode_fused_trace_words(L) + (size_t)(5 * L + 2) * gridDim.x * 8 +
           ((size_t)ph * gridDim.x + blockIdx.x) * 4;
}
#endif

/* trace (optional): per barrier k, the latest arrival over the blocks [2k] and block 0's exit
 * [2k + 1], in ns (globaltimer). */
static __device__ __forceinline__ void df_grid_sync(unsigned *counter, unsigned &target,
                                                    unsigned long long *trace, uint32_t &k,
                                                    uint32_t L) {
    (void)L;  /* the layers, for -DDF_TRACE_DETAIL */
    df_bar(); /* the block's writes happen before thread 0's release below */
    if (trace && threadIdx.x == 0) atomicMax(trace + 2 * k, (unsigned long long)df_now());
    DF_TD(if (trace && threadIdx.x == 0) df_td_cons(trace, L, k)[2] = df_now());
    if (threadIdx.x == 0) {
        target += gridDim.x;
        asm volatile("fence.acq_rel.gpu;\n\tred.relaxed.gpu.global.add.u32 [%0], 1;" ::"l"(counter)
                     : "memory");
        unsigned seen;
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];"
                         : "=r"(seen)
                         : "l"(counter)
                         : "memory");
        } while (seen < target);
        if (trace && blockIdx.x == 0) trace[2 * k + 1] = df_now();
        DF_TD(if (trace) df_td_cons(trace, L, k + 1)[0] = df_now());
    }
    k++;
    df_bar();
}

/* ---- weight streaming: one producer warp, a ring of TMA slabs ---------------------------------
 */

/* A slab: 16 weight rows (one tile) x 256 columns, one 2D tensor copy (TMA, which keeps far more
 * bytes in flight per SM than the load units do; columns past IC and rows past OC arrive as
 * zeros) into a ring slot, row pitch 512 bytes. The
 * producer issues the slabs of every GEMV phase of the step in consumption order, as far ahead
 * as the ring allows, independent of the barriers; each slot has a "full" mbarrier (transaction
 * bytes) and an "empty" one (the consuming warp's arrival). */
#define DF_SLAB_COLS NI_CUDA_SLAB_COLS
#define DF_SLAB_PITCH 512
#define DF_SLAB_BYTES (16 * DF_SLAB_PITCH)
#ifndef DF_RING_MAX
#define DF_RING_MAX 32 /* slots, as many as shared memory allows up to this */
#endif

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

/* This block's tiles [t0, t1) of a phase (tiles split evenly over the blocks) and the slabs of a
 * tile. */
typedef struct {
    uint32_t t0, t1, nslab;
} df_share;

static __device__ __forceinline__ df_share df_share_of(const df_geom &g) {
    const uint32_t tiles = (g.OC + 15) / 16;
    df_share s;
    s.t0 = (uint32_t)((uint64_t)blockIdx.x * tiles / gridDim.x);
    s.t1 = (uint32_t)((uint64_t)(blockIdx.x + 1) * tiles / gridDim.x);
    s.nslab = (g.IC + DF_SLAB_COLS - 1) / DF_SLAB_COLS;
    return s;
}

/* Phase ph's epilogue inputs into shared memory (cp.async): the biases of the block's tiles (pb:
 * tiles x 16 bf16) and, residual phases, the residual rows' values at those features (px: (N,
 * tiles x 16) f32), written before the last grid barrier. OC and C are multiples of 8, so each
 * 16-byte piece lies wholly inside or outside a vector. */
static __device__ void df_preload(uint16_t *pb, float *px, const ni_decode_fused_args &a,
                                  const ni_cuda_layer_weights *tab, uint32_t ph,
                                  const uint16_t *bias, bool residual) {
    const df_geom g = df_phase_geom(a, tab, ph);
    const df_share sh = df_share_of(g);
    const uint32_t nt = sh.t1 - sh.t0;
    /* copy k by lane k / 16 of warp k % 16, so that each warp issues few: they all wait for the
     * slowest at the LayerNorm's or staging's barrier (+1.2 % at gpt2-xl batch 1, H200, against
     * the first threads issuing them all) */
    const uint32_t me = (threadIdx.x & 31) * DF_WARPS + (threadIdx.x >> 5);
    const uint32_t kb = me, kr0 = (me + DF_THREADS - 2 * nt % DF_THREADS) % DF_THREADS;
    if (bias && kb < 2 * nt && sh.t0 * 16 + kb * 8 < g.OC) /* nt <= 256: df_ring_units */
        ni_cp_async16(pb + kb * 8, bias + sh.t0 * 16 + kb * 8);
    if (residual)
        for (uint32_t i = kr0; i < a.N * nt * 4; i += DF_THREADS) {
            const uint32_t n = i / (nt * 4), j = i % (nt * 4);
            if (sh.t0 * 16 + j * 4 < g.OC)
                ni_cp_async16(px + (size_t)i * 4, a.x + n * a.C + sh.t0 * 16 + j * 4);
        }
}

/* A position in the block's slab sequence: phase, tile, slab of the tile. */
typedef struct {
    uint32_t ph, tile, sl, t1, nslab;
} df_iter;

static __device__ __forceinline__ void df_iter_settle(df_iter &it, const ni_decode_fused_args &a,
                                                      const ni_cuda_layer_weights *tab) {
    const uint32_t n_ph = 4 * (uint32_t)a.L + 1;
    for (; it.ph < n_ph; it.ph++) {
        const df_share sh = df_share_of(df_phase_geom(a, tab, it.ph));
        if (sh.t0 < sh.t1) {
            it.tile = sh.t0, it.t1 = sh.t1, it.sl = 0, it.nslab = sh.nslab;
            return;
        }
    }
}

static __device__ __forceinline__ void df_iter_next(df_iter &it, const ni_decode_fused_args &a,
                                                    const ni_cuda_layer_weights *tab) {
    if (++it.sl < it.nslab) return;
    it.sl = 0;
    if (++it.tile < it.t1) return;
    it.ph++;
    df_iter_settle(it, a, tab);
}

/* The producer (one lane): every slab of the step, in the consumers' order, walked by an
 * iterator (4.5 % faster at gpt2-xl batch 1 than the nested phase / tile / slab loops it
 * replaced, H200). */
static __device__ void df_produce(const ni_decode_fused_args &a, const ni_cuda_layer_weights *tab,
                                  uint32_t ring_base, uint32_t bars, uint32_t ring) {
    const uint32_t n_ph = 4 * (uint32_t)a.L + 1;
    df_iter cp = {0u, 0u, 0u, 0u, 1u};
    df_iter_settle(cp, a, tab);
    DF_TD(uint32_t td_ph = ~0u; unsigned long long td_wait = 0;)
    for (uint32_t seq = 0; cp.ph < n_ph; seq++) {
        const uint32_t slot = seq % ring, full = bars + slot * 16, empty = full + 8;
        DF_TD(if (a.trace && cp.ph != td_ph) {
            if (td_ph != ~0u) df_td_prod(a.trace, (uint32_t)a.L, td_ph)[2] = td_wait;
            td_ph = cp.ph, td_wait = 0;
            df_td_prod(a.trace, (uint32_t)a.L, td_ph)[0] = df_now();
        } const long long td_c0 = clock64();)
        ni_mbar_wait(empty, ((seq / ring) & 1u) ^ 1u);
        DF_TD(if (a.trace) {
            td_wait += (unsigned long long)(clock64() - td_c0);
            df_td_prod(a.trace, (uint32_t)a.L, td_ph)[1] = df_now();
        })
        ni_mbar_expect(full, DF_SLAB_BYTES);
        ni_tma_load_2d(ring_base + slot * DF_SLAB_BYTES,
                       (const uint8_t *)a.tmaps + (size_t)cp.ph * 128, cp.sl * DF_SLAB_COLS,
                       cp.tile * 16, full);
        df_iter_next(cp, a, tab);
    }
    DF_TD(if (a.trace && td_ph != ~0u) df_td_prod(a.trace, (uint32_t)a.L, td_ph)[2] = td_wait;)
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
 * value (copied into shared memory at the phase's start by df_preload). */
static __device__ __forceinline__ void df_epilogue(int epi, const df_ctx &c, size_t OC, size_t n,
                                                   size_t o, float v, float xold) {
    switch (epi) {
    case DF_EPI_QKV: {
        const uint16_t b = ni_dt_bf16::from_float(v);
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
        c.x[n * c.C + o] = xold + ni_dt_bf16::to_float(ni_dt_bf16::from_float(v));
        break;
    case DF_EPI_GELU:
        c.fc[n * OC + o] = ni_dt_bf16::from_float(ni_gelu_tanh(v));
        break;
    default:
        c.logits[n * OC + o] = v;
        break;
    }
}

/* Tiles finished together: their slabs spread over all 16 warps at once, their partial sums side
 * by side in shared memory (only the N real rows of each warp's tile: 4 KB a row for 4 tiles),
 * one reduction. One tile at a time left 9 of the 16 warps idle on gpt2-xl's 7-slab tiles and
 * paid a reduction per tile (the trace: 1.5 us a tile). Measured on an H200 in one call, gpt2-xl
 * cuda_graphs at batch 1 / 2: 1 tile 570 / 1,092 tokens/s, 3 tiles 589 / 1,114, 4 tiles 593 /
 * 1,118, and with DF_RING_MAX 32 (the smaller partial sums leave room for a 25th slot at batch
 * 1) 601 / 1,116. */
#ifndef DF_GROUP
#define DF_GROUP 4
#endif
/* the epilogue finishes a group's outputs with one thread each */
static_assert(DF_GROUP * NI_CUDA_DECODE_FUSED_MAX_ROWS * 16 <= DF_THREADS, "DF_GROUP too large");

/* One GEMV phase: the block's tiles in groups of up to DF_GROUP; slab j of a group (tile-major,
 * as the producer copies them) goes to warp j % 16, which multiplies its 8 units of 32 columns
 * (weights from the ring slot, inputs xs (N, IC) bf16 from shared memory) on the tensor cores;
 * the 16 warps' partial tiles are added in warp order (red: DF_GROUP x DF_WARPS x N x 16 floats)
 * and the epilogue writes the group's tiles. seq: the block's slab count. */
static __device__ void df_gemv_phase(const ni_decode_fused_args &a, const df_ctx &c,
                                     const ni_cuda_layer_weights *tab, uint32_t ph, int epi,
                                     const uint16_t *bias, const uint16_t *xs, float *red,
                                     uint32_t &seq, uint32_t ring_base, uint32_t bars,
                                     uint32_t ring, const uint16_t *pb, const float *px,
                                     uint32_t td_k) {
    (void)td_k; /* the phase, for -DDF_TRACE_DETAIL */
    const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5, r = lane >> 2, t = lane & 3;
    const df_geom g = df_phase_geom(a, tab, ph);
    const df_share sh = df_share_of(g);
    const bool row_ok = r < c.N;
    const uint16_t *xrow = xs + (row_ok ? r : 0) * (size_t)g.IC;
    const uint32_t per_tile = (uint32_t)c.N * 16;
    DF_TD(unsigned long long td_wait = 0;)
    for (uint32_t g0 = sh.t0; g0 < sh.t1; g0 += DF_GROUP) {
        const uint32_t nt = sh.t1 - g0 < DF_GROUP ? sh.t1 - g0 : DF_GROUP;
        /* thread (tile, n, f) < nt x N x 16 finishes feature f of row n of that tile */
        const bool fin = threadIdx.x < nt * per_tile;
        const uint32_t ft = threadIdx.x / per_tile, fn = threadIdx.x % per_tile / 16,
                       ff = threadIdx.x % 16;
        const size_t fo = (size_t)(g0 + ft) * 16 + ff;

#pragma unroll
        for (uint32_t tl = 0; tl < DF_GROUP; tl++) {
            if (tl >= nt) break;
            float acc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
            const uint32_t j0 = tl * sh.nslab;
            for (uint32_t sl = (warp + DF_WARPS - j0 % DF_WARPS) % DF_WARPS; sl < sh.nslab;
                 sl += DF_WARPS) {
                const uint32_t q = seq + j0 + sl, slot = q % ring, full = bars + slot * 16;
                /* First the slot's previous slab (q - ring) consumed, hence landed; only then
                 * does the full barrier's parity name slab q and not the fill before it (TMA
                 * copies into different slots may land out of order). The empty barrier is then
                 * at most one phase behind as well: every slab up to q - 16 - ring was consumed
                 * before the producer could issue this warp's previous slab q - 16 (ring >= 16),
                 * and those before the group at the last df_bar. */
                DF_TD(const long long td_c0 = clock64();)
                if (q >= ring) ni_mbar_wait(full + 8, ((q / ring) + 1u) & 1u);
                ni_mbar_wait(full, (q / ring) & 1u);
                DF_TD(td_wait += (unsigned long long)(clock64() - td_c0);)
                const uint32_t base = ring_base + slot * DF_SLAB_BYTES + r * DF_SLAB_PITCH + t * 16;
#pragma unroll 4
                for (uint32_t u = 0; u < DF_SLAB_COLS / 32; u++) {
                    const uint32_t col = sl * DF_SLAB_COLS + u * 32 + 8 * t;
                    if (sl * DF_SLAB_COLS + u * 32 >= g.IC) break; /* warp-uniform */
                    const uint4 w0 = ni_ld_shared16(base + u * 64),
                                w1 = ni_ld_shared16(base + u * 64 + 8 * DF_SLAB_PITCH);
                    /* columns past IC are zeros in the slab (TMA fill) and in xv */
                    const uint4 xv = row_ok && col < g.IC
                                         ? *reinterpret_cast<const uint4 *>(xrow + col)
                                         : make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
                    for (int ks = 0; ks < 2; ks++) {
                        const uint32_t a0 = ni_u4_word(xv, 2 * ks), a2 = ni_u4_word(xv, 2 * ks + 1);
                        ni_dt_bf16::mma(acc[0], a0, 0u, a2, 0u, ni_u4_word(w0, 2 * ks),
                                        ni_u4_word(w0, 2 * ks + 1));
                        ni_dt_bf16::mma(acc[1], a0, 0u, a2, 0u, ni_u4_word(w1, 2 * ks),
                                        ni_u4_word(w1, 2 * ks + 1));
                    }
                }
                __syncwarp();
                if (lane == 0) ni_mbar_arrive(full + 8); /* the slot may be refilled */
            }
            /* rows g (< 8): features 8 half + 2t + e in acc[half][e] */
            if (row_ok) {
                float *mine = red + (((size_t)tl * DF_WARPS + warp) * c.N + r) * 16 + 2 * t;
                *reinterpret_cast<float2 *>(mine) = make_float2(acc[0][0], acc[0][1]);
                *reinterpret_cast<float2 *>(mine + 8) = make_float2(acc[1][0], acc[1][1]);
            }
        }
        df_cp_async_wait_all(); /* df_preload's copies (the barrier shares them) */
        df_bar();
        if (fin && fo < g.OC) {
            const uint32_t pt = g0 - sh.t0 + ft, ntl = sh.t1 - sh.t0;
            const float fbias = bias ? ni_dt_bf16::to_float(pb[pt * 16 + ff]) : 0.0f;
            const float xold =
                epi == DF_EPI_RESIDUAL ? px[((size_t)fn * ntl + pt) * 16 + ff] : 0.0f;
            float v = 0.0f;
            for (int w = 0; w < DF_WARPS; w++)
                v += red[(((size_t)ft * DF_WARPS + w) * c.N + fn) * 16 + ff];
            df_epilogue(epi, c, g.OC, fn, fo, v + fbias, xold);
        }
        df_bar();
        seq += nt * sh.nslab;
    }
    DF_TD(if (a.trace && lane == 0 && td_wait)
              atomicAdd(df_td_cons(a.trace, (uint32_t)a.L, td_k) + 3, td_wait);)
}

/* Copies n16 16-byte vectors written during this kernel (through L2) to shared memory, four
 * loads per thread in flight together; no barrier. */
static __device__ void df_copy_cg16(void *dst, const void *src, size_t n16) {
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
}

/* Copies src (N, K) bf16 to shared memory. K % 8 == 0. */
static __device__ void df_stage(uint16_t *dst, const uint16_t *src, size_t N, size_t K) {
    df_copy_cg16(dst, src, N * K / 8);
    df_bar();
}

/* ---- LayerNorm into shared memory --------------------------------------------------------- */

/* out (N, C) bf16 in shared memory = LayerNorm(x rows) * w + b. The rows are first staged in
 * shared memory (xs, N * C floats) with every load in flight at once (one L2 round trip); then
 * the CPU twin's two-pass statistics: thread j of the 512 sums elements j, j + 512, ... of every
 * row, its warp adds the lanes, and the 16 warp sums of a row are added in warp order, an order
 * that depends on C alone, so that a row's output does not depend on the rest of the batch.
 * red: 128 + 2 N floats (N <= 8). Not inlined: inlined, it made ptxas spill in the GEMV loop
 * (96 registers at most for 544 threads). td: NULL, or (-DDF_TRACE_DETAIL) the times at which
 * the rows are staged, the mean and the deviation known, and the LayerNorm began (4 words). */
static __device__ __noinline__ void df_layernorm(uint16_t *out, float *xs, float *red,
                                                 const float *x, const uint16_t *w_g,
                                                 const uint16_t *b_g, size_t N, size_t C, float eps,
                                                 unsigned long long *td) {
    (void)td;
    DF_TD(if (td && threadIdx.x == 0) td[3] = df_now();)
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const size_t n4 = N * C / 4; /* the rows in 16-byte vectors (C % 8 == 0) */
    /* the scale and shift to shared memory too (after the rows), requested first */
    uint16_t *w = reinterpret_cast<uint16_t *>(xs + N * C), *b = w + C;
    const uint2 *w4 = reinterpret_cast<const uint2 *>(w_g),
                *b4 = reinterpret_cast<const uint2 *>(b_g);
    const bool wb0 = threadIdx.x < C / 4;
    const uint2 wv0 = wb0 ? __ldg(w4 + threadIdx.x) : make_uint2(0u, 0u);
    const uint2 bv0 = wb0 ? __ldg(b4 + threadIdx.x) : make_uint2(0u, 0u);
    df_copy_cg16(xs, x, n4);
    if (wb0) {
        reinterpret_cast<uint2 *>(w)[threadIdx.x] = wv0;
        reinterpret_cast<uint2 *>(b)[threadIdx.x] = bv0;
    }
    for (size_t i = threadIdx.x + DF_THREADS; i < C / 4; i += DF_THREADS) { /* C > 2048 */
        reinterpret_cast<uint2 *>(w)[i] = __ldg(w4 + i);
        reinterpret_cast<uint2 *>(b)[i] = __ldg(b4 + i);
    }
    float *mean = red + DF_WARPS * NI_CUDA_DECODE_FUSED_MAX_ROWS, *rstd = mean + N;
    const int nr = (int)N;
    df_bar();
    DF_TD(if (td && threadIdx.x == 0) td[0] = df_now();)
    /* the rows side by side: one pass over the columns, N independent sums per thread */
    float part[NI_CUDA_DECODE_FUSED_MAX_ROWS];
#pragma unroll
    for (int n = 0; n < NI_CUDA_DECODE_FUSED_MAX_ROWS; n++) part[n] = 0.0f;
    for (size_t i = threadIdx.x; i < C; i += DF_THREADS)
#pragma unroll
        for (int n = 0; n < NI_CUDA_DECODE_FUSED_MAX_ROWS; n++)
            if (n < nr) part[n] += xs[n * C + i];
#pragma unroll
    for (int n = 0; n < NI_CUDA_DECODE_FUSED_MAX_ROWS; n++) {
        if (n >= nr) break;
        const float v = ni_warp_sum(part[n]);
        if (lane == 0) red[n * DF_WARPS + warp] = v;
    }
    df_bar();
    if (threadIdx.x < N) {
        float tot = 0.0f;
        for (int k = 0; k < DF_WARPS; k++) tot += red[threadIdx.x * DF_WARPS + k];
        mean[threadIdx.x] = tot / (float)C;
    }
    df_bar();
    DF_TD(if (td && threadIdx.x == 0) td[1] = df_now();)
    float m[NI_CUDA_DECODE_FUSED_MAX_ROWS];
#pragma unroll
    for (int n = 0; n < NI_CUDA_DECODE_FUSED_MAX_ROWS; n++) {
        m[n] = n < nr ? mean[n] : 0.0f;
        part[n] = 0.0f;
    }
    for (size_t i = threadIdx.x; i < C; i += DF_THREADS)
#pragma unroll
        for (int n = 0; n < NI_CUDA_DECODE_FUSED_MAX_ROWS; n++)
            if (n < nr) {
                const float d = xs[n * C + i] - m[n];
                part[n] += d * d;
            }
#pragma unroll
    for (int n = 0; n < NI_CUDA_DECODE_FUSED_MAX_ROWS; n++) {
        if (n >= nr) break;
        const float v = ni_warp_sum(part[n]);
        if (lane == 0) red[n * DF_WARPS + warp] = v;
    }
    df_bar();
    if (threadIdx.x < N) {
        float tot = 0.0f;
        for (int k = 0; k < DF_WARPS; k++) tot += red[threadIdx.x * DF_WARPS + k];
        rstd[threadIdx.x] = rsqrtf(tot / (float)C + eps);
    }
    df_bar();
    DF_TD(if (td && threadIdx.x == 0) td[2] = df_now();)
    const uint32_t *w2 = reinterpret_cast<const uint32_t *>(w);
    const uint32_t *b2 = reinterpret_cast<const uint32_t *>(b);
    for (size_t n = 0; n < N; n++) {
        const float *xr = xs + n * C;
        const float mn = mean[n], rs = rstd[n];
        uint32_t *o2 = reinterpret_cast<uint32_t *>(out + n * C);
        for (size_t i = threadIdx.x; i < C / 2; i += DF_THREADS) {
            const uint32_t wp = w2[i], bp = b2[i];
            const float lo =
                (xr[2 * i] - mn) * rs * __uint_as_float(wp << 16) + __uint_as_float(bp << 16);
            const float hi = (xr[2 * i + 1] - mn) * rs * __uint_as_float(wp & 0xffff0000u) +
                             __uint_as_float(bp & 0xffff0000u);
            o2[i] =
                (uint32_t)ni_dt_bf16::from_float(lo) | ((uint32_t)ni_dt_bf16::from_float(hi) << 16);
        }
    }
    df_bar();
}

/* ---- attention ---------------------------------------------------------------------------- */

/* Block max or sum of v; red: DF_WARPS floats of shared memory. */
template <bool MAX> static __device__ __forceinline__ float df_block_reduce(float v, float *red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = MAX ? ni_warp_max(v) : ni_warp_sum(v);
    df_bar(); /* red may still be read from the previous call */
    if (lane == 0) red[warp] = v;
    df_bar();
    v = red[lane % DF_WARPS];
    return MAX ? ni_warp_max(v) : ni_warp_sum(v); /* lanes >= 16 repeat lanes 0..15: max only */
}

/* One block per (row, head) item: q (pre-scaled) to shared memory; thread j scores position j
 * with all of its key loads in flight; block max and sum; then warp w accumulates positions
 * w, w + 16, ... with lane l owning the dimension pairs 2l + 64k of the value rows (coalesced
 * loads, several positions in flight); the 16 warps' sums are added in shared memory. */
static __device__ void df_attention(uint16_t *att, const df_ctx &c, float *sm) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const size_t HS = c.HS, C = c.C;
    float *q = sm;                     /* (128) */
    float *red = q + 128;              /* (DF_WARPS) */
    float *wacc = red + DF_WARPS;      /* (DF_WARPS, 128) */
    float *sc = wacc + DF_WARPS * 128; /* (T) scores, then probabilities */
    const float scale = rsqrtf((float)HS);
    for (size_t item = blockIdx.x; item < c.N * c.NH; item += gridDim.x) {
        const size_t n = item / c.NH, h = item % c.NH;
        const int p = c.pos[n];
        const uint16_t *qs = c.qkv + n * 3 * C + h * HS;
        const size_t head = ((size_t)c.slot[n] * c.NH + h) * c.T * HS;
        const uint16_t *kc = c.k_cache + head, *vc = c.v_cache + head;
        /* value words of positions warp + 16 u (u < 8) for lane dims 2 lane + 64 k, requested
         * now with q: neither depends on the softmax */
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
        for (size_t d = threadIdx.x; d < HS; d += DF_THREADS)
            q[d] = ni_dt_bf16::to_float(__ldcg(qs + d)) * scale;
        df_bar();
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
                        const uint32_t wd = ni_u4_word(kv[k], e);
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
        sum = ni_warp_sum(sum);
        df_bar();
        if (lane == 0) red[warp] = sum;
        df_bar(); /* also publishes sc */
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
        df_bar();
        for (size_t d = threadIdx.x; d < HS; d += DF_THREADS) {
            float a = 0.0f;
            for (int w = 0; w < DF_WARPS; w++) a += wacc[w * 128 + d];
            att[n * C + h * HS + d] = ni_dt_bf16::from_float(a / Ls);
        }
        df_bar();
    }
}

/* The reduction area (floats): each warp's partial sums of the N rows of up to DF_GROUP tiles (16
 * features each), also the LayerNorm's scratch (at least 16 x 8 + 2 x 8 floats). */
static __host__ __device__ __forceinline__ size_t df_red_floats(size_t N) {
    const size_t gemv = (size_t)DF_GROUP * DF_WARPS * N * 16;
    return gemv > 256 ? gemv : 256;
}

/* The most 16-row tiles one of B blocks owns in a phase of OC outputs (df_share_of). */
static __host__ __device__ __forceinline__ size_t df_max_tiles(size_t OC, size_t B) {
    return ((OC + 15) / 16 + B - 1) / B;
}

/* Shared memory of df_preload's copies for a grid of B blocks: the biases of the most tiles a
 * block owns in any phase (4 C outputs), then N residual rows at the most tiles of C outputs. */
static __host__ __device__ __forceinline__ size_t df_pre_bias_bytes(size_t C, size_t B) {
    return (df_max_tiles(4 * C, B) * 32 + 15) & ~(size_t)15;
}

static __host__ __device__ __forceinline__ size_t df_pre_bytes(size_t N, size_t C, size_t B) {
    return df_pre_bias_bytes(C, B) + N * df_max_tiles(C, B) * 64;
}

/* ---- the kernel --------------------------------------------------------------------------- */

/* Dynamic shared memory: the layer table, the rows' slots and positions, the ring's mbarriers
 * (full, empty) and slots, the reduction area (df_red_floats(N) floats), df_preload's copies,
 * then the staging area: the GEMV inputs (N, IC) bf16 (LayerNorm: + (N, C) f32 rows, the scale
 * and shift) or the attention scratch. Warps 0-15 compute; warp 16 streams the weights. */
__global__ void __launch_bounds__(DF_BLOCK, 1) decode_fused_kernel(ni_decode_fused_args a) {
    extern __shared__ uint4 df_smem4[];
    const uint32_t ring = a.ring;
    uint8_t *sm0 = reinterpret_cast<uint8_t *>(df_smem4);
    const size_t L = a.L, tab_bytes = (L * sizeof(ni_cuda_layer_weights) + 15) & ~(size_t)15;
    ni_cuda_layer_weights *tab = reinterpret_cast<ni_cuda_layer_weights *>(sm0);
    int32_t *s_slot = reinterpret_cast<int32_t *>(sm0 + tab_bytes);
    int32_t *s_pos = s_slot + NI_CUDA_DECODE_FUSED_MAX_ROWS;
    const size_t bars_off = tab_bytes + 64;
    const size_t ring_off = (bars_off + (size_t)ring * 16 + 127) & ~(size_t)127;
    const uint32_t sbase = (uint32_t)__cvta_generic_to_shared(sm0);
    const uint32_t bars = sbase + (uint32_t)bars_off, ring_base = sbase + (uint32_t)ring_off;
    float *red = reinterpret_cast<float *>(sm0 + ring_off + (size_t)ring * DF_SLAB_BYTES);
    /* df_preload's copies: the biases, then the residual values */
    uint16_t *pre_b = reinterpret_cast<uint16_t *>(red + df_red_floats(a.N));
    float *pre_x = reinterpret_cast<float *>(reinterpret_cast<uint8_t *>(pre_b) +
                                             df_pre_bias_bytes(a.C, gridDim.x));
    uint8_t *stage = reinterpret_cast<uint8_t *>(pre_b) + df_pre_bytes(a.N, a.C, gridDim.x);
    uint16_t *xs = reinterpret_cast<uint16_t *>(stage);                         /* (N, IC) */
    float *ln_tmp = reinterpret_cast<float *>(stage + (a.N * a.C + 3) / 4 * 8); /* (N, C) */
    float *att_tmp = reinterpret_cast<float *>(stage);
    const uint32_t warp = threadIdx.x >> 5;
    const size_t C = a.C, N = a.N;
    unsigned target = 0;
    uint32_t bk = 0; /* barriers passed */

    /* the layer table and the rows' slots and positions, read once; the ring's barriers */
    for (size_t i = threadIdx.x; i < tab_bytes / 8; i += DF_BLOCK)
        reinterpret_cast<uint64_t *>(tab)[i] =
            __ldg(reinterpret_cast<const uint64_t *>(a.layers) + i);
    if (threadIdx.x < N) {
        s_slot[threadIdx.x] = a.slot[threadIdx.x];
        s_pos[threadIdx.x] = a.pos[threadIdx.x];
    }
    if (threadIdx.x == 0) {
        for (uint32_t k = 0; k < ring; k++) {
            ni_mbar_init(bars + k * 16, 1);     /* full: the producer's expect_tx */
            ni_mbar_init(bars + k * 16 + 8, 1); /* empty: the consuming warp */
        }
        ni_mbar_init_fence();
    }
    __syncthreads();
    if (warp == DF_WARPS) {
        if ((threadIdx.x & 31) == 0) df_produce(a, tab, ring_base, bars, ring);
        return;
    }
    if (a.trace && blockIdx.x == 0 && threadIdx.x == 0) a.trace[2 * (5 * L + 1) + 1] = df_now();
    DF_TD(if (a.trace && threadIdx.x == 0) df_td_cons(a.trace, (uint32_t)L, 0)[0] = df_now();)

    df_ctx c;
    c.N = N, c.C = C, c.NH = a.NH, c.HS = C / a.NH, c.T = a.T, c.V = a.V;
    c.slot = s_slot, c.pos = s_pos;
    c.x = a.x, c.qkv = a.qkv, c.fc = a.fc, c.logits = a.logits;

    /* the embedding, while the producer streams the first layer's weights */
    uint32_t seq = 0;
    for (size_t i = (size_t)blockIdx.x * DF_THREADS + threadIdx.x; i < N * C;
         i += (size_t)gridDim.x * DF_THREADS) {
        const size_t n = i / C, k = i % C;
        a.x[i] = ni_dt_bf16::to_float(a.wte[(size_t)a.tok[n] * C + k]) +
                 ni_dt_bf16::to_float(a.wpe[(size_t)s_pos[n] * C + k]);
    }
    df_grid_sync(a.barrier, target, a.trace, bk, (uint32_t)L);

    for (uint32_t l = 0; l < (uint32_t)L; l++) {
        const ni_cuda_layer_weights *y = tab + l;
        c.k_cache = a.k_cache + l * a.kv_layer;
        c.v_cache = a.v_cache + l * a.kv_layer;
        /* this layer's cached keys and values of the block's attention items, requested into L2
         * now, while the block normalizes and multiplies: the attention phase then finds them in
         * L2 instead of HBM (the new position is written by the qkv phase) */
        /* by the last two warps, which df_preload gives the least (1 keys, 2 values) */
        const uint32_t kv_t = threadIdx.x == DF_THREADS - 32   ? 1u
                              : threadIdx.x == DF_THREADS - 64 ? 2u
                                                               : 0u;
        if (kv_t)
            for (size_t item = blockIdx.x; item < N * c.NH; item += gridDim.x) {
                const size_t n = item / c.NH, h = item % c.NH;
                const uint32_t bytes = (uint32_t)(s_pos[n] * c.HS * 2);
                const uint16_t *src = (kv_t == 2 ? c.v_cache : c.k_cache) +
                                      ((size_t)s_slot[n] * c.NH + h) * c.T * c.HS;
                if (bytes)
                    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(src), "r"(bytes)
                                 : "memory");
            }
        df_preload(pre_b, pre_x, a, tab, 4 * l, y->qkv_b, false);
        df_layernorm(xs, ln_tmp, red, a.x, y->ln1_w, y->ln1_b, N, C, a.eps, DF_TD_LN(bk));
        DF_TD(if (a.trace && threadIdx.x == 0) df_td_cons(a.trace, (uint32_t)L, bk)[1] = df_now();)
        df_gemv_phase(a, c, tab, 4 * l, DF_EPI_QKV, y->qkv_b, xs, red, seq, ring_base, bars, ring,
                      pre_b, pre_x, bk);
        df_grid_sync(a.barrier, target, a.trace, bk, (uint32_t)L);

        df_attention(a.att, c, att_tmp);
        df_grid_sync(a.barrier, target, a.trace, bk, (uint32_t)L);

        df_preload(pre_b, pre_x, a, tab, 4 * l + 1, y->proj_b, true);
        df_stage(xs, a.att, N, C);
        DF_TD(if (a.trace && threadIdx.x == 0) df_td_cons(a.trace, (uint32_t)L, bk)[1] = df_now();)
        df_gemv_phase(a, c, tab, 4 * l + 1, DF_EPI_RESIDUAL, y->proj_b, xs, red, seq, ring_base,
                      bars, ring, pre_b, pre_x, bk);
        df_grid_sync(a.barrier, target, a.trace, bk, (uint32_t)L);

        df_preload(pre_b, pre_x, a, tab, 4 * l + 2, y->fc_b, false);
        df_layernorm(xs, ln_tmp, red, a.x, y->ln2_w, y->ln2_b, N, C, a.eps, DF_TD_LN(bk));
        DF_TD(if (a.trace && threadIdx.x == 0) df_td_cons(a.trace, (uint32_t)L, bk)[1] = df_now();)
        df_gemv_phase(a, c, tab, 4 * l + 2, DF_EPI_GELU, y->fc_b, xs, red, seq, ring_base, bars,
                      ring, pre_b, pre_x, bk);
        df_grid_sync(a.barrier, target, a.trace, bk, (uint32_t)L);

        df_preload(pre_b, pre_x, a, tab, 4 * l + 3, y->fcproj_b, true);
        df_stage(xs, a.fc, N, 4 * C);
        DF_TD(if (a.trace && threadIdx.x == 0) df_td_cons(a.trace, (uint32_t)L, bk)[1] = df_now();)
        df_gemv_phase(a, c, tab, 4 * l + 3, DF_EPI_RESIDUAL, y->fcproj_b, xs, red, seq, ring_base,
                      bars, ring, pre_b, pre_x, bk);
        df_grid_sync(a.barrier, target, a.trace, bk, (uint32_t)L);
    }
    df_layernorm(xs, ln_tmp, red, a.x, a.lnf_w, a.lnf_b, N, C, a.eps, DF_TD_LN(bk));
    DF_TD(if (a.trace && threadIdx.x == 0) df_td_cons(a.trace, (uint32_t)L, bk)[1] = df_now();)
    df_gemv_phase(a, c, tab, 4 * (uint32_t)L, DF_EPI_LOGITS, NULL, xs, red, seq, ring_base, bars,
                  ring, pre_b, pre_x, bk);
    df_bar();
    if (a.trace && threadIdx.x == 0) atomicMax(a.trace + 2 * bk, (unsigned long long)df_now());
    DF_TD(if (a.trace && threadIdx.x == 0) df_td_cons(a.trace, (uint32_t)L, bk)[2] = df_now();)
}

/* ---- launcher ----------------------------------------------------------------------------- */

/* Shared memory besides the rings: the reduction tile, the preloaded epilogue inputs and the
 * staging area, for a grid of B blocks. */
static size_t df_fixed_smem(size_t N, size_t C, size_t T, size_t L, size_t B) {
    /* (the ring's barriers and alignment: 16 bytes per slot + 128, counted with the slots) */
    size_t gemv_in = N * 4 * C * 2, ln = (N * C + 3) / 4 * 8 + N * C * 4 + 4 * C;
    size_t attn = (128 + DF_WARPS + DF_WARPS * 128 + T) * 4;
    size_t st = gemv_in > ln ? gemv_in : ln;
    if (attn > st) st = attn;
    const size_t tab = (L * sizeof(ni_cuda_layer_weights) + 15) & ~(size_t)15;
    return tab + 64 + 128 + df_red_floats(N) * 4 + df_pre_bytes(N, C, B) +
           ((st + 15) & ~(size_t)15);
}

/* An attribute of the current device, 0 when it cannot be queried. */
static size_t df_device_attr(cudaDeviceAttr attr) {
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&v, attr, dev) != cudaSuccess)
        return 0;
    return (size_t)v;
}

/* The largest dynamic shared memory of a block on this device. */
static size_t df_smem_limit(void) {
    return df_device_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin);
}

/* Ring slots per warp that fit next to the fixed part (0: the sizes don't fit). */
static uint32_t df_ring_units(size_t N, size_t C, size_t T, size_t L, size_t B, size_t limit) {
    const size_t fixed = df_fixed_smem(N, C, T, L, B);
    if (fixed >= limit) return 0;
    /* df_preload copies a phase's biases with one 16-byte piece a thread: at most 256 tiles a
     * block (4 C outputs over B blocks; only tiny grids come near) */
    if (df_max_tiles(4 * C, B) > DF_THREADS / 2) return 0;
    size_t ring = (limit - fixed) / ((size_t)DF_SLAB_BYTES + 16);
    if (ring > DF_RING_MAX) ring = DF_RING_MAX;
    /* a warp's consecutive slabs are 16 apart: with >= 16 slots the two waits of df_gemv_phase
     * are each at most one phase behind (see there) */
    return ring < DF_WARPS ? 0 : (uint32_t)ring;
}

extern "C" unsigned ni_cuda_decode_fused_ring(size_t N, size_t C, size_t NH, size_t T, size_t L) {
    if (N == 0 || N > NI_CUDA_DECODE_FUSED_MAX_ROWS || NH == 0 || C % NH) return 0;
    const size_t HS = C / NH;
    if (C % 8 || HS % 8 || HS > 128 || 4 * C > 0xffffffu) return 0;
    const size_t limit = df_smem_limit(), sms = df_device_attr(cudaDevAttrMultiProcessorCount);
    if (!limit || !sms) {
        cudaGetLastError(); /* the failed query's error, not an earlier one */
        return 0;
    }
    return df_ring_units(N, C, T, L, sms, limit); /* one block per SM */
}

extern "C" size_t ni_cuda_decode_fused_trace_detail_words(size_t L, size_t blocks) {
#ifdef DF_TRACE_DETAIL
    return ((5 * L + 2) * 8 + (4 * L + 1) * 4) * blocks;
#else
    (void)L, (void)blocks;
    return 0;
#endif
}

extern "C" int ni_cuda_decode_fused_grid(size_t *blocks, size_t *warps) {
    int per_sm = 0;
    const size_t limit = df_smem_limit(), sms = df_device_attr(cudaDevAttrMultiProcessorCount);
    cudaError_t e = limit && sms ? cudaSuccess : cudaErrorInvalidConfiguration;
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(decode_fused_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)limit);
    if (e == cudaSuccess)
        e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, decode_fused_kernel, DF_BLOCK,
                                                          limit);
    if (e == cudaSuccess && per_sm < 1) e = cudaErrorInvalidConfiguration;
    if (e != cudaSuccess) return (int)e;
    /* one block per SM: the barriers need every block resident */
    *blocks = sms;
    *warps = sms * DF_WARPS;
    return 0;
}

extern "C" int ni_cuda_decode_fused(const ni_decode_fused_args *a, size_t blocks, ni_stream s) {
    if (a->N == 0 || a->N > NI_CUDA_DECODE_FUSED_MAX_ROWS || a->ring < DF_WARPS ||
        a->ring > DF_RING_MAX || blocks == 0)
        return (int)cudaErrorInvalidValue;
    const size_t smem =
        df_fixed_smem(a->N, a->C, a->T, a->L, blocks) + (size_t)a->ring * (DF_SLAB_BYTES + 16);
    cudaStream_t st = (cudaStream_t)s;
    /* the barrier counter starts at zero */
    cudaError_t e = cudaMemsetAsync(a->barrier, 0, sizeof(unsigned), st);
    if (e == cudaSuccess && a->trace)
        e = cudaMemsetAsync(a->trace, 0,
                            (ni_cuda_decode_fused_trace_words(a->L) +
                             ni_cuda_decode_fused_trace_detail_words(a->L, blocks)) *
                                8,
                            st);
    if (e != cudaSuccess) return (int)e;
    /* cooperative: the driver either makes every block resident at once, which the spinning
     * grid barriers need (another context or MPS client could hold SMs), or fails the launch */
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute attr[1] = {};
    attr[0].id = cudaLaunchAttributeCooperative;
    attr[0].val.cooperative = 1;
    cfg.gridDim = dim3((unsigned)blocks);
    cfg.blockDim = dim3(DF_BLOCK);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    return (int)cudaLaunchKernelEx(&cfg, decode_fused_kernel, *a);
}
