/* Benchmark reports: the terminal table (per batch size, speedups against the first engine),
 * and the JSON and CSV files that tools/plot_bench.py reads. Field names follow DESIGN.md §7. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench.h"
#include "common/error.h"

#include "ni_git_commit.h" /* generated at each build: NI_GIT_COMMIT */

static const ni_bench_row *find(const ni_bench_result *r, ni_preset e, size_t B, size_t P) {
    for (size_t i = 0; i < r->n_rows; i++)
        if (r->rows[i].engine == e && r->rows[i].batch_size == B && r->rows[i].prompt_len == P)
            return &r->rows[i];
    return NULL;
}

void ni_bench_print_table(FILE *f, const ni_bench_opts *o, const ni_bench_result *r) {
    fprintf(f, "%s on %s (%s, %s), %zu new tokens, median of %zu runs after %zu warm-up\n",
            o->model, r->device.name, ni_backend_name(o->backend),
            ni_dtype_name(o->backend == NI_BACKEND_CUDA ? o->dtype : NI_DTYPE_F32),
            o->max_new_tokens, o->runs, o->warmup);
    for (size_t pi = 0; pi < o->n_prompt_lens; pi++) {
        size_t P = o->prompt_lens[pi];
        for (size_t bi = 0; bi < o->n_batch_sizes; bi++) {
            size_t B = o->batch_sizes[bi];
            fprintf(f, "\nbatch %zu, prompt %zu\n", B, P);
            fprintf(f, "  %-12s %12s %10s %9s %9s %10s %8s\n", "engine", "decode tok/s", "per req",
                    "ITL ms", "TTFT ms", "peak MB", "speedup");
            const ni_bench_row *first = find(r, o->engines[0], B, P);
            for (size_t k = 0; k < o->n_engines; k++) {
                const ni_bench_row *row = find(r, o->engines[k], B, P);
                if (!row) continue;
                if (row->error[0]) {
                    fprintf(f, "  %-12s %s\n", ni_preset_name(row->engine), row->error);
                    continue;
                }
                char speed[16] = "-";
                if (first && !first->error[0] && first->decode_tok_s > 0)
                    snprintf(speed, sizeof speed, "%.2fx", row->decode_tok_s / first->decode_tok_s);
                fprintf(f, "  %-12s %12.1f %10.1f %9.3f %9.2f %10.1f %8s\n",
                        ni_preset_name(row->engine), row->decode_tok_s, row->per_request_tok_s,
                        row->itl_ms, row->ttft_ms, (double)row->peak_mem_bytes / 1e6, speed);
            }
        }
    }
}

static json_t *row_json(const ni_bench_row *row) {
    json_t *o = json_object();
    json_object_set_new(o, "engine", json_string(ni_preset_name(row->engine)));
    json_object_set_new(o, "batch_size", json_integer((json_int_t)row->batch_size));
    json_object_set_new(o, "prompt_len", json_integer((json_int_t)row->prompt_len));
    json_object_set_new(o, "new_tokens", json_integer((json_int_t)row->new_tokens));
    if (row->error[0]) {
        json_object_set_new(o, "error", json_string(row->error));
        return o;
    }
    json_object_set_new(o, "ttft_ms", json_real(row->ttft_ms));
    json_object_set_new(o, "itl_ms", json_real(row->itl_ms));
    json_object_set_new(o, "decode_tok_s", json_real(row->decode_tok_s));
    json_object_set_new(o, "per_request_tok_s", json_real(row->per_request_tok_s));
    json_object_set_new(o, "prefill_tok_s", json_real(row->prefill_tok_s));
    json_object_set_new(o, "peak_mem_bytes", json_integer((json_int_t)row->peak_mem_bytes));
    json_object_set_new(o, "weight_bytes", json_integer((json_int_t)row->weight_bytes));
    json_object_set_new(o, "fused_steps", json_integer((json_int_t)row->fused_steps));
    if (row->driver_mem_bytes)
        json_object_set_new(o, "driver_mem_bytes", json_integer((json_int_t)row->driver_mem_bytes));
    if (row->bandwidth_frac >= 0)
        json_object_set_new(o, "bandwidth_frac", json_real(row->bandwidth_frac));
    return o;
}

