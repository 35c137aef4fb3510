/* The comparative benchmark (DESIGN.md §7): engines x batch sizes x prompt lengths, warm-up
 * runs not counted, median of the timed runs, engine order shuffled per configuration, EOS
 * ignored. Results are rows; a configuration that cannot run is a row with an error. */
#ifndef NI_BENCH_H
#define NI_BENCH_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "engine/device.h"
#include "nanoinfer.h"

#define NI_BENCH_MAX 32

typedef struct {
    const char *model;
    ni_backend backend;
    ni_dtype dtype; /* GPU weights, activations and KV cache: bf16 (default) or fp16 */
    ni_preset engines[NI_PRESET_COUNT];
    size_t n_engines;
    size_t batch_sizes[NI_BENCH_MAX];
    size_t n_batch_sizes;
    size_t prompt_lens[NI_BENCH_MAX];
    size_t n_prompt_lens;
    size_t max_new_tokens;
    size_t runs, warmup;
    ni_sampling sampling; /* temperature, top_k, top_p, seed */
    uint64_t model_seed;
    int n_threads;
    int progress; /* progress line on stderr */
} ni_bench_opts;

typedef struct {
    ni_preset engine;
    size_t batch_size, prompt_len, new_tokens;
    double ttft_ms, itl_ms, decode_tok_s, per_request_tok_s, prefill_tok_s;
    size_t peak_mem_bytes, driver_mem_bytes, weight_bytes;
    size_t fused_steps;    /* decode steps of the last timed run that ran as the fused kernel */
    double bandwidth_frac; /* < 0: not measured */
    char error[160];       /* non-empty: the configuration did not run */
} ni_bench_row;

typedef struct {
    ni_device_info device;
    ni_config config;
    size_t params;
    ni_bench_row *rows;
    size_t n_rows;
    double wall_s;
} ni_bench_result;

void ni_bench_default_opts(ni_bench_opts *o, ni_backend backend);
ni_status ni_bench_run(const ni_bench_opts *o, ni_bench_result *out);
void ni_bench_free(ni_bench_result *r);

/* Reports: a table per batch size with speedups against the first engine; JSON; CSV. */
void ni_bench_print_table(FILE *f, const ni_bench_opts *o, const ni_bench_result *r);
ni_status ni_bench_write_json(const char *path, const ni_bench_opts *o, const ni_bench_result *r);
ni_status ni_bench_write_csv(const char *path, const ni_bench_result *r);

#endif
