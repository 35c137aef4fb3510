/* `nanoinfer generate`: continues a batch of prompts, given as text (--prompt, --prompt-file,
 * encoded with the GPT-2 tokenizer) or as token ids (--tokens). A single sequence streams to the
 * terminal as it is generated (never half a UTF-8 character); a batch prints each sequence when
 * done; --output json prints one object per sequence (prompt, ids, text, timings). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/commands.h"
#include "cli/text.h"

static const char generate_help[] =
    "usage: nanoinfer generate --model M --prompt TEXT [--prompt TEXT ...] [options]\n"
    "       nanoinfer generate --model M --tokens 1,2,3 [--tokens 4,5 ...] [options]\n\n"
    "Continues each prompt; several prompts make a batch (each its own length).\n\n"
    "  --prompt TEXT         a text prompt (repeat for a batch)\n"
    "  --prompt-file F       a text prompt read from a file ('-' for stdin)\n"
    "  --tokens IDS          a prompt as comma-separated token ids (repeat for a batch)\n"
    "  --num-samples N       run each prompt N times as one batch (default 1)\n"
    "  --tokenizer DIR       encoder.json + vocab.bpe or vocab.json + merges.txt (default: the\n"
    "                        model directory's, else .cache/tokenizer from `make deps`)\n"
    "  --max-new-tokens N    tokens to generate per sequence (default 32)\n"
    "  --greedy              argmax decoding (same as --temperature 0)\n"
    "  --temperature T       softmax temperature (default 1.0; 0 is greedy)\n"
    "  --top-k K             keep the K most likely tokens (default 0: off)\n"
    "  --top-p P             nucleus sampling mass (default 1.0: off)\n"
    "  --min-p P             drop tokens below P times the top probability (default 0: off)\n"
    "  --seed N              sampling seed (default 1337); the same seed gives the same tokens\n"
    "  --ignore-eos          keep going after <|endoftext|>\n"
    "  --output F            text (default) or json: one object per sequence\n";

typedef struct {
    size_t n_seq, max_new;
    int32_t *tokens;             /* (n_seq, max_new) */
    size_t *count;               /* (n_seq) */
    ni_tokenizer_stream *stream; /* streams sequence 0 to stdout when set */
} collected;

static int collect(void *user, size_t seq, size_t step, int32_t token) {
    collected *c = user;
    (void)step;
    if (c->count[seq] < c->max_new) c->tokens[seq * c->max_new + c->count[seq]++] = token;
    if (c->stream && seq == 0) {
        const char *text;
        size_t len;
        char marker[CLI_TOKEN_MARKER];
        if (cli_stream_text(c->stream, token, marker, &text, &len) == NI_OK && len) {
            fwrite(text, 1, len, stdout);
            fflush(stdout);
        }
    }
    return 0;
}

typedef struct {
    cli_model_args model;
    int32_t **prompts;
    size_t *lens;
    size_t n_seq;
    char **texts; /* text prompts, encoded once the tokenizer is open */
    size_t n_texts;
    size_t num_samples;
    const char *tokenizer_dir;
    ni_sampling sampling;
    int json;
} generate_args;

static int add_prompt(generate_args *g, int32_t *ids, size_t n) {
    int32_t **np = realloc(g->prompts, (g->n_seq + 1) * sizeof *np);
    if (np) g->prompts = np;
    size_t *nl = np ? realloc(g->lens, (g->n_seq + 1) * sizeof *nl) : NULL;
    if (nl) g->lens = nl;
    if (!np || !nl) return -1;
    g->prompts[g->n_seq] = ids;
    g->lens[g->n_seq++] = n;
    return 0;
}

static int add_text(generate_args *g, char *text) {
    char **nt = realloc(g->texts, (g->n_texts + 1) * sizeof *nt);
    if (!nt) return -1;
    g->texts = nt;
    g->texts[g->n_texts++] = text;
    return 0;
}

