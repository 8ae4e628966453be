/*
 * core.c -- the spikewire fixed-point LIF array (BrainScaleS-2-like).
 *
 * The update equations are specified once, in docs/fixed-point.md, and
 * mirrored operation by operation in runtime/reference.py.  This file only
 * says *how* they are computed; if you change what is computed, change the
 * doc, the reference and the golden vectors together.
 *
 * Rules: C99, explicit-width integers, no floating point, no allocation
 * outside sw_core_create, no prints, no aborts.  Right shifts of signed
 * values go through floor_shr() so the result does not depend on the
 * compiler's choice for negative operands.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "spikewire.h"

/* Arithmetic (flooring) right shift of a signed 32-bit value.  GCC and
 * Clang define >> on negative operands as arithmetic on every target; other
 * compilers get the portable spelling.  Used only by the fast kernel, which
 * the tests check against the plain one. */
#if defined(__GNUC__) || defined(__clang__)
#define SW_INLINE static inline __attribute__((always_inline))
#else
#define SW_INLINE static inline
#endif

#if defined(__GNUC__) || defined(__clang__)
#define ASR32(x, s) ((x) >> (s))
#else
#define ASR32(x, s) ((x) >= 0 ? (x) >> (s) : ~((~(x)) >> (s)))
#endif

#define SW_MAGIC 0x53574331u        /* "SWC1" */
#define SW_STATE_MAGIC 0x53575354u  /* "SWST" */
#define SW_STATE_VERSION 1u
#define SW_MAX_EVENTS_PER_STEP (1 << 20)

struct sw_core {
    uint32_t magic;
    sw_config cfg;
    int32_t kernel;
    int64_t steps;
    const char *last_error;
    /* per-neuron parameters (hidden: h_*, readout: o_*) */
    int32_t *h_A, *h_G, *h_L, *h_th, *h_rst, *h_gs;
    int32_t *o_A, *o_G, *o_L, *o_rst, *o_gs;
    /* weights */
    int8_t *w_in, *w_rec, *w_out;
    /* state */
    int16_t *h_I, *h_V, *o_I, *o_V;
    uint8_t *h_ref;
    int32_t *zidx;    /* indices of hidden neurons that spiked last step */
    int32_t n_z;
    /* scratch */
    int32_t *acc_in, *acc_rec, *acc_out;
    int16_t *acc16_in, *acc16_rec; /* int16 partial sums (fast kernel) */
    int32_t *noise;   /* per-step membrane noise (fast kernel) */
    uint8_t *zflag;   /* per-step spike flags (fast kernel) */
};

static const char *g_create_error = "";

/* ------------------------------------------------------------------ */
/* arithmetic helpers: one per trick, each says how it rounds          */

/* floor(x / 2^s) for any sign (arithmetic shift, spelled portably). */
static inline int32_t floor_shr32(int32_t x, int s)
{
    return x >= 0 ? (x >> s) : ~((~x) >> s);
}

/* x / 2^s rounded toward zero. */
static inline int64_t trunc_shr64(int64_t x, int s)
{
    return x >= 0 ? (x >> s) : -((-x) >> s);
}

static inline int32_t trunc_shr32(int32_t x, int s)
{
    return x >= 0 ? (x >> s) : -((-x) >> s);
}

/* x / 2^s rounded away from zero (ceil of the magnitude). */
static inline int32_t away_shr32(int32_t x, int s)
{
    int32_t m = (int32_t)((1 << s) - 1);
    return x >= 0 ? ((x + m) >> s) : -(((-x) + m) >> s);
}

static inline int32_t sat16_64(int64_t x)
{
    return x > 32767 ? 32767 : (x < -32768 ? -32768 : (int32_t)x);
}

static inline int32_t sat16_32(int32_t x)
{
    return x > 32767 ? 32767 : (x < -32768 ? -32768 : x);
}

