/* The CUDA backend's kernels: one op per file in src/cuda/, each with an extern "C" launcher
 * (outputs, inputs, sizes, stream) callable from C, and each the twin of a CPU op in
 * src/cpu/ops.h that the GPU tests compare it with. Activations and weights are 16-bit floats,
 * bf16 or IEEE half as the launcher's ni_cuda_dtype says (stored as uint16_t bits in C, the type
 * of an engine's whole forward pass), the residual stream and all statistics f32, logits f32.
 * Below, "16-bit" means the launcher's dtype; conversions to it round to nearest even.
 * Launchers return cudaGetLastError() as an int (0 = cudaSuccess) so that C callers can check
 * them without the CUDA headers' types. */
#ifndef NI_CUDA_KERNELS_H
#define NI_CUDA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef uint16_t ni_half16; /* bits of a bf16 or an IEEE half (ni_cuda_dtype) */
typedef enum { NI_CUDA_BF16 = 0, NI_CUDA_F16 = 1 } ni_cuda_dtype;
typedef struct CUstream_st *ni_stream;

/* ---- weights ------------------------------------------------------------------------------ */

/* Both writers below: synchronize the stream after them before any product reads the weights;
 * the GEMV and gemm_stream load weights before their programmatic-launch wait (pdl.cuh). */

/* out[i] = 16-bit(std * ni_rng_normal(seed, tensor, i)) for i < n (common/philox.h), or the
 * constant `value` when std == 0. The same numbers as the CPU's random init. */
int ni_cuda_init_random(ni_half16 *out, size_t n, uint64_t seed, uint32_t tensor, float std,
                        float value, ni_cuda_dtype dt, ni_stream s);
/* out[i] = 16-bit(in[i]), round to nearest even (f16: past 65504 to inf, as __float2half_rn). */
int ni_cuda_f32_to_half16(ni_half16 *out, const float *in, size_t n, ni_cuda_dtype dt, ni_stream s);

/* ---- per-token ops ------------------------------------------------------------------------ */

/* x[i] = wte[tokens[i]] + wpe[pos[i]] in f32. x (N, C); wte (V, C); wpe (P, C). */
int ni_cuda_embedding(float *x, const int32_t *tokens, const int32_t *pos, const ni_half16 *wte,
                      const ni_half16 *wpe, size_t N, size_t C, ni_cuda_dtype dt, ni_stream s);

/* A product's output left as partial sums (gemm_stream's parts, handed to the kernel that reads
 * the output): row i's output o is 16-bit(sum over p < parts, in that order from 0, of
 * ws[(p * rows + i) * stride + o], plus f32(bias[o]) or 0), the bits the product would have
 * stored. ws 16-byte aligned, stride a multiple of 4; the LayerNorm's C must be the product's
 * OC (bias holds C values). */
typedef struct {
    const float *ws;
    size_t parts, rows, stride;
    const ni_half16 *bias; /* or NULL */
} ni_cuda_partial_sums;

/* For each output row r: i = rows ? rows[r] : r; if delta: x[i] += f32(delta[i]) (or, with
 * sums instead, the delta they make, which the caller does not store);
 * out[r] = 16-bit(LayerNorm(x[i]) * w + b), statistics in f32. x (*, C) f32; delta (*, C)
 * 16-bit or NULL; out (N, C) 16-bit; rows (N) or NULL. */
int ni_cuda_residual_layernorm(ni_half16 *out, float *x, const ni_half16 *delta,
                               const ni_cuda_partial_sums *sums, const ni_half16 *w,
                               const ni_half16 *b, const int32_t *rows, size_t N, size_t C,
                               float eps, ni_cuda_dtype dt, ni_stream s);

/* x += f32(delta). (N, C) */
int ni_cuda_residual_add(float *x, const ni_half16 *delta, size_t N, size_t C, ni_cuda_dtype dt,
                         ni_stream s);

/* Writes token i's key and value from qkv (N, 3C) = [q | k | v] into the caches at
 * (slot[i], pos[i]). k_cache, v_cache (S, NH, T, HS) 16-bit (one layer). A bit copy: the same for
 * either dtype, so no ni_cuda_dtype. */
