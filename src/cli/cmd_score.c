/* `nanoinfer score`: the mean negative log-likelihood and perplexity of a text under a model,
 * the standard check that real weights load right. The text is preceded by <|endoftext|> so
 * that every text token is scored; a text longer than the context is scored in sliding
 * windows of the context with a stride of half of it, each token scored once with the longest
 * context the windows give it (tools/make_fixtures.py computes the same with transformers). */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/commands.h"
#include "cli/text.h"

static const char score_help[] =
    "usage: nanoinfer score --model M --text-file F [options]\n\n"
    "Prints the mean negative log-likelihood (nats per token) and the perplexity of a text.\n\n"
    "  --text-file F      the text ('-' for stdin)\n"
    "  --window N         tokens per window (default: the model's context)\n"
    "  --tokenizer DIR    tokenizer files (default: the model directory's, else .cache)\n"
    "  --output F         text (default) or json\n";

/* -log softmax(row)[target] in double. */
static double token_nll(const float *row, size_t V, int32_t target) {
    double mx = row[0];
    for (size_t i = 1; i < V; i++)
        if (row[i] > mx) mx = row[i];
    double sum = 0;
    for (size_t i = 0; i < V; i++) sum += exp((double)row[i] - mx);
    return mx + log(sum) - (double)row[target];
}

int cmd_score(int argc, char **argv) {
    cli_model_args ma;
    cli_model_args_init(&ma);
    ma.preset = NI_PRESET_KV_CACHE; /* logits only: no sampler, no graphs */
    ma.preset_set = 1;
    const char *file = NULL, *tok_dir = NULL, *v;
    size_t window = 0;
    int json = 0;
    for (int i = 0; i < argc; i++) {
        int r = cli_model_arg(&ma, argc, argv, &i);
        if (r < 0) return 2;
        if (r > 0) continue;
        const char *a = argv[i];
        if (cli_is(a, "--help") || cli_is(a, "-h")) {
            printf("%s%s", score_help, cli_model_help);
            return 0;
        } else if (cli_is(a, "--text-file")) {
            if (!(file = cli_value(argc, argv, &i, a))) return 2;
        } else if (cli_is(a, "--tokenizer")) {
            if (!(tok_dir = cli_value(argc, argv, &i, a))) return 2;
        } else if (cli_is(a, "--window")) {
            if (!(v = cli_value(argc, argv, &i, a)) || cli_parse_size(v, &window) || window < 2)
                return cli_usage_error("--window takes a count >= 2");
        } else if (cli_is(a, "--output")) {
            if (!(v = cli_value(argc, argv, &i, a))) return 2;
            if (strcmp(v, "json") != 0 && strcmp(v, "text") != 0)
                return cli_usage_error("--output takes text or json");
            json = strcmp(v, "json") == 0;
        } else {
            return cli_usage_error("unknown option '%s'", a);
        }
    }
    if (!file) return cli_usage_error("--text-file is required");
    if (!ma.model) return cli_usage_error("--model is required");
    size_t text_len;
    char *text = cli_read_file(file, &text_len);
    if (!text) {
        fprintf(stderr, "nanoinfer: cannot read %s\n", file);
        return 1;
    }
    ni_tokenizer *tok = NULL;
    ni_model *m = NULL;
    ni_engine *e = NULL;
    int32_t *ids = NULL, *seq = NULL;
    float *logits = NULL;
    size_t n_ids = 0;
    int rc = cli_open_tokenizer(tok_dir, ma.model, &tok);
    if (rc == 0) {
        ni_status s = ni_tokenizer_encode(tok, text, text_len, 0, &ids, &n_ids);
        if (s != NI_OK)
            rc = cli_runtime_error("cannot encode the text", s);
        else if (n_ids == 0)
            rc = cli_usage_error("%s holds no text to score", file);
    }
    ni_model *probe = NULL;
    if (rc == 0) rc = cli_open(&ma, 0, 0, &probe, NULL);
    if (rc == 0) {
        size_t n_ctx = ni_model_config(probe)->n_ctx;
        if (window == 0 || window > n_ctx) window = n_ctx;
        ni_model_close(probe);
        rc = cli_open(&ma, 1, window, &m, &e);
    }
    double total = 0;
    size_t L = n_ids + 1, n_windows = 0;
    if (rc == 0) {
        const ni_config *c = ni_model_config(m);
        seq = malloc(L * sizeof *seq);
        logits = malloc(window * c->vocab_size * sizeof *logits);
        if (!seq || !logits) rc = cli_usage_error("out of memory");
        if (rc == 0) {
            seq[0] = c->eos_id;
            memcpy(seq + 1, ids, n_ids * sizeof *ids);
        }
        size_t stride = window / 2, prev_end = 1;
        for (size_t start = 0; rc == 0; start += stride) {
            size_t end = start + window < L ? start + window : L;
            ni_status s = ni_logits(e, seq + start, end - start, logits);
            if (s != NI_OK) {
                rc = cli_runtime_error("logits", s);
                break;
            }
            n_windows++;
            for (size_t p = (start + 1 > prev_end ? start + 1 : prev_end); p < end; p++)
                total += token_nll(logits + (p - 1 - start) * c->vocab_size, c->vocab_size, seq[p]);
            prev_end = end;
            if (end == L) break;
        }
    }
    if (rc == 0) {
        double mean = total / (double)(L - 1);
        if (json) {
            json_t *o = json_pack("{s:s, s:I, s:I, s:I, s:f, s:f, s:s}", "file", file, "tokens",
                                  (json_int_t)n_ids, "window", (json_int_t)window, "windows",
                                  (json_int_t)n_windows, "mean_nll", mean, "ppl", exp(mean),
                                  "dtype", cli_dtype_name(&ma));
            char *line = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(10));
            if (line) puts(line);
            free(line);
            json_decref(o);
        } else {
            printf("tokens      %zu (scored after <|endoftext|>, %zu window%s of %zu)\n", n_ids,
                   n_windows, n_windows == 1 ? "" : "s", window);
            printf("mean NLL    %.6f nats/token\n", mean);
            printf("perplexity  %.4f\n", exp(mean));
            printf("dtype       %s\n", cli_dtype_name(&ma));
        }
    }
    free(logits);
    free(seq);
    free(ids);
    free(text);
    ni_engine_destroy(e);
    ni_model_close(m);
    ni_tokenizer_close(tok);
    return rc;
}
