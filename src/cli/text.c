/* Text helpers of the text-facing commands (generate, score). */
#include "cli/text.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/args.h"

char *cli_read_file(const char *path, size_t *len) {
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        if (n == cap) {
            char *nb = realloc(buf, (cap *= 2) + 1);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        if (got == 0) break;
        n += got;
    }
    const int failed = ferror(f); /* a directory, an I/O error: not an empty text */
    if (f != stdin) fclose(f);
    if (!buf || failed) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    if (len) *len = n;
    return buf;
}

int cli_open_tokenizer(const char *dir, const char *model, ni_tokenizer **out) {
    char buf[PATH_MAX];
    struct stat sb;
    if (!dir && model) {
        snprintf(buf, sizeof buf, "%s/vocab.json", model);
        if (stat(buf, &sb) == 0) dir = model;
    }
    if (!dir) {
        if (ni_tokenizer_default_dir(buf, sizeof buf) != NI_OK)
            return cli_runtime_error("tokenizer", NI_ERR_INVALID_ARG);
        dir = buf;
    }
    ni_status s = ni_tokenizer_open(dir, out);
    if (s != NI_OK) {
        cli_runtime_error("cannot open the tokenizer", s);
        fprintf(stderr, "nanoinfer: `make deps` fetches the GPT-2 tokenizer into .cache/tokenizer; "
                        "--tokenizer DIR names another\n");
        return 1;
    }
    return 0;
}

ni_status cli_stream_text(ni_tokenizer_stream *st, int32_t id, char marker[CLI_TOKEN_MARKER],
                          const char **text, size_t *len) {
    ni_status s = ni_tokenizer_stream_push(st, id, text, len);
    if (s != NI_ERR_INVALID_ARG) return s;
    /* an id past the tokenizer's table (a model whose vocabulary is padded beyond it): shown,
     * not dropped */
    int n = snprintf(marker, CLI_TOKEN_MARKER, "<|id %d|>", (int)id);
    *text = marker;
    *len = n > 0 ? (size_t)n : 0;
    return NI_OK;
}

char *cli_decode_text(const ni_tokenizer *t, const int32_t *ids, size_t n) {
    ni_tokenizer_stream *st;
    if (ni_tokenizer_stream_new(t, &st) != NI_OK) return NULL;
    size_t cap = 64 + 8 * n, len = 0;
    char *out = malloc(cap);
    for (size_t i = 0; out && i <= n; i++) {
        const char *piece;
        size_t plen;
        char marker[CLI_TOKEN_MARKER];
        ni_status s = i < n ? cli_stream_text(st, ids[i], marker, &piece, &plen)
                            : ni_tokenizer_stream_flush(st, &piece, &plen);
        if (s != NI_OK) {
            free(out);
            out = NULL;
            break;
        }
        if (len + plen + 1 > cap) {
            char *no = realloc(out, cap = 2 * (len + plen + 1));
            if (!no) {
                free(out);
                out = NULL;
                break;
            }
            out = no;
        }
        memcpy(out + len, piece, plen);
        len += plen;
    }
    if (out) out[len] = '\0';
    ni_tokenizer_stream_free(st);
    return out;
}
