/* `nanoinfer tokenize` (text -> GPT-2 token ids, plus a --bench mode measuring the encoder's
 * single-thread throughput) and `nanoinfer detokenize` (ids -> the exact bytes). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/args.h"
#include "cli/commands.h"

static const char tokenize_help[] =
    "usage: nanoinfer tokenize [options]           (text from stdin)\n"
    "       nanoinfer tokenize --bench FILE [--runs N]\n\n"
    "Encodes text to GPT-2 token ids, identical to tiktoken's gpt2 encoding.\n\n"
    "  --text T           encode T instead of reading standard input\n"
    "  --file F           encode the bytes of file F instead of standard input\n"
    "  --allow-special    <|endoftext|> in the text becomes its id (default: ordinary text,\n"
    "                     as tiktoken's encode_ordinary)\n"
    "  --output FORMAT    text: ids separated by spaces on one line (default); json: an array\n"
    "  --tokenizer DIR    encoder.json + vocab.bpe, or vocab.json + merges.txt (default:\n"
    "                     $NANOINFER_TOKENIZER, else .cache/tokenizer of the build's repository,\n"
    "                     else ./.cache/tokenizer)\n"
    "  --bench FILE       measure encode_ordinary throughput on FILE (MB/s, 1 MB = 10^6 bytes,\n"
    "                     one thread, word cache empty at the start of each run) and decode's\n"
    "  --runs N           timed runs of --bench (default 5); the median and best are printed\n";

static const char detokenize_help[] =
    "usage: nanoinfer detokenize [options]         (ids from stdin)\n\n"
    "Decodes GPT-2 token ids back to the exact bytes of the text.\n\n"
    "  --ids LIST         decode LIST (for example 15496,995) instead of standard input, where\n"
    "                     ids are separated by spaces, commas or newlines, or form a JSON array\n"
    "  --tokenizer DIR    as for tokenize (default: $NANOINFER_TOKENIZER, else .cache/tokenizer\n"
    "                     of the build's repository, else ./.cache/tokenizer)\n";

/* Reads all of f; NULL when out of memory or on a read error. */
static char *read_all(FILE *f, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        char *nb = realloc(buf, 2 * cap + 1);
        if (!nb) {
            free(buf);
            return NULL;
        }
        buf = nb;
        cap *= 2;
    }
    if (!buf || ferror(f)) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static char *read_path(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "nanoinfer: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    char *buf = read_all(f, len);
    fclose(f);
    if (!buf) fprintf(stderr, "nanoinfer: %s: cannot read\n", path);
    return buf;
}

