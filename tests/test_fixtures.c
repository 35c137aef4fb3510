/* Model-level tests against Hugging Face transformers: the fixture models made by
 * tools/make_fixtures.py (F32 with the "transformer." prefix and the attn.bias buffers, F16
 * without, BF16 with an eos that is not the last id, and one with GPT-2's full vocabulary),
 * with their float64 reference logits and greedy continuations. The CPU engine must give every
 * logit within 1e-4 of the logit scale and the very same greedy tokens, alone and in ragged
 * batches, in every preset; and the CLI's logits and generate commands must say the same. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/safetensors.h"
#include "model_writer.h"
#include "test_util.h"

static const char *const fixture_models[] = {"tiny-f32-prefix", "tiny-f16", "tiny-bf16",
                                             "gpt2-vocab"};
#define N_MODELS (sizeof fixture_models / sizeof fixture_models[0])

typedef struct {
    int32_t prompt[64], cont[64];
    size_t n_prompt, n_cont;
} greedy_case;

typedef struct {
    char dir[512];
    int32_t logit_tokens[128];
    size_t T, V;
    float *logits; /* (T, V) */
    greedy_case cases[8];
    size_t n_cases;
} fixture;

static size_t read_ids(json_t *arr, int32_t *out, size_t cap) {
    size_t n = json_array_size(arr);
    assert_true(n <= cap);
    for (size_t i = 0; i < n; i++) out[i] = (int32_t)json_integer_value(json_array_get(arr, i));
    return n;
}

static void load_fixture(const char *name, fixture *f) {
    memset(f, 0, sizeof *f);
    char rel[256], path[700];
    snprintf(rel, sizeof rel, "models/%s", name);
    ni_test_path(f->dir, sizeof f->dir, rel);
    snprintf(path, sizeof path, "%s/reference.json", f->dir);
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    if (!root) fail_msg("%s: %s (run tools/make_fixtures.py)", path, err.text);
    json_t *lg = json_object_get(root, "logits");
    f->T = read_ids(json_object_get(lg, "tokens"), f->logit_tokens, 128);
    f->V = (size_t)json_integer_value(json_object_get(lg, "V"));
    assert_int_equal(f->T, (size_t)json_integer_value(json_object_get(lg, "T")));
    snprintf(path, sizeof path, "%s/%s", f->dir, json_string_value(json_object_get(lg, "file")));
    size_t len;
    f->logits = (float *)ni_test_read_file(path, &len);
    assert_non_null(f->logits);
    assert_int_equal(len, f->T * f->V * sizeof(float));
    json_t *g = json_object_get(root, "greedy");
    f->n_cases = json_array_size(g);
    assert_true(f->n_cases >= 4 && f->n_cases <= 8);
    for (size_t i = 0; i < f->n_cases; i++) {
        json_t *c = json_array_get(g, i);
        f->cases[i].n_prompt = read_ids(json_object_get(c, "prompt"), f->cases[i].prompt, 64);
        f->cases[i].n_cont = read_ids(json_object_get(c, "continuation"), f->cases[i].cont, 64);
    }
    json_decref(root);
}

static ni_engine *engine(ni_model *m, ni_preset p, size_t batch) {
    ni_engine_opts o = {.backend = NI_BACKEND_CPU, .preset = p, .max_batch = batch};
    ni_engine *e = NULL;
    if (ni_engine_create(m, &o, &e) != NI_OK) fail_msg("engine: %s", ni_last_error());
    return e;
}

static void test_logits_match_transformers(void **state) {
    (void)state;
    for (size_t k = 0; k < N_MODELS; k++) {
        fixture f;
        load_fixture(fixture_models[k], &f);
        ni_model *m = NULL;
        if (ni_model_open(f.dir, NULL, &m) != NI_OK) fail_msg("%s", ni_last_error());
        assert_int_equal(ni_model_config(m)->vocab_size, f.V);
        ni_engine *e = engine(m, NI_PRESET_KV_CACHE, 1);
        float *out = malloc(f.T * f.V * sizeof *out);
        assert_int_equal(ni_logits(e, f.logit_tokens, f.T, out), NI_OK);
        double scale = 0, worst = 0;
        for (size_t i = 0; i < f.T * f.V; i++) scale = fmax(scale, fabs(f.logits[i]));
        for (size_t i = 0; i < f.T * f.V; i++) worst = fmax(worst, fabs(out[i] - f.logits[i]));
        /* f32 against transformers in float64: within 1e-4 of the logit scale */
        if (worst > 1e-4 * scale)
            fail_msg("%s: max |logit error| %g > 1e-4 x scale %g", fixture_models[k], worst, scale);
        printf("  %-16s max |logit error| %.2e, scale %.2f\n", fixture_models[k], worst, scale);
        free(out);
        free(f.logits);
        ni_engine_destroy(e);
        ni_model_close(m);
    }
}

