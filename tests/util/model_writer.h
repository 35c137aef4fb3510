/* Writes small GPT-2 models in the Hugging Face layout (config.json + model.safetensors) from C,
 * so that loader tests need no fixtures and can corrupt any part of a valid file. */
#ifndef NI_TEST_MODEL_WRITER_H
#define NI_TEST_MODEL_WRITER_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    size_t n_layer, n_head, n_embd, vocab_size, n_ctx;
    const char *dtype; /* "F32", "F16" or "BF16" */
    int prefix;        /* keys start with "transformer." */
    uint64_t seed;
    float scale; /* std of the random weights */
} tm_spec;

/* Writes dir/config.json and dir/model.safetensors. Returns 0 on success. */
int tm_write_model(const char *dir, const tm_spec *spec);

/* Value of element i of tensor `name` as written (before rounding to the dtype). */
float tm_value(const tm_spec *spec, const char *name, size_t i);

#endif
