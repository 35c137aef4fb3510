/* Prefill attention on the GPU, flash-attention style, on the tensor cores. One block of four
 * warps takes a tile of 64 queries of one sequence and one head (grid: query tiles x heads x
 * sequences, the heaviest tiles of a sequence first); each warp owns 16 query rows, keeps their
 * Q fragments in registers and their output accumulator in registers, and walks the sequence's
 * cached keys in tiles of BK: S = Q K^T and O += P V with mma.sync m16n8k16 (bf16 or f16 in as
 * the engine's dtype says, dtype.cuh; f32 accumulate), the online softmax in f32 between them
 * (running max and sum per row, exp2 with the 1/sqrt(HS) scale folded into log2 e). Key and value
 * tiles are staged in shared memory through cp.async, two stages deep, so that the next tile loads
 * while this one is multiplied; rows are padded by 16 bytes so that the ldmatrix reads (plain for
 * K, transposed for V) are free of bank conflicts. Nothing of size T x T exists anywhere. The head
 * size is padded to DP, a multiple of 16 (the mma's k), with zeros: one kernel instance per DP
 * in 16..128 serves every HS up to 128 (HS 8 and 16 use DP 16, HS 64 uses DP 64, HS 86 uses DP 96);
 * loads are 16 bytes wide when HS % 8 == 0, 4 bytes when HS is even and 2 bytes (synchronous) for
 * odd HS. Causality: query j of a sequence whose first listed token has position pos0 sees cache
 * positions 0 .. pos0 + j; the block stops at the last key its last query sees, a warp skips the
 * key tiles that lie wholly after its rows (and all of them when its rows are past the sequence's
 * end), and the mask is applied only to tiles that cross a row's limit. Keys past the block's last
 * position are never read (zeros take their place), so stale or poisoned cache entries cannot leak
 * in. P is rounded to 16 bits for the P V product (as in FlashAttention); the softmax sum uses the
 * f32 values. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "cuda/dtype.cuh"
#include "cuda/kernels.h"
#include "cuda/pdl.cuh"
#include "cuda/timeline.cuh"

#define AP_WARPS 4
#define AP_THREADS (AP_WARPS * 32)
#define AP_BQ (AP_WARPS * 16) /* queries per block: 16 rows per warp */
#define AP_MAX_HS 128

static __device__ __forceinline__ uint32_t ap_smem_addr(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

static __device__ __forceinline__ void ap_cp_async16(void *dst, const void *src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(ap_smem_addr(dst)), "l"(src)
                 : "memory");
}

static __device__ __forceinline__ void ap_cp_async4(void *dst, const void *src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(ap_smem_addr(dst)), "l"(src)
                 : "memory");
}

static __device__ __forceinline__ void ap_cp_async_commit(void) {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <int N> static __device__ __forceinline__ void ap_cp_async_wait(void) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* Four 8x8 b16 matrices; lanes 8m..8m+7 give the row addresses of matrix m. */
static __device__ __forceinline__ void ap_ldmatrix_x4(uint32_t *r, const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(ap_smem_addr(p))
                 : "memory");
}

static __device__ __forceinline__ void ap_ldmatrix_x4_trans(uint32_t *r, const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(ap_smem_addr(p))
                 : "memory");
}

/* c (16x8 f32) += a (16x16 16-bit, row-major fragment) * b (16x8 16-bit, column fragment). */
template <typename D>
static __device__ __forceinline__ void ap_mma(float *c, const uint32_t *a, uint32_t b0,
                                              uint32_t b1) {
    D::mma_volatile(c, a[0], a[1], a[2], a[3], b0, b1);
}

/* Elements (d, d + 1) of a row of 16-bit values as one 32-bit fragment register, zeros past HS. */
static __device__ __forceinline__ uint32_t ap_load_pair(const uint16_t *row, int d, int HS,
                                                        int vec2) {
    if (vec2) return d < HS ? *reinterpret_cast<const uint32_t *>(row + d) : 0u;
    uint32_t lo = d < HS ? row[d] : 0u;
    uint32_t hi = d + 1 < HS ? row[d + 1] : 0u;
    return lo | (hi << 16);
}

