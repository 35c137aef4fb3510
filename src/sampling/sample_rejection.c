/* The sorting-free rejection sampler, after FlashInfer's sorting-free top-k/top-p sampling
 * (our own code): rounds of inverse-transform sampling over the tokens strictly above a pivot
 * weight, each candidate checked against the filter with one counting pass over the row; a
 * rejected candidate's weight becomes the new pivot. After a cap on rounds, an exact fallback
 * finds the kept threshold by radix select and samples once. The CPU twin of the fused GPU
 * sampling kernel: only passes over the row, no sort.
 *
 * Why the result is exactly the kept distribution. The kept set is {W >= theta} for some theta
 * (sampling.h, rule 4). A rejected candidate c is not kept, so W_c < theta: every kept token is
 * strictly above every pivot, hence always a candidate. In a round with pivot rho the candidate
 * is i with probability W_i / M_rho (M_rho = mass above rho), so it is kept token i with
 * probability W_i / M_rho, and the round accepts with probability M_kept / M_rho; given that it
 * accepts, the token is i with probability W_i / M_kept, whatever the history (the pivots).
 * Summing over rounds, the accepted token has the kept distribution, and so does the fallback
 * (an exact sample from the kept set with a fresh draw); the mixture is exact. (Up to the 24-bit
 * resolution of each uniform, which every sampler shares.)
 *
 * The top-p test of a candidate c that passes top-k needs the top-k mass M_K, the only
 * quantity not local to c. It comes, in order of cost, from: S_gt(c) == 0 (always kept); c's
 * tie group reaching k (M_K = mass of W >= W_c); bounds M_K >= mass(W >= W_c) and, when at least
 * k tokens are above the pivot, M_K <= M_rho; the tokens between pivot and candidate, gathered
 * during the counting pass when few (the k-th largest among them by radix select); and last a
 * radix select over the whole row.
 *
 * The first pivot. Without top-k the rounds start from pivot 0 (every token of positive weight
 * is a candidate). With top-k on and 2 <= k <= NI_REJECTION_CHUNKS they start from a pivot that
 * excludes no kept token: cut the index range into NI_REJECTION_CHUNKS fixed chunks (of
 * ceil(V / NI_REJECTION_CHUNKS) tokens; a function of V alone), let m_c be the largest W of chunk
 * c (0 for an empty chunk) and w_k the k-th largest of the m_c (ties counted with multiplicity).
 * The k chunks holding the k largest m_c hold k distinct tokens of W >= w_k, so the k-th largest
 * W, the top-k threshold tk, is >= w_k, and every kept token (W >= theta >= tk) has W >= w_k:
 * the pivot w_k - 1 (0 when w_k = 0) excludes none, and at least k tokens lie above it. One pass
 * finds the tokens above it, their mass and count, exactly the state a rejected candidate of
 * weight w_k - 1 would have left; the rounds then run unchanged (round r still takes draw r).
 * The argument above holds for any pivot below every kept token, so the distribution is the
 * same; only which draw picks which token changes. Flat rows (where each round about halves the
 * candidates) start with a few dozen candidates instead of the whole row.
 * The pass that finds the tokens above w_k - 1 costs about a round. Let S_k be the sum of the k
 * largest m_c (k distinct tokens' weights, so S_k is at most the top-k mass) and M the row's
 * mass; when S_k * NI_REJECTION_PIVOT_DIV >= M (sampling.h; DIV = 1: those k tokens are the
 * whole mass, so round 0 draws among them anyway), the rounds start from pivot 0. S_k and M are
 * exact integers (S_k <= 64 * 2^40, M < 2^23 * 2^40), the same on the GPU, which gets the m_c
 * as chunk minima of q in any order: the choice, and so the token, is the same. */
#include "sampling/sample_internal.h"

#define GATHER_CAP 4096u

/* One counting pass over the candidates (all above the pivot): count and mass strictly above
 * wc and at or above it; the candidates strictly above wc, the next round's, are compacted
 * into (out_w, out_i) in their order (in place allowed); when gather is set, the weights
 * between the pivot and wc go to gathered. Branch-free but for the gather. */
typedef struct {
    size_t cnt_gt, cnt_ge, n_next, n_gath;
    uint64_t s_gt, s_ge;
} round_counts;

