/* The CUDA backend: the GPT-2 forward pass on the GPU over the same token lists as the CPU
 * backend (each token names its sequence's cache slot and its position), with bf16 weights,
 * activations and KV cache, an f32 residual stream and f32 logits. One device allocation (the
 * arena) holds weights, cache, activations and workspaces, sized at creation from (config, max
 * batch, max sequence) and checked against the free memory first; nothing is allocated while
 * generating. Tokens go to the host only once sampled. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "cuda/kernels.h"
#include "cuda/matmul.h"
#include "engine/backend.h"
#include "model/model.h"

typedef struct {
    ni_bf16 *ln1_w, *ln1_b, *qkv_w, *qkv_b, *proj_w, *proj_b;
    ni_bf16 *ln2_w, *ln2_b, *fc_w, *fc_b, *fcproj_w, *fcproj_b;
} cuda_layer;

/* The host side of one forward call, copied to the device in one transfer. */
typedef struct {
    int32_t *tok, *slot, *pos;                       /* (S*T) token list */
    int32_t *seq_start, *seq_len, *seq_slot, *seq_pos0; /* (S + 1) pieces of one chunk */
    int32_t *rows;                                   /* (S*T) chunk rows that need logits */
    uint64_t *seq_ids;                               /* (S) sequence of each logits row */
} token_lists;

struct ni_backend_ctx {
    ni_model *model;
    const ni_config *cfg;
    const ni_preset_flags *flags;
    size_t max_batch, max_seq, chunk;
    cudaStream_t stream;
    ni_matmul_ctx mm;

    uint8_t *arena; /* device */
    size_t arena_bytes, staging_bytes;
    ni_bf16 *wte, *wpe, *lnf_w, *lnf_b;
    cuda_layer *layers; /* host array of device pointers */
    size_t weight_bytes;
    ni_bf16 *k_cache, *v_cache; /* (L, S, NH, T, HS) */
    float *x;                   /* (chunk, C) residual stream */
    ni_bf16 *ln, *qkv, *att, *delta, *fc; /* (chunk, C | 3C | C | C | 4C) */
    ni_bf16 *sel;                         /* (S, C) final-LN rows that need logits */
    float *logits;                        /* (S, V) */
    float *attn_partial;
    int32_t *d_next; /* (S) sampled tokens */
    void *sample_ws;
    size_t sample_ws_bytes;
    void *lt_ws;
    size_t lt_ws_bytes;
    uint8_t *d_lists; /* device copy of the token lists */
    size_t lists_bytes;

    uint8_t *h_lists; /* pinned host */
    token_lists h, d;
    int32_t *h_next; /* pinned (S) */
    int32_t *history; /* host (S, T) */
    size_t *len;      /* host (S) */
    int32_t *row_seq; /* host (S) */
    uint8_t *want;    /* host (S*T): token i needs logits */

    size_t n_seq;
    ni_filter filter;
    uint64_t seed;
};

static void *carve(uint8_t *base, size_t *off, size_t bytes) {
    size_t at = (*off + 255) & ~(size_t)255;
    *off = at + bytes;
    return base ? base + at : NULL;
}

/* Token-list arrays inside one buffer (host pinned or device), same offsets in both. */
static size_t lists_layout(token_lists *l, uint8_t *base, size_t S, size_t n_tok) {
    size_t off = 0;
    l->tok = carve(base, &off, n_tok * 4);
    l->slot = carve(base, &off, n_tok * 4);
    l->pos = carve(base, &off, n_tok * 4);
    l->rows = carve(base, &off, n_tok * 4);
    l->seq_start = carve(base, &off, (S + 1) * 4);
    l->seq_len = carve(base, &off, (S + 1) * 4);
    l->seq_slot = carve(base, &off, (S + 1) * 4);
    l->seq_pos0 = carve(base, &off, (S + 1) * 4);
    l->seq_ids = carve(base, &off, S * 8);
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
    b->attn_partial =
        carve(base, &off, ni_cuda_attention_decode_partial_floats(S, NH, HS, T) * 4);
    b->d_next = carve(base, &off, S * 4);
    b->sample_ws = carve(base, &off, b->sample_ws_bytes);
    b->lt_ws = carve(base, &off, b->lt_ws_bytes);
    b->d_lists = carve(base, &off, b->lists_bytes);
    return off;
}

