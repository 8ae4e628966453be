/*
 * C-level tests of the spikewire core: golden vectors and malformed calls.
 *
 *   cc -std=c99 -fsigned-char -ffp-contract=off -fwrapv -Icsrc -Itests/c \
 *      tests/c/test_core.c csrc/core.c -o test_core
 *   ./test_core tests/golden/core_v1.txt
 *
 * Built by tests/c/run.sh natively with -fsanitize=address,undefined and,
 * where a cross compiler and qemu exist, for aarch64.  Prints one line per
 * check and a final "N passed, N failed" line; exit status 1 on failure.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spikewire.h"
#include "check.h"
#include "golden.h"

SW_CHECK_COUNTERS;

static void read_i32(int32_t *a, long long n)
{
    long long i;
    for (i = 0; i < n; i++)
        a[i] = (int32_t)golden_ll();
}

static void read_i8(int8_t *a, long long n)
{
    long long i;
    for (i = 0; i < n; i++)
        a[i] = (int8_t)golden_ll();
}

static void run_golden_case(const char *name)
{
    sw_config cfg;
    int32_t *hp, *op;
    sw_pop_params hid, out;
    int8_t *w_in, *w_rec, *w_out;
    int64_t *indptr, n_spk = 0, ssize = 0;
    int32_t *ch, T;
    long long nh, no, ni, t, n_ev, exp_spikes;
    unsigned long long exp_out, exp_state;
    uint8_t *spk, *cadc, *state, *x_spk, *x_cadc, *x_ref, *x_hcadc, *k0_ref, *k0_hcadc;
    int16_t *hv, *ov, *x_hv, *x_ov, *x_vpre, *k0_vpre;
    sw_run_out xo;
    uint64_t h;
    sw_core *core = NULL;
    int s, kernel;

    memset(&cfg, 0, sizeof cfg);
    cfg.abi_version = SW_ABI_VERSION;
    cfg.struct_size = (int32_t)sizeof cfg;
    golden_expect("config");
    cfg.n_in = (int32_t)golden_ll();
    cfg.n_hid = (int32_t)golden_ll();
    cfg.n_out = (int32_t)golden_ll();
    cfg.preset = (int32_t)golden_ll();
    cfg.shift_in = (int32_t)golden_ll();
    cfg.shift_rec = (int32_t)golden_ll();
    cfg.shift_out = (int32_t)golden_ll();
    cfg.t_ref = (int32_t)golden_ll();
    cfg.noise_amp = (int32_t)golden_ll();
    cfg.noise_seed = (uint64_t)golden_ull(10);
    cfg.cadc_base = (int32_t)golden_ll();
    cfg.cadc_shift = (int32_t)golden_ll();
    ni = cfg.n_in;
    nh = cfg.n_hid;
    no = cfg.n_out;
    hp = golden_xmalloc(sizeof(int32_t) * 6 * (size_t)nh);
    op = golden_xmalloc(sizeof(int32_t) * 6 * (size_t)no);
    golden_expect("hidden");
    read_i32(hp, 6 * nh);
    golden_expect("readout");
    read_i32(op, 6 * no);
    hid.decay_syn = hp; hid.gain_mem = hp + nh; hid.v_leak = hp + 2 * nh;
    hid.v_th = hp + 3 * nh; hid.v_reset = hp + 4 * nh; hid.g_syn = hp + 5 * nh;
    out.decay_syn = op; out.gain_mem = op + no; out.v_leak = op + 2 * no;
    out.v_th = op + 3 * no; out.v_reset = op + 4 * no; out.g_syn = op + 5 * no;
    w_in = golden_xmalloc((size_t)(ni * nh));
    w_rec = golden_xmalloc((size_t)(nh * nh));
    w_out = golden_xmalloc((size_t)(nh * no));
    golden_expect("w_in");
    read_i8(w_in, ni * nh);
    golden_expect("w_rec");
    read_i8(w_rec, nh * nh);
    golden_expect("w_out");
    read_i8(w_out, nh * no);
    golden_expect("events");
    T = (int32_t)golden_ll();
    indptr = golden_xmalloc(sizeof(int64_t) * (size_t)(T + 1));
    for (t = 0; t <= T; t++)
        indptr[t] = golden_ll();
    n_ev = indptr[T];
    ch = golden_xmalloc(sizeof(int32_t) * (size_t)n_ev);
    read_i32(ch, n_ev);
    golden_expect("expect");
    exp_spikes = golden_ll();
    exp_out = golden_ull(16);
    exp_state = golden_ull(16);
    golden_expect("end");

    spk = golden_xmalloc((size_t)(T * nh));
    hv = golden_xmalloc(sizeof(int16_t) * (size_t)(T * nh));
    ov = golden_xmalloc(sizeof(int16_t) * (size_t)(T * no));
    cadc = golden_xmalloc((size_t)(T * no));
    x_spk = golden_xmalloc((size_t)(T * nh));
    x_hv = golden_xmalloc(sizeof(int16_t) * (size_t)(T * nh));
    x_vpre = golden_xmalloc(sizeof(int16_t) * (size_t)(T * nh));
    k0_vpre = golden_xmalloc(sizeof(int16_t) * (size_t)(T * nh));
    x_ref = golden_xmalloc((size_t)(T * nh));
    k0_ref = golden_xmalloc((size_t)(T * nh));
    x_hcadc = golden_xmalloc((size_t)(T * nh));
    k0_hcadc = golden_xmalloc((size_t)(T * nh));
    x_ov = golden_xmalloc(sizeof(int16_t) * (size_t)(T * no));
    x_cadc = golden_xmalloc((size_t)(T * no));
    s = sw_core_create(&cfg, &hid, &out, &core);
    CHECK(s == SW_OK, "%s: create: %s (%s)", name, sw_strerror(s), sw_create_error());
    if (s != SW_OK)
        return;
    CHECK(sw_core_set_weights(core, SW_W_IN, w_in, ni * nh) == SW_OK, "%s: w_in", name);
    CHECK(sw_core_set_weights(core, SW_W_REC, w_rec, nh * nh) == SW_OK, "%s: w_rec", name);
    CHECK(sw_core_set_weights(core, SW_W_OUT, w_out, nh * no) == SW_OK, "%s: w_out", name);
    for (kernel = 0; kernel <= 1; kernel++) {
        CHECK(sw_core_set_kernel(core, kernel) == SW_OK, "set kernel");
        CHECK(sw_core_reset(core) == SW_OK, "reset");
        s = sw_core_run(core, T, indptr, ch, n_ev, spk, hv, ov, cadc, &n_spk);
        CHECK(s == SW_OK, "%s: run: %s", name, sw_strerror(s));
        h = UINT64_C(0xCBF29CE484222325);
        h = fnv(h, spk, (size_t)(T * nh));
        h = fnv_i16le(h, hv, (size_t)(T * nh));
        h = fnv_i16le(h, ov, (size_t)(T * no));
        h = fnv(h, cadc, (size_t)(T * no));
        CHECK(n_spk == exp_spikes, "%s kernel %d: %lld spikes, golden %lld", name, kernel,
              (long long)n_spk, exp_spikes);
        CHECK(h == (uint64_t)exp_out, "%s kernel %d: output hash %016llx, golden %016llx", name,
              kernel, (unsigned long long)h, exp_out);
        CHECK(sw_core_state_size(core, &ssize) == SW_OK, "state size");
        state = golden_xmalloc((size_t)ssize);
        CHECK(sw_core_save_state(core, state, ssize) == SW_OK, "save state");
        h = fnv(UINT64_C(0xCBF29CE484222325), state, (size_t)ssize);
        CHECK(h == (uint64_t)exp_state, "%s kernel %d: state hash %016llx, golden %016llx", name,
              kernel, (unsigned long long)h, exp_state);
        free(state);
        /* sw_core_run_ex: the same block with every output */
        memset(&xo, 0, sizeof xo);
        xo.struct_size = (int32_t)sizeof xo;
        xo.max_steps = T;
        xo.hid_spikes = x_spk; xo.hid_v = x_hv; xo.hid_v_pre = x_vpre; xo.hid_ref = x_ref;
        xo.hid_cadc = x_hcadc; xo.out_v = x_ov; xo.out_cadc = x_cadc;
        CHECK(sw_core_reset(core) == SW_OK, "reset");
        s = sw_core_run_ex(core, T, indptr, ch, n_ev, &xo);
        CHECK(s == SW_OK && xo.n_spikes == n_spk, "%s kernel %d: run_ex", name, kernel);
        CHECK(memcmp(x_spk, spk, (size_t)(T * nh)) == 0 && memcmp(x_hv, hv, sizeof(int16_t) * (size_t)(T * nh)) == 0 &&
              memcmp(x_ov, ov, sizeof(int16_t) * (size_t)(T * no)) == 0 && memcmp(x_cadc, cadc, (size_t)(T * no)) == 0,
              "%s kernel %d: run_ex outputs equal run's", name, kernel);
        if (kernel == 0) {
            memcpy(k0_vpre, x_vpre, sizeof(int16_t) * (size_t)(T * nh));
            memcpy(k0_ref, x_ref, (size_t)(T * nh));
            memcpy(k0_hcadc, x_hcadc, (size_t)(T * nh));
        } else {
            CHECK(memcmp(k0_vpre, x_vpre, sizeof(int16_t) * (size_t)(T * nh)) == 0 &&
                  memcmp(k0_ref, x_ref, (size_t)(T * nh)) == 0 && memcmp(k0_hcadc, x_hcadc, (size_t)(T * nh)) == 0,
                  "%s: pre-reset V, refractory, hidden CADC: fast kernel == plain kernel", name);
        }
    }
    printf("golden %-16s %6lld spikes  %s\n", name, (long long)n_spk,
           n_fail ? "(failures above)" : "ok");
    sw_core_destroy(core);
    free(hp); free(op); free(w_in); free(w_rec); free(w_out); free(indptr); free(ch);
    free(spk); free(hv); free(ov); free(cadc);
    free(x_spk); free(x_hv); free(x_vpre); free(k0_vpre); free(x_ref); free(k0_ref);
    free(x_hcadc); free(k0_hcadc); free(x_ov); free(x_cadc);
}

