/* Philox4x32-10, the counter-based random generator of Salmon et al. (SC'11), usable from C and
 * CUDA alike. A counter-based generator keeps no state: the value for (key, counter) is a pure
 * function, so the CPU and the GPU draw the same numbers, a sequence's samples do not depend on
 * its place in the batch, and a CUDA graph can replay sampling with counters read from memory. */
#ifndef NI_PHILOX_H
#define NI_PHILOX_H

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define NI_HD __host__ __device__ __forceinline__
#else
#define NI_HD static inline
#endif

typedef struct {
    uint32_t v[4];
} ni_philox_u4;

NI_HD uint32_t ni_mulhilo32(uint32_t a, uint32_t b, uint32_t *hi) {
    uint64_t p = (uint64_t)a * (uint64_t)b;
    *hi = (uint32_t)(p >> 32);
    return (uint32_t)p;
}

/* Ten rounds of Philox4x32 on counter c with key k (k0, k1). */
NI_HD ni_philox_u4 ni_philox4x32(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                 uint32_t k1) {
    for (int r = 0; r < 10; r++) {
        uint32_t hi0, hi1;
        uint32_t lo0 = ni_mulhilo32(0xD2511F53u, c0, &hi0);
        uint32_t lo1 = ni_mulhilo32(0xCD9E8D57u, c2, &hi1);
        uint32_t n0 = hi1 ^ c1 ^ k0;
        uint32_t n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    ni_philox_u4 out = {{c0, c1, c2, c3}};
    return out;
}

/* A uniform float in [0, 1) with 24 random bits. */
NI_HD float ni_u32_to_unit(uint32_t x) {
    return (float)(x >> 8) * (1.0f / 16777216.0f);
}

/* The random stream of one sequence at one decode step: draw i of it is a pure function of
 * (seed, seq, step, i). Samplers use draw 0 first and further draws for rejection rounds. */
NI_HD float ni_rng_uniform(uint64_t seed, uint64_t seq, uint32_t step, uint32_t draw) {
    ni_philox_u4 r = ni_philox4x32((uint32_t)seq, (uint32_t)(seq >> 32), step, draw, (uint32_t)seed,
                                   (uint32_t)(seed >> 32));
    return ni_u32_to_unit(r.v[0]);
}

/* Element i of random tensor `tensor` ~ normal(0, 1), by Box-Muller on one Philox block. The
 * host and the device generate the same weights (up to the last bit of logf/cosf).  */
NI_HD float ni_rng_normal(uint64_t seed, uint32_t tensor, uint64_t i) {
    ni_philox_u4 r = ni_philox4x32((uint32_t)i, (uint32_t)(i >> 32), tensor, 0x6e6f726du,
                                   (uint32_t)seed, (uint32_t)(seed >> 32));
    float u1 = ((float)(r.v[0] >> 8) + 1.0f) * (1.0f / 16777216.0f); /* (0, 1] */
    float u2 = ni_u32_to_unit(r.v[1]);
    return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530717958647692f * u2);
}

#endif
