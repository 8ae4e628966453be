/*
 * frontend.c -- streaming audio front end: int16 PCM in, input spike events out.
 *
 * The signal chain and every formula are written once, in docs/frontend.md;
 * runtime/frontend.py holds a numpy reference (_RefKernel) that performs the
 * same operations in the same order and is tested bit-exact against this file.
 *
 * Per input block:
 *   1. polyphase resampler L/M (integer: int16 x Q14 int16 -> int32 sum,
 *      rounded >> 14), first rs_skip outputs dropped (delay compensation);
 *   2. per internal sample: float32 pre-emphasis, n_stages biquads (DF-II
 *      transposed) per channel, per-step power sum of y^2;
 *   3. per step: one-pole smoothed band power, log2 (own polynomial, no libm),
 *      dB-above-floor drive, sigma-delta (integrate-and-fire, subtractive
 *      reset) encoder, events appended as CSR.
 *
 * Determinism: only IEEE float32 +,-,*,/ and integer ops, no libm, no FMA
 * (-ffp-contract=off).  Every channel's arithmetic depends only on its own
 * state and the sample sequence, never on block boundaries, so results are
 * block-invariant and identical on every IEEE-754 machine.  Loops over
 * channels are element-wise, so the compiler may vectorise them without
 * changing a single bit.
 *
 * Memory: one allocation in sw_fe_create; nothing allocates afterwards.
 * Nothing prints, nothing aborts; every function returns SW_OK or SW_E_*.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "spikewire.h"

#define FE_MAGIC 0x53574645u /* "SWFE" */

struct sw_fe {
    uint32_t magic;
    sw_fe_params p;          /* pointers inside p are NOT used after create */
    /* resampler */
    int16_t *rs_coef;        /* [L x K] copy, reversed taps per phase      */
    int16_t *rs_hist;        /* [2K] double-written history                */
    int32_t rs_pos;          /* next write slot 0..K-1                     */
    int32_t rs_phase;        /* upsampled time of next output - i*L        */
    int64_t n_in;            /* input samples consumed since reset         */
    int64_t n_rs;            /* resampler outputs since reset (incl. skip) */
    int64_t n_int;           /* internal samples fed to the filter bank    */
    /* filter bank, all [n_stages x n_channels] or [n_channels] */
    float *sos;              /* [n_stages x 5 x C] copy                    */
    float *z1, *z2;          /* [n_stages x C] DF-II-T state               */
    float *y;                /* [C] scratch: current stage output          */
    float *pw;               /* [C] sum of y^2 within the current step     */
    float *env;              /* [C] smoothed band power                    */
    float *acc;              /* [C] sigma-delta accumulator, 0 <= acc < 1  */
    int32_t *cnt;            /* [C] scratch: spikes of each channel        */
    int64_t *pm;             /* [C] PCEN smoothed band power, Q56          */
    int32_t pcen_leps;       /* Q16 log2 of pcen_eps (fe_pcen_log2q)       */
    float x_prev;            /* pre-emphasis memory                        */
    int32_t fill;            /* internal samples in the current step       */
};

/* ---- helpers ------------------------------------------------------------ */

static int fe_ok(const sw_fe *fe)
{
    return fe != NULL && fe->magic == FE_MAGIC;
}

/* float <-> bits without aliasing UB */
static uint32_t fe_f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float fe_u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/*
 * fe_log2: log2(x) for a normal, positive float x, |error| < 2e-6.
 * x = m * 2^e with m in [1, 2); t = (m-1)/(m+1);
 * log2(m) = k * (t + t^3/3 + t^5/5 + t^7/7 + t^9/9), k = 2/ln 2 (passed in).
 * Fixed evaluation order (mirrored in runtime/frontend.py::_log2_f32).
 */
