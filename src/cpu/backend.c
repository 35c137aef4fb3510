/* The CPU backend: the GPT-2 forward pass in f32 over a list of tokens, each naming its
 * sequence (KV-cache slot) and position. Prefill of ragged prompts, a decode step and the
 * baseline's recompute are all such lists, so there is one forward pass. Long lists run in
 * chunks: a chunk's keys and values reach the cache before the next chunk attends to them.
 * All memory comes from one arena sized at creation; nothing is allocated per step. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "cpu/ops.h"
#include "engine/backend.h"
#include "engine/token_list.h"
#include "model/model.h"

struct ni_backend_ctx {
    ni_model *model;
    const ni_config *cfg;
    const ni_weights_f32 *w;
    const ni_preset_flags *flags;
    int n_threads;     /* passed to OpenMP regions */
    int n_threads_max; /* size of per-thread scratch */
    size_t max_batch, max_seq, chunk;

    void *arena;
    size_t arena_bytes;
    float *k_cache, *v_cache;               /* (L, S, NH, T, HS) */
    float *x, *ln, *qkv, *att, *delta, *fc; /* activations of one chunk */
    float *sel;                             /* (chunk, C) rows that need logits */
    float *attn_scratch;                    /* (threads, T) */
    float *logits;                          /* (S, V) */
    ni_token_list list;                     /* the token list of one forward call */
    uint8_t *sampler_scratch;               /* (threads, scratch bytes) */
    size_t sampler_scratch_bytes;

    size_t n_seq;
    ni_filter filter;
    uint64_t seed;
};

/* Carves aligned pieces out of the arena (first pass with base NULL only counts). */
static void *carve(uint8_t *base, size_t *off, size_t bytes) {
    size_t at = (*off + 63) & ~(size_t)63;
    *off = at + bytes;
    return base ? base + at : NULL;
}

static size_t layout(ni_backend_ctx *b, uint8_t *base) {
    const ni_config *c = b->cfg;
    size_t C = c->n_embd, S = b->max_batch, T = b->max_seq, N = b->chunk, V = c->vocab_size;
    size_t kv = c->n_layer * S * T * C;
    size_t off = 0;
    b->k_cache = carve(base, &off, kv * sizeof(float));
    b->v_cache = carve(base, &off, kv * sizeof(float));
    b->x = carve(base, &off, N * C * sizeof(float));
    b->ln = carve(base, &off, N * C * sizeof(float));
    b->qkv = carve(base, &off, N * 3 * C * sizeof(float));
    b->att = carve(base, &off, N * C * sizeof(float));
    b->delta = carve(base, &off, N * C * sizeof(float));
    b->fc = carve(base, &off, N * 4 * C * sizeof(float));
    b->sel = carve(base, &off, N * C * sizeof(float));
    b->attn_scratch = carve(base, &off, (size_t)b->n_threads_max * T * sizeof(float));
    b->logits = carve(base, &off, S * V * sizeof(float));
    b->list.tok = carve(base, &off, S * T * sizeof(int32_t));
    b->list.slot = carve(base, &off, S * T * sizeof(int32_t));
    b->list.pos = carve(base, &off, S * T * sizeof(int32_t));
    b->list.want = carve(base, &off, S * T);
    b->list.history = carve(base, &off, S * T * sizeof(int32_t));
    b->list.len = carve(base, &off, S * sizeof(size_t));
    b->list.row_seq = carve(base, &off, S * sizeof(int32_t));
    b->list.max_seq = T;
    b->sampler_scratch = carve(base, &off, (size_t)b->n_threads_max * b->sampler_scratch_bytes);
    return off;
}