/* splitmix64 output for counter ctr (counter-based: no sequential state). */
static inline uint64_t splitmix64_at(uint64_t seed, uint64_t ctr)
{
    uint64_t z = seed + (ctr + 1u) * UINT64_C(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

/* Uniform integer in -amp..amp from the top 32 bits of r. */
static inline int32_t noise_from(uint64_t r, int32_t amp)
{
    uint64_t hi = r >> 32;
    return (int32_t)((hi * (uint64_t)(2 * amp + 1)) >> 32) - amp;
}

int sw_abi_version(void)
{
    return SW_ABI_VERSION;
}

static inline uint8_t cadc_code(int32_t v, int32_t base, int32_t shift)
{
    int32_t c = floor_shr32(v - base, shift);
    return (uint8_t)(c < 0 ? 0 : (c > 255 ? 255 : c));
}

/* ------------------------------------------------------------------ */
/* validation                                                           */

static int check_range_arr(const int32_t *a, int32_t n, int32_t lo, int32_t hi)
{
    int32_t i;
    if (!a)
        return SW_E_NULL;
    for (i = 0; i < n; i++)
        if (a[i] < lo || a[i] > hi)
            return SW_E_PARAM;
    return SW_OK;
}

static int check_pop(const sw_pop_params *p, int32_t n, int has_threshold)
{
    int s;
    if (!p)
        return SW_E_NULL;
    if ((s = check_range_arr(p->decay_syn, n, 0, SW_Q15_ONE)) != SW_OK) {
        g_create_error = "decay_syn must be in 0..32768 (Q15)";
        return s;
    }
    if ((s = check_range_arr(p->gain_mem, n, 0, SW_Q15_ONE)) != SW_OK) {
        g_create_error = "gain_mem must be in 0..32768 (Q15)";
        return s;
    }
    if ((s = check_range_arr(p->v_leak, n, -32768, 32767)) != SW_OK) {
        g_create_error = "v_leak must be in -32768..32767";
        return s;
    }
    if (has_threshold && (s = check_range_arr(p->v_th, n, -32768, 32767)) != SW_OK) {
        g_create_error = "v_th must be in -32768..32767";
        return s;
    }
    if ((s = check_range_arr(p->v_reset, n, -32768, 32767)) != SW_OK) {
        g_create_error = "v_reset must be in -32768..32767";
        return s;
    }
    if ((s = check_range_arr(p->g_syn, n, 0, 32767)) != SW_OK) {
        g_create_error = "g_syn must be in 0..32767 (Q14)";
        return s;
    }
    return SW_OK;
}

static int check_config(const sw_config *c)
{
    if (c->n_in < 1 || c->n_in > SW_MAX_INPUTS) {
        g_create_error = "n_in must be in 1..65536";
        return SW_E_SIZE;
    }
    if (c->n_hid < 1 || c->n_hid > SW_MAX_NEURONS) {
        g_create_error = "n_hid must be in 1..65536";
        return SW_E_SIZE;
    }
    if (c->n_out < 0 || c->n_out > SW_MAX_NEURONS) {
        g_create_error = "n_out must be in 0..65536";
        return SW_E_SIZE;
    }
    if (c->shift_in < 0 || c->shift_in > SW_MAX_SHIFT || c->shift_rec < 0 ||
        c->shift_rec > SW_MAX_SHIFT || c->shift_out < 0 || c->shift_out > SW_MAX_SHIFT) {
        g_create_error = "weight shifts must be in 0..14";
        return SW_E_PARAM;
    }
    if (c->t_ref < 0 || c->t_ref > SW_MAX_TREF) {
        g_create_error = "t_ref must be in 0..255 steps";
        return SW_E_PARAM;
    }
    if (c->noise_amp < 0 || c->noise_amp > SW_MAX_NOISE) {
        g_create_error = "noise_amp must be in 0..4096";
        return SW_E_PARAM;
    }
    if (c->cadc_shift < 0 || c->cadc_shift > 8) {
        g_create_error = "cadc_shift must be in 0..8";
        return SW_E_PARAM;
    }
    if (c->cadc_base < -32768 || c->cadc_base > 32767) {
        g_create_error = "cadc_base must be in -32768..32767";
        return SW_E_PARAM;
    }
    if (c->preset == SW_PRESET_BSS2) {
        if (c->n_hid + c->n_out > SW_BSS2_NEURONS) {
            g_create_error = "bss2: n_hid + n_out exceeds 512 neurons";
            return SW_E_PRESET;
        }
        if (c->n_in + c->n_hid > SW_BSS2_FANIN) {
            g_create_error = "bss2: hidden fan-in n_in + n_hid exceeds 256 synapse rows";
            return SW_E_PRESET;
        }
        if (c->n_hid > SW_BSS2_FANIN) {
            g_create_error = "bss2: readout fan-in n_hid exceeds 256 synapse rows";
            return SW_E_PRESET;
        }
    } else if (c->preset != SW_PRESET_UNBOUNDED) {
        g_create_error = "unknown preset";
        return SW_E_PARAM;
    }
    return SW_OK;
}

static int live(const sw_core *c)
{
    if (!c)
        return SW_E_NULL;
    if (c->magic != SW_MAGIC)
        return SW_E_BADCTX;
    return SW_OK;
}

/* ------------------------------------------------------------------ */
/* lifetime                                                             */

static size_t align8(size_t n) { return (n + 7u) & ~(size_t)7u; }

int sw_core_create(const sw_config *cfg, const sw_pop_params *hid,
                   const sw_pop_params *out, sw_core **out_core)
{
    int s;
    size_t nh, no, ni, total, off;
    uint8_t *mem;
    sw_core *c;
    g_create_error = "";
    if (!out_core || !cfg || !hid || (cfg->n_out > 0 && !out)) {
        g_create_error = "NULL argument";
        return SW_E_NULL;
    }
    *out_core = NULL;
    if ((s = check_config(cfg)) != SW_OK)
        return s;
    if ((s = check_pop(hid, cfg->n_hid, 1)) != SW_OK)
        return s;
    if (cfg->n_out > 0 && (s = check_pop(out, cfg->n_out, 0)) != SW_OK)
        return s;

    nh = (size_t)cfg->n_hid;
    no = (size_t)cfg->n_out;
    ni = (size_t)cfg->n_in;
    /* One block: struct, params, weights, state, scratch.  The layout pass
     * runs twice: first to size the block (mem == NULL), then to carve it. */
    mem = NULL;
    c = NULL;
    total = 0;
    for (;;) {
        off = align8(sizeof(sw_core));
#define SW_TAKE(ptr, type, count)                           \
    do {                                                    \
        if (mem) (ptr) = (type *)(void *)(mem + off);       \
        off += align8((size_t)(count) * sizeof(type));      \
    } while (0)
        SW_TAKE(c->h_A, int32_t, nh);
        SW_TAKE(c->h_G, int32_t, nh);
        SW_TAKE(c->h_L, int32_t, nh);
        SW_TAKE(c->h_th, int32_t, nh);
        SW_TAKE(c->h_rst, int32_t, nh);
        SW_TAKE(c->h_gs, int32_t, nh);
        SW_TAKE(c->o_A, int32_t, no);
        SW_TAKE(c->o_G, int32_t, no);
        SW_TAKE(c->o_L, int32_t, no);
        SW_TAKE(c->o_rst, int32_t, no);
        SW_TAKE(c->o_gs, int32_t, no);
        SW_TAKE(c->w_in, int8_t, ni * nh);
        SW_TAKE(c->w_rec, int8_t, nh * nh);
        SW_TAKE(c->w_out, int8_t, nh * no);
        SW_TAKE(c->h_I, int16_t, nh);
        SW_TAKE(c->h_V, int16_t, nh);
        SW_TAKE(c->o_I, int16_t, no);
        SW_TAKE(c->o_V, int16_t, no);
        SW_TAKE(c->h_ref, uint8_t, nh);
        SW_TAKE(c->zidx, int32_t, nh);
        SW_TAKE(c->acc_in, int32_t, nh);
        SW_TAKE(c->acc_rec, int32_t, nh);
        SW_TAKE(c->acc_out, int32_t, no);
        SW_TAKE(c->acc16_in, int16_t, nh);
        SW_TAKE(c->acc16_rec, int16_t, nh);
        SW_TAKE(c->noise, int32_t, nh);
        SW_TAKE(c->zflag, uint8_t, nh);
#undef SW_TAKE
        if (mem)
            break;
        total = off;
        mem = (uint8_t *)calloc(1, total);
        if (!mem) {
            g_create_error = "out of memory";
            return SW_E_NOMEM;
        }
        c = (sw_core *)(void *)mem;
    }

    c->cfg = *cfg;
    memcpy(c->h_A, hid->decay_syn, nh * sizeof(int32_t));
    memcpy(c->h_G, hid->gain_mem, nh * sizeof(int32_t));
    memcpy(c->h_L, hid->v_leak, nh * sizeof(int32_t));
    memcpy(c->h_th, hid->v_th, nh * sizeof(int32_t));
    memcpy(c->h_rst, hid->v_reset, nh * sizeof(int32_t));
    memcpy(c->h_gs, hid->g_syn, nh * sizeof(int32_t));
    if (no > 0) {
        memcpy(c->o_A, out->decay_syn, no * sizeof(int32_t));
        memcpy(c->o_G, out->gain_mem, no * sizeof(int32_t));
        memcpy(c->o_L, out->v_leak, no * sizeof(int32_t));
        memcpy(c->o_rst, out->v_reset, no * sizeof(int32_t));
        memcpy(c->o_gs, out->g_syn, no * sizeof(int32_t));
    }
    c->magic = SW_MAGIC;
    c->last_error = "";
    sw_core_reset(c);
    *out_core = c;
    return SW_OK;
}

int sw_core_destroy(sw_core *core)
{
    if (!core)
        return SW_OK;
    if (core->magic != SW_MAGIC)
        return SW_E_BADCTX;
    core->magic = 0;
    free(core);
    return SW_OK;
}

int sw_core_reset(sw_core *c)
{
    int32_t j;
    int s = live(c);
    if (s != SW_OK)
        return s;
    for (j = 0; j < c->cfg.n_hid; j++) {
        c->h_I[j] = 0;
        c->h_V[j] = (int16_t)c->h_L[j];
        c->h_ref[j] = 0;
    }
    for (j = 0; j < c->cfg.n_out; j++) {
        c->o_I[j] = 0;
        c->o_V[j] = (int16_t)c->o_L[j];
    }
    c->n_z = 0;
    c->steps = 0;
    return SW_OK;
}

const char *sw_strerror(int status)
{
    switch (status) {
    case SW_OK: return "SW_OK: success";
    case SW_E_NULL: return "SW_E_NULL: a required pointer is NULL";
    case SW_E_SIZE: return "SW_E_SIZE: a size is out of range";
    case SW_E_PARAM: return "SW_E_PARAM: a parameter is out of its range";
    case SW_E_WEIGHT: return "SW_E_WEIGHT: a weight is outside -63..63";
    case SW_E_CHANNEL: return "SW_E_CHANNEL: an input channel id is out of range";
    case SW_E_EVENTS: return "SW_E_EVENTS: malformed event list";
    case SW_E_NOMEM: return "SW_E_NOMEM: out of memory";
    case SW_E_PRESET: return "SW_E_PRESET: the network does not fit the preset";
    case SW_E_STATE: return "SW_E_STATE: corrupt or mismatched state";
    case SW_E_BADCTX: return "SW_E_BADCTX: not a live sw_core context";
    case SW_E_BUFFER: return "SW_E_BUFFER: buffer size does not match";
    default: return "unknown status";
    }
}

const char *sw_core_last_error(const sw_core *core)
{
    if (live(core) != SW_OK)
        return "not a live sw_core context";
    return core->last_error;
}

const char *sw_create_error(void) { return g_create_error; }

/* ------------------------------------------------------------------ */
/* weights                                                              */

static int weight_slot(const sw_core *c, int32_t which, int8_t **w, int64_t *n)
{
    int64_t nh = c->cfg.n_hid;
    switch (which) {
    case SW_W_IN: *w = c->w_in; *n = (int64_t)c->cfg.n_in * nh; return SW_OK;
    case SW_W_REC: *w = c->w_rec; *n = nh * nh; return SW_OK;
    case SW_W_OUT: *w = c->w_out; *n = nh * (int64_t)c->cfg.n_out; return SW_OK;
    default: return SW_E_PARAM;
    }
}

int sw_core_set_weights(sw_core *c, int32_t which, const int8_t *w, int64_t n)
{
    int8_t *dst;
    int64_t need, i;
    int s = live(c);
    if (s != SW_OK)
        return s;
    if (weight_slot(c, which, &dst, &need) != SW_OK) {
        c->last_error = "unknown weight matrix";
        return SW_E_PARAM;
    }
    if (n != need) {
        c->last_error = "weight count does not match the matrix size";
        return SW_E_SIZE;
    }
    if (need > 0 && !w)
        return SW_E_NULL;
    for (i = 0; i < n; i++)
        if (w[i] < -SW_WEIGHT_MAX || w[i] > SW_WEIGHT_MAX) {
            c->last_error = "weight outside -63..63";
            return SW_E_WEIGHT;
        }
    if (n > 0)
        memcpy(dst, w, (size_t)n);
    return SW_OK;
}

int sw_core_get_weights(const sw_core *c, int32_t which, int8_t *w, int64_t n)
{
    int8_t *src;
    int64_t need;
    int s = live(c);
    if (s != SW_OK)
        return s;
    if (weight_slot(c, which, &src, &need) != SW_OK)
        return SW_E_PARAM;
    if (n != need)
        return SW_E_SIZE;
    if (need > 0 && !w)
        return SW_E_NULL;
    if (n > 0)
        memcpy(w, src, (size_t)n);
    return SW_OK;
}

int sw_core_set_kernel(sw_core *c, int32_t kernel)
{
    int s = live(c);
    if (s != SW_OK)
        return s;
    if (kernel != 0 && kernel != 1)
        return SW_E_PARAM;
    c->kernel = kernel;
    return SW_OK;
}

/* ------------------------------------------------------------------ */
/* the step (docs/fixed-point.md, "Update equations")                   */

/* Synaptic accumulation: plain reference version. */
static void accumulate_ref(sw_core *c, const int32_t *ch, int64_t n_ev)
{
    const int32_t nh = c->cfg.n_hid;
    int64_t e;
    int32_t j, k;
    for (j = 0; j < nh; j++) {
        c->acc_in[j] = 0;
        c->acc_rec[j] = 0;
    }
    for (e = 0; e < n_ev; e++) {
        const int8_t *row = c->w_in + (int64_t)ch[e] * nh;
        for (j = 0; j < nh; j++)
            c->acc_in[j] += row[j];
    }
    for (k = 0; k < c->n_z; k++) {
        const int8_t *row = c->w_rec + (int64_t)c->zidx[k] * nh;
        for (j = 0; j < nh; j++)
            c->acc_rec[j] += row[j];
    }
}

/* Neuron update of the hidden population; returns the number of spikes
 * and writes their indices to zidx. */
static int32_t update_hidden(sw_core *c, uint8_t *hs, int16_t *hv)
{
    const int32_t nh = c->cfg.n_hid;
    const int32_t s_in = c->cfg.shift_in, s_rec = c->cfg.shift_rec;
    const int32_t t_ref = c->cfg.t_ref, amp = c->cfg.noise_amp;
    const uint64_t seed = c->cfg.noise_seed;
    const uint64_t ctr0 = (uint64_t)c->steps * (uint64_t)nh;
    int32_t j, nz = 0;
    for (j = 0; j < nh; j++) {
        int64_t tot = (int64_t)c->acc_in[j] * ((int64_t)1 << s_in) +
                      (int64_t)c->acc_rec[j] * ((int64_t)1 << s_rec);
        int64_t inp = trunc_shr64(tot * c->h_gs[j], 14);
        int32_t dec = trunc_shr32((int32_t)c->h_I[j] * c->h_A[j], 15);
        int32_t I = sat16_64((int64_t)dec + inp);
        int32_t V;
        uint8_t z = 0;
        c->h_I[j] = (int16_t)I;
        if (c->h_ref[j] > 0) {
            c->h_ref[j]--;
            V = c->h_rst[j];
        } else {
            int32_t e = sat16_32(c->h_L[j] + I - (int32_t)c->h_V[j]);
            V = (int32_t)c->h_V[j] + away_shr32(e * c->h_G[j], 15);
            if (amp > 0)
                V += noise_from(splitmix64_at(seed, ctr0 + (uint64_t)j), amp);
            V = sat16_32(V);
            if (V >= c->h_th[j]) {
                z = 1;
                V = c->h_rst[j];
                c->h_ref[j] = (uint8_t)t_ref;
                c->zidx[nz++] = j;
            }
        }
        c->h_V[j] = (int16_t)V;
        if (hs)
            hs[j] = z;
        if (hv)
            hv[j] = (int16_t)V;
    }
    return nz;
}

/* Fast neuron update: the same integers as update_hidden(), branch-free in
 * 32-bit arithmetic so that the compiler vectorises it.  Only valid when
 * |tot| <= 65535 for every neuron (then tot * g_syn < 2^31); the caller
 * checks that bound and otherwise uses update_hidden().  The arrays are
 * function parameters with restrict so the vectoriser needs no alias checks. */
SW_INLINE void lif_i32(int32_t nh, int32_t m_in, int32_t m_rec, int32_t t_ref,
                    const int16_t *restrict acc_in, const int16_t *restrict acc_rec,
                    const int32_t *restrict gs, const int32_t *restrict A,
                    const int32_t *restrict G, const int32_t *restrict L,
                    const int32_t *restrict th, const int32_t *restrict rst,
                    const int32_t *restrict noise, int16_t *restrict I,
                    int16_t *restrict V, uint8_t *restrict ref, uint8_t *restrict zf)
{
    int32_t j;
    for (j = 0; j < nh; j++) {
        int32_t tot = (int32_t)acc_in[j] * m_in + (int32_t)acc_rec[j] * m_rec;
        int32_t p = tot * gs[j];
        int32_t inp = ASR32(p + (ASR32(p, 31) & 16383), 14);           /* trunc */
        int32_t q = (int32_t)I[j] * A[j];
        int32_t dec = ASR32(q + (ASR32(q, 31) & 32767), 15);           /* trunc */
        int32_t in = dec + inp;
        int32_t e, r, v, refr, spk;
        in = in < 32767 ? in : 32767;
        in = in > -32768 ? in : -32768;
        e = L[j] + in - (int32_t)V[j];
        e = e < 32767 ? e : 32767;
        e = e > -32768 ? e : -32768;
        r = e * G[j];
        v = (int32_t)V[j] + ASR32(r + (32767 & ~ASR32(r, 31)), 15);   /* away */
        v += noise[j];
        v = v < 32767 ? v : 32767;
        v = v > -32768 ? v : -32768;
        /* masks (0 or -1) instead of branches */
        refr = -(int32_t)(ref[j] > 0);
        spk = ~refr & -(int32_t)(v >= th[j]);
        v = (v & ~(refr | spk)) | (rst[j] & (refr | spk));
        ref[j] = (uint8_t)((refr & ((int32_t)ref[j] - 1)) | (spk & t_ref));
        I[j] = (int16_t)in;
        V[j] = (int16_t)v;
        zf[j] = (uint8_t)(spk & 1);
    }
}

SW_INLINE int32_t update_hidden_fast(sw_core *c, uint8_t *hs, int16_t *hv)
{
    const int32_t nh = c->cfg.n_hid, amp = c->cfg.noise_amp;
    int32_t j, nz = 0;
    if (amp > 0) {
        const uint64_t ctr0 = (uint64_t)c->steps * (uint64_t)nh;
        for (j = 0; j < nh; j++)
            c->noise[j] = noise_from(splitmix64_at(c->cfg.noise_seed, ctr0 + (uint64_t)j), amp);
    }
    lif_i32(nh, (int32_t)1 << c->cfg.shift_in, (int32_t)1 << c->cfg.shift_rec, c->cfg.t_ref,
            c->acc16_in, c->acc16_rec, c->h_gs, c->h_A, c->h_G, c->h_L, c->h_th, c->h_rst,
            c->noise, c->h_I, c->h_V, c->h_ref, c->zflag);
    for (j = 0; j + 8 <= nh; j += 8) {
        uint64_t word;
        memcpy(&word, c->zflag + j, 8);
        if (word) {
            int32_t k;
            for (k = j; k < j + 8; k++)
                if (c->zflag[k])
                    c->zidx[nz++] = k;
        }
    }
    for (; j < nh; j++)
        if (c->zflag[j])
            c->zidx[nz++] = j;
    if (hs)
        memcpy(hs, c->zflag, (size_t)nh);
    if (hv)
        memcpy(hv, c->h_V, (size_t)nh * sizeof(int16_t));
    return nz;
}

/* Rows added straight into int16 sums: exact while a step has at most
 * SW_ROWS16 rows (SW_ROWS16 * 63 <= 32767). */
#define SW_ROWS16 520
SW_INLINE void add_row16(int16_t *restrict acc, const int8_t *restrict row, int32_t nh)
{
    int32_t j;
    for (j = 0; j < nh; j++)
        acc[j] = (int16_t)(acc[j] + row[j]);
}

SW_INLINE void add_rows16(int16_t *restrict acc, const int8_t *restrict w,
                       const int32_t *restrict rows, int64_t n_rows, int32_t nh)
{
    int64_t r;
    for (r = 0; r < n_rows; r++)
        add_row16(acc, w + (int64_t)rows[r] * nh, nh);
}

SW_INLINE int32_t max_abs16(const int16_t *restrict a, int32_t n)
{
    int32_t j, m = 0;
    for (j = 0; j < n; j++) {
        int32_t x = a[j] < 0 ? -(int32_t)a[j] : a[j];
        m = x > m ? x : m;
    }
    return m;
}

/* One step of the optimised kernel; returns 0 if it does not apply (the
 * caller then runs the general path, which gives the same integers).
 * On x86-64 with GCC it is compiled twice (AVX2 and baseline) and the
 * loader picks one per CPU; integer results are identical by construction
 * and the tests compare both against the plain kernel.  Define
 * SW_NO_CLONES to build the baseline only. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(SW_NO_CLONES)
#define SW_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SW_CLONES
#endif
SW_CLONES
static int step_fast(sw_core *c, const int32_t *ch, int64_t n_ev, uint8_t *hs, int16_t *hv)
{
    const int32_t nh = c->cfg.n_hid;
    if (n_ev > SW_ROWS16 || c->n_z > SW_ROWS16)
        return 0;
    memset(c->acc16_in, 0, (size_t)nh * sizeof(int16_t));
    memset(c->acc16_rec, 0, (size_t)nh * sizeof(int16_t));
    if (n_ev > 0)
        add_rows16(c->acc16_in, c->w_in, ch, n_ev, nh);
    if (c->n_z > 0)
        add_rows16(c->acc16_rec, c->w_rec, c->zidx, c->n_z, nh);
    if (((int64_t)max_abs16(c->acc16_in, nh) << c->cfg.shift_in) +
            ((int64_t)max_abs16(c->acc16_rec, nh) << c->cfg.shift_rec) > 65535) {
        /* general path: widen the partial sums, plain neuron update */
        int32_t j;
        for (j = 0; j < nh; j++) {
            c->acc_in[j] = c->acc16_in[j];
            c->acc_rec[j] = c->acc16_rec[j];
        }
        c->n_z = update_hidden(c, hs, hv);
        return 1;
    }
    c->n_z = update_hidden_fast(c, hs, hv);
    return 1;
}

