/* Helpers shared by the tests: cmocka includes, fixture paths, file reading, tolerances. */
#ifndef NI_TEST_UTIL_H
#define NI_TEST_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "nanoinfer.h"

/* Exit code that ctest reports as "skipped". */
#define NI_TEST_SKIP 77

/* NI_TEST_FILTER (a cmocka name pattern such as "test_bench") runs only the matching tests of
 * the program: profiling or timing one part without the rest. */
void ni_test_filter_from_env(void);

/* fixture path into buf: $NI_FIXTURES_DIR (or the source tree's tests/fixtures) / rel. */
void ni_test_path(char *buf, size_t cap, const char *rel);
/* Reads a whole file; NULL if it cannot. *len gets the size. free() the result. */
char *ni_test_read_file(const char *path, size_t *len);
/* Writes a whole file; 0 on success. */
int ni_test_write_file(const char *path, const void *data, size_t len);
/* A fresh directory under /tmp for one test (mkdtemp); returns the path in buf. */
void ni_test_tmpdir(char *buf, size_t cap);
/* Runs a shell command and captures stdout (NULL on failure to start); *status gets the exit
 * status. free() the result. */
char *ni_test_run(const char *cmd, int *status);

/* Tokens of up to 8 sequences of up to 64 tokens, filled by ni_test_collect as an ni_token_cb
 * (which also checks that each sequence's tokens come in step order). Zero it before use. */
typedef struct {
    int32_t tok[8][64];
    size_t n[8];
} ni_test_tokens;
int ni_test_collect(void *user, size_t seq, size_t step, int32_t token);

#endif
