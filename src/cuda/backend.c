/* The CUDA backend: the GPT-2 forward pass on the GPU over the same token lists as the CPU
 * backend (each token names its sequence's cache slot and its position), with 16-bit weights,
 * activations and KV cache (bf16 by default, IEEE half with dtype NI_DTYPE_F16; half's range ends
 * at 65504, which GPT-2's activations stay well inside: no scaling), an f32 residual stream and
 * f32 logits. One device allocation (the
 * arena) holds weights, cache, activations and workspaces, sized at creation from (config, max
 * batch, max sequence) and checked against the free memory first; nothing is allocated while
 * generating. Tokens reach the host only once sampled.
 *
 * Presets: baseline and kv_cache sample with the sort-based sampler, sampling with the fused
 * rejection kernel; cuda_graphs keeps the whole decode state on the device (input tokens,
 * positions, sampling steps, a token history) so that a decode step — forward, sampling,
 * advancing — is one graph launch, captured per batch size after one eager warm-up step, and
 * the host wakes up only every `graph_steps` steps to collect tokens. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/env.h"
#include "cuda/kernels.h"
#include "cuda/matmul.h"
#include "cuda/timeline.h"
#include "engine/backend.h"
#include "engine/token_list.h"
#include "model/model.h"

/* Steps a cuda_graphs engine runs between two host wake-ups (tokens come back in batches);
 * the environment variable NI_GRAPH_STEPS (1 .. NI_GRAPH_STEPS_MAX) overrides it. */
#define NI_GRAPH_STEPS 8
#define NI_GRAPH_STEPS_MAX 64
#define NI_MAX_GRAPHS 8

typedef ni_cuda_layer_weights cuda_layer;

/* What one chunk of a forward pass needs on the device, packed so that one copy moves it. */
typedef struct {
    int32_t *tok, *slot, *pos, *rows;                   /* (chunk) */
    int32_t *seq_start, *seq_len, *seq_slot, *seq_pos0; /* (S + 1) pieces */
    uint64_t *seq_ids;                                  /* (S) sequence of each logits row */
    uint32_t *steps;                                    /* (S) sampling step of each row */
    ni_sample_params *params; /* the request's sampling parameters (rejection sampler) */
} chunk_block;

/* The decode state a graph reads and advances (cuda_graphs). */
typedef struct {
    int32_t *tok, *pos, *slot; /* (S) */
    uint32_t *steps;           /* (S) */
    uint64_t *seq_ids;         /* (S) */
    int32_t *hist;             /* (T, S) token of step s of row r at [s * B + r] */
} decode_state;

typedef struct {
    size_t N;                        /* tokens */
    const int32_t *tok, *slot, *pos; /* device (N) */
    int single;                      /* one token per sequence: decode attention */
    size_t max_pos;                  /* bound of pos[] for decode attention */
    const int32_t *seq_start, *seq_len, *seq_slot, *seq_pos0; /* device pieces (prefill) */
    size_t n_pieces, max_len;
} layer_args;

typedef struct {
    size_t batch, max_pos; /* max_pos: the bound of the positions the decode attention covers */
    cudaGraphExec_t exec;
} graph_entry;

/* A prefill shape of the cuda_graphs preset: every size its launches depend on. exec is NULL
 * until the shape's first, eager run has been captured. */
typedef struct {
    size_t N, max_pos, n_pieces, max_len, n_sel;
    int single;
    cudaGraphExec_t exec;
} prefill_graph;

struct ni_backend_ctx {
    ni_timeline tl; /* a -DNI_TIMELINE build's kernel records (timeline.h) */
    ni_model *model;
    const ni_config *cfg;
    const ni_preset_flags *flags;
    size_t max_batch, max_seq, chunk;
    cudaStream_t stream;
    ni_matmul_ctx mm;
    ni_cuda_dtype dt; /* of weights, activations and KV cache */

    uint8_t *arena; /* device */
    size_t arena_bytes, staging_bytes, weight_bytes;
    ni_half16 *wte, *wpe, *lnf_w, *lnf_b;
    cuda_layer *layers;                     /* host array of device pointers */
    ni_half16 *k_cache, *v_cache;           /* (L, S, NH, T, HS) */
    float *x;                               /* (chunk, C) residual stream */
    ni_half16 *ln, *qkv, *att, *delta, *fc; /* (chunk, C | 3C | C | C | 4C) */
    ni_half16 *sel;                         /* (S, C) final-LN rows that need logits */
    float *logits;                          /* (S, V) */
    float *attn_partial;
    int32_t *d_next; /* (S) sampled tokens */
    /* the fused decode step (decode_fused.cu), NI_FUSED=1 only: off when fused_blocks == 0 */
    size_t fused_blocks, fused_warps;
    unsigned fused_ring[NI_CUDA_DECODE_FUSED_MAX_ROWS + 1]; /* ring slots per row count, 0: no */
    cuda_layer *d_layers;                                   /* (L) device copy of `layers` */
    unsigned *fused_sync;
    void *tmaps;    /* (4 L + 1) TMA descriptors of the matrices (ni_cuda_weight_tensor_maps) */
    int have_tmaps; /* 0 where the device or driver has no TMA */
    unsigned long long *fused_trace; /* NI_FUSED_TRACE: device words, host sums per phase kind */
    size_t fused_steps;              /* decode steps run by the fused kernel */
    int went_fused;                  /* the last forward pass was the fused kernel */
    int graph_state_pending;         /* cuda_graphs: a prefill ran, init_graph_state not yet */
    int attn_preload;                /* NI_ATTN_PRELOAD (default 1) */
    double trace_ns[8];
    size_t trace_runs;
    void *sample_ws, *lt_ws;
    size_t sample_ws_bytes, lt_ws_bytes;
    uint8_t *d_blk;
    ni_cuda_partial_sums delta_sums; /* the last product's parts (ws NULL: delta holds it) */
    chunk_block d;
    decode_state st;

    uint8_t *h_blk; /* pinned mirror of d_blk */
    chunk_block h;
    size_t blk_bytes;
    int32_t *h_hist;               /* pinned (graph_steps, S) tokens copied back from st.hist */
    size_t graph_steps;            /* decode steps between host wake-ups (cuda_graphs) */
    size_t hist_first, hist_count; /* steps held in h_hist */

    ni_token_list list; /* host: the token list of one forward call */

    graph_entry graphs[NI_MAX_GRAPHS];
    size_t n_graphs, graph_evict;
    prefill_graph pgraphs[NI_MAX_GRAPHS]; /* cuda_graphs: captured prefills, by shape */
    size_t n_pgraphs, pgraph_evict;
    prefill_graph *pgraph_pending; /* ran eagerly, to capture once its token is out */
    layer_args pgraph_args;        /* ... with these launches */
    size_t warm_batch;             /* batch size whose eager warm-up step has run */
    int capturing;                 /* a graph capture is in progress */

    size_t n_seq, max_new;
    ni_filter filter;
    uint64_t seed;
};

static void *carve(uint8_t *base, size_t *off, size_t bytes) {
    size_t at = (*off + 255) & ~(size_t)255;
    *off = at + bytes;
    return base ? base + at : NULL;
}

