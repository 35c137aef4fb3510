#include "common/env.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ni_env_int(const char *name, long lo, long hi, const char *word, long word_value, long *out) {
    const char *v = getenv(name);
    if (!v || !*v) return 0;
    if (word && strcmp(v, word) == 0) {
        *out = word_value;
        return 1;
    }
    char *end = NULL;
    errno = 0;
    const long x = strtol(v, &end, 10);
    if (errno == 0 && end != v && *end == '\0' && x >= lo && x <= hi) {
        *out = x;
        return 1;
    }
    if (word)
        fprintf(stderr, "nanoinfer: %s=%s ignored (want %ld..%ld or %s)\n", name, v, lo, hi, word);
    else
        fprintf(stderr, "nanoinfer: %s=%s ignored (want %ld..%ld)\n", name, v, lo, hi);
    return 0;
}