static ni_status upload_weight(ni_backend_ctx *b, ni_weight_kind k, size_t layer, ni_bf16 *dst,
                               float *h_stage, float *d_stage) {
    ni_weight_info wi;
    ni_weight_info_get(b->cfg, k, &wi);
    size_t n = wi.rows * wi.cols;
    const ni_model *m = b->model;
    if (!m->st) {
        /* named random configs: generated on the device, never on the host */
        float std = 0.0f, value = 0.0f;
        if (wi.init == NI_INIT_NORMAL) std = 0.02f;
        if (wi.init == NI_INIT_RESIDUAL) std = 0.02f / sqrtf(2.0f * (float)b->cfg->n_layer);
        if (wi.init == NI_INIT_ONE) value = 1.0f;
        NI_CUDA_TRY(ni_cuda_init_random(dst, n, m->seed, ni_weight_tensor_id(k, layer), std, value,
                                        (ni_stream)b->stream),
                    "init_random kernel");
        return NI_OK;
    }
    NI_TRY(ni_model_read_weight(m, k, layer, h_stage));
    NI_CUDA_TRY(cudaMemcpyAsync(d_stage, h_stage, n * 4, cudaMemcpyHostToDevice, b->stream),
                "cudaMemcpy (weights)");
    NI_CUDA_TRY(ni_cuda_f32_to_bf16(dst, d_stage, n, (ni_stream)b->stream), "f32_to_bf16 kernel");
    /* the host staging buffer is reused by the next tensor */
    NI_CUDA_TRY(cudaStreamSynchronize(b->stream), "upload");
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
        for (size_t l = 0; l < nl && s == NI_OK; l++) {
            cuda_layer *y = &b->layers[l];
            ni_bf16 *dst = NULL;
            switch ((ni_weight_kind)k) {
            case NI_W_WTE: dst = b->wte; break;
            case NI_W_WPE: dst = b->wpe; break;
            case NI_W_LNF_W: dst = b->lnf_w; break;
            case NI_W_LNF_B: dst = b->lnf_b; break;
            case NI_W_LN1_W: dst = y->ln1_w; break;
            case NI_W_LN1_B: dst = y->ln1_b; break;
            case NI_W_QKV_W: dst = y->qkv_w; break;
            case NI_W_QKV_B: dst = y->qkv_b; break;
            case NI_W_PROJ_W: dst = y->proj_w; break;
            case NI_W_PROJ_B: dst = y->proj_b; break;
            case NI_W_LN2_W: dst = y->ln2_w; break;
            case NI_W_LN2_B: dst = y->ln2_b; break;
            case NI_W_FC_W: dst = y->fc_w; break;
            case NI_W_FC_B: dst = y->fc_b; break;
            case NI_W_FCPROJ_W: dst = y->fcproj_w; break;
            case NI_W_FCPROJ_B: dst = y->fcproj_b; break;
            default: break;
            }
            s = upload_weight(b, (ni_weight_kind)k, l, dst, h_stage, d_stage);
        }
    }
    if (s == NI_OK) s = ni_cuda_status(cudaStreamSynchronize(b->stream), "weight upload");
    cudaFree(d_stage);
    free(h_stage);
    return s;
}

static void cuda_destroy(ni_backend_ctx *b) {
    if (!b) return;
    ni_matmul_destroy(&b->mm);
    if (b->arena) cudaFree(b->arena);
    if (b->h_lists) cudaFreeHost(b->h_lists);
    if (b->h_next) cudaFreeHost(b->h_next);
    if (b->stream) cudaStreamDestroy(b->stream);
    free(b->layers);
    free(b->history);
    free(b->len);
    free(b->row_seq);
    free(b->want);
    free(b);
}