/* Readout (non-spiking leaky integrators) driven by this step's hidden
 * spikes.  Same equations as the hidden neurons without threshold; the
 * 32-bit branch-free form is used when |tot| <= 65535 (exact), else int64. */
static void update_readout(sw_core *c, int16_t *ov, uint8_t *oc, int plain)
{
    const int32_t no = c->cfg.n_out;
    const int32_t s_out = c->cfg.shift_out;
    const int32_t base = c->cfg.cadc_base, cs = c->cfg.cadc_shift;
    int32_t k, q, m = 0;
    int32_t *restrict acc = c->acc_out;
    if (no == 0)
        return;
    memset(acc, 0, (size_t)no * sizeof(int32_t));
    for (q = 0; q < c->n_z; q++) {
        const int8_t *restrict row = c->w_out + (int64_t)c->zidx[q] * no;
        for (k = 0; k < no; k++)
            acc[k] += row[k];
    }
    for (k = 0; k < no; k++) {
        int32_t x = acc[k] < 0 ? -acc[k] : acc[k];
        m = x > m ? x : m;
    }
    if (!plain && ((int64_t)m << s_out) <= 65535) {
        const int32_t mo = (int32_t)1 << s_out;
        for (k = 0; k < no; k++) {
            int32_t p = acc[k] * mo * c->o_gs[k];
            int32_t inp = ASR32(p + (ASR32(p, 31) & 16383), 14);
            int32_t qq = (int32_t)c->o_I[k] * c->o_A[k];
            int32_t in = ASR32(qq + (ASR32(qq, 31) & 32767), 15) + inp;
            int32_t e, r, V, code;
            in = in < 32767 ? in : 32767;
            in = in > -32768 ? in : -32768;
            e = c->o_L[k] + in - (int32_t)c->o_V[k];
            e = e < 32767 ? e : 32767;
            e = e > -32768 ? e : -32768;
            r = e * c->o_G[k];
            V = (int32_t)c->o_V[k] + ASR32(r + (32767 & ~ASR32(r, 31)), 15);
            V = V < 32767 ? V : 32767;
            V = V > -32768 ? V : -32768;
            c->o_I[k] = (int16_t)in;
            c->o_V[k] = (int16_t)V;
            code = ASR32(V - base, cs);
            code = code < 255 ? code : 255;
            code = code > 0 ? code : 0;
            if (ov)
                ov[k] = (int16_t)V;
            if (oc)
                oc[k] = (uint8_t)code;
        }
        return;
    }
    for (k = 0; k < no; k++) {
        int64_t tot = (int64_t)acc[k] * ((int64_t)1 << s_out);
        int64_t inp = trunc_shr64(tot * c->o_gs[k], 14);
        int32_t dec = trunc_shr32((int32_t)c->o_I[k] * c->o_A[k], 15);
        int32_t I = sat16_64((int64_t)dec + inp);
        int32_t e = sat16_32(c->o_L[k] + I - (int32_t)c->o_V[k]);
        int32_t V = sat16_32((int32_t)c->o_V[k] + away_shr32(e * c->o_G[k], 15));
        c->o_I[k] = (int16_t)I;
        c->o_V[k] = (int16_t)V;
        if (ov)
            ov[k] = (int16_t)V;
        if (oc)
            oc[k] = cadc_code(V, base, cs);
    }
}

