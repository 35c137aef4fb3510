/* Our ids against tiktoken's on the corpus: tests/fixtures/tokenizer/corpus_ids.json holds, for
 * each text of corpus_texts.json (tools/tokenizer_corpus.py), tiktoken's encode_ordinary ids and
 * its encode(..., allowed_special="all") ids (tools/tiktoken_ids.py makes it where tiktoken is
 * installed). Until that file exists the test reports itself skipped; NI_TOKENIZER_CORPUS_IDS
 * may name another copy of it. */
#include "test_util.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    ni_tokenizer *t;
    json_t *rows;  /* corpus_ids.json */
    json_t *texts; /* corpus_texts.json */
} fixture;

static fixture fx;

static int setup(void **state) {
    if (ni_tokenizer_open(NI_TOKENIZER_DIR, &fx.t) != NI_OK) {
        fprintf(stderr, "cannot open the tokenizer in %s (run tools/deps.sh): %s\n",
                NI_TOKENIZER_DIR, ni_last_error());
        return -1;
    }
    *state = &fx;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    ni_tokenizer_close(fx.t);
    json_decref(fx.rows);
    json_decref(fx.texts);
    return 0;
}

/* The "ordinary" or "special" ids of every row against ours. */
static void check_mode(const char *key, int allow_special) {
    size_t n_rows = json_array_size(fx.rows), bad = 0;
    for (size_t r = 0; r < n_rows; r++) {
        json_t *row = json_array_get(fx.rows, r);
        json_t *jt = json_object_get(row, "text"), *jids = json_object_get(row, key);
        if (!json_is_string(jt) || !json_is_array(jids)) fail_msg("row %zu: no text or %s", r, key);
        const char *text = json_string_value(jt);
        size_t len = json_string_length(jt), n_want = json_array_size(jids), n;
        int32_t *ids;
        assert_int_equal(ni_tokenizer_encode(fx.t, text, len, allow_special, &ids, &n), NI_OK);
        size_t first = 0;
        while (first < n && first < n_want &&
               ids[first] == (int32_t)json_integer_value(json_array_get(jids, first)))
            first++;
        if (first < n || first < n_want) {
            if (bad++ < 10)
                fprintf(stderr,
                        "%s row %zu (%zu bytes, \"%.60s\"): first difference at id %zu: ours %d, "
                        "tiktoken's %d (%zu vs %zu ids)\n",
                        key, r, len, text, first, first < n ? (int)ids[first] : -1,
                        first < n_want ? (int)json_integer_value(json_array_get(jids, first)) : -1,
                        n, n_want);
        }
        free(ids);
    }
    if (bad) fail_msg("%zu of %zu texts differ from tiktoken in %s mode", bad, n_rows, key);
}

static void test_ordinary(void **state) {
    (void)state;
    check_mode("ordinary", 0);
}

static void test_special(void **state) {
    (void)state;
    check_mode("special", 1);
}

/* corpus_ids.json must be made from the current corpus_texts.json. */
static void test_ids_match_texts(void **state) {
    (void)state;
    size_t n = json_array_size(fx.texts);
    assert_true(n >= 120);
    if (json_array_size(fx.rows) != n)
        fail_msg(
            "corpus_ids.json has %zu rows for %zu texts: regenerate it (tools/tiktoken_ids.py)",
            json_array_size(fx.rows), n);
    for (size_t i = 0; i < n; i++) {
        json_t *a = json_array_get(fx.texts, i);
        json_t *b = json_object_get(json_array_get(fx.rows, i), "text");
        if (!json_is_string(b) || json_string_length(a) != json_string_length(b) ||
            memcmp(json_string_value(a), json_string_value(b), json_string_length(a)) != 0)
            fail_msg("text %zu of corpus_ids.json is not that of corpus_texts.json: regenerate it",
                     i);
    }
}

int main(void) {
    char ids_path[1024], texts_path[1024];
    const char *env = getenv("NI_TOKENIZER_CORPUS_IDS");
    if (env && *env)
        snprintf(ids_path, sizeof ids_path, "%s", env);
    else
        ni_test_path(ids_path, sizeof ids_path, "tokenizer/corpus_ids.json");
    ni_test_path(texts_path, sizeof texts_path, "tokenizer/corpus_texts.json");
    if (access(ids_path, F_OK) != 0) {
        printf("skipped: corpus_ids.json not generated yet (%s; see tools/tiktoken_ids.py)\n",
               ids_path);
        return NI_TEST_SKIP;
    }
    json_error_t err;
    fx.rows = json_load_file(ids_path, JSON_ALLOW_NUL, &err);
    fx.texts = json_load_file(texts_path, JSON_ALLOW_NUL, &err);
    if (!json_is_array(fx.rows) || !json_is_array(fx.texts)) {
        fprintf(stderr, "cannot read %s or %s: %s\n", ids_path, texts_path, err.text);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids_match_texts),
        cmocka_unit_test(test_ordinary),
        cmocka_unit_test(test_special),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
