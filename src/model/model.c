/* Opening a model (a named random config or a Hugging Face directory), checking the file's
 * tensors against the config before anything runs, and producing weights in our layout: read
 * and transposed from the file, or generated from the seed (normal(0, 0.02), residual
 * projections scaled by 1/sqrt(2 n_layer), zero biases, unit norms). */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/error.h"
#include "common/philox.h"
#include "model/model.h"

void ni_weight_info_get(const ni_config *cfg, ni_weight_kind k, ni_weight_info *o) {
    size_t C = cfg->n_embd;
    ni_weight_info w = {0};
    switch (k) {
    case NI_W_WTE:
        w = (ni_weight_info){"wte.weight", 0, 0, cfg->vocab_size, C, NI_INIT_NORMAL};
        break;
    case NI_W_WPE:
        w = (ni_weight_info){"wpe.weight", 0, 0, cfg->n_ctx, C, NI_INIT_NORMAL};
        break;
    case NI_W_LN1_W:
        w = (ni_weight_info){"h.%zu.ln_1.weight", 1, 0, 1, C, NI_INIT_ONE};
        break;
    case NI_W_LN1_B:
        w = (ni_weight_info){"h.%zu.ln_1.bias", 1, 0, 1, C, NI_INIT_ZERO};
        break;
    case NI_W_QKV_W:
        w = (ni_weight_info){"h.%zu.attn.c_attn.weight", 1, 1, 3 * C, C, NI_INIT_NORMAL};
        break;
    case NI_W_QKV_B:
        w = (ni_weight_info){"h.%zu.attn.c_attn.bias", 1, 0, 1, 3 * C, NI_INIT_ZERO};
        break;
    case NI_W_PROJ_W:
        w = (ni_weight_info){"h.%zu.attn.c_proj.weight", 1, 1, C, C, NI_INIT_RESIDUAL};
        break;
    case NI_W_PROJ_B:
        w = (ni_weight_info){"h.%zu.attn.c_proj.bias", 1, 0, 1, C, NI_INIT_ZERO};
        break;
    case NI_W_LN2_W:
        w = (ni_weight_info){"h.%zu.ln_2.weight", 1, 0, 1, C, NI_INIT_ONE};
        break;
    case NI_W_LN2_B:
        w = (ni_weight_info){"h.%zu.ln_2.bias", 1, 0, 1, C, NI_INIT_ZERO};
        break;
    case NI_W_FC_W:
        w = (ni_weight_info){"h.%zu.mlp.c_fc.weight", 1, 1, 4 * C, C, NI_INIT_NORMAL};
        break;
    case NI_W_FC_B:
        w = (ni_weight_info){"h.%zu.mlp.c_fc.bias", 1, 0, 1, 4 * C, NI_INIT_ZERO};
        break;
    case NI_W_FCPROJ_W:
        w = (ni_weight_info){"h.%zu.mlp.c_proj.weight", 1, 1, C, 4 * C, NI_INIT_RESIDUAL};
        break;
    case NI_W_FCPROJ_B:
        w = (ni_weight_info){"h.%zu.mlp.c_proj.bias", 1, 0, 1, C, NI_INIT_ZERO};
        break;
    case NI_W_LNF_W:
        w = (ni_weight_info){"ln_f.weight", 0, 0, 1, C, NI_INIT_ONE};
        break;
    case NI_W_LNF_B:
        w = (ni_weight_info){"ln_f.bias", 0, 0, 1, C, NI_INIT_ZERO};
        break;
    default:
        break;
    }
    *o = w;
}

uint32_t ni_weight_tensor_id(ni_weight_kind k, size_t layer) {
    return (uint32_t)k * 65536u + (uint32_t)layer;
}

float ni_model_random_value(const ni_model *m, ni_weight_kind k, size_t layer, size_t index) {
    ni_weight_info wi;
    ni_weight_info_get(&m->cfg, k, &wi);
    switch (wi.init) {
    case NI_INIT_ZERO:
        return 0.0f;
    case NI_INIT_ONE:
        return 1.0f;
    case NI_INIT_RESIDUAL:
        return 0.02f / sqrtf(2.0f * (float)m->cfg.n_layer) *
               ni_rng_normal(m->seed, ni_weight_tensor_id(k, layer), index);
    default:
        return 0.02f * ni_rng_normal(m->seed, ni_weight_tensor_id(k, layer), index);
    }
}

/* The file's name of weight (k, layer), with the model's prefix. */
static void weight_name(const ni_model *m, ni_weight_kind k, size_t layer, char *buf, size_t cap) {
    ni_weight_info wi;
    ni_weight_info_get(&m->cfg, k, &wi);
    char base[128];
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    if (wi.per_layer)
        snprintf(base, sizeof base, wi.hf_name, layer);
    else
        snprintf(base, sizeof base, "%s", wi.hf_name);
#pragma GCC diagnostic pop
    snprintf(buf, cap, "%s%s", m->prefix, base);
}

/* Checks that the file holds every weight with the right dtype and shape, and no layer past
 * config.json's n_layer (which would otherwise be dropped without a word). */
