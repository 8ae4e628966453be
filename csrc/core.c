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
#define SW_STATE_MAGIC 0x54535753u  /* the bytes "SWST" as a little-endian u32 */
#define SW_STATE_VERSION 2u
#define SW_MAX_EVENTS_PER_STEP (1 << 20)

/* One population as the LIF update sees it (views into struct sw_core). */
typedef struct lif_pop {
    int32_t n;
    const int32_t *A, *G, *L, *th, *rst, *gs;
    int16_t *I, *V;
    uint8_t *ref;     /* NULL: the readout (no threshold, never refractory) */
    int32_t t_ref;
} lif_pop;

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
    int16_t *acc16_in, *acc16_rec, *acc16_out; /* int16 partial sums (fast kernel) */
    int32_t *noise;   /* per-step membrane noise (all zero when noise_amp == 0) */
    uint8_t *zflag;   /* per-step spike flags when the caller wants none */
    int16_t *vpre;    /* per-step pre-reset membranes when the caller wants none */
    lif_pop hid, out; /* the two populations for lif_plain() */
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
    if (cfg->abi_version != SW_ABI_VERSION || cfg->struct_size != (int32_t)sizeof(sw_config)) {
        g_create_error = "sw_config is from another ABI version (abi_version / struct_size "
                         "differ from this library's); rebuild the caller against this spikewire.h";
        return SW_E_ABI;
    }
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
        SW_TAKE(c->acc16_out, int16_t, no);
        SW_TAKE(c->noise, int32_t, nh);
        SW_TAKE(c->zflag, uint8_t, nh);
        SW_TAKE(c->vpre, int16_t, nh);
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
    c->hid.n = cfg->n_hid;
    c->hid.A = c->h_A; c->hid.G = c->h_G; c->hid.L = c->h_L;
    c->hid.th = c->h_th; c->hid.rst = c->h_rst; c->hid.gs = c->h_gs;
    c->hid.I = c->h_I; c->hid.V = c->h_V; c->hid.ref = c->h_ref;
    c->hid.t_ref = cfg->t_ref;
    c->out.n = cfg->n_out;
    c->out.A = c->o_A; c->out.G = c->o_G; c->out.L = c->o_L;
    c->out.th = NULL; c->out.rst = c->o_rst; c->out.gs = c->o_gs;
    c->out.I = c->o_I; c->out.V = c->o_V; c->out.ref = NULL;
    c->out.t_ref = 0;
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
    case SW_E_ABI: return "SW_E_ABI: struct size or ABI version mismatch";
    case SW_E_LIMIT: return "SW_E_LIMIT: the step counter is at its limit";
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
/*                                                                      */
/* The LIF update of a population is written once per kernel form:      */
/* lif_plain() (the reference, int64 where a product can leave int32)   */
/* and lif_fast() (branch-free int32, vectorised).  Both serve the      */
/* hidden population (threshold, refractoriness, noise) and the readout */
/* (none of these).  Everything else in a step -- row sums, noise,      */
/* collecting spikes, the CADC -- is one helper each, shared.           */

/* Zero acc[0..n) and add the int8 rows w[rows[r]] (n columns each). */
static void add_rows32(int32_t *acc, const int8_t *w, const int32_t *rows, int64_t n_rows, int32_t n)
{
    int64_t r;
    int32_t j;
    for (j = 0; j < n; j++)
        acc[j] = 0;
    for (r = 0; r < n_rows; r++) {
        const int8_t *row = w + (int64_t)rows[r] * n;
        for (j = 0; j < n; j++)
            acc[j] += row[j];
    }
}

/* Membrane noise of every hidden neuron for this step (docs: "Membrane
 * noise"); c->noise stays all zero when noise_amp == 0. */
