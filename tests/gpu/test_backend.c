/* The CUDA engine end to end against the references, in bf16 and again in fp16 (dtype option):
 * the fixture models' logits against transformers (float64) within a bound per type, greedy
 * continuations against transformers where the reference's top-2 margin is well above bf16
 * noise, baseline against kv_cache, ragged batches, a named random model against the CPU engine
 * on the same (Philox) weights, the fused decode step (forced on: greedy against the references
 * on the fixtures, reproducible and batch-independent on gpt2-large, whose tiles span many TMA
 * slabs), and the errors (a batch that does not fit, a prompt beyond the context). Skipped
 * without a GPU. */
#include <cuda_runtime_api.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_test_util.h"
#include "test_util.h"

static const char *const models[] = {"tiny-f32-prefix", "tiny-f16", "tiny-bf16", "gpt2-vocab"};

static const ni_dtype dtypes[] = {NI_DTYPE_BF16, NI_DTYPE_F16};

static ni_engine *engine(ni_model *m, ni_backend be, ni_preset p, size_t batch, size_t seq,
                         ni_dtype dt) {
    ni_engine_opts o = {
        .backend = be, .preset = p, .dtype = dt, .max_batch = batch, .max_seq = seq};
    ni_engine *e = NULL;
    if (ni_engine_create(m, &o, &e) != NI_OK) fail_msg("engine: %s", ni_last_error());
    return e;
}

static json_t *reference(const char *name, char *dir, size_t cap) {
    char rel[128], path[700];
    snprintf(rel, sizeof rel, "models/%s", name);
    ni_test_path(dir, cap, rel);
    snprintf(path, sizeof path, "%s/reference.json", dir);
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    if (!root) fail_msg("%s: %s", path, err.text);
    return root;
}

static size_t ids(json_t *a, int32_t *out) {
    for (size_t i = 0; i < json_array_size(a); i++)
        out[i] = (int32_t)json_integer_value(json_array_get(a, i));
    return json_array_size(a);
}

/* bf16 weights and activations against float64: 3% of the logit scale (the largest error seen
 * on an H200 is printed by the test; bf16 has 8 bits of mantissa, 0.4% per rounding). fp16 has
 * 11 (0.05% per rounding): the same number of roundings' worth would be 3% / 8 = 0.375%; 0.5%
 * leaves a third more headroom, and is still six times tighter than bf16's bound. */
#define BF16_LOGIT_TOL 0.03
#define F16_LOGIT_TOL 0.005

static double logit_tol(ni_dtype dt) {
    return dt == NI_DTYPE_F16 ? F16_LOGIT_TOL : BF16_LOGIT_TOL;
}

static void test_fixture_logits(void **state) {
    (void)state;
    for (size_t k = 0; k < 4; k++) {
        char dir[512], path[700];
        json_t *root = reference(models[k], dir, sizeof dir);
        json_t *lg = json_object_get(root, "logits");
        int32_t tok[128];
        size_t T = ids(json_object_get(lg, "tokens"), tok);
        size_t V = (size_t)json_integer_value(json_object_get(lg, "V"));
        snprintf(path, sizeof path, "%s/logits.bin", dir);
        size_t len;
        float *ref = (float *)ni_test_read_file(path, &len);
        assert_int_equal(len, T * V * 4);
        ni_model *m = NULL;
        assert_int_equal(ni_model_open(dir, NULL, &m), NI_OK);
        float *bf16_out = malloc(T * V * 4);
        for (size_t d = 0; d < 2; d++) {
            const ni_dtype dt = dtypes[d];
            for (ni_preset p = NI_PRESET_BASELINE; p <= NI_PRESET_KV_CACHE; p++) {
                ni_engine *e = engine(m, NI_BACKEND_CUDA, p, 2, 0, dt);
                float *out = malloc(T * V * 4);
                if (ni_logits(e, tok, T, out) != NI_OK) fail_msg("logits: %s", ni_last_error());
                double scale = 0, worst = 0;
                for (size_t i = 0; i < T * V; i++) scale = fmax(scale, fabs(ref[i]));
                for (size_t i = 0; i < T * V; i++) {
                    if (!isfinite(out[i])) fail_msg("%s: logit %zu is %g", models[k], i, out[i]);
                    worst = fmax(worst, fabs(out[i] - ref[i]));
                }
                printf("  %-16s %-4s %-9s max |logit error| %.4f of scale %.2f (%.3f%%)\n",
                       models[k], ni_dtype_name(dt), ni_preset_name(p), worst, scale,
                       100 * worst / scale);
                if (worst > logit_tol(dt) * scale)
                    fail_msg("%s %s: error %g > %g x scale %g", models[k], ni_dtype_name(dt), worst,
                             logit_tol(dt), scale);
                /* the dtype option takes effect: fp16 logits are not bf16's bit for bit */
                if (dt == NI_DTYPE_BF16) memcpy(bf16_out, out, T * V * 4);
                if (dt == NI_DTYPE_F16 && memcmp(bf16_out, out, T * V * 4) == 0)
                    fail_msg("%s: fp16 logits identical to bf16's", models[k]);
                free(out);
                ni_engine_destroy(e);
            }
        }
        free(bf16_out);
        free(ref);
        ni_model_close(m);
        json_decref(root);
    }
}