static ni_status cpu_create(ni_model *m, const ni_engine_opts *o, ni_backend_ctx **out) {
    ni_backend_ctx *b = calloc(1, sizeof *b);
    if (!b) return ni_fail(NI_ERR_NO_MEMORY, "out of memory");
    b->model = m;
    b->cfg = ni_model_config(m);
    b->flags = ni_preset_get(o->preset);
    b->n_threads = o->n_threads > 0 ? o->n_threads : omp_get_max_threads();
    b->n_threads_max = b->n_threads;
    b->max_batch = o->max_batch;
    b->max_seq = o->max_seq;
    /* A chunk holds a whole decode step; 256 tokens keep prefill activations small. */
    b->chunk = b->max_batch > 256 ? b->max_batch : 256;
    if (b->chunk > b->max_batch * b->max_seq) b->chunk = b->max_batch * b->max_seq;
    b->sampler_scratch_bytes = (ni_sampler_scratch_bytes(b->cfg->vocab_size) + 63) & ~(size_t)63;
    b->arena_bytes = layout(b, NULL);
    b->arena = aligned_alloc(64, (b->arena_bytes + 63) & ~(size_t)63);
    if (!b->arena) {
        ni_status s = ni_fail(NI_ERR_NO_MEMORY,
                              "the CPU engine needs %zu bytes of host memory for batch %zu x %zu "
                              "tokens (KV cache and activations); use a smaller batch or context",
                              b->arena_bytes, b->max_batch, b->max_seq);
        free(b);
        return s;
    }
    layout(b, b->arena);
    ni_status s = ni_model_host_weights(m, &b->w);
    if (s != NI_OK) {
        free(b->arena);
        free(b);
        return s;
    }
    *out = b;
    return NI_OK;
}

static void cpu_destroy(ni_backend_ctx *b) {
    if (!b) return;
    free(b->arena);
    free(b);
}

/* The forward pass over tokens [0, n): token i is tok[i] of sequence slot[i] at position pos[i].
 * Rows with want[i] get logits, written in order to logits (count, V). */
static void forward(ni_backend_ctx *b, const int32_t *tok, const int32_t *slot, const int32_t *pos,
                    const uint8_t *want, size_t n, float *logits) {
    const ni_config *c = b->cfg;
    const ni_weights_f32 *w = b->w;
    size_t C = c->n_embd, NH = c->n_head, HS = C / NH, T = b->max_seq, V = c->vocab_size;
    size_t kv_layer = b->max_batch * T * C;
    int nt = b->n_threads;
    float eps = c->ln_eps;
    size_t rows_out = 0;
    for (size_t i0 = 0; i0 < n; i0 += b->chunk) {
        size_t N = n - i0 < b->chunk ? n - i0 : b->chunk;
        const int32_t *ctok = tok + i0, *cslot = slot + i0, *cpos = pos + i0;
        cpu_embedding(b->x, ctok, cpos, w->wte, w->wpe, N, C, nt);
        for (size_t l = 0; l < c->n_layer; l++) {
            const ni_layer_f32 *L = &w->layers[l];
            float *kc = b->k_cache + l * kv_layer, *vc = b->v_cache + l * kv_layer;
            if (l == 0)
                cpu_layernorm(b->ln, b->x, L->ln1_w, L->ln1_b, N, C, eps, nt);
            else
                cpu_residual_layernorm(b->ln, b->x, b->delta, L->ln1_w, L->ln1_b, N, C, eps, nt);
            cpu_matmul(b->qkv, b->ln, L->qkv_w, L->qkv_b, N, C, 3 * C, nt);
            cpu_kv_append(kc, vc, b->qkv, cslot, cpos, N, NH, HS, T, nt);
            cpu_attention(b->att, b->qkv, kc, vc, cslot, cpos, N, NH, HS, T, b->attn_scratch, nt);
            cpu_matmul(b->delta, b->att, L->proj_w, L->proj_b, N, C, C, nt);
            cpu_residual_layernorm(b->ln, b->x, b->delta, L->ln2_w, L->ln2_b, N, C, eps, nt);
            cpu_matmul(b->fc, b->ln, L->fc_w, L->fc_b, N, C, 4 * C, nt);
            cpu_gelu(b->fc, b->fc, N * 4 * C, nt);
            cpu_matmul(b->delta, b->fc, L->fcproj_w, L->fcproj_b, N, 4 * C, C, nt);
        }
        cpu_residual_add(b->x, b->delta, N, C, nt);
        size_t n_sel = 0;
        for (size_t i = 0; i < N; i++)
            if (want[i0 + i]) memcpy(b->sel + n_sel++ * C, b->x + i * C, C * sizeof(float));
        if (n_sel == 0) continue;
        cpu_layernorm(b->sel, b->sel, w->lnf_w, w->lnf_b, n_sel, C, eps, nt);
        cpu_matmul(logits + rows_out * V, b->sel, w->wte, NULL, n_sel, C, V, nt);
        rows_out += n_sel;
    }
}

