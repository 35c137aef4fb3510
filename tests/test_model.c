/* Model loading and the CPU engine on models written by the test itself: named configs, every
 * dtype and key layout, each malformed-file case (a clear error naming file and tensor), the
 * forward pass against a naive double-precision GPT-2 written here, and the engine presets
 * agreeing with each other, alone and inside ragged batches. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/model.h"
#include "model_writer.h"
#include "test_util.h"

static const tm_spec small = {.n_layer = 2,
                              .n_head = 4,
                              .n_embd = 32,
                              .vocab_size = 97,
                              .n_ctx = 48,
                              .dtype = "F32",
                              .prefix = 0,
                              .seed = 7,
                              .scale = 0.3f};

static void write_small(char *dir, size_t cap, const tm_spec *spec) {
    ni_test_tmpdir(dir, cap);
    assert_true(dir[0] != '\0');
    assert_int_equal(tm_write_model(dir, spec), 0);
}

/* ---- named configs ----------------------------------------------------------------------- */

/* A model directory named like a config ("gpt2" in the working directory) is the model, as in
 * Hugging Face's loaders; without its config.json the name is the named config. */
static void test_directory_before_name(void **state) {
    (void)state;
    char dir[256], sub[300], cwd[1024];
    ni_test_tmpdir(dir, sizeof dir);
    assert_true(dir[0] != '\0');
    snprintf(sub, sizeof sub, "%s/gpt2", dir);
    assert_int_equal(mkdir(sub, 0755), 0);
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(dir), 0);
    ni_model *m = NULL;
    assert_int_equal(ni_model_open("gpt2", NULL, &m), NI_OK); /* an empty folder: the name */
    assert_null(ni_model_dir(m));
    ni_model_close(m);
    assert_int_equal(tm_write_model(sub, &small), 0);
    m = NULL;
    assert_int_equal(ni_model_open("gpt2", NULL, &m), NI_OK);
    assert_non_null(ni_model_dir(m));
    assert_int_equal(ni_model_config(m)->n_layer, 2);
    ni_model_close(m);
    assert_int_equal(chdir(cwd), 0);
}

static void test_named_param_counts(void **state) {
    (void)state;
    const struct {
        const char *name;
        size_t params;
    } known[] = {{"gpt2", 124439808},
                 {"gpt2-medium", 354823168},
                 {"gpt2-large", 774030080},
                 {"gpt2-xl", 1557611200}};
    for (size_t i = 0; i < 4; i++) {
        ni_model *m = NULL;
        assert_int_equal(ni_model_open(known[i].name, NULL, &m), NI_OK);
        assert_int_equal(ni_model_param_count(m), known[i].params);
        assert_int_equal(ni_model_config(m)->vocab_size, 50257);
        assert_null(ni_model_dir(m));
        ni_model_close(m);
    }
    ni_model *m = NULL;
    assert_int_equal(ni_model_open("empty-16B", NULL, &m), NI_OK);
    assert_int_equal(ni_model_config(m)->n_embd, 4608);
    assert_int_equal(ni_model_config(m)->n_layer, 64);
    ni_model_close(m);
    assert_int_equal(ni_model_open("gpt3", NULL, &m), NI_ERR_INVALID_ARG);
    assert_non_null(strstr(ni_last_error(), "gpt3"));
}