static float fe_log2(float x, float k)
{
    uint32_t u = fe_f2u(x);
    int32_t e = (int32_t)((u >> 23) & 0xFFu) - 127;
    float m = fe_u2f((u & 0x7FFFFFu) | 0x3F800000u);
    float t = (m - 1.0f) / (m + 1.0f);
    float t2 = t * t;
    float s = (1.0f / 9.0f);
    s = s * t2 + (1.0f / 7.0f);
    s = s * t2 + (1.0f / 5.0f);
    s = s * t2 + (1.0f / 3.0f);
    s = s * t2 + 1.0f;
    return (float)e + (s * t) * k;
}

/* PCEN fixed-point conversions (docs/frontend.md "PCEN").
 * Band power -> Q56 int64: x * 2^56 is exact in float32, the conversion
 * truncates; x is clamped to [.., 63] so the result stays below 2^62. */
static int64_t fe_pcen_q56(float x)
{
    x = x < 63.0f ? x : 63.0f;
    return (int64_t)(x * 72057594037927936.0f);
}

/* log2 of a positive Q56 value, as Q16 int32, no int->float conversion:
 * v = 2^b * (1 + f), b = index of the top bit, the 23 bits below it (the
 * rest truncated) form the float32 mantissa m = 1 + f in [1, 2);
 * result = (b - 56) * 65536 + trunc(65536 * fe_log2(m))  (product exact). */
static int32_t fe_pcen_log2q(int64_t v, float k)
{
    uint64_t u = (uint64_t)v;
    int32_t b = 62;
    while (b > 0 && !((u >> b) & 1u)) b--;
    uint64_t mant = b >= 23 ? u >> (b - 23) : u << (23 - b);
    float m = fe_u2f(((uint32_t)mant & 0x7FFFFFu) | 0x3F800000u);
    return (b - 56) * 65536 + (int32_t)(fe_log2(m, k) * 65536.0f);
}

/* ---- lifetime ----------------------------------------------------------- */

static int fe_check_params(const sw_fe_params *p)
{
    if (p->n_channels < 1 || p->n_channels > SW_FE_MAX_CHANNELS) return SW_E_SIZE;
    if (p->n_stages < 1 || p->n_stages > SW_FE_MAX_STAGES) return SW_E_SIZE;
    if (p->step_samples < 1 || p->step_samples > SW_FE_MAX_STEP) return SW_E_SIZE;
    if (p->max_spikes < 1 || p->max_spikes > SW_FE_MAX_SPIKES) return SW_E_PARAM;
    if (p->rs_up < 1 || p->rs_up > SW_FE_MAX_UP) return SW_E_PARAM;
    if (p->rs_down < 1 || p->rs_down > SW_FE_MAX_DOWN) return SW_E_PARAM;
    if (p->rs_taps < 1 || p->rs_taps > SW_FE_MAX_TAPS) return SW_E_PARAM;
    if (p->rs_skip < 0 || p->rs_skip > SW_FE_MAX_TAPS) return SW_E_PARAM;
    if (p->rs_coef == NULL || p->sos == NULL) return SW_E_NULL;
    /* float parameters: reject NaN (x != x) and out-of-range values */
    if (!(p->preemph >= 0.0f && p->preemph < 1.0f)) return SW_E_PARAM;
    if (!(p->env_alpha > 0.0f && p->env_alpha <= 1.0f)) return SW_E_PARAM;
    if (!(p->power_scale > 0.0f && p->power_scale < 1e30f)) return SW_E_PARAM;
    if (!(p->log2_k > 0.0f && p->log2_k < 16.0f)) return SW_E_PARAM;
    if (!(p->floor_power >= 1e-30f && p->floor_power < 1e30f)) return SW_E_PARAM;
    if (!(p->log2_floor > -128.0f && p->log2_floor < 128.0f)) return SW_E_PARAM;
    if (!(p->drive_scale >= 0.0f && p->drive_scale < 1e6f)) return SW_E_PARAM;
    if (!(p->tiny >= 0.0f && p->tiny < 1e-6f)) return SW_E_PARAM;
    if (p->norm != SW_FE_NORM_NONE && p->norm != SW_FE_NORM_PCEN) return SW_E_PARAM;
    if (p->norm == SW_FE_NORM_PCEN) {
        /* Q16 log2 levels of any float32 lie in +-128 * 65536 = +-2^23 */
        if (p->pcen_k < 1 || p->pcen_k > 32768) return SW_E_PARAM;
        if (p->pcen_alpha < 0 || p->pcen_alpha > 32768) return SW_E_PARAM;
        if (p->pcen_off < -(1 << 23) || p->pcen_off > (1 << 23)) return SW_E_PARAM;
        if (p->pcen_eps < ((int64_t)1 << 16) || p->pcen_eps > ((int64_t)1 << 60)) return SW_E_PARAM;
        /* the smoother's Q56 input is max(e, floor_power): >= 2^16 */
        if (!(p->floor_power >= 1e-12f)) return SW_E_PARAM;
        if (!(p->pcen_scale >= 0.0f && p->pcen_scale < 1.0f)) return SW_E_PARAM;
    }
    return SW_OK;
}