static void test_greedy_matches_transformers(void **state) {
    (void)state;
    for (size_t k = 0; k < N_MODELS; k++) {
        fixture f;
        load_fixture(fixture_models[k], &f);
        ni_model *m = NULL;
        assert_int_equal(ni_model_open(f.dir, NULL, &m), NI_OK);
        const int32_t *prompts[8];
        size_t lens[8];
        for (size_t i = 0; i < f.n_cases; i++) {
            prompts[i] = f.cases[i].prompt;
            lens[i] = f.cases[i].n_prompt;
        }
        for (ni_preset p = NI_PRESET_BASELINE; p <= NI_PRESET_SAMPLING; p++) {
            ni_engine *e = engine(m, p, f.n_cases);
            ni_sampling s = {
                .temperature = 0.0f, .top_p = 1.0f, .max_new_tokens = f.cases[0].n_cont};
            /* each case alone, then all of them as one ragged batch */
            for (size_t i = 0; i <= f.n_cases; i++) {
                ni_test_tokens c;
                memset(&c, 0, sizeof c);
                size_t first = i < f.n_cases ? i : 0, count = i < f.n_cases ? 1 : f.n_cases;
                ni_batch b = {count, prompts + first, lens + first};
                if (ni_generate(e, &b, &s, ni_test_collect, &c) != NI_OK)
                    fail_msg("%s: %s", fixture_models[k], ni_last_error());
                for (size_t j = 0; j < count; j++) {
                    const greedy_case *gc = &f.cases[first + j];
                    assert_int_equal(c.n[j], gc->n_cont);
                    if (memcmp(c.tok[j], gc->cont, gc->n_cont * sizeof(int32_t)) != 0)
                        fail_msg("%s, %s, case %zu (%s): greedy tokens differ", fixture_models[k],
                                 ni_preset_name(p), first + j, count > 1 ? "batched" : "alone");
                }
            }
            ni_engine_destroy(e);
        }
        free(f.logits);
        ni_model_close(m);
    }
}