/* Stages keys [k0, k0 + BK) of one head into dst (BK rows of LD elements, DP of them used):
 * rows at or past n_keys and columns at or past HS are zeros. W: elements per copy (8, 2, 1). */
template <int DP, int BK>
static __device__ __forceinline__ void ap_load_tile(uint16_t *dst, const uint16_t *src, int k0,
                                                    int n_keys, int HS, int W) {
    constexpr int LD = DP + 8;
    if (W == 8) {
        constexpr int CPR = DP / 8; /* chunks per row */
        for (int c = threadIdx.x; c < BK * CPR; c += AP_THREADS) {
            int r = c / CPR, d = (c - r * CPR) * 8;
            uint16_t *s = dst + r * LD + d;
            if (k0 + r < n_keys && d < HS)
                ap_cp_async16(s, src + (size_t)(k0 + r) * HS + d);
            else
                *reinterpret_cast<uint4 *>(s) = make_uint4(0u, 0u, 0u, 0u);
        }
    } else if (W == 2) {
        constexpr int CPR = DP / 2;
        for (int c = threadIdx.x; c < BK * CPR; c += AP_THREADS) {
            int r = c / CPR, d = (c - r * CPR) * 2;
            uint16_t *s = dst + r * LD + d;
            if (k0 + r < n_keys && d < HS)
                ap_cp_async4(s, src + (size_t)(k0 + r) * HS + d);
            else
                *reinterpret_cast<uint32_t *>(s) = 0u;
        }
    } else {
        for (int c = threadIdx.x; c < BK * DP; c += AP_THREADS) {
            int r = c / DP, d = c - r * DP;
            bool in = k0 + r < n_keys && d < HS;
            dst[r * LD + d] = in ? src[(size_t)(k0 + r) * HS + d] : (uint16_t)0;
        }
    }
}