static void draw_noise(sw_core *c)
{
    const int32_t nh = c->cfg.n_hid, amp = c->cfg.noise_amp;
    const uint64_t ctr0 = (uint64_t)c->steps * (uint64_t)nh;
    int32_t j;
    if (amp > 0)
        for (j = 0; j < nh; j++)
            c->noise[j] = noise_from(splitmix64_at(c->cfg.noise_seed, ctr0 + (uint64_t)j), amp);
}

/* Indices of the set flags of zf[0..n) into zidx; returns their number.
 * Skips eight silent neurons at a time (spikes are sparse). */
static int32_t collect_spikes(const uint8_t *zf, int32_t n, int32_t *zidx)
{
    int32_t j, k, nz = 0;
    for (j = 0; j + 8 <= n; j += 8) {
        uint64_t word;
        memcpy(&word, zf + j, 8);
        if (word)
            for (k = j; k < j + 8; k++)
                if (zf[k])
                    zidx[nz++] = k;
    }
    for (; j < n; j++)
        if (zf[j])
            zidx[nz++] = j;
    return nz;
}

/* The CADC codes of n membranes (the one home of the CADC in C). */
static void cadc_row(const int16_t *v, int32_t n, int32_t base, int32_t shift, uint8_t *code)
{
    int32_t j;
    for (j = 0; j < n; j++)
        code[j] = cadc_code(v[j], base, shift);
}

/* LIF update, reference form.  Input of neuron j this step:
 * tot = acc_a[j] * 2^s_a + acc_b[j] * 2^s_b (acc_b NULL: no second term).
 * A population with p->ref != NULL is the hidden one: noise (NULL: none) is
 * added, the membrane before reset goes to vpre[j] (the value compared with
 * the threshold; R while refractory), the spike to zf[j]. */
static void lif_plain(const lif_pop *p, const int32_t *acc_a, int32_t s_a,
                      const int32_t *acc_b, int32_t s_b, const int32_t *noise,
                      int16_t *vpre, uint8_t *zf)
{
    int32_t j;
    for (j = 0; j < p->n; j++) {
        int64_t tot = (int64_t)acc_a[j] * ((int64_t)1 << s_a) +
                      (acc_b ? (int64_t)acc_b[j] * ((int64_t)1 << s_b) : 0);
        int64_t inp = trunc_shr64(tot * p->gs[j], 14);
        int32_t dec = trunc_shr32((int32_t)p->I[j] * p->A[j], 15);
        int32_t I = sat16_64((int64_t)dec + inp);
        int32_t V;
        p->I[j] = (int16_t)I;
        if (p->ref && p->ref[j] > 0) { /* refractory: held at R, no threshold */
            p->ref[j]--;
            V = p->rst[j];
            vpre[j] = (int16_t)V;
            zf[j] = 0;
        } else {
            int32_t e = sat16_32(p->L[j] + I - (int32_t)p->V[j]);
            V = (int32_t)p->V[j] + away_shr32(e * p->G[j], 15);
            if (noise)
                V += noise[j];
            V = sat16_32(V);
            if (p->ref) {
                vpre[j] = (int16_t)V;
                zf[j] = (uint8_t)(V >= p->th[j]);
                if (zf[j]) {
                    V = p->rst[j];
                    p->ref[j] = (uint8_t)p->t_ref;
                }
            }
        }
        p->V[j] = (int16_t)V;
    }
}

/* LIF update, fast form: the same integers as lif_plain(), branch-free in
 * 32-bit arithmetic so that the compiler vectorises it.  Valid only when
 * |tot| <= 65535 for every neuron (then tot * g < 2^31); the caller checks
 * that bound and otherwise widens the sums and calls lif_plain().
 * `spiking` is a constant at each (inlined) call site: 1 = hidden
 * (acc_b, noise, threshold, refractoriness, vpre, zf), 0 = readout (those
 * pointers are not touched).  The arrays are restrict parameters so the
 * vectoriser needs no alias checks. */
