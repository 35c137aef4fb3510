/* Running the benchmark sweep: for each prompt length and batch size, every engine (in a
 * seeded shuffled order, so that no engine always runs first on a cold or a warm machine)
 * gets warm-up runs and timed runs on random prompts; the row holds the medians. Engines are
 * created per configuration and destroyed after it, so each row's memory is its own. */
#include "bench/bench.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/error.h"
#include "common/philox.h"

void ni_bench_default_opts(ni_bench_opts *o, ni_backend backend) {
    memset(o, 0, sizeof *o);
    o->backend = backend;
    o->dtype = NI_DTYPE_BF16;
    o->model = backend == NI_BACKEND_CUDA ? "gpt2-xl" : "gpt2";
    /* every engine the backend has */
    o->engines[o->n_engines++] = NI_PRESET_BASELINE;
    o->engines[o->n_engines++] = NI_PRESET_KV_CACHE;
    o->engines[o->n_engines++] = NI_PRESET_SAMPLING;
    if (backend == NI_BACKEND_CUDA) o->engines[o->n_engines++] = NI_PRESET_CUDA_GRAPHS;
    size_t max_b = backend == NI_BACKEND_CUDA ? 512 : 16;
    for (size_t b = 1; b <= max_b; b *= 2) o->batch_sizes[o->n_batch_sizes++] = b;
    o->prompt_lens[o->n_prompt_lens++] = 32;
    o->max_new_tokens = 100;
    o->runs = 5;
    o->warmup = 2;
    o->sampling = (ni_sampling){.temperature = 1.0f, .top_k = 20, .top_p = 0.9f, .seed = 1234};
    o->progress = 1;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, size_t n) {
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Fills B prompts of P tokens, a pure function of (seed, run, batch). */
static void random_prompts(int32_t *tok, size_t B, size_t P, size_t V, uint64_t seed, size_t run) {
    for (size_t i = 0; i < B * P; i++) {
        float u =
            ni_rng_uniform(seed ^ 0x70726f6d70747321ull, run, (uint32_t)(i / P), (uint32_t)(i % P));
        size_t t = (size_t)(u * (float)V);
        tok[i] = (int32_t)(t < V ? t : V - 1);
    }
}

typedef struct {
    const ni_bench_opts *o;
    ni_model *model;
    const ni_device_info *dev;
    int32_t *tokens;
    const int32_t **ptrs;
    size_t *lens;
    double *ttft, *itl;
    size_t done, total;
} bench_state;

static void run_config(bench_state *st, ni_preset engine, size_t B, size_t P, ni_bench_row *row) {
    const ni_bench_opts *o = st->o;
    const ni_config *c = ni_model_config(st->model);
    memset(row, 0, sizeof *row);
    row->engine = engine;
    row->batch_size = B;
    row->prompt_len = P;
    row->new_tokens = o->max_new_tokens;
    row->bandwidth_frac = -1.0;
    ni_engine_opts eo = {.backend = o->backend,
                         .preset = engine,
                         .dtype = o->dtype,
                         .max_batch = B,
                         .max_seq = P + o->max_new_tokens,
                         .n_threads = o->n_threads};
    ni_engine *e = NULL;
    ni_status s = ni_engine_create(st->model, &eo, &e);
    if (s != NI_OK) {
        snprintf(row->error, sizeof row->error, "%s: %s",
                 s == NI_ERR_NO_MEMORY ? "out of memory" : ni_status_name(s), ni_last_error());
        return;
    }
    ni_sampling sp = o->sampling;
    sp.max_new_tokens = o->max_new_tokens;
    sp.ignore_eos = 1;
    size_t n_timed = 0;
    for (size_t r = 0; r < o->warmup + o->runs; r++) {
        if (o->progress) {
            fprintf(stderr, "\r[%zu/%zu] %-11s batch %-4zu prompt %-4zu run %zu/%zu   ",
                    st->done + 1, st->total, ni_preset_name(engine), B, P, r + 1,
                    o->warmup + o->runs);
            fflush(stderr);
        }
        random_prompts(st->tokens, B, P, c->vocab_size, o->sampling.seed, r);
        for (size_t i = 0; i < B; i++) {
            st->ptrs[i] = st->tokens + i * P;
            st->lens[i] = P;
        }
        ni_batch batch = {B, st->ptrs, st->lens};
        sp.seed = o->sampling.seed + r;
        s = ni_generate(e, &batch, &sp, NULL, NULL);
        if (s != NI_OK) {
            snprintf(row->error, sizeof row->error, "%s: %s", ni_status_name(s), ni_last_error());
            break;
        }
        size_t used = ni_device_used_bytes(o->backend);
        if (used > row->driver_mem_bytes) row->driver_mem_bytes = used;
        if (r < o->warmup) continue;
        ni_stats stats;
        ni_engine_stats(e, &stats);
        st->ttft[n_timed] = stats.ttft_ms;
        st->itl[n_timed] = stats.decode_steps ? stats.decode_ms / (double)stats.decode_steps : 0.0;
        row->peak_mem_bytes = stats.peak_mem_bytes;
        row->weight_bytes = stats.weight_bytes;
        row->fused_steps = stats.fused_steps;
        n_timed++;
    }
    ni_engine_destroy(e);
    if (row->error[0] || n_timed == 0) return;
    row->ttft_ms = median(st->ttft, n_timed);
    row->itl_ms = median(st->itl, n_timed);
    row->decode_tok_s = row->itl_ms > 0 ? (double)B / (row->itl_ms / 1e3) : 0.0;
    row->per_request_tok_s = row->itl_ms > 0 ? 1e3 / row->itl_ms : 0.0;
    row->prefill_tok_s = row->ttft_ms > 0 ? (double)(B * P) / (row->ttft_ms / 1e3) : 0.0;
    if (st->dev->copy_bytes_per_s > 0 && row->itl_ms > 0) {
        /* bytes a decode step must read: the weights once, and the KV cache of every sequence
         * at its mean length over the decode steps (16-bit on the GPU) */
        double mean_len = (double)P + (double)o->max_new_tokens / 2.0;
        double kv = 2.0 * (double)c->n_layer * (double)B * mean_len * (double)c->n_embd * 2.0;
        double bytes = (double)row->weight_bytes + kv;
        row->bandwidth_frac = bytes / (row->itl_ms / 1e3) / st->dev->copy_bytes_per_s;
    }
}

ni_status ni_bench_run(const ni_bench_opts *o, ni_bench_result *out) {
    memset(out, 0, sizeof *out);
    double t0 = now_s();
    NI_TRY(ni_device_query(o->backend, o->backend == NI_BACKEND_CUDA, &out->device));
    bench_state st = {.o = o, .dev = &out->device};
    ni_model_opts mo = {.seed = o->model_seed};
    NI_TRY(ni_model_open(o->model, &mo, &st.model));
    out->config = *ni_model_config(st.model);
    out->params = ni_model_param_count(st.model);
    size_t max_b = 0, max_p = 0;
    for (size_t i = 0; i < o->n_batch_sizes; i++)
        if (o->batch_sizes[i] > max_b) max_b = o->batch_sizes[i];
    for (size_t i = 0; i < o->n_prompt_lens; i++)
        if (o->prompt_lens[i] > max_p) max_p = o->prompt_lens[i];
    st.total = o->n_engines * o->n_batch_sizes * o->n_prompt_lens;
    st.tokens = malloc(max_b * max_p * sizeof *st.tokens);
    st.ptrs = malloc(max_b * sizeof *st.ptrs);
    st.lens = malloc(max_b * sizeof *st.lens);
    st.ttft = malloc((o->runs + 1) * sizeof *st.ttft);
    st.itl = malloc((o->runs + 1) * sizeof *st.itl);
    out->rows = calloc(st.total, sizeof *out->rows);
    ni_status s = NI_OK;
    if (!st.tokens || !st.ptrs || !st.lens || !st.ttft || !st.itl || !out->rows)
        s = ni_fail(NI_ERR_NO_MEMORY, "out of memory");
    for (size_t pi = 0; pi < o->n_prompt_lens && s == NI_OK; pi++) {
        for (size_t bi = 0; bi < o->n_batch_sizes; bi++) {
            /* seeded Fisher-Yates shuffle of the engine order for this configuration */
            size_t order[NI_PRESET_COUNT];
            for (size_t k = 0; k < o->n_engines; k++) order[k] = k;
            for (size_t k = o->n_engines; k > 1; k--) {
                float u = ni_rng_uniform(o->sampling.seed, 0x5348554646ull,
                                         (uint32_t)(pi * 64 + bi), (uint32_t)k);
                size_t j = (size_t)(u * (float)k);
                if (j >= k) j = k - 1;
                size_t t = order[k - 1];
                order[k - 1] = order[j];
                order[j] = t;
            }
            size_t base = (pi * o->n_batch_sizes + bi) * o->n_engines;
            for (size_t k = 0; k < o->n_engines; k++) {
                size_t ei = order[k];
                run_config(&st, o->engines[ei], o->batch_sizes[bi], o->prompt_lens[pi],
                           &out->rows[base + ei]);
                st.done++;
            }
        }
    }
    if (o->progress) fprintf(stderr, "\r%*s\r", 70, "");
    out->n_rows = s == NI_OK ? st.total : 0;
    out->wall_s = now_s() - t0;
    free(st.tokens);
    free(st.ptrs);
    free(st.lens);
    free(st.ttft);
    free(st.itl);
    ni_model_close(st.model);
    return s;
}

void ni_bench_free(ni_bench_result *r) {
    free(r->rows);
    r->rows = NULL;
    r->n_rows = 0;
}
