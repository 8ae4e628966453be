/*
 * learn.c -- on-line learning on the core's integer state (e-prop,
 * SuperSpike, readout delta rule).
 *
 * The rules are specified once, in docs/learning.md; runtime/learning.py
 * (ReferenceLearner) is the numpy form that tests compare with bit for bit.
 * Formats and ranges of the traces: docs/fixed-point.md "Learning traces".
 *
 * Two kernels compute the same integers:
 *  - plain: the page line by line, int64 everywhere, every synapse every step;
 *  - fast (default): int32 branch-free element updates (the bounds in
 *    docs/fixed-point.md keep every product inside int32), vectorised with
 *    AVX2 clones on x86-64, and a row whose traces are all zero and whose
 *    presynaptic neuron is silent this step is skipped: every update of such
 *    a row leaves it exactly zero (rhu(0) = 0, trunc/away of 0 are 0).
 *
 * Shared presynaptic traces: eI_ij and eV_ij depend on j only through neuron
 * j's filter constants (pre_A[j], pre_G[j]).  When every neuron has the same
 * pair (SuperSpike always; e-prop on an ideal chip) and the traces start at 0
 * (create, reset_traces; there is no way to set them), eI_ij = eI_i and
 * eV_ij = eV_i for every j, exactly, so they are stored once per row and both
 * kernels compute with the row's values.  sw_learn_get_trace hands out the
 * same per-synapse arrays either way.
 *
 * Rules: C99, explicit-width integers, no floating point, no allocation
 * outside sw_learn_create, no prints, no aborts.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "spikewire.h"

#define SW_LEARN_MAGIC 0x53574c31u   /* "SWL1" */
#define SW_LEARN_MAX_EVENTS_PER_STEP (1 << 20)
#define SHADOW_BITS 16
#define PSI_BITS 8
#define SI_ONE (INT64_C(1) << 16)          /* 1.0 of Omega and of the pull's strength k */
#define SI_MAX INT64_C(2147483647)         /* omega saturates at +-SI_MAX, Omega at SI_MAX */

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(SW_NO_CLONES)
#define SW_LCLONES __attribute__((target_clones("avx2", "default")))
#else
#define SW_LCLONES
#endif

struct sw_learn {
    uint32_t magic;
    sw_learn_config cfg;
    int32_t kernel;
    int32_t keep[2];          /* traces kept for in / rec                 */
    int32_t acc_max;
    int64_t steps, commits;
    const char *last_error;
    int32_t *pre_A, *pre_G, *g_hid, *v_th, *g_out;
    int8_t *fb;               /* NULL = symmetric (w[2])                  */
    int8_t *w[3];
    int32_t *acc[3];
    int32_t shared;           /* one pre_A and one pre_G for every neuron */
    int16_t *tr[2][4];        /* [in/rec][eI, eV, FI, FV]; eI, eV: [rows] when shared */
    uint8_t *live[2];         /* per row: some trace is non-zero          */
    int16_t *zI, *zV;
    uint8_t *z_last;
    int8_t *modes;
    /* events form (docs/learning.md "The events form"): rings indexed by step mod R */
    int32_t events, K, Kp, R;
    int32_t *h, *hpre;            /* [K] Q15, [Kp x n_hid]                     */
    int32_t *r_psi, *r_Lq, *r_Pq; /* [R x n_hid]                               */
    int32_t *r_row[2], *r_cnt[2]; /* [R x rows]: the rows with events, counts  */
    int32_t *r_nev;               /* [R x 2]                                   */
    int64_t ev_t, n_pend;         /* steps seen since reset, of them pending   */
    int64_t *lam;                 /* scratch [n_hid]                           */
    int32_t *u;                   /* scratch [n_hid]                           */
    /* synaptic intelligence (docs/learning.md "Consolidation"): [matrix][SW_SI_*], NULL when
     * si is off or the matrix does not learn */
    int32_t *si[3][4];
    int64_t theta_max;
    /* scratch */
    int32_t *psi, *Lq, *eq, *errg, *counts, *zpre;
};

/* ---- integer helpers (docs/fixed-point.md "Rounding helpers") ----------- */
static int64_t floor_shr64(int64_t x, int s)
{
    /* floor(x / 2^s) without relying on >> of negative values */
    if (x >= 0)
        return x >> s;
    return -(((-x) + (((int64_t)1 << s) - 1)) >> s);
}

static int64_t trunc_shr64(int64_t x, int s)
{
    return x >= 0 ? (x >> s) : -((-x) >> s);
}

static int64_t away_shr64(int64_t x, int s)
{
    int64_t m = ((int64_t)1 << s) - 1;
    return x >= 0 ? ((x + m) >> s) : -(((-x) + m) >> s);
}

static int64_t rhu64(int64_t x, int s)
{
    if (s == 0)
        return x;
    return floor_shr64(x + ((int64_t)1 << (s - 1)), s);
}

static int64_t sat16_64(int64_t x)
{
    return x < -32768 ? -32768 : (x > 32767 ? 32767 : x);
}

static int64_t clamp64(int64_t x, int64_t lo, int64_t hi)
{
    return x < lo ? lo : (x > hi ? hi : x);
}