SW_INLINE void lif_fast(const int spiking, int32_t n, int32_t m_a, int32_t m_b, int32_t t_ref,
                        const int16_t *restrict acc_a, const int16_t *restrict acc_b,
                        const int32_t *restrict gs, const int32_t *restrict A,
                        const int32_t *restrict G, const int32_t *restrict L,
                        const int32_t *restrict th, const int32_t *restrict rst,
                        const int32_t *restrict noise, int16_t *restrict I,
                        int16_t *restrict V, uint8_t *restrict ref,
                        int16_t *restrict vpre, uint8_t *restrict zf)
{
    int32_t j;
    for (j = 0; j < n; j++) {
        int32_t tot = (int32_t)acc_a[j] * m_a + (spiking ? (int32_t)acc_b[j] * m_b : 0);
        int32_t p = tot * gs[j];
        int32_t inp = ASR32(p + (ASR32(p, 31) & 16383), 14);           /* trunc */
        int32_t q = (int32_t)I[j] * A[j];
        int32_t dec = ASR32(q + (ASR32(q, 31) & 32767), 15);           /* trunc */
        int32_t in = dec + inp;
        int32_t e, r, v;
        in = in < 32767 ? in : 32767;
        in = in > -32768 ? in : -32768;
        e = L[j] + in - (int32_t)V[j];
        e = e < 32767 ? e : 32767;
        e = e > -32768 ? e : -32768;
        r = e * G[j];
        v = (int32_t)V[j] + ASR32(r + (32767 & ~ASR32(r, 31)), 15);   /* away */
        if (spiking)
            v += noise[j];
        v = v < 32767 ? v : 32767;
        v = v > -32768 ? v : -32768;
        if (spiking) {
            /* masks (0 or -1) instead of branches */
            int32_t refr = -(int32_t)(ref[j] > 0);
            int32_t spk, held;
            v = (v & ~refr) | (rst[j] & refr);                           /* R while refractory */
            vpre[j] = (int16_t)v;
            spk = ~refr & -(int32_t)(v >= th[j]);
            held = refr | spk;
            v = (v & ~held) | (rst[j] & held);
            ref[j] = (uint8_t)((refr & ((int32_t)ref[j] - 1)) | (spk & t_ref));
            zf[j] = (uint8_t)(spk & 1);
        }
        I[j] = (int16_t)in;
        V[j] = (int16_t)v;
    }
}

/* One step of the plain reference kernel.  zf, vpre: [n_hid] outputs. */
static void step_plain(sw_core *c, const int32_t *ch, int64_t n_ev, uint8_t *zf, int16_t *vpre)
{
    const sw_config *k = &c->cfg;
    add_rows32(c->acc_in, c->w_in, ch, n_ev, k->n_hid);
    add_rows32(c->acc_rec, c->w_rec, c->zidx, c->n_z, k->n_hid);
    draw_noise(c);
    lif_plain(&c->hid, c->acc_in, k->shift_in, c->acc_rec, k->shift_rec,
              k->noise_amp > 0 ? c->noise : NULL, vpre, zf);
    c->n_z = collect_spikes(zf, k->n_hid, c->zidx);
    if (k->n_out > 0) {
        add_rows32(c->acc_out, c->w_out, c->zidx, c->n_z, k->n_out);
        lif_plain(&c->out, c->acc_out, k->shift_out, NULL, 0, NULL, NULL, NULL);
    }
}

/* Rows added straight into int16 sums: exact while a step has at most
 * SW_ROWS16 rows (SW_ROWS16 * 63 <= 32767). */
#define SW_ROWS16 520
SW_INLINE void add_row16(int16_t *restrict acc, const int8_t *restrict row, int32_t n)
{
    int32_t j;
    for (j = 0; j < n; j++)
        acc[j] = (int16_t)(acc[j] + row[j]);
}

