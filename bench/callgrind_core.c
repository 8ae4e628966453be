/*
 * callgrind_core.c -- a fixed, repeatable instruction count of the core's
 * block mode on the peer workload (shared/bench/WORKLOAD.md, as built by
 * runtime/bench_core.py).  bench/callgrind.sh dumps the workload with
 * Python, builds this with the extension's flags and runs it under
 * valgrind --tool=callgrind, counting only sw_core_run_ex (sw_core_run is a thin wrapper).
 *
 *   callgrind_core WORKLOAD.bin MODE
 *   MODE 0: sw_core_run with spikes, out_v, cadc (what Core.run asks for)
 *   MODE 1: sw_core_run_ex with every per-step output of sw_run_out
 *   MODE 2: the plain reference kernel, sw_core_run
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
    int32_t *h, *p;
    int32_t nh, no, T, mode, i;
    int64_t nev, nsp = 0, *indptr;
    sw_config cfg;
    sw_pop_params hid, out;
    sw_core *core;
    int8_t *w_in, *w_rec, *w_out;
    int32_t *ch;
    uint8_t *spk, *cadc, *hcadc, *href;
    int16_t *ov, *hv, *hvpre;
    int st;
    if (argc != 3) {
        fprintf(stderr, "usage: callgrind_core WORKLOAD.bin MODE\n");
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
    cfg.n_in = h[0]; cfg.n_hid = nh = h[1]; cfg.n_out = no = h[2];
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
    w_in = (int8_t *)rd(f, (size_t)cfg.n_in * nh);
    w_rec = (int8_t *)rd(f, (size_t)nh * nh);
    w_out = (int8_t *)rd(f, (size_t)nh * no);
    indptr = (int64_t *)rd(f, (size_t)(T + 1) * sizeof(int64_t));
    ch = (int32_t *)rd(f, (size_t)nev * sizeof(int32_t));
    fclose(f);
    if ((st = sw_core_create(&cfg, &hid, &out, &core)) != SW_OK) {
        fprintf(stderr, "create: %s %s\n", sw_strerror(st), sw_create_error());
        return 1;
    }
    sw_core_set_weights(core, SW_W_IN, w_in, (int64_t)cfg.n_in * nh);
    sw_core_set_weights(core, SW_W_REC, w_rec, (int64_t)nh * nh);
    sw_core_set_weights(core, SW_W_OUT, w_out, (int64_t)nh * no);
    if (mode == 2)
        sw_core_set_kernel(core, 1);
    spk = (uint8_t *)malloc((size_t)T * nh);
    hv = (int16_t *)malloc((size_t)T * nh * 2);
    hvpre = (int16_t *)malloc((size_t)T * nh * 2);
    hcadc = (uint8_t *)malloc((size_t)T * nh);
    href = (uint8_t *)malloc((size_t)T * nh);
    ov = (int16_t *)malloc((size_t)T * no * 2);
    cadc = (uint8_t *)malloc((size_t)T * no);
    for (i = 0; i < 2; i++) { /* the second run is the one to read (warm caches) */
        sw_core_reset(core);
        if (mode == 1) {
            sw_run_out o;
            memset(&o, 0, sizeof o);
            o.struct_size = (int32_t)sizeof o;
            o.max_steps = T;
            o.hid_spikes = spk; o.hid_v = hv; o.hid_v_pre = hvpre; o.hid_ref = href;
            o.hid_cadc = hcadc; o.out_v = ov; o.out_cadc = cadc;
            st = sw_core_run_ex(core, T, indptr, ch, nev, &o);
            nsp = o.n_spikes;
        } else {
            st = sw_core_run(core, T, indptr, ch, nev, spk, NULL, ov, cadc, &nsp);
        }
        if (st != SW_OK) {
            fprintf(stderr, "run: %s %s\n", sw_strerror(st), sw_core_last_error(core));
            return 1;
        }
    }
    printf("steps %d hidden_spikes %lld spikes_per_step %.3f\n", (int)T, (long long)nsp, (double)nsp / T);
    sw_core_destroy(core);
    return 0;
}
