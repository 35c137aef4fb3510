/* Engines: a backend plus a preset (a row of flags), and the generate loop shared by every
 * backend. The loop validates the request before any work, times prefill (TTFT) and each decode
 * step, streams tokens to the caller and stops sequences at <|endoftext|>. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/error.h"
#include "engine/backend.h"
#include "model/model.h"

static const ni_preset_flags ni_presets[NI_PRESET_COUNT] = {
    [NI_PRESET_BASELINE] = {"baseline", 0, 0, 0},
    [NI_PRESET_KV_CACHE] = {"kv_cache", 1, 0, 0},
    [NI_PRESET_SAMPLING] = {"sampling", 1, 1, 0},
    [NI_PRESET_CUDA_GRAPHS] = {"cuda_graphs", 1, 1, 1},
};

const ni_preset_flags *ni_preset_get(ni_preset p) {
    return (p >= 0 && p < NI_PRESET_COUNT) ? &ni_presets[p] : NULL;
}

ni_status ni_fail_invalid_logits(size_t seq) {
    return ni_fail(NI_ERR_FORMAT,
                   "sequence %zu: the logits hold NaN or no finite value, nothing to sample (are "
                   "the model's weights finite?)",
                   seq);
}

const char *ni_preset_name(ni_preset p) {
    const ni_preset_flags *f = ni_preset_get(p);
    return f ? f->name : "unknown";
}

ni_status ni_preset_parse(const char *name, ni_preset *out) {
    for (int p = 0; p < NI_PRESET_COUNT; p++)
        if (strcmp(name, ni_presets[p].name) == 0) {
            *out = (ni_preset)p;
            return NI_OK;
        }
    return ni_fail(NI_ERR_INVALID_ARG,
                   "unknown engine '%s' (baseline, kv_cache, sampling, cuda_graphs)", name);
}

const char *ni_backend_name(ni_backend b) {
    return b == NI_BACKEND_CPU ? "cpu" : b == NI_BACKEND_CUDA ? "cuda" : "unknown";
}

const char *ni_dtype_name(ni_dtype d) {
    return d == NI_DTYPE_F32    ? "f32"
           : d == NI_DTYPE_BF16 ? "bf16"
           : d == NI_DTYPE_F16  ? "fp16"
                                : "unknown";
}

struct ni_engine {
    ni_model *model;
    ni_engine_opts opts;
    const ni_backend_ops *ops;
    ni_backend_ctx *ctx;
    ni_stats stats;
    int32_t *last, *next; /* (max_batch) */
    uint8_t *live;        /* (max_batch) */
};

static const ni_backend_ops *backend_ops(ni_backend b) {
    if (b == NI_BACKEND_CPU) return &ni_cpu_backend;
#ifdef NI_HAVE_CUDA
    if (b == NI_BACKEND_CUDA) return &ni_cuda_backend;
#endif
    return NULL;
}

ni_status ni_engine_create(ni_model *m, const ni_engine_opts *opts, ni_engine **out) {
    if (!m || !opts || !out) return ni_fail(NI_ERR_INVALID_ARG, "ni_engine_create: NULL argument");
    *out = NULL;
    ni_engine_opts o = *opts;
    const ni_config *c = ni_model_config(m);
    if (o.max_batch == 0) o.max_batch = 1;
    if (o.max_seq == 0) o.max_seq = c->n_ctx;
    if (o.max_seq > c->n_ctx)
        return ni_fail(NI_ERR_CONTEXT, "max sequence %zu exceeds the model's context %zu",
                       o.max_seq, c->n_ctx);
    const ni_preset_flags *pf = ni_preset_get(o.preset);
    if (!pf) return ni_fail(NI_ERR_INVALID_ARG, "unknown preset %d", (int)o.preset);
    const ni_backend_ops *ops = backend_ops(o.backend);
    if (!ops)
        return ni_fail(NI_ERR_UNSUPPORTED, "backend '%s' is not in this build",
                       ni_backend_name(o.backend));
    if (pf->cuda_graphs && o.backend != NI_BACKEND_CUDA)
        return ni_fail(NI_ERR_UNSUPPORTED, "the cuda_graphs engine needs the cuda backend");
    ni_engine *e = calloc(1, sizeof *e);
    if (!e) return ni_fail(NI_ERR_NO_MEMORY, "out of memory");
    e->model = m;
    e->opts = o;
    e->ops = ops;
    e->last = calloc(o.max_batch, sizeof *e->last);
    e->next = calloc(o.max_batch, sizeof *e->next);
    e->live = calloc(o.max_batch, 1);
    ni_status s = (e->last && e->next && e->live) ? ops->create(m, &o, &e->ctx)
                                                  : ni_fail(NI_ERR_NO_MEMORY, "out of memory");
    if (s != NI_OK) {
        ni_engine_destroy(e);
        return s;
    }
    ops->memory(e->ctx, &e->stats.peak_mem_bytes, &e->stats.weight_bytes);
    *out = e;
    return NI_OK;
}

