/*
 * C-level tests of the learning kernels (csrc/learn.c): golden vectors
 * (tests/golden/learn_v1.txt, made by tests/golden/make_golden_learn.py from
 * the numpy reference) with both kernels, and malformed calls.
 *
 *   cc -std=c99 -fsigned-char -ffp-contract=off -fwrapv -Icsrc -Itests/c \
 *      tests/c/test_learn.c csrc/learn.c -o test_learn
 *   ./test_learn tests/golden/learn_v1.txt tests/golden/learn_si_v1.txt
 *
 * Built by tests/c/run.sh natively with the sanitizers, with clang, with the
 * baseline ISA and for aarch64 under qemu.  Exit status 1 on failure.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spikewire.h"
#include "check.h"
#include "golden.h"

SW_CHECK_COUNTERS;

/* 1 while reading learn_si_v1.txt: an `si` line after lconfig, four stretches with two
 * consolidations, a third hash over the SI state (tests/golden/make_golden_learn.py) */
static int g_si;

static int32_t *read_i32(const char *label, int64_t n)
{
    int64_t i;
    int32_t *a = (int32_t *)golden_xmalloc((size_t)n * 4);
    if (label)
        golden_expect(label);
    for (i = 0; i < n; i++)
        a[i] = (int32_t)golden_ll();
    return a;
}

