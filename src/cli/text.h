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
/* The text of ids as valid UTF-8 (invalid bytes as U+FFFD); NULL on failure. free() it. */
char *cli_decode_text(const ni_tokenizer *t, const int32_t *ids, size_t n);

#endif