static int parse(generate_args *g, int argc, char **argv) {
    const char *v;
    for (int i = 0; i < argc; i++) {
        int r = cli_model_arg(&g->model, argc, argv, &i);
        if (r < 0) return 2;
        if (r > 0) continue;
        const char *a = argv[i];
        if (cli_is(a, "--help") || cli_is(a, "-h")) {
            printf("%s%s", generate_help, cli_model_help);
            return -1;
        } else if (cli_is(a, "--tokens")) {
            int32_t *ids;
            size_t n;
            if (!(v = cli_value(argc, argv, &i, "--tokens"))) return 2;
            if (cli_parse_ids(v, &ids, &n))
                return cli_usage_error("--tokens takes ids like 1,2,3, not '%s'", v);
            if (add_prompt(g, ids, n)) return cli_usage_error("out of memory");
        } else if (cli_is(a, "--prompt")) {
            if (!(v = cli_value(argc, argv, &i, a))) return 2;
            char *t = strdup(v);
            if (!t || add_text(g, t)) return cli_usage_error("out of memory");
        } else if (cli_is(a, "--prompt-file")) {
            if (!(v = cli_value(argc, argv, &i, a))) return 2;
            size_t n;
            char *t = cli_read_file(v, &n);
            if (!t) {
                fprintf(stderr, "nanoinfer: cannot read %s\n", v);
                return 1;
            }
            if (add_text(g, t)) return cli_usage_error("out of memory");
        } else if (cli_is(a, "--num-samples")) {
            if (!(v = cli_value(argc, argv, &i, a)) || cli_parse_size(v, &g->num_samples) ||
                g->num_samples == 0 || g->num_samples > 4096)
                return cli_usage_error("--num-samples takes a count from 1 to 4096");
        } else if (cli_is(a, "--tokenizer")) {
            if (!(g->tokenizer_dir = cli_value(argc, argv, &i, a))) return 2;
        } else if (cli_is(a, "--max-new-tokens")) {
            if (!(v = cli_value(argc, argv, &i, a)) ||
                cli_parse_size(v, &g->sampling.max_new_tokens))
                return cli_usage_error("--max-new-tokens takes a count");
        } else if (cli_is(a, "--greedy")) {
            if (cli_flag_check(a)) return 2;
            g->sampling.temperature = 0.0f;
        } else if (cli_is(a, "--temperature")) {
            if (!(v = cli_value(argc, argv, &i, a)) ||
                cli_parse_float(v, &g->sampling.temperature) || g->sampling.temperature < 0.0f)
                return cli_usage_error("--temperature takes a number >= 0");
        } else if (cli_is(a, "--top-k")) {
            if (!(v = cli_value(argc, argv, &i, a)) || cli_parse_size(v, &g->sampling.top_k))
                return cli_usage_error("--top-k takes a count");
        } else if (cli_is(a, "--top-p")) {
            if (!(v = cli_value(argc, argv, &i, a)) || cli_parse_float(v, &g->sampling.top_p) ||
                !(g->sampling.top_p > 0.0f && g->sampling.top_p <= 1.0f))
                return cli_usage_error("--top-p takes a number in (0, 1]");
        } else if (cli_is(a, "--min-p")) {
            if (!(v = cli_value(argc, argv, &i, a)) || cli_parse_float(v, &g->sampling.min_p) ||
                g->sampling.min_p < 0.0f || g->sampling.min_p > 1.0f)
                return cli_usage_error("--min-p takes a number in [0, 1]");
        } else if (cli_is(a, "--seed")) {
            if (!(v = cli_value(argc, argv, &i, a)) || cli_parse_u64(v, &g->sampling.seed))
                return cli_usage_error("--seed takes a number");
        } else if (cli_is(a, "--ignore-eos")) {
            if (cli_flag_check(a)) return 2;
            g->sampling.ignore_eos = 1;
        } else if (cli_is(a, "--output")) {
            if (!(v = cli_value(argc, argv, &i, a))) return 2;
            if (strcmp(v, "json") == 0)
                g->json = 1;
            else if (strcmp(v, "text") == 0)
                g->json = 0;
            else
                return cli_usage_error("--output takes text or json, not '%s'", v);
        } else {
            return cli_usage_error("unknown option '%s'", a);
        }
    }
    if (g->n_seq + g->n_texts == 0)
        return cli_usage_error("give at least one prompt with --prompt, --prompt-file or --tokens");
    if (g->n_seq && g->n_texts) return cli_usage_error("give prompts as text or as ids, not both");
    return 0;
}

static void print_results(const generate_args *g, const collected *c, const ni_stats *st,
                          const ni_tokenizer *tok) {
    double decode_tok_s = st->decode_ms > 0.0 && st->decode_steps > 0
                              ? (double)(st->generated_tokens - g->n_seq) / (st->decode_ms / 1e3)
                              : 0.0;
    for (size_t s = 0; s < g->n_seq; s++) {
        const int32_t *t = c->tokens + s * c->max_new;
        if (g->json) {
            json_t *o = json_object(), *pr = json_array(), *tk = json_array();
            for (size_t i = 0; i < g->lens[s]; i++)
                json_array_append_new(pr, json_integer(g->prompts[s][i]));
            for (size_t i = 0; i < c->count[s]; i++) json_array_append_new(tk, json_integer(t[i]));
            json_object_set_new(o, "seq", json_integer((json_int_t)s));
            json_object_set_new(o, "prompt", pr);
            json_object_set_new(o, "tokens", tk);
            if (tok) {
                char *text = cli_decode_text(tok, t, c->count[s]);
                if (text) json_object_set_new(o, "text", json_string(text));
                free(text);
            }
            json_object_set_new(o, "ttft_ms", json_real(st->ttft_ms));
            json_object_set_new(o, "decode_tok_s", json_real(decode_tok_s));
            json_object_set_new(o, "dtype", json_string(cli_dtype_name(&g->model)));
            char *line = json_dumps(o, JSON_COMPACT);
            if (line) puts(line);
            free(line);
            json_decref(o);
        } else if (tok && c->stream) {
            putchar('\n'); /* sequence 0 was streamed */
        } else if (tok) {
            char *prompt = cli_decode_text(tok, g->prompts[s], g->lens[s]);
            char *text = cli_decode_text(tok, t, c->count[s]);
            printf("--- sample %zu ---\n%s%s\n", s, prompt ? prompt : "", text ? text : "");
            free(prompt);
            free(text);
        } else {
            printf("[%zu]", s);
            for (size_t i = 0; i < c->count[s]; i++) printf("%s%d", i ? "," : " ", (int)t[i]);
            putchar('\n');
        }
    }
    fflush(stdout);
    if (!g->json)
        fprintf(stderr, "ttft %.2f ms, decode %.1f tokens/s (batch %zu, %s)\n", st->ttft_ms,
                decode_tok_s, g->n_seq, cli_dtype_name(&g->model));
}

