/* Device facts for the CPU backend, and the dispatch to the CUDA query when it is built. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "engine/device.h"

#ifdef NI_HAVE_CUDA
ni_status ni_cuda_device_query(int measure_bandwidth, ni_device_info *out);
size_t ni_cuda_used_bytes(void);
#endif

ni_status ni_device_query(ni_backend b, int measure_bandwidth, ni_device_info *out) {
    memset(out, 0, sizeof *out);
    if (b == NI_BACKEND_CUDA) {
#ifdef NI_HAVE_CUDA
        return ni_cuda_device_query(measure_bandwidth, out);
#else
        return ni_fail(NI_ERR_UNSUPPORTED, "this build has no CUDA backend");
#endif
    }
    snprintf(out->name, sizeof out->name, "cpu");
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
        char *colon = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && colon) {
            snprintf(out->name, sizeof out->name, "%s", colon + 2);
            out->name[strcspn(out->name, "\n")] = '\0';
            break;
        }
    }
    if (f) fclose(f);
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    out->total_bytes = pages > 0 && page > 0 ? (size_t)pages * (size_t)page : 0;
    return NI_OK;
}

size_t ni_device_used_bytes(ni_backend b) {
#ifdef NI_HAVE_CUDA
    if (b == NI_BACKEND_CUDA) return ni_cuda_used_bytes();
#endif
    (void)b;
    return 0;
}