template <typename D, int DP, int BK>
__global__ void __launch_bounds__(AP_THREADS)
    attention_prefill_kernel(uint16_t *out,            // (N, C) 16-bit
                             const uint16_t *qkv,      // (N, 3C) 16-bit
                             const uint16_t *k_cache,  // (S, NH, T, HS) 16-bit
                             const uint16_t *v_cache,  // (S, NH, T, HS) 16-bit
                             const int32_t *seq_start, // (n_seq)
                             const int32_t *seq_len,   // (n_seq)
                             const int32_t *seq_slot,  // (n_seq)
                             const int32_t *seq_pos0,  // (n_seq)
                             int NH, int HS, int T, float scale_log2, int W, int qvec) {
    NI_TL_SCOPE(NI_TL_ATTN_PREFILL);
    constexpr int LD = DP + 8;  /* 16 bytes of padding per row: conflict-free ldmatrix */
    constexpr int NKT = BK / 8; /* key n-tiles of S */
    constexpr int NDT = DP / 8; /* head-dim n-tiles of O */
    __shared__ __align__(16) uint16_t sK[2][BK * LD];
    __shared__ __align__(16) uint16_t sV[2][BK * LD];

    ni_pdl_launch_dependents(); /* the next product loads weights before its wait (pdl.cuh) */
    /* the sequence lists before the wait: the host copies them before the forward pass and no
     * kernel writes them (pdl.cuh), so that after it only q and the cached rows are a round trip
     * away (read after the wait, the lists were two more in a row) */
    const int sq = blockIdx.z, h = blockIdx.y;
    const int len = seq_len[sq], start = seq_start[sq], pos0 = seq_pos0[sq], slot = seq_slot[sq];
    ni_pdl_wait(); /* qkv and the caches come from earlier kernels */
    NI_TL_WAITED();
    const int qt0 = (int)(gridDim.x - 1 - blockIdx.x) * AP_BQ; /* heavy tiles start first */
    if (qt0 >= len) return;
    const size_t C = (size_t)NH * HS;
    const int n_keys = pos0 + min(len, qt0 + AP_BQ); /* the block sees keys [0, n_keys) */
    const int n_tiles = (n_keys + BK - 1) / BK;
    const size_t head = ((size_t)slot * NH + h) * (size_t)T * HS;
    const uint16_t *Kh = k_cache + head, *Vh = v_cache + head;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane >> 2, tig = lane & 3;
    /* this thread's two query rows (within the sequence) and the last key each sees; rows past
     * the sequence's end borrow the last row's limit and zero queries, and are not written */
    const int wr0 = qt0 + warp * 16;
    const int r0 = wr0 + g, r1 = wr0 + g + 8;
    const int lim0 = pos0 + min(r0, len - 1), lim1 = pos0 + min(r1, len - 1);
    const int warp_lo = pos0 + min(wr0, len - 1);      /* smallest limit in the warp */
    const int warp_hi = pos0 + min(wr0 + 15, len - 1); /* largest limit in the warp */

    /* Q fragments (A operand, row-major 16 x DP), read once from global memory */
    uint32_t qf[DP / 16][4];
    {
        const uint16_t *q0 = qkv + (size_t)(start + min(r0, len - 1)) * 3 * C + (size_t)h * HS;
        const uint16_t *q1 = qkv + (size_t)(start + min(r1, len - 1)) * 3 * C + (size_t)h * HS;
        const bool ok0 = r0 < len, ok1 = r1 < len;
#pragma unroll
        for (int kc = 0; kc < DP / 16; kc++) {
            int d = kc * 16 + tig * 2;
            qf[kc][0] = ok0 ? ap_load_pair(q0, d, HS, qvec) : 0u;
            qf[kc][1] = ok1 ? ap_load_pair(q1, d, HS, qvec) : 0u;
            qf[kc][2] = ok0 ? ap_load_pair(q0, d + 8, HS, qvec) : 0u;
            qf[kc][3] = ok1 ? ap_load_pair(q1, d + 8, HS, qvec) : 0u;
        }
    }

    float o[NDT][4];
#pragma unroll
    for (int i = 0; i < NDT; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY; /* running max (log2 domain) of rows r0, r1 */
    float l0 = 0.0f, l1 = 0.0f;           /* this thread's part of the running sums */

    ap_load_tile<DP, BK>(sK[0], Kh, 0, n_keys, HS, W);
    ap_load_tile<DP, BK>(sV[0], Vh, 0, n_keys, HS, W);
    ap_cp_async_commit();

    for (int j = 0; j < n_tiles; j++) {
        const int st = j & 1, k0 = j * BK;
        if (j + 1 < n_tiles) {
            ap_load_tile<DP, BK>(sK[st ^ 1], Kh, k0 + BK, n_keys, HS, W);
            ap_load_tile<DP, BK>(sV[st ^ 1], Vh, k0 + BK, n_keys, HS, W);
            ap_cp_async_commit();
            ap_cp_async_wait<1>();
        } else {
            ap_cp_async_wait<0>();
        }
        __syncthreads();

        /* skip the tile when every key of it is after this warp's rows, or when the warp has no
         * row inside the sequence (short sequences leave whole warps idle) */
        if (wr0 < len && k0 <= warp_hi) {
            /* S = Q K^T: 16 x BK per warp */
            float s[NKT][4];
#pragma unroll
            for (int i = 0; i < NKT; i++) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
            const uint16_t *kt = sK[st];
#pragma unroll
            for (int kc = 0; kc < DP / 16; kc++) {
#pragma unroll
                for (int n2 = 0; n2 < NKT / 2; n2++) {
                    uint32_t b[4];
                    int key = n2 * 16 + (lane & 7) + ((lane >> 4) & 1) * 8;
                    int d = kc * 16 + ((lane >> 3) & 1) * 8;
                    ap_ldmatrix_x4(b, kt + key * LD + d);
                    ap_mma<D>(s[2 * n2], qf[kc], b[0], b[1]);
                    ap_mma<D>(s[2 * n2 + 1], qf[kc], b[2], b[3]);
                }
            }

            /* scale, causal mask, online softmax */
            const bool mask = k0 + BK - 1 > warp_lo;
            float mx0 = m0, mx1 = m1;
#pragma unroll
            for (int i = 0; i < NKT; i++) {
                int key = k0 + i * 8 + tig * 2;
                s[i][0] *= scale_log2;
                s[i][1] *= scale_log2;
                s[i][2] *= scale_log2;
                s[i][3] *= scale_log2;
                if (mask) {
                    if (key > lim0) s[i][0] = -INFINITY;
                    if (key + 1 > lim0) s[i][1] = -INFINITY;
                    if (key > lim1) s[i][2] = -INFINITY;
                    if (key + 1 > lim1) s[i][3] = -INFINITY;
                }
                mx0 = fmaxf(mx0, fmaxf(s[i][0], s[i][1]));
                mx1 = fmaxf(mx1, fmaxf(s[i][2], s[i][3]));
            }
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
            /* every row sees key 0 in the first tile, so the max is finite from then on; the
             * guard keeps a fully masked row at zeros instead of NaN all the same */
            const float mu0 = mx0 == -INFINITY ? 0.0f : mx0;
            const float mu1 = mx1 == -INFINITY ? 0.0f : mx1;
            const float alpha0 = exp2f(m0 - mu0), alpha1 = exp2f(m1 - mu1);
            m0 = mx0;
            m1 = mx1;
            float ps0 = 0.0f, ps1 = 0.0f;
#pragma unroll
            for (int i = 0; i < NKT; i++) {
                s[i][0] = exp2f(s[i][0] - mu0);
                s[i][1] = exp2f(s[i][1] - mu0);
                s[i][2] = exp2f(s[i][2] - mu1);
                s[i][3] = exp2f(s[i][3] - mu1);
                ps0 += s[i][0] + s[i][1];
                ps1 += s[i][2] + s[i][3];
            }
            l0 = l0 * alpha0 + ps0;
            l1 = l1 * alpha1 + ps1;
#pragma unroll
            for (int i = 0; i < NDT; i++) {
                o[i][0] *= alpha0;
                o[i][1] *= alpha0;
                o[i][2] *= alpha1;
                o[i][3] *= alpha1;
            }

            /* O += P V: P's accumulator layout is the A fragment layout of the next mma */
            const uint16_t *vt = sV[st];
#pragma unroll
            for (int kc = 0; kc < BK / 16; kc++) {
                uint32_t a[4];
                a[0] = D::pack2(s[2 * kc][0], s[2 * kc][1]);
                a[1] = D::pack2(s[2 * kc][2], s[2 * kc][3]);
                a[2] = D::pack2(s[2 * kc + 1][0], s[2 * kc + 1][1]);
                a[3] = D::pack2(s[2 * kc + 1][2], s[2 * kc + 1][3]);
#pragma unroll
                for (int n2 = 0; n2 < NDT / 2; n2++) {
                    uint32_t b[4];
                    int key = kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
                    int d = n2 * 16 + ((lane >> 4) & 1) * 8;
                    ap_ldmatrix_x4_trans(b, vt + key * LD + d);
                    ap_mma<D>(o[2 * n2], a, b[0], b[1]);
                    ap_mma<D>(o[2 * n2 + 1], a, b[2], b[3]);
                }
            }
        }
        __syncthreads(); /* the next iteration's loads overwrite this stage */
    }

    /* normalize and write rows r0, r1 */
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int r = half ? r1 : r0;
        if (r >= len) continue;
        const float inv = half ? inv1 : inv0;
        uint16_t *orow = out + (size_t)(start + r) * C + (size_t)h * HS;
#pragma unroll
        for (int i = 0; i < NDT; i++) {
            int d = i * 8 + tig * 2;
            float v0 = o[i][half * 2] * inv, v1 = o[i][half * 2 + 1] * inv;
            if (qvec) {
                if (d < HS) *reinterpret_cast<uint32_t *>(orow + d) = D::pack2(v0, v1);
            } else {
                uint32_t pk = D::pack2(v0, v1);
                if (d < HS) orow[d] = (uint16_t)(pk & 0xffffu);
                if (d + 1 < HS) orow[d + 1] = (uint16_t)(pk >> 16);
            }
        }
    }
}