static round_counts count_pass(const uint64_t *cw, const uint32_t *ci, size_t n, uint64_t wc,
                               uint64_t pivot, uint64_t *out_w, uint32_t *out_i, int gather,
                               uint64_t *gathered) {
    round_counts rc = {0, 0, 0, 0, 0, 0};
    size_t m = 0;
    for (size_t j = 0; j < n; j++) {
        uint64_t w = cw[j];
        uint64_t ge = w >= wc, gt = w > wc;
        rc.cnt_ge += ge;
        rc.s_ge += w & (0 - ge);
        rc.cnt_gt += gt;
        rc.s_gt += w & (0 - gt);
        uint32_t idx = ci ? ci[j] : (uint32_t)j;
        out_w[m] = w;
        out_i[m] = idx;
        m += gt;
        if (gather && !ge && w > pivot) gathered[rc.n_gath++] = w;
    }
    rc.n_next = m;
    return rc;
}

/* The candidates of a round: the tokens with W > pivot (n_above of them, of mass mass_above),
 * listed in index order in (w, i) (i NULL: the row itself), n entries. */
typedef struct {
    const uint64_t *w;
    const uint32_t *i;
    size_t n, n_above;
    uint64_t pivot, mass_above;
} cand_set;

/* A rejected candidate of weight wc raises the pivot to wc (the first pivot is set as if one
 * had): the next candidates are those the pass rc compacted into (comp_w, comp_i). */
static void raise_pivot(cand_set *cs, uint64_t wc, const round_counts *rc, const uint64_t *comp_w,
                        const uint32_t *comp_i) {
    cs->pivot = wc;
    cs->mass_above = rc->s_gt;
    cs->n_above = rc->cnt_gt;
    cs->w = comp_w;
    cs->i = comp_i;
    cs->n = rc->n_next;
}

/* The first pivot for top-k k (2 <= k <= NI_REJECTION_CHUNKS): w_k - 1 for w_k the k-th
 * largest of the chunk maxima of W (see the top of the file), or 0 (start from the whole row)
 * when w_k <= 1 or when the k largest chunk maxima, summed, hold at least 1 / DIV of the row's
 * mass (DIV S_k >= total: exact integers, S_k <= 64 * 2^40). */
static uint64_t chunk_pivot(const uint64_t *W, size_t V, size_t k, uint64_t total) {
    uint64_t cmax[NI_REJECTION_CHUNKS];
    const size_t len = (V + NI_REJECTION_CHUNKS - 1) / NI_REJECTION_CHUNKS;
    for (size_t c = 0; c < NI_REJECTION_CHUNKS; c++) {
        size_t lo = c * len, hi = lo + len < V ? lo + len : V;
        uint64_t m = 0;
        for (size_t i = lo; i < hi; i++) m = W[i] > m ? W[i] : m;
        cmax[c] = m;
    }
    /* descending (insertion sort of 64 values): w_k = cmax[k - 1], S_k the first k summed */
    for (size_t c = 1; c < NI_REJECTION_CHUNKS; c++) {
        uint64_t v = cmax[c];
        size_t d = c;
        for (; d > 0 && cmax[d - 1] < v; d--) cmax[d] = cmax[d - 1];
        cmax[d] = v;
    }
    uint64_t sk = 0;
    for (size_t c = 0; c < k; c++) sk += cmax[c];
    const uint64_t wk = cmax[k - 1];
    if (wk <= 1 || sk * NI_REJECTION_PIVOT_DIV >= total) return 0;
    return wk - 1;
}