/* Zero acc[0..n) and add the rows (the int16 twin of add_rows32). */
SW_INLINE void add_rows16(int16_t *restrict acc, const int8_t *restrict w,
                          const int32_t *restrict rows, int64_t n_rows, int32_t n)
{
    int64_t r;
    memset(acc, 0, (size_t)n * sizeof(int16_t));
    for (r = 0; r < n_rows; r++)
        add_row16(acc, w + (int64_t)rows[r] * n, n);
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

SW_INLINE void widen16(int32_t *restrict dst, const int16_t *restrict src, int32_t n)
{
    int32_t j;
    for (j = 0; j < n; j++)
        dst[j] = src[j];
}

/* One step of the optimised kernel (default): the same integers as
 * step_plain().  Row sums go into int16 while a step has <= SW_ROWS16 rows;
 * lif_fast() runs when |tot| <= 65535 is proven, else lif_plain().
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
static void step_fast(sw_core *c, const int32_t *ch, int64_t n_ev, uint8_t *zf, int16_t *vpre)
{
    const sw_config *k = &c->cfg;
    const int32_t nh = k->n_hid, no = k->n_out;
    const int32_t *noise = k->noise_amp > 0 ? c->noise : NULL;
    draw_noise(c);
    if (n_ev <= SW_ROWS16 && c->n_z <= SW_ROWS16) {
        add_rows16(c->acc16_in, c->w_in, ch, n_ev, nh);
        add_rows16(c->acc16_rec, c->w_rec, c->zidx, c->n_z, nh);
        if (((int64_t)max_abs16(c->acc16_in, nh) << k->shift_in) +
                ((int64_t)max_abs16(c->acc16_rec, nh) << k->shift_rec) <= 65535) {
            lif_fast(1, nh, (int32_t)1 << k->shift_in, (int32_t)1 << k->shift_rec, k->t_ref,
                     c->acc16_in, c->acc16_rec, c->h_gs, c->h_A, c->h_G, c->h_L, c->h_th,
                     c->h_rst, c->noise, c->h_I, c->h_V, c->h_ref, vpre, zf);
        } else {
            widen16(c->acc_in, c->acc16_in, nh);
            widen16(c->acc_rec, c->acc16_rec, nh);
            lif_plain(&c->hid, c->acc_in, k->shift_in, c->acc_rec, k->shift_rec, noise, vpre, zf);
        }
    } else {
        add_rows32(c->acc_in, c->w_in, ch, n_ev, nh);
        add_rows32(c->acc_rec, c->w_rec, c->zidx, c->n_z, nh);
        lif_plain(&c->hid, c->acc_in, k->shift_in, c->acc_rec, k->shift_rec, noise, vpre, zf);
    }
    c->n_z = collect_spikes(zf, nh, c->zidx);
    if (no == 0)
        return;
    if (c->n_z <= SW_ROWS16) {
        add_rows16(c->acc16_out, c->w_out, c->zidx, c->n_z, no);
        if (((int64_t)max_abs16(c->acc16_out, no) << k->shift_out) <= 65535) {
            lif_fast(0, no, (int32_t)1 << k->shift_out, 0, 0, c->acc16_out, NULL, c->o_gs,
                     c->o_A, c->o_G, c->o_L, NULL, NULL, NULL, c->o_I, c->o_V, NULL, NULL, NULL);
            return;
        }
        widen16(c->acc_out, c->acc16_out, no);
    } else {
        add_rows32(c->acc_out, c->w_out, c->zidx, c->n_z, no);
    }
    lif_plain(&c->out, c->acc_out, k->shift_out, NULL, 0, NULL, NULL, NULL);
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

/* The most steps a core may have done: the step counter stays <= INT64_MAX
 * and the noise counter steps * n_hid + j of every step stays below 2^64, so
 * the noise stream never repeats (docs/fixed-point.md, "Membrane noise"). */
static int64_t max_steps(const sw_core *c)
{
    uint64_t m = UINT64_MAX / (uint64_t)c->cfg.n_hid;
    return m > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)m;
}