int sw_fe_create(const sw_fe_params *params, sw_fe **out_fe)
{
    if (out_fe == NULL) return SW_E_NULL;
    *out_fe = NULL;
    if (params == NULL) return SW_E_NULL;
    int st = fe_check_params(params);
    if (st != SW_OK) return st;
    /* the int32 resampler accumulator must not overflow for any input */
    for (int32_t ph = 0; ph < params->rs_up; ph++) {
        int64_t sum = 0;
        const int16_t *h = params->rs_coef + (size_t)ph * (size_t)params->rs_taps;
        for (int32_t j = 0; j < params->rs_taps; j++) sum += h[j] < 0 ? -(int64_t)h[j] : h[j];
        if (sum * 32768 + (1 << 13) > INT32_MAX) return SW_E_PARAM;
    }

    size_t C = (size_t)params->n_channels, S = (size_t)params->n_stages;
    size_t L = (size_t)params->rs_up, K = (size_t)params->rs_taps;
    size_t nf = S * 5 * C + 2 * S * C + 5 * C;  /* sos, z1, z2, y, pw, env, acc, cnt */
    size_t ni = L * K + 2 * K;                  /* coef, hist */
    size_t bytes = sizeof(sw_fe) + C * sizeof(int64_t) + nf * sizeof(float) + ni * sizeof(int16_t) + 64;
    sw_fe *fe = (sw_fe *)malloc(bytes);
    if (fe == NULL) return SW_E_NOMEM;
    memset(fe, 0, bytes);

    fe->pm = (int64_t *)(fe + 1);    /* sizeof(sw_fe) is a multiple of 8 */
    float *f = (float *)(fe->pm + C);
    fe->sos = f;  f += S * 5 * C;
    fe->z1 = f;   f += S * C;
    fe->z2 = f;   f += S * C;
    fe->y = f;    f += C;
    fe->pw = f;   f += C;
    fe->env = f;  f += C;
    fe->acc = f;  f += C;
    fe->cnt = (int32_t *)f; f += C;  /* sizeof(int32_t) == sizeof(float) */
    int16_t *s16 = (int16_t *)f;
    fe->rs_coef = s16; s16 += L * K;
    fe->rs_hist = s16;

    memcpy(fe->sos, params->sos, S * 5 * C * sizeof(float));
    memcpy(fe->rs_coef, params->rs_coef, L * K * sizeof(int16_t));
    fe->p = *params;
    fe->p.sos = NULL;
    fe->p.rs_coef = NULL;
    fe->magic = FE_MAGIC;
    fe->pcen_leps = params->norm == SW_FE_NORM_PCEN
                    ? fe_pcen_log2q(params->pcen_eps, params->log2_k) : 0;
    sw_fe_reset(fe);
    *out_fe = fe;
    return SW_OK;
}

int sw_fe_destroy(sw_fe *fe)
{
    if (fe == NULL) return SW_OK;
    if (!fe) return SW_E_NULL;
    if (!fe_ok(fe)) return SW_E_BADCTX;
    fe->magic = 0;
    free(fe);
    return SW_OK;
}