static ni_status check_tensors(ni_model *m) {
    const char *path = m->st->path;
    m->prefix = ni_st_find(m->st, "transformer.wte.weight") ? "transformer." : "";
    for (size_t i = 0; i < m->st->n_tensors; i++) {
        const char *nm = m->st->tensors[i].name;
        if (strncmp(nm, "transformer.", 12) == 0) nm += 12;
        if (strncmp(nm, "h.", 2) != 0 || nm[2] < '0' || nm[2] > '9') continue;
        char *end;
        const unsigned long l = strtoul(nm + 2, &end, 10);
        if (*end == '.' && l >= m->cfg.n_layer)
            return ni_fail(NI_ERR_FORMAT,
                           "%s: tensor '%s' belongs to layer %lu, but config.json has n_layer "
                           "%zu",
                           path, m->st->tensors[i].name, l, m->cfg.n_layer);
    }
    for (int k = 0; k < NI_W_KIND_COUNT; k++) {
        ni_weight_info wi;
        ni_weight_info_get(&m->cfg, (ni_weight_kind)k, &wi);
        size_t nl = wi.per_layer ? m->cfg.n_layer : 1;
        for (size_t l = 0; l < nl; l++) {
            char name[160];
            weight_name(m, (ni_weight_kind)k, l, name, sizeof name);
            const ni_st_tensor *t = ni_st_find(m->st, name);
            if (!t) return ni_fail(NI_ERR_FORMAT, "%s: missing tensor '%s'", path, name);
            if (t->dtype == NI_ST_OTHER)
                return ni_fail(NI_ERR_FORMAT,
                               "%s: tensor '%s' has dtype %s (F32, F16 or BF16 expected)", path,
                               name, t->dtype_name);
            /* expected file shape: vectors 1-D, Conv1D (in, out), embeddings (rows, cols) */
            size_t want[2], nd;
            if (wi.rows == 1) {
                nd = 1;
                want[0] = wi.cols;
            } else if (wi.conv1d) {
                nd = 2;
                want[0] = wi.cols;
                want[1] = wi.rows;
            } else {
                nd = 2;
                want[0] = wi.rows;
                want[1] = wi.cols;
            }
            int ok = t->ndim == nd;
            for (size_t d = 0; ok && d < nd; d++) ok = t->shape[d] == want[d];
            if (!ok) {
                char got[96] = "", exp[64];
                size_t off = 0;
                for (size_t d = 0; d < t->ndim && off < sizeof got; d++)
                    off += (size_t)snprintf(got + off, sizeof got - off, d ? ", %zu" : "%zu",
                                            t->shape[d]);
                if (nd == 1)
                    snprintf(exp, sizeof exp, "%zu", want[0]);
                else
                    snprintf(exp, sizeof exp, "%zu, %zu", want[0], want[1]);
                return ni_fail(NI_ERR_FORMAT,
                               "%s: tensor '%s' has shape (%s), the config needs (%s)", path, name,
                               got, exp);
            }
        }
    }
    return NI_OK;
}

static size_t count_params(const ni_config *c) {
    size_t n = 0;
    for (int k = 0; k < NI_W_KIND_COUNT; k++) {
        ni_weight_info wi;
        ni_weight_info_get(c, (ni_weight_kind)k, &wi);
        n += wi.rows * wi.cols * (wi.per_layer ? c->n_layer : 1);
    }
    return n;
}

static ni_status open_dir(ni_model *m, const char *dir) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/config.json", dir);
    NI_TRY(ni_config_from_json(path, &m->cfg));
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    NI_TRY(ni_st_open(path, &m->st));
    return check_tensors(m);
}

ni_status ni_model_open(const char *name_or_path, const ni_model_opts *opts, ni_model **out) {
    if (!name_or_path || !out) return ni_fail(NI_ERR_INVALID_ARG, "ni_model_open: NULL argument");
    *out = NULL;
    ni_model *m = calloc(1, sizeof *m);
    if (!m || !(m->name = strdup(name_or_path))) {
        free(m);
        return ni_fail(NI_ERR_NO_MEMORY, "out of memory");
    }
    m->seed = opts ? opts->seed : 0;
    m->prefix = "";
    ni_status s;
    struct stat sb;
    char cfg_path[PATH_MAX];
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", name_or_path);
    const int is_dir = stat(name_or_path, &sb) == 0 && S_ISDIR(sb.st_mode);
    /* a model directory of that name first (as Hugging Face's loaders do), then a named config */
    if (!(is_dir && stat(cfg_path, &sb) == 0) && ni_config_named(name_or_path, &m->cfg) == NI_OK) {
        s = NI_OK;
    } else if (is_dir) {
        m->dir = strdup(name_or_path);
        s = m->dir ? open_dir(m, name_or_path) : ni_fail(NI_ERR_NO_MEMORY, "out of memory");
    } else {
        const char *const *names = ni_model_names();
        char list[256] = "";
        for (size_t i = 0; names[i]; i++) {
            strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
            strncat(list, names[i], sizeof list - strlen(list) - 1);
        }
        s = ni_fail(NI_ERR_INVALID_ARG, "'%s' is neither a named model (%s) nor a model directory",
                    name_or_path, list);
    }
    if (s != NI_OK) {
        ni_model_close(m);
        return s;
    }
    m->n_params = count_params(&m->cfg);
    *out = m;
    return NI_OK;
}

