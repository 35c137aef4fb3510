/* The streaming decoder behind `generate`: token ids arrive one at a time and the text that is
 * safe to print comes out. A character split across tokens is held until its last byte comes,
 * and bytes that can never form a character come out as U+FFFD, so a terminal only ever sees
 * valid UTF-8 — the same text as decoding all ids at once with errors="replace". */
#include "tokenizer/internal.h"

#include "common/error.h"

#include <stdlib.h>

struct ni_tokenizer_stream {
    const ni_tokenizer *t;
    ni_utf8_state st;
    uint8_t *out; /* the text of the last push or flush */
    size_t cap;
};

ni_status ni_tokenizer_stream_new(const ni_tokenizer *t, ni_tokenizer_stream **out) {
    if (!t || !out) return ni_fail(NI_ERR_INVALID_ARG, "ni_tokenizer_stream_new: NULL argument");
    ni_tokenizer_stream *s = calloc(1, sizeof *s);
    if (s) {
        s->cap = 256;
        s->out = malloc(s->cap);
    }
    if (!s || !s->out) {
        free(s);
        return ni_fail(NI_ERR_NO_MEMORY, "tokenizer: out of memory");
    }
    s->t = t;
    *out = s;
    return NI_OK;
}

ni_status ni_tokenizer_stream_push(ni_tokenizer_stream *s, int32_t id, const char **text,
                                   size_t *len) {
    if (!s || !text || !len)
        return ni_fail(NI_ERR_INVALID_ARG, "ni_tokenizer_stream_push: NULL argument");
    const char *bytes;
    size_t n;
    NI_TRY(ni_tokenizer_token_bytes(s->t, id, &bytes, &n));
    size_t need = NI_UTF8_FEED_MAX(n) + 1;
    if (need > s->cap) {
        uint8_t *o = realloc(s->out, need);
        if (!o) return ni_fail(NI_ERR_NO_MEMORY, "tokenizer: out of memory");
        s->out = o;
        s->cap = need;
    }
    size_t k = ni_utf8_feed(&s->st, (const uint8_t *)bytes, n, s->out);
    s->out[k] = '\0';
    *text = (const char *)s->out;
    *len = k;
    return NI_OK;
}

ni_status ni_tokenizer_stream_flush(ni_tokenizer_stream *s, const char **text, size_t *len) {
    if (!s || !text || !len)
        return ni_fail(NI_ERR_INVALID_ARG, "ni_tokenizer_stream_flush: NULL argument");
    size_t k = ni_utf8_finish(&s->st, s->out); /* cap >= 256 > 3 */
    s->out[k] = '\0';
    *text = (const char *)s->out;
    *len = k;
    return NI_OK;
}

void ni_tokenizer_stream_free(ni_tokenizer_stream *s) {
    if (!s) return;
    free(s->out);
    free(s);
}
