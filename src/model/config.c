/* Model configurations: the registry of named random-weight configs (the GPT-2 family and the
 * seed's empty-* models) and the reader of a Hugging Face config.json. Nothing elsewhere in the
 * model code assumes a vocabulary size or a context length: they come from here. */
#include <jansson.h>
#include <string.h>

#include "common/error.h"
#include "model/model.h"

typedef struct {
    const char *name;
    size_t n_layer, n_head, n_embd;
} ni_named_config;

static const ni_named_config ni_named[] = {
    {"gpt2", 12, 12, 768},      {"gpt2-medium", 24, 16, 1024}, {"gpt2-large", 36, 20, 1280},
    {"gpt2-xl", 48, 25, 1600},  {"empty-1B", 24, 16, 1792},    {"empty-2B", 32, 32, 2304},
    {"empty-4B", 32, 32, 3328}, {"empty-10B", 48, 48, 4128},   {"empty-16B", 64, 64, 4608},
};
#define NI_N_NAMED (sizeof ni_named / sizeof ni_named[0])

static const char *const ni_names[NI_N_NAMED + 1] = {
    "gpt2",     "gpt2-medium", "gpt2-large", "gpt2-xl",   "empty-1B",
    "empty-2B", "empty-4B",    "empty-10B",  "empty-16B", NULL};

const char *const *ni_model_names(void) {
    return ni_names;
}

ni_status ni_config_named(const char *name, ni_config *out) {
    for (size_t i = 0; i < NI_N_NAMED; i++) {
        if (strcmp(name, ni_named[i].name) != 0) continue;
        /* The GPT-2 tokenizer's vocabulary and context: the named configs are GPT-2 shaped. */
        ni_config c = {.n_layer = ni_named[i].n_layer,
                       .n_head = ni_named[i].n_head,
                       .n_embd = ni_named[i].n_embd,
                       .vocab_size = 50257,
                       .n_ctx = 1024,
                       .ln_eps = 1e-5f,
                       .eos_id = 50256};
        *out = c;
        return NI_OK;
    }
    return ni_fail(NI_ERR_INVALID_ARG, "unknown model '%s'", name);
}

ni_status ni_config_validate(const ni_config *c, const char *where) {
    if (c->n_layer == 0 || c->n_head == 0 || c->n_embd == 0 || c->vocab_size == 0 || c->n_ctx == 0)
        return ni_fail(NI_ERR_FORMAT,
                       "%s: n_layer, n_head, n_embd, vocab_size and n_positions "
                       "must be positive",
                       where);
    if (c->n_embd % c->n_head != 0)
        return ni_fail(NI_ERR_FORMAT, "%s: n_embd %zu is not a multiple of n_head %zu", where,
                       c->n_embd, c->n_head);
    if (c->vocab_size > (size_t)INT32_MAX || c->n_ctx > ((size_t)1 << 24))
        return ni_fail(NI_ERR_FORMAT, "%s: vocab_size or n_positions out of range", where);
    if (c->eos_id < 0 || (size_t)c->eos_id >= c->vocab_size)
        return ni_fail(NI_ERR_FORMAT, "%s: eos_token_id %d outside the vocabulary", where,
                       (int)c->eos_id);
    if (!(c->ln_eps > 0.0f))
        return ni_fail(NI_ERR_FORMAT, "%s: layer_norm_epsilon must be positive", where);
    return NI_OK;
}

static ni_status get_size(json_t *root, const char *key, const char *alt, const char *path,
                          size_t *out) {
    json_t *v = json_object_get(root, key);
    if (!v && alt) v = json_object_get(root, alt);
    if (!v) return ni_fail(NI_ERR_FORMAT, "%s: missing \"%s\"", path, key);
    if (!json_is_integer(v) || json_integer_value(v) <= 0)
        return ni_fail(NI_ERR_FORMAT, "%s: \"%s\" must be a positive integer", path, key);
    *out = (size_t)json_integer_value(v);
    return NI_OK;
}

ni_status ni_config_from_json(const char *path, ni_config *out) {
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root) {
        if (strstr(jerr.text, "unable to open")) return ni_fail(NI_ERR_IO, "%s: cannot open", path);
        return ni_fail(NI_ERR_FORMAT, "%s: not valid JSON (%s, line %d)", path, jerr.text,
                       jerr.line);
    }
    ni_config c;
    memset(&c, 0, sizeof c);
    ni_status s = NI_OK;
    if (!json_is_object(root)) s = ni_fail(NI_ERR_FORMAT, "%s: not a JSON object", path);
    if (s == NI_OK) s = get_size(root, "n_layer", NULL, path, &c.n_layer);
    if (s == NI_OK) s = get_size(root, "n_head", NULL, path, &c.n_head);
    if (s == NI_OK) s = get_size(root, "n_embd", NULL, path, &c.n_embd);
    if (s == NI_OK) s = get_size(root, "vocab_size", NULL, path, &c.vocab_size);
    if (s == NI_OK) s = get_size(root, "n_positions", "n_ctx", path, &c.n_ctx);
    if (s == NI_OK) {
        /* optional, but when given they must be what they say: no silent defaults */
        json_t *eps = json_object_get(root, "layer_norm_epsilon");
        c.ln_eps = 1e-5f;
        if (eps && !json_is_null(eps)) {
            const double e = json_is_number(eps) ? json_number_value(eps) : -1.0;
            if (!(e > 0.0 && e < 1.0))
                s = ni_fail(NI_ERR_FORMAT, "%s: \"layer_norm_epsilon\" must be a number in (0, 1)",
                            path);
            c.ln_eps = (float)e;
        }
        json_t *eos = json_object_get(root, "eos_token_id");
        c.eos_id = (int32_t)(c.vocab_size - 1);
        if (s == NI_OK && eos && !json_is_null(eos)) {
            const json_int_t v = json_is_integer(eos) ? json_integer_value(eos) : -1;
            if (v < 0 || (size_t)v >= c.vocab_size)
                s = ni_fail(NI_ERR_FORMAT,
                            "%s: \"eos_token_id\" must be a token id below vocab_size %zu", path,
                            c.vocab_size);
            c.eos_id = (int32_t)v;
        }
        json_t *act = s == NI_OK ? json_object_get(root, "activation_function") : NULL;
        const char *a = act && json_is_string(act) ? json_string_value(act) : "gelu_new";
        if (strcmp(a, "gelu_new") != 0 && strcmp(a, "gelu_pytorch_tanh") != 0)
            s = ni_fail(NI_ERR_UNSUPPORTED,
                        "%s: activation_function \"%s\" (only GPT-2's tanh GELU is supported)",
                        path, a);
    }
    json_decref(root);
    if (s == NI_OK) s = ni_config_validate(&c, path);
    if (s == NI_OK) *out = c;
    return s;
}
