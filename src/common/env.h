/* The developer switches read from the environment (NI_GEMV_MAX_ROWS, NI_GEMM_STREAM,
 * NI_GEMM_STREAM_PARTS, NI_GRAPH_STEPS, NI_FUSED): one parser, so that every switch accepts and
 * rejects values the same way. */
#ifndef NI_ENV_H
#define NI_ENV_H

#ifdef __cplusplus
extern "C" {
#endif

/* Reads the integer switch `name`: returns 1 with *out set when it is a decimal integer in
 * [lo, hi] (or, when word is not NULL, exactly `word`: then *out = word_value); returns 0 and
 * leaves *out alone when it is unset or empty, or, with a line on stderr saying it is ignored and
 * what is wanted, when it is anything else. */
int ni_env_int(const char *name, long lo, long hi, const char *word, long word_value, long *out);

#ifdef __cplusplus
}
#endif
#endif
