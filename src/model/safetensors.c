/* The safetensors reader: maps the file, parses the JSON header with jansson and checks every
 * entry (dtype, shape, byte range, size agreeing with the shape) so that later code can trust
 * the tensor table. Errors name the file and, where there is one, the tensor. */
#include "model/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "common/numeric.h"

/* A header beyond this is not a model header but a corrupt length field. */
#define NI_ST_MAX_HEADER ((uint64_t)256 << 20)

static size_t dtype_size(ni_st_dtype d) {
    switch (d) {
    case NI_ST_F32:
        return 4;
    case NI_ST_F16:
    case NI_ST_BF16:
        return 2;
    default:
        return 0;
    }
}

static ni_st_dtype parse_dtype(const char *s) {
    if (strcmp(s, "F32") == 0) return NI_ST_F32;
    if (strcmp(s, "F16") == 0) return NI_ST_F16;
    if (strcmp(s, "BF16") == 0) return NI_ST_BF16;
    return NI_ST_OTHER;
}

/* Element sizes of dtypes we do not compute with but must still size-check (buffers). */
static size_t other_dtype_size(const char *s) {
    static const struct {
        const char *name;
        size_t size;
    } table[] = {{"F64", 8}, {"I64", 8}, {"U64", 8}, {"I32", 4},  {"U32", 4},     {"I16", 2},
                 {"U16", 2}, {"I8", 1},  {"U8", 1},  {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(s, table[i].name) == 0) return table[i].size;
    return 0;
}

static ni_status parse_entry(ni_safetensors *st, const char *key, json_t *v, const uint8_t *data,
                             size_t data_size, ni_st_tensor *t) {
    const char *path = st->path;
    if (!json_is_object(v))
        return ni_fail(NI_ERR_FORMAT, "%s: tensor '%s': header entry is not an object", path, key);
    json_t *jd = json_object_get(v, "dtype");
    json_t *js = json_object_get(v, "shape");
    json_t *jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd) || !json_is_array(js) || !json_is_array(jo) || json_array_size(jo) != 2)
        return ni_fail(NI_ERR_FORMAT,
                       "%s: tensor '%s': header entry needs dtype, shape and data_offsets[2]", path,
                       key);
    t->name = strdup(key);
    if (!t->name) return ni_fail(NI_ERR_NO_MEMORY, "%s: out of memory", path);
    snprintf(t->dtype_name, sizeof t->dtype_name, "%s", json_string_value(jd));
    t->dtype = parse_dtype(t->dtype_name);
    size_t esize = t->dtype == NI_ST_OTHER ? other_dtype_size(t->dtype_name) : dtype_size(t->dtype);
    if (esize == 0)
        return ni_fail(NI_ERR_FORMAT, "%s: tensor '%s': unknown dtype '%s'", path, key,
                       t->dtype_name);
    t->ndim = json_array_size(js);
    if (t->ndim > NI_ST_MAX_DIMS)
        return ni_fail(NI_ERR_FORMAT, "%s: tensor '%s': %zu dimensions", path, key, t->ndim);
    size_t numel = 1;
    for (size_t d = 0; d < t->ndim; d++) {
        json_t *e = json_array_get(js, d);
        if (!json_is_integer(e) || json_integer_value(e) < 0)
            return ni_fail(NI_ERR_FORMAT, "%s: tensor '%s': bad shape", path, key);
        t->shape[d] = (size_t)json_integer_value(e);
        if (ni_mul_overflows(numel, t->shape[d], &numel))
            return ni_fail(NI_ERR_FORMAT, "%s: tensor '%s': shape overflows", path, key);
    }
    t->numel = numel;
    json_t *jb = json_array_get(jo, 0), *je = json_array_get(jo, 1);
    if (!json_is_integer(jb) || !json_is_integer(je) || json_integer_value(jb) < 0 ||
        json_integer_value(je) < json_integer_value(jb))
        return ni_fail(NI_ERR_FORMAT, "%s: tensor '%s': bad data_offsets", path, key);
    uint64_t begin = (uint64_t)json_integer_value(jb), end = (uint64_t)json_integer_value(je);
    if (end > data_size)
        return ni_fail(NI_ERR_FORMAT,
                       "%s: tensor '%s': data [%llu, %llu) runs past the end of the file "
                       "(%zu data bytes; truncated?)",
                       path, key, (unsigned long long)begin, (unsigned long long)end, data_size);
    size_t want;
    if (ni_mul_overflows(numel, esize, &want) || want != end - begin)
        return ni_fail(NI_ERR_FORMAT,
                       "%s: tensor '%s': %llu data bytes but shape and dtype %s need %zu", path,
                       key, (unsigned long long)(end - begin), t->dtype_name, numel * esize);
    t->data = data + begin;
    t->nbytes = (size_t)(end - begin);
    return NI_OK;
}