static void test_fixture_greedy(void **state) {
    (void)state;
    size_t checked[2] = {0, 0};
    for (size_t k = 0; k < 8; k++) {
        const ni_dtype dt = dtypes[k / 4];
        char dir[512];
        json_t *root = reference(models[k % 4], dir, sizeof dir);
        double std = json_real_value(json_object_get(root, "logit_std"));
        json_t *g = json_object_get(root, "greedy");
        size_t n = json_array_size(g);
        int32_t prompt[8][64], cont[8][64];
        size_t plen[8], clen[8];
        const int32_t *pp[8];
        double margin[8];
        for (size_t i = 0; i < n; i++) {
            json_t *c = json_array_get(g, i);
            plen[i] = ids(json_object_get(c, "prompt"), prompt[i]);
            clen[i] = ids(json_object_get(c, "continuation"), cont[i]);
            margin[i] = json_real_value(json_object_get(c, "min_margin"));
            pp[i] = prompt[i];
        }
        ni_model *m = NULL;
        assert_int_equal(ni_model_open(dir, NULL, &m), NI_OK);
        /* baseline, kv_cache, and kv_cache with every decode step fused (decode_fused.cu:
         * forced on for these small models, where it is off by default) */
        for (int pass = 0; pass < 3; pass++) {
            const ni_preset p = pass == 0 ? NI_PRESET_BASELINE : NI_PRESET_KV_CACHE;
            setenv("NI_FUSED", pass == 2 ? "1" : "", 1);
            ni_engine *e = engine(m, NI_BACKEND_CUDA, p, n, 0, dt);
            setenv("NI_FUSED", "", 1);
            ni_sampling s = {.temperature = 0.0f, .top_p = 1.0f, .max_new_tokens = clen[0]};
            ni_test_tokens c;
            memset(&c, 0, sizeof c);
            ni_batch b = {n, pp, plen};
            if (ni_generate(e, &b, &s, ni_test_collect, &c) != NI_OK)
                fail_msg("generate: %s", ni_last_error());
            for (size_t i = 0; i < n; i++) {
                int same = c.n[i] == clen[i] && !memcmp(c.tok[i], cont[i], clen[i] * 4);
                /* a margin of 5% of the logit spread is far above bf16 noise (and fp16's, eight
                 * times smaller): must agree */
                int must = margin[i] > 0.05 * std;
                printf("  %-16s %-4s %-9s case %zu margin %.3f: %s%s\n", models[k % 4],
                       ni_dtype_name(dt), pass == 2 ? "kv+fused" : ni_preset_name(p), i, margin[i],
                       same ? "identical" : "differs",
                       must ? "" : " (margin within bf16 noise: not required)");
                if (must && !same)
                    fail_msg("%s %s case %zu: greedy tokens differ", models[k % 4],
                             ni_dtype_name(dt), i);
                checked[k / 4] += must;
            }
            ni_engine_destroy(e);
        }
        ni_model_close(m);
        json_decref(root);
    }
    assert_true(checked[0] >= 8 && checked[1] >= 8);
}