int sw_core_run_ex(sw_core *c, int32_t T, const int64_t *indptr,
                   const int32_t *channels, int64_t n_events, sw_run_out *o)
{
    int32_t t;
    int64_t total = 0;
    const int64_t nh = c ? c->cfg.n_hid : 0, no = c ? c->cfg.n_out : 0;
    int s = live(c);
    if (s != SW_OK)
        return s;
    if (!o) {
        c->last_error = "run output struct is NULL";
        return SW_E_NULL;
    }
    if (o->struct_size != (int32_t)sizeof(sw_run_out)) {
        c->last_error = "sw_run_out.struct_size is not sizeof(sw_run_out) of this library";
        return SW_E_ABI;
    }
    if (T < 0) {
        c->last_error = "negative number of steps";
        return SW_E_SIZE;
    }
    if (o->max_steps < T) {
        c->last_error = "sw_run_out.max_steps is smaller than the number of steps";
        return SW_E_BUFFER;
    }
    if ((s = validate_events(c, T, indptr, channels, n_events)) != SW_OK)
        return s;
    if ((int64_t)T > max_steps(c) - c->steps) {
        c->last_error = "the step counter would pass its limit (noise stream would repeat); reset the core";
        return SW_E_LIMIT;
    }
    for (t = 0; t < T; t++) {
        const int32_t *ch = channels ? channels + indptr[t] : NULL;
        int64_t n = indptr[t + 1] - indptr[t];
        uint8_t *zf = o->hid_spikes ? o->hid_spikes + t * nh : c->zflag;
        int16_t *vpre = o->hid_v_pre ? o->hid_v_pre + t * nh : c->vpre;
        if (c->kernel == 1)
            step_plain(c, ch, n, zf, vpre);
        else
            step_fast(c, ch, n, zf, vpre);
        if (o->hid_v)
            memcpy(o->hid_v + t * nh, c->h_V, (size_t)nh * sizeof(int16_t));
        if (o->hid_ref)
            memcpy(o->hid_ref + t * nh, c->h_ref, (size_t)nh);
        if (o->hid_cadc)
            cadc_row(c->h_V, (int32_t)nh, c->cfg.cadc_base, c->cfg.cadc_shift, o->hid_cadc + t * nh);
        if (o->out_v && no > 0)
            memcpy(o->out_v + t * no, c->o_V, (size_t)no * sizeof(int16_t));
        if (o->out_cadc && no > 0)
            cadc_row(c->o_V, (int32_t)no, c->cfg.cadc_base, c->cfg.cadc_shift, o->out_cadc + t * no);
        total += c->n_z;
        c->steps++;
    }
    o->n_spikes = total;
    return SW_OK;
}