static ni_status cuda_create(ni_model *m, const ni_engine_opts *o, ni_backend_ctx **out) {
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0)
        return ni_fail(NI_ERR_UNSUPPORTED, "the cuda backend needs a CUDA GPU; none was found");
    if (o->dtype == NI_DTYPE_F16)
        return ni_fail(NI_ERR_UNSUPPORTED, "the cuda backend runs bf16 weights only (for now)");
    const ni_preset_flags *pf = ni_preset_get(o->preset);
    if (pf->rejection_sampler || pf->cuda_graphs)
        return ni_fail(NI_ERR_UNSUPPORTED,
                       "the '%s' engine is not on the cuda backend yet (baseline and kv_cache "
                       "are)",
                       pf->name);
    ni_backend_ctx *b = calloc(1, sizeof *b);
    if (!b) return ni_fail(NI_ERR_NO_MEMORY, "out of memory");
    b->model = m;
    b->cfg = ni_model_config(m);
    b->flags = pf;
    b->max_batch = o->max_batch;
    b->max_seq = o->max_seq;
    size_t S = b->max_batch, T = b->max_seq, V = b->cfg->vocab_size;
    /* a chunk holds a whole decode step; 4096 tokens bound prefill activations */
    b->chunk = S * T < 4096 ? S * T : 4096;
    if (b->chunk < S) b->chunk = S;
    b->layers = calloc(b->cfg->n_layer, sizeof *b->layers);
    b->history = malloc(S * T * sizeof *b->history);
    b->len = calloc(S, sizeof *b->len);
    b->row_seq = calloc(S, sizeof *b->row_seq);
    b->want = malloc(S * T);
    ni_status s = NI_OK;
    if (!b->layers || !b->history || !b->len || !b->row_seq || !b->want)
        s = ni_fail(NI_ERR_NO_MEMORY, "out of memory");
    if (s == NI_OK) s = ni_cuda_status(cudaStreamCreateWithFlags(&b->stream, cudaStreamNonBlocking),
                                       "cudaStreamCreate");
    token_lists probe;
    b->lists_bytes = lists_layout(&probe, NULL, S, S * T);
    b->sample_ws_bytes = ni_cuda_sample_sorted_workspace(S, V);
    b->lt_ws_bytes = (size_t)32 << 20;
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
        lists_layout(&b->d, b->d_lists, S, S * T);
        if (cudaMallocHost((void **)&b->h_lists, b->lists_bytes) != cudaSuccess ||
            cudaMallocHost((void **)&b->h_next, S * 4) != cudaSuccess)
            s = ni_fail(NI_ERR_NO_MEMORY, "pinned host memory");
    }
    if (s == NI_OK) {
        lists_layout(&b->h, b->h_lists, S, S * T);
        s = ni_matmul_init(&b->mm, b->lt_ws, b->lt_ws_bytes);
    }
    if (s == NI_OK) s = upload_weights(b);
    if (s != NI_OK) {
        cuda_destroy(b);
        return s;
    }
    *out = b;
    return NI_OK;
}

/* The forward pass over a token list already in b->h (n tokens). Rows with logits requested
 * (n_rows, listed in b->h.rows as token indices) get their logits: into b->logits when they fit
 * (generation), or block by block into host_out (ni_logits). */
