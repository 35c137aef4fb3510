/* `nanoinfer tokenize` and `nanoinfer detokenize` end to end through the built binary
 * (NI_CLI_PATH, or the NI_CLI_PATH environment variable): output formats, special tokens, the
 * exact round trip tokenize | detokenize of awkward text, id parsing and its errors, exit codes,
 * the default tokenizer directory from $NANOINFER_TOKENIZER, and the --bench mode. */
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *cli(void) {
    const char *env = getenv("NI_CLI_PATH");
    return env && *env ? env : NI_CLI_PATH;
}

/* Runs the shell command made from fmt and returns its stdout; *status gets the exit code. */
static char *run(int *status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static char *run(int *status, const char *fmt, ...) {
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char *out = ni_test_run(cmd, status);
    assert_non_null(out);
    return out;
}

static char dir_tmp[256];

static int setup(void **state) {
    (void)state;
    if (access(cli(), X_OK) != 0) {
        fprintf(stderr, "the nanoinfer binary is missing: %s\n", cli());
        return -1;
    }
    char p[1024];
    snprintf(p, sizeof p, "%s/encoder.json", NI_TOKENIZER_DIR);
    if (access(p, R_OK) != 0) {
        fprintf(stderr, "no tokenizer files in %s (run tools/deps.sh)\n", NI_TOKENIZER_DIR);
        return -1;
    }
    ni_test_tmpdir(dir_tmp, sizeof dir_tmp);
    return dir_tmp[0] ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    int st;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir_tmp);
    free(ni_test_run(cmd, &st));
    return 0;
}

#define TOK "'%s' tokenize --tokenizer '%s'"
#define DETOK "'%s' detokenize --tokenizer '%s'"

static void test_formats(void **state) {
    (void)state;
    int st;
    char *out = run(&st, TOK " --text 'Hello world'", cli(), NI_TOKENIZER_DIR);
    assert_int_equal(st, 0);
    assert_string_equal(out, "15496 995\n");
    free(out);
    out = run(&st, TOK " --text 'Hello world' --output json", cli(), NI_TOKENIZER_DIR);
    assert_int_equal(st, 0);
    assert_string_equal(out, "[15496, 995]\n");
    free(out);
    out = run(&st, TOK " --text 'a<|endoftext|>b' --allow-special", cli(), NI_TOKENIZER_DIR);
    assert_int_equal(st, 0);
    assert_string_equal(out, "64 50256 65\n");
    free(out);
    out = run(&st, TOK " --text 'a<|endoftext|>b'", cli(), NI_TOKENIZER_DIR);
    assert_int_equal(st, 0);
    assert_string_equal(out, "64 27 91 437 1659 5239 91 29 65\n");
    free(out);
    out = run(&st, "printf '' | " TOK " --output json", cli(), NI_TOKENIZER_DIR);
    assert_int_equal(st, 0);
    assert_string_equal(out, "[]\n");
    free(out);
    out = run(&st, "printf 'Hello world' | " TOK, cli(), NI_TOKENIZER_DIR);
    assert_int_equal(st, 0);
    assert_string_equal(out, "15496 995\n");
    free(out);
}

static void test_detokenize_inputs(void **state) {
    (void)state;
    int st;
    static const char *inputs[] = {
        "15496 995",   "15496,995", "15496, 995\n", "[15496, 995]", " [ 15496 ,\n995 ] \n",
        "15496\n995\n"};
    for (size_t i = 0; i < sizeof inputs / sizeof *inputs; i++) {
        char *out = run(&st, "printf '%s' | " DETOK, inputs[i], cli(), NI_TOKENIZER_DIR);
        assert_int_equal(st, 0);
        assert_string_equal(out, "Hello world");
        free(out);
    }
    char *out = run(&st, DETOK " --ids 15496,995", cli(), NI_TOKENIZER_DIR);
    assert_int_equal(st, 0);
    assert_string_equal(out, "Hello world");
    free(out);
    out = run(&st, "printf '' | " DETOK, cli(), NI_TOKENIZER_DIR);
    assert_int_equal(st, 0);
    assert_string_equal(out, "");
    free(out);
}