int ni_cuda_kv_append(ni_half16 *k_cache, ni_half16 *v_cache, const ni_half16 *qkv,
                      const int32_t *slot, const int32_t *pos, size_t N, size_t NH, size_t HS,
                      size_t T, ni_stream s);

/* ---- attention ---------------------------------------------------------------------------- */

/* Prefill attention, flash style (online softmax, no T x T matrix), over ragged sequences:
 * sequence q (of n_seq) owns tokens [seq_start[q], seq_start[q] + seq_len[q]) of the token list,
 * lives in cache slot seq_slot[q], and its first listed token has position seq_pos0[q]; token
 * j of it attends to cache positions 0 .. seq_pos0[q] + j (earlier positions are already in the
 * cache, the listed ones were appended by ni_cuda_kv_append). max_len = max seq_len.
 * out (N, C) 16-bit; qkv (N, 3C) 16-bit (queries read from it); caches (S, NH, T, HS) 16-bit. */
int ni_cuda_attention_prefill(ni_half16 *out, const ni_half16 *qkv, const ni_half16 *k_cache,
                              const ni_half16 *v_cache, const int32_t *seq_start,
                              const int32_t *seq_len, const int32_t *seq_slot,
                              const int32_t *seq_pos0, size_t n_seq, size_t max_len, size_t NH,
                              size_t HS, size_t T, ni_cuda_dtype dt, ni_stream s);

/* Decode attention: one query per row r (token r of qkv), attending to cache positions
 * 0 .. pos[r] of slot[r]. Long contexts are split over the sequence in chunks of `split_len`
 * positions whose partial results (max, sum, weighted values) go to `partial` and are merged;
 * max_pos bounds pos[] so that the launch shape does not depend on the data (CUDA graphs).
 * out (B, C) 16-bit; qkv (B, 3C) 16-bit; partial: ni_cuda_attention_decode_partial_floats(...). */
int ni_cuda_attention_decode(ni_half16 *out, float *partial, const ni_half16 *qkv,
                             const ni_half16 *k_cache, const ni_half16 *v_cache,
                             const int32_t *slot, const int32_t *pos, size_t B, size_t max_pos,
                             size_t NH, size_t HS, size_t T, ni_cuda_dtype dt, ni_stream s);
/* ni_cuda_attention_decode that first appends each row's key and value (from qkv) at cache
 * position pos[r], as ni_cuda_kv_append would: the decode step's append and attention in one
 * launch, the same output bit for bit. The rows' slots must be distinct. preload != 0: where a
 * chunk fits in registers, the blocks read pos, slot and the cached rows before pos before their
 * programmatic-launch wait and use them (the same output). The caller must then guarantee that
 * no kernel still in flight writes any of them, as a decode step does (pdl.cuh); it pays where
 * the kernel before lets this one launch at its start. */
int ni_cuda_attention_decode_append(ni_half16 *out, float *partial, ni_half16 *k_cache,
                                    ni_half16 *v_cache, const ni_half16 *qkv, const int32_t *slot,
                                    const int32_t *pos, size_t B, size_t max_pos, size_t NH,
                                    size_t HS, size_t T, int preload, ni_cuda_dtype dt,
                                    ni_stream s);
size_t ni_cuda_attention_decode_partial_floats(size_t B, size_t NH, size_t HS, size_t T);
/* Positions per block of decode attention: a launch for max_pos covers max_pos / this + 1 of
 * them per head and row. */
#define NI_CUDA_ATTN_DECODE_CHUNK 128

/* ---- matrix-vector products for small batches ---------------------------------------------- */

/* out (N, OC) = inp (N, IC) @ w^T + bias, w (OC, IC) 16-bit streamed once and every row of inp
 * reused from L1; gelu != 0 applies GELU (tanh) after the bias. For N <= 32.
 * out_f32 != NULL writes f32 instead of 16-bit (the logits). */
int ni_cuda_gemv(ni_half16 *out, float *out_f32, const ni_half16 *inp, const ni_half16 *w,
                 const ni_half16 *bias, size_t N, size_t IC, size_t OC, int gelu, ni_cuda_dtype dt,
                 ni_stream s);