int sw_fe_reset(sw_fe *fe)
{
    if (!fe) return SW_E_NULL;
    if (!fe_ok(fe)) return SW_E_BADCTX;
    size_t C = (size_t)fe->p.n_channels, S = (size_t)fe->p.n_stages;
    size_t K = (size_t)fe->p.rs_taps;
    memset(fe->rs_hist, 0, 2 * K * sizeof(int16_t));
    memset(fe->z1, 0, S * C * sizeof(float));
    memset(fe->z2, 0, S * C * sizeof(float));
    memset(fe->y, 0, C * sizeof(float));
    memset(fe->pw, 0, C * sizeof(float));
    memset(fe->env, 0, C * sizeof(float));
    memset(fe->acc, 0, C * sizeof(float));
    for (size_t k = 0; k < C; k++)
        fe->pm[k] = fe->p.norm == SW_FE_NORM_PCEN ? fe_pcen_q56(fe->p.floor_power) : 0;
    fe->rs_pos = 0;
    fe->rs_phase = 0;
    fe->n_in = 0;
    fe->n_rs = 0;
    fe->n_int = 0;
    fe->x_prev = 0.0f;
    fe->fill = 0;
    return SW_OK;
}

/* ---- step counting (the one place for these formulas) -------------------- */

/* resampler outputs produced by N inputs: #{m >= 0 : m*M < N*L} = ceil(N*L/M) */
static int64_t fe_rs_outputs(const sw_fe *fe, int64_t n_in)
{
    int64_t L = fe->p.rs_up, M = fe->p.rs_down;
    return (n_in * L + M - 1) / M;
}

static int64_t fe_internal_after(const sw_fe *fe, int64_t n_in)
{
    int64_t r = fe_rs_outputs(fe, n_in) - fe->p.rs_skip;
    return r > 0 ? r : 0;
}

int sw_fe_block_steps(const sw_fe *fe, int64_t n, int64_t *steps)
{
    if (steps == NULL) return SW_E_NULL;
    *steps = 0;
    if (!fe) return SW_E_NULL;
    if (!fe_ok(fe)) return SW_E_BADCTX;
    if (n < 0 || n > SW_FE_MAX_BLOCK) return SW_E_SIZE;
    int64_t st = fe->p.step_samples;
    *steps = fe_internal_after(fe, fe->n_in + n) / st - fe->n_int / st;
    return SW_OK;
}

/* internal samples that correspond to real input: ceil(n_in*L/M) */
static int64_t fe_flush_target(const sw_fe *fe)
{
    return fe_rs_outputs(fe, fe->n_in);
}

int sw_fe_flush_steps(const sw_fe *fe, int64_t *steps)
{
    if (steps == NULL) return SW_E_NULL;
    *steps = 0;
    if (!fe) return SW_E_NULL;
    if (!fe_ok(fe)) return SW_E_BADCTX;
    int64_t st = fe->p.step_samples;
    int64_t target = fe_flush_target(fe);
    *steps = (target + st - 1) / st - fe->n_int / st;
    return SW_OK;
}

/* ---- the per-sample and per-step kernels --------------------------------- */

typedef struct fe_out {
    int64_t *indptr;
    int32_t *channels;
    int64_t n_steps;   /* steps written so far in this call */
    int64_t n_events;  /* events written so far in this call */
} fe_out;

/* One biquad stage over all channels (DF-II transposed), in place on y. */
static void fe_biquad(int32_t C, const float *restrict b0, const float *restrict b1,
                      const float *restrict b2, const float *restrict a1,
                      const float *restrict a2, float *restrict z1, float *restrict z2,
                      float *restrict y)
{
    for (int32_t k = 0; k < C; k++) {
        float xi = y[k];
        float yo = b0[k] * xi + z1[k];
        z1[k] = (b1[k] * xi - a1[k] * yo) + z2[k];
        z2[k] = b2[k] * xi - a2[k] * yo;
        y[k] = yo;
    }
}

