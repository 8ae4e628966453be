/*
 * C-level tests of the front end (csrc/frontend.c): malformed calls return a
 * status (never crash, never touch state), block invariance, a hash of
 * the events of a fixed signal that tests/c/run.sh compares between x86-64
 * and aarch64 (the front end promises bit-identical results across CPUs),
 * and, given a golden file, its stored events (pinned values, not only the
 * same on both CPUs):
 *
 *   ./test_frontend [tests/golden/frontend_v1.txt]
 *
 * Prints "fe_hash <hex>" and a final "N passed, N failed" line.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spikewire.h"
#include "check.h"
#include "golden.h"

SW_CHECK_COUNTERS;

#define C 8
#define S 2
#define L 2
#define M 3
#define K 8
static int16_t coef[L * K];
static float sos[S * 5 * C];

static void params(sw_fe_params *p)
{
    int i, s, c;
    for (i = 0; i < L * K; i++)
        coef[i] = (int16_t)(2048 + 64 * (i % K)); /* a positive lowpass-ish kernel */
    for (s = 0; s < S; s++)
        for (c = 0; c < C; c++) {
            /* a mild resonator per channel: b0 b1 b2 a1 a2 */
            float r = 0.9f, w = 0.2f + 0.3f * (float)c;
            sos[(s * 5 + 0) * C + c] = 0.1f;
            sos[(s * 5 + 1) * C + c] = 0.0f;
            sos[(s * 5 + 2) * C + c] = -0.1f;
            sos[(s * 5 + 3) * C + c] = -2.0f * r * (1.0f - w * w / 2.0f);
            sos[(s * 5 + 4) * C + c] = r * r;
        }
    memset(p, 0, sizeof *p);
    p->n_channels = C;
    p->n_stages = S;
    p->step_samples = 8;
    p->max_spikes = 4;
    p->rs_up = L;
    p->rs_down = M;
    p->rs_taps = K;
    p->rs_skip = 2;
    p->rs_coef = coef;
    p->sos = sos;
    p->preemph = 0.97f;
    p->env_alpha = 0.125f;
    p->power_scale = 1.0f;
    p->log2_k = 2.8853900817779268f;
    p->floor_power = 1e-7f;
    p->log2_floor = -23.253496664211536f;
    p->drive_scale = 0.05f;
    p->tiny = 1e-30f;
}

/* the same params with log-domain PCEN (Q15 / Q16 integers) */
static void pcen(sw_fe_params *p)
{
    params(p);
    p->norm = SW_FE_NORM_PCEN;
    p->pcen_k = 655;                    /* ~ 1 - exp(-1/50)          */
    p->pcen_alpha = 29491;              /* 0.9                       */
    p->pcen_off = -(1 << 16);           /* -3 dB                     */
    p->pcen_eps = (int64_t)1 << 30;     /* 2^-26 ~ -78 dB            */
    p->pcen_scale = 1.0f / 65536.0f;
}

#define NSAMP 24000
#define MAXST 4096
static int16_t x[NSAMP];
static int64_t ip[MAXST + 1];
static int32_t ch[MAXST * C * 4];

/* Feed x in blocks of the given sizes (cycled); return a hash of all events
 * (step-relative CSR rebuilt as (step, channel) pairs). */
static uint64_t run_blocks(sw_fe *fe, const int *sizes, int n_sizes, int64_t *total_events)
{
    uint64_t h = UINT64_C(0xCBF29CE484222325);
    int64_t pos = 0, step0 = 0, ns, ne, k, e;
    int i = 0, st;
    *total_events = 0;
    sw_fe_reset(fe);
    while (pos < NSAMP) {
        int64_t n = sizes[i++ % n_sizes];
        if (n > NSAMP - pos)
            n = NSAMP - pos;
        st = sw_fe_process(fe, x + pos, n, ip, MAXST, ch, (int64_t)MAXST * C * 4, &ns, &ne);
        if (st != SW_OK) {
            printf("process failed: %s\n", sw_strerror(st));
            return 0;
        }
        for (k = 0; k < ns; k++)
            for (e = ip[k]; e < ip[k + 1]; e++) {
                int64_t rec[2];
                rec[0] = step0 + k;
                rec[1] = ch[e];
                h = fnv(h, (const uint8_t *)rec, sizeof rec);
            }
        step0 += ns;
        *total_events += ne;
        pos += n;
    }
    return h;
}

/* ---- golden vectors (tests/golden/make_golden_frontend.py has the format) ---- */
/* an IEEE float32 stored as its bit pattern in hex */
static float golden_f32(void)
{
    uint32_t u = (uint32_t)golden_ull(16);
    float v;
    memcpy(&v, &u, sizeof v);
    return v;
}

