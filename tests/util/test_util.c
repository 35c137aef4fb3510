/* Helpers shared by the tests. */
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

void ni_test_path(char *buf, size_t cap, const char *rel) {
    /* the environment may point elsewhere (a copy of the tree on another machine) */
    const char *dir = getenv("NI_FIXTURES_DIR");
    snprintf(buf, cap, "%s/%s", dir && *dir ? dir : NI_FIXTURES_DIR, rel);
}

char *ni_test_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap + 1);
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        if (got == 0) break;
        n += got;
    }
    fclose(f);
    buf[n] = '\0';
    if (len) *len = n;
    return buf;
}

int ni_test_write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t put = fwrite(data, 1, len, f);
    return (fclose(f) == 0 && put == len) ? 0 : -1;
}

void ni_test_tmpdir(char *buf, size_t cap) {
    snprintf(buf, cap, "/tmp/nanoinfer-test-XXXXXX");
    if (!mkdtemp(buf)) buf[0] = '\0';
}

char *ni_test_run(const char *cmd, int *status) {
    FILE *p = popen(cmd, "r");
    if (!p) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap + 1);
        }
        size_t got = fread(buf + n, 1, cap - n, p);
        if (got == 0) break;
        n += got;
    }
    buf[n] = '\0';
    int st = pclose(p);
    if (status) *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return buf;
}

int ni_test_collect(void *user, size_t seq, size_t step, int32_t token) {
    ni_test_tokens *t = user;
    assert_true(seq < 8 && t->n[seq] < 64);
    assert_int_equal(step, t->n[seq]);
    t->tok[seq][t->n[seq]++] = token;
    return 0;
}

void ni_test_filter_from_env(void) {
    const char *f = getenv("NI_TEST_FILTER");
    if (f && f[0]) cmocka_set_test_filter(f);
}
