/* What the benchmark reports about the machine: the device's name, driver and runtime versions,
 * its measured copy bandwidth and the memory the driver sees in use. */
#ifndef NI_DEVICE_H
#define NI_DEVICE_H

#include <stddef.h>

#include "nanoinfer.h"

typedef struct {
    char name[256];
    char driver[64];
    char runtime[64];
    double copy_bytes_per_s; /* device-to-device copy, bytes read + written per second; 0: n/a */
    size_t total_bytes;
} ni_device_info;

/* measure_bandwidth: time a large device copy (GPU) once. */
ni_status ni_device_query(ni_backend b, int measure_bandwidth, ni_device_info *out);
/* Bytes of device memory in use as the driver sees it (GPU); 0 on the CPU. */
size_t ni_device_used_bytes(ni_backend b);

#endif