static void put_le64(uint8_t *b, int64_t v)
{
    int i;
    for (i = 0; i < 8; i++)
        b[i] = (uint8_t)((uint64_t)v >> (8 * i));
}

/* Feed x in blocks of the given sizes (cycled), then flush; check the steps,
 * the events per step and the hash of (step, channel) pairs against the file. */
static void golden_run(sw_fe *fe, const char *name, const char *how, const int16_t *xs, int64_t n,
                       const int *sizes, int n_sizes, int64_t exp_steps, int64_t exp_events,
                       const int64_t *exp_counts, uint64_t exp_hash, int32_t n_ev_per_step)
{
    int64_t maxst = exp_steps + 64, max_ev = maxst * n_ev_per_step;
    int64_t *gip = (int64_t *)golden_xmalloc((size_t)(maxst + 1) * sizeof(int64_t));
    int32_t *gch = (int32_t *)golden_xmalloc((size_t)max_ev * sizeof(int32_t));
    uint64_t h = UINT64_C(0xCBF29CE484222325);
    int64_t pos = 0, step0 = 0, ns, ne, k, e, events = 0, bad_step = -1;
    int i = 0, st = SW_OK, last = 0;
    sw_fe_reset(fe);
    while (!last) {
        if (pos < n) {
            int64_t m = sizes[i++ % n_sizes];
            if (m > n - pos)
                m = n - pos;
            st = sw_fe_process(fe, xs + pos, m, gip, maxst, gch, max_ev, &ns, &ne);
            pos += m;
        } else {
            st = sw_fe_flush(fe, gip, maxst, gch, max_ev, &ns, &ne);
            last = 1;
        }
        if (st != SW_OK)
            break;
        for (k = 0; k < ns; k++) {
            if (step0 + k < exp_steps && gip[k + 1] - gip[k] != exp_counts[step0 + k] && bad_step < 0)
                bad_step = step0 + k;
            for (e = gip[k]; e < gip[k + 1]; e++) {
                uint8_t rec[16];
                put_le64(rec, step0 + k);
                put_le64(rec + 8, gch[e]);
                h = fnv(h, (const uint8_t *)rec, sizeof rec);
            }
        }
        step0 += ns;
        events += ne;
    }
    CHECK(st == SW_OK, "golden %s (%s): status %s", name, how, sw_strerror(st));
    CHECK(step0 == exp_steps && events == exp_events, "golden %s (%s): %lld steps %lld events, golden %lld %lld",
          name, how, (long long)step0, (long long)events, (long long)exp_steps, (long long)exp_events);
    CHECK(bad_step < 0, "golden %s (%s): events of step %lld differ from the golden counts", name, how,
          (long long)bad_step);
    CHECK(h == exp_hash, "golden %s (%s): events hash %016llx, golden %016llx", name, how,
          (unsigned long long)h, (unsigned long long)exp_hash);
    free(gip);
    free(gch);
}