static size_t block_layout(chunk_block *k, uint8_t *base, size_t S, size_t chunk) {
    size_t off = 0;
    k->tok = carve(base, &off, chunk * 4);
    k->slot = carve(base, &off, chunk * 4);
    k->pos = carve(base, &off, chunk * 4);
    k->rows = carve(base, &off, chunk * 4);
    k->seq_start = carve(base, &off, (S + 1) * 4);
    k->seq_len = carve(base, &off, (S + 1) * 4);
    k->seq_slot = carve(base, &off, (S + 1) * 4);
    k->seq_pos0 = carve(base, &off, (S + 1) * 4);
    k->seq_ids = carve(base, &off, S * 8);
    k->steps = carve(base, &off, S * 4);
    k->params = carve(base, &off, sizeof(ni_sample_params));
    return off;
}

static size_t arena_layout(ni_backend_ctx *b, uint8_t *base) {
    const ni_config *c = b->cfg;
    size_t C = c->n_embd, L = c->n_layer, S = b->max_batch, T = b->max_seq, N = b->chunk;
    size_t V = c->vocab_size, NH = c->n_head, HS = C / NH;
    size_t off = 0;
    b->wte = carve(base, &off, V * C * 2);
    b->wpe = carve(base, &off, c->n_ctx * C * 2);
    b->lnf_w = carve(base, &off, C * 2);
    b->lnf_b = carve(base, &off, C * 2);
    for (size_t l = 0; l < L; l++) {
        cuda_layer *y = &b->layers[l];
        y->ln1_w = carve(base, &off, C * 2);
        y->ln1_b = carve(base, &off, C * 2);
        y->qkv_w = carve(base, &off, 3 * C * C * 2);
        y->qkv_b = carve(base, &off, 3 * C * 2);
        y->proj_w = carve(base, &off, C * C * 2);
        y->proj_b = carve(base, &off, C * 2);
        y->ln2_w = carve(base, &off, C * 2);
        y->ln2_b = carve(base, &off, C * 2);
        y->fc_w = carve(base, &off, 4 * C * C * 2);
        y->fc_b = carve(base, &off, 4 * C * 2);
        y->fcproj_w = carve(base, &off, 4 * C * C * 2);
        y->fcproj_b = carve(base, &off, C * 2);
    }
    b->weight_bytes = off;
    size_t kv = L * S * T * C;
    b->k_cache = carve(base, &off, kv * 2);
    b->v_cache = carve(base, &off, kv * 2);
    b->x = carve(base, &off, N * C * 4);
    b->ln = carve(base, &off, N * C * 2);
    b->qkv = carve(base, &off, N * 3 * C * 2);
    b->att = carve(base, &off, N * C * 2);
    b->delta = carve(base, &off, N * C * 2);
    b->fc = carve(base, &off, N * 4 * C * 2);
    b->sel = carve(base, &off, S * C * 2);
    b->logits = carve(base, &off, S * V * 4);
    b->attn_partial = carve(base, &off, ni_cuda_attention_decode_partial_floats(S, NH, HS, T) * 4);
    b->d_next = carve(base, &off, S * 4);
    b->tmaps = carve(base, &off, (4 * L + 1) * 128);
    if (b->fused_blocks) {
        b->d_layers = carve(base, &off, L * sizeof(cuda_layer));
        b->fused_sync = carve(base, &off, sizeof(unsigned));
        if (getenv("NI_FUSED_TRACE"))
            b->fused_trace = carve(base, &off,
                                   (ni_cuda_decode_fused_trace_words(L) +
                                    ni_cuda_decode_fused_trace_detail_words(L, b->fused_blocks)) *
                                       8);
    }
    b->sample_ws = carve(base, &off, b->sample_ws_bytes);
    b->lt_ws = carve(base, &off, b->lt_ws_bytes);
    b->d_blk = carve(base, &off, b->blk_bytes);
    b->st.tok = carve(base, &off, S * 4);
    b->st.pos = carve(base, &off, S * 4);
    b->st.slot = carve(base, &off, S * 4);
    b->st.steps = carve(base, &off, S * 4);
    b->st.seq_ids = carve(base, &off, S * 8);
    b->st.hist = carve(base, &off, T * S * 4);
    return off;
}

/* ---- weights ----------------------------------------------------------------------------- */

static ni_half16 *weight_slot(ni_backend_ctx *b, ni_weight_kind k, size_t l) {
    cuda_layer *y = &b->layers[l];
    switch (k) {
    case NI_W_WTE:
        return b->wte;
    case NI_W_WPE:
        return b->wpe;
    case NI_W_LNF_W:
        return b->lnf_w;
    case NI_W_LNF_B:
        return b->lnf_b;
    case NI_W_LN1_W:
        return y->ln1_w;
    case NI_W_LN1_B:
        return y->ln1_b;
    case NI_W_QKV_W:
        return y->qkv_w;
    case NI_W_QKV_B:
        return y->qkv_b;
    case NI_W_PROJ_W:
        return y->proj_w;
    case NI_W_PROJ_B:
        return y->proj_b;
    case NI_W_LN2_W:
        return y->ln2_w;
    case NI_W_LN2_B:
        return y->ln2_b;
    case NI_W_FC_W:
        return y->fc_w;
    case NI_W_FC_B:
        return y->fc_b;
    case NI_W_FCPROJ_W:
        return y->fcproj_w;
    case NI_W_FCPROJ_B:
        return y->fcproj_b;
    default:
        return NULL;
    }
}

static ni_status upload_weight(ni_backend_ctx *b, ni_weight_kind k, size_t layer, float *h_stage,
                               float *d_stage) {
    ni_weight_info wi;
    ni_weight_info_get(b->cfg, k, &wi);
    size_t n = wi.rows * wi.cols;
    ni_half16 *dst = weight_slot(b, k, layer);
    const ni_model *m = b->model;
    ni_stream st = (ni_stream)b->stream;
    if (!m->st) {
        /* named random configs: generated on the device, never on the host */
        float std = 0.0f, value = 0.0f;
        if (wi.init == NI_INIT_NORMAL) std = 0.02f;
        if (wi.init == NI_INIT_RESIDUAL) std = 0.02f / sqrtf(2.0f * (float)b->cfg->n_layer);
        if (wi.init == NI_INIT_ONE) value = 1.0f;
        NI_CUDA_TRY(ni_cuda_init_random(dst, n, m->seed, ni_weight_tensor_id(k, layer), std, value,
                                        b->dt, st),
                    "init_random kernel");
        return NI_OK;
    }
    NI_TRY(ni_model_read_weight(m, k, layer, h_stage));
    NI_CUDA_TRY(cudaMemcpyAsync(d_stage, h_stage, n * 4, cudaMemcpyHostToDevice, b->stream),
                "cudaMemcpy (weights)");
    /* round to nearest even; f16 turns a weight beyond 65504 into inf (none in GPT-2) */
    NI_CUDA_TRY(ni_cuda_f32_to_half16(dst, d_stage, n, b->dt, st), "f32_to_half16 kernel");
    /* the host staging buffer is reused by the next tensor */
    NI_CUDA_TRY(cudaStreamSynchronize(b->stream), "weight upload");
    return NI_OK;
}