int32_t ni_sample_rejection_ex(const float *logits, size_t V, const ni_filter *f, ni_rng_key key,
                               void *scratch, uint32_t max_rounds, ni_rejection_stats *stats) {
    ni_rejection_stats local = {0, 0, 0, 0, 0};
    ni_rejection_stats *sts = stats ? stats : &local;
    *sts = local;
    ni_samp_row row;
    int32_t token;
    int st = ni_samp_prepare(&row, logits, V, f, &token);
    if (st < 0) return NI_SAMPLE_INVALID;
    if (st > 0) return token;

    uint64_t *W = ni_samp_align(scratch);
    uint64_t *comp_w = W + V; /* candidates after round 0, compacted */
    uint32_t *comp_i = (uint32_t *)(comp_w + V);
    uint64_t *gathered = ni_samp_align(comp_i + V);
    uint64_t *hist = gathered + GATHER_CAP;
    ni_samp_weights(W, &row, logits);
    const size_t k = row.top_k;

    /* Candidates: the tokens with W > pivot, in index order; round 0 reads the row itself. */
    cand_set cs = {W, NULL, V, row.n_pos, 0, row.total};
    int have_mk = !k || !row.top_p_on;
    if (max_rounds > 0 && k && k <= NI_REJECTION_CHUNKS) {
        uint64_t p0 = chunk_pivot(W, V, k, row.total);
        if (p0 > 0) { /* as if a rejected candidate of weight p0 had set the pivot */
            round_counts rc = count_pass(W, NULL, V, p0, 0, comp_w, comp_i, 0, NULL);
            raise_pivot(&cs, p0, &rc, comp_w, comp_i);
            sts->chunk_pivot = 1;
        }
    }
    sts->n_above0 = cs.n_above;
    uint64_t mass_topk = row.total;

    for (uint32_t r = 0; r < max_rounds; r++) {
        sts->rounds = r + 1;
        float u = ni_rng_uniform(key.seed, key.seq, key.step, r);
        size_t pos = ni_samp_pick(cs.w, cs.n, cs.pivot + 1, ni_canon_target(u, cs.mass_above));
        int32_t c = cs.i ? (int32_t)cs.i[pos] : (int32_t)pos;
        uint64_t wc = cs.w[pos];

        /* The weights between pivot and c hold the top-k threshold when at least k tokens lie
         * above the pivot and fewer than k at or above c: gather them when few. */
        int gather = !have_mk && cs.n_above <= GATHER_CAP && cs.n_above >= k;
        round_counts rc =
            count_pass(cs.w, cs.i, cs.n, wc, cs.pivot, comp_w, comp_i, gather, gathered);

        int ok = wc >= row.wmin && (!k || rc.cnt_gt < k);
        if (ok && row.top_p_on && rc.s_gt > 0) {
            if (!have_mk && rc.cnt_ge >= k) { /* c's tie group holds the k-th largest */
                mass_topk = rc.s_ge;
                have_mk = 1;
            }
            if (have_mk) {
                ok = (double)rc.s_gt < ni_canon_topp_limit(row.top_p, mass_topk);
            } else if ((double)rc.s_gt < ni_canon_topp_limit(row.top_p, rc.s_ge)) {
                ok = 1; /* M_K >= s_ge: kept whatever M_K is */
            } else if (cs.n_above >= k &&
                       !((double)rc.s_gt < ni_canon_topp_limit(row.top_p, cs.mass_above))) {
                ok = 0; /* M_K <= mass above the pivot: dropped whatever M_K is */
            } else {
                if (gather) {
                    uint64_t tk =
                        ni_samp_radix_select(gathered, rc.n_gath, 0, k - rc.cnt_ge, 0.0, hist);
                    mass_topk = rc.s_ge + ni_samp_mass_ge(gathered, rc.n_gath, tk);
                } else {
                    uint64_t tk = ni_samp_radix_select(W, V, 0, k, 0.0, hist);
                    mass_topk = ni_samp_mass_ge(W, V, tk);
                    sts->topk_mass_sel = 1;
                }
                have_mk = 1;
                ok = (double)rc.s_gt < ni_canon_topp_limit(row.top_p, mass_topk);
            }
        }
        if (ok) return c;
        raise_pivot(&cs, wc, &rc, comp_w, comp_i);
    }

    /* Exact fallback: the kept threshold by radix select, one draw. */
    sts->fallback = 1;
    uint64_t mass;
    uint64_t theta = ni_samp_kept_threshold(W, &row, hist, &mass);
    float u = ni_rng_uniform(key.seed, key.seq, key.step, max_rounds);
    return (int32_t)ni_samp_pick(W, V, theta, ni_canon_target(u, mass));
}

int32_t ni_sample_rejection(const float *logits, size_t V, const ni_filter *f, ni_rng_key key,
                            void *scratch) {
    return ni_sample_rejection_ex(logits, V, f, key, scratch, NI_REJECTION_MAX_ROUNDS, NULL);
}
