/* Argument helpers shared by the subcommands. Numbers are parsed strictly: "12x", "" and
 * out-of-range values are usage errors, never silently zero. */
#include "cli/args.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cli_usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("nanoinfer: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs(" (see --help)\n", stderr);
    va_end(ap);
    return 2;
}

int cli_runtime_error(const char *what, ni_status s) {
    fprintf(stderr, "nanoinfer: %s: %s: %s\n", what, ni_status_name(s), ni_last_error());
    return 1;
}

int cli_parse_size(const char *s, size_t *out) {
    if (!s || !*s || *s == '-') return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) return -1;
    *out = (size_t)v;
    return 0;
}

int cli_parse_u64(const char *s, uint64_t *out) {
    size_t v;
    if (cli_parse_size(s, &v)) return -1;
    *out = v;
    return 0;
}

int cli_parse_float(const char *s, float *out) {
    if (!s || !*s) return -1;
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v)) return -1;
    *out = (float)v;
    return 0;
}

int cli_parse_ids(const char *s, int32_t **ids, size_t *n) {
    size_t cap = 16, k = 0;
    int32_t *v = malloc(cap * sizeof *v);
    const char *p = s;
    while (v && *p) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (end == p || errno || x < 0 || x > INT32_MAX || (*end && *end != ',')) {
            free(v);
            return -1;
        }
        if (k == cap) {
            int32_t *nv = realloc(v, (cap *= 2) * sizeof *v);
            if (!nv) break;
            v = nv;
        }
        v[k++] = (int32_t)x;
        p = *end ? end + 1 : end;
    }
    if (!v || k == 0) {
        free(v);
        return -1;
    }
    *ids = v;
    *n = k;
    return 0;
}

int cli_is(const char *arg, const char *name) {
    size_t n = strlen(name);
    return strncmp(arg, name, n) == 0 && (arg[n] == '\0' || arg[n] == '=');
}

int cli_flag_check(const char *arg) {
    const char *eq = strchr(arg, '=');
    if (!eq) return 0;
    return cli_usage_error("%.*s takes no value (given '%s')", (int)(eq - arg), arg, eq + 1);
}

const char *cli_value(int argc, char **argv, int *i, const char *name) {
    const char *eq = strchr(argv[*i], '=');
    if (eq) return eq + 1;
    if (*i + 1 >= argc) {
        cli_usage_error("%s needs a value", name);
        return NULL;
    }
    return argv[++*i];
}

const char cli_model_help[] =
    "  --model M          a named random-weight model (gpt2, gpt2-medium, gpt2-large, gpt2-xl,\n"
    "                     empty-1B ... empty-16B) or a Hugging Face model directory (a\n"
    "                     directory with a config.json is taken before a name it shares)\n"
    "  --backend B        cpu or cuda (default cpu)\n"
    "  --engine E         baseline, kv_cache, sampling or cuda_graphs (default: sampling on\n"
    "                     the cpu, cuda_graphs on cuda)\n"
    "  --dtype D          GPU weights: bf16 or fp16 (default bf16; the CPU computes in f32)\n"
    "  --model-seed N     seed of the random weights of named models (default 0)\n"
    "  --threads N        CPU threads (default: all cores)\n";

void cli_model_args_init(cli_model_args *a) {
    memset(a, 0, sizeof *a);
    a->backend = NI_BACKEND_CPU;
    a->preset = NI_PRESET_SAMPLING;
    a->dtype = NI_DTYPE_BF16;
}

int cli_model_arg(cli_model_args *a, int argc, char **argv, int *i) {
    const char *arg = argv[*i], *v;
    if (cli_is(arg, "--model")) {
        if (!(v = cli_value(argc, argv, i, "--model"))) return -1;
        a->model = v;
    } else if (cli_is(arg, "--backend")) {
        if (!(v = cli_value(argc, argv, i, "--backend"))) return -1;
        if (strcmp(v, "cpu") == 0)
            a->backend = NI_BACKEND_CPU;
        else if (strcmp(v, "cuda") == 0)
            a->backend = NI_BACKEND_CUDA;
        else
            return cli_usage_error("--backend takes cpu or cuda, not '%s'", v), -1;
    } else if (cli_is(arg, "--engine")) {
        if (!(v = cli_value(argc, argv, i, "--engine"))) return -1;
        if (ni_preset_parse(v, &a->preset) != NI_OK)
            return cli_usage_error("%s", ni_last_error()), -1;
        a->preset_set = 1;
    } else if (cli_is(arg, "--dtype")) {
        if (!(v = cli_value(argc, argv, i, "--dtype"))) return -1;
        if (strcmp(v, "bf16") == 0)
            a->dtype = NI_DTYPE_BF16;
        else if (strcmp(v, "fp16") == 0 || strcmp(v, "f16") == 0)
            a->dtype = NI_DTYPE_F16;
        else
            return cli_usage_error("--dtype takes bf16 or fp16, not '%s'", v), -1;
    } else if (cli_is(arg, "--model-seed")) {
        if (!(v = cli_value(argc, argv, i, "--model-seed"))) return -1;
        if (cli_parse_u64(v, &a->model_seed))
            return cli_usage_error("--model-seed takes a number, not '%s'", v), -1;
    } else if (cli_is(arg, "--threads")) {
        size_t n;
        if (!(v = cli_value(argc, argv, i, "--threads"))) return -1;
        if (cli_parse_size(v, &n) || n == 0 || n > 1024)
            return cli_usage_error("--threads takes a count from 1 to 1024, not '%s'", v), -1;
        a->n_threads = (int)n;
    } else {
        return 0;
    }
    return 1;
}

const char *cli_dtype_name(const cli_model_args *a) {
    return ni_dtype_name(a->backend == NI_BACKEND_CUDA ? a->dtype : NI_DTYPE_F32);
}

int cli_open(const cli_model_args *a, size_t max_batch, size_t max_seq, ni_model **m,
             ni_engine **e) {
    if (!a->model) return cli_usage_error("--model is required");
    ni_model_opts mo = {.seed = a->model_seed};
    ni_status s = ni_model_open(a->model, &mo, m);
    if (s != NI_OK) return cli_runtime_error("cannot open the model", s);
    if (!e) return 0;
    /* the fastest engine of the backend unless one is named */
    ni_preset preset =
        a->preset_set || a->backend == NI_BACKEND_CPU ? a->preset : NI_PRESET_CUDA_GRAPHS;
    ni_engine_opts eo = {.backend = a->backend,
                         .preset = preset,
                         .dtype = a->dtype,
                         .max_batch = max_batch,
                         .max_seq = max_seq,
                         .n_threads = a->n_threads};
    s = ni_engine_create(*m, &eo, e);
    if (s != NI_OK) {
        ni_model_close(*m);
        *m = NULL;
        return cli_runtime_error("cannot create the engine", s);
    }
    return 0;
}