static ni_status upload_weights(ni_backend_ctx *b) {
    const ni_config *c = b->cfg;
    float *h_stage = NULL, *d_stage = NULL;
    if (b->model->st) {
        size_t biggest = 0;
        for (int k = 0; k < NI_W_KIND_COUNT; k++) {
            ni_weight_info wi;
            ni_weight_info_get(c, (ni_weight_kind)k, &wi);
            if (wi.rows * wi.cols > biggest) biggest = wi.rows * wi.cols;
        }
        b->staging_bytes = biggest * 4;
        h_stage = malloc(b->staging_bytes);
        if (!h_stage) return ni_fail(NI_ERR_NO_MEMORY, "host staging for the weights");
        if (cudaMalloc((void **)&d_stage, b->staging_bytes) != cudaSuccess) {
            free(h_stage);
            return ni_fail(NI_ERR_NO_MEMORY, "device staging of %zu bytes for the weights",
                           b->staging_bytes);
        }
    }
    ni_status s = NI_OK;
    for (int k = 0; k < NI_W_KIND_COUNT && s == NI_OK; k++) {
        ni_weight_info wi;
        ni_weight_info_get(c, (ni_weight_kind)k, &wi);
        size_t nl = wi.per_layer ? c->n_layer : 1;
        for (size_t l = 0; l < nl && s == NI_OK; l++)
            s = upload_weight(b, (ni_weight_kind)k, l, h_stage, d_stage);
    }
    if (s == NI_OK) s = ni_cuda_status(cudaStreamSynchronize(b->stream), "weight upload");
    cudaFree(d_stage);
    free(h_stage);
    return s;
}

/* ---- creation ------------------------------------------------------------------------------ */

static void trace_print(const ni_backend_ctx *b);

static void cuda_destroy(ni_backend_ctx *b) {
    if (!b) return;
    trace_print(b);
    ni_timeline_close(&b->tl);
    for (size_t i = 0; i < b->n_graphs; i++) cudaGraphExecDestroy(b->graphs[i].exec);
    for (size_t i = 0; i < b->n_pgraphs; i++)
        if (b->pgraphs[i].exec) cudaGraphExecDestroy(b->pgraphs[i].exec);
    ni_matmul_destroy(&b->mm);
    if (b->arena) cudaFree(b->arena);
    if (b->h_blk) cudaFreeHost(b->h_blk);
    if (b->h_hist) cudaFreeHost(b->h_hist);
    if (b->stream) cudaStreamDestroy(b->stream);
    free(b->layers);
    free(b->list.tok);
    free(b->list.slot);
    free(b->list.pos);
    free(b->list.want);
    free(b->list.history);
    free(b->list.len);
    free(b->list.row_seq);
    free(b);
}