static void run_case(const char *name)
{
    sw_learn_config c;
    int32_t *lc, *pre_A, *pre_G, *g_hid, *v_th, *g_out, *fb32 = NULL, *w32[3], *modes32, *ch32, *z32, *vp32, *rf32, *y32;
    int8_t *fb = NULL, *w[3], *modes;
    uint8_t *z, *rf;
    int16_t *vp, *y;
    int64_t *indptr, n_ev, T, i, sizes[3];
    uint64_t want_acc, want_w, want_si = 0;
    char hex[64];
    int kernel, m;
    lc = read_i32("lconfig", 21);
    memset(&c, 0, sizeof c);
    c.n_in = lc[0];
    c.n_hid = lc[1];
    c.n_out = lc[2];
    c.rule = lc[3];
    c.learn_mask = lc[4];
    c.rate_in = lc[5];
    c.rate_rec = lc[6];
    c.rate_out = lc[7];
    c.signal_shift = lc[8];
    c.trace_shift = lc[9];
    c.surrogate_log2 = lc[10];
    c.target_hi = lc[11];
    c.target_lo = lc[12];
    c.weights = lc[13];
    c.sr_seed = (uint64_t)lc[14];
    c.post_A = lc[15];
    c.post_G = lc[16];
    c.out_A = lc[17];
    c.out_G = lc[18];
    c.eligibility = lc[20];
    if (g_si) {
        golden_expect("si");
        c.si = 1;
        c.si_c_log2 = (int32_t)golden_ll();
        c.si_xi_log2 = (int32_t)golden_ll();
    }
    pre_A = read_i32("pre_A", c.n_hid);
    pre_G = read_i32("pre_G", c.n_hid);
    g_hid = read_i32("g_hid", c.n_hid);
    v_th = read_i32("v_th", c.n_hid);
    g_out = read_i32("g_out", c.n_out);
    c.pre_A = pre_A;
    c.pre_G = pre_G;
    c.g_hid = g_hid;
    c.v_th = v_th;
    c.g_out = g_out;
    if (lc[19]) {
        fb32 = read_i32("feedback", (int64_t)c.n_hid * c.n_out);
        fb = (int8_t *)golden_xmalloc((size_t)c.n_hid * c.n_out);
        for (i = 0; i < (int64_t)c.n_hid * c.n_out; i++)
            fb[i] = (int8_t)fb32[i];
    }
    c.feedback = fb;
    sizes[0] = (int64_t)c.n_in * c.n_hid;
    sizes[1] = (int64_t)c.n_hid * c.n_hid;
    sizes[2] = (int64_t)c.n_hid * c.n_out;
    {
        static const char *lab[3] = {"w_in", "w_rec", "w_out"};
        for (m = 0; m < 3; m++) {
            w32[m] = read_i32(lab[m], sizes[m]);
            w[m] = (int8_t *)golden_xmalloc((size_t)sizes[m]);
            for (i = 0; i < sizes[m]; i++)
                w[m][i] = (int8_t)w32[m][i];
        }
    }
    modes32 = read_i32("modes", c.n_out);
    modes = (int8_t *)golden_xmalloc((size_t)c.n_out);
    for (i = 0; i < c.n_out; i++)
        modes[i] = (int8_t)modes32[i];
    golden_expect("events");
    T = golden_ll();
    indptr = (int64_t *)golden_xmalloc((size_t)(T + 1) * 8);
    for (i = 0; i <= T; i++)
        indptr[i] = golden_ll();
    n_ev = indptr[T];
    ch32 = read_i32(NULL, n_ev);
    z32 = read_i32("z", T * c.n_hid);
    vp32 = read_i32("v_pre", T * c.n_hid);
    rf32 = read_i32("refr", T * c.n_hid);
    y32 = read_i32("y", T * c.n_out);
    z = (uint8_t *)golden_xmalloc((size_t)(T * c.n_hid));
    rf = (uint8_t *)golden_xmalloc((size_t)(T * c.n_hid));
    vp = (int16_t *)golden_xmalloc((size_t)(T * c.n_hid) * 2);
    y = (int16_t *)golden_xmalloc((size_t)(T * c.n_out) * 2);
    for (i = 0; i < T * c.n_hid; i++) {
        z[i] = (uint8_t)z32[i];
        rf[i] = (uint8_t)rf32[i];
        vp[i] = (int16_t)vp32[i];
    }
    for (i = 0; i < T * c.n_out; i++)
        y[i] = (int16_t)y32[i];
    golden_expect("expect");
    golden_need(hex, sizeof hex);
    want_acc = strtoull(hex, NULL, 16);
    golden_need(hex, sizeof hex);
    want_w = strtoull(hex, NULL, 16);
    if (g_si) {
        golden_need(hex, sizeof hex);
        want_si = strtoull(hex, NULL, 16);
    }
    golden_expect("end");

    for (kernel = 0; kernel < 2; kernel++) {
        sw_learn *L = NULL;
        uint64_t h = UINT64_C(0xCBF29CE484222325);
        int st = sw_learn_create(&c, &L);
        CHECK(st == SW_OK, "%s: create: %s", name, sw_learn_last_error(NULL));
        if (st != SW_OK)
            continue;
        CHECK(sw_learn_set_kernel(L, kernel) == SW_OK, "%s: set_kernel", name);
        for (m = 0; m < 3; m++)
            CHECK(sw_learn_set_weights(L, m, w[m], sizes[m]) == SW_OK, "%s: set_weights", name);
        CHECK(sw_learn_set_target(L, modes, c.n_out) == SW_OK, "%s: set_target", name);
        if (g_si) {   /* four stretches, consolidations after the first and the third */
            int r;
            for (r = 0; r < 4; r++) {
                CHECK(sw_learn_reset_traces(L) == SW_OK, "%s: reset_traces", name);
                st = sw_learn_run(L, (int32_t)T, indptr, ch32, n_ev, z, vp, rf, y);
                CHECK(st == SW_OK, "%s: run: %s", name, sw_learn_last_error(L));
                CHECK(sw_learn_flush(L) == SW_OK && sw_learn_commit(L) == SW_OK, "%s: flush, commit", name);
                if (r == 0 || r == 2)
                    CHECK(sw_learn_consolidate(L) == SW_OK, "%s: consolidate", name);
            }
            for (m = 0; m < 3; m++) {
                int k;
                if (!(c.learn_mask & (1 << m)))
                    continue;
                for (k = SW_SI_PREV; k <= SW_SI_ANCHOR; k++) {
                    int32_t *v = (int32_t *)golden_xmalloc((size_t)sizes[m] * 4);
                    CHECK(sw_learn_get_si(L, m, k, v, sizes[m]) == SW_OK, "%s: get_si", name);
                    h = fnv_i32le(h, v, (size_t)sizes[m]);
                    free(v);
                }
            }
            CHECK(h == want_si, "%s kernel %d: si state %016llx != golden %016llx", name, kernel,
                  (unsigned long long)h, (unsigned long long)want_si);
            h = UINT64_C(0xCBF29CE484222325);
        } else {
            st = sw_learn_run(L, (int32_t)T, indptr, ch32, n_ev, z, vp, rf, y);
            CHECK(st == SW_OK, "%s: run: %s", name, sw_learn_last_error(L));
            CHECK(sw_learn_flush(L) == SW_OK, "%s: flush", name);   /* the events form's pending steps */
        }
        for (m = 0; m < 3; m++) {
            int32_t *acc = (int32_t *)golden_xmalloc((size_t)sizes[m] * 4);
            sw_learn_get_acc(L, m, acc, sizes[m]);
            h = fnv_i32le(h, acc, (size_t)sizes[m]);
            free(acc);
        }
        CHECK(h == want_acc, "%s kernel %d: accumulators %016llx != golden %016llx", name, kernel,
              (unsigned long long)h, (unsigned long long)want_acc);
        CHECK(g_si || sw_learn_commit(L) == SW_OK, "%s: commit", name);
        h = UINT64_C(0xCBF29CE484222325);
        for (m = 0; m < 3; m++) {
            int8_t *wo = (int8_t *)golden_xmalloc((size_t)sizes[m]);
            sw_learn_get_weights(L, m, wo, sizes[m]);
            h = fnv(h, (const uint8_t *)wo, (size_t)sizes[m]);
            free(wo);
        }
        CHECK(h == want_w, "%s kernel %d: weights %016llx != golden %016llx", name, kernel,
              (unsigned long long)h, (unsigned long long)want_w);
        sw_learn_destroy(L);
    }
    printf("case %s: checked\n", name);
    free(lc); free(pre_A); free(pre_G); free(g_hid); free(v_th); free(g_out); free(fb32); free(fb);
    for (m = 0; m < 3; m++) {
        free(w32[m]);
        free(w[m]);
    }
    free(modes32); free(modes); free(indptr); free(ch32); free(z32); free(vp32); free(rf32); free(y32);
    free(z); free(rf); free(vp); free(y);
}