static void test_cli_logits_and_generate(void **state) {
    (void)state;
    fixture f;
    load_fixture("tiny-f16", &f);
    char tmp[256], cmd[4096], ids[1024] = "";
    ni_test_tmpdir(tmp, sizeof tmp);
    size_t off = 0;
    for (size_t i = 0; i < f.T; i++)
        off += (size_t)snprintf(ids + off, sizeof ids - off, i ? ",%d" : "%d", f.logit_tokens[i]);
    snprintf(cmd, sizeof cmd, "%s logits --model %s --tokens %s --out %s/l.bin", NI_CLI_PATH, f.dir,
             ids, tmp);
    int st;
    free(ni_test_run(cmd, &st));
    assert_int_equal(st, 0);
    char path[512];
    snprintf(path, sizeof path, "%s/l.bin", tmp);
    size_t len;
    float *got = (float *)ni_test_read_file(path, &len);
    assert_non_null(got);
    assert_int_equal(len, f.T * f.V * sizeof(float));
    double scale = 0, worst = 0;
    for (size_t i = 0; i < f.T * f.V; i++) scale = fmax(scale, fabs(f.logits[i]));
    for (size_t i = 0; i < f.T * f.V; i++) worst = fmax(worst, fabs(got[i] - f.logits[i]));
    assert_true(worst <= 1e-4 * scale);
    free(got);

    /* a batch of two prompts through generate --output json */
    char p0[512] = "", p1[512] = "";
    for (size_t i = 0, o0 = 0; i < f.cases[1].n_prompt; i++)
        o0 += (size_t)snprintf(p0 + o0, sizeof p0 - o0, i ? ",%d" : "%d", f.cases[1].prompt[i]);
    for (size_t i = 0, o1 = 0; i < f.cases[3].n_prompt; i++)
        o1 += (size_t)snprintf(p1 + o1, sizeof p1 - o1, i ? ",%d" : "%d", f.cases[3].prompt[i]);
    snprintf(cmd, sizeof cmd,
             "%s generate --model %s --tokens %s --tokens %s --max-new-tokens %zu --greedy "
             "--output json",
             NI_CLI_PATH, f.dir, p0, p1, f.cases[1].n_cont);
    char *out = ni_test_run(cmd, &st);
    assert_int_equal(st, 0);
    char *line = out;
    for (size_t seq = 0; seq < 2; seq++) {
        json_error_t err;
        json_t *o = json_loads(line, JSON_DISABLE_EOF_CHECK, &err);
        if (!o) fail_msg("not JSON: %s", line);
        const greedy_case *gc = &f.cases[seq == 0 ? 1 : 3];
        json_t *tk = json_object_get(o, "tokens");
        assert_int_equal(json_array_size(tk), gc->n_cont);
        for (size_t i = 0; i < gc->n_cont; i++)
            assert_int_equal(json_integer_value(json_array_get(tk, i)), gc->cont[i]);
        json_decref(o);
        line = strchr(line, '\n');
        assert_non_null(line);
        line++;
    }
    free(out);

    /* errors: a prompt too long for the context, a bad option, an unknown model */
    snprintf(cmd, sizeof cmd,
             "%s generate --model %s --tokens 1,2,3 --max-new-tokens 500 --greedy 2>&1",
             NI_CLI_PATH, f.dir);
    out = ni_test_run(cmd, &st);
    assert_int_equal(st, 1);
    assert_non_null(strstr(out, "context"));
    free(out);
    snprintf(cmd, sizeof cmd, "%s generate --model %s --tokens 1,x 2>&1", NI_CLI_PATH, f.dir);
    out = ni_test_run(cmd, &st);
    assert_int_equal(st, 2);
    free(out);
    /* a count that would wrap the context check around; options that take no value or (0, 1];
     * a directory as the prompt file; output that cannot be written */
    static const struct {
        const char *args, *says;
        int status;
    } bad[] = {{"--tokens 1,2,3 --max-new-tokens 18446744073709551615", "context", 1},
               {"--tokens 1,2 --greedy=no", "takes no value", 2},
               {"--tokens 1,2 --ignore-eos=0", "takes no value", 2},
               {"--tokens 1,2 --top-p 1.5", "--top-p", 2},
               {"--prompt-file /tmp", "cannot read", 1},
               {"--tokens 1,2 --max-new-tokens 2 --greedy >/dev/full", "cannot write", 1}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        /* stderr to the pipe first, so that a redirection of stdout in args leaves it there */
        snprintf(cmd, sizeof cmd, "%s generate 2>&1 --model %s %s", NI_CLI_PATH, f.dir,
                 bad[i].args);
        out = ni_test_run(cmd, &st);
        if (st != bad[i].status || !strstr(out, bad[i].says))
            fail_msg("generate %s: exit %d, '%s' (want %d and '%s')", bad[i].args, st, out,
                     bad[i].status, bad[i].says);
        free(out);
    }
    snprintf(cmd, sizeof cmd, "%s info --model %s/nope 2>&1", NI_CLI_PATH, f.dir);
    out = ni_test_run(cmd, &st);
    assert_int_equal(st, 1);
    assert_non_null(strstr(out, "nope"));
    free(out);
    snprintf(cmd, sizeof cmd, "%s info --model %s", NI_CLI_PATH, f.dir);
    out = ni_test_run(cmd, &st);
    assert_int_equal(st, 0);
    assert_non_null(strstr(out, "vocab_size   517"));
    free(out);
    free(f.logits);
}

/* score and text generation on the full-vocabulary fixture (GPT-2's tokenizer) */
static void test_cli_score_and_text(void **state) {
    (void)state;
    char dir[512], path[700], cmd[2048];
    ni_test_path(dir, sizeof dir, "models/gpt2-vocab");
    snprintf(path, sizeof path, "%s/reference.json", dir);
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    assert_non_null(root);
    double want = json_real_value(json_object_get(json_object_get(root, "nll"), "mean_nll"));
    json_decref(root);
    snprintf(cmd, sizeof cmd, "%s score --model %s --text-file %s/score.txt --output json",
             NI_CLI_PATH, dir, dir);
    int st;
    char *out = ni_test_run(cmd, &st);
    assert_int_equal(st, 0);
    json_t *o = json_loads(out, JSON_DISABLE_EOF_CHECK, &err);
    assert_non_null(o);
    double got = json_real_value(json_object_get(o, "mean_nll"));
    /* the sliding-window NLL of transformers in float64, within 1e-4 relative */
    if (fabs(got - want) > 1e-4 * fabs(want)) fail_msg("score %.8f, transformers %.8f", got, want);
    assert_int_equal(json_integer_value(json_object_get(o, "tokens")), 319);
    assert_true(json_integer_value(json_object_get(o, "windows")) > 1);
    json_decref(o);
    free(out);

    /* three samples of one text prompt: three objects with text; the seed reproduces them */
    snprintf(cmd, sizeof cmd,
             "%s generate --model %s --prompt 'Hello, world' --num-samples 3 --max-new-tokens 8 "
             "--top-k 40 --seed 5 --output json",
             NI_CLI_PATH, dir);
    char *a = ni_test_run(cmd, &st);
    assert_int_equal(st, 0);
    char *b = ni_test_run(cmd, &st);
    size_t lines = 0;
    char *lb = b;
    for (char *line = a; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        json_t *g = json_loads(line, JSON_DISABLE_EOF_CHECK, &err);
        json_t *h = json_loads(lb, JSON_DISABLE_EOF_CHECK, &err);
        assert_non_null(g);
        assert_non_null(h);
        assert_int_equal(json_array_size(json_object_get(g, "prompt")), 3); /* Hello , world */
        assert_int_equal(json_array_size(json_object_get(g, "tokens")), 8);
        assert_true(json_is_string(json_object_get(g, "text")));
        assert_true(json_equal(json_object_get(g, "tokens"), json_object_get(h, "tokens")));
        json_decref(g);
        json_decref(h);
        lb = strchr(lb, '\n') + 1;
        lines++;
    }
    assert_int_equal(lines, 3);
    free(a);
    free(b);
    /* streamed text mode prints the prompt and the continuation */
    snprintf(cmd, sizeof cmd,
             "%s generate --model %s --prompt 'Hello, world' --max-new-tokens 4 2>/dev/null",
             NI_CLI_PATH, dir);
    out = ni_test_run(cmd, &st);
    assert_int_equal(st, 0);
    assert_true(strncmp(out, "Hello, world", 12) == 0 && strlen(out) > 13);
    free(out);
}

