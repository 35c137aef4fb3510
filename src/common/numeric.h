/* Small numeric helpers shared by host code: overflow-checked size products and the 16-bit
 * float formats (IEEE half and bfloat16) converted exactly to and from f32. */
#ifndef NI_NUMERIC_H
#define NI_NUMERIC_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* *out = a * b; returns non-zero when the product does not fit in size_t. */
static inline int ni_mul_overflows(size_t a, size_t b, size_t *out) {
    return __builtin_mul_overflow(a, b, out);
}

static inline float ni_bits_to_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint32_t ni_f32_to_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float ni_bf16_to_f32(uint16_t h) {
    return ni_bits_to_f32((uint32_t)h << 16);
}

/* Round to nearest even; NaN stays NaN. */
static inline uint16_t ni_f32_to_bf16(float f) {
    uint32_t u = ni_f32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* Round to nearest even, as the GPU's __float2half_rn: past 65504 (from 65520 on, the halfway
 * point to 2^16) to inf, below 2^-14 to the subnormals (multiples of 2^-24); NaN stays NaN. */
static inline uint16_t ni_f32_to_f16(float f) {
    uint32_t u = ni_f32_to_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu)); /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* inf, or rounds to it */
    if (a >= 0x38800000u) {                                  /* normal: 2^-14 and up */
        a += 0x0fffu + ((a >> 13) & 1u);                     /* a carry may bump the exponent */
        return (uint16_t)(sign | ((a - 0x38000000u) >> 13)); /* exponent bias 127 -> 15 */
    }
    if (a < 0x33000000u) return sign; /* below 2^-25: zero (2^-25 itself ties to zero below) */
    /* subnormal: round(|f| * 2^24) = mant * 2^(e + 1) with e in [-25, -15] */
    uint32_t mant = (a & 0x7fffffu) | 0x800000u;
    int shift = -((int)(a >> 23) - 127 + 1); /* 14 .. 24 */
    uint32_t r = mant >> shift, rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) r++; /* 0x400 (2^-14) comes out normal */
    return (uint16_t)(sign | r);
}

static inline float ni_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1f) return ni_bits_to_f32(sign | 0x7f800000u | (man << 13)); /* inf, NaN */
    if (exp == 0) {
        /* zero or subnormal: man * 2^-24, exact in f32 */
        float v = (float)man * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    return ni_bits_to_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

#endif