#define NI_CUDA_GEMV_MAX_ROWS 32

/* The most rows for which the GEMV beats cuBLASLt on a matrix of OC outputs: 32 where its warps
 * own 16 features (OC > 8432: the vocabulary projection), 16 for the rest (ni_cuda_gemv itself
 * takes any N <= 32). */
size_t ni_cuda_gemv_rows(size_t OC);

/* ---- weights streamed by TMA (tensor_maps.cu) --------------------------------------------- */

/* One layer's weights on the device. */
typedef struct {
    ni_half16 *ln1_w, *ln1_b, *qkv_w, *qkv_b, *proj_w, *proj_b;
    ni_half16 *ln2_w, *ln2_b, *fc_w, *fc_b, *fcproj_w, *fcproj_b;
} ni_cuda_layer_weights;

/* A weight slab: the box of one TMA copy, 16 rows (output features) x 256 columns. */
#define NI_CUDA_SLAB_ROWS 16
#define NI_CUDA_SLAB_COLS 256
/* Fills out (host, 128-byte aligned, (4 L + 1) x 128 bytes) with the TMA descriptors (boxes of
 * one slab, zeros outside the matrix) of the step's weight matrices in the order qkv, proj, fc,
 * fcproj of each layer, then wte (device pointers in layers (host array) and wte; 16-bit type
 * dt), to be copied to device memory. Fails (non-zero) where the driver has no TMA (before
 * sm_90) or a matrix does not fit a descriptor (rows not a multiple of 16 bytes). */
int ni_cuda_weight_tensor_maps(void *out, const ni_cuda_layer_weights *layers, size_t L,
                               const ni_half16 *wte, size_t C, size_t V, ni_cuda_dtype dt);
/* The same for one matrix w (OC, IC): 128 bytes at out (host, 64-byte aligned). */
int ni_cuda_weight_tensor_map(void *out, const ni_half16 *w, size_t IC, size_t OC,
                              ni_cuda_dtype dt);

/* ---- the matrix product for 17-32 rows (gemm_stream.cu) ------------------------------------ */

/* Where a qkv product also puts the keys and values (kv argument, NULL for none): row n's
 * outputs C .. 2C - 1 (its key) and 2C .. 3C - 1 (its value), C = NH * HS = OC / 3, go to
 * (slot[n], head, pos[n]) of the caches, the same bits ni_cuda_kv_append would copy there. */
typedef struct {
    ni_half16 *k_cache, *v_cache; /* (S, NH, T, HS) one layer */
    const int32_t *slot, *pos;    /* (N) */
    size_t NH, HS, T;
} ni_cuda_kv_dest;

/* How gemm_stream shares a matrix out among its blocks (ni_cuda_gemm_stream_plan_for): a grid of
 * parts x bp blocks, each with at most 4 tiles of 16 outputs over a range of IC. */
typedef struct {
    size_t blocks;    /* the grid */
    size_t parts;     /* IC in this many ranges of 256-column slabs (> 1: sums through ws) */
    size_t ws_floats; /* the parts' partial sums (0 for one part) */
    size_t counters;  /* the parts' counters (0 for one part) */
    size_t max_slabs; /* the busiest block's weight slabs */
    int defer;        /* set by the caller, parts > 1 only: the sums stay in ws for the next
                         kernel (ni_cuda_partial_sums {ws, parts, N, 16 x tiles, bias}), out is
                         not written, no counters; no kv, no GELU */
    int early;        /* set by the caller: the next kernel may launch at this one's start
                         (pdl.cuh); the decode step's products, not the prefill's */
} ni_cuda_gemm_stream_plan;

/* out (N, OC) 16-bit = inp (N, IC) @ w^T + bias, then GELU if gelu, and with kv the keys and
 * values to the caches (above); 17 <= N <= 32 is what it is for (a prefill of a 32-token prompt,
 * a decode batch of 17-32), any N in 1..32 works. w (OC, IC)
 * is read through its TMA descriptor tmap (device memory, from ni_cuda_weight_tensor_maps);
 * bias (OC) or NULL. plan: ni_cuda_gemm_stream_plan_for's for (IC, OC). Where it has parts,
 * ws holds plan->ws_floats floats (16-byte aligned) and counters plan->counters zeros, which the
 * kernel leaves zero; launches that share them must run in stream order (any kernel between is
 * fine). */