/* Sets n floats of tensor `name` in dir/model.safetensors (F32) from element `at` to v. */
static void patch_tensor(const char *dir, const char *name, size_t at, size_t n, float v) {
    char path[700];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ni_safetensors *st = NULL;
    assert_int_equal(ni_st_open(path, &st), NI_OK);
    const ni_st_tensor *t = ni_st_find(st, name);
    assert_non_null(t);
    assert_true(at + n <= t->numel);
    const long off = (long)(t->data - (const uint8_t *)st->map) + (long)(at * sizeof(float));
    ni_st_close(st);
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    assert_int_equal(fseek(f, off, SEEK_SET), 0);
    for (size_t i = 0; i < n; i++) assert_int_equal(fwrite(&v, sizeof v, 1, f), 1);
    assert_int_equal(fclose(f), 0);
}

/* A model whose vocabulary is padded past the tokenizer's 50,257 entries (as some exported
 * checkpoints are), made to pick id 50260 greedily (ln_f gives every position the vector of
 * ones, and only that row of the tied embedding is all ones): the id the tokenizer lacks is
 * shown as "<|id 50260|>" in the text, not dropped. */
static void test_cli_padded_vocabulary(void **state) {
    (void)state;
    char tmp[256], src[512], cmd[2048];
    ni_test_tmpdir(tmp, sizeof tmp);
    const tm_spec spec = {.n_layer = 1,
                          .n_head = 2,
                          .n_embd = 16,
                          .vocab_size = 50264,
                          .n_ctx = 16,
                          .dtype = "F32",
                          .seed = 3,
                          .scale = 0.1f};
    assert_int_equal(tm_write_model(tmp, &spec), 0);
    patch_tensor(tmp, "ln_f.weight", 0, 16, 0.0f);
    patch_tensor(tmp, "ln_f.bias", 0, 16, 1.0f);
    patch_tensor(tmp, "wte.weight", (size_t)50260 * 16, 16, 1.0f);
    ni_test_path(src, sizeof src, "models/gpt2-vocab");
    snprintf(cmd, sizeof cmd, "cp %s/vocab.json %s/merges.txt %s/", src, src, tmp);
    int st;
    free(ni_test_run(cmd, &st));
    assert_int_equal(st, 0);
    snprintf(cmd, sizeof cmd,
             "%s generate --model %s --prompt Hello --max-new-tokens 2 --greedy --output json",
             NI_CLI_PATH, tmp);
    char *out = ni_test_run(cmd, &st);
    assert_int_equal(st, 0);
    json_error_t err;
    json_t *o = json_loads(out, JSON_DISABLE_EOF_CHECK, &err);
    if (!o) fail_msg("not JSON: %s", out);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(o, "tokens"), 0)), 50260);
    const char *text = json_string_value(json_object_get(o, "text"));
    if (!text || strcmp(text, "<|id 50260|><|id 50260|>") != 0)
        fail_msg("text of the padded ids: %s", out);
    json_decref(o);
    free(out);
    /* streamed as it is generated, the same */
    snprintf(cmd, sizeof cmd,
             "%s generate --model %s --prompt Hello --max-new-tokens 2 --greedy 2>/dev/null",
             NI_CLI_PATH, tmp);
    out = ni_test_run(cmd, &st);
    assert_int_equal(st, 0);
    if (!strstr(out, "Hello<|id 50260|><|id 50260|>")) fail_msg("streamed as '%s'", out);
    free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logits_match_transformers),
        cmocka_unit_test(test_greedy_matches_transformers),
        cmocka_unit_test(test_cli_logits_and_generate),
        cmocka_unit_test(test_cli_score_and_text),
        cmocka_unit_test(test_cli_padded_vocabulary),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