template <typename D, int DP>
static cudaError_t ap_launch(ni_half16 *out, const ni_half16 *qkv, const ni_half16 *k_cache,
                             const ni_half16 *v_cache, const int32_t *seq_start,
                             const int32_t *seq_len, const int32_t *seq_slot,
                             const int32_t *seq_pos0, size_t n_seq, size_t max_len, size_t NH,
                             size_t HS, size_t T, int W, int qvec, cudaStream_t s) {
    /* 64 keys per tile up to DP 64; 32 above, to keep both stages under 48 KB */
    constexpr int BK = DP <= 64 ? 64 : 32;
    dim3 grid((unsigned int)((max_len + AP_BQ - 1) / AP_BQ), (unsigned int)NH, (unsigned int)n_seq);
    float scale_log2 = 1.4426950408889634f / sqrtf((float)HS);
    return ni_launch_pdl(attention_prefill_kernel<D, DP, BK>, grid, dim3(AP_THREADS), 0, s,
                         (uint16_t *)out, (const uint16_t *)qkv, (const uint16_t *)k_cache,
                         (const uint16_t *)v_cache, seq_start, seq_len, seq_slot, seq_pos0, (int)NH,
                         (int)HS, (int)T, scale_log2, W, qvec);
}

/* Contract beyond kernels.h: seq_pos0[q] + seq_len[q] <= T; max_len >= every seq_len (larger
 * only costs blocks that return at once); HS <= 128 and n_seq, NH <= 65535, else
 * cudaErrorInvalidValue and nothing runs. Tokens that no sequence lists are not written. */