static void test_random_init_statistics(void **state) {
    (void)state;
    ni_model *m = NULL;
    ni_model_opts o = {.seed = 42};
    assert_int_equal(ni_model_open("gpt2", &o, &m), NI_OK);
    size_t C = 768, n = 3 * C * C;
    float *w = malloc(n * sizeof *w), *w2 = malloc(n * sizeof *w);
    assert_int_equal(ni_model_read_weight(m, NI_W_QKV_W, 3, w), NI_OK);
    double s = 0, s2 = 0;
    for (size_t i = 0; i < n; i++) {
        s += w[i];
        s2 += (double)w[i] * w[i];
    }
    double mean = s / (double)n, sd = sqrt(s2 / (double)n - mean * mean);
    assert_true(fabs(mean) < 1e-3);
    assert_true(fabs(sd - 0.02) < 2e-4);
    /* residual projections scaled by 1/sqrt(2 n_layer) */
    assert_int_equal(ni_model_read_weight(m, NI_W_PROJ_W, 0, w2), NI_OK);
    s2 = 0;
    for (size_t i = 0; i < C * C; i++) s2 += (double)w2[i] * w2[i];
    assert_true(fabs(sqrt(s2 / (double)(C * C)) - 0.02 / sqrt(24.0)) < 1e-4);
    /* same seed, same values; other layer, other values */
    assert_int_equal(ni_model_read_weight(m, NI_W_QKV_W, 3, w2), NI_OK);
    assert_memory_equal(w, w2, n * sizeof *w);
    assert_int_equal(ni_model_read_weight(m, NI_W_QKV_W, 4, w2), NI_OK);
    assert_true(memcmp(w, w2, n * sizeof *w) != 0);
    assert_int_equal(ni_model_read_weight(m, NI_W_LN1_W, 0, w2), NI_OK);
    assert_true(w2[0] == 1.0f && w2[C - 1] == 1.0f);
    free(w);
    free(w2);
    ni_model_close(m);
}

/* ---- loading every layout ---------------------------------------------------------------- */

static void check_loaded_values(const tm_spec *spec, float tol) {
    char dir[256];
    write_small(dir, sizeof dir, spec);
    ni_model *m = NULL;
    assert_int_equal(ni_model_open(dir, NULL, &m), NI_OK);
    assert_string_equal(ni_model_dir(m), dir);
    size_t C = spec->n_embd;
    float *w = malloc((3 * C * C + spec->vocab_size * C) * sizeof *w);
    assert_int_equal(ni_model_read_weight(m, NI_W_QKV_W, 1, w), NI_OK);
    /* ours (out, in) = file (in, out) transposed */
    for (size_t o = 0; o < 3 * C; o++)
        for (size_t i = 0; i < C; i++) {
            float want = tm_value(spec, "h.1.attn.c_attn.weight", i * 3 * C + o);
            if (!(fabsf(w[o * C + i] - want) <= tol * fabsf(want) + 1e-4f * tol))
                fail_msg("%s: (%zu, %zu) read %g, wrote %g", spec->dtype, o, i, w[o * C + i], want);
        }
    assert_int_equal(ni_model_read_weight(m, NI_W_WTE, 0, w), NI_OK);
    for (size_t i = 0; i < 50; i++) {
        float want = tm_value(spec, "wte.weight", i);
        assert_true(fabsf(w[i] - want) <= tol * fabsf(want) + 1e-4f * tol);
    }
    free(w);
    ni_model_close(m);
}

static void test_load_dtypes_and_prefixes(void **state) {
    (void)state;
    tm_spec s = small;
    check_loaded_values(&s, 0.0f);
    s.prefix = 1;
    check_loaded_values(&s, 0.0f);
    s.dtype = "F16";
    check_loaded_values(&s, 1e-3f);
    s.prefix = 0;
    s.dtype = "BF16";
    check_loaded_values(&s, 8e-3f);
}

/* ---- malformed files --------------------------------------------------------------------- */

/* Replaces `from` with `to` inside the JSON header, fixing the header length. */
static void edit_header(const char *dir, const char *from, const char *to) {
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    size_t len;
    char *buf = ni_test_read_file(path, &len);
    assert_non_null(buf);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | (uint8_t)buf[i];
    char *hdr = calloc(hlen + 1, 1);
    memcpy(hdr, buf + 8, hlen);
    char *at = strstr(hdr, from);
    assert_non_null(at);
    size_t nh = hlen - strlen(from) + strlen(to);
    char *out = malloc(8 + nh + (len - 8 - hlen));
    size_t pre = (size_t)(at - hdr);
    memcpy(out + 8, hdr, pre);
    memcpy(out + 8 + pre, to, strlen(to));
    memcpy(out + 8 + pre + strlen(to), at + strlen(from), hlen - pre - strlen(from));
    memcpy(out + 8 + nh, buf + 8 + hlen, len - 8 - hlen);
    for (int i = 0; i < 8; i++) out[i] = (char)(uint8_t)(nh >> (8 * i));
    assert_int_equal(ni_test_write_file(path, out, 8 + nh + (len - 8 - hlen)), 0);
    free(out);
    free(hdr);
    free(buf);
}

