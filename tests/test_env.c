/* The developer switches' parser (common/env.h): unset and empty leave the default; integers in
 * range are taken, the optional word gives its value; anything else (out of range, trailing
 * characters, a sign or space where none belongs, overflow) is ignored with a line on stderr. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/env.h"
#include "test_util.h"

#define NAME "NI_TEST_ENV_SWITCH"

static int read_switch(const char *value, long lo, long hi, const char *word, long *out) {
    if (value)
        setenv(NAME, value, 1);
    else
        unsetenv(NAME);
    return ni_env_int(NAME, lo, hi, word, -7, out);
}

static void test_env_int(void **state) {
    (void)state;
    long v = 42;
    assert_int_equal(read_switch(NULL, 0, 10, NULL, &v), 0);
    assert_int_equal(v, 42);
    assert_int_equal(read_switch("", 0, 10, NULL, &v), 0);
    assert_int_equal(v, 42);
    assert_int_equal(read_switch("0", 0, 10, NULL, &v), 1);
    assert_int_equal(v, 0);
    assert_int_equal(read_switch("10", 0, 10, NULL, &v), 1);
    assert_int_equal(v, 10);
    assert_int_equal(read_switch("-3", -5, 10, NULL, &v), 1);
    assert_int_equal(v, -3);
    v = 42;
    static const char *bad[] = {"11", "-1", "3x", "x", " ", "0x3", "1e2", "99999999999999999999",
                                "off"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(read_switch(bad[i], 0, 10, NULL, &v), 0);
        assert_int_equal(v, 42);
    }
    assert_int_equal(read_switch("off", 1, 64, "off", &v), 1);
    assert_int_equal(v, -7);
    assert_int_equal(read_switch("64", 1, 64, "off", &v), 1);
    assert_int_equal(v, 64);
    v = 42;
    assert_int_equal(read_switch("OFF", 1, 64, "off", &v), 0);
    assert_int_equal(read_switch("0", 1, 64, "off", &v), 0);
    assert_int_equal(v, 42);
    unsetenv(NAME);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_env_int)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