/* One internal sample (float, full scale = 1.0) into the filter bank. */
static void fe_bank_sample(sw_fe *fe, float x)
{
    const int32_t C = fe->p.n_channels, S = fe->p.n_stages;
    float xe = x - fe->p.preemph * fe->x_prev;
    fe->x_prev = x;
    float *restrict y = fe->y;
    for (int32_t k = 0; k < C; k++) y[k] = xe;
    for (int32_t s = 0; s < S; s++) {
        const float *c = fe->sos + (size_t)s * 5 * (size_t)C;
        fe_biquad(C, c, c + C, c + 2 * C, c + 3 * C, c + 4 * C,
                  fe->z1 + (size_t)s * (size_t)C, fe->z2 + (size_t)s * (size_t)C, y);
    }
    float *restrict pw = fe->pw;
    for (int32_t k = 0; k < C; k++) pw[k] = pw[k] + y[k] * y[k];
    fe->n_int++;
    fe->fill++;
}

/* Per-step envelope, compression and sigma-delta over all channels
 * (element-wise, vectorisable); writes the spike count of each channel. */
static void fe_encode(int32_t C, const sw_fe_params *p, float *restrict pw,
                      float *restrict env, float *restrict acc, int32_t *restrict cnt)
{
    const float ps = p->power_scale, alpha = p->env_alpha, tiny = p->tiny;
    const float fl = p->floor_power, lk = p->log2_k, lf = p->log2_floor;
    const float ds = p->drive_scale;
    const int32_t mx = p->max_spikes;
    for (int32_t k = 0; k < C; k++) {
        float pstep = pw[k] * ps;
        float e = env[k] + alpha * (pstep - env[k]);
        e = e < tiny ? 0.0f : e;
        env[k] = e;
        pw[k] = 0.0f;
        int above = e > fl;
        float lg = fe_log2(above ? e : fl, lk);
        float drive = (lg - lf) * ds;
        drive = (above && drive > 0.0f) ? drive : 0.0f;
        float a = drive > 0.0f ? acc[k] + drive : 0.0f;
        int32_t n = (int32_t)a;   /* a >= 0: truncation == floor */
        int cap = n > mx;
        n = cap ? mx : n;
        a = cap ? (float)mx : a;
        acc[k] = a - (float)n;
        cnt[k] = n;
    }
}

/* The sigma-delta encoder of one channel (shared by both compressions). */
static int32_t fe_sigma_delta(float drive, int32_t mx, float *acc)
{
    float a = drive > 0.0f ? *acc + drive : 0.0f;
    int32_t n = (int32_t)a;   /* a >= 0: truncation == floor */
    int cap = n > mx;
    n = cap ? mx : n;
    a = cap ? (float)mx : a;
    *acc = a - (float)n;
    return n;
}

/* Per-step envelope, PCEN and sigma-delta (norm == SW_FE_NORM_PCEN).
 * PCEN (Wang et al. 2017) E / (eps + M)^alpha evaluated in the log domain,
 * the smoother M in Q56 integers (linear power, so it scales with the input):
 *   q   = Q56(max(e, floor))                       (fe_pcen_q56)
 *   M  <- M + floor((q - M) * k / 2^15)            (exact, no overflow)
 *   lE  = log2q(q), lD = log2q(M + eps), lEps = log2q(eps)  (fe_pcen_log2q, Q16)
 *   r   = lE - lEps - off - floor(alpha * (lD - lEps) / 2^15)
 *   drive = (e > floor && r > 0) ? (float)r * scale : 0
 * (>> of a negative int64 is arithmetic = floor on gcc and clang). */
