/* Shared by the GPU tests: the skip that lets CI (no GPU) run every test binary. */
#ifndef NI_GPU_TEST_UTIL_H
#define NI_GPU_TEST_UTIL_H

#include <cuda_runtime_api.h>
#include <stdio.h>

/* Prints "skipped: no GPU" and returns 1 when no CUDA device can be used. */
static inline int ni_test_no_gpu(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) == cudaSuccess && n > 0) return 0;
    printf("skipped: no GPU\n");
    return 1;
}

#endif