static int open_tokenizer(const char *dir, ni_tokenizer **t) {
    char def[4096];
    if (!dir) {
        ni_status s = ni_tokenizer_default_dir(def, sizeof def);
        if (s != NI_OK) return cli_runtime_error("tokenizer", s);
        dir = def;
    }
    ni_status s = ni_tokenizer_open(dir, t);
    return s == NI_OK ? 0 : cli_runtime_error("cannot load the tokenizer", s);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Throughput of encode_ordinary and decode on one file. The tokenizer is reopened before each
 * run so that its word cache starts empty, as tiktoken (which has none) always does. */
static int bench(const char *dir, const char *path, size_t runs) {
    size_t len;
    char *text = read_path(path, &len);
    if (!text) return 1;
    double *enc = malloc(runs * sizeof *enc), *dec = malloc(runs * sizeof *dec);
    size_t n_tokens = 0;
    int rc = enc && dec ? 0 : 1;
    for (size_t r = 0; r < runs && rc == 0; r++) {
        ni_tokenizer *t;
        if ((rc = open_tokenizer(dir, &t)) != 0) break;
        int32_t *ids;
        char *back;
        size_t n, back_len;
        double t0 = now_s();
        ni_status s = ni_tokenizer_encode(t, text, len, 0, &ids, &n);
        double t1 = now_s();
        if (s != NI_OK) {
            rc = cli_runtime_error("encode", s);
        } else {
            s = ni_tokenizer_decode(t, ids, n, &back, &back_len);
            double t2 = now_s();
            if (s != NI_OK) {
                rc = cli_runtime_error("decode", s);
            } else {
                if (back_len != len || memcmp(back, text, len) != 0) {
                    fprintf(stderr, "nanoinfer: bench: decode(encode(text)) != text\n");
                    rc = 1;
                }
                free(back);
            }
            enc[r] = (double)len / 1e6 / (t1 - t0);
            dec[r] = (double)len / 1e6 / (t2 - t1);
            n_tokens = n;
            free(ids);
        }
        ni_tokenizer_close(t);
    }
    if (rc == 0) {
        qsort(enc, runs, sizeof *enc, cmp_double);
        qsort(dec, runs, sizeof *dec, cmp_double);
        printf("file     %s (%zu bytes, %zu tokens, %.2f bytes/token)\n", path, len, n_tokens,
               n_tokens ? (double)len / (double)n_tokens : 0.0);
        printf("encode   %.2f MB/s median, %.2f MB/s best of %zu runs (encode_ordinary, one "
               "thread)\n",
               enc[runs / 2], enc[runs - 1], runs);
        printf("decode   %.2f MB/s median\n", dec[runs / 2]);
    }
    free(enc);
    free(dec);
    free(text);
    return rc;
}

int cmd_tokenize(int argc, char **argv) {
    const char *text = NULL, *file = NULL, *dir = NULL, *bench_file = NULL, *v;
    int allow_special = 0, json = 0;
    size_t runs = 5;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is(a, "--help") || cli_is(a, "-h")) {
            fputs(tokenize_help, stdout);
            return 0;
        } else if (cli_is(a, "--allow-special")) {
            allow_special = 1;
        } else if (cli_is(a, "--text")) {
            if (!(text = cli_value(argc, argv, &i, "--text"))) return 2;
        } else if (cli_is(a, "--file")) {
            if (!(file = cli_value(argc, argv, &i, "--file"))) return 2;
        } else if (cli_is(a, "--tokenizer")) {
            if (!(dir = cli_value(argc, argv, &i, "--tokenizer"))) return 2;
        } else if (cli_is(a, "--bench")) {
            if (!(bench_file = cli_value(argc, argv, &i, "--bench"))) return 2;
        } else if (cli_is(a, "--runs")) {
            if (!(v = cli_value(argc, argv, &i, "--runs"))) return 2;
            if (cli_parse_size(v, &runs) || runs == 0 || runs > 1000)
                return cli_usage_error("--runs takes a count from 1 to 1000, not '%s'", v);
        } else if (cli_is(a, "--output")) {
            if (!(v = cli_value(argc, argv, &i, "--output"))) return 2;
            if (strcmp(v, "json") == 0)
                json = 1;
            else if (strcmp(v, "text") == 0)
                json = 0;
            else
                return cli_usage_error("--output takes text or json, not '%s'", v);
        } else {
            return cli_usage_error("tokenize: unknown option '%s'", a);
        }
    }
    if (text && file) return cli_usage_error("tokenize: --text and --file exclude each other");
    if (bench_file) return bench(dir, bench_file, runs);

    size_t len;
    char *owned = NULL;
    if (text) {
        len = strlen(text);
    } else {
        owned = file ? read_path(file, &len) : read_all(stdin, &len);
        if (!owned) {
            if (!file) fprintf(stderr, "nanoinfer: tokenize: cannot read standard input\n");
            return 1;
        }
        text = owned;
    }
    ni_tokenizer *t;
    int rc = open_tokenizer(dir, &t);
    if (rc) {
        free(owned);
        return rc;
    }
    int32_t *ids;
    size_t n;
    ni_status s = ni_tokenizer_encode(t, text, len, allow_special, &ids, &n);
    if (s != NI_OK) {
        rc = cli_runtime_error("tokenize", s);
    } else {
        if (json) putchar('[');
        for (size_t i = 0; i < n; i++) printf(i ? (json ? ", %ld" : " %ld") : "%ld", (long)ids[i]);
        if (json) putchar(']');
        putchar('\n'); /* a failed write: main() reports it and exits 1 */
        free(ids);
    }
    ni_tokenizer_close(t);
    free(owned);
    return rc;
}

