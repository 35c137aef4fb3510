/* The per-thread error message behind ni_last_error(). Thread-local rather than global state:
 * two threads using two engines never see each other's messages. */
#include "common/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define NI_ERROR_CAP 1024

static _Thread_local char ni_error_message[NI_ERROR_CAP];

const char *ni_last_error(void) {
    return ni_error_message;
}

void ni_clear_error(void) {
    ni_error_message[0] = '\0';
}

ni_status ni_fail(ni_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ni_error_message, NI_ERROR_CAP, fmt, ap);
    va_end(ap);
    return s;
}

ni_status ni_fail_context(ni_status s, const char *fmt, ...) {
    char prefix[NI_ERROR_CAP];
    char old[NI_ERROR_CAP];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, ni_error_message, NI_ERROR_CAP);
    /* prefix, ": ", then as much of the old message as fits */
    size_t n = strlen(prefix);
    memcpy(ni_error_message, prefix, n + 1);
    if (n + 2 < NI_ERROR_CAP) {
        memcpy(ni_error_message + n, ": ", 3);
        strncat(ni_error_message, old, NI_ERROR_CAP - n - 3);
    }
    return s;
}

const char *ni_status_name(ni_status s) {
    switch (s) {
    case NI_OK:
        return "ok";
    case NI_ERR_INVALID_ARG:
        return "invalid argument";
    case NI_ERR_IO:
        return "i/o error";
    case NI_ERR_FORMAT:
        return "malformed file";
    case NI_ERR_NO_MEMORY:
        return "out of memory";
    case NI_ERR_CONTEXT:
        return "context too long";
    case NI_ERR_UNSUPPORTED:
        return "unsupported";
    case NI_ERR_DEVICE:
        return "device error";
    case NI_ERR_INTERNAL:
        return "internal error";
    }
    return "unknown status";
}
