/* The canonical filter of sampling.h on the CPU, shared by both samplers: row validation and
 * greedy selection, canonical weights, radix select of the kept threshold (top-k by count,
 * top-p by mass, no sorting), the inverse-CDF pick, and the exact distribution in double that
 * the tests compare the samplers against. */
#include "sampling/sample_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

size_t ni_sampler_scratch_bytes(size_t V) {
    /* sorted: two packed (key, index) arrays and 4 x 1024 radix counts; rejection: W, the
     * compacted candidates (weight, index), a gather buffer of 4096 weights and radix bins.
     * Slack for alignment. */
    return 20 * V + 65536 + 128;
}

int ni_filter_is_greedy(const ni_filter *f) {
    if (!f || f->temperature != f->temperature) return 0;
    return f->top_k == 1 || ni_canon_temp_greedy(f->temperature);
}

int ni_samp_prepare(ni_samp_row *row, const float *logits, size_t V, const ni_filter *f,
                    int32_t *token) {
    static const ni_filter plain = {1.0f, 0, 1.0f, 0.0f};
    if (!f) f = &plain;
    if (!logits || V == 0 || V > NI_SAMPLE_MAX_V) return -1;
    if (f->temperature != f->temperature || f->top_p != f->top_p || f->min_p != f->min_p) return -1;
    /* One pass: validity, max and argmax (strict > keeps the lowest index on ties). */
    float best = -INFINITY;
    int32_t arg = -1;
    for (size_t i = 0; i < V; i++) {
        float l = logits[i];
        if (l != l || l == INFINITY) return -1;
        if (l > best) {
            best = l;
            arg = (int32_t)i;
        }
    }
    if (arg < 0) return -1; /* all -inf */
    if (ni_filter_is_greedy(f)) {
        *token = arg;
        return 1;
    }
    row->V = V;
    row->max = best;
    row->scale = ni_canon_scale(f->temperature);
    row->top_k = (f->top_k >= 2 && f->top_k < V) ? f->top_k : 0;
    row->top_p_on = f->top_p < 1.0f;
    row->top_p = f->top_p;
    row->wmin = ni_canon_minp_weight(f->min_p);
    row->total = 0;
    row->n_pos = 0;
    return 0;
}

void ni_samp_finish_row(ni_samp_row *row, uint64_t total, size_t n_pos) {
    row->total = total;
    row->n_pos = n_pos;
    if (row->top_k >= n_pos) row->top_k = 0;
}

void ni_samp_weights(uint64_t *W, ni_samp_row *row, const float *logits) {
    uint64_t total = 0;
    size_t n_pos = 0;
    for (size_t i = 0; i < row->V; i++) {
        uint64_t w = ni_samp_weight(row, logits[i]);
        W[i] = w;
        total += w;
        n_pos += w != 0;
    }
    ni_samp_finish_row(row, total, n_pos);
}

uint64_t ni_samp_radix_select(const uint64_t *vals, size_t n, int by_mass, uint64_t kgoal,
                              double mgoal, uint64_t *hist) {
    /* Invariant: the answer lies in the block of values with the current prefix, and `above`
     * is acc at the first value past that block. Only the bins a level touched are scanned and
     * cleared, so small inputs cost little. */
    uint64_t prefix = 0, above = 0;
    memset(hist, 0, NI_SAMP_RADIX_BINS * sizeof *hist);
    for (unsigned level = 0; level < NI_SAMP_RADIX_LEVELS; level++) {
        unsigned sh = 8u * (NI_SAMP_RADIX_LEVELS - 1u - level);
        unsigned dmin = NI_SAMP_RADIX_BINS, dmax = 0;
        for (size_t j = 0; j < n; j++) {
            uint64_t v = vals[j];
            if ((v >> sh >> 8) == prefix) {
                unsigned d = (unsigned)(v >> sh) & 255u;
                hist[d] += by_mass ? v : 1u;
                dmin = d < dmin ? d : dmin;
                dmax = d > dmax ? d : dmax;
            }
        }
        if (dmin > dmax) return 0; /* empty block: the caller's precondition is broken */
        unsigned d = dmax;
        for (;;) {
            uint64_t acc = above + hist[d];
            if (by_mass ? (double)acc >= mgoal : acc >= kgoal) break;
            above = acc;
            if (d == dmin) return 0; /* goal unreachable: the caller's precondition is broken */
            d--;
        }
        memset(hist + dmin, 0, (dmax - dmin + 1u) * sizeof *hist);
        prefix = (prefix << 8) | d;
    }
    return prefix;
}

uint64_t ni_samp_mass_ge(const uint64_t *vals, size_t n, uint64_t lo) {
    uint64_t m = 0;
    for (size_t j = 0; j < n; j++) m += vals[j] >= lo ? vals[j] : 0;
    return m;
}

uint64_t ni_samp_kept_threshold(const uint64_t *W, const ni_samp_row *row, uint64_t *hist,
                                uint64_t *mass_kept) {
    uint64_t theta = row->wmin, mass_topk = row->total;
    if (row->top_k) {
        uint64_t tk = ni_samp_radix_select(W, row->V, 0, row->top_k, 0.0, hist);
        mass_topk = ni_samp_mass_ge(W, row->V, tk);
        if (tk > theta) theta = tk;
    }
    if (row->top_p_on) {
        /* top-p keeps {W >= w*}, w* the largest w with (double)(mass of W >= w) >= limit:
         * token i is dropped iff the mass strictly above it, which is the mass of W >= W_i + 1,
         * reaches the limit. w* >= the top-k threshold since mass_topk itself reaches it. */
        double lim = ni_canon_topp_limit(row->top_p, mass_topk);
        uint64_t tp = ni_samp_radix_select(W, row->V, 1, 0, lim, hist);
        if (tp > theta) theta = tp;
    }
    *mass_kept = ni_samp_mass_ge(W, row->V, theta);
    return theta;
}

size_t ni_samp_pick(const uint64_t *W, size_t n, uint64_t lo, uint64_t target) {
    if (lo == 0) lo = 1;
    uint64_t cum = 0;
    size_t last = 0;
    for (size_t j = 0; j < n; j++) {
        uint64_t w = W[j];
        uint64_t take = w >= lo ? w : 0; /* branch-free: only the exit is a branch */
        cum += take;
        last = take ? j : last;
        if (cum > target) return j; /* cum grew at j, so W[j] >= lo */
    }
    return last; /* only when target >= the mass, which callers exclude */
}

int ni_sample_distribution(double *probs_out, const float *logits, size_t V, const ni_filter *f) {
    if (!probs_out) return -1;
    if (V > 0 && V <= NI_SAMPLE_MAX_V) memset(probs_out, 0, V * sizeof *probs_out);
    ni_samp_row row;
    int32_t token;
    int st = ni_samp_prepare(&row, logits, V, f, &token);
    if (st < 0) return -1;
    if (st > 0) {
        probs_out[token] = 1.0;
        return 0;
    }
    uint64_t *W = malloc(V * sizeof *W);
    uint64_t *hist = malloc(NI_SAMP_RADIX_BINS * sizeof *hist);
    if (!W || !hist) {
        free(W);
        free(hist);
        return -1;
    }
    ni_samp_weights(W, &row, logits);
    uint64_t mass;
    uint64_t theta = ni_samp_kept_threshold(W, &row, hist, &mass);
    for (size_t i = 0; i < V; i++) probs_out[i] = W[i] >= theta ? (double)W[i] / (double)mass : 0;
    free(W);
    free(hist);
    return 0;
}
