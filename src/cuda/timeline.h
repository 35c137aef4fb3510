/* The host side of the kernel timeline (timeline.cuh): with a -DNI_TIMELINE build and
 * NI_TIMELINE_FILE=F, ni_timeline_open gives the kernels a record buffer on the device and
 * ni_timeline_close appends what they recorded to F (a section per backend: "NITL", the record
 * size and count as 64-bit words, then the records, ni_tl_record); tools/timeline.py reads it.
 * Otherwise both do nothing. */
#ifndef NI_CUDA_TIMELINE_H
#define NI_CUDA_TIMELINE_H

#include <stddef.h>
#include <stdint.h>

#include "nanoinfer.h"

/* One block's record, as the kernels write it (timeline.cuh) and the file holds it. */
typedef struct {
    uint32_t tag, grid, block, sm;
    uint64_t t_start, t_wait, t_end; /* ns; t_wait 0: the recording thread did not wait */
    uint64_t pad;
} ni_tl_record;

#define NI_TL_SMS 256 /* record counters, one per SM (SM ids are below this) */

typedef struct {
    void *buf;                 /* device: cap records */
    unsigned long long *count; /* device: records taken per SM (also past its share) */
    size_t cap;
    const char *path;
} ni_timeline;

ni_status ni_timeline_open(ni_timeline *t);
void ni_timeline_close(ni_timeline *t);

#endif