int ni_cuda_gemm_stream(ni_half16 *out, float *ws, unsigned *counters, const ni_cuda_kv_dest *kv,
                        const ni_half16 *inp, const void *tmap, const ni_half16 *bias, size_t N,
                        size_t IC, size_t OC, int gelu, ni_cuda_dtype dt,
                        const ni_cuda_gemm_stream_plan *plan, ni_stream s);
/* Prepares the kernels on the current device and sets *sms to its multiprocessor count, or to
 * 0 where the kernel cannot run (before sm_90, too little shared memory); 0 or a CUDA error. */
int ni_cuda_gemm_stream_setup(size_t *sms);
/* The share of a matrix (OC, IC) over a device of sms multiprocessors (ni_cuda_gemm_stream_
 * setup): each block streams the weight slabs of at most 4 tiles of 16 outputs and takes at
 * most 2048 input columns (wider inputs go in parts). From the fewest parts of IC that fit, the
 * count whose busiest block streams the fewest slabs, counting the parts' handshake; want_parts
 * asks for more parts where they are valid. 1 and *out, or 0 when the kernel does not take the
 * shape (IC not a multiple of 8, too many tiles, sms == 0). */
int ni_cuda_gemm_stream_plan_for(ni_cuda_gemm_stream_plan *out, size_t IC, size_t OC, size_t sms,
                                 size_t want_parts);
#define NI_CUDA_GEMM_STREAM_MAX_ROWS 32
/* ---- the fused decode step (decode_fused.cu) ------------------------------------------------ */

/* Everything one fused decode step reads and writes; all pointers are device memory. */
typedef struct {
    size_t N, C, NH, L, V, T; /* rows, width, heads, layers, vocabulary, cache positions */
    size_t kv_layer;          /* elements of one layer's cache (S * NH * T * HS) */
    float eps;
    const ni_cuda_layer_weights *layers; /* (L) */
    const ni_half16 *wte, *wpe, *lnf_w, *lnf_b;
    const int32_t *tok, *slot, *pos; /* (N) row r's input token, cache slot and position */
    ni_half16 *k_cache, *v_cache;    /* (L, S, NH, T, HS) */
    float *x;                        /* (N, C) residual stream */
    ni_half16 *qkv, *att, *fc;       /* (N, 3C), (N, C), (N, 4C) */
    float *logits;                   /* (N, V) */
    unsigned *barrier;               /* (1) the grid barrier's counter, zeroed by each launch */
    const void *tmaps;               /* (4 L + 1) x 128 bytes: ni_cuda_weight_tensor_maps */
    unsigned ring;                   /* weight slabs in flight: ni_cuda_decode_fused_ring */
    unsigned long long *trace;       /* NULL, or ni_cuda_decode_fused_trace_words(L) words (below),
                                        plus ..._trace_detail_words(L, blocks) in a detail build */
} ni_decode_fused_args;
#define NI_CUDA_DECODE_FUSED_MAX_ROWS 8

/* The forward pass of N <= 8 single-token rows (embedding, all layers with their KV append,
 * logits of every row) as one persistent kernel of `blocks` blocks with grid-wide barriers
 * between its phases and the weights streamed by TMA; the same results as the per-kernel path up
 * to the order of f32 sums. bf16 weights. */
int ni_cuda_decode_fused(const ni_decode_fused_args *a, size_t blocks, ni_stream s);
/* The ring slots the fused step has for these sizes (N rows, width C, NH heads, T cache
 * positions, L layers) on this device, for args.ring; 0 when it does not handle them. */
unsigned ni_cuda_decode_fused_ring(size_t N, size_t C, size_t NH, size_t T, size_t L);
/* Phase timing (NI_FUSED_TRACE), globaltimer ns: for each of the 1 + 5 L barriers k, the last
 * block's arrival [2k] and block 0's release [2k + 1]; the last block's end [2 (5 L + 1)] and
 * block 0's start [2 (5 L + 1) + 1]. */