ni_status ni_bench_write_json(const char *path, const ni_bench_opts *o, const ni_bench_result *r) {
    json_t *root = json_object(), *run = json_object(), *rows = json_array();
    char date[32];
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    json_object_set_new(run, "tool", json_string("nanoinfer"));
    json_object_set_new(run, "card", json_string(r->device.name));
    json_object_set_new(run, "backend", json_string(ni_backend_name(o->backend)));
    if (r->device.driver[0]) json_object_set_new(run, "cuda_driver", json_string(r->device.driver));
    if (r->device.runtime[0])
        json_object_set_new(run, "cuda_runtime", json_string(r->device.runtime));
    json_object_set_new(run, "model", json_string(o->model));
    json_object_set_new(run, "params", json_integer((json_int_t)r->params));
    json_object_set_new(run, "dtype",
                        json_string(o->backend == NI_BACKEND_CUDA ? ni_dtype_name(o->dtype)
                                                                  : ni_dtype_name(NI_DTYPE_F32)));
    json_object_set_new(run, "max_new_tokens", json_integer((json_int_t)o->max_new_tokens));
    json_object_set_new(run, "runs", json_integer((json_int_t)o->runs));
    json_object_set_new(run, "warmup", json_integer((json_int_t)o->warmup));
    json_object_set_new(run, "temperature", json_real(o->sampling.temperature));
    json_object_set_new(run, "top_k", json_integer((json_int_t)o->sampling.top_k));
    json_object_set_new(run, "top_p", json_real(o->sampling.top_p));
    if (r->device.copy_bytes_per_s > 0)
        json_object_set_new(run, "copy_bw_bytes_s", json_real(r->device.copy_bytes_per_s));
    json_object_set_new(run, "git_commit", json_string(NI_GIT_COMMIT));
    /* the switches that change what the engines run (README, Limits) */
    static const char *const env_names[] = {
        "NI_FUSED",       "NI_GRAPH_STEPS",       "NI_NO_PDL",      "NI_GEMV_MAX_ROWS",
        "NI_GEMM_STREAM", "NI_GEMM_STREAM_PARTS", "NI_FUSED_TRACE", "NI_ATTN_PRELOAD"};
    json_t *env = json_object();
    for (size_t i = 0; i < sizeof env_names / sizeof *env_names; i++) {
        const char *v = getenv(env_names[i]);
        if (v) json_object_set_new(env, env_names[i], json_string(v));
    }
    json_object_set_new(run, "env", env);
    json_object_set_new(run, "date", json_string(date));
    json_object_set_new(run, "wall_s", json_real(r->wall_s));
    for (size_t i = 0; i < r->n_rows; i++) json_array_append_new(rows, row_json(&r->rows[i]));
    json_object_set_new(root, "run", run);
    json_object_set_new(root, "results", rows);
    int rc = json_dump_file(root, path, JSON_INDENT(1));
    json_decref(root);
    return rc == 0 ? NI_OK : ni_fail(NI_ERR_IO, "%s: cannot write", path);
}

ni_status ni_bench_write_csv(const char *path, const ni_bench_result *r) {
    FILE *f = fopen(path, "w");
    if (!f) return ni_fail(NI_ERR_IO, "%s: cannot write", path);
    fprintf(f, "engine,batch_size,prompt_len,new_tokens,ttft_ms,itl_ms,decode_tok_s,"
               "per_request_tok_s,prefill_tok_s,peak_mem_bytes,driver_mem_bytes,bandwidth_frac,"
               "error\n");
    for (size_t i = 0; i < r->n_rows; i++) {
        const ni_bench_row *w = &r->rows[i];
        char err[sizeof w->error];
        snprintf(err, sizeof err, "%s", w->error);
        for (char *p = err; *p; p++)
            if (*p == ',' || *p == '"' || *p == '\n') *p = ';';
        fprintf(f, "%s,%zu,%zu,%zu,", ni_preset_name(w->engine), w->batch_size, w->prompt_len,
                w->new_tokens);
        if (w->error[0])
            fprintf(f, ",,,,,,,,%s\n", err);
        else if (w->bandwidth_frac >= 0)
            fprintf(f, "%.4f,%.4f,%.2f,%.2f,%.2f,%zu,%zu,%.4f,\n", w->ttft_ms, w->itl_ms,
                    w->decode_tok_s, w->per_request_tok_s, w->prefill_tok_s, w->peak_mem_bytes,
                    w->driver_mem_bytes, w->bandwidth_frac);
        else
            fprintf(f, "%.4f,%.4f,%.2f,%.2f,%.2f,%zu,,,\n", w->ttft_ms, w->itl_ms, w->decode_tok_s,
                    w->per_request_tok_s, w->prefill_tok_s, w->peak_mem_bytes);
    }
    return fclose(f) == 0 ? NI_OK : ni_fail(NI_ERR_IO, "%s: cannot write", path);
}