/* Ids separated by spaces, commas or newlines, or a JSON array of them. Returns 0, or -1 with
 * the message in err. */
static int parse_ids(const char *s, int32_t **ids, size_t *n, char *err, size_t err_cap) {
    size_t cap = 64, k = 0;
    int32_t *v = malloc(cap * sizeof *v);
    if (!v) return snprintf(err, err_cap, "out of memory"), -1;
    const char *p = s;
    int bracket = 0, closed = 0;
#define IS_SEP(c) ((c) == ' ' || (c) == '\t' || (c) == '\n' || (c) == '\r' || (c) == ',')
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    if (*p == '[') bracket = 1, p++;
    for (;;) {
        while (IS_SEP(*p)) p++;
        if (!*p) break;
        if (*p == ']' && bracket && !closed) {
            closed = 1;
            p++;
            continue;
        }
        const char *q = p, *e = p;
        long long x = 0;
        for (; *q >= '0' && *q <= '9'; q++)
            if (x <= INT32_MAX) x = 10 * x + (*q - '0');
        while (*e && !IS_SEP(*e)) e++;
        int w = (int)(e - p < 40 ? e - p : 40);
        const char *why = NULL;
        if (closed)
            why = "text after the closing ']'";
        else if (q == p || (*q && !IS_SEP(*q) && *q != ']'))
            why = "not a token id";
        else if (x > INT32_MAX)
            why = "out of range";
        if (why) {
            snprintf(err, err_cap, "'%.*s': %s", w, p, why);
            free(v);
            return -1;
        }
        if (k == cap) {
            int32_t *nv = realloc(v, (cap *= 2) * sizeof *v);
            if (!nv) {
                free(v);
                return snprintf(err, err_cap, "out of memory"), -1;
            }
            v = nv;
        }
        v[k++] = (int32_t)x;
        p = q;
    }
#undef IS_SEP
    if (bracket && !closed) {
        free(v);
        return snprintf(err, err_cap, "a JSON array without its closing ']'"), -1;
    }
    *ids = v;
    *n = k;
    return 0;
}

int cmd_detokenize(int argc, char **argv) {
    const char *list = NULL, *dir = NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is(a, "--help") || cli_is(a, "-h")) {
            fputs(detokenize_help, stdout);
            return 0;
        } else if (cli_is(a, "--ids")) {
            if (!(list = cli_value(argc, argv, &i, "--ids"))) return 2;
        } else if (cli_is(a, "--tokenizer")) {
            if (!(dir = cli_value(argc, argv, &i, "--tokenizer"))) return 2;
        } else {
            return cli_usage_error("detokenize: unknown option '%s'", a);
        }
    }
    char *input = NULL, err[128];
    int32_t *ids = NULL;
    size_t n = 0;
    if (list) {
        if (parse_ids(list, &ids, &n, err, sizeof err) != 0)
            return cli_usage_error("detokenize: --ids: %s", err);
    } else {
        size_t len;
        if (!(input = read_all(stdin, &len))) {
            fprintf(stderr, "nanoinfer: detokenize: cannot read standard input\n");
            return 1;
        }
        if (strlen(input) != len || parse_ids(input, &ids, &n, err, sizeof err) != 0) {
            fprintf(stderr, "nanoinfer: detokenize: %s\n",
                    strlen(input) != len ? "standard input holds a NUL byte" : err);
            free(input);
            return 1;
        }
        free(input);
    }
    ni_tokenizer *t;
    int rc = open_tokenizer(dir, &t);
    if (rc == 0) {
        char *text;
        size_t len;
        ni_status s = ni_tokenizer_decode(t, ids, n, &text, &len);
        if (s != NI_OK) {
            rc = cli_runtime_error("detokenize", s);
        } else {
            fwrite(text, 1, len, stdout); /* a failed write: main() reports it and exits 1 */
            free(text);
        }
        ni_tokenizer_close(t);
    }
    free(ids);
    return rc;
}