static void test_random_model_against_cpu(void **state) {
    (void)state;
    ni_model *m = NULL;
    ni_model_opts mo = {.seed = 7};
    assert_int_equal(ni_model_open("gpt2", &mo, &m), NI_OK);
    size_t T = 20, V = 50257;
    int32_t tok[20];
    for (size_t t = 0; t < T; t++) tok[t] = (int32_t)((t * 7919 + 13) % V);
    float *cpu = malloc(T * V * 4), *gpu = malloc(T * V * 4);
    ni_engine *ec = engine(m, NI_BACKEND_CPU, NI_PRESET_KV_CACHE, 1, 64, NI_DTYPE_F32);
    assert_int_equal(ni_logits(ec, tok, T, cpu), NI_OK);
    ni_engine_destroy(ec);
    for (size_t d = 0; d < 2; d++) {
        /* the weights are drawn on the device in the engine's type */
        ni_engine *eg = engine(m, NI_BACKEND_CUDA, NI_PRESET_KV_CACHE, 1, 64, dtypes[d]);
        assert_int_equal(ni_logits(eg, tok, T, gpu), NI_OK);
        double scale = 0, worst = 0;
        for (size_t i = 0; i < T * V; i++) scale = fmax(scale, fabs(cpu[i]));
        for (size_t i = 0; i < T * V; i++) worst = fmax(worst, fabs(gpu[i] - cpu[i]));
        printf("  gpt2 random weights %-4s: max |gpu - cpu| %.4f of scale %.3f (%.3f%%)\n",
               ni_dtype_name(dtypes[d]), worst, scale, 100 * worst / scale);
        assert_true(worst <= logit_tol(dtypes[d]) * scale);
        ni_engine_destroy(eg);
    }
    free(cpu);
    free(gpu);
    ni_model_close(m);
}

/* The engines that share a forward pass give the same tokens: cuda_graphs (device-side state,
 * tokens ni_test_tokens every few steps; the prefill of a shape eager on its first use, then
 * captured, and replayed after) exactly as sampling for the same seed, across batch sizes (one
 * graph each) and generations; greedy the same in all four. In each dtype. */
static void check_presets_agree(ni_dtype dt) {
    ni_model *m = NULL;
    ni_model_opts mo = {.seed = 3};
    assert_int_equal(ni_model_open("gpt2", &mo, &m), NI_OK);
    int32_t p0[] = {464, 2068, 7586}, p1[] = {40, 588, 257, 1643, 286, 262, 995}, p2[] = {50256};
    const int32_t *prompts[] = {p0, p1, p2};
    size_t lens[] = {3, 7, 1};
    ni_sampling sampled = {.temperature = 1.0f,
                           .top_k = 20,
                           .top_p = 0.9f,
                           .seed = 11,
                           .max_new_tokens = 21,
                           .ignore_eos = 1};
    ni_sampling greedy = {
        .temperature = 0.0f, .top_p = 1.0f, .max_new_tokens = 21, .ignore_eos = 1};
    ni_test_tokens ref[4][2];
    ni_preset presets[] = {NI_PRESET_SAMPLING, NI_PRESET_CUDA_GRAPHS, NI_PRESET_KV_CACHE};
    for (size_t k = 0; k < 3; k++) {
        ni_engine *e = engine(m, NI_BACKEND_CUDA, presets[k], 3, 64, dt);
        for (size_t B = 3; B >= 2; B--) {
            const ni_sampling *s = presets[k] == NI_PRESET_KV_CACHE ? &greedy : &sampled;
            for (int rep = 0; rep < 3; rep++) { /* cuda_graphs: prefill eager, then replayed */
                ni_test_tokens c;
                memset(&c, 0, sizeof c);
                ni_batch b = {B, prompts, lens};
                if (ni_generate(e, &b, s, ni_test_collect, &c) != NI_OK)
                    fail_msg("%s: %s", ni_preset_name(presets[k]), ni_last_error());
                for (size_t i = 0; i < B; i++) assert_int_equal(c.n[i], 21);
                if (k == 0 && rep == 0) ref[B][0] = c;
                if (k < 2 && memcmp(c.tok, ref[B][0].tok, sizeof c.tok) != 0)
                    fail_msg("%s %s batch %zu (run %d): tokens differ from the sampling engine's",
                             ni_dtype_name(dt), ni_preset_name(presets[k]), B, rep);
            }
        }
        /* greedy: every engine agrees */
        ni_test_tokens g;
        memset(&g, 0, sizeof g);
        ni_batch b = {3, prompts, lens};
        assert_int_equal(ni_generate(e, &b, &greedy, ni_test_collect, &g), NI_OK);
        if (k == 0)
            ref[1][1] = g;
        else if (memcmp(g.tok, ref[1][1].tok, sizeof g.tok) != 0)
            fail_msg("%s %s: greedy tokens differ", ni_dtype_name(dt), ni_preset_name(presets[k]));
        ni_engine_destroy(e);
    }
    ni_model_close(m);
}