static int validate_events(sw_core *c, int32_t T, const int64_t *indptr,
                           const int32_t *ch, int64_t n_ev)
{
    int64_t e;
    int32_t t;
    const int32_t n_in = c->cfg.n_in;
    if (!indptr) {
        c->last_error = "indptr is NULL";
        return SW_E_NULL;
    }
    if (n_ev < 0) {
        c->last_error = "negative event count";
        return SW_E_EVENTS;
    }
    if (n_ev > 0 && !ch) {
        c->last_error = "channels is NULL";
        return SW_E_NULL;
    }
    if (indptr[0] != 0 || indptr[T] != n_ev) {
        c->last_error = "indptr must start at 0 and end at the number of events";
        return SW_E_EVENTS;
    }
    for (t = 0; t < T; t++) {
        int64_t d = indptr[t + 1] - indptr[t];
        if (d < 0) {
            c->last_error = "indptr must be non-decreasing";
            return SW_E_EVENTS;
        }
        if (d > SW_MAX_EVENTS_PER_STEP) {
            c->last_error = "more than 2^20 input events in one step";
            return SW_E_EVENTS;
        }
    }
    for (e = 0; e < n_ev; e++)
        if (ch[e] < 0 || ch[e] >= n_in) {
            c->last_error = "input channel id out of range";
            return SW_E_CHANNEL;
        }
    return SW_OK;
}