static void expect_open_error(const char *dir, ni_status want, const char *needle1,
                              const char *needle2) {
    ni_model *m = NULL;
    ni_status s = ni_model_open(dir, NULL, &m);
    if (s != want || !strstr(ni_last_error(), needle1) ||
        (needle2 && !strstr(ni_last_error(), needle2)))
        fail_msg("status %d (want %d), message '%s' (want '%s' and '%s')", (int)s, (int)want,
                 ni_last_error(), needle1, needle2 ? needle2 : "");
    assert_null(m);
}

static void test_malformed_safetensors(void **state) {
    (void)state;
    char dir[256], path[512];
    size_t len;

    /* truncated data */
    write_small(dir, sizeof dir, &small);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    char *buf = ni_test_read_file(path, &len);
    assert_int_equal(ni_test_write_file(path, buf, len - 100), 0);
    expect_open_error(dir, NI_ERR_FORMAT, "model.safetensors", "ln_f.bias");
    /* shorter than the length field */
    assert_int_equal(ni_test_write_file(path, buf, 5), 0);
    expect_open_error(dir, NI_ERR_FORMAT, "model.safetensors", "too short");
    /* header length past the end */
    buf[6] = 0x7f;
    assert_int_equal(ni_test_write_file(path, buf, len), 0);
    expect_open_error(dir, NI_ERR_FORMAT, "model.safetensors", "header length");
    buf[6] = 0;
    /* header that is not JSON */
    buf[8] = '#';
    assert_int_equal(ni_test_write_file(path, buf, len), 0);
    expect_open_error(dir, NI_ERR_FORMAT, "model.safetensors", "JSON");
    free(buf);

    /* a missing tensor */
    write_small(dir, sizeof dir, &small);
    edit_header(dir, "\"h.1.mlp.c_fc.bias\"", "\"h.1.mlp.c_fc.bias_renamed\"");
    expect_open_error(dir, NI_ERR_FORMAT, "missing tensor", "h.1.mlp.c_fc.bias");
    /* a dtype we cannot compute with */
    write_small(dir, sizeof dir, &small);
    edit_header(dir, "\"h.0.ln_2.bias\":{\"dtype\":\"F32\"",
                "\"h.0.ln_2.bias\":{\"dtype\":\"I32\"");
    expect_open_error(dir, NI_ERR_FORMAT, "h.0.ln_2.bias", "I32");
    /* an unknown dtype */
    write_small(dir, sizeof dir, &small);
    edit_header(dir, "\"h.0.ln_2.bias\":{\"dtype\":\"F32\"", "\"h.0.ln_2.bias\":{\"dtype\":\"Q4\"");
    expect_open_error(dir, NI_ERR_FORMAT, "h.0.ln_2.bias", "unknown dtype");
    /* data offsets with begin after end */
    write_small(dir, sizeof dir, &small);
    edit_header(dir, "\"shape\":[32],\"data_offsets\":[", "\"shape\":[32],\"data_offsets\":[9");
    expect_open_error(dir, NI_ERR_FORMAT, "model.safetensors", "data");
    /* shape and byte count disagree */
    write_small(dir, sizeof dir, &small);
    edit_header(dir, "\"ln_f.bias\":{\"dtype\":\"F32\",\"shape\":[32]",
                "\"ln_f.bias\":{\"dtype\":\"F32\",\"shape\":[33]");
    expect_open_error(dir, NI_ERR_FORMAT, "ln_f.bias", "need");
    /* a shape that does not fit the config */
    write_small(dir, sizeof dir, &small);
    edit_header(dir, "\"h.0.attn.c_proj.weight\":{\"dtype\":\"F32\",\"shape\":[32,32]",
                "\"h.0.attn.c_proj.weight\":{\"dtype\":\"F32\",\"shape\":[16,64]");
    expect_open_error(dir, NI_ERR_FORMAT, "h.0.attn.c_proj.weight", "shape (16, 64)");
    /* negative offsets */
    write_small(dir, sizeof dir, &small);
    edit_header(dir, "\"data_offsets\":[0,", "\"data_offsets\":[-4,");
    expect_open_error(dir, NI_ERR_FORMAT, "model.safetensors", "data_offsets");
    /* the model file missing */
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    remove(path);
    expect_open_error(dir, NI_ERR_IO, "model.safetensors", "cannot open");
}