static void test_malformed(void)
{
    sw_learn_config c;
    sw_learn *L = NULL;
    int32_t A[2] = {1000, 1000}, g[2] = {16384, 16384}, th[2] = {4096, 4096}, go[1] = {16384};
    int8_t w[4] = {0, 0, 0, 0}, bad_w[4] = {0, 64, 0, 0}, modes[1] = {1}, bad_modes[1] = {3};
    int64_t indptr[3] = {0, 1, 2}, bad_ip[3] = {0, 2, 1};
    int32_t ch[2] = {0, 1}, bad_ch[2] = {0, 2};
    uint8_t z[4] = {0, 1, 0, 0}, bad_z[4] = {0, 2, 0, 0};
    int16_t v[4] = {0, 5000, 4000, 0}, y[2] = {0, 0};
    memset(&c, 0, sizeof c);
    c.n_in = 2;
    c.n_hid = 2;
    c.n_out = 1;
    c.learn_mask = SW_LEARN_MASK_IN | SW_LEARN_MASK_OUT;
    c.surrogate_log2 = 12;
    c.target_hi = 100;
    c.target_lo = -100;
    c.pre_A = A;
    c.pre_G = A;
    c.g_hid = g;
    c.v_th = th;
    c.g_out = go;
    CHECK(sw_learn_create(NULL, &L) == SW_E_NULL, "NULL config");
    c.trace_shift = 15;
    CHECK(sw_learn_create(&c, &L) == SW_E_PARAM && L == NULL, "trace_shift 15");
    c.trace_shift = 10;
    c.target_lo = 100;
    CHECK(sw_learn_create(&c, &L) == SW_E_PARAM, "target_lo == target_hi");
    c.target_lo = -100;
    c.pre_G = NULL;
    CHECK(sw_learn_create(&c, &L) == SW_E_NULL, "NULL pre_G");
    c.pre_G = A;
    CHECK(sw_learn_create(&c, &L) == SW_OK, "create");
    CHECK(sw_learn_set_weights(L, SW_W_IN, bad_w, 4) == SW_E_WEIGHT, "weight 64");
    CHECK(sw_learn_set_weights(L, SW_W_IN, w, 3) == SW_E_SIZE, "weight count");
    CHECK(sw_learn_set_weights(L, 7, w, 4) == SW_E_PARAM, "unknown matrix");
    CHECK(sw_learn_set_target(L, bad_modes, 1) == SW_E_PARAM, "target mode 3");
    CHECK(sw_learn_set_target(L, modes, 1) == SW_OK, "target");
    CHECK(sw_learn_run(L, 2, bad_ip, ch, 2, z, v, z, y) == SW_E_EVENTS, "decreasing indptr");
    CHECK(sw_learn_run(L, 2, indptr, bad_ch, 2, z, v, z, y) == SW_E_CHANNEL, "channel out of range");
    CHECK(sw_learn_run(L, 2, indptr, ch, 2, bad_z, v, z, y) == SW_E_PARAM, "spike flag 2");
    CHECK(sw_learn_run(L, 2, indptr, ch, 2, NULL, v, z, y) == SW_E_NULL, "NULL spikes");
    CHECK(sw_learn_run(L, -1, indptr, ch, 2, z, v, z, y) == SW_E_SIZE, "negative T");
    CHECK(sw_learn_set_last_spikes(L, bad_z, 2) == SW_E_PARAM, "last spike flag 2");
    CHECK(sw_learn_set_last_spikes(L, z, 3) == SW_E_SIZE, "last spikes count");
    CHECK(sw_learn_set_last_spikes(L, NULL, 2) == SW_E_NULL, "NULL last spikes");
    CHECK(sw_learn_set_last_spikes(L, z, 2) == SW_OK, "last spikes");
    CHECK(sw_learn_set_counters(L, -1, 0) == SW_E_PARAM, "negative steps");
    CHECK(sw_learn_set_counters(L, 0, INT64_C(1) << 24) == SW_E_PARAM, "commits 2^24");
    {
        int64_t s = -1, k = -1;
        sw_learn_counters(L, &s, &k);
        CHECK(s == 0 && k == 0, "rejected runs change nothing (steps %lld)", (long long)s);
    }
    CHECK(sw_learn_run(L, 2, indptr, ch, 2, z, v, z, y) == SW_OK, "good run");
    {   /* synaptic intelligence: off here; bad settings refused */
        int32_t st4[4] = {0, 0, 0, 0}, neg[4] = {0, -1, 0, 0};
        CHECK(sw_learn_consolidate(L) == SW_E_PARAM, "consolidate without si");
        CHECK(sw_learn_get_si(L, SW_W_IN, SW_SI_OMEGA, st4, 4) == SW_E_PARAM, "si state without si");
        CHECK(sw_learn_destroy(L) == SW_OK, "destroy");
        c.si = 2;
        CHECK(sw_learn_create(&c, &L) == SW_E_PARAM, "si = 2");
        c.si = 1;
        c.si_c_log2 = 17;
        CHECK(sw_learn_create(&c, &L) == SW_E_PARAM, "si_c_log2 17");
        c.si_c_log2 = 3;
        CHECK(sw_learn_create(&c, &L) == SW_OK, "create with si");
        CHECK(sw_learn_set_si(L, 0, 9) == SW_E_PARAM, "si_xi_log2 9");
        CHECK(sw_learn_set_si_state(L, SW_W_IN, SW_SI_IMPORTANCE, neg, 4) == SW_E_PARAM, "negative importance");
        CHECK(sw_learn_set_si_state(L, SW_W_IN, 4, st4, 4) == SW_E_PARAM, "unknown si kind");
        CHECK(sw_learn_get_si(L, SW_W_REC, SW_SI_OMEGA, st4, 4) == SW_E_PARAM, "si of a matrix that does not learn");
        CHECK(sw_learn_get_si(L, SW_W_IN, SW_SI_OMEGA, st4, 3) == SW_E_SIZE, "si count");
        CHECK(sw_learn_set_si_state(L, SW_W_IN, SW_SI_IMPORTANCE, st4, 4) == SW_OK, "si state");
        CHECK(sw_learn_consolidate(L) == SW_OK, "consolidate");
    }
    CHECK(sw_learn_destroy(L) == SW_OK, "destroy");
    CHECK(sw_learn_destroy(NULL) == SW_OK, "destroy NULL");
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "tests/golden/learn_v1.txt";
    int cases;
    test_malformed();
    cases = golden_each_case(path, run_case);
    if (cases < 0)
        return 2;
    CHECK(cases >= 4, "golden file has %d cases", cases);
    if (argc > 2) {   /* the synaptic intelligence cases (learn_si_v1.txt) */
        g_si = 1;
        cases = golden_each_case(argv[2], run_case);
        if (cases < 0)
            return 2;
        CHECK(cases >= 3, "si golden file has %d cases", cases);
    }
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