static ni_status parse_header(ni_safetensors *st) {
    const char *path = st->path;
    const uint8_t *base = st->map;
    if (st->map_size < 8)
        return ni_fail(NI_ERR_FORMAT, "%s: %zu bytes is too short for a safetensors file", path,
                       st->map_size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | base[i];
    if (hlen > NI_ST_MAX_HEADER || hlen > st->map_size - 8)
        return ni_fail(NI_ERR_FORMAT,
                       "%s: header length %llu does not fit the file (%zu bytes; truncated or "
                       "not safetensors)",
                       path, (unsigned long long)hlen, st->map_size);
    json_error_t jerr;
    json_t *root = json_loadb((const char *)base + 8, (size_t)hlen, 0, &jerr);
    if (!root)
        return ni_fail(NI_ERR_FORMAT, "%s: header is not valid JSON (%s at byte %d)", path,
                       jerr.text, jerr.position);
    if (!json_is_object(root)) {
        json_decref(root);
        return ni_fail(NI_ERR_FORMAT, "%s: header is not a JSON object", path);
    }
    const uint8_t *data = base + 8 + hlen;
    size_t data_size = st->map_size - 8 - (size_t)hlen;
    st->tensors = calloc(json_object_size(root) + 1, sizeof *st->tensors);
    if (!st->tensors) {
        json_decref(root);
        return ni_fail(NI_ERR_NO_MEMORY, "%s: out of memory", path);
    }
    const char *key;
    json_t *v;
    ni_status s = NI_OK;
    json_object_foreach(root, key, v) {
        if (strcmp(key, "__metadata__") == 0) continue;
        s = parse_entry(st, key, v, data, data_size, &st->tensors[st->n_tensors]);
        st->n_tensors++; /* counted even on failure so that close() frees the name */
        if (s != NI_OK) break;
    }
    json_decref(root);
    return s;
}

ni_status ni_st_open(const char *path, ni_safetensors **out) {
    *out = NULL;
    ni_safetensors *st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(path))) {
        free(st);
        return ni_fail(NI_ERR_NO_MEMORY, "%s: out of memory", path);
    }
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        ni_status s = ni_fail(NI_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        ni_st_close(st);
        return s;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        ni_st_close(st);
        return ni_fail(NI_ERR_IO, "%s: not a regular file", path);
    }
    st->map_size = (size_t)sb.st_size;
    if (st->map_size > 0) {
        st->map = mmap(NULL, st->map_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (st->map == MAP_FAILED) {
            st->map = NULL;
            close(fd);
            ni_status s = ni_fail(NI_ERR_IO, "%s: cannot map: %s", path, strerror(errno));
            ni_st_close(st);
            return s;
        }
    }
    close(fd);
    ni_status s = parse_header(st);
    if (s != NI_OK) {
        ni_st_close(st);
        return s;
    }
    *out = st;
    return NI_OK;
}

void ni_st_close(ni_safetensors *st) {
    if (!st) return;
    for (size_t i = 0; i < st->n_tensors; i++) free(st->tensors[i].name);
    free(st->tensors);
    if (st->map) munmap(st->map, st->map_size);
    free(st->path);
    free(st);
}

const ni_st_tensor *ni_st_find(const ni_safetensors *st, const char *name) {
    for (size_t i = 0; i < st->n_tensors; i++)
        if (strcmp(st->tensors[i].name, name) == 0) return &st->tensors[i];
    return NULL;
}

float ni_st_get_f32(const ni_st_tensor *t, size_t i) {
    switch (t->dtype) {
    case NI_ST_F32: {
        float f;
        memcpy(&f, t->data + 4 * i, 4);
        return f;
    }
    case NI_ST_F16: {
        uint16_t h;
        memcpy(&h, t->data + 2 * i, 2);
        return ni_f16_to_f32(h);
    }
    case NI_ST_BF16: {
        uint16_t h;
        memcpy(&h, t->data + 2 * i, 2);
        return ni_bf16_to_f32(h);
    }
    default:
        return 0.0f;
    }
}