static void write_config(const char *dir, const char *json) {
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    assert_int_equal(ni_test_write_file(path, json, strlen(json)), 0);
}

static void test_malformed_config(void **state) {
    (void)state;
    char dir[256];
    write_small(dir, sizeof dir, &small);
    write_config(dir, "{\"n_layer\": 2, \"n_head\": 4,");
    expect_open_error(dir, NI_ERR_FORMAT, "config.json", "JSON");
    write_config(dir, "{\"n_layer\": 2, \"n_head\": 4, \"vocab_size\": 97, \"n_positions\": 48}");
    expect_open_error(dir, NI_ERR_FORMAT, "config.json", "n_embd");
    write_config(dir, "{\"n_layer\": 2, \"n_head\": 5, \"n_embd\": 32, \"vocab_size\": 97, "
                      "\"n_positions\": 48}");
    expect_open_error(dir, NI_ERR_FORMAT, "config.json", "multiple");
    write_config(dir, "{\"n_layer\": 2, \"n_head\": 4, \"n_embd\": -32, \"vocab_size\": 97, "
                      "\"n_positions\": 48}");
    expect_open_error(dir, NI_ERR_FORMAT, "config.json", "positive");
    write_config(dir, "{\"n_layer\": 2, \"n_head\": 4, \"n_embd\": 32, \"vocab_size\": 97, "
                      "\"n_positions\": 48, \"eos_token_id\": 97}");
    expect_open_error(dir, NI_ERR_FORMAT, "config.json", "eos_token_id");
    write_config(dir, "{\"n_layer\": 2, \"n_head\": 4, \"n_embd\": 32, \"vocab_size\": 97, "
                      "\"n_positions\": 48, \"activation_function\": \"relu\"}");
    expect_open_error(dir, NI_ERR_UNSUPPORTED, "config.json", "relu");
    /* optional fields, when given, must hold what they say: no silent default or wrap-around */
    write_config(dir, "{\"n_layer\": 2, \"n_head\": 4, \"n_embd\": 32, \"vocab_size\": 97, "
                      "\"n_positions\": 48, \"eos_token_id\": 4294967301}");
    expect_open_error(dir, NI_ERR_FORMAT, "config.json", "eos_token_id");
    write_config(dir, "{\"n_layer\": 2, \"n_head\": 4, \"n_embd\": 32, \"vocab_size\": 97, "
                      "\"n_positions\": 48, \"eos_token_id\": \"5\"}");
    expect_open_error(dir, NI_ERR_FORMAT, "config.json", "eos_token_id");
    write_config(dir, "{\"n_layer\": 2, \"n_head\": 4, \"n_embd\": 32, \"vocab_size\": 97, "
                      "\"n_positions\": 48, \"layer_norm_epsilon\": 1e39}");
    expect_open_error(dir, NI_ERR_FORMAT, "config.json", "layer_norm_epsilon");
    write_config(dir, "{\"n_layer\": 2, \"n_head\": 4, \"n_embd\": 32, \"vocab_size\": 97, "
                      "\"n_positions\": 48, \"layer_norm_epsilon\": \"abc\"}");
    expect_open_error(dir, NI_ERR_FORMAT, "config.json", "layer_norm_epsilon");
    /* a config that disagrees with the tensors */
    write_config(dir, "{\"n_layer\": 3, \"n_head\": 4, \"n_embd\": 32, \"vocab_size\": 97, "
                      "\"n_positions\": 48}");
    expect_open_error(dir, NI_ERR_FORMAT, "missing tensor", "h.2.");
    write_config(dir, "{\"n_layer\": 1, \"n_head\": 4, \"n_embd\": 32, \"vocab_size\": 97, "
                      "\"n_positions\": 48}");
    expect_open_error(dir, NI_ERR_FORMAT, "h.1.", "n_layer 1");
    write_config(dir, "{\"n_layer\": 2, \"n_head\": 4, \"n_embd\": 32, \"vocab_size\": 98, "
                      "\"n_positions\": 48}");
    expect_open_error(dir, NI_ERR_FORMAT, "wte.weight", "(97, 32)");
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    remove(path);
    expect_open_error(dir, NI_ERR_IO, "config.json", "cannot open");
    expect_open_error("/nonexistent/model", NI_ERR_INVALID_ARG, "/nonexistent/model", "gpt2");
}