extern "C" int ni_cuda_attention_prefill(ni_half16 *out, const ni_half16 *qkv,
                                         const ni_half16 *k_cache, const ni_half16 *v_cache,
                                         const int32_t *seq_start, const int32_t *seq_len,
                                         const int32_t *seq_slot, const int32_t *seq_pos0,
                                         size_t n_seq, size_t max_len, size_t NH, size_t HS,
                                         size_t T, ni_cuda_dtype dt, ni_stream s) {
    if (dt != NI_CUDA_BF16 && dt != NI_CUDA_F16) return (int)cudaErrorInvalidValue;
    if (n_seq == 0 || max_len == 0 || NH == 0) return (int)cudaGetLastError();
    if (HS == 0 || HS > AP_MAX_HS || n_seq > 65535 || NH > 65535) return (int)cudaErrorInvalidValue;
    uintptr_t kv_align = (uintptr_t)k_cache | (uintptr_t)v_cache;
    int W = (HS % 8 == 0 && kv_align % 16 == 0) ? 8 : (HS % 2 == 0 && kv_align % 4 == 0) ? 2 : 1;
    int qvec = HS % 2 == 0 && ((uintptr_t)qkv | (uintptr_t)out) % 4 == 0;
    size_t DP = (HS + 15) / 16 * 16;
    cudaStream_t st = (cudaStream_t)s;
    cudaError_t e;
#define AP_CASE(dp)                                                                                \
    case dp:                                                                                       \
        e = dt == NI_CUDA_F16 ? ap_launch<ni_dt_f16, dp>(out, qkv, k_cache, v_cache, seq_start,    \
                                                         seq_len, seq_slot, seq_pos0, n_seq,       \
                                                         max_len, NH, HS, T, W, qvec, st)          \
                              : ap_launch<ni_dt_bf16, dp>(out, qkv, k_cache, v_cache, seq_start,   \
                                                          seq_len, seq_slot, seq_pos0, n_seq,      \
                                                          max_len, NH, HS, T, W, qvec, st);        \
        break;
    switch (DP) {
        AP_CASE(16)
        AP_CASE(32)
        AP_CASE(48)
        AP_CASE(64)
        AP_CASE(80)
        AP_CASE(96)
        AP_CASE(112)
        AP_CASE(128)
    default:
        return (int)cudaErrorInvalidValue;
    }
#undef AP_CASE
    return ni_launch_status(e);
}

NI_TL_SETTER(attention_prefill)