/* Samples one token for each of the n rows of b->logits (row r belongs to row_seq[r]). */
static void sample_rows(ni_backend_ctx *b, size_t n, uint32_t step, int32_t *next) {
    size_t V = b->cfg->vocab_size;
    int rejection = b->flags->rejection_sampler;
#pragma omp parallel for num_threads(b->n_threads) schedule(dynamic, 1) if (n > 1)
    for (size_t r = 0; r < n; r++) {
        void *scratch =
            b->sampler_scratch + (size_t)omp_get_thread_num() * b->sampler_scratch_bytes;
        int32_t seq = b->list.row_seq[r];
        ni_rng_key key = {b->seed, (uint64_t)seq, step};
        const float *row = b->logits + r * V;
        next[seq] = rejection ? ni_sample_rejection(row, V, &b->filter, key, scratch)
                              : ni_sample_sorted(row, V, &b->filter, key, scratch);
    }
}

static ni_status check_sampled(const ni_backend_ctx *b, size_t rows, const int32_t *next) {
    for (size_t r = 0; r < rows; r++)
        if (next[b->list.row_seq[r]] == NI_SAMPLE_INVALID)
            return ni_fail_invalid_logits((size_t)b->list.row_seq[r]);
    return NI_OK;
}

static ni_status cpu_prefill(ni_backend_ctx *b, const ni_gen_request *req, int32_t *next) {
    const ni_batch *p = req->prompts;
    b->n_seq = p->n_seq;
    b->filter = req->filter;
    b->seed = req->seed;
    size_t n;
    ni_token_list_prefill(&b->list, p, &n);
    forward(b, b->list.tok, b->list.slot, b->list.pos, b->list.want, n, b->logits);
    sample_rows(b, p->n_seq, 0, next);
    return check_sampled(b, p->n_seq, next);
}

static ni_status cpu_decode(ni_backend_ctx *b, const int32_t *last, const uint8_t *live,
                            uint32_t step, int32_t *next) {
    size_t n, rows;
    NI_TRY(ni_token_list_decode(&b->list, b->n_seq, last, live, b->flags->kv_cache, &n, &rows));
    if (rows == 0) return NI_OK;
    forward(b, b->list.tok, b->list.slot, b->list.pos, b->list.want, n, b->logits);
    sample_rows(b, rows, step, next);
    return check_sampled(b, rows, next);
}

static ni_status cpu_logits(ni_backend_ctx *b, const int32_t *tokens, size_t len, float *out) {
    NI_TRY(ni_token_list_all_logits(&b->list, tokens, len));
    forward(b, b->list.tok, b->list.slot, b->list.pos, b->list.want, len, out);
    return NI_OK;
}

static void cpu_memory(const ni_backend_ctx *b, size_t *peak, size_t *weights) {
    size_t wb = ni_model_weight_bytes(b->model, sizeof(float));
    *weights = wb;
    *peak = wb + b->arena_bytes;
}

const ni_backend_ops ni_cpu_backend = {
    .create = cpu_create,
    .destroy = cpu_destroy,
    .prefill = cpu_prefill,
    .decode = cpu_decode,
    .logits = cpu_logits,
    .memory = cpu_memory,
};
