/* A read-only safetensors file: 8-byte little-endian header length, a JSON header naming each
 * tensor's dtype, shape and byte range, then the data. The file is mapped, never copied, and
 * every header field is checked against the file before any tensor is used. */
#ifndef NI_SAFETENSORS_H
#define NI_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "nanoinfer.h"

#define NI_ST_MAX_DIMS 8

typedef enum { NI_ST_F32, NI_ST_F16, NI_ST_BF16, NI_ST_OTHER } ni_st_dtype;

typedef struct {
    char *name;
    char dtype_name[16];
    ni_st_dtype dtype;
    size_t ndim;
    size_t shape[NI_ST_MAX_DIMS];
    size_t numel;
    const uint8_t *data; /* into the mapping */
    size_t nbytes;
} ni_st_tensor;

typedef struct {
    char *path;
    void *map;
    size_t map_size;
    ni_st_tensor *tensors;
    size_t n_tensors;
} ni_safetensors;

ni_status ni_st_open(const char *path, ni_safetensors **out);
void ni_st_close(ni_safetensors *st);
const ni_st_tensor *ni_st_find(const ni_safetensors *st, const char *name);
/* Element i of a F32/F16/BF16 tensor as f32. */
float ni_st_get_f32(const ni_st_tensor *t, size_t i);

#endif
