/*
 * callgrind_learn.c -- a fixed, repeatable instruction count of the learning
 * kernels (csrc/learn.c) on the e-prop workload of runtime/bench_learn.py
 * (peer workload v1, mode C).  bench/callgrind_learn.sh dumps the workload
 * and the learner's integer tables with Python, builds this with the
 * extension's flags and runs it under valgrind --tool=callgrind, counting
 * only sw_learn_run and sw_learn_flush.
 *
 *   callgrind_learn WORKLOAD.bin MODE
 *   MODE 0: the fast kernel (default)
 *   MODE 1: the plain reference kernel
 *
 * The core runs the sample once (sw_core_run_ex: spikes, pre-reset membranes,
 * refractory counters, readout membranes); the learner then runs it twice
 * from fresh traces, the way the benchmark does.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spikewire.h"

static void *rd(FILE *f, size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p || fread(p, 1, n, f) != n) {
        fprintf(stderr, "workload file too short\n");
        exit(2);
    }
    return p;
}

int main(int argc, char **argv)
{
    FILE *f;
    int32_t *h, *p, *lh;
    int32_t nh, no, ni, T, mode, i, t, j;
    int64_t nev, nsp = 0, *indptr;
    sw_config cfg;
    sw_pop_params hid, out;
    sw_learn_config lc;
    sw_core *core;
    sw_learn *learn;
    sw_run_out o;
    int8_t *w_in, *w_rec, *w_out, *fb, *modes;
    int32_t *ch;
    uint8_t *spk, *href, *refr;
    int16_t *ov, *hvpre;
    int st;
    if (argc != 3) {
        fprintf(stderr, "usage: callgrind_learn WORKLOAD.bin MODE\n");
        return 2;
    }
    mode = atoi(argv[2]);
    f = fopen(argv[1], "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", argv[1]);
        return 2;
    }
    h = (int32_t *)rd(f, 10 * sizeof(int32_t));
    memset(&cfg, 0, sizeof cfg);
    cfg.abi_version = SW_ABI_VERSION;
    cfg.struct_size = (int32_t)sizeof cfg;
    cfg.n_in = ni = h[0]; cfg.n_hid = nh = h[1]; cfg.n_out = no = h[2];
    cfg.shift_in = h[3]; cfg.shift_rec = h[4]; cfg.shift_out = h[5];
    cfg.t_ref = h[6]; T = h[7]; nev = h[8];
    cfg.cadc_base = -8192; cfg.cadc_shift = 6;
    cfg.preset = SW_PRESET_UNBOUNDED;
    p = (int32_t *)rd(f, (size_t)(6 * nh) * sizeof(int32_t));
    hid.decay_syn = p; hid.gain_mem = p + nh; hid.v_leak = p + 2 * nh;
    hid.v_th = p + 3 * nh; hid.v_reset = p + 4 * nh; hid.g_syn = p + 5 * nh;
    p = (int32_t *)rd(f, (size_t)(6 * no) * sizeof(int32_t));
    out.decay_syn = p; out.gain_mem = p + no; out.v_leak = p + 2 * no;
    out.v_th = p + 3 * no; out.v_reset = p + 4 * no; out.g_syn = p + 5 * no;
    w_in = (int8_t *)rd(f, (size_t)ni * nh);
    w_rec = (int8_t *)rd(f, (size_t)nh * nh);
    w_out = (int8_t *)rd(f, (size_t)nh * no);
    indptr = (int64_t *)rd(f, (size_t)(T + 1) * sizeof(int64_t));
    ch = (int32_t *)rd(f, (size_t)nev * sizeof(int32_t));
    /* the learner: 17 config integers, tables, feedback, target modes */
    lh = (int32_t *)rd(f, 17 * sizeof(int32_t));
    memset(&lc, 0, sizeof lc);
    lc.n_in = ni; lc.n_hid = nh; lc.n_out = no;
    lc.rule = lh[0]; lc.learn_mask = lh[1];
    lc.rate_in = lh[2]; lc.rate_rec = lh[3]; lc.rate_out = lh[4];
    lc.signal_shift = lh[5]; lc.trace_shift = lh[6]; lc.surrogate_log2 = lh[7];
    lc.target_hi = lh[8]; lc.target_lo = lh[9]; lc.weights = lh[10];
    lc.post_A = lh[11]; lc.post_G = lh[12]; lc.out_A = lh[13]; lc.out_G = lh[14];
    lc.eligibility = lh[16];
    p = (int32_t *)rd(f, (size_t)(4 * nh + no) * sizeof(int32_t));
    lc.pre_A = p; lc.pre_G = p + nh; lc.g_hid = p + 2 * nh; lc.v_th = p + 3 * nh; lc.g_out = p + 4 * nh;
    fb = (int8_t *)rd(f, (size_t)nh * no);
    lc.feedback = lh[15] ? fb : NULL;
    modes = (int8_t *)rd(f, (size_t)no);
    fclose(f);
    if ((st = sw_core_create(&cfg, &hid, &out, &core)) != SW_OK) {
        fprintf(stderr, "create: %s %s\n", sw_strerror(st), sw_create_error());
        return 1;
    }
    sw_core_set_weights(core, SW_W_IN, w_in, (int64_t)ni * nh);
    sw_core_set_weights(core, SW_W_REC, w_rec, (int64_t)nh * nh);
    sw_core_set_weights(core, SW_W_OUT, w_out, (int64_t)nh * no);
    spk = (uint8_t *)malloc((size_t)T * nh);
    href = (uint8_t *)malloc((size_t)T * nh);
    refr = (uint8_t *)malloc((size_t)T * nh);
    hvpre = (int16_t *)malloc((size_t)T * nh * 2);
    ov = (int16_t *)malloc((size_t)T * no * 2);
    memset(&o, 0, sizeof o);
    o.struct_size = (int32_t)sizeof o;
    o.max_steps = T;
    o.hid_spikes = spk; o.hid_v_pre = hvpre; o.hid_ref = href; o.out_v = ov;
    if ((st = sw_core_run_ex(core, T, indptr, ch, nev, &o)) != SW_OK) {
        fprintf(stderr, "run: %s %s\n", sw_strerror(st), sw_core_last_error(core));
        return 1;
    }
    nsp = o.n_spikes;
    for (t = 0; t < T; t++)   /* refractory at the start of step t */
        for (j = 0; j < nh; j++)
            refr[(int64_t)t * nh + j] = t == 0 ? 0 : href[(int64_t)(t - 1) * nh + j] > 0;
    if ((st = sw_learn_create(&lc, &learn)) != SW_OK) {
        fprintf(stderr, "learn create: %s %s\n", sw_strerror(st), sw_learn_last_error(NULL));
        return 1;
    }
    sw_learn_set_weights(learn, SW_W_IN, w_in, (int64_t)ni * nh);
    sw_learn_set_weights(learn, SW_W_REC, w_rec, (int64_t)nh * nh);
    sw_learn_set_weights(learn, SW_W_OUT, w_out, (int64_t)nh * no);
    sw_learn_set_target(learn, modes, no);
    sw_learn_set_kernel(learn, mode == 1 ? 1 : 0);
    for (i = 0; i < 2; i++) {   /* two samples from fresh traces */
        sw_learn_reset_traces(learn);
        st = sw_learn_run(learn, T, indptr, ch, nev, spk, hvpre, refr, ov);
        if (st == SW_OK)
            st = sw_learn_flush(learn);   /* the events form credits what is pending */
        if (st != SW_OK) {
            fprintf(stderr, "learn run: %s %s\n", sw_strerror(st), sw_learn_last_error(learn));
            return 1;
        }
    }
    printf("steps %d hidden_spikes %lld spikes_per_step %.3f\n", (int)T, (long long)nsp, (double)nsp / T);
    sw_learn_destroy(learn);
    sw_core_destroy(core);
    return 0;
}
