/* The token lists both backends run their forward pass over: each token names its sequence
 * (KV-cache slot) and position, and whether its logits are wanted. Prefill lists every prompt
 * token; a decode step lists each live sequence's new token (KV cache) or its whole sequence
 * again (the baseline's recompute). */
#ifndef NI_TOKEN_LIST_H
#define NI_TOKEN_LIST_H

#include "nanoinfer.h"

typedef struct {
    int32_t *tok, *slot, *pos; /* (S*T) the list */
    uint8_t *want;             /* (S*T) token needs logits (the last of its sequence) */
    int32_t *history;          /* (S, T) every sequence's tokens so far */
    size_t *len;               /* (S) */
    int32_t *row_seq;          /* (S) sequence of each logits row, in list order */
    size_t max_seq;            /* T */
} ni_token_list;

/* Lists the prompts; *n_tokens gets the list's length (rows = p->n_seq). */
void ni_token_list_prefill(const ni_token_list *l, const ni_batch *p, size_t *n_tokens);

/* Lists one sequence of len tokens in slot 0, every position wanting logits (the logits
 * command); NI_ERR_CONTEXT when len exceeds max_seq. */
ni_status ni_token_list_all_logits(const ni_token_list *l, const int32_t *tokens, size_t len);

/* Appends last[s] to every live sequence and lists what the step must run (only the new
 * token when kv_cache, else the whole sequence). NI_ERR_CONTEXT when a sequence is full. */
ni_status ni_token_list_decode(const ni_token_list *l, size_t n_seq, const int32_t *last,
                               const uint8_t *live, int kv_cache, size_t *n_tokens, size_t *n_rows);

#endif