int sw_core_run(sw_core *c, int32_t T, const int64_t *indptr,
                const int32_t *channels, int64_t n_events,
                uint8_t *hid_spikes, int16_t *hid_v,
                int16_t *out_v, uint8_t *out_cadc, int64_t *n_spikes)
{
    sw_run_out o;
    int s;
    memset(&o, 0, sizeof o);
    o.struct_size = (int32_t)sizeof o;
    o.max_steps = T;
    o.hid_spikes = hid_spikes;
    o.hid_v = hid_v;
    o.out_v = out_v;
    o.out_cadc = out_cadc;
    s = sw_core_run_ex(c, T, indptr, channels, n_events, &o);
    if (s == SW_OK && n_spikes)
        *n_spikes = o.n_spikes;
    return s;
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
/* state blobs, version 2 (docs/model-format.md, "Core state blob"):    */
/* explicit little-endian, so a checkpoint written on one CPU loads on  */
/* another.                                                             */
/*   header   magic "SWST" (u32), version 2 (u32), total length (u64)   */
/*   sections tag (4 ASCII bytes), flags (u32, bit 0 = required),       */
/*            payload length (u64), payload                             */
/*   trailer  CRC-32 (IEEE 802.3, = zlib.crc32) of every byte before it */
/* The core writes CORE and WGHT; a loader skips sections it does not   */
/* know unless they are marked required.                                */

#define SW_STATE_HDR 16
#define SW_SEC_HDR 16
#define SW_SEC_REQUIRED 1u
#define SW_TAG(a, b, c, d) \
    ((uint32_t)(a) | ((uint32_t)(b) << 8) | ((uint32_t)(c) << 16) | ((uint32_t)(d) << 24))
#define SW_TAG_CORE SW_TAG('C', 'O', 'R', 'E')
#define SW_TAG_WGHT SW_TAG('W', 'G', 'H', 'T')

/* CRC-32, reflected polynomial 0xEDB88320, four bits at a time. */
static const uint32_t crc_nibble[16] = {
    0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u,
    0x4DB26158u, 0x5005713Cu, 0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu,
    0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu};

static uint32_t crc32_of(const uint8_t *p, int64_t n)
{
    uint32_t crc = 0xFFFFFFFFu;
    int64_t i;
    for (i = 0; i < n; i++) {
        crc = (crc >> 4) ^ crc_nibble[(crc ^ p[i]) & 0xFu];
        crc = (crc >> 4) ^ crc_nibble[(crc ^ ((uint32_t)p[i] >> 4)) & 0xFu];
    }
    return crc ^ 0xFFFFFFFFu;
}

int sw_crc32(const uint8_t *buf, int64_t n, uint32_t *crc)
{
    if (!crc || (n > 0 && !buf))
        return SW_E_NULL;
    if (n < 0)
        return SW_E_SIZE;
    *crc = crc32_of(buf, n);
    return SW_OK;
}

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

/* CORE payload: n_in, n_hid, n_out (u32), steps (u64), hidden I, V (i16),
 * refractory counters (u8), last step's spikes (u8 0/1), readout I, V (i16). */
static int64_t core_len(const sw_core *c)
{
    return 12 + 8 + (int64_t)c->cfg.n_hid * (2 + 2 + 1 + 1) + (int64_t)c->cfg.n_out * (2 + 2);
}

/* WGHT payload: W_in, W_rec, W_out as int8, row-major. */
static int64_t wght_len(const sw_core *c)
{
    int64_t nh = c->cfg.n_hid;
    return (int64_t)c->cfg.n_in * nh + nh * nh + nh * (int64_t)c->cfg.n_out;
}

static int64_t state_size(const sw_core *c)
{
    return SW_STATE_HDR + SW_SEC_HDR + core_len(c) + SW_SEC_HDR + wght_len(c) + 4;
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
    p = put_u64(p, (uint64_t)size);
    p = put_u32(p, SW_TAG_CORE);
    p = put_u32(p, SW_SEC_REQUIRED);
    p = put_u64(p, (uint64_t)core_len(c));
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
    p = put_u32(p, SW_TAG_WGHT);
    p = put_u32(p, SW_SEC_REQUIRED);
    p = put_u64(p, (uint64_t)wght_len(c));
    nw = (int64_t)c->cfg.n_in * c->cfg.n_hid;
    for (i = 0; i < nw; i++) *p++ = (uint8_t)c->w_in[i];
    nw = (int64_t)c->cfg.n_hid * c->cfg.n_hid;
    for (i = 0; i < nw; i++) *p++ = (uint8_t)c->w_rec[i];
    nw = (int64_t)c->cfg.n_hid * c->cfg.n_out;
    for (i = 0; i < nw; i++) *p++ = (uint8_t)c->w_out[i];
    put_u32(p, crc32_of(buf, size - 4));
    return SW_OK;
}

static int state_error(sw_core *c, const char *msg)
{
    c->last_error = msg;
    return SW_E_STATE;
}

int sw_core_load_state(sw_core *c, const uint8_t *buf, int64_t size)
{
    int32_t j, nz;
    int64_t i, nw, steps;
    uint64_t off, end;
    const uint8_t *p, *core = NULL, *wght = NULL, *ref, *zmap;
    int s = live(c);
    const int32_t nh = c ? c->cfg.n_hid : 0;
    if (s != SW_OK)
        return s;
    if (!buf)
        return SW_E_NULL;
    /* framing: header, length, checksum, sections */
    if (size < SW_STATE_HDR + 4)
        return state_error(c, "state blob is too short for its header");
    if (get_u32(buf) != SW_STATE_MAGIC)
        return state_error(c, "not a spikewire state blob (bad magic)");
    if (get_u32(buf + 4) == 1u)
        return state_error(c, "state blob version 1 (no checksum, before ABI 2) is not read by this "
                              "library; save the state again with this version");
    if (get_u32(buf + 4) != SW_STATE_VERSION)
        return state_error(c, "state blob has an unknown version (this library reads version 2)");
    if (get_u64(buf + 8) != (uint64_t)size)
        return state_error(c, "state blob length field does not match its size (truncated or padded)");
    if (crc32_of(buf, size - 4) != get_u32(buf + size - 4))
        return state_error(c, "state blob checksum (CRC-32) does not match: the blob is corrupt");
    off = SW_STATE_HDR;
    end = (uint64_t)size - 4;
    while (off < end) {
        uint32_t tag, flags;
        uint64_t len;
        if (end - off < SW_SEC_HDR)
            return state_error(c, "state blob ends inside a section header");
        tag = get_u32(buf + off);
        flags = get_u32(buf + off + 4);
        len = get_u64(buf + off + 8);
        if (flags & ~SW_SEC_REQUIRED)
            return state_error(c, "state blob section has unknown flags");
        if (len > end - off - SW_SEC_HDR)
            return state_error(c, "state blob section runs past the end of the blob");
        if (tag == SW_TAG_CORE || tag == SW_TAG_WGHT) {
            const uint8_t **slot = tag == SW_TAG_CORE ? &core : &wght;
            int64_t want = tag == SW_TAG_CORE ? core_len(c) : wght_len(c);
            if (*slot)
                return state_error(c, "state blob has a CORE or WGHT section twice");
            if (len != (uint64_t)want)
                return state_error(c, "state blob was saved from a core of other sizes "
                                      "(CORE or WGHT section length)");
            *slot = buf + off + SW_SEC_HDR;
        } else if (flags & SW_SEC_REQUIRED) {
            return state_error(c, "state blob has a required section this library does not know");
        }
        off += SW_SEC_HDR + len;
    }
    if (!core || !wght)
        return state_error(c, "state blob lacks its CORE or WGHT section");
    /* contents: validate everything before writing anything */
    if (get_u32(core) != (uint32_t)c->cfg.n_in || get_u32(core + 4) != (uint32_t)nh ||
        get_u32(core + 8) != (uint32_t)c->cfg.n_out)
        return state_error(c, "state blob was saved from a core of other sizes");
    steps = (int64_t)get_u64(core + 12);
    if (steps < 0 || steps > max_steps(c))
        return state_error(c, "state blob has a step count outside 0..the step limit");
    ref = core + 20 + 4 * (int64_t)nh;
    zmap = ref + nh;
    for (j = 0; j < nh; j++)
        if (ref[j] > c->cfg.t_ref || zmap[j] > 1)
            return state_error(c, "state blob has a refractory counter or spike flag out of range");
    nw = wght_len(c);
    for (i = 0; i < nw; i++) {
        int8_t v = (int8_t)wght[i];
        if (v < -SW_WEIGHT_MAX || v > SW_WEIGHT_MAX)
            return state_error(c, "state blob has a weight outside -63..63");
    }
    c->steps = steps;
    p = core + 20;
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
    p = wght;
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
