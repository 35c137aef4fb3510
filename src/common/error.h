/* Error reporting shared by every module: a status code plus a formatted message kept per
 * thread, so that library code never prints or exits on bad input. */
#ifndef NI_ERROR_H
#define NI_ERROR_H

#include "nanoinfer.h"

#if defined(__GNUC__)
#define NI_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define NI_PRINTF(a, b)
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Records the message for ni_last_error() and returns s, so that callers can write
 * `return ni_fail(NI_ERR_FORMAT, "%s: bad header", path);`. */
ni_status ni_fail(ni_status s, const char *fmt, ...) NI_PRINTF(2, 3);
/* Prefixes the current message with more context (for example the file name). */
ni_status ni_fail_context(ni_status s, const char *fmt, ...) NI_PRINTF(2, 3);
void ni_clear_error(void);

#ifdef __cplusplus
}
#endif

#define NI_TRY(call)                                                                               \
    do {                                                                                           \
        ni_status ni_try_status_ = (call);                                                         \
        if (ni_try_status_ != NI_OK) return ni_try_status_;                                        \
    } while (0)

#endif
