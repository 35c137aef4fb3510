/* Building the token lists of prefill and decode steps, shared by the backends. */
#include "engine/token_list.h"

#include <string.h>

#include "common/error.h"

static size_t list_sequence(const ni_token_list *l, size_t s, size_t from, size_t n) {
    for (size_t t = from; t < l->len[s]; t++, n++) {
        l->tok[n] = l->history[s * l->max_seq + t];
        l->slot[n] = (int32_t)s;
        l->pos[n] = (int32_t)t;
        l->want[n] = t + 1 == l->len[s];
    }
    return n;
}

void ni_token_list_prefill(const ni_token_list *l, const ni_batch *p, size_t *n_tokens) {
    size_t n = 0;
    for (size_t s = 0; s < p->n_seq; s++) {
        l->len[s] = p->lens[s];
        l->row_seq[s] = (int32_t)s;
        memcpy(l->history + s * l->max_seq, p->tokens[s], p->lens[s] * sizeof(int32_t));
        n = list_sequence(l, s, 0, n);
    }
    *n_tokens = n;
}

ni_status ni_token_list_decode(const ni_token_list *l, size_t n_seq, const int32_t *last,
                               const uint8_t *live, int kv_cache, size_t *n_tokens,
                               size_t *n_rows) {
    size_t n = 0, rows = 0;
    for (size_t s = 0; s < n_seq; s++) {
        if (!live[s]) continue;
        if (l->len[s] >= l->max_seq)
            return ni_fail(NI_ERR_CONTEXT, "sequence %zu reached the engine's %zu tokens", s,
                           l->max_seq);
        l->history[s * l->max_seq + l->len[s]] = last[s];
        l->len[s]++;
        n = list_sequence(l, s, kv_cache ? l->len[s] - 1 : 0, n);
        l->row_seq[rows++] = (int32_t)s;
    }
    *n_tokens = n;
    *n_rows = rows;
    return NI_OK;
}

ni_status ni_token_list_all_logits(const ni_token_list *l, const int32_t *tokens, size_t len) {
    if (len > l->max_seq)
        return ni_fail(NI_ERR_CONTEXT, "%zu tokens exceed the engine's %zu", len, l->max_seq);
    for (size_t t = 0; t < len; t++) {
        l->tok[t] = tokens[t];
        l->slot[t] = 0;
        l->pos[t] = (int32_t)t;
        l->want[t] = 1;
    }
    return NI_OK;
}