void ni_engine_destroy(ni_engine *e) {
    if (!e) return;
    if (e->ctx) e->ops->destroy(e->ctx);
    free(e->last);
    free(e->next);
    free(e->live);
    free(e);
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static ni_status check_request(const ni_engine *e, const ni_batch *p, const ni_sampling *s) {
    const ni_config *c = ni_model_config(e->model);
    if (!p || !s || p->n_seq == 0 || !p->tokens || !p->lens)
        return ni_fail(NI_ERR_INVALID_ARG, "empty batch");
    if (p->n_seq > e->opts.max_batch)
        return ni_fail(NI_ERR_INVALID_ARG, "batch of %zu exceeds the engine's max batch %zu",
                       p->n_seq, e->opts.max_batch);
    if (!(s->temperature >= 0.0f) || !(s->top_p > 0.0f) || !(s->min_p >= 0.0f) ||
        !(s->min_p <= 1.0f))
        return ni_fail(NI_ERR_INVALID_ARG,
                       "sampling needs temperature >= 0, top_p > 0 and 0 <= min_p <= 1");
    for (size_t i = 0; i < p->n_seq; i++) {
        if (p->lens[i] == 0) return ni_fail(NI_ERR_INVALID_ARG, "sequence %zu is empty", i);
        if (p->lens[i] + s->max_new_tokens > e->opts.max_seq)
            return ni_fail(NI_ERR_CONTEXT,
                           "sequence %zu: %zu prompt tokens + %zu new tokens exceed the "
                           "context of %zu",
                           i, p->lens[i], s->max_new_tokens, e->opts.max_seq);
        for (size_t t = 0; t < p->lens[i]; t++)
            if (p->tokens[i][t] < 0 || (size_t)p->tokens[i][t] >= c->vocab_size)
                return ni_fail(NI_ERR_INVALID_ARG,
                               "sequence %zu: token %d at position %zu is outside the "
                               "vocabulary [0, %zu)",
                               i, (int)p->tokens[i][t], t, c->vocab_size);
    }
    return NI_OK;
}

ni_status ni_generate(ni_engine *e, const ni_batch *prompts, const ni_sampling *s, ni_token_cb cb,
                      void *user) {
    if (!e) return ni_fail(NI_ERR_INVALID_ARG, "ni_generate: NULL engine");
    NI_TRY(check_request(e, prompts, s));
    ni_stats *st = &e->stats;
    st->ttft_ms = st->decode_ms = 0.0;
    st->decode_steps = st->generated_tokens = st->prompt_tokens = st->fused_steps = 0;
    if (s->max_new_tokens == 0) return NI_OK;
    size_t B = prompts->n_seq;
    for (size_t i = 0; i < B; i++) st->prompt_tokens += prompts->lens[i];
    int32_t eos = ni_model_config(e->model)->eos_id;
    ni_gen_request req = {
        prompts, {s->temperature, s->top_k, s->top_p, s->min_p}, s->seed, s->max_new_tokens};

    const size_t fused0 = e->ops->fused_steps ? e->ops->fused_steps(e->ctx) : 0;
    double t0 = now_ms();
    NI_TRY(e->ops->prefill(e->ctx, &req, e->next));
    st->ttft_ms = now_ms() - t0;
    int stop = 0;
    size_t n_live = 0;
    for (size_t i = 0; i < B; i++) {
        st->generated_tokens++;
        if (cb && !stop) stop = cb(user, i, 0, e->next[i]);
        e->live[i] = s->max_new_tokens > 1 && (s->ignore_eos || e->next[i] != eos);
        n_live += e->live[i];
    }
    for (uint32_t step = 1; step < s->max_new_tokens && n_live > 0 && !stop; step++) {
        memcpy(e->last, e->next, B * sizeof *e->last);
        double ts = now_ms();
        NI_TRY(e->ops->decode(e->ctx, e->last, e->live, step, e->next));
        st->decode_ms += now_ms() - ts;
        st->decode_steps++;
        n_live = 0;
        for (size_t i = 0; i < B; i++) {
            if (!e->live[i]) continue;
            st->generated_tokens++;
            if (cb && !stop) stop = cb(user, i, step, e->next[i]);
            e->live[i] = step + 1 < s->max_new_tokens && (s->ignore_eos || e->next[i] != eos);
            n_live += e->live[i];
        }
    }
    if (e->ops->fused_steps) st->fused_steps = e->ops->fused_steps(e->ctx) - fused0;
    return NI_OK;
}

ni_status ni_logits(ni_engine *e, const int32_t *tokens, size_t len, float *out) {
    if (!e || !tokens || !out || len == 0)
        return ni_fail(NI_ERR_INVALID_ARG, "ni_logits: empty input");
    const ni_config *c = ni_model_config(e->model);
    if (len > e->opts.max_seq)
        return ni_fail(NI_ERR_CONTEXT, "%zu tokens exceed the context of %zu", len,
                       e->opts.max_seq);
    for (size_t t = 0; t < len; t++)
        if (tokens[t] < 0 || (size_t)tokens[t] >= c->vocab_size)
            return ni_fail(NI_ERR_INVALID_ARG,
                           "token %d at position %zu is outside the vocabulary [0, %zu)",
                           (int)tokens[t], t, c->vocab_size);
    return e->ops->logits(e->ctx, tokens, len, out);
}

ni_status ni_engine_stats(const ni_engine *e, ni_stats *out) {
    if (!e || !out) return ni_fail(NI_ERR_INVALID_ARG, "ni_engine_stats: NULL argument");
    *out = e->stats;
    e->ops->memory(e->ctx, &out->peak_mem_bytes, &out->weight_bytes);
    return NI_OK;
}