static ni_status forward(ni_backend_ctx *b, size_t n, const uint8_t *want, float *host_out) {
    const ni_config *c = b->cfg;
    size_t C = c->n_embd, NH = c->n_head, HS = C / NH, T = b->max_seq, V = c->vocab_size;
    size_t S = b->max_batch, kv_layer = S * T * C;
    ni_stream st = (ni_stream)b->stream;
    float eps = c->ln_eps;
    token_lists *h = &b->h, *d = &b->d;
    size_t rows_done = 0;
    for (size_t i0 = 0; i0 < n; i0 += b->chunk) {
        size_t N = n - i0 < b->chunk ? n - i0 : b->chunk;
        /* pieces: maximal runs of one sequence inside the chunk */
        size_t n_pieces = 0, max_len = 0, n_sel = 0;
        int all_single = 1;
        for (size_t i = 0; i < N; i++) {
            size_t g = i0 + i;
            if (i == 0 || h->slot[g] != h->slot[g - 1] || h->pos[g] != h->pos[g - 1] + 1) {
                if (n_pieces == S + 1)
                    return ni_fail(NI_ERR_INTERNAL, "token list has more than %zu pieces", S);
                h->seq_start[n_pieces] = (int32_t)i;
                h->seq_len[n_pieces] = 0;
                h->seq_slot[n_pieces] = h->slot[g];
                h->seq_pos0[n_pieces] = h->pos[g];
                n_pieces++;
            }
            size_t pl = (size_t)++h->seq_len[n_pieces - 1];
            if (pl > max_len) max_len = pl;
            if (pl > 1) all_single = 0;
            if (want[g]) h->rows[n_sel++] = (int32_t)i;
        }
        /* copy this chunk's lists: the tokens, slots, positions at offset i0 */
        NI_CUDA_TRY(cudaMemcpyAsync(d->tok, h->tok + i0, N * 4, cudaMemcpyHostToDevice, b->stream),
                    "cudaMemcpy (tokens)");
        NI_CUDA_TRY(cudaMemcpyAsync(d->slot, h->slot + i0, N * 4, cudaMemcpyHostToDevice,
                                    b->stream),
                    "cudaMemcpy (slots)");
        NI_CUDA_TRY(cudaMemcpyAsync(d->pos, h->pos + i0, N * 4, cudaMemcpyHostToDevice, b->stream),
                    "cudaMemcpy (positions)");
        NI_CUDA_TRY(cudaMemcpyAsync(d->rows, h->rows, (n_sel ? n_sel : 1) * 4,
                                    cudaMemcpyHostToDevice, b->stream),
                    "cudaMemcpy (rows)");
        if (!all_single) {
            size_t pb = n_pieces * 4;
            NI_CUDA_TRY(cudaMemcpyAsync(d->seq_start, h->seq_start, pb, cudaMemcpyHostToDevice,
                                        b->stream),
                        "cudaMemcpy (pieces)");
            NI_CUDA_TRY(cudaMemcpyAsync(d->seq_len, h->seq_len, pb, cudaMemcpyHostToDevice,
                                        b->stream),
                        "cudaMemcpy (pieces)");
            NI_CUDA_TRY(cudaMemcpyAsync(d->seq_slot, h->seq_slot, pb, cudaMemcpyHostToDevice,
                                        b->stream),
                        "cudaMemcpy (pieces)");
            NI_CUDA_TRY(cudaMemcpyAsync(d->seq_pos0, h->seq_pos0, pb, cudaMemcpyHostToDevice,
                                        b->stream),
                        "cudaMemcpy (pieces)");
        }
        size_t max_pos = 0;
        for (size_t i = 0; i < N; i++)
            if ((size_t)h->pos[i0 + i] > max_pos) max_pos = (size_t)h->pos[i0 + i];

        NI_CUDA_TRY(ni_cuda_embedding(b->x, d->tok, d->pos, b->wte, b->wpe, N, C, st),
                    "embedding kernel");
        for (size_t l = 0; l < c->n_layer; l++) {
            const cuda_layer *y = &b->layers[l];
            ni_bf16 *kc = b->k_cache + l * kv_layer, *vc = b->v_cache + l * kv_layer;
            NI_CUDA_TRY(ni_cuda_residual_layernorm(b->ln, b->x, l ? b->delta : NULL, y->ln1_w,
                                                   y->ln1_b, NULL, N, C, eps, st),
                        "layernorm kernel (ln_1)");
            NI_TRY(ni_matmul(&b->mm, b->qkv, NULL, b->ln, y->qkv_w, y->qkv_b, N, C, 3 * C, 0,
                             b->stream));
            NI_CUDA_TRY(ni_cuda_kv_append(kc, vc, b->qkv, d->slot, d->pos, N, NH, HS, T, st),
                        "kv_append kernel");
            if (all_single)
                NI_CUDA_TRY(ni_cuda_attention_decode(b->att, b->attn_partial, b->qkv, kc, vc,
                                                     d->slot, d->pos, N, max_pos, NH, HS, T, st),
                            "attention_decode kernel");
            else
                NI_CUDA_TRY(ni_cuda_attention_prefill(b->att, b->qkv, kc, vc, d->seq_start,
                                                      d->seq_len, d->seq_slot, d->seq_pos0,
                                                      n_pieces, max_len, NH, HS, T, st),
                            "attention_prefill kernel");
            NI_TRY(ni_matmul(&b->mm, b->delta, NULL, b->att, y->proj_w, y->proj_b, N, C, C, 0,
                             b->stream));
            NI_CUDA_TRY(ni_cuda_residual_layernorm(b->ln, b->x, b->delta, y->ln2_w, y->ln2_b,
                                                   NULL, N, C, eps, st),
                        "layernorm kernel (ln_2)");
            NI_TRY(ni_matmul(&b->mm, b->fc, NULL, b->ln, y->fc_w, y->fc_b, N, C, 4 * C, 1,
                             b->stream));
            NI_TRY(ni_matmul(&b->mm, b->delta, NULL, b->fc, y->fcproj_w, y->fcproj_b, N, 4 * C,
                             C, 0, b->stream));
        }
        /* only rows that need logits: last residual add and ln_f, gathered */
        for (size_t r0 = 0; r0 < n_sel; r0 += S) {
            size_t nr = n_sel - r0 < S ? n_sel - r0 : S;
            NI_CUDA_TRY(ni_cuda_residual_layernorm(b->sel, b->x, b->delta, b->lnf_w, b->lnf_b,
                                                   d->rows + r0, nr, C, eps, st),
                        "layernorm kernel (ln_f)");
            /* generation keeps its (at most S) rows on the device for sampling */
            float *dst = host_out ? b->logits : b->logits + (rows_done + r0) * V;
            if (!host_out && rows_done + r0 + nr > S)
                return ni_fail(NI_ERR_INTERNAL, "more than %zu rows want logits", S);
            NI_TRY(ni_matmul(&b->mm, NULL, dst, b->sel, b->wte, NULL, nr, C, V, 0, b->stream));
            if (host_out) {
                NI_CUDA_TRY(cudaMemcpyAsync(host_out + (rows_done + r0) * V, b->logits,
                                            nr * V * 4, cudaMemcpyDeviceToHost, b->stream),
                            "cudaMemcpy (logits)");
                NI_CUDA_TRY(cudaStreamSynchronize(b->stream), "logits");
            }
        }
        rows_done += n_sel;
    }
    return NI_OK;
}