static uint64_t splitmix64_at(uint64_t seed, uint64_t ctr)
{
    uint64_t z = seed + (ctr + 1u) * UINT64_C(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

/* V of the traces' current -> membrane filter (current toward zero, membrane away from
 * zero) k = 0, 1, ... steps after an impulse at step 0, up to the last step before both
 * stages are 0 again (at most kmax); returns the length (>= 1).  out may be NULL. */
#define EVENT_WINDOW_MAX 512
#define EVENT_U_MAX (INT64_C(1) << 25)
static int32_t impulse_response(int64_t A, int64_t G, int64_t impulse, int32_t *out)
{
    int64_t i = 0, v = 0;
    int32_t k, n = 0;
    for (k = 0; k < EVENT_WINDOW_MAX; k++) {
        i = trunc_shr64(i * A, 15) + (k == 0 ? impulse : 0);
        v = v + away_shr64((i - v) * G, 15);
        if (i == 0 && v == 0)
            break;
        if (out)
            out[n] = (int32_t)v;
        n++;
    }
    if (n == 0) {
        if (out)
            out[0] = 0;
        n = 1;
    }
    return n;
}

/* int32 forms for the fast kernel (GCC/Clang: >> of negatives is arithmetic) */
#if defined(__GNUC__) || defined(__clang__)
#define ASR(x, s) ((x) >> (s))
#else
#define ASR(x, s) ((x) >= 0 ? (x) >> (s) : ~((~(x)) >> (s)))
#endif

/* ---- the trace filter (docs/learning.md), written once per kernel form -------------
 * One step of a pair (I, V): I <- sat16(trunc(I * A / 2^15) + x), then
 * V <- sat16(V + away((I - V) * G / 2^15)).  The input traces (eI, eV), the
 * eligibility filter (FI, FV) and the readout rule's spike filter (zI, zV) are
 * all such pairs.  Plain form: int64; fast form: int32, branch-free (bounds
 * above row_fast). */
static int64_t trace_step_plain(int16_t *I, int16_t *V, int64_t A, int64_t G, int64_t x)
{
    int64_t i = sat16_64(trunc_shr64((int64_t)*I * A, 15) + x);
    int64_t v = sat16_64(*V + away_shr64((i - *V) * G, 15));
    *I = (int16_t)i;
    *V = (int16_t)v;
    return v;
}

static inline int32_t sat16_32(int32_t t)
{
    return t < -32768 ? -32768 : (t > 32767 ? 32767 : t);
}

/* I's step (decay toward 0, truncating, plus the input x) */
static inline int32_t trace_i_fast(int32_t I, int32_t A, int32_t x)
{
    int32_t t = I * A;
    return sat16_32(ASR(t + (ASR(t, 31) & 32767), 15) + x);
}

/* V's step toward the new I (rounding away from zero): away_shr(t, 15) =
 * (t + (t >= 0 ? 32767 : 0)) >> 15, since for t < 0 the floor of >> is away from zero */
static inline int32_t trace_v_fast(int32_t V, int32_t I, int32_t G)
{
    int32_t t = (I - V) * G;
    return sat16_32(V + ASR(t + (~ASR(t, 31) & 32767), 15));
}

/* ---- create / destroy -------------------------------------------------------- */
static const char *create_err = "";

static int bad(const char *msg)
{
    create_err = msg;
    return SW_E_PARAM;
}

static int validate(const sw_learn_config *c)
{
    int32_t j;
    if (c->n_in < 1 || c->n_in > SW_MAX_INPUTS || c->n_hid < 1 || c->n_hid > SW_MAX_NEURONS ||
        c->n_out < 0 || c->n_out > SW_MAX_NEURONS) {
        create_err = "sizes out of range";
        return SW_E_SIZE;
    }
    if (c->rule < SW_LEARN_EPROP || c->rule > SW_LEARN_READOUT)
        return bad("unknown learning rule");
    if (c->learn_mask < 0 || c->learn_mask > 7)
        return bad("learn_mask has unknown bits");
    if (c->rule == SW_LEARN_READOUT && (c->learn_mask & ~SW_LEARN_MASK_OUT))
        return bad("the readout rule learns only the readout weights");
    if (c->rate_in < 0 || c->rate_in > 30 || c->rate_rec < 0 || c->rate_rec > 30 ||
        c->rate_out < 0 || c->rate_out > 30 || c->signal_shift < 0 || c->signal_shift > 30)
        return bad("a rate or signal shift is outside 0..30");
    if (c->trace_shift < 0 || c->trace_shift > 14)
        return bad("trace_shift outside 0..14");
    if (c->surrogate_log2 < PSI_BITS || c->surrogate_log2 > 15)
        return bad("surrogate_log2 outside 8..15");
    if (c->target_hi < -32768 || c->target_hi > 32767 || c->target_lo < -32768 ||
        c->target_lo > 32767 || c->target_lo >= c->target_hi)
        return bad("targets must be int16 with target_lo < target_hi");
    if (c->weights != SW_LEARN_SHADOW && c->weights != SW_LEARN_STOCHASTIC)
        return bad("unknown weights mode");
    if (c->eligibility != SW_LEARN_TRACES && c->eligibility != SW_LEARN_EVENTS)
        return bad("unknown eligibility form");
    if (c->si != 0 && c->si != 1)
        return bad("si must be 0 or 1");
    if (c->si_c_log2 < -16 || c->si_c_log2 > 16 || c->si_xi_log2 < -16 || c->si_xi_log2 > 8)
        return bad("si_c_log2 outside -16..16 or si_xi_log2 outside -16..8");
    if (c->post_A < 0 || c->post_A > SW_Q15_ONE || c->post_G < 0 || c->post_G > SW_Q15_ONE ||
        c->out_A < 0 || c->out_A > SW_Q15_ONE || c->out_G < 0 || c->out_G > SW_Q15_ONE)
        return bad("a filter constant is outside 0..32768");
    if (!c->pre_A || !c->pre_G || !c->g_hid || !c->v_th || (c->n_out > 0 && !c->g_out)) {
        create_err = "a parameter array is NULL";
        return SW_E_NULL;
    }
    for (j = 0; j < c->n_hid; j++) {
        if (c->pre_A[j] < 0 || c->pre_A[j] > SW_Q15_ONE || c->pre_G[j] < 0 || c->pre_G[j] > SW_Q15_ONE)
            return bad("a presynaptic filter constant is outside 0..32768");
        if (c->g_hid[j] < 0 || c->g_hid[j] > 32767)
            return bad("a hidden gain is outside 0..32767");
        if (c->v_th[j] < -32768 || c->v_th[j] > 32767)
            return bad("a threshold is outside int16");
    }
    for (j = 0; j < c->n_out; j++)
        if (c->g_out[j] < 0 || c->g_out[j] > 32767)
            return bad("a readout gain is outside 0..32767");
    if (c->feedback) {
        int64_t k, n = (int64_t)c->n_hid * c->n_out;
        for (k = 0; k < n; k++)
            if (c->feedback[k] < -SW_WEIGHT_MAX || c->feedback[k] > SW_WEIGHT_MAX)
                return bad("a feedback weight is outside -63..63");
    }
    return SW_OK;
}

int sw_learn_destroy(sw_learn *L)
{
    if (!L)
        return SW_OK;
    if (L->magic != SW_LEARN_MAGIC)
        return SW_E_BADCTX;
    L->magic = 0;
    free(L);
    return SW_OK;
}

/* One allocation: every array is carved out of the block after the struct. */
static void *carve(uint8_t **p, size_t bytes)
{
    void *r = *p;
    *p += (bytes + 15u) & ~(size_t)15u;
    return r;
}

int sw_learn_create(const sw_learn_config *cfg, sw_learn **out)
{
    int st, m, k, shared, events;
    int32_t K = 0, Kp = 0, R = 0;
    size_t n_in, n_hid, n_out, rows[2], total;
    int32_t keep[2];
    uint8_t *p;
    sw_learn *L;
    if (!cfg || !out) {
        create_err = "cfg or out is NULL";
        return SW_E_NULL;
    }
    *out = NULL;
    st = validate(cfg);
    if (st != SW_OK)
        return st;
    n_in = (size_t)cfg->n_in;
    n_hid = (size_t)cfg->n_hid;
    n_out = (size_t)cfg->n_out;
    rows[0] = n_in;
    rows[1] = n_hid;
    keep[0] = cfg->rule != SW_LEARN_READOUT && (cfg->learn_mask & SW_LEARN_MASK_IN);
    keep[1] = cfg->rule != SW_LEARN_READOUT && (cfg->learn_mask & SW_LEARN_MASK_REC);
    shared = 1;
    for (k = 1; k < cfg->n_hid; k++)
        if (cfg->pre_A[k] != cfg->pre_A[0] || cfg->pre_G[k] != cfg->pre_G[0])
            shared = 0;
    events = cfg->eligibility == SW_LEARN_EVENTS && (keep[0] || keep[1]);
    if (events) {
        K = impulse_response(cfg->post_A, cfg->post_G, INT64_C(1) << 15, NULL);
        for (k = 0; k < cfg->n_hid; k++) {
            int32_t n;
            if (k > 0 && cfg->pre_A[k] == cfg->pre_A[k - 1] && cfg->pre_G[k] == cfg->pre_G[k - 1])
                continue;
            n = impulse_response(cfg->pre_A[k], cfg->pre_G[k], INT64_C(1) << cfg->trace_shift, NULL);
            Kp = n > Kp ? n : Kp;
        }
        R = Kp + K - 1;
    }
#define PAD(b) ((((size_t)(b)) + 15u) & ~(size_t)15u)
    total = PAD(sizeof(sw_learn));
    total += 5 * PAD(n_hid * 4) + PAD(n_out * 4);                      /* params */
    total += cfg->feedback ? PAD(n_hid * n_out) : 0;
    total += PAD(n_in * n_hid) + PAD(n_hid * n_hid) + PAD(n_hid * n_out);   /* weights */
    total += PAD(n_in * n_hid * 4) + PAD(n_hid * n_hid * 4) + PAD(n_hid * n_out * 4);
    for (m = 0; m < 2; m++)
        if (keep[m] && !events)
            total += (shared ? 2 * PAD(rows[m] * 2) : 2 * PAD(rows[m] * n_hid * 2)) +
                     2 * PAD(rows[m] * n_hid * 2) + PAD(rows[m]);
        else if (keep[m])
            total += 2 * PAD((size_t)R * rows[m] * 4);
    if (events)
        total += PAD((size_t)K * 4) + PAD((size_t)Kp * n_hid * 4) + 3 * PAD((size_t)R * n_hid * 4) +
                 PAD((size_t)R * 2 * 4) + PAD(n_hid * 8) + PAD(n_hid * 4);
    total += 2 * PAD(n_hid * 2) + PAD(n_hid) + PAD(n_out);
    total += 3 * PAD(n_hid * 4) + 2 * PAD(n_out * 4) + PAD(n_in * 4);
    if (cfg->si)
        for (m = 0; m < 3; m++)
            if (cfg->learn_mask & (1 << m))
                total += 4 * PAD(rows[m < 2 ? m : 1] * (m < 2 ? n_hid : n_out) * 4);
    p = (uint8_t *)calloc(1, total);
    if (!p) {
        create_err = "out of memory";
        return SW_E_NOMEM;
    }
    L = (sw_learn *)carve(&p, sizeof(sw_learn));
    L->cfg = *cfg;
    L->keep[0] = keep[0];
    L->keep[1] = keep[1];
    L->shared = shared;
    L->acc_max = cfg->weights == SW_LEARN_SHADOW ? (63 << SHADOW_BITS) : (126 << SHADOW_BITS);
    L->pre_A = (int32_t *)carve(&p, n_hid * 4);
    L->pre_G = (int32_t *)carve(&p, n_hid * 4);
    L->g_hid = (int32_t *)carve(&p, n_hid * 4);
    L->v_th = (int32_t *)carve(&p, n_hid * 4);
    L->psi = (int32_t *)carve(&p, n_hid * 4);
    L->g_out = (int32_t *)carve(&p, n_out * 4);
    memcpy(L->pre_A, cfg->pre_A, n_hid * 4);
    memcpy(L->pre_G, cfg->pre_G, n_hid * 4);
    memcpy(L->g_hid, cfg->g_hid, n_hid * 4);
    memcpy(L->v_th, cfg->v_th, n_hid * 4);
    if (n_out)
        memcpy(L->g_out, cfg->g_out, n_out * 4);
    L->fb = NULL;
    if (cfg->feedback) {
        L->fb = (int8_t *)carve(&p, n_hid * n_out);
        memcpy(L->fb, cfg->feedback, n_hid * n_out);
    }
    L->cfg.pre_A = L->pre_A;
    L->cfg.pre_G = L->pre_G;
    L->cfg.g_hid = L->g_hid;
    L->cfg.v_th = L->v_th;
    L->cfg.g_out = L->g_out;
    L->cfg.feedback = L->fb;
    L->w[0] = (int8_t *)carve(&p, n_in * n_hid);
    L->w[1] = (int8_t *)carve(&p, n_hid * n_hid);
    L->w[2] = (int8_t *)carve(&p, n_hid * n_out);
    L->acc[0] = (int32_t *)carve(&p, n_in * n_hid * 4);
    L->acc[1] = (int32_t *)carve(&p, n_hid * n_hid * 4);
    L->acc[2] = (int32_t *)carve(&p, n_hid * n_out * 4);
    L->events = events;
    if (events) {
        int32_t j;
        L->K = K;
        L->Kp = Kp;
        L->R = R;
        L->h = (int32_t *)carve(&p, (size_t)K * 4);
        L->hpre = (int32_t *)carve(&p, (size_t)Kp * n_hid * 4);
        L->r_psi = (int32_t *)carve(&p, (size_t)R * n_hid * 4);
        L->r_Lq = (int32_t *)carve(&p, (size_t)R * n_hid * 4);
        L->r_Pq = (int32_t *)carve(&p, (size_t)R * n_hid * 4);
        L->r_nev = (int32_t *)carve(&p, (size_t)R * 2 * 4);
        L->lam = (int64_t *)carve(&p, n_hid * 8);
        L->u = (int32_t *)carve(&p, n_hid * 4);
        impulse_response(cfg->post_A, cfg->post_G, INT64_C(1) << 15, L->h);
        for (j = 0; j < (int32_t)n_hid; j++) {     /* column j of hpre, zero-padded (calloc) */
            int32_t col[EVENT_WINDOW_MAX], n, k2;
            n = impulse_response(cfg->pre_A[j], cfg->pre_G[j], INT64_C(1) << cfg->trace_shift, col);
            for (k2 = 0; k2 < n; k2++)
                L->hpre[(int64_t)k2 * n_hid + j] = col[k2];
        }
        for (m = 0; m < 2; m++)
            if (keep[m]) {
                L->r_row[m] = (int32_t *)carve(&p, (size_t)R * rows[m] * 4);
                L->r_cnt[m] = (int32_t *)carve(&p, (size_t)R * rows[m] * 4);
            }
    }
    for (m = 0; m < 2; m++) {
        if (!keep[m] || events)
            continue;
        for (k = 0; k < 4; k++)
            L->tr[m][k] = (int16_t *)carve(&p, rows[m] * (shared && k < 2 ? 1 : n_hid) * 2);
        L->live[m] = (uint8_t *)carve(&p, rows[m]);
    }
    L->zI = (int16_t *)carve(&p, n_hid * 2);
    L->zV = (int16_t *)carve(&p, n_hid * 2);
    L->z_last = (uint8_t *)carve(&p, n_hid);
    L->modes = (int8_t *)carve(&p, n_out);
    L->Lq = (int32_t *)carve(&p, n_hid * 4);
    L->eq = (int32_t *)carve(&p, n_out * 4);
    L->errg = (int32_t *)carve(&p, n_out * 4);
    L->counts = (int32_t *)carve(&p, n_in * 4);
    L->zpre = (int32_t *)carve(&p, n_hid * 4);
    L->theta_max = cfg->weights == SW_LEARN_SHADOW ? (INT64_C(63) << SHADOW_BITS)
                                                   : (INT64_C(63) << SHADOW_BITS) + L->acc_max;
    if (cfg->si)
        for (m = 0; m < 3; m++)
            if (cfg->learn_mask & (1 << m))
                for (k = 0; k < 4; k++)
                    L->si[m][k] = (int32_t *)carve(&p, rows[m < 2 ? m : 1] * (m < 2 ? n_hid : n_out) * 4);
    L->last_error = "";
    L->magic = SW_LEARN_MAGIC;
    *out = L;
    return SW_OK;
#undef PAD
}

static int live_ctx(const sw_learn *L)
{
    return L && L->magic == SW_LEARN_MAGIC;
}

const char *sw_learn_last_error(const sw_learn *L)
{
    if (!L)
        return create_err;
    if (!live_ctx(L))
        return "not a live sw_learn";
    return L->last_error;
}

static int64_t mat_size(const sw_learn *L, int32_t which)
{
    const sw_learn_config *c = &L->cfg;
    if (which == SW_W_IN)
        return (int64_t)c->n_in * c->n_hid;
    if (which == SW_W_REC)
        return (int64_t)c->n_hid * c->n_hid;
    if (which == SW_W_OUT)
        return (int64_t)c->n_hid * c->n_out;
    return -1;
}

/* The parameter synaptic intelligence follows (Q16): the shadow weight, or the weight plus the
 * pending gradient (stochastic rounding).  |theta| <= theta_max < 2^24. */
static int64_t theta_of(const sw_learn *L, int32_t m, int64_t i)
{
    if (L->cfg.weights == SW_LEARN_SHADOW)
        return L->acc[m][i];
    return ((int64_t)L->w[m][i] << SHADOW_BITS) + L->acc[m][i];
}

static int check_mat(sw_learn *L, int32_t which, const void *p, int64_t n)
{
    int64_t size;
    if (!live_ctx(L))
        return SW_E_BADCTX;
    size = mat_size(L, which);
    if (size < 0) {
        L->last_error = "unknown weight matrix";
        return SW_E_PARAM;
    }
    if (n != size || n < 0) {
        L->last_error = "count does not match the matrix size";
        return SW_E_SIZE;
    }
    if (!p && n > 0) {
        L->last_error = "array is NULL";
        return SW_E_NULL;
    }
    return SW_OK;
}

int sw_learn_set_weights(sw_learn *L, int32_t which, const int8_t *w, int64_t n)
{
    int64_t i;
    int st = check_mat(L, which, w, n);
    if (st != SW_OK)
        return st;
    for (i = 0; i < n; i++)
        if (w[i] < -SW_WEIGHT_MAX || w[i] > SW_WEIGHT_MAX) {
            L->last_error = "weight outside -63..63";
            return SW_E_WEIGHT;
        }
    if (n > 0)
        memcpy(L->w[which], w, (size_t)n);
    for (i = 0; i < n; i++)
        L->acc[which][i] = L->cfg.weights == SW_LEARN_SHADOW ? (int32_t)w[i] * (1 << SHADOW_BITS) : 0;
    if (L->si[which][0])    /* the path starts here; the importance is kept */
        for (i = 0; i < n; i++) {
            L->si[which][SW_SI_PREV][i] = L->acc[which][i];
            L->si[which][SW_SI_ANCHOR][i] = (int32_t)theta_of(L, which, i);
            L->si[which][SW_SI_OMEGA][i] = 0;
        }
    return SW_OK;
}

int sw_learn_get_weights(const sw_learn *L, int32_t which, int8_t *w, int64_t n)
{
    int st = check_mat((sw_learn *)L, which, w, n);
    if (st != SW_OK)
        return st;
    if (n)
        memcpy(w, L->w[which], (size_t)n);
    return SW_OK;
}

int sw_learn_get_acc(const sw_learn *L, int32_t which, int32_t *acc, int64_t n)
{
    int st = check_mat((sw_learn *)L, which, acc, n);
    if (st != SW_OK)
        return st;
    if (n)
        memcpy(acc, L->acc[which], (size_t)n * 4);
    return SW_OK;
}

int sw_learn_set_acc(sw_learn *L, int32_t which, const int32_t *acc, int64_t n)
{
    int64_t i;
    int st = check_mat(L, which, acc, n);
    if (st != SW_OK)
        return st;
    for (i = 0; i < n; i++)
        if (acc[i] < -L->acc_max || acc[i] > L->acc_max) {
            L->last_error = "accumulator outside its clamp range";
            return SW_E_PARAM;
        }
    if (n)
        memcpy(L->acc[which], acc, (size_t)n * 4);
    return SW_OK;
}

int sw_learn_get_trace(const sw_learn *L, int32_t which, int32_t kind, int16_t *v, int64_t n)
{
    int64_t size;
    const int16_t *src;
    if (!live_ctx(L))
        return SW_E_BADCTX;
    if (kind < SW_TRACE_I || kind > SW_TRACE_FV || which < SW_W_IN || which > SW_W_OUT ||
        (which == SW_W_OUT && kind > SW_TRACE_V)) {
        ((sw_learn *)L)->last_error = "unknown trace";
        return SW_E_PARAM;
    }
    size = which == SW_W_OUT ? L->cfg.n_hid : mat_size(L, which);
    if (n != size) {
        ((sw_learn *)L)->last_error = "count does not match the trace size";
        return SW_E_SIZE;
    }
    if (!v) {
        ((sw_learn *)L)->last_error = "array is NULL";
        return SW_E_NULL;
    }
    if (which != SW_W_OUT && L->events && L->keep[which]) {
        ((sw_learn *)L)->last_error = "the events form keeps no per-synapse traces";
        return SW_E_PARAM;
    }
    if (which == SW_W_OUT)
        src = kind == SW_TRACE_I ? L->zI : L->zV;
    else
        src = L->keep[which] ? L->tr[which][kind] : NULL;
    if (src && L->shared && which != SW_W_OUT && kind < SW_TRACE_FI) {
        int64_t i, j, n_hid = L->cfg.n_hid;
        for (i = 0; i < n / n_hid; i++)
            for (j = 0; j < n_hid; j++)
                v[i * n_hid + j] = src[i];
    } else if (src)
        memcpy(v, src, (size_t)n * 2);
    else
        memset(v, 0, (size_t)n * 2);
    return SW_OK;
}

int sw_learn_reset_traces(sw_learn *L)
{
    int m, k;
    size_t n_hid;
    if (!live_ctx(L))
        return SW_E_BADCTX;
    n_hid = (size_t)L->cfg.n_hid;
    for (m = 0; m < 2; m++) {
        size_t rows = m == 0 ? (size_t)L->cfg.n_in : n_hid;
        if (!L->keep[m] || L->events)
            continue;
        for (k = 0; k < 4; k++)
            memset(L->tr[m][k], 0, rows * (L->shared && k < 2 ? 1 : n_hid) * 2);
        memset(L->live[m], 0, rows);
    }
    memset(L->zI, 0, n_hid * 2);
    memset(L->zV, 0, n_hid * 2);
    memset(L->z_last, 0, n_hid);
    L->ev_t = 0;
    L->n_pend = 0;
    return SW_OK;
}

/* The spikes of the step before the next sw_learn_run's first step (0/1 each),
 * e.g. the core's last spikes when learning starts in the middle of a stream. */
int sw_learn_set_last_spikes(sw_learn *L, const uint8_t *z, int32_t n_hid)
{
    int32_t j;
    if (!live_ctx(L))
        return SW_E_BADCTX;
    if (n_hid != L->cfg.n_hid) {
        L->last_error = "last spikes have the wrong number of hidden neurons";
        return SW_E_SIZE;
    }
    if (!z && n_hid > 0) {
        L->last_error = "z is NULL";
        return SW_E_NULL;
    }
    for (j = 0; j < n_hid; j++)
        if (z[j] > 1) {
            L->last_error = "spike flags must be 0 or 1";
            return SW_E_PARAM;
        }
    if (n_hid)
        memcpy(L->z_last, z, (size_t)n_hid);
    return SW_OK;
}

/* The step and commit counters, e.g. from a checkpoint: the commit counter
 * picks stochastic rounding's draws, so a resumed learner must continue it. */
int sw_learn_set_counters(sw_learn *L, int64_t steps, int64_t commits)
{
    if (!live_ctx(L))
        return SW_E_BADCTX;
    if (steps < 0 || commits < 0 || commits >= (INT64_C(1) << 24)) {
        L->last_error = "counters must be >= 0 and commits < 2^24";
        return SW_E_PARAM;
    }
    L->steps = steps;
    L->commits = commits;
    return SW_OK;
}

int sw_learn_set_target(sw_learn *L, const int8_t *modes, int32_t n_out)
{
    int32_t k;
    if (!live_ctx(L))
        return SW_E_BADCTX;
    if (n_out != L->cfg.n_out) {
        L->last_error = "target has the wrong number of readout units";
        return SW_E_SIZE;
    }
    if (!modes && n_out > 0) {
        L->last_error = "modes is NULL";
        return SW_E_NULL;
    }
    for (k = 0; k < n_out; k++)
        if (modes[k] < SW_TARGET_LO || modes[k] > SW_TARGET_HI) {
            L->last_error = "target mode must be -1, 0 or 1";
            return SW_E_PARAM;
        }
    if (n_out)
        memcpy(L->modes, modes, (size_t)n_out);
    return SW_OK;
}

int sw_learn_set_kernel(sw_learn *L, int32_t kernel)
{
    if (!live_ctx(L))
        return SW_E_BADCTX;
    if (kernel != 0 && kernel != 1) {
        L->last_error = "kernel must be 0 (fast) or 1 (plain)";
        return SW_E_PARAM;
    }
    L->kernel = kernel;
    return SW_OK;
}

int sw_learn_counters(const sw_learn *L, int64_t *steps, int64_t *commits)
{
    if (!live_ctx(L))
        return SW_E_BADCTX;
    if (steps)
        *steps = L->steps;
    if (commits)
        *commits = L->commits;
    return SW_OK;
}

/* ---- the per-neuron part of a step (shared by both kernels) --------------- */
/* psi, readout errors and learning signals; returns whether any Lq / eq is non-zero. */
static void signals(sw_learn *L, const int16_t *v_pre, const uint8_t *refr, const int16_t *y,
                    int *any_L, int *any_e)
{
    const sw_learn_config *c = &L->cfg;
    int32_t j, k, n_hid = c->n_hid, n_out = c->n_out;
    int32_t W = 1 << c->surrogate_log2, sh = c->surrogate_log2 - PSI_BITS;
    const int8_t *B = L->fb ? L->fb : L->w[SW_W_OUT];
    int al = 0, ae = 0;
    for (j = 0; j < n_hid; j++) {
        int32_t d = (int32_t)v_pre[j] - L->v_th[j];
        int32_t a = W - (d < 0 ? -d : d);
        L->psi[j] = (refr[j] || a <= 0) ? 0 : (a >> sh);
    }
    for (k = 0; k < n_out; k++) {
        int64_t err = 0, yk = y[k];
        if (L->modes[k] == SW_TARGET_HI)
            err = yk - c->target_hi < 0 ? yk - c->target_hi : 0;
        else if (L->modes[k] == SW_TARGET_LO)
            err = yk - c->target_lo > 0 ? yk - c->target_lo : 0;
        L->errg[k] = (int32_t)rhu64(err * L->g_out[k], 14);
        L->eq[k] = (int32_t)sat16_64(rhu64(L->errg[k], c->signal_shift));
        ae |= L->eq[k] != 0;
    }
    for (j = 0; j < n_hid; j++) {
        int64_t s = 0;
        const int8_t *b = B + (int64_t)j * n_out;
        if (n_out <= 256) {   /* |b errg| <= 63 * 131070 < 2^23: 256 terms fit int32 */
            int32_t s32 = 0;
            for (k = 0; k < n_out; k++)
                s32 += b[k] * L->errg[k];
            s = s32;
        } else {
            for (k = 0; k < n_out; k++)
                s += (int64_t)b[k] * L->errg[k];
        }
        L->Lq[j] = (int32_t)sat16_64(rhu64(s * L->g_hid[j], 14 + c->signal_shift));
        al |= L->Lq[j] != 0;
    }
    *any_L = al;
    *any_e = ae;
}

/* acc_jk <- clamp(acc_jk - rhu(zV_j eq_k, rate)) for one j; zV_j = 0 changes nothing (rhu(0) = 0). */
static void readout_row_fast(int32_t *restrict a, const int32_t *restrict eq, int32_t zv, int32_t n,
                             int32_t half, int32_t rate, int32_t lo, int32_t hi)
{
    int32_t k;
    for (k = 0; k < n; k++) {
        int32_t t = a[k] - ASR(zv * eq[k] + half, rate);
        t = t < lo ? lo : t;
        a[k] = t > hi ? hi : t;
    }
}

static void readout_part(sw_learn *L, const uint8_t *z, int any_e)
{
    const sw_learn_config *c = &L->cfg;
    int32_t j, k, n_hid = c->n_hid, n_out = c->n_out;
    int64_t lo = -L->acc_max, hi = L->acc_max;
    for (j = 0; j < n_hid; j++)
        trace_step_plain(&L->zI[j], &L->zV[j], c->out_A, c->out_G, (int64_t)z[j] << c->trace_shift);
    if (!(c->learn_mask & SW_LEARN_MASK_OUT) || !any_e)
        return;
    if (L->kernel == 0) {
        /* int32: |zV * eq| <= 2^30, + 2^(rate-1) <= 2^29, |acc| <= 2^23 */
        int32_t half = c->rate_out ? 1 << (c->rate_out - 1) : 0;
        for (j = 0; j < n_hid; j++)
            if (L->zV[j])
                readout_row_fast(L->acc[SW_W_OUT] + (int64_t)j * n_out, L->eq, L->zV[j], n_out, half,
                                 c->rate_out, (int32_t)lo, (int32_t)hi);
        return;
    }
    for (j = 0; j < n_hid; j++) {
        int32_t *a = L->acc[SW_W_OUT] + (int64_t)j * n_out;
        for (k = 0; k < n_out; k++)
            a[k] = (int32_t)clamp64(a[k] - rhu64((int64_t)L->zV[j] * L->eq[k], c->rate_out), lo, hi);
    }
}

/* ---- plain kernel: docs/learning.md line by line ------------------------------ */
static void rows_plain(sw_learn *L, int m, const int32_t *pre, int64_t rows)
{
    const sw_learn_config *c = &L->cfg;
    int32_t n_hid = c->n_hid, rate = m == 0 ? c->rate_in : c->rate_rec;
    int64_t i, j, lo = -L->acc_max, hi = L->acc_max;
    int16_t *eI = L->tr[m][0], *eV = L->tr[m][1], *FI = L->tr[m][2], *FV = L->tr[m][3];
    int32_t *acc = L->acc[m];
    for (i = 0; i < rows; i++) {
        int64_t x = pre[i];
        int16_t ti = 0, tv = 0;
        for (j = 0; j < n_hid; j++) {
            int64_t q = i * n_hid + j;
            int64_t ev, e, fv;
            if (L->shared) {       /* eI_ij = eI_i for every j: computed from the row's old value */
                ti = eI[i];
                tv = eV[i];
            }
            ev = trace_step_plain(L->shared ? &ti : &eI[q], L->shared ? &tv : &eV[q], L->pre_A[j], L->pre_G[j],
                                  x << c->trace_shift);
            e = rhu64(ev * L->psi[j], PSI_BITS);
            fv = trace_step_plain(&FI[q], &FV[q], c->post_A, c->post_G, e);
            acc[q] = (int32_t)clamp64(acc[q] - rhu64((int64_t)L->Lq[j] * fv, rate), lo, hi);
        }
        if (L->shared) {   /* the same for every j */
            eI[i] = ti;
            eV[i] = tv;
        }
    }
}

/* ---- fast kernel ------------------------------------------------------------------ */
/* One row, int32 and branch-free; returns non-zero if any trace of the row is non-zero.
 * Bounds (docs/fixed-point.md): |eI*A|, |FI*A| <= 2^30; |(eI-eV)*G| <= 65535*32768 < 2^31
 * and + 32767 still fits; |eV*psi| <= 2^23; |Lq*FV| + 2^29 < 2^31.  `learn` is a constant
 * in each of the two calls below, so the accumulator update is compiled in or out. */
static inline int32_t row_body(int16_t *restrict eI, int16_t *restrict eV, int16_t *restrict FI,
                               int16_t *restrict FV, int32_t *restrict acc, const int32_t *restrict A,
                               const int32_t *restrict G, const int32_t *restrict psi,
                               const int32_t *restrict Lq, int32_t n, int32_t p, int32_t Ao, int32_t Go,
                               int32_t rate, int32_t half, int32_t lo, int32_t hi, const int learn)
{
    int32_t j, any = 0;
    for (j = 0; j < n; j++) {
        int32_t t, ei, ev, e, fi, fv;
        ei = trace_i_fast(eI[j], A[j], p);
        ev = trace_v_fast(eV[j], ei, G[j]);
        e = ASR(ev * psi[j] + 128, PSI_BITS);
        fi = trace_i_fast(FI[j], Ao, e);
        fv = trace_v_fast(FV[j], fi, Go);
        eI[j] = (int16_t)ei;
        eV[j] = (int16_t)ev;
        FI[j] = (int16_t)fi;
        FV[j] = (int16_t)fv;
        any |= ei | ev | fi | fv;
        if (learn) {
            t = acc[j] - ASR(Lq[j] * fv + half, rate);
            t = t < lo ? lo : t;
            acc[j] = t > hi ? hi : t;
        }
    }
    return any;
}

SW_LCLONES
static int row_fast(int16_t *restrict eI, int16_t *restrict eV, int16_t *restrict FI,
                    int16_t *restrict FV, int32_t *restrict acc, const int32_t *restrict A,
                    const int32_t *restrict G, const int32_t *restrict psi, const int32_t *restrict Lq,
                    int32_t n, int32_t p, int32_t Ao, int32_t Go, int32_t rate, int32_t half,
                    int32_t lo, int32_t hi, int learn)
{
    if (learn)
        return row_body(eI, eV, FI, FV, acc, A, G, psi, Lq, n, p, Ao, Go, rate, half, lo, hi, 1) != 0;
    return row_body(eI, eV, FI, FV, acc, A, G, psi, Lq, n, p, Ao, Go, rate, half, lo, hi, 0) != 0;
}

/* One row with shared presynaptic traces: ev is the row's eV (eI is not needed here);
 * returns non-zero if any FI or FV of the row is non-zero.  Same bounds as row_body. */
static inline int32_t row_shared_body(int16_t *restrict FI, int16_t *restrict FV, int32_t *restrict acc,
                                      const int32_t *restrict psi, const int32_t *restrict Lq, int32_t n,
                                      int32_t ev, int32_t Ao, int32_t Go, int32_t rate, int32_t half,
                                      int32_t lo, int32_t hi, const int learn)
{
    int32_t j, any = 0;
    for (j = 0; j < n; j++) {
        int32_t t, e, fi, fv;
        e = ASR(ev * psi[j] + 128, PSI_BITS);
        fi = trace_i_fast(FI[j], Ao, e);
        fv = trace_v_fast(FV[j], fi, Go);
        FI[j] = (int16_t)fi;
        FV[j] = (int16_t)fv;
        any |= fi | fv;
        if (learn) {
            t = acc[j] - ASR(Lq[j] * fv + half, rate);
            t = t < lo ? lo : t;
            acc[j] = t > hi ? hi : t;
        }
    }
    return any;
}

SW_LCLONES
static int row_fast_shared(int16_t *restrict FI, int16_t *restrict FV, int32_t *restrict acc,
                           const int32_t *restrict psi, const int32_t *restrict Lq, int32_t n, int32_t ev,
                           int32_t Ao, int32_t Go, int32_t rate, int32_t half, int32_t lo, int32_t hi,
                           int learn)
{
    if (learn)
        return row_shared_body(FI, FV, acc, psi, Lq, n, ev, Ao, Go, rate, half, lo, hi, 1) != 0;
    return row_shared_body(FI, FV, acc, psi, Lq, n, ev, Ao, Go, rate, half, lo, hi, 0) != 0;
}

static void rows_fast(sw_learn *L, int m, const int32_t *pre, int64_t rows, int any_L)
{
    const sw_learn_config *c = &L->cfg;
    int32_t n_hid = c->n_hid, rate = m == 0 ? c->rate_in : c->rate_rec;
    int32_t half = rate ? 1 << (rate - 1) : 0;
    int64_t i;
    uint8_t *live = L->live[m];
    for (i = 0; i < rows; i++) {
        int32_t x = pre[i];
        int64_t off;
        if (!x && !live[i])
            continue;   /* all traces 0 and no input: the update leaves them 0 */
        off = i * n_hid;
        if (x > 65536)
            x = 65536;  /* eI saturates either way (docs/fixed-point.md) */
        if (L->shared) {
            int16_t *eI = L->tr[m][0] + i, *eV = L->tr[m][1] + i;
            int64_t ev = trace_step_plain(eI, eV, L->pre_A[0], L->pre_G[0], (int64_t)x << c->trace_shift);
            int64_t ei = *eI;
            live[i] = (uint8_t)(row_fast_shared(L->tr[m][2] + off, L->tr[m][3] + off, L->acc[m] + off, L->psi,
                                                L->Lq, n_hid, (int32_t)ev, c->post_A, c->post_G, rate, half,
                                                -L->acc_max, L->acc_max, any_L) | (ei != 0) | (ev != 0));
            continue;
        }
        live[i] = (uint8_t)row_fast(L->tr[m][0] + off, L->tr[m][1] + off, L->tr[m][2] + off,
                                    L->tr[m][3] + off, L->acc[m] + off, L->pre_A, L->pre_G, L->psi,
                                    L->Lq, n_hid, x << c->trace_shift, c->post_A, c->post_G, rate,
                                    half, -L->acc_max, L->acc_max, any_L);
    }
}

/* ---- the events form (docs/learning.md "The events form") -------------------------------- */
/* Pq_j(s) = sat16(rhu(psi_j(s) * Lam_j(s), 8 + 15)), Lam_j(s) = sum_k h[k] Lq_j(s + k) over the
 * steps s + k < lim held (a later step counts as Lq = 0).  |h| <= 2^15, |Lq| <= 2^15: each
 * product fits int32, the sum (K <= 512 terms) int64. */
SW_LCLONES
static void lam_fast(int64_t *restrict lam, const int32_t *restrict Lq, int32_t hk, int32_t n)
{
    int32_t j;
    for (j = 0; j < n; j++)
        lam[j] += (int64_t)(hk * Lq[j]);
}

/* two steps at once: |h Lq| <= 2^30, so the sum of two is in [-2^31, 2^31) */
SW_LCLONES
static void lam2_fast(int64_t *restrict lam, const int32_t *restrict Lq0, const int32_t *restrict Lq1,
                      int32_t h0, int32_t h1, int32_t n)
{
    int32_t j;
    for (j = 0; j < n; j++)
        lam[j] += (int64_t)(h0 * Lq0[j] + h1 * Lq1[j]);
}

static void pq_at(sw_learn *L, int64_t s, int64_t lim)
{
    int32_t j, k, n = L->cfg.n_hid;
    int64_t R = L->R;
    int32_t *pq = L->r_Pq + (s % R) * n;
    const int32_t *psi = L->r_psi + (s % R) * n;
    if (L->kernel == 1) {
        for (j = 0; j < n; j++) {
            int64_t lam = 0;
            for (k = 0; k < L->K && s + k < lim; k++)
                lam += (int64_t)L->h[k] * L->r_Lq[((s + k) % R) * n + j];
            pq[j] = (int32_t)sat16_64(rhu64(psi[j] * lam, PSI_BITS + 15));
        }
        return;
    }
    memset(L->lam, 0, (size_t)n * 8);
    for (k = 0; k + 1 < L->K && s + k + 1 < lim; k += 2)
        lam2_fast(L->lam, L->r_Lq + ((s + k) % R) * n, L->r_Lq + ((s + k + 1) % R) * n, L->h[k], L->h[k + 1], n);
    if (k < L->K && s + k < lim)
        lam_fast(L->lam, L->r_Lq + ((s + k) % R) * n, L->h[k], n);
    for (j = 0; j < n; j++) {     /* rhu(x, 23) and sat16, branch-free (>> is arithmetic) */
        int64_t x = ASR(psi[j] * L->lam[j] + (INT64_C(1) << (PSI_BITS + 14)), PSI_BITS + 15);
        pq[j] = (int32_t)(x < -32768 ? -32768 : (x > 32767 ? 32767 : x));
    }
}

/* Credit the events of pending step e: D_j = sum_k' hpre[k'][j] Pq_j(e + k') over e + k' < lim,
 * u_j = clamp(rhu(D_j, rate), +-2^25), acc_ij <- clamp(acc_ij - x_i u_j).  |hpre| <= 2^14,
 * |Pq| <= 2^15: each product fits int32. */
SW_LCLONES
static void sub_clamp_fast(int32_t *restrict a, const int32_t *restrict u, int32_t n, int32_t lo, int32_t hi)
{
    int32_t j;
    for (j = 0; j < n; j++) {
        int32_t t = a[j] - u[j];
        t = t < lo ? lo : t;
        a[j] = t > hi ? hi : t;
    }
}

SW_LCLONES
static void dot_fast(int64_t *restrict D, const int32_t *restrict hp, const int32_t *restrict pq, int32_t n)
{
    int32_t j;
    for (j = 0; j < n; j++)
        D[j] += (int64_t)(hp[j] * pq[j]);
}

/* four steps at once: |hpre Pq| <= 2^29, so the sum of four is in [-2^31, 2^31) */
SW_LCLONES
static void dot4_fast(int64_t *restrict D, const int32_t *restrict h0, const int32_t *restrict h1,
                      const int32_t *restrict h2, const int32_t *restrict h3, const int32_t *restrict p0,
                      const int32_t *restrict p1, const int32_t *restrict p2, const int32_t *restrict p3,
                      int32_t n)
{
    int32_t j;
    for (j = 0; j < n; j++)
        D[j] += (int64_t)(h0[j] * p0[j] + h1[j] * p1[j] + h2[j] * p2[j] + h3[j] * p3[j]);
}

static void credit(sw_learn *L, int64_t e, int64_t lim)
{
    const sw_learn_config *c = &L->cfg;
    int32_t j, k, m, n = c->n_hid;
    int64_t R = L->R, slot = e % R, *D = L->lam, lo = -L->acc_max, hi = L->acc_max;
    int32_t any = 0;
    for (m = 0; m < 2; m++)
        any |= L->keep[m] && L->r_nev[slot * 2 + m] > 0;
    if (!any)
        return;
    memset(D, 0, (size_t)n * 8);
    k = 0;
    if (L->kernel == 0)
        for (; k + 3 < L->Kp && e + k + 3 < lim; k += 4)
            dot4_fast(D, L->hpre + (int64_t)k * n, L->hpre + (int64_t)(k + 1) * n, L->hpre + (int64_t)(k + 2) * n,
                      L->hpre + (int64_t)(k + 3) * n, L->r_Pq + ((e + k) % R) * n,
                      L->r_Pq + ((e + k + 1) % R) * n, L->r_Pq + ((e + k + 2) % R) * n,
                      L->r_Pq + ((e + k + 3) % R) * n, n);
    for (; k < L->Kp && e + k < lim; k++) {
        const int32_t *pq = L->r_Pq + ((e + k) % R) * n, *hp = L->hpre + (int64_t)k * n;
        if (L->kernel == 1) {
            for (j = 0; j < n; j++)
                D[j] += (int64_t)hp[j] * pq[j];
        } else {
            dot_fast(D, hp, pq, n);
        }
    }
    for (m = 0; m < 2; m++) {
        int32_t rate = m == 0 ? c->rate_in : c->rate_rec, q, rows = m == 0 ? c->n_in : n;
        int32_t nev = L->r_nev[slot * 2 + m], *u = L->u;
        if (!L->keep[m] || nev == 0)
            continue;
        if (L->kernel == 1) {
            for (j = 0; j < n; j++)
                u[j] = (int32_t)clamp64(rhu64(D[j], rate), -EVENT_U_MAX, EVENT_U_MAX);
        } else {
            int64_t half = rate ? INT64_C(1) << (rate - 1) : 0;
            for (j = 0; j < n; j++) {
                int64_t x = ASR(D[j] + half, rate);
                u[j] = (int32_t)(x < -EVENT_U_MAX ? -EVENT_U_MAX : (x > EVENT_U_MAX ? EVENT_U_MAX : x));
            }
        }
        for (q = 0; q < nev; q++) {
            int64_t x = L->r_cnt[m][slot * rows + q];
            int32_t *a = L->acc[m] + (int64_t)L->r_row[m][slot * rows + q] * n;
            if (x == 1 && L->kernel == 0)
                sub_clamp_fast(a, u, n, (int32_t)lo, (int32_t)hi);   /* |a|, |u| <= 2^25 */
            else
                for (j = 0; j < n; j++)
                    a[j] = (int32_t)clamp64(a[j] - x * u[j], lo, hi);
        }
    }
}

/* One step: hold psi, Lq and the step's presynaptic events (input channels ch[0..n_ch),
 * last step's spikes in zpre); complete what is due.  counts is all 0 between calls. */
static void events_step(sw_learn *L, const int32_t *ch, int64_t n_ch)
{
    const sw_learn_config *c = &L->cfg;
    int32_t i, n = c->n_hid, nev = 0;
    int64_t slot = L->ev_t % L->R, q;
    memcpy(L->r_psi + slot * n, L->psi, (size_t)n * 4);
    memcpy(L->r_Lq + slot * n, L->Lq, (size_t)n * 4);
    if (L->keep[0]) {
        int32_t *row = L->r_row[0] + slot * c->n_in, *cnt = L->r_cnt[0] + slot * c->n_in;
        for (q = 0; q < n_ch; q++)        /* the channels with events, in order of first event */
            if (L->counts[ch[q]]++ == 0)
                row[nev++] = ch[q];
        for (i = 0; i < nev; i++) {
            cnt[i] = L->counts[row[i]];
            L->counts[row[i]] = 0;
        }
        L->r_nev[slot * 2] = nev;
    }
    if (L->keep[1]) {
        int32_t *row = L->r_row[1] + slot * n, *cnt = L->r_cnt[1] + slot * n;
        nev = 0;
        for (i = 0; i < n; i++)
            if (L->zpre[i]) {
                row[nev] = i;
                cnt[nev++] = 1;
            }
        L->r_nev[slot * 2 + 1] = nev;
    }
    L->ev_t++;
    L->n_pend++;
    if (L->n_pend >= L->K)            /* Lam of step ev_t - K has all its learning signals */
        pq_at(L, L->ev_t - L->K, L->ev_t);
    if (L->n_pend == L->R) {          /* step ev_t - R has its whole window */
        credit(L, L->ev_t - L->R, L->ev_t);
        L->n_pend--;
    }
}

int sw_learn_flush(sw_learn *L)
{
    int64_t s, first;
    if (!live_ctx(L))
        return SW_E_BADCTX;
    if (!L->events)
        return SW_OK;
    first = L->ev_t - L->n_pend;
    for (s = first > L->ev_t - L->K + 1 ? first : L->ev_t - L->K + 1; s < L->ev_t; s++)
        pq_at(L, s, L->ev_t);
    for (s = first; s < L->ev_t; s++)
        credit(L, s, L->ev_t);
    L->n_pend = 0;
    return SW_OK;
}

/* ---- run ----------------------------------------------------------------------------- */
int sw_learn_run(sw_learn *L, int32_t T, const int64_t *indptr, const int32_t *channels,
                 int64_t n_events, const uint8_t *z, const int16_t *v_pre, const uint8_t *refr,
                 const int16_t *y)
{
    const sw_learn_config *c;
    int32_t t, j;
    int64_t q, nh;
    if (!live_ctx(L))
        return SW_E_BADCTX;
    c = &L->cfg;
    if (T < 0) {
        L->last_error = "negative number of steps";
        return SW_E_SIZE;
    }
    if (T == 0)
        return SW_OK;
    if (!indptr || !z || !v_pre || !refr || (c->n_out > 0 && !y) || (n_events > 0 && !channels)) {
        L->last_error = "an input array is NULL";
        return SW_E_NULL;
    }
    if (n_events < 0 || indptr[0] != 0 || indptr[T] != n_events) {
        L->last_error = "indptr must start at 0 and end at the number of events";
        return SW_E_EVENTS;
    }
    for (t = 0; t < T; t++) {
        if (indptr[t + 1] < indptr[t]) {
            L->last_error = "indptr must be non-decreasing";
            return SW_E_EVENTS;
        }
        if (indptr[t + 1] - indptr[t] > SW_LEARN_MAX_EVENTS_PER_STEP) {
            L->last_error = "more than 2^20 input events in one step";
            return SW_E_EVENTS;
        }
    }
    for (q = 0; q < n_events; q++)
        if (channels[q] < 0 || channels[q] >= c->n_in) {
            L->last_error = "input channel id out of range";
            return SW_E_CHANNEL;
        }
    nh = (int64_t)T * c->n_hid;
    for (q = 0; q < nh; q++)
        if (z[q] > 1 || refr[q] > 1) {
            L->last_error = "spike and refractory flags must be 0 or 1";
            return SW_E_PARAM;
        }
    for (t = 0; t < T; t++) {
        const uint8_t *zt = z + (int64_t)t * c->n_hid;
        const uint8_t *zp = t == 0 ? L->z_last : zt - c->n_hid;
        int any_L, any_e;
        int64_t e;
        signals(L, v_pre + (int64_t)t * c->n_hid, refr + (int64_t)t * c->n_hid,
                y + (int64_t)t * c->n_out, &any_L, &any_e);
        if (L->keep[1])
            for (j = 0; j < c->n_hid; j++)
                L->zpre[j] = zp[j];
        if (L->events) {
            events_step(L, channels + indptr[t], indptr[t + 1] - indptr[t]);
        } else if (L->keep[0]) {
            memset(L->counts, 0, (size_t)c->n_in * 4);
            for (e = indptr[t]; e < indptr[t + 1]; e++)
                L->counts[channels[e]]++;
            if (L->kernel == 1)
                rows_plain(L, 0, L->counts, c->n_in);
            else
                rows_fast(L, 0, L->counts, c->n_in, any_L);
        }
        if (L->keep[1] && !L->events) {
            if (L->kernel == 1)
                rows_plain(L, 1, L->zpre, c->n_hid);
            else
                rows_fast(L, 1, L->zpre, c->n_hid, any_L);
        }
        readout_part(L, zt, any_e);
        L->steps++;
    }
    memcpy(L->z_last, z + (int64_t)(T - 1) * c->n_hid, (size_t)c->n_hid);
    return SW_OK;
}

/* ---- commit ---------------------------------------------------------------------------- */
/* Synaptic intelligence before a commit (docs/learning.md "Consolidation"): the pull
 * acc <- clamp(acc - rhu(k (theta - anchor), 16)), k = min(Omega 2^c, 2^16), then
 * omega <- sat(omega + rhu(u d, 8)) (Q24) with u the accumulator's change since the last commit
 * before the pull and d after it.  |theta - anchor| < 2^25, k <= 2^16, |u|, |d| <= 2 ACC < 2^25:
 * every product fits int64. */
static void si_pull(sw_learn *L, int32_t m, int64_t n)
{
    int32_t **st = L->si[m], c = L->cfg.si_c_log2;
    int64_t i, lo = -L->acc_max, hi = L->acc_max;
    for (i = 0; i < n; i++) {
        int64_t imp = st[SW_SI_IMPORTANCE][i], a = L->acc[m][i], prev = st[SW_SI_PREV][i];
        int64_t k = c >= 0 ? imp << c : imp >> -c, u, d, om;
        k = k > SI_ONE ? SI_ONE : k;
        u = a - prev;
        a = clamp64(a - rhu64(k * (theta_of(L, m, i) - st[SW_SI_ANCHOR][i]), 16), lo, hi);
        L->acc[m][i] = (int32_t)a;
        d = a - prev;
        om = st[SW_SI_OMEGA][i] + rhu64(u * d, 8);
        st[SW_SI_OMEGA][i] = (int32_t)clamp64(om, -SI_MAX, SI_MAX);
    }
}

int sw_learn_commit(sw_learn *L)
{
    int32_t m;
    int64_t i, n;
    if (!live_ctx(L))
        return SW_E_BADCTX;
    for (m = 0; m < 3; m++) {
        int32_t bit = m == 0 ? SW_LEARN_MASK_IN : (m == 1 ? SW_LEARN_MASK_REC : SW_LEARN_MASK_OUT);
        if (!(L->cfg.learn_mask & bit))
            continue;
        n = mat_size(L, m);
        if (L->si[m][0])
            si_pull(L, m, n);
        for (i = 0; i < n; i++) {
            int64_t a = L->acc[m][i], w;
            if (L->cfg.weights == SW_LEARN_SHADOW) {
                w = rhu64(a, SHADOW_BITS);
            } else {
                uint64_t ctr = ((uint64_t)L->commits << 40) + ((uint64_t)m << 36) + (uint64_t)i;
                int64_t r = (int64_t)(splitmix64_at(L->cfg.sr_seed, ctr) >> 48);
                w = L->w[m][i] + floor_shr64(a, SHADOW_BITS) + ((a & 0xFFFF) > r);
                L->acc[m][i] = 0;
            }
            L->w[m][i] = (int8_t)clamp64(w, -SW_WEIGHT_MAX, SW_WEIGHT_MAX);
        }
        if (L->si[m][0])
            memcpy(L->si[m][SW_SI_PREV], L->acc[m], (size_t)n * 4);
    }
    L->commits++;
    return SW_OK;
}

/* ---- synaptic intelligence (docs/learning.md "Consolidation") --------------------------- */
int sw_learn_consolidate(sw_learn *L)
{
    int32_t m;
    int64_t i, n, xi;
    if (!live_ctx(L))
        return SW_E_BADCTX;
    if (!L->cfg.si) {
        L->last_error = "consolidate needs si = 1";
        return SW_E_PARAM;
    }
    xi = INT64_C(1) << (32 + L->cfg.si_xi_log2);
    for (m = 0; m < 3; m++) {
        int32_t **st = L->si[m];
        if (!st[0])
            continue;
        n = mat_size(L, m);
        for (i = 0; i < n; i++) {
            int64_t th = theta_of(L, m, i), d = th - st[SW_SI_ANCHOR][i];
            int64_t om = st[SW_SI_OMEGA][i] > 0 ? st[SW_SI_OMEGA][i] : 0;
            /* omega Q24, Delta^2 + xi Q32 (exact, <= 2^51), Omega Q16: omega 2^24 <= 2^55 */
            int64_t imp = st[SW_SI_IMPORTANCE][i] + (om << 24) / (d * d + xi);
            st[SW_SI_IMPORTANCE][i] = (int32_t)(imp > SI_MAX ? SI_MAX : imp);
            st[SW_SI_OMEGA][i] = 0;
            st[SW_SI_ANCHOR][i] = (int32_t)th;
        }
    }
    return SW_OK;
}

int sw_learn_set_si(sw_learn *L, int32_t c_log2, int32_t xi_log2)
{
    if (!live_ctx(L))
        return SW_E_BADCTX;
    if (c_log2 < -16 || c_log2 > 16 || xi_log2 < -16 || xi_log2 > 8) {
        L->last_error = "si_c_log2 outside -16..16 or si_xi_log2 outside -16..8";
        return SW_E_PARAM;
    }
    L->cfg.si_c_log2 = c_log2;
    L->cfg.si_xi_log2 = xi_log2;
    return SW_OK;
}

static int check_si(sw_learn *L, int32_t which, int32_t kind, const void *v, int64_t n)
{
    int st = check_mat(L, which, v, n);
    if (st != SW_OK)
        return st;
    if (kind < SW_SI_PREV || kind > SW_SI_ANCHOR) {
        L->last_error = "unknown synaptic intelligence state";
        return SW_E_PARAM;
    }
    if (!L->si[which][0]) {
        L->last_error = "no synaptic intelligence state: si is off or the matrix does not learn";
        return SW_E_PARAM;
    }
    return SW_OK;
}

int sw_learn_get_si(const sw_learn *L, int32_t which, int32_t kind, int32_t *v, int64_t n)
{
    int st = check_si((sw_learn *)L, which, kind, v, n);
    if (st != SW_OK)
        return st;
    if (n)
        memcpy(v, L->si[which][kind], (size_t)n * 4);
    return SW_OK;
}

int sw_learn_set_si_state(sw_learn *L, int32_t which, int32_t kind, const int32_t *v, int64_t n)
{
    int64_t i, lo, hi;
    int st = check_si(L, which, kind, v, n);
    if (st != SW_OK)
        return st;
    lo = kind == SW_SI_PREV ? -L->acc_max : (kind == SW_SI_ANCHOR ? -L->theta_max : (kind == SW_SI_OMEGA ? -SI_MAX : 0));
    hi = kind == SW_SI_PREV ? L->acc_max : (kind == SW_SI_ANCHOR ? L->theta_max : SI_MAX);
    for (i = 0; i < n; i++)
        if (v[i] < lo || v[i] > hi) {
            L->last_error = "synaptic intelligence state outside its range";
            return SW_E_PARAM;
        }
    if (n)
        memcpy(L->si[which][kind], v, (size_t)n * 4);
    return SW_OK;
}