int sw_core_run(sw_core *c, int32_t T, const int64_t *indptr,
                const int32_t *channels, int64_t n_events,
                uint8_t *hid_spikes, int16_t *hid_v,
                int16_t *out_v, uint8_t *out_cadc, int64_t *n_spikes)
{
    int32_t t;
    int64_t total = 0;
    const int64_t nh = c ? c->cfg.n_hid : 0, no = c ? c->cfg.n_out : 0;
    int s = live(c);
    if (s != SW_OK)
        return s;
    if (T < 0) {
        c->last_error = "negative number of steps";
        return SW_E_SIZE;
    }
    if ((s = validate_events(c, T, indptr, channels, n_events)) != SW_OK)
        return s;
    for (t = 0; t < T; t++) {
        const int32_t *ch = channels ? channels + indptr[t] : NULL;
        int64_t n = indptr[t + 1] - indptr[t];
        uint8_t *hs = hid_spikes ? hid_spikes + t * nh : NULL;
        int16_t *hv = hid_v ? hid_v + t * nh : NULL;
        if (c->kernel == 1) {
            accumulate_ref(c, ch, n);
            c->n_z = update_hidden(c, hs, hv);
        } else {
            if (!step_fast(c, ch, n, hs, hv)) { /* > SW_ROWS16 rows this step */
                accumulate_ref(c, ch, n);
                c->n_z = update_hidden(c, hs, hv);
            }
        }
        update_readout(c, out_v ? out_v + t * no : NULL,
                       out_cadc ? out_cadc + t * no : NULL, c->kernel == 1);
        total += c->n_z;
        c->steps++;
    }
    if (n_spikes)
        *n_spikes = total;
    return SW_OK;
}

