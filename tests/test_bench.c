/* The benchmark on the CPU: a quick sweep of every CPU engine on a fixture model writes JSON and
 * CSV with every field of DESIGN.md §7 and sane values (positive times, memory above the
 * weights, throughput = batch / ITL), a configuration that cannot run is a row with an error
 * while the sweep goes on, and tools/plot_bench.py renders a PNG from the JSON. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

static void test_quick_sweep_json_csv_plot(void **state) {
    (void)state;
    char tmp[256], model[512], cmd[2048], path[512];
    ni_test_tmpdir(tmp, sizeof tmp);
    ni_test_path(model, sizeof model, "models/tiny-f16");
    /* prompt 120 + 10 new tokens exceeds the model's 128 positions */
    snprintf(cmd, sizeof cmd,
             "NI_GRAPH_STEPS=4 %s bench --model %s --batch-sizes 1,3 --prompt-len 5,120 "
             "--max-new-tokens 10 "
             "--runs 2 --warmup 1 --out %s/b 2>/dev/null",
             NI_CLI_PATH, model, tmp);
    int st;
    char *out = ni_test_run(cmd, &st);
    assert_int_equal(st, 0);
    assert_non_null(strstr(out, "batch 3, prompt 5"));
    assert_non_null(strstr(out, "speedup"));
    free(out);

    snprintf(path, sizeof path, "%s/b/bench.json", tmp);
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    if (!root) fail_msg("%s: %s", path, err.text);
    json_t *run = json_object_get(root, "run");
    const char *run_keys[] = {"card", "model", "dtype",  "git_commit",
                              "date", "runs",  "warmup", "env"};
    for (size_t i = 0; i < sizeof run_keys / sizeof *run_keys; i++)
        if (!json_object_get(run, run_keys[i])) fail_msg("run has no '%s'", run_keys[i]);
    /* the engine switches in the environment are recorded */
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(run, "env"), "NI_GRAPH_STEPS")), "4");
    json_t *rows = json_object_get(root, "results");
    assert_int_equal(json_array_size(rows), 3 * 2 * 2); /* engines x batches x prompt lengths */
    size_t ok = 0, errors = 0;
    for (size_t i = 0; i < json_array_size(rows); i++) {
        json_t *r = json_array_get(rows, i);
        size_t B = (size_t)json_integer_value(json_object_get(r, "batch_size"));
        size_t P = (size_t)json_integer_value(json_object_get(r, "prompt_len"));
        assert_true(json_is_string(json_object_get(r, "engine")));
        assert_int_equal(json_integer_value(json_object_get(r, "new_tokens")), 10);
        if (json_object_get(r, "error")) {
            /* only the configurations beyond the context fail, and say why */
            assert_int_equal(P, 120);
            assert_non_null(strstr(json_string_value(json_object_get(r, "error")), "context"));
            errors++;
            continue;
        }
        double ttft = json_real_value(json_object_get(r, "ttft_ms"));
        double itl = json_real_value(json_object_get(r, "itl_ms"));
        double tok_s = json_real_value(json_object_get(r, "decode_tok_s"));
        double per_req = json_real_value(json_object_get(r, "per_request_tok_s"));
        double prefill = json_real_value(json_object_get(r, "prefill_tok_s"));
        json_int_t peak = json_integer_value(json_object_get(r, "peak_mem_bytes"));
        json_int_t weights = json_integer_value(json_object_get(r, "weight_bytes"));
        assert_true(ttft > 0 && itl > 0 && tok_s > 0 && per_req > 0 && prefill > 0);
        assert_true(fabs(tok_s - (double)B * 1e3 / itl) < 1e-6 * tok_s);
        assert_true(fabs(per_req - 1e3 / itl) < 1e-6 * per_req);
        assert_true(weights > 0 && peak > weights);
        json_t *fused = json_object_get(r, "fused_steps");
        assert_true(json_is_integer(fused) && json_integer_value(fused) == 0); /* CPU */
        ok++;
    }
    assert_int_equal(ok, 6);
    assert_int_equal(errors, 6);
    json_decref(root);

    snprintf(path, sizeof path, "%s/b/bench.csv", tmp);
    size_t len;
    char *csv = ni_test_read_file(path, &len);
    assert_non_null(csv);
    assert_true(strncmp(csv,
                        "engine,batch_size,prompt_len,new_tokens,ttft_ms,itl_ms,decode_tok_s,"
                        "per_request_tok_s,prefill_tok_s,peak_mem_bytes",
                        86) == 0);
    size_t lines = 0;
    for (char *p = csv; *p; p++) lines += *p == '\n';
    assert_int_equal(lines, 13);
    free(csv);

    /* the plot script renders the three-panel PNG (Debian's python3 has matplotlib) */
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 %s/tools/plot_bench.py %s/b/bench.json --out %s/b/p.png",
             NI_SOURCE_DIR, tmp, tmp);
    free(ni_test_run(cmd, &st));
    assert_int_equal(st, 0);
    snprintf(path, sizeof path, "%s/b/p.png", tmp);
    char *png = ni_test_read_file(path, &len);
    assert_non_null(png);
    assert_true(len > 10000 && memcmp(png, "\x89PNG", 4) == 0);
    free(png);
}

