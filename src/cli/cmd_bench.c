/* `nanoinfer bench`: the comparative benchmark of the engines across batch sizes (DESIGN.md
 * §7), printed as tables and written as JSON and CSV for tools/plot_bench.py. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bench/bench.h"
#include "cli/args.h"
#include "cli/commands.h"

static const char bench_help[] =
    "usage: nanoinfer bench [options]\n\n"
    "Measures decode throughput, time to first token and peak memory of each engine across\n"
    "batch sizes: random prompts, EOS ignored, warm-up runs not counted, median of the timed\n"
    "runs, engine order shuffled. Prints a table per batch size and writes bench.json and\n"
    "bench.csv into --out.\n\n"
    "  --model M            model (default gpt2-xl on cuda, gpt2 on cpu)\n"
    "  --backend B          cpu or cuda (default cpu)\n"
    "  --dtype D            GPU weights, activations and KV cache: bf16 or fp16 (default bf16)\n"
    "  --engines A,B        engines to compare (default: every engine of the backend)\n"
    "  --batch-sizes 1,2,4  batch sizes (default 1..512 on cuda, 1..16 on cpu)\n"
    "  --prompt-len N[,M]   prompt lengths (default 32)\n"
    "  --max-new-tokens N   tokens generated per sequence (default 100)\n"
    "  --runs N             timed runs per configuration (default 5)\n"
    "  --warmup N           warm-up runs, not counted (default 2)\n"
    "  --temperature T, --top-k K, --top-p P, --seed N   sampling (default 1.0, 20, 0.9)\n"
    "  --threads N          CPU threads\n"
    "  --model-seed N       seed of the random weights\n"
    "  --out DIR            where bench.json and bench.csv go (default out/bench)\n"
    "  --quick              a short run: 1 warm-up, 2 timed runs, every other batch size\n"
    "                       (options given explicitly stay as given)\n"
    "  --default-sweep      the sweep `make run` shows: gpt2-xl on a GPU when there is one,\n"
    "                       else gpt2 on the CPU, sized to finish in a few minutes\n";

static int parse_list(const char *v, size_t *out, size_t *n) {
    int32_t *ids;
    size_t k;
    if (cli_parse_ids(v, &ids, &k) || k > NI_BENCH_MAX) return -1;
    for (size_t i = 0; i < k; i++) {
        if (ids[i] <= 0) {
            free(ids);
            return -1;
        }
        out[i] = (size_t)ids[i];
    }
    *n = k;
    free(ids);
    return 0;
}

static int parse_engines(const char *v, ni_bench_opts *o) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", v);
    o->n_engines = 0;
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        ni_preset p;
        if (ni_preset_parse(tok, &p) != NI_OK || o->n_engines == NI_PRESET_COUNT) return -1;
        o->engines[o->n_engines++] = p;
    }
    return o->n_engines ? 0 : -1;
}

static int mkdir_p(const char *dir) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", dir);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
            *p = '/';
        }
    return mkdir(buf, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

int cmd_bench(int argc, char **argv) {
    ni_bench_opts o;
    ni_backend backend = NI_BACKEND_CPU;
    int quick = 0, sweep = 0;
    /* the backend decides the defaults: find it first */
    for (int i = 0; i < argc; i++) {
        if (cli_is(argv[i], "--default-sweep")) sweep = 1;
        if (cli_is(argv[i], "--backend")) {
            const char *v =
                strchr(argv[i], '=') ? strchr(argv[i], '=') + 1 : (i + 1 < argc ? argv[i + 1] : "");
            if (strcmp(v, "cuda") == 0)
                backend = NI_BACKEND_CUDA;
            else if (strcmp(v, "cpu") != 0)
                return cli_usage_error("--backend takes cpu or cuda, not '%s'", v);
        }
    }
    if (sweep) {
        ni_device_info d;
        backend =
            ni_device_query(NI_BACKEND_CUDA, 0, &d) == NI_OK ? NI_BACKEND_CUDA : NI_BACKEND_CPU;
    }
    ni_bench_default_opts(&o, backend);
    if (sweep) {
        o.runs = 3;
        o.warmup = 1;
        if (backend == NI_BACKEND_CUDA) {
            size_t bs[] = {1, 4, 16, 64, 256};
            memcpy(o.batch_sizes, bs, sizeof bs);
            o.n_batch_sizes = 5;
        } else {
            /* two cores recomputing gpt2 (baseline) are slow: keep the CPU sweep to minutes */
            size_t bs[] = {1, 2, 4};
            memcpy(o.batch_sizes, bs, sizeof bs);
            o.n_batch_sizes = 3;
            o.max_new_tokens = 16;
            o.runs = 2;
        }
    }
    const char *out_dir = "out/bench", *v;
    static const char *const valued[] = {
        "--model", "--engines",    "--batch-sizes", "--prompt-len", "--max-new-tokens",
        "--runs",  "--warmup",     "--temperature", "--top-k",      "--top-p",
        "--seed",  "--model-seed", "--threads",     "--dtype",      "--out"};
    int runs_set = 0, warmup_set = 0, batches_set = 0; /* what --quick must leave alone */
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is(a, "--help") || cli_is(a, "-h")) {
            fputs(bench_help, stdout);
            return 0;
        }
        if (cli_is(a, "--default-sweep")) {
            if (cli_flag_check(a)) return 2;
            continue;
        }
        if (cli_is(a, "--quick")) {
            if (cli_flag_check(a)) return 2;
            quick = 1;
            continue;
        }
        if (cli_is(a, "--backend")) {
            if (!cli_value(argc, argv, &i, a)) return 2;
            continue;
        }
        int known = 0;
        for (size_t k = 0; k < sizeof valued / sizeof *valued; k++) known |= cli_is(a, valued[k]);
        if (!known) return cli_usage_error("unknown option '%s'", a);
        if (!(v = cli_value(argc, argv, &i, a))) return 2;
        size_t n;
        float f;
        if (cli_is(a, "--model")) {
            o.model = v;
        } else if (cli_is(a, "--engines")) {
            if (parse_engines(v, &o)) return cli_usage_error("--engines: bad list '%s'", v);
        } else if (cli_is(a, "--batch-sizes")) {
            if (parse_list(v, o.batch_sizes, &o.n_batch_sizes))
                return cli_usage_error("--batch-sizes takes up to %d positive counts",
                                       NI_BENCH_MAX);
            batches_set = 1;
        } else if (cli_is(a, "--prompt-len")) {
            if (parse_list(v, o.prompt_lens, &o.n_prompt_lens))
                return cli_usage_error("--prompt-len takes positive counts");
        } else if (cli_is(a, "--max-new-tokens")) {
            if (cli_parse_size(v, &o.max_new_tokens) || o.max_new_tokens < 2)
                return cli_usage_error("--max-new-tokens takes a count >= 2");
        } else if (cli_is(a, "--runs")) {
            if (cli_parse_size(v, &o.runs) || o.runs == 0 || o.runs > 1000)
                return cli_usage_error("--runs takes a count from 1 to 1000");
            runs_set = 1;
        } else if (cli_is(a, "--warmup")) {
            if (cli_parse_size(v, &o.warmup) || o.warmup > 1000)
                return cli_usage_error("--warmup takes a count up to 1000");
            warmup_set = 1;
        } else if (cli_is(a, "--temperature")) {
            if (cli_parse_float(v, &o.sampling.temperature) || o.sampling.temperature < 0)
                return cli_usage_error("--temperature takes a number >= 0");
        } else if (cli_is(a, "--top-k")) {
            if (cli_parse_size(v, &o.sampling.top_k))
                return cli_usage_error("--top-k takes a count");
        } else if (cli_is(a, "--top-p")) {
            if (cli_parse_float(v, &f) || !(f > 0 && f <= 1))
                return cli_usage_error("--top-p takes (0, 1]");
            o.sampling.top_p = f;
        } else if (cli_is(a, "--seed")) {
            if (cli_parse_u64(v, &o.sampling.seed)) return cli_usage_error("--seed takes a number");
        } else if (cli_is(a, "--model-seed")) {
            if (cli_parse_u64(v, &o.model_seed))
                return cli_usage_error("--model-seed takes a number");
        } else if (cli_is(a, "--threads")) {
            if (cli_parse_size(v, &n) || n == 0 || n > 1024)
                return cli_usage_error("--threads takes a count from 1 to 1024");
            o.n_threads = (int)n;
        } else if (cli_is(a, "--dtype")) {
            if (strcmp(v, "bf16") == 0)
                o.dtype = NI_DTYPE_BF16;
            else if (strcmp(v, "fp16") == 0 || strcmp(v, "f16") == 0)
                o.dtype = NI_DTYPE_F16;
            else
                return cli_usage_error("--dtype takes bf16 or fp16, not '%s'", v);
        } else if (cli_is(a, "--out")) {
            out_dir = v;
        } else {
            return cli_usage_error("unknown option '%s'", a);
        }
    }
    if (quick) { /* shorter defaults; what was given explicitly stays */
        if (!runs_set) o.runs = 2;
        if (!warmup_set) o.warmup = 1;
        if (!batches_set) {
            size_t keep = 0;
            for (size_t i = 0; i < o.n_batch_sizes; i++)
                if (i % 2 == 0) o.batch_sizes[keep++] = o.batch_sizes[i];
            o.n_batch_sizes = keep;
        }
    }
    if (mkdir_p(out_dir) != 0) {
        fprintf(stderr, "nanoinfer: cannot create %s: %s\n", out_dir, strerror(errno));
        return 1;
    }
    ni_bench_result r;
    ni_status s = ni_bench_run(&o, &r);
    if (s != NI_OK) return cli_runtime_error("bench", s);
    ni_bench_print_table(stdout, &o, &r);
    size_t ran = 0;
    for (size_t i = 0; i < r.n_rows; i++) ran += r.rows[i].error[0] == '\0';
    char path[1100];
    snprintf(path, sizeof path, "%s/bench.json", out_dir);
    s = ni_bench_write_json(path, &o, &r);
    if (s == NI_OK) {
        snprintf(path, sizeof path, "%s/bench.csv", out_dir);
        s = ni_bench_write_csv(path, &r);
    }
    ni_bench_free(&r);
    if (s != NI_OK) return cli_runtime_error("bench", s);
    printf("\nresults: %s/bench.json and %s/bench.csv (%.0f s); plot them with\n"
           "  python3 tools/plot_bench.py %s/bench.json\n",
           out_dir, out_dir, r.wall_s, out_dir);
    if (ran == 0) {
        fprintf(stderr, "nanoinfer: bench: no configuration ran (the table gives each one's "
                        "reason)\n");
        return 1;
    }
    return 0;
}
