/* Argument helpers shared by the subcommands: strict number parsing, token lists, and the
 * model/engine options that most commands take. */
#ifndef NI_CLI_ARGS_H
#define NI_CLI_ARGS_H

#include <stddef.h>
#include <stdint.h>

#include "nanoinfer.h"

/* Prints "nanoinfer: <msg>" to stderr and returns 2 (usage error) or 1 (runtime error). */
int cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int cli_runtime_error(const char *what, ni_status s);

int cli_parse_size(const char *s, size_t *out);
int cli_parse_float(const char *s, float *out);
int cli_parse_u64(const char *s, uint64_t *out);
/* "1,2,3" -> malloc'ed ids; 0 on success. */
int cli_parse_ids(const char *s, int32_t **ids, size_t *n);

/* The value of option argv[*i] ("--x v" or "--x=v"); advances *i. NULL when missing. */
const char *cli_value(int argc, char **argv, int *i, const char *name);
/* True when argv[i] is the option name (alone or as name=value). */
int cli_is(const char *arg, const char *name);
/* For an option that takes no value: 2 (message printed) when given as name=value, else 0. */
int cli_flag_check(const char *arg);

/* Options shared by model-running commands. */
typedef struct {
    const char *model;
    ni_backend backend;
    ni_preset preset;
    int preset_set;
    ni_dtype dtype;
    uint64_t model_seed;
    int n_threads;
} cli_model_args;

void cli_model_args_init(cli_model_args *a);
/* Consumes argv[*i] if it is one of --model, --backend, --engine, --dtype, --model-seed,
 * --threads. Returns 1 if consumed, 0 if not one of them, -1 on a bad value (message printed). */
int cli_model_arg(cli_model_args *a, int argc, char **argv, int *i);
extern const char cli_model_help[];

/* The type the engine computes in: "f32" on the cpu, the --dtype ("bf16", "fp16") on cuda. */
const char *cli_dtype_name(const cli_model_args *a);

/* Opens the model and an engine for max_batch sequences of max_seq tokens (0: the context). */
int cli_open(const cli_model_args *a, size_t max_batch, size_t max_seq, ni_model **m,
             ni_engine **e);

#endif