static void test_bench_rejects_bad_options(void **state) {
    (void)state;
    char cmd[1024];
    int st;
    snprintf(cmd, sizeof cmd, "%s bench --engines turbo 2>&1", NI_CLI_PATH);
    free(ni_test_run(cmd, &st));
    assert_int_equal(st, 2);
    snprintf(cmd, sizeof cmd, "%s bench --batch-sizes 0,2 2>&1", NI_CLI_PATH);
    free(ni_test_run(cmd, &st));
    assert_int_equal(st, 2);
    snprintf(cmd, sizeof cmd, "%s bench --help", NI_CLI_PATH);
    char *out = ni_test_run(cmd, &st);
    assert_int_equal(st, 0);
    assert_non_null(strstr(out, "--batch-sizes"));
    free(out);
    /* each bad option named as such, before any run */
    static const struct {
        const char *args, *says;
    } bad[] = {{"--backend gpu", "cpu or cuda"},
               {"--bogus", "unknown option '--bogus'"},
               {"--top-p 1.5", "--top-p"},
               {"--quick=no", "takes no value"}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(cmd, sizeof cmd, "%s bench %s 2>&1", NI_CLI_PATH, bad[i].args);
        out = ni_test_run(cmd, &st);
        if (st != 2 || !strstr(out, bad[i].says))
            fail_msg("bench %s: exit %d, '%s' (want 2 and '%s')", bad[i].args, st, out,
                     bad[i].says);
        free(out);
    }
}

/* A sweep in which no configuration runs (every prompt past the context) fails as a whole, and
 * --quick leaves the options given explicitly as they are. */
static void test_bench_exit_and_quick(void **state) {
    (void)state;
    char tmp[256], model[512], cmd[2048], path[512];
    ni_test_tmpdir(tmp, sizeof tmp);
    ni_test_path(model, sizeof model, "models/tiny-f16");
    int st;
    snprintf(cmd, sizeof cmd,
             "%s bench --model %s --engines kv_cache --batch-sizes 1 --prompt-len 200 "
             "--max-new-tokens 2 --runs 1 --warmup 0 --out %s/none 2>&1",
             NI_CLI_PATH, model, tmp);
    char *out = ni_test_run(cmd, &st);
    if (st != 1 || !strstr(out, "no configuration ran"))
        fail_msg("a sweep with nothing run: exit %d, '%s'", st, out);
    free(out);
    snprintf(cmd, sizeof cmd,
             "%s bench --quick --model %s --engines kv_cache --batch-sizes 1,2,3 --prompt-len 4 "
             "--max-new-tokens 2 --runs 3 --warmup 0 --out %s/q 2>/dev/null",
             NI_CLI_PATH, model, tmp);
    free(ni_test_run(cmd, &st));
    assert_int_equal(st, 0);
    snprintf(path, sizeof path, "%s/q/bench.json", tmp);
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    if (!root) fail_msg("%s: %s", path, err.text);
    json_t *run = json_object_get(root, "run");
    assert_int_equal(json_integer_value(json_object_get(run, "runs")), 3);
    assert_int_equal(json_integer_value(json_object_get(run, "warmup")), 0);
    assert_int_equal(json_array_size(json_object_get(root, "results")), 3); /* batches 1, 2, 3 */
    json_decref(root);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quick_sweep_json_csv_plot),
        cmocka_unit_test(test_bench_rejects_bad_options),
        cmocka_unit_test(test_bench_exit_and_quick),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
