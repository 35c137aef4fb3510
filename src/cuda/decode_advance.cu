/* The last kernel of a graph-replayed decode step: it moves the sampled tokens into place for
 * the next step on the device itself — the next input token, the position and the sampling
 * step of every row advance, and the token is appended to the device-side history the host
 * reads in batches — so that consecutive steps need no host round trip. */
#include <cuda_runtime.h>

#include "cuda/kernels.h"
#include "cuda/pdl.cuh"
#include "cuda/timeline.cuh"

__global__ void decode_advance_kernel(int32_t *tok, int32_t *pos, uint32_t *steps, int32_t *hist,
                                      const int32_t *next, size_t B, size_t hist_rows) {
    NI_TL_SCOPE(NI_TL_ADVANCE);
    ni_pdl_wait(); /* next comes from the sampler */
    NI_TL_WAITED();
    size_t r = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (r >= B) return;
    uint32_t s = steps[r];
    if (s < hist_rows) hist[(size_t)s * B + r] = next[r];
    tok[r] = next[r] >= 0 ? next[r] : 0; /* an invalid row keeps a valid id; the host sees -1 */
    pos[r] += 1;
    steps[r] = s + 1;
}

extern "C" int ni_cuda_decode_advance(int32_t *tok, int32_t *pos, uint32_t *steps, int32_t *hist,
                                      const int32_t *next, size_t B, size_t hist_rows,
                                      ni_stream s) {
    if (B == 0) return (int)cudaSuccess;
    unsigned threads = 128, blocks = (unsigned)((B + threads - 1) / threads);
    return ni_launch_status(ni_launch_pdl(decode_advance_kernel, dim3(blocks), dim3(threads), 0,
                                          (cudaStream_t)s, tok, pos, steps, hist, next, B,
                                          hist_rows));
}

NI_TL_SETTER(decode_advance)