static void test_presets_agree(void **state) {
    (void)state;
    check_presets_agree(NI_DTYPE_BF16);
    check_presets_agree(NI_DTYPE_F16);
}

/* cuda_graphs captures a step per bound of the positions its decode attention covers (one
 * attention chunk of 128 at a time): a batch whose longest sequence crosses position 128
 * mid-generation (so its steps switch from the graph of bound 127 to that of bound 255, inside one
 * run-ahead window), and then one whose longest starts past it, give the sampling engine's tokens
 * (and the same again on a second run, from the graphs captured by the first). */
static void test_graphs_cross_chunks(void **state) {
    (void)state;
    ni_model *m = NULL;
    ni_model_opts mo = {.seed = 5};
    assert_int_equal(ni_model_open("gpt2", &mo, &m), NI_OK);
    int32_t p0[110], p1[3] = {40, 588, 257}, p2[140];
    for (size_t i = 0; i < 110; i++) p0[i] = (int32_t)((i * 7919) % 50000);
    for (size_t i = 0; i < 140; i++) p2[i] = (int32_t)((i * 104729) % 50000);
    const int32_t *prompts[] = {p0, p1, p2};
    size_t lens_cross[] = {110, 3, 123}; /* positions up to 146: bound 127, then 255 */
    size_t lens_past[] = {110, 3, 140};
    ni_sampling s = {.temperature = 1.0f,
                     .top_k = 20,
                     .top_p = 0.9f,
                     .seed = 17,
                     .max_new_tokens = 24,
                     .ignore_eos = 1};
    ni_engine *es = engine(m, NI_BACKEND_CUDA, NI_PRESET_SAMPLING, 3, 300, NI_DTYPE_BF16);
    ni_engine *eg = engine(m, NI_BACKEND_CUDA, NI_PRESET_CUDA_GRAPHS, 3, 300, NI_DTYPE_BF16);
    for (int set = 0; set < 2; set++) {
        ni_batch b = {3, prompts, set ? lens_past : lens_cross};
        ni_test_tokens ref;
        memset(&ref, 0, sizeof ref);
        assert_int_equal(ni_generate(es, &b, &s, ni_test_collect, &ref), NI_OK);
        for (int rep = 0; rep < 2; rep++) {
            ni_test_tokens c;
            memset(&c, 0, sizeof c);
            assert_int_equal(ni_generate(eg, &b, &s, ni_test_collect, &c), NI_OK);
            for (size_t i = 0; i < 3; i++) assert_int_equal(c.n[i], 24);
            if (memcmp(c.tok, ref.tok, sizeof c.tok) != 0)
                fail_msg("cuda_graphs, prompts %s 128, run %d: tokens differ from the sampling "
                         "engine's",
                         set ? "past" : "crossing", rep);
        }
    }
    ni_engine_destroy(es);
    ni_engine_destroy(eg);
    ni_model_close(m);
}

/* The fused decode step (forced on) on a model whose tiles have more TMA slabs than warps
 * (gpt2-large: fcproj 5120 columns, 20 slabs of 256) and whose phases have more than the ring
 * holds (the logits: about 24 tiles of 5 slabs a block), so that slots are refilled while
 * other warps still work on earlier slabs: the same tokens on every run
 * (a warp reading a slot before its fill lands would not be reproducible), under the graphs as
 * eagerly, and a row's tokens do not depend on the rest of the batch. */