static ni_status cuda_create(ni_model *m, const ni_engine_opts *o, ni_backend_ctx **out) {
    NI_TRY(ni_cuda_require_gpu());
    ni_backend_ctx *b = calloc(1, sizeof *b);
    if (!b) return ni_fail(NI_ERR_NO_MEMORY, "out of memory");
    /* bf16 unless fp16 is asked for (NI_DTYPE_F32, the zero of the options, means the default) */
    b->dt = o->dtype == NI_DTYPE_F16 ? NI_CUDA_F16 : NI_CUDA_BF16;
    b->model = m;
    b->cfg = ni_model_config(m);
    b->flags = ni_preset_get(o->preset);
    b->max_batch = o->max_batch;
    b->max_seq = o->max_seq;
    b->graph_steps = NI_GRAPH_STEPS;
    long env = 0;
    if (ni_env_int("NI_GRAPH_STEPS", 1, NI_GRAPH_STEPS_MAX, NULL, 0, &env))
        b->graph_steps = (size_t)env;
    /* NI_ATTN_PRELOAD=0: the decode attention loads its cached rows after its wait even where
     * the qkv product lets it launch early (to compare both on one binary) */
    b->attn_preload = 1;
    if (ni_env_int("NI_ATTN_PRELOAD", 0, 1, NULL, 0, &env)) b->attn_preload = (int)env;
    size_t S = b->max_batch, T = b->max_seq, V = b->cfg->vocab_size;
    /* a chunk holds a whole decode step; 4096 tokens bound prefill activations */
    b->chunk = S * T < 4096 ? S * T : 4096;
    if (b->chunk < S) b->chunk = S;
    b->layers = calloc(b->cfg->n_layer, sizeof *b->layers);
    b->list.tok = malloc(S * T * 4);
    b->list.slot = malloc(S * T * 4);
    b->list.pos = malloc(S * T * 4);
    b->list.want = malloc(S * T);
    b->list.history = malloc(S * T * 4);
    b->list.len = calloc(S, sizeof *b->list.len);
    b->list.row_seq = calloc(S, sizeof *b->list.row_seq);
    b->list.max_seq = T;
    ni_status s = NI_OK;
    if (!b->layers || !b->list.tok || !b->list.slot || !b->list.pos || !b->list.want ||
        !b->list.history || !b->list.len || !b->list.row_seq)
        s = ni_fail(NI_ERR_NO_MEMORY, "out of memory");
    if (s == NI_OK)
        s = ni_cuda_status(cudaStreamCreateWithFlags(&b->stream, cudaStreamNonBlocking),
                           "cudaStreamCreate");
    if (s == NI_OK) s = ni_timeline_open(&b->tl);
    chunk_block probe;
    b->blk_bytes = block_layout(&probe, NULL, S, b->chunk);
    b->sample_ws_bytes = b->flags->rejection_sampler ? 0 : ni_cuda_sample_sorted_workspace(S, V);
    b->lt_ws_bytes = (size_t)32 << 20;
    /* the fused decode step: only with NI_FUSED=1, for every batch it supports (fused_ok) */
    if (s == NI_OK && ni_env_int("NI_FUSED", 0, 1, NULL, 0, &env) && env == 1 &&
        ni_cuda_decode_fused_grid(&b->fused_blocks, &b->fused_warps) != 0) {
        cudaGetLastError(); /* not available: the per-kernel path */
        b->fused_blocks = b->fused_warps = 0;
    }
    b->arena_bytes = arena_layout(b, NULL);
    size_t free_b = 0, total_b = 0;
    if (s == NI_OK) s = ni_cuda_status(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
    size_t staging = m->st ? 4 * V * b->cfg->n_embd : 0;
    if (s == NI_OK && b->arena_bytes + staging + ((size_t)256 << 20) > free_b)
        s = ni_fail(NI_ERR_NO_MEMORY,
                    "batch %zu x %zu tokens needs %.2f GB of device memory (weights %.2f GB, "
                    "KV cache %.2f GB); %.2f GB are free",
                    S, T, (double)(b->arena_bytes + staging) / 1e9, (double)b->weight_bytes / 1e9,
                    (double)(b->cfg->n_layer * S * T * b->cfg->n_embd * 4) / 1e9,
                    (double)free_b / 1e9);
    if (s == NI_OK && cudaMalloc((void **)&b->arena, b->arena_bytes) != cudaSuccess)
        s = ni_fail(NI_ERR_NO_MEMORY, "cudaMalloc of %zu bytes failed", b->arena_bytes);
    if (s == NI_OK) {
        arena_layout(b, b->arena);
        block_layout(&b->d, b->d_blk, S, b->chunk);
        if (cudaMallocHost((void **)&b->h_blk, b->blk_bytes) != cudaSuccess ||
            cudaMallocHost((void **)&b->h_hist, b->graph_steps * S * 4) != cudaSuccess)
            s = ni_fail(NI_ERR_NO_MEMORY, "pinned host memory");
    }
    if (s == NI_OK) {
        block_layout(&b->h, b->h_blk, S, b->chunk);
        s = ni_matmul_init(&b->mm, b->lt_ws, b->lt_ws_bytes);
    }
    if (s == NI_OK) s = upload_weights(b);
    if (s == NI_OK) {
        size_t L = b->cfg->n_layer, nb = (4 * L + 1) * 128;
        void *maps = aligned_alloc(128, nb);
        if (!maps) s = ni_fail(NI_ERR_NO_MEMORY, "out of memory");
        if (s == NI_OK) {
            b->have_tmaps = ni_cuda_weight_tensor_maps(maps, b->layers, L, b->wte, b->cfg->n_embd,
                                                       V, b->dt) == 0;
            if (!b->have_tmaps) cudaGetLastError(); /* no TMA: GEMV and cuBLASLt only */
        }
        if (s == NI_OK && b->have_tmaps)
            s = ni_cuda_status(cudaMemcpy(b->tmaps, maps, nb, cudaMemcpyHostToDevice),
                               "cudaMemcpy (tensor maps)");
        free(maps);
        if (!b->have_tmaps) b->fused_blocks = 0; /* the fused step streams through them */
    }
    if (s == NI_OK && b->fused_blocks) {
        size_t L = b->cfg->n_layer;
        s = ni_cuda_status(
            cudaMemcpy(b->d_layers, b->layers, L * sizeof(cuda_layer), cudaMemcpyHostToDevice),
            "cudaMemcpy (layer table)");
        for (size_t n = 1; n <= NI_CUDA_DECODE_FUSED_MAX_ROWS; n++)
            b->fused_ring[n] =
                ni_cuda_decode_fused_ring(n, b->cfg->n_embd, b->cfg->n_head, b->max_seq, L);
    }
    if (s != NI_OK) {
        cuda_destroy(b);
        return s;
    }
    *out = b;
    return NI_OK;
}

/* ---- the forward pass ------------------------------------------------------------------------ */

/* The TMA descriptor of matrix k (4 per layer: qkv, proj, fc, fcproj; then wte), or NULL. */
static const void *weight_tmap(const ni_backend_ctx *b, size_t k) {
    return b->have_tmaps ? (const uint8_t *)b->tmaps + k * 128 : NULL;
}

/* The last product's output for the residual add of the next LayerNorm (any: there is one): its
 * 16-bit delta, or its partial sums where gemm_stream left them (ni_matmul_sums). */
static const ni_half16 *delta_of(const ni_backend_ctx *b, int any) {
    return any && !b->delta_sums.ws ? b->delta : NULL;
}

static const ni_cuda_partial_sums *sums_of(const ni_backend_ctx *b, int any) {
    return any && b->delta_sums.ws ? &b->delta_sums : NULL;
}

/* Embedding and every transformer block; leaves the last block's output in delta or delta_sums
 * (not yet added to the residual x). */
static ni_status enqueue_layers(ni_backend_ctx *b, const layer_args *a) {
    const ni_config *c = b->cfg;
    size_t C = c->n_embd, NH = c->n_head, HS = C / NH, T = b->max_seq, N = a->N;
    size_t kv_layer = b->max_batch * T * C;
    ni_stream st = (ni_stream)b->stream;
    float eps = c->ln_eps;
    b->mm.decode = a->single;
    NI_CUDA_TRY(ni_cuda_embedding(b->x, a->tok, a->pos, b->wte, b->wpe, N, C, b->dt, st),
                "embedding kernel");
    for (size_t l = 0; l < c->n_layer; l++) {
        const cuda_layer *y = &b->layers[l];
        ni_half16 *kc = b->k_cache + l * kv_layer, *vc = b->v_cache + l * kv_layer;
        NI_CUDA_TRY(ni_cuda_residual_layernorm(b->ln, b->x, delta_of(b, l != 0), sums_of(b, l != 0),
                                               y->ln1_w, y->ln1_b, NULL, N, C, eps, b->dt, st),
                    "layernorm kernel (ln_1)");
        if (a->single) { /* one token per sequence: the KV append rides in the attention */
            NI_TRY(ni_matmul(&b->mm, b->qkv, NULL, b->ln, y->qkv_w, weight_tmap(b, 4 * l), y->qkv_b,
                             N, C, 3 * C, 0, b->dt, b->stream));
            NI_CUDA_TRY(ni_cuda_attention_decode_append(
                            b->att, b->attn_partial, kc, vc, b->qkv, a->slot, a->pos, N, a->max_pos,
                            NH, HS, T, b->attn_preload && b->mm.last_early, b->dt, st),
                        "attention_decode kernel");
        } else { /* the append in the qkv product's epilogue where it can, else a kernel */
            const ni_cuda_kv_dest kv = {kc, vc, a->slot, a->pos, NH, HS, T};
            int appended = 0;
            NI_TRY(ni_matmul_qkv(&b->mm, b->qkv, &kv, &appended, b->ln, y->qkv_w,
                                 weight_tmap(b, 4 * l), y->qkv_b, N, C, 3 * C, b->dt, b->stream));
            if (!appended)
                NI_CUDA_TRY(ni_cuda_kv_append(kc, vc, b->qkv, a->slot, a->pos, N, NH, HS, T, st),
                            "kv_append kernel");
            NI_CUDA_TRY(ni_cuda_attention_prefill(b->att, b->qkv, kc, vc, a->seq_start, a->seq_len,
                                                  a->seq_slot, a->seq_pos0, a->n_pieces, a->max_len,
                                                  NH, HS, T, b->dt, st),
                        "attention_prefill kernel");
        }
        NI_TRY(ni_matmul_sums(&b->mm, b->delta, &b->delta_sums, b->att, y->proj_w,
                              weight_tmap(b, 4 * l + 1), y->proj_b, N, C, C, b->dt, b->stream));
        NI_CUDA_TRY(ni_cuda_residual_layernorm(b->ln, b->x, delta_of(b, 1), sums_of(b, 1), y->ln2_w,
                                               y->ln2_b, NULL, N, C, eps, b->dt, st),
                    "layernorm kernel (ln_2)");
        NI_TRY(ni_matmul(&b->mm, b->fc, NULL, b->ln, y->fc_w, weight_tmap(b, 4 * l + 2), y->fc_b, N,
                         C, 4 * C, 1, b->dt, b->stream));
        /* where gemm_stream splits it, its parts' sums go to the next LayerNorm unadded */
        NI_TRY(ni_matmul_sums(&b->mm, b->delta, &b->delta_sums, b->fc, y->fcproj_w,
                              weight_tmap(b, 4 * l + 3), y->fcproj_b, N, 4 * C, C, b->dt,
                              b->stream));
    }
    return NI_OK;
}

/* The last residual add and ln_f for the rows that need logits (rows: device chunk indices, or
 * NULL for rows 0 .. n-1), then lm_head into out (n, V) f32. */
static ni_status enqueue_logits(ni_backend_ctx *b, const int32_t *rows, size_t n, float *out) {
    size_t C = b->cfg->n_embd, V = b->cfg->vocab_size;
    NI_CUDA_TRY(ni_cuda_residual_layernorm(b->sel, b->x, delta_of(b, 1), sums_of(b, 1), b->lnf_w,
                                           b->lnf_b, rows, n, C, b->cfg->ln_eps, b->dt,
                                           (ni_stream)b->stream),
                "layernorm kernel (ln_f)");
    return ni_matmul(&b->mm, NULL, out, b->sel, b->wte, weight_tmap(b, 4 * b->cfg->n_layer), NULL,
                     n, C, V, 0, b->dt, b->stream);
}

/* NI_FUSED_TRACE_FILE with a -DDF_TRACE_DETAIL build: appends one eager step's words, the basic
 * ones then the per-block ones (kernels.h), after a header of four 64-bit words: "NIFT", L, the
 * blocks, the words that follow (tools/fused_trace.py reads them). */
static ni_status trace_detail_append(ni_backend_ctx *b) {
    const char *path = getenv("NI_FUSED_TRACE_FILE");
    size_t L = b->cfg->n_layer, nb = ni_cuda_decode_fused_trace_words(L),
           nd = ni_cuda_decode_fused_trace_detail_words(L, b->fused_blocks);
    if (!path || !path[0] || !nd) return NI_OK;
    unsigned long long *h = malloc((nb + nd) * 8);
    if (!h) return ni_fail(NI_ERR_NO_MEMORY, "fused trace: %zu bytes", (nb + nd) * 8);
    ni_status s = ni_cuda_status(
        cudaMemcpy(h, b->fused_trace, (nb + nd) * 8, cudaMemcpyDeviceToHost), "cudaMemcpy (trace)");
    FILE *f = s == NI_OK ? fopen(path, "ab") : NULL;
    if (s == NI_OK && !f) s = ni_fail(NI_ERR_IO, "fused trace: cannot open %s", path);
    if (f) {
        const unsigned long long head[4] = {0x5446494eull, L, b->fused_blocks, nb + nd};
        if (fwrite(head, 8, 4, f) != 4 || fwrite(h, 8, nb + nd, f) != nb + nd)
            s = ni_fail(NI_ERR_IO, "fused trace: cannot write %s", path);
        if (fclose(f) != 0 && s == NI_OK)
            s = ni_fail(NI_ERR_IO, "fused trace: cannot write %s", path);
    }
    free(h);
    return s;
}

/* NI_FUSED_TRACE: adds one eager launch's phase times to the sums printed at destruction:
 * 0 embedding, 1 ln_1 + qkv, 2 attention, 3 proj, 4 ln_2 + fc, 5 fcproj, 6 ln_f + logits, 7 the
 * barriers' latency. */
static ni_status trace_collect(ni_backend_ctx *b) {
    size_t L = b->cfg->n_layer, nw = ni_cuda_decode_fused_trace_words(L);
    unsigned long long h[2 * (5 * 64 + 2)];
    if (L > 64) return trace_detail_append(b); /* (the sums' buffer holds 64 layers) */
    NI_CUDA_TRY(cudaMemcpyAsync(h, b->fused_trace, nw * 8, cudaMemcpyDeviceToHost, b->stream),
                "cudaMemcpy (trace)");
    NI_CUDA_TRY(cudaStreamSynchronize(b->stream), "trace");
    unsigned long long prev = h[2 * (5 * L + 1) + 1];
    for (size_t k = 0; k <= 5 * L + 1; k++) {
        size_t kind = k == 0 ? 0 : k == 5 * L + 1 ? 6 : 1 + (k - 1) % 5;
        b->trace_ns[kind] += (double)(h[2 * k] - prev);
        if (k <= 5 * L) {
            b->trace_ns[7] += (double)(h[2 * k + 1] - h[2 * k]);
            prev = h[2 * k + 1];
        }
    }
    b->trace_runs++;
    return trace_detail_append(b);
}

static void trace_print(const ni_backend_ctx *b) {
    static const char *names[8] = {"embedding", "ln_1+qkv", "attention",   "proj",
                                   "ln_2+fc",   "fcproj",   "ln_f+logits", "barriers"};
    if (!b->trace_runs) return;
    double all = 0.0;
    for (int i = 0; i < 8; i++) all += b->trace_ns[i];
    fprintf(stderr, "fused decode step, mean over %zu eager steps (us):", b->trace_runs);
    for (int i = 0; i < 8; i++)
        fprintf(stderr, " %s %.1f", names[i], b->trace_ns[i] / (double)b->trace_runs * 1e-3);
    fprintf(stderr, " | total %.1f\n", all / (double)b->trace_runs * 1e-3);
}

/* Whether the fused decode step takes a chunk of N single-token rows, all wanting logits: only
 * when NI_FUSED=1 asks for it. It used to be the default for up to 2 rows of gpt2-xl (+4 % and
 * +2 % under CUDA graphs), until the per-kernel path let its kernels launch at their start and
 * the GEMV load weights before its wait (pdl.cuh): that path now leads it at every batch size
 * (H200, gpt2-xl batch 1: 650 against 613 tokens/s, batch 2: 1,275 against 1,136). */
static int fused_ok(const ni_backend_ctx *b, size_t N) {
    return b->fused_blocks && b->dt == NI_CUDA_BF16 && N <= NI_CUDA_DECODE_FUSED_MAX_ROWS &&
           b->fused_ring[N] != 0;
}

/* The whole forward pass of N single-token rows (tokens, slots, positions on the device) into
 * b->logits (N, V) as one fused kernel. */
static ni_status enqueue_fused(ni_backend_ctx *b, size_t N, const int32_t *tok, const int32_t *slot,
                               const int32_t *pos) {
    const ni_config *c = b->cfg;
    ni_decode_fused_args a = {
        .N = N,
        .C = c->n_embd,
        .NH = c->n_head,
        .L = c->n_layer,
        .V = c->vocab_size,
        .T = b->max_seq,
        .kv_layer = b->max_batch * b->max_seq * c->n_embd,
        .eps = c->ln_eps,
        .layers = b->d_layers,
        .wte = b->wte,
        .wpe = b->wpe,
        .lnf_w = b->lnf_w,
        .lnf_b = b->lnf_b,
        .tok = tok,
        .slot = slot,
        .pos = pos,
        .k_cache = b->k_cache,
        .v_cache = b->v_cache,
        .x = b->x,
        .qkv = b->qkv,
        .att = b->att,
        .fc = b->fc,
        .logits = b->logits,
        .barrier = b->fused_sync,
        .trace = b->fused_trace,
        .tmaps = b->tmaps,
        .ring = b->fused_ring[N],
    };
    NI_CUDA_TRY(ni_cuda_decode_fused(&a, b->fused_blocks, (ni_stream)b->stream),
                "decode_fused kernel");
    b->went_fused = 1;
    if (b->fused_trace && !b->capturing) NI_TRY(trace_collect(b));
    return NI_OK;
}

/* The layers and logits of a one-chunk forward pass whose rows are packed on the device (the
 * first n_sel rows want logits, into b->logits). */
static ni_status enqueue_chunk(ni_backend_ctx *b, const layer_args *a, size_t n_sel) {
    NI_TRY(enqueue_layers(b, a));
    return enqueue_logits(b, b->d.rows, n_sel, b->logits);
}

/* The slot of a new entry in a graph cache of NI_MAX_GRAPHS entries, *n of them in use: the next
 * free one, else the oldest in turn (the caller destroys the graph it held). */
static size_t graph_cache_slot(size_t *n, size_t *evict) {
    if (*n < NI_MAX_GRAPHS) return (*n)++;
    const size_t slot = *evict;
    *evict = (slot + 1) % NI_MAX_GRAPHS;
    return slot;
}

/* cuda_graphs: a prefill as one graph launch. Launching a prefill's kernels one by one takes the
 * host longer than the GPU takes to run them (gpt2-xl, a 32-token prompt: 2.8 ms of launches,
 * mostly cuBLASLt's host side, the GPU done 0.05 ms after the last), so a shape's first prefill
 * runs eagerly (plans and kernel attributes are made outside a capture), is captured once its
 * first tokens have gone to the caller (prefill_capture_pending, at the first decode step: the
 * capture's host time does not delay them), and later prefills of the shape replay it; the token
 * lists are device data, copied before. */
static ni_status prefill_graphed(ni_backend_ctx *b, const layer_args *a, size_t n_sel) {
    prefill_graph key = {a->N, a->max_pos, a->n_pieces, a->max_len, n_sel, a->single, NULL};
    prefill_graph *e = NULL;
    for (size_t i = 0; i < b->n_pgraphs && !e; i++) {
        prefill_graph *c = &b->pgraphs[i];
        if (c->N == key.N && c->max_pos == key.max_pos && c->n_pieces == key.n_pieces &&
            c->max_len == key.max_len && c->n_sel == key.n_sel && c->single == key.single)
            e = c;
    }
    if (!e) { /* first use: remember the shape, run eagerly */
        const size_t slot = graph_cache_slot(&b->n_pgraphs, &b->pgraph_evict);
        if (b->pgraphs[slot].exec) cudaGraphExecDestroy(b->pgraphs[slot].exec);
        b->pgraphs[slot] = key;
        e = &b->pgraphs[slot];
    }
    if (e->exec) {
        NI_CUDA_TRY(cudaGraphLaunch(e->exec, b->stream), "cudaGraphLaunch (prefill)");
        return NI_OK;
    }
    b->pgraph_pending = e;
    b->pgraph_args = *a;
    return enqueue_chunk(b, a, n_sel);
}

/* A capture of the stream's next launches into a graph: capture_begin, the launches (their
 * status s), then capture_end, which ends the capture whatever s is and, when s and the capture
 * are fine, instantiates the graph into *exec (else *exec stays NULL). */
static ni_status capture_begin(ni_backend_ctx *b) {
    NI_CUDA_TRY(cudaStreamBeginCapture(b->stream, cudaStreamCaptureModeThreadLocal),
                "cudaStreamBeginCapture");
    b->capturing = 1;
    return NI_OK;
}

static ni_status capture_end(ni_backend_ctx *b, ni_status s, cudaGraphExec_t *exec) {
    cudaGraph_t g = NULL;
    b->capturing = 0;
    *exec = NULL;
    cudaError_t e = cudaStreamEndCapture(b->stream, &g);
    if (s != NI_OK) {
        if (g) cudaGraphDestroy(g);
        return s;
    }
    NI_CUDA_TRY(e, "cudaStreamEndCapture");
    e = cudaGraphInstantiate(exec, g, 0);
    cudaGraphDestroy(g);
    if (e != cudaSuccess) *exec = NULL;
    NI_CUDA_TRY(e, "cudaGraphInstantiate");
    return NI_OK;
}

/* Captures the prefill that prefill_graphed ran eagerly, if any. */
static ni_status prefill_capture_pending(ni_backend_ctx *b) {
    prefill_graph *e = b->pgraph_pending;
    b->pgraph_pending = NULL;
    if (!e || e->exec) return NI_OK;
    NI_TRY(capture_begin(b));
    NI_TRY(capture_end(b, enqueue_chunk(b, &b->pgraph_args, e->n_sel), &e->exec));
    /* to the device now, not on the first replay, which a request's first token waits for */
    NI_CUDA_TRY(cudaGraphUpload(e->exec, b->stream), "cudaGraphUpload (prefill)");
    return NI_OK;
}

/* The forward pass over the host token list b->list.tok/slot/pos/want[0, n). Logits of the wanted
 * rows go to b->logits (generation: at most S rows) or block by block to host_out. */
static ni_status forward(ni_backend_ctx *b, size_t n, float *host_out) {
    size_t S = b->max_batch, V = b->cfg->vocab_size;
    chunk_block *h = &b->h, *d = &b->d;
    size_t rows_done = 0;
    for (size_t i0 = 0; i0 < n; i0 += b->chunk) {
        size_t N = n - i0 < b->chunk ? n - i0 : b->chunk;
        /* pack the chunk: its tokens, the rows that want logits and its pieces (maximal runs of
         * one sequence), then one copy to the device */
        size_t n_pieces = 0, max_len = 0, n_sel = 0, max_pos = 0;
        int single = 1;
        for (size_t i = 0; i < N; i++) {
            size_t g = i0 + i;
            h->tok[i] = b->list.tok[g];
            h->slot[i] = b->list.slot[g];
            h->pos[i] = b->list.pos[g];
            if ((size_t)b->list.pos[g] > max_pos) max_pos = (size_t)b->list.pos[g];
            if (i == 0 || b->list.slot[g] != b->list.slot[g - 1] ||
                b->list.pos[g] != b->list.pos[g - 1] + 1) {
                if (n_pieces == S + 1)
                    return ni_fail(NI_ERR_INTERNAL, "token list has more than %zu pieces", S);
                h->seq_start[n_pieces] = (int32_t)i;
                h->seq_len[n_pieces] = 0;
                h->seq_slot[n_pieces] = b->list.slot[g];
                h->seq_pos0[n_pieces] = b->list.pos[g];
                n_pieces++;
            }
            size_t pl = (size_t)++h->seq_len[n_pieces - 1];
            if (pl > max_len) max_len = pl;
            if (pl > 1) single = 0;
            if (b->list.want[g]) h->rows[n_sel++] = (int32_t)i;
        }
        NI_CUDA_TRY(
            cudaMemcpyAsync(b->d_blk, b->h_blk, b->blk_bytes, cudaMemcpyHostToDevice, b->stream),
            "cudaMemcpy (token lists)");
        int rows_in_order = n_sel == N;
        for (size_t r = 0; r < n_sel && rows_in_order; r++)
            rows_in_order = h->rows[r] == (int32_t)r;
        if (single && rows_in_order && !host_out && n == N && fused_ok(b, N)) {
            NI_TRY(enqueue_fused(b, N, d->tok, d->slot, d->pos));
            return NI_OK;
        }
        layer_args a = {N,           d->tok,      d->slot,      d->pos,
                        single,      max_pos,     d->seq_start, d->seq_len,
                        d->seq_slot, d->seq_pos0, n_pieces,     max_len};
        if (b->flags->cuda_graphs && !host_out && n == N && n_sel <= S && !b->capturing)
            return prefill_graphed(b, &a, n_sel);
        NI_TRY(enqueue_layers(b, &a));
        for (size_t r0 = 0; r0 < n_sel; r0 += S) {
            size_t nr = n_sel - r0 < S ? n_sel - r0 : S;
            if (!host_out && rows_done + r0 + nr > S)
                return ni_fail(NI_ERR_INTERNAL, "more than %zu rows want logits", S);
            float *dst = host_out ? b->logits : b->logits + (rows_done + r0) * V;
            NI_TRY(enqueue_logits(b, d->rows + r0, nr, dst));
            if (host_out) {
                NI_CUDA_TRY(cudaMemcpyAsync(host_out + (rows_done + r0) * V, b->logits, nr * V * 4,
                                            cudaMemcpyDeviceToHost, b->stream),
                            "cudaMemcpy (logits)");
                NI_CUDA_TRY(cudaStreamSynchronize(b->stream), "logits");
            }
        }
        rows_done += n_sel;
        /* the next chunk rewrites the pinned block: wait until this copy has left */
        if (i0 + N < n) NI_CUDA_TRY(cudaStreamSynchronize(b->stream), "forward chunk");
    }
    return NI_OK;
}

/* ---- sampling ---------------------------------------------------------------------------------
 */

/* The sequence id and sampling step of logits rows [0, rows) (sequences b->list.row_seq) into
 * the host block, before the forward pass, whose copy of the block takes them along. */
static void set_sample_rows(ni_backend_ctx *b, size_t rows, uint32_t step) {
    for (size_t r = 0; r < rows; r++) {
        b->h.seq_ids[r] = (uint64_t)b->list.row_seq[r];
        b->h.steps[r] = step;
    }
}

/* Samples rows [0, rows) of b->logits (their ids and steps went with the forward pass's block:
 * set_sample_rows); their sequences are b->list.row_seq. */
static ni_status sample(ni_backend_ctx *b, size_t rows, uint32_t step, int32_t *next) {
    const ni_filter *f = &b->filter;
    if (b->flags->rejection_sampler)
        NI_CUDA_TRY(ni_cuda_sample_rejection(b->d_next, b->logits, b->d.seq_ids, b->d.steps,
                                             b->d.params, rows, b->cfg->vocab_size,
                                             (ni_stream)b->stream),
                    "sample_rejection kernel");
    else
        NI_CUDA_TRY(ni_cuda_sample_sorted(b->d_next, b->logits, b->d.seq_ids, rows,
                                          b->cfg->vocab_size, f->temperature, f->top_k, f->top_p,
                                          f->min_p, b->seed, step, b->sample_ws, b->sample_ws_bytes,
                                          (ni_stream)b->stream),
                    "sample_sorted kernel");
    int32_t *h_next = b->h_hist; /* pinned, free outside graph decoding */
    NI_CUDA_TRY(cudaMemcpyAsync(h_next, b->d_next, rows * 4, cudaMemcpyDeviceToHost, b->stream),
                "cudaMemcpy (tokens)");
    NI_CUDA_TRY(cudaStreamSynchronize(b->stream), "sampling");
    for (size_t r = 0; r < rows; r++) {
        if (h_next[r] < 0) return ni_fail_invalid_logits((size_t)b->list.row_seq[r]);
        next[b->list.row_seq[r]] = h_next[r];
    }
    return NI_OK;
}

/* ---- presets' entry points ------------------------------------------------------------------- */

static ni_status cuda_prefill(ni_backend_ctx *b, const ni_gen_request *req, int32_t *next) {
    const ni_batch *p = req->prompts;
    b->n_seq = p->n_seq;
    b->filter = req->filter;
    b->seed = req->seed;
    b->max_new = req->max_new_tokens;
    /* the parameters ride in the pinned block, copied with the token lists (no copy of their own
     * on the way to the first token) */
    *b->h.params = (ni_sample_params){req->filter.temperature,
                                      req->filter.top_k > UINT32_MAX ? UINT32_MAX
                                                                     : (uint32_t)req->filter.top_k,
                                      req->filter.top_p, req->filter.min_p, req->seed};
    size_t n;
    ni_token_list_prefill(&b->list, p, &n);
    set_sample_rows(b, p->n_seq, 0);
    b->pgraph_pending = NULL;
    NI_TRY(forward(b, n, NULL));
    NI_TRY(sample(b, p->n_seq, 0, next));
    /* the graphs' device state is set up at the first decode step, after the first tokens; no
     * step of this request has run yet */
    b->graph_state_pending = b->flags->cuda_graphs;
    b->hist_first = b->hist_count = 0;
    return NI_OK;
}

static ni_status eager_decode(ni_backend_ctx *b, const int32_t *last, const uint8_t *live,
                              uint32_t step, int32_t *next) {
    size_t n, rows;
    NI_TRY(ni_token_list_decode(&b->list, b->n_seq, last, live, b->flags->kv_cache, &n, &rows));
    if (rows == 0) return NI_OK;
    set_sample_rows(b, rows, step);
    b->went_fused = 0;
    NI_TRY(forward(b, n, NULL));
    b->fused_steps += (size_t)b->went_fused;
    return sample(b, rows, step, next);
}

/* ---- cuda_graphs: the decode step on the device ------------------------------------------- */

/* After prefill: every row's input token (the first sampled one, already in d_next), position
 * (its prompt length), slot, sequence id and sampling step (1) go to the device state. */
static ni_status init_graph_state(ni_backend_ctx *b) {
    size_t B = b->n_seq;
    for (size_t r = 0; r < B; r++) {
        b->h.pos[r] = (int32_t)b->list.len[r];
        b->h.slot[r] = (int32_t)r;
        b->h.steps[r] = 1;
        b->h.seq_ids[r] = (uint64_t)r;
    }
    cudaStream_t s = b->stream;
    NI_CUDA_TRY(cudaMemcpyAsync(b->d_blk, b->h_blk, b->blk_bytes, cudaMemcpyHostToDevice, s),
                "cudaMemcpy (decode state)");
    NI_CUDA_TRY(cudaMemcpyAsync(b->st.pos, b->d.pos, B * 4, cudaMemcpyDeviceToDevice, s), "state");
    NI_CUDA_TRY(cudaMemcpyAsync(b->st.slot, b->d.slot, B * 4, cudaMemcpyDeviceToDevice, s),
                "state");
    NI_CUDA_TRY(cudaMemcpyAsync(b->st.steps, b->d.steps, B * 4, cudaMemcpyDeviceToDevice, s),
                "state");
    NI_CUDA_TRY(cudaMemcpyAsync(b->st.seq_ids, b->d.seq_ids, B * 8, cudaMemcpyDeviceToDevice, s),
                "state");
    NI_CUDA_TRY(cudaMemcpyAsync(b->st.tok, b->d_next, B * 4, cudaMemcpyDeviceToDevice, s), "state");
    NI_CUDA_TRY(cudaMemcpyAsync(b->st.hist, b->d_next, B * 4, cudaMemcpyDeviceToDevice, s),
                "state");
    b->hist_first = b->hist_count = 0;
    return NI_OK;
}

/* One decode step for all B rows from the device state: forward, sampling, advance. Every
 * shape is fixed by B and the engine's sizes, so the same launches can be captured. */
/* The decode attention's position bound for a graph step whose rows are at positions up to
 * max_pos: max_pos rounded up to the end of its attention chunk, so that a graph is captured per
 * batch size and chunk reached. Its attention launch covers the chunks up to the bound (blocks
 * past a row's position return at once); covering the whole context instead cost gpt2-xl 7 % of
 * its throughput at batch 256 and 8 % at 512 (H200), in blocks that only return. */
static size_t graph_pos_bound(const ni_backend_ctx *b, size_t max_pos) {
    const size_t c = NI_CUDA_ATTN_DECODE_CHUNK, bound = (max_pos / c + 1) * c - 1;
    return bound < b->max_seq - 1 ? bound : b->max_seq - 1;
}

static ni_status enqueue_graph_step(ni_backend_ctx *b, size_t B, size_t max_pos) {
    if (fused_ok(b, B)) {
        NI_TRY(enqueue_fused(b, B, b->st.tok, b->st.slot, b->st.pos));
    } else {
        layer_args a = {.N = B,
                        .tok = b->st.tok,
                        .slot = b->st.slot,
                        .pos = b->st.pos,
                        .single = 1,
                        .max_pos = max_pos};
        NI_TRY(enqueue_layers(b, &a));
        NI_TRY(enqueue_logits(b, NULL, B, b->logits));
    }
    NI_CUDA_TRY(ni_cuda_sample_rejection(b->d_next, b->logits, b->st.seq_ids, b->st.steps,
                                         b->d.params, B, b->cfg->vocab_size, (ni_stream)b->stream),
                "sample_rejection kernel");
    NI_CUDA_TRY(ni_cuda_decode_advance(b->st.tok, b->st.pos, b->st.steps, b->st.hist, b->d_next, B,
                                       b->max_seq, (ni_stream)b->stream),
                "decode_advance kernel");
    return NI_OK;
}

static ni_status graph_for(ni_backend_ctx *b, size_t B, size_t max_pos, cudaGraphExec_t *out) {
    for (size_t i = 0; i < b->n_graphs; i++)
        if (b->graphs[i].batch == B && b->graphs[i].max_pos == max_pos) {
            *out = b->graphs[i].exec;
            return NI_OK;
        }
    cudaGraphExec_t exec = NULL;
    NI_TRY(capture_begin(b));
    NI_TRY(capture_end(b, enqueue_graph_step(b, B, max_pos), &exec));
    const size_t slot = graph_cache_slot(&b->n_graphs, &b->graph_evict);
    if (b->graphs[slot].exec) cudaGraphExecDestroy(b->graphs[slot].exec);
    b->graphs[slot].batch = B;
    b->graphs[slot].max_pos = max_pos;
    b->graphs[slot].exec = exec;
    *out = exec;
    return NI_OK;
}

/* Runs steps [step, step + k) on the device and copies their tokens back in one transfer. */
static ni_status graph_run_ahead(ni_backend_ctx *b, uint32_t step) {
    if (b->graph_state_pending) {
        NI_TRY(init_graph_state(b));
        b->graph_state_pending = 0;
    }
    NI_TRY(prefill_capture_pending(b)); /* the first tokens are out by now */
    size_t B = b->n_seq;
    size_t k = b->max_new > step ? b->max_new - step : 1;
    if (k > b->graph_steps) k = b->graph_steps;
    size_t len0 = 0; /* step s's input tokens are at positions len + s - 1 */
    for (size_t r = 0; r < B; r++) len0 = b->list.len[r] > len0 ? b->list.len[r] : len0;
    for (size_t j = 0; j < k; j++) {
        const size_t bound = graph_pos_bound(b, len0 + step + j - 1);
        if (b->warm_batch != B) {
            /* the first step of a batch size runs eagerly: cuBLASLt plans and kernel attributes
             * are made outside the capture */
            NI_TRY(enqueue_graph_step(b, B, bound));
            b->warm_batch = B;
            continue;
        }
        cudaGraphExec_t exec = NULL;
        NI_TRY(graph_for(b, B, bound, &exec));
        NI_CUDA_TRY(cudaGraphLaunch(exec, b->stream), "cudaGraphLaunch");
    }
    NI_CUDA_TRY(cudaMemcpyAsync(b->h_hist, b->st.hist + (size_t)step * B, k * B * 4,
                                cudaMemcpyDeviceToHost, b->stream),
                "cudaMemcpy (tokens)");
    NI_CUDA_TRY(cudaStreamSynchronize(b->stream), "decode steps");
    b->hist_first = step;
    b->hist_count = k;
    return NI_OK;
}

static ni_status cuda_decode(ni_backend_ctx *b, const int32_t *last, const uint8_t *live,
                             uint32_t step, int32_t *next) {
    if (!b->flags->cuda_graphs) return eager_decode(b, last, live, step, next);
    (void)last; /* the device state holds every row's input token */
    size_t B = b->n_seq;
    for (size_t r = 0; r < B; r++)
        if (b->list.len[r] + step > b->max_seq)
            return ni_fail(NI_ERR_CONTEXT, "sequence %zu reached the engine's %zu tokens", r,
                           b->max_seq);
    if (step < b->hist_first || step >= b->hist_first + b->hist_count)
        NI_TRY(graph_run_ahead(b, step));
    b->fused_steps += (size_t)fused_ok(b, B); /* the graph's step is the fused kernel or not */
    const int32_t *tokens = b->h_hist + (size_t)(step - b->hist_first) * B;
    for (size_t r = 0; r < B; r++) {
        if (tokens[r] < 0 && live[r]) return ni_fail_invalid_logits(r);
        next[r] = tokens[r];
    }
    return NI_OK;
}

static ni_status cuda_logits(ni_backend_ctx *b, const int32_t *tokens, size_t len, float *out) {
    NI_TRY(ni_token_list_all_logits(&b->list, tokens, len));
    return forward(b, len, out);
}

static void cuda_memory(const ni_backend_ctx *b, size_t *peak, size_t *weights) {
    *weights = b->weight_bytes;
    *peak = b->arena_bytes + b->staging_bytes;
}

static size_t cuda_fused_steps(const ni_backend_ctx *b) {
    return b->fused_steps;
}

const ni_backend_ops ni_cuda_backend = {
    .create = cuda_create,
    .destroy = cuda_destroy,
    .prefill = cuda_prefill,
    .decode = cuda_decode,
    .logits = cuda_logits,
    .memory = cuda_memory,
    .fused_steps = cuda_fused_steps,
};