/* ---- malformed calls: every one must return a status, never crash ------ */
static void test_malformed(void)
{
    int32_t ones[4] = {16384, 16384, 16384, 16384};
    int32_t A[4] = {26828, 26828, 26828, 26828}, G[4] = {3118, 3118, 3118, 3118};
    int32_t z[4] = {0, 0, 0, 0}, th[4] = {4096, 4096, 4096, 4096};
    int32_t bad[4] = {40000, 0, 0, 0};
    sw_pop_params p = {A, G, z, th, z, ones};
    sw_pop_params pb = {bad, G, z, th, z, ones};
    sw_pop_params pnull = {A, NULL, z, th, z, ones};
    sw_config cfg = {SW_ABI_VERSION, (int32_t)sizeof(sw_config), 3, 4, 2, SW_PRESET_UNBOUNDED, 6, 5, 6, 2, 0, 0, -8192, 6};
    sw_config c2;
    sw_core *core = NULL, *tmp = NULL;
    int8_t w[16] = {0}, wbad[12] = {0};
    int64_t ip[3] = {0, 2, 3}, ip_bad[3] = {0, 3, 2}, ip_bad0[3] = {1, 2, 3};
    int32_t ch[3] = {0, 2, 1}, ch_bad[3] = {0, 3, 1}, ch_neg[3] = {0, -1, 1};
    uint8_t spk[8], cadc[4], blob[4096];
    int16_t ov[4];
    int64_t size = 0, steps = -1;

    CHECK(sw_core_create(NULL, &p, &p, &core) == SW_E_NULL, "NULL config");
    CHECK(sw_core_create(&cfg, NULL, &p, &core) == SW_E_NULL, "NULL hidden params");
    CHECK(sw_core_create(&cfg, &p, &p, NULL) == SW_E_NULL, "NULL out pointer");
    CHECK(sw_core_create(&cfg, &pnull, &p, &core) == SW_E_NULL, "NULL param array");
    CHECK(sw_core_create(&cfg, &pb, &p, &core) == SW_E_PARAM && core == NULL, "decay out of range");
    c2 = cfg; c2.n_hid = 0;
    CHECK(sw_core_create(&c2, &p, &p, &core) == SW_E_SIZE, "n_hid 0");
    c2 = cfg; c2.n_in = -5;
    CHECK(sw_core_create(&c2, &p, &p, &core) == SW_E_SIZE, "negative n_in");
    c2 = cfg; c2.n_hid = 1 << 30;
    CHECK(sw_core_create(&c2, &p, &p, &core) == SW_E_SIZE, "huge n_hid");
    c2 = cfg; c2.shift_in = 15;
    CHECK(sw_core_create(&c2, &p, &p, &core) == SW_E_PARAM, "shift 15");
    c2 = cfg; c2.t_ref = 256;
    CHECK(sw_core_create(&c2, &p, &p, &core) == SW_E_PARAM, "t_ref 256");
    c2 = cfg; c2.noise_amp = -1;
    CHECK(sw_core_create(&c2, &p, &p, &core) == SW_E_PARAM, "negative noise");
    c2 = cfg; c2.preset = 7;
    CHECK(sw_core_create(&c2, &p, &p, &core) == SW_E_PARAM, "unknown preset");
    c2 = cfg; c2.preset = SW_PRESET_BSS2; c2.n_in = 300;
    CHECK(sw_core_create(&c2, &p, &p, &core) == SW_E_PRESET, "bss2 fan-in");
    CHECK(strlen(sw_create_error()) > 0, "create error message");
    c2 = cfg; c2.abi_version = 1;
    CHECK(sw_core_create(&c2, &p, &p, &core) == SW_E_ABI && core == NULL, "ABI version 1 config");
    c2 = cfg; c2.struct_size -= 8;
    CHECK(sw_core_create(&c2, &p, &p, &core) == SW_E_ABI && core == NULL, "short sw_config");

    CHECK(sw_core_create(&cfg, &p, &p, &core) == SW_OK && core != NULL, "valid create");
    if (!core)
        return;
    /* weights */
    w[5] = 64;
    CHECK(sw_core_set_weights(core, SW_W_IN, w, 12) == SW_E_WEIGHT, "weight 64");
    w[5] = -64;
    CHECK(sw_core_set_weights(core, SW_W_IN, w, 12) == SW_E_WEIGHT, "weight -64");
    w[5] = 63;
    CHECK(sw_core_set_weights(core, SW_W_IN, w, 11) == SW_E_SIZE, "wrong weight count");
    CHECK(sw_core_set_weights(core, 9, w, 12) == SW_E_PARAM, "unknown matrix");
    CHECK(sw_core_set_weights(core, SW_W_IN, NULL, 12) == SW_E_NULL, "NULL weights");
    CHECK(sw_core_set_weights(core, SW_W_IN, w, 12) == SW_OK, "valid weights");
    CHECK(sw_core_get_weights(core, SW_W_IN, wbad, 12) == SW_OK && wbad[5] == 63, "weights round trip");
    /* events */
    CHECK(sw_core_run(core, 2, ip, ch_bad, 3, spk, NULL, ov, cadc, NULL) == SW_E_CHANNEL, "channel 3 of 3");
    CHECK(sw_core_run(core, 2, ip, ch_neg, 3, spk, NULL, ov, cadc, NULL) == SW_E_CHANNEL, "channel -1");
    CHECK(sw_core_run(core, 2, ip_bad, ch, 2, spk, NULL, ov, cadc, NULL) == SW_E_EVENTS, "decreasing indptr");
    CHECK(sw_core_run(core, 2, ip_bad0, ch, 3, spk, NULL, ov, cadc, NULL) == SW_E_EVENTS, "indptr[0] != 0");
    CHECK(sw_core_run(core, 2, ip, ch, 2, spk, NULL, ov, cadc, NULL) == SW_E_EVENTS, "n_events mismatch");
    CHECK(sw_core_run(core, 2, NULL, ch, 3, spk, NULL, ov, cadc, NULL) == SW_E_NULL, "NULL indptr");
    CHECK(sw_core_run(core, 2, ip, NULL, 3, spk, NULL, ov, cadc, NULL) == SW_E_NULL, "NULL channels");
    CHECK(sw_core_run(core, -1, ip, ch, 3, spk, NULL, ov, cadc, NULL) == SW_E_SIZE, "negative T");
    CHECK(sw_core_steps_done(core, &steps) == SW_OK && steps == 0, "failed runs did not step");
    CHECK(sw_core_step(core, ch, -2, spk, NULL, ov, cadc) == SW_E_EVENTS, "negative event count");
    CHECK(sw_core_run(core, 2, ip, ch, 3, spk, NULL, ov, cadc, NULL) == SW_OK, "valid run");
    CHECK(sw_core_run(core, 2, ip, ch, 3, NULL, NULL, NULL, NULL, NULL) == SW_OK, "run without outputs");
    CHECK(sw_core_step(core, NULL, 0, spk, NULL, ov, cadc) == SW_OK, "empty step");
    CHECK(sw_core_steps_done(core, &steps) == SW_OK && steps == 5, "5 steps done");
    CHECK(sw_core_set_kernel(core, 2) == SW_E_PARAM, "unknown kernel");
    {
        sw_run_out o;
        memset(&o, 0, sizeof o);
        o.struct_size = (int32_t)sizeof o - 8;
        o.max_steps = 2;
        o.hid_spikes = spk;
        CHECK(sw_core_run_ex(core, 2, ip, ch, 3, &o) == SW_E_ABI, "run_ex short struct");
        o.struct_size = (int32_t)sizeof o;
        o.max_steps = 1;
        CHECK(sw_core_run_ex(core, 2, ip, ch, 3, &o) == SW_E_BUFFER, "run_ex max_steps < T");
        CHECK(sw_core_run_ex(core, 2, ip, ch, 3, NULL) == SW_E_NULL, "run_ex NULL out");
        CHECK(sw_core_steps_done(core, &steps) == SW_OK && steps == 5, "refused run_ex did not step");
        o.max_steps = 2;
        CHECK(sw_core_run_ex(core, 2, ip, ch, 3, &o) == SW_OK, "valid run_ex");
        CHECK(sw_core_steps_done(core, &steps) == SW_OK && steps == 7, "7 steps done");
    }
    /* state */
    CHECK(sw_core_state_size(core, &size) == SW_OK && size > 0 && size < (int64_t)sizeof blob, "state size");
    CHECK(sw_core_save_state(core, blob, size - 1) == SW_E_BUFFER, "short save buffer");
    CHECK(sw_core_save_state(core, blob, size) == SW_OK, "save");
    CHECK(sw_core_load_state(core, blob, size - 1) == SW_E_STATE, "short state");
    blob[0] ^= 0xFF;
    CHECK(sw_core_load_state(core, blob, size) == SW_E_STATE, "bad magic");
    blob[0] ^= 0xFF;
    {
        uint32_t crc;
        blob[size - 5] = 100; /* the last weight out of range, behind a valid CRC */
        sw_crc32(blob, size - 4, &crc);
        blob[size - 4] = (uint8_t)crc; blob[size - 3] = (uint8_t)(crc >> 8);
        blob[size - 2] = (uint8_t)(crc >> 16); blob[size - 1] = (uint8_t)(crc >> 24);
        CHECK(sw_core_load_state(core, blob, size) == SW_E_STATE &&
              strstr(sw_core_last_error(core), "weight outside") != NULL, "weight out of range in state");
    }
    CHECK(sw_core_load_state(core, NULL, size) == SW_E_NULL, "NULL state");
    {
        /* state blob v2: every single-bit flip is refused (CRC-32), the intact blob loads */
        int64_t bit, refused = 0;
        uint32_t crc = 0;
        CHECK(sw_core_save_state(core, blob, size) == SW_OK, "save again");
        for (bit = 0; bit < size * 8; bit++) {
            blob[bit / 8] ^= (uint8_t)(1u << (bit % 8));
            refused += sw_core_load_state(core, blob, size) == SW_E_STATE;
            blob[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        }
        CHECK(refused == size * 8, "state blob: %lld of %lld single-bit flips refused",
              (long long)refused, (long long)(size * 8));
        CHECK(sw_core_load_state(core, blob, size) == SW_OK, "intact blob loads");
        CHECK(sw_crc32((const uint8_t *)"123456789", 9, &crc) == SW_OK && crc == 0xCBF43926u,
              "CRC-32 check value");
        blob[4] = 1; /* version 1 */
        CHECK(sw_core_load_state(core, blob, size) == SW_E_STATE &&
              strstr(sw_core_last_error(core), "version 1") != NULL, "version 1 blob refused by name");
    }
    CHECK(sw_core_get_membrane(core, 5, ov, 4) == SW_E_PARAM, "bad population");
    CHECK(sw_core_get_membrane(core, SW_POP_HIDDEN, ov, 3) == SW_E_SIZE, "bad membrane count");
    /* NULL / dead contexts */
    CHECK(sw_core_run(NULL, 2, ip, ch, 3, spk, NULL, ov, cadc, NULL) == SW_E_NULL, "run NULL ctx");
    CHECK(sw_core_step(NULL, ch, 1, spk, NULL, ov, cadc) == SW_E_NULL, "step NULL ctx");
    CHECK(sw_core_reset(NULL) == SW_E_NULL, "reset NULL ctx");
    CHECK(sw_core_set_weights(NULL, SW_W_IN, w, 12) == SW_E_NULL, "weights NULL ctx");
    CHECK(sw_core_destroy(NULL) == SW_OK, "destroy NULL");
    CHECK(strlen(sw_strerror(SW_E_CHANNEL)) > 0 && strlen(sw_strerror(12345)) > 0, "strerror");
    CHECK(sw_core_destroy(core) == SW_OK, "destroy");
    /* a zero-readout network is valid */
    c2 = cfg; c2.n_out = 0;
    CHECK(sw_core_create(&c2, &p, NULL, &tmp) == SW_OK, "n_out 0 with NULL readout params");
    CHECK(sw_core_run(tmp, 2, ip, ch, 3, spk, NULL, NULL, NULL, NULL) == SW_OK, "run n_out 0");
    sw_core_destroy(tmp);
    printf("malformed calls checked\n");
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "tests/golden/core_v1.txt";
    int cases;
    test_malformed();
    cases = golden_each_case(path, run_golden_case);
    if (cases < 0)
        return 2;
    CHECK(cases >= 4, "golden file has %d cases", cases);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
