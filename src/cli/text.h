/* Text helpers of the text-facing commands: reading files, opening the right tokenizer for a
 * model, and decoding ids into printable (valid UTF-8) text. */
#ifndef NI_CLI_TEXT_H
#define NI_CLI_TEXT_H

#include <stddef.h>
#include <stdint.h>

#include "nanoinfer.h"

/* A whole file ("-" is stdin), NUL-terminated; NULL on failure. free() it. */
char *cli_read_file(const char *path, size_t *len);
/* dir if given; else the model directory's vocab.json + merges.txt when it has them; else the
 * default tokenizer directory. Prints the error and returns 1 on failure. */
int cli_open_tokenizer(const char *dir, const char *model, ni_tokenizer **out);
/* The next piece of text of a token stream (ni_tokenizer_stream_push), except that an id the
 * tokenizer does not have (a model vocabulary padded past it) reads "<|id N|>" (held in
 * marker) instead of failing. */
#define CLI_TOKEN_MARKER 24
ni_status cli_stream_text(ni_tokenizer_stream *st, int32_t id, char marker[CLI_TOKEN_MARKER],
                          const char **text, size_t *len);
/* The text of ids as valid UTF-8 (invalid bytes as U+FFFD, ids past the tokenizer's table as
 * "<|id N|>"); NULL on failure. free() it. */
char *cli_decode_text(const ni_tokenizer *t, const int32_t *ids, size_t n);

#endif
