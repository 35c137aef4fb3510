/* The backend interface: what the generate loop asks of a device. Each backend (CPU, CUDA)
 * implements these few entry points behind an opaque context; presets are flags the backend
 * reads, not copies of the forward pass. */
#ifndef NI_BACKEND_H
#define NI_BACKEND_H

#include "nanoinfer.h"
#include "sampling/sampling.h"

typedef struct {
    const char *name;
    int kv_cache;          /* keep keys/values across steps (else recompute the sequence) */
    int rejection_sampler; /* sorting-free sampler (else sort-based) */
    int cuda_graphs;       /* decode step replayed as a CUDA graph */
} ni_preset_flags;

const ni_preset_flags *ni_preset_get(ni_preset p);

/* The error of a sampler that found nothing to sample in sequence seq's logits. */
ni_status ni_fail_invalid_logits(size_t seq);

typedef struct ni_backend_ctx ni_backend_ctx;

/* What one generation asks: the prompts, the filter and the random stream's seed. */
typedef struct {
    const ni_batch *prompts;
    ni_filter filter;
    uint64_t seed;
    size_t max_new_tokens; /* a backend may run ahead of the host up to here */
} ni_gen_request;

typedef struct {
    ni_status (*create)(ni_model *m, const ni_engine_opts *o, ni_backend_ctx **out);
    void (*destroy)(ni_backend_ctx *b);
    /* Runs the prompts and samples each sequence's first token into next[i] (on the host). */
    ni_status (*prefill)(ni_backend_ctx *b, const ni_gen_request *req, int32_t *next);
    /* Sequences with live[i] append last[i] and sample next[i]; step counts generated tokens
     * before this one (the first decode step has step 1). A backend that keeps the decode
     * state on the device (cuda_graphs) may compute finished sequences too and ignore last. */
    ni_status (*decode)(ni_backend_ctx *b, const int32_t *last, const uint8_t *live, uint32_t step,
                        int32_t *next);
    /* Logits of every position of one sequence: out (len, V). */
    ni_status (*logits)(ni_backend_ctx *b, const int32_t *tokens, size_t len, float *out);
    /* Peak and weight bytes of this engine. */
    void (*memory)(const ni_backend_ctx *b, size_t *peak_bytes, size_t *weight_bytes);
    /* Decode steps run so far as one fused kernel (NULL: never). */
    size_t (*fused_steps)(const ni_backend_ctx *b);
} ni_backend_ops;

extern const ni_backend_ops ni_cpu_backend;
#ifdef NI_HAVE_CUDA
extern const ni_backend_ops ni_cuda_backend;
#endif

#endif