static ni_status sample(ni_backend_ctx *b, size_t rows, uint32_t step, int32_t *next) {
    for (size_t r = 0; r < rows; r++) b->h.seq_ids[r] = (uint64_t)b->row_seq[r];
    NI_CUDA_TRY(cudaMemcpyAsync(b->d.seq_ids, b->h.seq_ids, rows * 8, cudaMemcpyHostToDevice,
                                b->stream),
                "cudaMemcpy (sequence ids)");
    const ni_filter *f = &b->filter;
    NI_CUDA_TRY(ni_cuda_sample_sorted(b->d_next, b->logits, b->d.seq_ids, rows,
                                      b->cfg->vocab_size, f->temperature, f->top_k, f->top_p,
                                      f->min_p, b->seed, step, b->sample_ws, b->sample_ws_bytes,
                                      (ni_stream)b->stream),
                "sample_sorted kernel");
    NI_CUDA_TRY(cudaMemcpyAsync(b->h_next, b->d_next, rows * 4, cudaMemcpyDeviceToHost, b->stream),
                "cudaMemcpy (tokens)");
    NI_CUDA_TRY(cudaStreamSynchronize(b->stream), "decode step");
    for (size_t r = 0; r < rows; r++) {
        if (b->h_next[r] < 0)
            return ni_fail(NI_ERR_INTERNAL,
                           "sequence %d: the logits hold NaN or no finite value; nothing to "
                           "sample",
                           (int)b->row_seq[r]);
        next[b->row_seq[r]] = b->h_next[r];
    }
    return NI_OK;
}