int sw_core_step(sw_core *c, const int32_t *channels, int32_t n_events,
                 uint8_t *hid_spikes, int16_t *hid_v,
                 int16_t *out_v, uint8_t *out_cadc)
{
    int64_t indptr[2];
    if (n_events < 0) {
        if (live(c) == SW_OK)
            c->last_error = "negative event count";
        return live(c) != SW_OK ? live(c) : SW_E_EVENTS;
    }
    indptr[0] = 0;
    indptr[1] = n_events;
    return sw_core_run(c, 1, indptr, channels, n_events, hid_spikes, hid_v,
                       out_v, out_cadc, NULL);
}

/* ------------------------------------------------------------------ */
/* state blobs: explicit little-endian, so a checkpoint written on one  */
/* CPU loads on another.                                                */

static uint8_t *put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
    return p + 4;
}

static uint8_t *put_u64(uint8_t *p, uint64_t v)
{
    p = put_u32(p, (uint32_t)v);
    return put_u32(p, (uint32_t)(v >> 32));
}

static uint8_t *put_i16(uint8_t *p, int16_t v)
{
    uint16_t u = (uint16_t)v;
    p[0] = (uint8_t)u; p[1] = (uint8_t)(u >> 8);
    return p + 2;
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t get_u64(const uint8_t *p)
{
    return (uint64_t)get_u32(p) | ((uint64_t)get_u32(p + 4) << 32);
}

static int16_t get_i16(const uint8_t *p)
{
    return (int16_t)(uint16_t)((uint16_t)p[0] | ((uint16_t)p[1] << 8));
}

static int64_t state_size(const sw_core *c)
{
    int64_t nh = c->cfg.n_hid, no = c->cfg.n_out, ni = c->cfg.n_in;
    /* header: magic, version, n_in, n_hid, n_out, steps(8) */
    return 20 + 8 + nh * (2 + 2 + 1 + 1) + no * (2 + 2) + ni * nh + nh * nh + nh * no;
}

int sw_core_state_size(const sw_core *c, int64_t *size)
{
    int s = live(c);
    if (s != SW_OK)
        return s;
    if (!size)
        return SW_E_NULL;
    *size = state_size(c);
    return SW_OK;
}

int sw_core_save_state(const sw_core *c, uint8_t *buf, int64_t size)
{
    int32_t j, k;
    int64_t i, nw;
    uint8_t *p = buf, *zmap;
    int s = live(c);
    if (s != SW_OK)
        return s;
    if (!buf)
        return SW_E_NULL;
    if (size != state_size(c))
        return SW_E_BUFFER;
    p = put_u32(p, SW_STATE_MAGIC);
    p = put_u32(p, SW_STATE_VERSION);
    p = put_u32(p, (uint32_t)c->cfg.n_in);
    p = put_u32(p, (uint32_t)c->cfg.n_hid);
    p = put_u32(p, (uint32_t)c->cfg.n_out);
    p = put_u64(p, (uint64_t)c->steps);
    for (j = 0; j < c->cfg.n_hid; j++) p = put_i16(p, c->h_I[j]);
    for (j = 0; j < c->cfg.n_hid; j++) p = put_i16(p, c->h_V[j]);
    for (j = 0; j < c->cfg.n_hid; j++) *p++ = c->h_ref[j];
    zmap = p;
    memset(zmap, 0, (size_t)c->cfg.n_hid);
    for (k = 0; k < c->n_z; k++) zmap[c->zidx[k]] = 1;
    p += c->cfg.n_hid;
    for (j = 0; j < c->cfg.n_out; j++) p = put_i16(p, c->o_I[j]);
    for (j = 0; j < c->cfg.n_out; j++) p = put_i16(p, c->o_V[j]);
    nw = (int64_t)c->cfg.n_in * c->cfg.n_hid;
    for (i = 0; i < nw; i++) *p++ = (uint8_t)c->w_in[i];
    nw = (int64_t)c->cfg.n_hid * c->cfg.n_hid;
    for (i = 0; i < nw; i++) *p++ = (uint8_t)c->w_rec[i];
    nw = (int64_t)c->cfg.n_hid * c->cfg.n_out;
    for (i = 0; i < nw; i++) *p++ = (uint8_t)c->w_out[i];
    return SW_OK;
}

int sw_core_load_state(sw_core *c, const uint8_t *buf, int64_t size)
{
    int32_t j, nz;
    int64_t i, nw, steps;
    const uint8_t *p, *ref, *zmap, *w;
    int s = live(c);
    const int32_t nh = c ? c->cfg.n_hid : 0;
    if (s != SW_OK)
        return s;
    if (!buf)
        return SW_E_NULL;
    if (size != state_size(c)) {
        c->last_error = "state blob has the wrong size for this core";
        return SW_E_STATE;
    }
    if (get_u32(buf) != SW_STATE_MAGIC || get_u32(buf + 4) != SW_STATE_VERSION) {
        c->last_error = "state blob has a bad magic or version";
        return SW_E_STATE;
    }
    if (get_u32(buf + 8) != (uint32_t)c->cfg.n_in || get_u32(buf + 12) != (uint32_t)nh ||
        get_u32(buf + 16) != (uint32_t)c->cfg.n_out) {
        c->last_error = "state blob was saved from a core of other sizes";
        return SW_E_STATE;
    }
    steps = (int64_t)get_u64(buf + 20);
    if (steps < 0) {
        c->last_error = "state blob has a negative step count";
        return SW_E_STATE;
    }
    /* validate everything before writing anything */
    ref = buf + 28 + 4 * (int64_t)nh;
    zmap = ref + nh;
    w = zmap + nh + 4 * (int64_t)c->cfg.n_out;
    for (j = 0; j < nh; j++) {
        if (ref[j] > c->cfg.t_ref || zmap[j] > 1) {
            c->last_error = "state blob has a refractory counter or spike flag out of range";
            return SW_E_STATE;
        }
    }
    nw = (int64_t)c->cfg.n_in * nh + (int64_t)nh * nh + (int64_t)nh * c->cfg.n_out;
    for (i = 0; i < nw; i++) {
        int8_t v = (int8_t)w[i];
        if (v < -SW_WEIGHT_MAX || v > SW_WEIGHT_MAX) {
            c->last_error = "state blob has a weight outside -63..63";
            return SW_E_STATE;
        }
    }
    c->steps = steps;
    p = buf + 28;
    for (j = 0; j < nh; j++, p += 2) c->h_I[j] = get_i16(p);
    for (j = 0; j < nh; j++, p += 2) c->h_V[j] = get_i16(p);
    for (j = 0; j < nh; j++) c->h_ref[j] = *p++;
    nz = 0;
    for (j = 0; j < nh; j++)
        if (p[j]) c->zidx[nz++] = j;
    c->n_z = nz;
    p += nh;
    for (j = 0; j < c->cfg.n_out; j++, p += 2) c->o_I[j] = get_i16(p);
    for (j = 0; j < c->cfg.n_out; j++, p += 2) c->o_V[j] = get_i16(p);
    nw = (int64_t)c->cfg.n_in * nh;
    for (i = 0; i < nw; i++) c->w_in[i] = (int8_t)*p++;
    nw = (int64_t)nh * nh;
    for (i = 0; i < nw; i++) c->w_rec[i] = (int8_t)*p++;
    nw = (int64_t)nh * c->cfg.n_out;
    for (i = 0; i < nw; i++) c->w_out[i] = (int8_t)*p++;
    return SW_OK;
}

/* ------------------------------------------------------------------ */
/* debug views                                                          */

int sw_core_get_membrane(const sw_core *c, int32_t pop, int16_t *v, int32_t n)
{
    int s = live(c);
    if (s != SW_OK)
        return s;
    if (!v)
        return SW_E_NULL;
    if (pop == SW_POP_HIDDEN && n == c->cfg.n_hid)
        memcpy(v, c->h_V, (size_t)n * sizeof(int16_t));
    else if (pop == SW_POP_READOUT && n == c->cfg.n_out)
        memcpy(v, c->o_V, (size_t)n * sizeof(int16_t));
    else
        return (pop == SW_POP_HIDDEN || pop == SW_POP_READOUT) ? SW_E_SIZE : SW_E_PARAM;
    return SW_OK;
}

int sw_core_get_current(const sw_core *c, int32_t pop, int16_t *i, int32_t n)
{
    int s = live(c);
    if (s != SW_OK)
        return s;
    if (!i)
        return SW_E_NULL;
    if (pop == SW_POP_HIDDEN && n == c->cfg.n_hid)
        memcpy(i, c->h_I, (size_t)n * sizeof(int16_t));
    else if (pop == SW_POP_READOUT && n == c->cfg.n_out)
        memcpy(i, c->o_I, (size_t)n * sizeof(int16_t));
    else
        return (pop == SW_POP_HIDDEN || pop == SW_POP_READOUT) ? SW_E_SIZE : SW_E_PARAM;
    return SW_OK;
}

int sw_core_steps_done(const sw_core *c, int64_t *steps)
{
    int s = live(c);
    if (s != SW_OK)
        return s;
    if (!steps)
        return SW_E_NULL;
    *steps = c->steps;
    return SW_OK;
}
