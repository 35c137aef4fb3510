/* A small safetensors writer for tests: every GPT-2 tensor with seeded values in the Hugging
 * Face layout (Conv1D weights (in, out)), in the dtype asked for. */
#include "model_writer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/numeric.h"

/* A hash of (seed, name, i) mapped to [-1, 1): deterministic, no state. */
float tm_value(const tm_spec *spec, const char *name, size_t i) {
    uint64_t h = 1469598103934665603ull ^ spec->seed;
    for (const char *p = name; *p; p++) h = (h ^ (uint8_t)*p) * 1099511628211ull;
    h ^= (uint64_t)i * 0x9E3779B97F4A7C15ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    float u = (float)(h >> 40) / (float)(1u << 24);
    float v = (2.0f * u - 1.0f) * spec->scale;
    /* LayerNorm weights near one, so activations keep their size */
    if (strstr(name, "ln_") && strstr(name, ".weight")) v += 1.0f;
    return v;
}

typedef struct {
    char name[96];
    size_t shape[2], ndim;
} tm_tensor;

static size_t list_tensors(const tm_spec *s, tm_tensor *t) {
    size_t C = s->n_embd, n = 0;
    const char *pre = s->prefix ? "transformer." : "";
#define ADD1(d0, ...)                                                                              \
    do {                                                                                           \
        snprintf(t[n].name, sizeof t[n].name, __VA_ARGS__);                                        \
        t[n].ndim = 1;                                                                             \
        t[n].shape[0] = (d0);                                                                      \
        n++;                                                                                       \
    } while (0)
#define ADD2(d0, d1, ...)                                                                          \
    do {                                                                                           \
        snprintf(t[n].name, sizeof t[n].name, __VA_ARGS__);                                        \
        t[n].ndim = 2;                                                                             \
        t[n].shape[0] = (d0);                                                                      \
        t[n].shape[1] = (d1);                                                                      \
        n++;                                                                                       \
    } while (0)
    ADD2(s->vocab_size, C, "%swte.weight", pre);
    ADD2(s->n_ctx, C, "%swpe.weight", pre);
    for (size_t l = 0; l < s->n_layer; l++) {
        ADD1(C, "%sh.%zu.ln_1.weight", pre, l);
        ADD1(C, "%sh.%zu.ln_1.bias", pre, l);
        ADD2(C, 3 * C, "%sh.%zu.attn.c_attn.weight", pre, l);
        ADD1(3 * C, "%sh.%zu.attn.c_attn.bias", pre, l);
        ADD2(C, C, "%sh.%zu.attn.c_proj.weight", pre, l);
        ADD1(C, "%sh.%zu.attn.c_proj.bias", pre, l);
        ADD1(C, "%sh.%zu.ln_2.weight", pre, l);
        ADD1(C, "%sh.%zu.ln_2.bias", pre, l);
        ADD2(C, 4 * C, "%sh.%zu.mlp.c_fc.weight", pre, l);
        ADD1(4 * C, "%sh.%zu.mlp.c_fc.bias", pre, l);
        ADD2(4 * C, C, "%sh.%zu.mlp.c_proj.weight", pre, l);
        ADD1(C, "%sh.%zu.mlp.c_proj.bias", pre, l);
    }
    ADD1(C, "%sln_f.weight", pre);
    ADD1(C, "%sln_f.bias", pre);
#undef ADD1
#undef ADD2
    return n;
}

int tm_write_model(const char *dir, const tm_spec *s) {
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f,
            "{\"model_type\": \"gpt2\", \"n_layer\": %zu, \"n_head\": %zu, \"n_embd\": %zu, "
            "\"vocab_size\": %zu, \"n_positions\": %zu, \"layer_norm_epsilon\": 1e-05, "
            "\"activation_function\": \"gelu_new\"}\n",
            s->n_layer, s->n_head, s->n_embd, s->vocab_size, s->n_ctx);
    fclose(f);

    size_t esize = strcmp(s->dtype, "F32") == 0 ? 4 : 2;
    tm_tensor *t = calloc(2 + 12 * s->n_layer + 2, sizeof *t);
    size_t n = list_tensors(s, t);
    size_t hcap = 256 + n * 160, hlen = 0, off = 0;
    char *hdr = malloc(hcap);
    hlen += (size_t)snprintf(hdr + hlen, hcap - hlen, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (size_t i = 0; i < n; i++) {
        size_t numel = t[i].shape[0] * (t[i].ndim == 2 ? t[i].shape[1] : 1);
        if (t[i].ndim == 2)
            hlen += (size_t)snprintf(hdr + hlen, hcap - hlen,
                                     ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%zu,%zu],"
                                     "\"data_offsets\":[%zu,%zu]}",
                                     t[i].name, s->dtype, t[i].shape[0], t[i].shape[1], off,
                                     off + numel * esize);
        else
            hlen += (size_t)snprintf(hdr + hlen, hcap - hlen,
                                     ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%zu],"
                                     "\"data_offsets\":[%zu,%zu]}",
                                     t[i].name, s->dtype, t[i].shape[0], off, off + numel * esize);
        off += numel * esize;
    }
    hlen += (size_t)snprintf(hdr + hlen, hcap - hlen, "}");
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    f = fopen(path, "wb");
    if (!f) {
        free(hdr);
        free(t);
        return -1;
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    fwrite(len8, 1, 8, f);
    fwrite(hdr, 1, hlen, f);
    for (size_t i = 0; i < n; i++) {
        size_t numel = t[i].shape[0] * (t[i].ndim == 2 ? t[i].shape[1] : 1);
        /* values keyed by the name without prefix, so both layouts hold the same model */
        const char *key = s->prefix ? t[i].name + strlen("transformer.") : t[i].name;
        for (size_t k = 0; k < numel; k++) {
            float v = tm_value(s, key, k);
            if (esize == 4) {
                fwrite(&v, 4, 1, f);
            } else {
                uint16_t h = ni_f32_to_bf16(v);
                if (strcmp(s->dtype, "F16") == 0) {
                    /* f16 via f32 bits: values here are small and normal, exact enough */
                    uint32_t u = ni_f32_to_bits(v);
                    uint32_t sign = (u >> 16) & 0x8000u;
                    int e = (int)((u >> 23) & 0xff) - 127 + 15;
                    uint32_t man = (u >> 13) & 0x3ffu;
                    /* subnormal halves: magnitude in units of 2^-24 */
                    uint32_t sub = (uint32_t)(fabsf(v) * 16777216.0f);
                    h = e <= 0 ? (uint16_t)(sign | sub)
                               : (uint16_t)(sign | ((uint32_t)e << 10) | man);
                }
                fwrite(&h, 2, 1, f);
            }
        }
    }
    int rc = fclose(f) == 0 ? 0 : -1;
    free(hdr);
    free(t);
    return rc;
}
