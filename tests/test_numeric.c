/* The host's 16-bit float conversions (common/numeric.h), which the GPU tests use as the reference
 * for the device's rounding: f32 -> IEEE half against every half value, every midpoint between
 * two neighbours (ties to even) and the f32 values just beside each midpoint, the overflow
 * threshold, the subnormals and NaN; f32 -> bf16 on its ties. */
#include <math.h>
#include <stdio.h>

#include "common/numeric.h"
#include "test_util.h"

static void test_f16_every_value_and_midpoint(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 0x7c00u; h++) {
        float v = ni_f16_to_f32((uint16_t)h);
        float next = h + 1 < 0x7c00u ? ni_f16_to_f32((uint16_t)(h + 1)) : 65536.0f;
        float mid = v + (next - v) / 2; /* exact: one more bit than a half has */
        uint16_t even = (h & 1u) ? (uint16_t)(h + 1) : (uint16_t)h;
        assert_int_equal(ni_f32_to_f16(v), h);
        assert_int_equal(ni_f32_to_f16(-v), h | 0x8000u);
        assert_int_equal(ni_f32_to_f16(mid), even);
        assert_int_equal(ni_f32_to_f16(nextafterf(mid, 0.0f)), h);
        assert_int_equal(ni_f32_to_f16(nextafterf(mid, INFINITY)), h + 1); /* 0x7c00: inf */
    }
}

static void test_f16_specials(void **state) {
    (void)state;
    assert_int_equal(ni_f32_to_f16(65504.0f), 0x7bffu);
    assert_int_equal(ni_f32_to_f16(65519.996f), 0x7bffu);
    assert_int_equal(ni_f32_to_f16(65520.0f), 0x7c00u);
    assert_int_equal(ni_f32_to_f16(-1e6f), 0xfc00u);
    assert_int_equal(ni_f32_to_f16(INFINITY), 0x7c00u);
    assert_int_equal(ni_f32_to_f16(-INFINITY), 0xfc00u);
    assert_true(isnan(ni_f16_to_f32(ni_f32_to_f16(NAN))));
    assert_int_equal(ni_f32_to_f16(ldexpf(1.0f, -24)), 0x0001u);
    assert_int_equal(ni_f32_to_f16(ldexpf(1.0f, -25)), 0x0000u); /* tie to even: zero */
    assert_int_equal(ni_f32_to_f16(ldexpf(1.5f, -25)), 0x0001u);
    assert_int_equal(ni_f32_to_f16(ldexpf(1.0f, -30)), 0x0000u);
    assert_int_equal(ni_f32_to_f16(-ldexpf(1.0f, -30)), 0x8000u);
    assert_int_equal(ni_f32_to_f16(1e-45f), 0x0000u);                       /* f32 subnormal */
    assert_int_equal(ni_f32_to_f16(1.0f + ldexpf(1.0f, -11)), 0x3c00u);     /* tie: even */
    assert_int_equal(ni_f32_to_f16(1.0f + 3 * ldexpf(1.0f, -11)), 0x3c02u); /* tie: up */
    assert_true(ni_f16_to_f32(0x3555u) == 0.333251953125f);
}

static void test_bf16_ties(void **state) {
    (void)state;
    assert_int_equal(ni_f32_to_bf16(1.0f + ldexpf(1.0f, -8)), 0x3f80u);     /* tie: even */
    assert_int_equal(ni_f32_to_bf16(1.0f + 3 * ldexpf(1.0f, -8)), 0x3f82u); /* tie: up */
    assert_int_equal(ni_f32_to_bf16(INFINITY), 0x7f80u);
    assert_true(isnan(ni_bf16_to_f32(ni_f32_to_bf16(NAN))));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f16_every_value_and_midpoint),
        cmocka_unit_test(test_f16_specials),
        cmocka_unit_test(test_bf16_ties),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
