/* `nanoinfer logits`: the logits of every position of one token sequence, written as raw
 * little-endian float32, row-major [T][vocab] — the form the model-level checks compare. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/commands.h"

static const char logits_help[] =
    "usage: nanoinfer logits --model M --tokens 1,2,3 --out FILE [options]\n\n"
    "Writes the logits of every position as raw little-endian float32, [T][vocab].\n\n"
    "  --tokens IDS       comma-separated token ids\n"
    "  --out FILE         output file\n";

int cmd_logits(int argc, char **argv) {
    cli_model_args ma;
    cli_model_args_init(&ma);
    ma.preset = NI_PRESET_KV_CACHE; /* logits only: no sampler, no graphs */
    ma.preset_set = 1;
    const char *out_path = NULL, *v;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    int rc = 0;
    for (int i = 0; i < argc && rc == 0; i++) {
        int r = cli_model_arg(&ma, argc, argv, &i);
        if (r < 0) rc = 2;
        if (r != 0) continue;
        if (cli_is(argv[i], "--help") || cli_is(argv[i], "-h")) {
            printf("%s%s", logits_help, cli_model_help);
            free(ids);
            return 0;
        } else if (cli_is(argv[i], "--tokens")) {
            if (!(v = cli_value(argc, argv, &i, "--tokens")))
                rc = 2;
            else if (ids || cli_parse_ids(v, &ids, &n_ids))
                rc = cli_usage_error("--tokens takes one list of ids like 1,2,3");
        } else if (cli_is(argv[i], "--out")) {
            if (!(out_path = cli_value(argc, argv, &i, "--out"))) rc = 2;
        } else {
            rc = cli_usage_error("unknown option '%s'", argv[i]);
        }
    }
    if (rc == 0 && (!ids || !out_path)) rc = cli_usage_error("--tokens and --out are required");
    ni_model *m = NULL;
    ni_engine *e = NULL;
    if (rc == 0) rc = cli_open(&ma, 1, 0, &m, &e);
    float *logits = NULL;
    if (rc == 0) {
        size_t V = ni_model_config(m)->vocab_size;
        logits = malloc(n_ids * V * sizeof *logits);
        ni_status s = logits ? ni_logits(e, ids, n_ids, logits) : NI_ERR_NO_MEMORY;
        if (s != NI_OK) rc = cli_runtime_error("logits", s);
        if (rc == 0) {
            FILE *f = fopen(out_path, "wb");
            size_t put = f ? fwrite(logits, sizeof *logits, n_ids * V, f) : 0;
            if (!f || put != n_ids * V || fclose(f) != 0) {
                fprintf(stderr, "nanoinfer: cannot write %s\n", out_path);
                rc = 1;
            }
        }
    }
    free(logits);
    free(ids);
    ni_engine_destroy(e);
    ni_model_close(m);
    return rc;
}