/* ---- the forward pass against a naive double-precision GPT-2 ------------------------------ */

static double *weight_d(ni_model *m, ni_weight_kind k, size_t layer) {
    ni_weight_info wi;
    ni_weight_info_get(ni_model_config(m), k, &wi);
    size_t n = wi.rows * wi.cols;
    float *f = malloc(n * sizeof *f);
    double *d = malloc(n * sizeof *d);
    assert_int_equal(ni_model_read_weight(m, k, layer, f), NI_OK);
    for (size_t i = 0; i < n; i++) d[i] = f[i];
    free(f);
    return d;
}

static void ln_d(double *o, const double *x, const double *w, const double *b, size_t C,
                 double eps) {
    double mean = 0, var = 0;
    for (size_t c = 0; c < C; c++) mean += x[c];
    mean /= (double)C;
    for (size_t c = 0; c < C; c++) var += (x[c] - mean) * (x[c] - mean);
    var /= (double)C;
    for (size_t c = 0; c < C; c++) o[c] = (x[c] - mean) / sqrt(var + eps) * w[c] + b[c];
}

static void lin_d(double *o, const double *x, const double *w, const double *b, size_t IC,
                  size_t OC) {
    for (size_t r = 0; r < OC; r++) {
        double s = b ? b[r] : 0.0;
        for (size_t c = 0; c < IC; c++) s += w[r * IC + c] * x[c];
        o[r] = s;
    }
}