/* Bad ids are errors with a message, never garbage output. */
static void test_errors(void **state) {
    (void)state;
    int st;
    struct {
        const char *cmd;
        int code;
        const char *msg;
    } cases[] = {
        {DETOK " --ids 15496,50257 2>&1", 1, "50257"},
        {DETOK " --ids 15496,abc 2>&1", 2, "abc"},
        {DETOK " --ids 99999999999 2>&1", 2, "out of range"},
        {"printf '1 2 x3' | " DETOK " 2>&1", 1, "x3"},
        {"printf '1 -2' | " DETOK " 2>&1", 1, "-2"},
        {"printf '[1, 2' | " DETOK " 2>&1", 1, "]"},
        {"printf '1.5' | " DETOK " 2>&1", 1, "1.5"},
        {TOK " --bogus 2>&1", 2, "--bogus"},
        {TOK " --output xml --text a 2>&1", 2, "xml"},
        {"'%s' tokenize --tokenizer '%s/nope' --text a 2>&1", 1, "nope"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *out = run(&st, cases[i].cmd, cli(),
                        i + 1 == sizeof cases / sizeof *cases ? dir_tmp : NI_TOKENIZER_DIR);
        if (st != cases[i].code || !strstr(out, cases[i].msg))
            fail_msg("case %zu: exit %d (want %d), output \"%s\" (want \"%s\" in it)", i, st,
                     cases[i].code, out, cases[i].msg);
        free(out);
    }
}

/* tokenize | detokenize gives back the exact bytes, invalid UTF-8 included. */
static void test_roundtrip(void **state) {
    (void)state;
    static const char text[] =
        "Line one.\r\n\tTabbed 'quotes' I'LL they'Re \xe2\x80\x9c"
        "curly\xe2\x80\x9d\n\n"
        "   spaces   \xc3\xa9t\xc3\xa9 e\xcc\x81 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x91\x8d\xf0\x9f"
        "\x8f\xbd <|endoftext|> 3.14159 1234567890\n\xff\xfe invalid \xe2\x82 bytes   ";
    char path[512];
    snprintf(path, sizeof path, "%s/text.bin", dir_tmp);
    assert_int_equal(ni_test_write_file(path, text, sizeof text - 1), 0);
    int st;
    const char *variants[] = {TOK " --file '%s' | " DETOK, TOK " < '%s' | " DETOK,
                              TOK " --allow-special --output json < '%s' | " DETOK};
    for (size_t i = 0; i < 3; i++) {
        char *out = run(&st, variants[i], cli(), NI_TOKENIZER_DIR, path, cli(), NI_TOKENIZER_DIR);
        assert_int_equal(st, 0);
        assert_memory_equal(out, text, sizeof text - 1);
        assert_int_equal(strlen(out), sizeof text - 1);
        free(out);
    }
}

static void test_default_dir_and_help(void **state) {
    (void)state;
    int st;
    char *out =
        run(&st, "NANOINFER_TOKENIZER='%s' '%s' tokenize --text ' the'", NI_TOKENIZER_DIR, cli());
    assert_int_equal(st, 0);
    assert_string_equal(out, "262\n");
    free(out);
    out = run(&st, "NANOINFER_TOKENIZER='%s/nope' '%s' tokenize --text x 2>&1", dir_tmp, cli());
    assert_int_equal(st, 1);
    assert_non_null(strstr(out, "nope"));
    free(out);
    out = run(&st, "'%s' tokenize --help", cli());
    assert_int_equal(st, 0);
    assert_non_null(strstr(out, "--allow-special"));
    assert_non_null(strstr(out, "--bench"));
    free(out);
    out = run(&st, "'%s' detokenize --help", cli());
    assert_int_equal(st, 0);
    assert_non_null(strstr(out, "--ids"));
    free(out);
}

static void test_bench(void **state) {
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s/bench.txt", dir_tmp);
    const char *s = "The quick brown fox jumps over the lazy dog. ";
    char *text = malloc(45 * 2000 + 1);
    for (int i = 0; i < 2000; i++) memcpy(text + 45 * i, s, 45);
    assert_int_equal(ni_test_write_file(path, text, 45 * 2000 - 1), 0); /* no final space */
    free(text);
    int st;
    char *out = run(&st, TOK " --bench '%s' --runs 2", cli(), NI_TOKENIZER_DIR, path);
    assert_int_equal(st, 0);
    assert_non_null(strstr(out, "MB/s"));
    assert_non_null(strstr(out, "20000 tokens"));
    free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_formats),
        cmocka_unit_test(test_detokenize_inputs),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_default_dir_and_help),
        cmocka_unit_test(test_bench),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