#define ni_cuda_decode_fused_trace_words(L) (2 * (5 * (size_t)(L) + 2))
/* Words after those that a build with -DDF_TRACE_DETAIL also writes (per block and phase, see
 * decode_fused.cu; 0 in other builds), for a grid of `blocks`. */
size_t ni_cuda_decode_fused_trace_detail_words(size_t L, size_t blocks);
/* The grid of this device (one block per SM) and its warps. */
int ni_cuda_decode_fused_grid(size_t *blocks, size_t *warps);

/* ---- device-side decode state (CUDA graphs) ------------------------------------------------ */

/* After sampling row r: hist[steps[r] * B + r] = next[r] (when steps[r] < hist_rows),
 * tok[r] = next[r], pos[r] += 1, steps[r] += 1. tok, pos, steps, next (B); hist (hist_rows, B). */
int ni_cuda_decode_advance(int32_t *tok, int32_t *pos, uint32_t *steps, int32_t *hist,
                           const int32_t *next, size_t B, size_t hist_rows, ni_stream s);

/* ---- sampling ------------------------------------------------------------------------------ */

/* Sort-based sampler on the GPU (the baseline's): for each row r of logits (B, V) f32, the
 * filter of src/sampling/sampling.h (temperature, top_k, top_p, min_p; greedy when
 * temperature <= 0 or top_k == 1) and one uniform ni_rng_uniform(seed, seq_ids[r], step, 0);
 * tokens[r] gets the id, or -1 for a row with NaN or no finite logit. workspace: bytes from
 * ni_cuda_sample_sorted_workspace(B, V). */
int ni_cuda_sample_sorted(int32_t *tokens, const float *logits, const uint64_t *seq_ids, size_t B,
                          size_t V, float temperature, size_t top_k, float top_p, float min_p,
                          uint64_t seed, uint32_t step, void *workspace, size_t workspace_bytes,
                          ni_stream s);
size_t ni_cuda_sample_sorted_workspace(size_t B, size_t V);

/* ---- fused rejection sampler (sorting-free) ------------------------------------------------ */

/* Sampling parameters in device memory, so that a captured CUDA graph samples with whatever the
 * current generation asks (never baked into kernel arguments). The filter of
 * src/sampling/sampling.h; top_k 0 = off. */
typedef struct {
    float temperature;
    uint32_t top_k;
    float top_p;
    float min_p;
    uint64_t seed;
} ni_sample_params;

/* One launch for the whole batch, one cluster of blocks per row: row r of logits (B, V) f32 is
 * sampled with the random stream (params->seed, seq_ids[r], steps[r]) exactly as
 * ni_sample_rejection (CPU) does, the same token for the same stream; tokens[r] gets the id or -1
 * (invalid row: NaN or +inf, no finite logit, NaN parameters). seq_ids, steps: device arrays (B)
 * (NULL: the row index, step 0); params: device memory. No workspace, no allocation, no
 * synchronization; the launch shape depends only on (B, V). */
int ni_cuda_sample_rejection(int32_t *tokens, const float *logits, const uint64_t *seq_ids,
                             const uint32_t *steps, const ni_sample_params *params, size_t B,
                             size_t V, ni_stream s);
/* The same with a chosen round cap (as ni_sample_rejection_ex; at most 64) and, force_global != 0,
 * the path that re-reads the row from global memory, which the kernel otherwise takes only for
 * rows too long for shared memory (tests). */
int ni_cuda_sample_rejection_ex(int32_t *tokens, const float *logits, const uint64_t *seq_ids,
                                const uint32_t *steps, const ni_sample_params *params, size_t B,
                                size_t V, uint32_t max_rounds, int force_global, ni_stream s);
/* The same with a chosen cluster size: the blocks that share a row (1, 2, 4, 8 or 16; 0 = the
 * automatic choice from (B, V)). The token does not depend on it (tests). */
int ni_cuda_sample_rejection_cfg(int32_t *tokens, const float *logits, const uint64_t *seq_ids,
                                 const uint32_t *steps, const ni_sample_params *params, size_t B,
                                 size_t V, uint32_t max_rounds, int force_global, uint32_t cluster,
                                 ni_stream s);

#ifdef __cplusplus
}
#endif
#endif