/* Logits (T, V) of tokens by the textbook formulas, in double. */
static double *reference_logits(ni_model *m, const int32_t *tok, size_t T) {
    const ni_config *cfg = ni_model_config(m);
    size_t C = cfg->n_embd, NH = cfg->n_head, HS = C / NH, V = cfg->vocab_size;
    double *x = calloc(T * C, sizeof *x), *h = malloc(T * C * sizeof *h);
    double *qkv = malloc(T * 3 * C * sizeof *qkv), *y = malloc(T * C * sizeof *y);
    double *tmp = malloc(4 * C * sizeof *tmp), *tmp2 = malloc(4 * C * sizeof *tmp2);
    double *wte = weight_d(m, NI_W_WTE, 0), *wpe = weight_d(m, NI_W_WPE, 0);
    for (size_t t = 0; t < T; t++)
        for (size_t c = 0; c < C; c++) x[t * C + c] = wte[tok[t] * C + c] + wpe[t * C + c];
    for (size_t l = 0; l < cfg->n_layer; l++) {
        double *W[NI_W_KIND_COUNT];
        for (int k = NI_W_LN1_W; k <= NI_W_FCPROJ_B; k++) W[k] = weight_d(m, (ni_weight_kind)k, l);
        for (size_t t = 0; t < T; t++) {
            ln_d(h + t * C, x + t * C, W[NI_W_LN1_W], W[NI_W_LN1_B], C, cfg->ln_eps);
            lin_d(qkv + t * 3 * C, h + t * C, W[NI_W_QKV_W], W[NI_W_QKV_B], C, 3 * C);
        }
        for (size_t t = 0; t < T; t++)
            for (size_t hd = 0; hd < NH; hd++) {
                double att[64], mx = -1e300, sum = 0;
                for (size_t u = 0; u <= t; u++) {
                    double s = 0;
                    for (size_t d = 0; d < HS; d++)
                        s += qkv[t * 3 * C + hd * HS + d] * qkv[u * 3 * C + C + hd * HS + d];
                    att[u] = s / sqrt((double)HS);
                    if (att[u] > mx) mx = att[u];
                }
                for (size_t u = 0; u <= t; u++) sum += (att[u] = exp(att[u] - mx));
                for (size_t d = 0; d < HS; d++) {
                    double o = 0;
                    for (size_t u = 0; u <= t; u++)
                        o += att[u] / sum * qkv[u * 3 * C + 2 * C + hd * HS + d];
                    y[t * C + hd * HS + d] = o;
                }
            }
        for (size_t t = 0; t < T; t++) {
            lin_d(tmp, y + t * C, W[NI_W_PROJ_W], W[NI_W_PROJ_B], C, C);
            for (size_t c = 0; c < C; c++) x[t * C + c] += tmp[c];
            ln_d(h + t * C, x + t * C, W[NI_W_LN2_W], W[NI_W_LN2_B], C, cfg->ln_eps);
            lin_d(tmp, h + t * C, W[NI_W_FC_W], W[NI_W_FC_B], C, 4 * C);
            for (size_t c = 0; c < 4 * C; c++) {
                double v = tmp[c];
                tmp[c] = 0.5 * v * (1.0 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
            }
            lin_d(tmp2, tmp, W[NI_W_FCPROJ_W], W[NI_W_FCPROJ_B], 4 * C, C);
            for (size_t c = 0; c < C; c++) x[t * C + c] += tmp2[c];
        }
        for (int k = NI_W_LN1_W; k <= NI_W_FCPROJ_B; k++) free(W[k]);
    }
    double *lw = weight_d(m, NI_W_LNF_W, 0), *lb = weight_d(m, NI_W_LNF_B, 0);
    double *logits = malloc(T * V * sizeof *logits);
    for (size_t t = 0; t < T; t++) {
        ln_d(h + t * C, x + t * C, lw, lb, C, cfg->ln_eps);
        lin_d(logits + t * V, h + t * C, wte, NULL, C, V);
    }
    free(lw), free(lb), free(wte), free(wpe), free(x), free(h), free(qkv), free(y), free(tmp),
        free(tmp2);
    return logits;
}

static ni_engine *make_engine(ni_model *m, ni_preset p, size_t batch, size_t seq) {
    ni_engine_opts o = {.backend = NI_BACKEND_CPU, .preset = p, .max_batch = batch, .max_seq = seq};
    ni_engine *e = NULL;
    if (ni_engine_create(m, &o, &e) != NI_OK) fail_msg("engine: %s", ni_last_error());
    return e;
}

static void test_forward_matches_naive_reference(void **state) {
    (void)state;
    char dir[256];
    write_small(dir, sizeof dir, &small);
    ni_model *m = NULL;
    assert_int_equal(ni_model_open(dir, NULL, &m), NI_OK);
    size_t T = 40, V = small.vocab_size;
    int32_t tok[40];
    for (size_t t = 0; t < T; t++) tok[t] = (int32_t)((t * 37 + 11) % V);
    double *ref = reference_logits(m, tok, T);
    double scale = 0;
    for (size_t i = 0; i < T * V; i++) scale = fmax(scale, fabs(ref[i]));
    assert_true(scale > 1.0);
    for (ni_preset p = NI_PRESET_BASELINE; p <= NI_PRESET_SAMPLING; p++) {
        ni_engine *e = make_engine(m, p, 3, 0);
        float *out = malloc(T * V * sizeof *out);
        assert_int_equal(ni_logits(e, tok, T, out), NI_OK);
        double worst = 0;
        for (size_t i = 0; i < T * V; i++) worst = fmax(worst, fabs(out[i] - ref[i]));
        /* f32 against double: 1e-4 of the logit scale (DESIGN.md §8) */
        if (worst > 1e-4 * scale) fail_msg("max error %g, scale %g", worst, scale);
        free(out);
        ni_engine_destroy(e);
    }
    free(ref);
    ni_model_close(m);
}

/* ---- generation: presets, ragged batches, errors ------------------------------------------ */

static void generate(ni_engine *e, const int32_t *const *prompts, const size_t *lens, size_t B,
                     const ni_sampling *s, ni_test_tokens *out) {
    memset(out, 0, sizeof *out);
    ni_batch b = {B, prompts, lens};
    if (ni_generate(e, &b, s, ni_test_collect, out) != NI_OK)
        fail_msg("generate: %s", ni_last_error());
}

static void test_presets_and_ragged_batches_agree(void **state) {
    (void)state;
    char dir[256];
    write_small(dir, sizeof dir, &small);
    ni_model *m = NULL;
    assert_int_equal(ni_model_open(dir, NULL, &m), NI_OK);
    int32_t p0[] = {5}, p1[] = {1, 2, 3, 4, 5, 6, 7}, p2[] = {90, 13, 13}, p3[] = {42, 0};
    const int32_t *prompts[] = {p0, p1, p2, p3};
    size_t lens[] = {1, 7, 3, 2};
    ni_sampling greedy = {
        .temperature = 0.0f, .top_p = 1.0f, .max_new_tokens = 12, .ignore_eos = 1};
    ni_sampling sampled = {.temperature = 1.0f,
                           .top_k = 20,
                           .top_p = 0.9f,
                           .seed = 99,
                           .max_new_tokens = 12,
                           .ignore_eos = 1};
    ni_test_tokens single[4], batch;
    ni_engine *kv = make_engine(m, NI_PRESET_KV_CACHE, 4, 24);
    ni_engine *base = make_engine(m, NI_PRESET_BASELINE, 4, 24);
    for (size_t i = 0; i < 4; i++) generate(kv, &prompts[i], &lens[i], 1, &greedy, &single[i]);
    /* every preset, batched, gives each sequence's tokens of its single run */
    ni_engine *engines[] = {kv, base, make_engine(m, NI_PRESET_SAMPLING, 4, 24)};
    for (size_t k = 0; k < 3; k++) {
        generate(engines[k], prompts, lens, 4, &greedy, &batch);
        for (size_t i = 0; i < 4; i++) {
            assert_int_equal(batch.n[i], 12);
            assert_memory_equal(batch.tok[i], single[i].tok[0], 12 * sizeof(int32_t));
        }
    }
    /* sampling: the seed reproduces, a sequence's draws do not depend on the batch, and the
     * baseline (recompute) samples the very tokens of the KV-cache engine */
    ni_test_tokens a, b2, c;
    generate(kv, prompts, lens, 4, &sampled, &a);
    generate(kv, prompts, lens, 4, &sampled, &b2);
    assert_memory_equal(&a, &b2, sizeof a);
    generate(base, prompts, lens, 4, &sampled, &c);
    assert_memory_equal(&a, &c, sizeof a);
    generate(kv, prompts, lens, 2, &sampled, &c);
    assert_memory_equal(a.tok[1], c.tok[1], 12 * sizeof(int32_t));
    sampled.seed = 100;
    generate(kv, prompts, lens, 4, &sampled, &c);
    assert_true(memcmp(a.tok, c.tok, sizeof a.tok) != 0);
    for (size_t k = 0; k < 3; k++) ni_engine_destroy(engines[k]);
    ni_model_close(m);
}

static void test_generation_errors_and_eos(void **state) {
    (void)state;
    char dir[256];
    write_small(dir, sizeof dir, &small);
    ni_model *m = NULL;
    assert_int_equal(ni_model_open(dir, NULL, &m), NI_OK);
    ni_engine *e = make_engine(m, NI_PRESET_KV_CACHE, 2, 0);
    int32_t p[48] = {0};
    const int32_t *prompts[] = {p, p, p};
    size_t lens[] = {40, 3, 3};
    ni_sampling s = {.temperature = 0.0f, .top_p = 1.0f, .max_new_tokens = 9};
    ni_batch b = {1, prompts, lens};
    ni_test_tokens g;
    memset(&g, 0, sizeof g);
    /* prompt + new tokens beyond the context: refused before any work */
    assert_int_equal(ni_generate(e, &b, &s, ni_test_collect, &g), NI_ERR_CONTEXT);
    assert_non_null(strstr(ni_last_error(), "context"));
    assert_int_equal(g.n[0], 0);
    /* batch beyond the engine */
    b = (ni_batch){3, prompts, lens + 0};
    assert_int_equal(ni_generate(e, &b, &s, ni_test_collect, &g), NI_ERR_INVALID_ARG);
    /* a token outside the vocabulary */
    p[1] = 97;
    b = (ni_batch){1, prompts + 1, lens + 1};
    assert_int_equal(ni_generate(e, &b, &s, ni_test_collect, &g), NI_ERR_INVALID_ARG);
    assert_non_null(strstr(ni_last_error(), "vocabulary"));
    p[1] = 0;
    /* the engine still works after refusals, and stops at <|endoftext|> (the config's eos is
     * V-1 here): find the greedy token after a prompt and use a model whose eos it is */
    assert_int_equal(ni_generate(e, &b, &s, ni_test_collect, &g), NI_OK);
    assert_int_equal(g.n[0], 9);
    ni_engine_destroy(e);
    ni_model_close(m);

    char cfg[512];
    snprintf(cfg, sizeof cfg,
             "{\"n_layer\": 2, \"n_head\": 4, \"n_embd\": 32, \"vocab_size\": 97, "
             "\"n_positions\": 48, \"eos_token_id\": %d}",
             (int)g.tok[0][3]);
    write_config(dir, cfg);
    assert_int_equal(ni_model_open(dir, NULL, &m), NI_OK);
    e = make_engine(m, NI_PRESET_KV_CACHE, 2, 0);
    ni_test_tokens h;
    memset(&h, 0, sizeof h);
    assert_int_equal(ni_generate(e, &b, &s, ni_test_collect, &h), NI_OK);
    /* stops right after emitting eos (the first time it appears) */
    size_t first = 0;
    while (g.tok[0][first] != g.tok[0][3]) first++;
    assert_int_equal(h.n[0], first + 1);
    s.ignore_eos = 1;
    memset(&h, 0, sizeof h);
    assert_int_equal(ni_generate(e, &b, &s, ni_test_collect, &h), NI_OK);
    assert_int_equal(h.n[0], 9);
    ni_stats st;
    assert_int_equal(ni_engine_stats(e, &st), NI_OK);
    assert_true(st.ttft_ms > 0.0);
    assert_int_equal(st.decode_steps, 8);
    assert_int_equal(st.generated_tokens, 9);
    assert_true(st.peak_mem_bytes > st.weight_bytes);
    assert_int_equal(st.fused_steps, 0); /* the CPU has no fused step */
    ni_engine_destroy(e);
    ni_model_close(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_named_param_counts),
        cmocka_unit_test(test_directory_before_name),
        cmocka_unit_test(test_random_init_statistics),
        cmocka_unit_test(test_load_dtypes_and_prefixes),
        cmocka_unit_test(test_malformed_safetensors),
        cmocka_unit_test(test_malformed_config),
        cmocka_unit_test(test_forward_matches_naive_reference),
        cmocka_unit_test(test_presets_and_ragged_batches_agree),
        cmocka_unit_test(test_generation_errors_and_eos),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
