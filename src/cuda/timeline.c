/* The kernel timeline's buffer and file (timeline.h). */
#include "cuda/timeline.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef NI_TIMELINE
#include <cuda_runtime_api.h>

#include "common/error.h"

/* the setters of the files whose kernels record (NI_TL_SETTER) */
typedef int (*ni_tl_setter)(void *buf, unsigned long long *count, unsigned long long cap);
int ni_tl_set_gemv(void *buf, unsigned long long *count, unsigned long long cap);
int ni_tl_set_layernorm(void *buf, unsigned long long *count, unsigned long long cap);
int ni_tl_set_attention_decode(void *buf, unsigned long long *count, unsigned long long cap);
int ni_tl_set_attention_prefill(void *buf, unsigned long long *count, unsigned long long cap);
int ni_tl_set_decode_advance(void *buf, unsigned long long *count, unsigned long long cap);
int ni_tl_set_embedding(void *buf, unsigned long long *count, unsigned long long cap);
int ni_tl_set_gemm_stream(void *buf, unsigned long long *count, unsigned long long cap);
int ni_tl_set_kv_append(void *buf, unsigned long long *count, unsigned long long cap);
int ni_tl_set_sample_rejection(void *buf, unsigned long long *count, unsigned long long cap);
static const ni_tl_setter ni_tl_setters[] = {
    ni_tl_set_gemv,
    ni_tl_set_layernorm,
    ni_tl_set_attention_decode,
    ni_tl_set_attention_prefill,
    ni_tl_set_decode_advance,
    ni_tl_set_embedding,
    ni_tl_set_gemm_stream,
    ni_tl_set_kv_append,
    ni_tl_set_sample_rejection,
};

#define NI_TL_CAP ((size_t)16 << 20)

ni_status ni_timeline_open(ni_timeline *t) {
    memset(t, 0, sizeof *t);
    t->path = getenv("NI_TIMELINE_FILE");
    if (!t->path || !t->path[0]) return NI_OK;
    t->cap = NI_TL_CAP;
    if (cudaMalloc(&t->buf, t->cap * sizeof(ni_tl_record)) != cudaSuccess ||
        cudaMalloc((void **)&t->count, NI_TL_SMS * sizeof *t->count) != cudaSuccess ||
        cudaMemset(t->count, 0, NI_TL_SMS * sizeof *t->count) != cudaSuccess ||
        cudaMemset(t->buf, 0, t->cap * sizeof(ni_tl_record)) != cudaSuccess)
        return ni_fail(NI_ERR_NO_MEMORY, "timeline: no device memory for %zu records", t->cap);
    int e = 0;
    for (size_t k = 0; k < sizeof ni_tl_setters / sizeof *ni_tl_setters && e == 0; k++)
        e = ni_tl_setters[k](t->buf, t->count, (unsigned long long)t->cap);
    if (e != 0) return ni_fail(NI_ERR_INTERNAL, "timeline: %s", cudaGetErrorString((cudaError_t)e));
    return NI_OK;
}

void ni_timeline_close(ni_timeline *t) {
    if (!t->buf) return;
    const unsigned long long n = t->cap; /* every share, the empty slots' tags 0 */
    cudaDeviceSynchronize();
    void *h = malloc(n * sizeof(ni_tl_record) + 1);
    FILE *f = fopen(t->path, "ab");
    if (h && f &&
        cudaMemcpy(h, t->buf, n * sizeof(ni_tl_record), cudaMemcpyDeviceToHost) == cudaSuccess) {
        const uint64_t head[3] = {0x4c54494eull /* "NITL" */, sizeof(ni_tl_record), n};
        fwrite(head, sizeof head, 1, f);
        fwrite(h, sizeof(ni_tl_record), n, f);
    } else {
        fprintf(stderr, "timeline: could not write %s\n", t->path);
    }
    if (f) fclose(f);
    free(h);
    for (size_t k = 0; k < sizeof ni_tl_setters / sizeof *ni_tl_setters; k++)
        ni_tl_setters[k](NULL, NULL, 0);
    cudaFree(t->buf);
    cudaFree(t->count);
    memset(t, 0, sizeof *t);
}

#else

ni_status ni_timeline_open(ni_timeline *t) {
    memset(t, 0, sizeof *t);
    return NI_OK;
}

void ni_timeline_close(ni_timeline *t) {
    (void)t;
}

#endif