void ni_model_close(ni_model *m) {
    if (!m) return;
    ni_st_close(m->st);
    free(m->host_f32);
    free(m->host.layers);
    free(m->dir);
    free(m->name);
    free(m);
}

const ni_config *ni_model_config(const ni_model *m) {
    return &m->cfg;
}
size_t ni_model_param_count(const ni_model *m) {
    return m->n_params;
}
const char *ni_model_dir(const ni_model *m) {
    return m->dir;
}

size_t ni_model_weight_bytes(const ni_model *m, size_t bytes_per_param) {
    return m->n_params * bytes_per_param;
}

ni_status ni_model_read_weight(const ni_model *m, ni_weight_kind k, size_t layer, float *dst) {
    ni_weight_info wi;
    ni_weight_info_get(&m->cfg, k, &wi);
    size_t n = wi.rows * wi.cols;
    if (!m->st) {
        /* Philox is counter based: any split of the loop gives the same values. */
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) dst[i] = ni_model_random_value(m, k, layer, i);
        return NI_OK;
    }
    char name[160];
    weight_name(m, k, layer, name, sizeof name);
    const ni_st_tensor *t = ni_st_find(m->st, name);
    if (!t) return ni_fail(NI_ERR_FORMAT, "%s: missing tensor '%s'", m->st->path, name);
    if (wi.conv1d) {
        /* file (in = cols, out = rows) -> ours (out, in) */
        for (size_t i = 0; i < wi.cols; i++)
            for (size_t o = 0; o < wi.rows; o++)
                dst[o * wi.cols + i] = ni_st_get_f32(t, i * wi.rows + o);
    } else {
        for (size_t i = 0; i < n; i++) dst[i] = ni_st_get_f32(t, i);
    }
    return NI_OK;
}

ni_status ni_model_host_weights(ni_model *m, const ni_weights_f32 **out) {
    if (m->host_f32) {
        *out = &m->host;
        return NI_OK;
    }
    const ni_config *c = &m->cfg;
    m->host_f32 = malloc(m->n_params * sizeof(float));
    m->host.layers = calloc(c->n_layer, sizeof *m->host.layers);
    if (!m->host_f32 || !m->host.layers) {
        free(m->host_f32);
        free(m->host.layers);
        m->host_f32 = NULL;
        m->host.layers = NULL;
        return ni_fail(NI_ERR_NO_MEMORY, "%s: %zu bytes of host memory for the weights", m->name,
                       m->n_params * sizeof(float));
    }
    float *p = m->host_f32;
    for (int k = 0; k < NI_W_KIND_COUNT; k++) {
        ni_weight_info wi;
        ni_weight_info_get(c, (ni_weight_kind)k, &wi);
        size_t nl = wi.per_layer ? c->n_layer : 1;
        for (size_t l = 0; l < nl; l++) {
            ni_status s = ni_model_read_weight(m, (ni_weight_kind)k, l, p);
            if (s != NI_OK) {
                free(m->host_f32);
                free(m->host.layers);
                m->host_f32 = NULL;
                m->host.layers = NULL;
                return s;
            }
            const float **slot = NULL;
            ni_layer_f32 *L = &m->host.layers[l];
            switch ((ni_weight_kind)k) {
            case NI_W_WTE:
                slot = &m->host.wte;
                break;
            case NI_W_WPE:
                slot = &m->host.wpe;
                break;
            case NI_W_LNF_W:
                slot = &m->host.lnf_w;
                break;
            case NI_W_LNF_B:
                slot = &m->host.lnf_b;
                break;
            case NI_W_LN1_W:
                slot = &L->ln1_w;
                break;
            case NI_W_LN1_B:
                slot = &L->ln1_b;
                break;
            case NI_W_QKV_W:
                slot = &L->qkv_w;
                break;
            case NI_W_QKV_B:
                slot = &L->qkv_b;
                break;
            case NI_W_PROJ_W:
                slot = &L->proj_w;
                break;
            case NI_W_PROJ_B:
                slot = &L->proj_b;
                break;
            case NI_W_LN2_W:
                slot = &L->ln2_w;
                break;
            case NI_W_LN2_B:
                slot = &L->ln2_b;
                break;
            case NI_W_FC_W:
                slot = &L->fc_w;
                break;
            case NI_W_FC_B:
                slot = &L->fc_b;
                break;
            case NI_W_FCPROJ_W:
                slot = &L->fcproj_w;
                break;
            case NI_W_FCPROJ_B:
                slot = &L->fcproj_b;
                break;
            default:
                break;
            }
            *slot = p;
            p += wi.rows * wi.cols;
        }
    }
    *out = &m->host;
    return NI_OK;
}