static void golden_case(const char *name)
{
    sw_fe_params p;
    sw_fe *fe = NULL;
    char skip[64];
    int16_t *coef, *xs;
    float *sos;
    int64_t n, i, exp_steps, exp_events, *counts, n_sos;
    uint64_t exp_hash;
    const int whole[] = {1 << 30}, odd[] = {1, 37, 160, 7, 999};
    int fails_before = n_fail;
    memset(&p, 0, sizeof p);
    golden_expect("config");
    golden_need(skip, sizeof skip); /* the config JSON (for the Python design check) */
    golden_need(skip, sizeof skip); /* the input rate */
    golden_expect("ints");
    p.n_channels = (int32_t)golden_ll();
    p.n_stages = (int32_t)golden_ll();
    p.step_samples = (int32_t)golden_ll();
    p.max_spikes = (int32_t)golden_ll();
    p.rs_up = (int32_t)golden_ll();
    p.rs_down = (int32_t)golden_ll();
    p.rs_taps = (int32_t)golden_ll();
    p.rs_skip = (int32_t)golden_ll();
    p.norm = (int32_t)golden_ll();
    p.pcen_k = (int32_t)golden_ll();
    p.pcen_alpha = (int32_t)golden_ll();
    p.pcen_off = (int32_t)golden_ll();
    p.pcen_eps = (int64_t)golden_ll();
    golden_expect("floats");
    p.preemph = golden_f32();
    p.env_alpha = golden_f32();
    p.power_scale = golden_f32();
    p.log2_k = golden_f32();
    p.floor_power = golden_f32();
    p.log2_floor = golden_f32();
    p.drive_scale = golden_f32();
    p.tiny = golden_f32();
    p.pcen_scale = golden_f32();
    if (p.rs_up < 1 || p.rs_taps < 1 || p.n_stages < 1 || p.n_channels < 1) {
        printf("golden %s: bad sizes\n", name);
        exit(2);
    }
    golden_expect("rs_coef");
    coef = (int16_t *)golden_xmalloc((size_t)p.rs_up * (size_t)p.rs_taps * sizeof(int16_t));
    for (i = 0; i < (int64_t)p.rs_up * p.rs_taps; i++)
        coef[i] = (int16_t)golden_ll();
    golden_expect("sos");
    n_sos = (int64_t)p.n_stages * 5 * p.n_channels;
    sos = (float *)golden_xmalloc((size_t)n_sos * sizeof(float));
    for (i = 0; i < n_sos; i++)
        sos[i] = golden_f32();
    golden_expect("signal");
    n = golden_ll();
    xs = (int16_t *)golden_xmalloc((size_t)n * sizeof(int16_t));
    for (i = 0; i < n; i++)
        xs[i] = (int16_t)golden_ll();
    golden_expect("expect");
    exp_steps = golden_ll();
    exp_events = golden_ll();
    exp_hash = golden_ull(16);
    golden_expect("counts");
    counts = (int64_t *)golden_xmalloc((size_t)exp_steps * sizeof(int64_t));
    for (i = 0; i < exp_steps; i++)
        counts[i] = golden_ll();
    golden_expect("end");
    p.rs_coef = coef;
    p.sos = sos;
    CHECK(sw_fe_create(&p, &fe) == SW_OK && fe, "golden %s: create", name);
    if (fe) {
        golden_run(fe, name, "one call", xs, n, whole, 1, exp_steps, exp_events, counts, exp_hash,
                   p.n_channels * p.max_spikes);
        golden_run(fe, name, "odd blocks", xs, n, odd, 5, exp_steps, exp_events, counts, exp_hash,
                   p.n_channels * p.max_spikes);
        sw_fe_destroy(fe);
    }
    printf("golden %-22s %6lld steps %6lld events  %s\n", name, (long long)exp_steps, (long long)exp_events,
           n_fail > fails_before ? "FAILED" : "ok");
    free(coef);
    free(sos);
    free(xs);
    free(counts);
}

static void check_golden_file(const char *path)
{
    int cases = golden_each_case(path, golden_case);
    CHECK(cases >= 5, "front-end golden file %s has %d cases", path, cases);
}