static void fe_encode_pcen(sw_fe *fe, int32_t C, const sw_fe_params *p, float *restrict pw,
                           float *restrict env, float *restrict acc, int64_t *restrict pm,
                           int32_t *restrict cnt)
{
    const float ps = p->power_scale, alpha = p->env_alpha, tiny = p->tiny;
    const float fl = p->floor_power, lk = p->log2_k, sc = p->pcen_scale;
    const int64_t kq = p->pcen_k, aq = p->pcen_alpha, eps = p->pcen_eps;
    const int32_t off = p->pcen_off, leps = fe->pcen_leps, mx = p->max_spikes;
    for (int32_t k = 0; k < C; k++) {
        float pstep = pw[k] * ps;
        float e = env[k] + alpha * (pstep - env[k]);
        e = e < tiny ? 0.0f : e;
        env[k] = e;
        pw[k] = 0.0f;
        int above = e > fl;
        float ec = above ? e : fl;
        int64_t q = fe_pcen_q56(ec);
        int64_t d = q - pm[k];
        /* floor(d * kq / 2^15) without a 2^77 product: d = hi * 2^15 + lo */
        int64_t m = pm[k] + (d >> 15) * kq + (((d & 32767) * kq) >> 15);
        pm[k] = m;
        int32_t le = fe_pcen_log2q(q, lk);
        int32_t ld = fe_pcen_log2q(m + eps, lk);
        int32_t r = le - leps - off - (int32_t)((aq * (int64_t)(ld - leps)) >> 15);
        float drive = (above && r > 0) ? (float)r * sc : 0.0f;
        cnt[k] = fe_sigma_delta(drive, mx, &acc[k]);
    }
}

/* Zero filter state that decays towards the denormal range (silence after sound). */
static void fe_flush_tiny(size_t n, float tiny, float *restrict z)
{
    for (size_t i = 0; i < n; i++) z[i] = (z[i] < tiny && z[i] > -tiny) ? 0.0f : z[i];
}

/* Close one step: envelope, compression, encoder, events. */
static void fe_step(sw_fe *fe, fe_out *o)
{
    const int32_t C = fe->p.n_channels, S = fe->p.n_stages;
    int32_t *cnt = fe->cnt;
    if (fe->p.norm == SW_FE_NORM_PCEN)
        fe_encode_pcen(fe, C, &fe->p, fe->pw, fe->env, fe->acc, fe->pm, cnt);
    else
        fe_encode(C, &fe->p, fe->pw, fe->env, fe->acc, cnt);
    int64_t ne = o->n_events;
    for (int32_t k = 0; k < C; k++)
        for (int32_t r = 0; r < cnt[k]; r++) o->channels[ne++] = k;
    fe_flush_tiny((size_t)S * (size_t)C, fe->p.tiny, fe->z1);
    fe_flush_tiny((size_t)S * (size_t)C, fe->p.tiny, fe->z2);
    o->n_events = ne;
    o->n_steps++;
    o->indptr[o->n_steps] = ne;
    fe->fill = 0;
}

static void fe_internal(sw_fe *fe, int32_t v, fe_out *o)
{
    fe_bank_sample(fe, (float)v * (1.0f / 32768.0f));
    if (fe->fill == fe->p.step_samples) fe_step(fe, o);
}

/* Push one input sample through the resampler; emits 0..ceil(L/M) outputs.
 * Outputs are fed to the filter bank only while n_int < limit (flush). */
static void fe_push(sw_fe *fe, int16_t x, fe_out *o, int64_t limit)
{
    const int32_t L = fe->p.rs_up, M = fe->p.rs_down, K = fe->p.rs_taps;
    int32_t pos = fe->rs_pos;
    fe->rs_hist[pos] = x;
    fe->rs_hist[pos + K] = x;
    pos = pos + 1 == K ? 0 : pos + 1;
    fe->rs_pos = pos;
    fe->n_in++;
    /* window oldest..newest is rs_hist[pos .. pos+K-1] */
    const int16_t *restrict w = fe->rs_hist + pos;
    while (fe->rs_phase < L) {
        const int16_t *restrict h = fe->rs_coef + (size_t)fe->rs_phase * (size_t)K;
        int32_t acc = 0;   /* cannot overflow: checked in sw_fe_create */
        for (int32_t j = 0; j < K; j++) acc += (int32_t)h[j] * (int32_t)w[j];
        fe->n_rs++;
        /* round half up; >> of a negative int is arithmetic on every
         * supported compiler (gcc, clang) */
        if (fe->n_rs > fe->p.rs_skip && fe->n_int < limit)
            fe_internal(fe, (acc + (1 << 13)) >> 14, o);
        fe->rs_phase += M;
    }
    fe->rs_phase -= L;
}