static ni_status cuda_prefill(ni_backend_ctx *b, const ni_gen_request *req, int32_t *next) {
    const ni_batch *p = req->prompts;
    if (p->n_seq > b->max_batch)
        return ni_fail(NI_ERR_INVALID_ARG, "batch of %zu exceeds the engine's max batch %zu",
                       p->n_seq, b->max_batch);
    b->n_seq = p->n_seq;
    b->filter = req->filter;
    b->seed = req->seed;
    size_t n = 0;
    for (size_t s = 0; s < p->n_seq; s++) {
        b->len[s] = p->lens[s];
        b->row_seq[s] = (int32_t)s;
        memcpy(b->history + s * b->max_seq, p->tokens[s], p->lens[s] * 4);
        for (size_t t = 0; t < p->lens[s]; t++, n++) {
            b->h.tok[n] = p->tokens[s][t];
            b->h.slot[n] = (int32_t)s;
            b->h.pos[n] = (int32_t)t;
            b->want[n] = t + 1 == p->lens[s];
        }
    }
    NI_TRY(forward(b, n, b->want, NULL));
    return sample(b, p->n_seq, 0, next);
}

static ni_status cuda_decode(ni_backend_ctx *b, const int32_t *last, const uint8_t *live,
                             uint32_t step, int32_t *next) {
    size_t n = 0, rows = 0;
    for (size_t s = 0; s < b->n_seq; s++) {
        if (!live[s]) continue;
        if (b->len[s] >= b->max_seq)
            return ni_fail(NI_ERR_CONTEXT, "sequence %zu reached the engine's %zu tokens", s,
                           b->max_seq);
        b->history[s * b->max_seq + b->len[s]] = last[s];
        b->len[s]++;
        size_t from = b->flags->kv_cache ? b->len[s] - 1 : 0;
        for (size_t t = from; t < b->len[s]; t++, n++) {
            b->h.tok[n] = b->history[s * b->max_seq + t];
            b->h.slot[n] = (int32_t)s;
            b->h.pos[n] = (int32_t)t;
            b->want[n] = t + 1 == b->len[s];
        }
        b->row_seq[rows++] = (int32_t)s;
    }
    if (rows == 0) return NI_OK;
    NI_TRY(forward(b, n, b->want, NULL));
    return sample(b, rows, step, next);
}

static ni_status cuda_logits(ni_backend_ctx *b, const int32_t *tokens, size_t len, float *out) {
    if (len > b->max_seq)
        return ni_fail(NI_ERR_CONTEXT, "%zu tokens exceed the engine's %zu", len, b->max_seq);
    for (size_t t = 0; t < len; t++) {
        b->h.tok[t] = tokens[t];
        b->h.slot[t] = 0;
        b->h.pos[t] = (int32_t)t;
    }
    memset(b->want, 1, len);
    return forward(b, len, b->want, out);
}

static void cuda_memory(const ni_backend_ctx *b, size_t *peak, size_t *weights) {
    *weights = b->weight_bytes;
    *peak = b->arena_bytes + b->staging_bytes;
}

const ni_backend_ops ni_cuda_backend = {
    .create = cuda_create,
    .destroy = cuda_destroy,
    .prefill = cuda_prefill,
    .decode = cuda_decode,
    .logits = cuda_logits,
    .memory = cuda_memory,
};
