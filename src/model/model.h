/* Internal view of a model: its config, where its weights come from (a safetensors file or a
 * seeded random init) and the weight layout every backend uses. Matrices are stored (out, in)
 * row-major, as nn.Linear does, so that one output is a dot product over contiguous memory;
 * Hugging Face's Conv1D tensors are (in, out) and are transposed when read. */
#ifndef NI_MODEL_H
#define NI_MODEL_H

#include "nanoinfer.h"
#include "model/safetensors.h"

typedef enum {
    NI_W_WTE,      /* (V, C) token embedding, also the tied lm_head */
    NI_W_WPE,      /* (n_ctx, C) position embedding */
    NI_W_LN1_W,    /* (C) per layer from here ... */
    NI_W_LN1_B,    /* (C) */
    NI_W_QKV_W,    /* (3C, C) */
    NI_W_QKV_B,    /* (3C) */
    NI_W_PROJ_W,   /* (C, C) */
    NI_W_PROJ_B,   /* (C) */
    NI_W_LN2_W,    /* (C) */
    NI_W_LN2_B,    /* (C) */
    NI_W_FC_W,     /* (4C, C) */
    NI_W_FC_B,     /* (4C) */
    NI_W_FCPROJ_W, /* (C, 4C) */
    NI_W_FCPROJ_B, /* (C) ... to here */
    NI_W_LNF_W,    /* (C) */
    NI_W_LNF_B,    /* (C) */
    NI_W_KIND_COUNT
} ni_weight_kind;

typedef struct {
    const char *hf_name; /* printf pattern with %zu for the layer, without "transformer." */
    int per_layer;
    int conv1d;  /* stored (in, out) in the file: transposed on read */
    size_t rows; /* our layout (out, in); vectors have rows == 1 */
    size_t cols;
    enum { NI_INIT_NORMAL, NI_INIT_RESIDUAL, NI_INIT_ZERO, NI_INIT_ONE } init;
} ni_weight_info;

void ni_weight_info_get(const ni_config *cfg, ni_weight_kind k, ni_weight_info *out);

/* Pointers into one f32 buffer, in the layout above. */
typedef struct {
    const float *ln1_w, *ln1_b;
    const float *qkv_w, *qkv_b;
    const float *proj_w, *proj_b;
    const float *ln2_w, *ln2_b;
    const float *fc_w, *fc_b;
    const float *fcproj_w, *fcproj_b;
} ni_layer_f32;

typedef struct {
    const float *wte, *wpe;
    const float *lnf_w, *lnf_b;
    ni_layer_f32 *layers; /* n_layer entries */
} ni_weights_f32;

struct ni_model {
    ni_config cfg;
    char *name; /* the name or path it was opened with */
    char *dir;  /* NULL for a named random config */
    uint64_t seed;
    ni_safetensors *st;
    const char *prefix; /* "" or "transformer." as found in the file */
    size_t n_params;
    float *host_f32; /* materialized on first use by a CPU engine */
    ni_weights_f32 host;
};

/* Named configs (the registry) and Hugging Face config.json. */
ni_status ni_config_named(const char *name, ni_config *out);
ni_status ni_config_from_json(const char *path, ni_config *out);
ni_status ni_config_validate(const ni_config *cfg, const char *where);

/* Writes weight (kind, layer) in our layout as f32 into dst (rows * cols floats): converted and
 * transposed from the file, or generated from the seed. */
ni_status ni_model_read_weight(const ni_model *m, ni_weight_kind k, size_t layer, float *dst);

/* The seeded random init of one element (index in our layout) of a random model. */
float ni_model_random_value(const ni_model *m, ni_weight_kind k, size_t layer, size_t index);
uint32_t ni_weight_tensor_id(ni_weight_kind k, size_t layer);

/* All weights as f32 on the host (materialized once, shared by the model's CPU engines). */
ni_status ni_model_host_weights(ni_model *m, const ni_weights_f32 **out);
/* Bytes of the weights at `bytes_per_param` (4 for f32, 2 for bf16). */
size_t ni_model_weight_bytes(const ni_model *m, size_t bytes_per_param);

#endif