int cmd_generate(int argc, char **argv) {
    generate_args g;
    memset(&g, 0, sizeof g);
    cli_model_args_init(&g.model);
    g.sampling =
        (ni_sampling){.temperature = 1.0f, .top_p = 1.0f, .seed = 1337, .max_new_tokens = 32};
    g.num_samples = 1;
    int rc = parse(&g, argc, argv);
    ni_model *m = NULL;
    ni_engine *e = NULL;
    ni_tokenizer *tok = NULL;
    collected c = {0};
    if (rc == 0 && g.n_texts) {
        /* the model directory's own tokenizer first, then the default */
        rc = cli_open_tokenizer(g.tokenizer_dir, g.model.model, &tok);
        for (size_t i = 0; rc == 0 && i < g.n_texts; i++) {
            int32_t *ids;
            size_t n;
            ni_status s = ni_tokenizer_encode(tok, g.texts[i], strlen(g.texts[i]), 1, &ids, &n);
            if (s != NI_OK)
                rc = cli_runtime_error("cannot encode the prompt", s);
            else if (n == 0) {
                free(ids);
                rc = cli_usage_error("prompt %zu is empty", i);
            } else if (add_prompt(&g, ids, n))
                rc = cli_usage_error("out of memory");
        }
    }
    for (size_t rep = 1, base = g.n_seq; rc == 0 && rep < g.num_samples; rep++)
        for (size_t i = 0; rc == 0 && i < base; i++) {
            int32_t *ids = malloc(g.lens[i] * sizeof *ids);
            if (!ids || add_prompt(&g, ids, g.lens[i])) {
                free(ids);
                rc = cli_usage_error("out of memory");
            } else
                memcpy(ids, g.prompts[i], g.lens[i] * sizeof *ids);
        }
    if (rc == 0) {
        size_t max_seq = 0;
        for (size_t s = 0; s < g.n_seq; s++) {
            /* saturating: an absurd count must reach the context check, not wrap around */
            const size_t need = g.sampling.max_new_tokens > SIZE_MAX - g.lens[s]
                                    ? SIZE_MAX
                                    : g.lens[s] + g.sampling.max_new_tokens;
            if (need > max_seq) max_seq = need;
        }
        /* Sized to the request; a request beyond the model's context is refused here. */
        rc = cli_open(&g.model, g.n_seq, max_seq, &m, &e);
    }
    if (rc == 0) {
        c.n_seq = g.n_seq;
        c.max_new = g.sampling.max_new_tokens;
        c.tokens = calloc(g.n_seq * (c.max_new ? c.max_new : 1), sizeof *c.tokens);
        c.count = calloc(g.n_seq, sizeof *c.count);
        ni_batch b = {g.n_seq, (const int32_t *const *)g.prompts, g.lens};
        /* one text sequence streams: its prompt first, then tokens as they come */
        if (tok && g.n_seq == 1 && !g.json && ni_tokenizer_stream_new(tok, &c.stream) == NI_OK) {
            char *prompt = cli_decode_text(tok, g.prompts[0], g.lens[0]);
            fputs(prompt ? prompt : "", stdout);
            fflush(stdout);
            free(prompt);
        }
        ni_status s =
            (c.tokens && c.count) ? ni_generate(e, &b, &g.sampling, collect, &c) : NI_ERR_NO_MEMORY;
        if (s != NI_OK) {
            rc = cli_runtime_error("generate", s);
        } else {
            ni_stats st;
            ni_engine_stats(e, &st);
            if (c.stream) {
                const char *text;
                size_t len;
                if (ni_tokenizer_stream_flush(c.stream, &text, &len) == NI_OK)
                    fwrite(text, 1, len, stdout);
            }
            print_results(&g, &c, &st, tok);
        }
    }
    ni_tokenizer_stream_free(c.stream);
    ni_tokenizer_close(tok);
    for (size_t i = 0; i < g.n_texts; i++) free(g.texts[i]);
    free(g.texts);
    free(c.tokens);
    free(c.count);
    for (size_t s = 0; s < g.n_seq; s++) free(g.prompts[s]);
    free(g.prompts);
    free(g.lens);
    ni_engine_destroy(e);
    ni_model_close(m);
    return rc < 0 ? 0 : rc;
}