static void test_fused_large_model(void **state) {
    (void)state;
    ni_model *m = NULL;
    ni_model_opts mo = {.seed = 5};
    assert_int_equal(ni_model_open("gpt2-large", &mo, &m), NI_OK);
    int32_t p0[] = {464, 2068, 7586, 21831}, p1[] = {40, 588, 257}, p2[] = {50256},
            p3[] = {3666, 1438, 318, 1757, 290, 314};
    const int32_t *prompts[] = {p0, p1, p2, p3};
    size_t lens[] = {4, 3, 1, 6};
    ni_sampling s = {.temperature = 1.0f,
                     .top_k = 20,
                     .top_p = 0.9f,
                     .seed = 3,
                     .max_new_tokens = 24,
                     .ignore_eos = 1};
    setenv("NI_FUSED", "1", 1);
    ni_test_tokens ref, c;
    const ni_preset presets[] = {NI_PRESET_SAMPLING, NI_PRESET_CUDA_GRAPHS};
    for (size_t k = 0; k < 2; k++) {
        ni_engine *e = engine(m, NI_BACKEND_CUDA, presets[k], 4, 64, NI_DTYPE_BF16);
        for (int rep = 0; rep < 3; rep++) {
            memset(&c, 0, sizeof c);
            ni_batch b = {4, prompts, lens};
            if (ni_generate(e, &b, &s, ni_test_collect, &c) != NI_OK)
                fail_msg("%s: %s", ni_preset_name(presets[k]), ni_last_error());
            ni_stats st;
            assert_int_equal(ni_engine_stats(e, &st), NI_OK);
            assert_int_equal(st.fused_steps, s.max_new_tokens - 1); /* it did run fused */
            if (k == 0 && rep == 0)
                ref = c;
            else if (memcmp(c.tok, ref.tok, sizeof c.tok) != 0)
                fail_msg("fused %s run %d: tokens differ from the first run",
                         ni_preset_name(presets[k]), rep);
        }
        /* row 0 alone */
        memset(&c, 0, sizeof c);
        ni_batch one = {1, prompts, lens};
        assert_int_equal(ni_generate(e, &one, &s, ni_test_collect, &c), NI_OK);
        if (memcmp(c.tok[0], ref.tok[0], sizeof c.tok[0]) != 0)
            fail_msg("fused %s: row 0 alone differs from row 0 of the batch",
                     ni_preset_name(presets[k]));
        ni_engine_destroy(e);
    }
    /* and off: the same engine without it runs no fused step */
    setenv("NI_FUSED", "0", 1);
    ni_engine *e = engine(m, NI_BACKEND_CUDA, NI_PRESET_CUDA_GRAPHS, 4, 64, NI_DTYPE_BF16);
    ni_batch b = {4, prompts, lens};
    memset(&c, 0, sizeof c);
    assert_int_equal(ni_generate(e, &b, &s, ni_test_collect, &c), NI_OK);
    ni_stats st;
    assert_int_equal(ni_engine_stats(e, &st), NI_OK);
    assert_int_equal(st.fused_steps, 0);
    ni_engine_destroy(e);
    setenv("NI_FUSED", "", 1);
    printf("  gpt2-large, fused step forced on: 24 sampled tokens x 4 rows identical over runs, "
           "engines and batch sizes\n");
    ni_model_close(m);
}

static void test_errors(void **state) {
    (void)state;
    ni_model *m = NULL;
    assert_int_equal(ni_model_open("gpt2-xl", NULL, &m), NI_OK);
    /* a KV cache far beyond any card: refused up front with the bytes needed and free */
    ni_engine_opts o = {.backend = NI_BACKEND_CUDA,
                        .preset = NI_PRESET_KV_CACHE,
                        .max_batch = 100000,
                        .max_seq = 1024};
    ni_engine *e = NULL;
    assert_int_equal(ni_engine_create(m, &o, &e), NI_ERR_NO_MEMORY);
    printf("  %s\n", ni_last_error());
    assert_non_null(strstr(ni_last_error(), "free"));
    assert_null(e);
    ni_model_close(m);
}

int main(void) {
    if (ni_test_no_gpu()) return NI_TEST_SKIP;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture_logits),
        cmocka_unit_test(test_fixture_greedy),
        cmocka_unit_test(test_random_model_against_cpu),
        cmocka_unit_test(test_presets_agree),
        cmocka_unit_test(test_graphs_cross_chunks),
        cmocka_unit_test(test_fused_large_model),
        cmocka_unit_test(test_errors),
    };
    ni_test_filter_from_env();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