/* ---- public processing ----------------------------------------------------- */

static int fe_check_out(const sw_fe *fe, int64_t steps, int64_t *indptr, int64_t max_steps,
                        const int32_t *channels, int64_t max_events)
{
    if (indptr == NULL) return SW_E_NULL;
    if (max_steps < steps) return SW_E_BUFFER;
    int64_t need = steps * fe->p.n_channels * fe->p.max_spikes;
    if (need > 0 && channels == NULL) return SW_E_NULL;
    if (max_events < need) return SW_E_BUFFER;
    return SW_OK;
}

int sw_fe_process(sw_fe *fe, const int16_t *x, int64_t n,
                  int64_t *indptr, int64_t max_steps,
                  int32_t *channels, int64_t max_events,
                  int64_t *n_steps, int64_t *n_events)
{
    if (n_steps == NULL || n_events == NULL) return SW_E_NULL;
    *n_steps = 0;
    *n_events = 0;
    if (!fe) return SW_E_NULL;
    if (!fe_ok(fe)) return SW_E_BADCTX;
    if (n < 0 || n > SW_FE_MAX_BLOCK) return SW_E_SIZE;
    if (n > 0 && x == NULL) return SW_E_NULL;
    int64_t steps;
    int st = sw_fe_block_steps(fe, n, &steps);
    if (st != SW_OK) return st;
    st = fe_check_out(fe, steps, indptr, max_steps, channels, max_events);
    if (st != SW_OK) return st;

    fe_out o = {indptr, channels, 0, 0};
    indptr[0] = 0;
    if (fe->p.rs_up == 1 && fe->p.rs_down == 1 && fe->p.rs_skip == 0 && fe->p.rs_taps == 1
        && fe->rs_coef[0] == (1 << 14)) {
        /* identity resampler: same arithmetic as fe_push, minus the work */
        for (int64_t i = 0; i < n; i++) {
            fe->n_in++;
            fe->n_rs++;
            fe_internal(fe, (int32_t)x[i], &o);
        }
    } else {
        for (int64_t i = 0; i < n; i++) fe_push(fe, x[i], &o, INT64_MAX);
    }
    *n_steps = o.n_steps;
    *n_events = o.n_events;
    return o.n_steps == steps ? SW_OK : SW_E_STATE;
}

int sw_fe_flush(sw_fe *fe, int64_t *indptr, int64_t max_steps,
                int32_t *channels, int64_t max_events,
                int64_t *n_steps, int64_t *n_events)
{
    if (n_steps == NULL || n_events == NULL) return SW_E_NULL;
    *n_steps = 0;
    *n_events = 0;
    if (!fe) return SW_E_NULL;
    if (!fe_ok(fe)) return SW_E_BADCTX;
    int64_t steps;
    int st = sw_fe_flush_steps(fe, &steps);
    if (st != SW_OK) return st;
    st = fe_check_out(fe, steps, indptr, max_steps, channels, max_events);
    if (st != SW_OK) return st;

    fe_out o = {indptr, channels, 0, 0};
    indptr[0] = 0;
    int64_t target = fe_flush_target(fe);
    /* zero input until the resampler has produced every real-input sample;
     * outputs beyond target (upsampling) are discarded, not fed */
    while (fe->n_int < target) fe_push(fe, 0, &o, target);
    /* pad the last partial step with silence at the internal rate */
    while (fe->fill != 0) fe_internal(fe, 0, &o);
    *n_steps = o.n_steps;
    *n_events = o.n_events;
    st = o.n_steps == steps ? SW_OK : SW_E_STATE;
    sw_fe_reset(fe);
    return st;
}

int sw_fe_counters(const sw_fe *fe, int64_t *n_in, int64_t *n_internal, int64_t *n_steps)
{
    if (!fe) return SW_E_NULL;
    if (!fe_ok(fe)) return SW_E_BADCTX;
    if (n_in) *n_in = fe->n_in;
    if (n_internal) *n_internal = fe->n_int;
    if (n_steps) *n_steps = fe->n_int / fe->p.step_samples;
    return SW_OK;
}
