/* The GPU's name, versions and measured copy bandwidth (a 1 GiB device-to-device copy timed
 * with events, median of 10: bytes read plus written over time), the ceiling that the
 * benchmark's bandwidth fractions are measured against. */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "cuda/matmul.h"
#include "engine/device.h"

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static ni_status measure_copy(double *bytes_per_s) {
    size_t n = (size_t)1 << 30;
    void *src = NULL, *dst = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    float ms[10];
    ni_status s = NI_OK;
    if (cudaMalloc(&src, n) != cudaSuccess || cudaMalloc(&dst, n) != cudaSuccess)
        s = ni_fail(NI_ERR_NO_MEMORY, "2 GiB for the bandwidth measurement");
    if (s == NI_OK) s = ni_cuda_status(cudaMemset(src, 1, n), "cudaMemset");
    if (s == NI_OK) s = ni_cuda_status(cudaEventCreate(&e0), "cudaEventCreate");
    if (s == NI_OK) s = ni_cuda_status(cudaEventCreate(&e1), "cudaEventCreate");
    for (int i = -2; i < 10 && s == NI_OK; i++) {
        cudaEventRecord(e0, 0);
        cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, 0);
        cudaEventRecord(e1, 0);
        s = ni_cuda_status(cudaEventSynchronize(e1), "bandwidth copy");
        if (s == NI_OK && i >= 0) cudaEventElapsedTime(&ms[i], e0, e1);
    }
    if (s == NI_OK) {
        qsort(ms, 10, sizeof ms[0], cmp_float);
        *bytes_per_s = 2.0 * (double)n / ((double)(ms[4] + ms[5]) / 2.0 / 1e3);
    }
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    cudaFree(src);
    cudaFree(dst);
    return s;
}

ni_status ni_cuda_require_gpu(void) {
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) == cudaSuccess && n_dev > 0) return NI_OK;
    cudaGetLastError();
    return ni_fail(NI_ERR_UNSUPPORTED, "the cuda backend needs a CUDA GPU; none was found");
}

ni_status ni_cuda_device_query(int measure_bandwidth, ni_device_info *out) {
    int dev = 0, drv = 0, rt = 0;
    struct cudaDeviceProp p;
    NI_TRY(ni_cuda_require_gpu());
    NI_CUDA_TRY(cudaGetDevice(&dev), "cudaGetDevice");
    NI_CUDA_TRY(cudaGetDeviceProperties(&p, dev), "cudaGetDeviceProperties");
    cudaDriverGetVersion(&drv);
    cudaRuntimeGetVersion(&rt);
    snprintf(out->name, sizeof out->name, "%s", p.name);
    snprintf(out->driver, sizeof out->driver, "%d.%d", drv / 1000, (drv % 1000) / 10);
    snprintf(out->runtime, sizeof out->runtime, "%d.%d", rt / 1000, (rt % 1000) / 10);
    out->total_bytes = p.totalGlobalMem;
    if (measure_bandwidth) NI_TRY(measure_copy(&out->copy_bytes_per_s));
    return NI_OK;
}

size_t ni_cuda_used_bytes(void) {
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) return 0;
    return total_b - free_b;
}