int main(int argc, char **argv)
{
    sw_fe_params p, q;
    sw_fe *fe = NULL;
    uint64_t seed = 12345, h0, h1, h2, h3;
    int64_t ns = -1, ne = -1, ev1, ev2, ev3, steps = 0;
    int i;
    const int one[] = {NSAMP}, odd[] = {1, 37, 160, 7, 999}, tiny[] = {3};

    for (i = 0; i < NSAMP; i++) { /* deterministic chirp + LCG noise, integer only */
        seed = seed * UINT64_C(6364136223846793005) + 1;
        x[i] = (int16_t)((int32_t)((seed >> 52) & 0x3FF) - 512 + ((i / 40) % 2 ? 6000 : -6000) * ((i / 2000) % 2));
    }
    params(&p);
    /* malformed creation */
    CHECK(sw_fe_create(NULL, &fe) == SW_E_NULL, "NULL params");
    CHECK(sw_fe_create(&p, NULL) == SW_E_NULL, "NULL out");
    q = p; q.n_channels = 0;
    CHECK(sw_fe_create(&q, &fe) != SW_OK && fe == NULL, "0 channels");
    q = p; q.n_channels = SW_FE_MAX_CHANNELS + 1;
    CHECK(sw_fe_create(&q, &fe) != SW_OK, "too many channels");
    q = p; q.rs_taps = 0;
    CHECK(sw_fe_create(&q, &fe) != SW_OK, "0 taps");
    q = p; q.rs_coef = NULL;
    CHECK(sw_fe_create(&q, &fe) != SW_OK, "NULL coefficients");
    q = p; q.sos = NULL;
    CHECK(sw_fe_create(&q, &fe) != SW_OK, "NULL sos");
    q = p; q.max_spikes = 99;
    CHECK(sw_fe_create(&q, &fe) != SW_OK, "max_spikes 99");
    q = p; q.norm = 2;
    CHECK(sw_fe_create(&q, &fe) == SW_E_PARAM && fe == NULL, "unknown norm");
    pcen(&q); q.pcen_k = 0;
    CHECK(sw_fe_create(&q, &fe) == SW_E_PARAM && fe == NULL, "pcen_k 0");
    pcen(&q); q.pcen_k = 32769;
    CHECK(sw_fe_create(&q, &fe) == SW_E_PARAM && fe == NULL, "pcen_k > 1.0");
    pcen(&q); q.pcen_alpha = -1;
    CHECK(sw_fe_create(&q, &fe) == SW_E_PARAM && fe == NULL, "pcen_alpha < 0");
    pcen(&q); q.pcen_eps = 1000;
    CHECK(sw_fe_create(&q, &fe) == SW_E_PARAM && fe == NULL, "pcen_eps below 2^16");
    pcen(&q); q.floor_power = 1e-13f;
    CHECK(sw_fe_create(&q, &fe) == SW_E_PARAM && fe == NULL, "pcen floor below -120 dB");
    pcen(&q); q.pcen_off = -(1 << 24);
    CHECK(sw_fe_create(&q, &fe) == SW_E_PARAM && fe == NULL, "pcen_off out of range");
    pcen(&q); q.pcen_scale = -1.0f;
    CHECK(sw_fe_create(&q, &fe) == SW_E_PARAM && fe == NULL, "negative pcen_scale");
    q = p; q.pcen_k = 0; q.pcen_scale = -1.0f;   /* ignored without norm */
    CHECK(sw_fe_create(&q, &fe) == SW_OK && fe, "pcen fields ignored with norm 0");
    sw_fe_destroy(fe);
    fe = NULL;

    CHECK(sw_fe_create(&p, &fe) == SW_OK && fe, "valid create");
    if (!fe)
        return 1;
    /* malformed calls leave the state untouched */
    CHECK(sw_fe_block_steps(fe, 8000, &steps) == SW_OK && steps > 2, "block steps");
    CHECK(sw_fe_process(fe, x, 8000, ip, steps - 1, ch, 1 << 20, &ns, &ne) == SW_E_BUFFER, "short indptr");
    CHECK(sw_fe_process(fe, x, 8000, ip, MAXST, ch, 1, &ns, &ne) == SW_E_BUFFER, "short channels");
    CHECK(sw_fe_process(fe, NULL, 8000, ip, MAXST, ch, 1 << 20, &ns, &ne) == SW_E_NULL, "NULL samples");
    CHECK(sw_fe_process(fe, x, -1, ip, MAXST, ch, 1 << 20, &ns, &ne) != SW_OK, "negative n");
    CHECK(sw_fe_process(NULL, x, 10, ip, MAXST, ch, 1 << 20, &ns, &ne) == SW_E_NULL, "NULL fe");
    CHECK(sw_fe_counters(fe, &ns, NULL, NULL) == SW_OK && ns == 0, "nothing consumed by failed calls");

    /* block invariance */
    h1 = run_blocks(fe, one, 1, &ev1);
    h2 = run_blocks(fe, odd, 5, &ev2);
    h3 = run_blocks(fe, tiny, 1, &ev3);
    CHECK(ev1 > 100, "the test signal produces events (%lld)", (long long)ev1);
    CHECK(h1 == h2 && ev1 == ev2, "blocks 1,37,160,7,999 == one call");
    CHECK(h1 == h3 && ev1 == ev3, "blocks of 3 == one call");
    h0 = h1;
    CHECK(sw_fe_flush(fe, ip, MAXST, ch, (int64_t)MAXST * C * 4, &ns, &ne) == SW_OK, "flush");
    CHECK(sw_fe_destroy(fe) == SW_OK, "destroy");
    CHECK(sw_fe_destroy(NULL) == SW_OK, "destroy NULL");
    printf("fe_hash %016llx events %lld\n", (unsigned long long)h1, (long long)ev1);

    /* the PCEN path: block-invariant, different from the log path, and its
     * hash is compared across compilers and CPUs by run.sh like the first */
    pcen(&q);
    fe = NULL;
    CHECK(sw_fe_create(&q, &fe) == SW_OK && fe, "valid pcen create");
    if (!fe)
        return 1;
    h1 = run_blocks(fe, one, 1, &ev1);
    h2 = run_blocks(fe, odd, 5, &ev2);
    h3 = run_blocks(fe, tiny, 1, &ev3);
    CHECK(ev1 > 100, "pcen: the test signal produces events (%lld)", (long long)ev1);
    CHECK(h1 == h2 && ev1 == ev2, "pcen: blocks 1,37,160,7,999 == one call");
    CHECK(h1 == h3 && ev1 == ev3, "pcen: blocks of 3 == one call");
    CHECK(h1 != h0, "pcen events differ from the log path's");
    CHECK(sw_fe_destroy(fe) == SW_OK, "destroy pcen");
    printf("fe_hash pcen %016llx events %lld\n", (unsigned long long)h1, (long long)ev1);
    if (argc > 1)
        check_golden_file(argv[1]);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
