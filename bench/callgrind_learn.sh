#!/usr/bin/env bash
# Instructions per step of the learning kernels on the e-prop workload
# (runtime/bench_learn.py, peer workload v1 mode C) under callgrind
# (repeatable, unlike wall time on a shared machine).  Needs valgrind and an
# installed spikewire.
#   bash bench/callgrind_learn.sh [MODE ...]    (0 fast kernel, 1 plain; see bench/callgrind_learn.c)
#   SURROGATE_LOG2=10 bash bench/callgrind_learn.sh 0    (another surrogate width)
#   STEPS=200 ...                                        (a shorter sample; the plain kernel is slow)
#   ELIGIBILITY=events ...                               (the events form, docs/learning.md)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
[ -n "${KEEP:-}" ] || trap 'rm -rf "$out"' EXIT; echo "work dir $out"
python -P - "$out/workload.bin" "${SURROGATE_LOG2:-12}" "${STEPS:-1000}" "${ELIGIBILITY:-traces}" <<'PY'
import sys
import numpy as np
from spikewire import bench_core as b, bench_learn as bl
from spikewire.config import fixed_params
from spikewire.events import Events
from spikewire.learning import feedback_matrix, tables, target_modes
core, learner, lc = bl.build(int(sys.argv[2]), eligibility=sys.argv[4])
c = core.config
hid, out = fixed_params(c, core.chip)
ev = b.workload_input(0)
T = int(sys.argv[3])
ev = Events(np.asarray(ev.indptr)[:T + 1], np.asarray(ev.channels)[:ev.indptr[T]])
t = tables(c, hid, out, lc)
w_out = core.get_weights("out")
with open(sys.argv[1], "wb") as f:
    f.write(np.array([c.n_in, c.n_hid, c.n_out, c.shift_in, c.shift_rec, c.shift_out,
                      c.t_ref_steps, T, len(ev.channels), 0], "<i4").tobytes())
    for pop in (hid, out):
        for name in pop.FIELDS:
            f.write(np.asarray(getattr(pop, name), "<i4").tobytes())
    for w in ("in", "rec", "out"):
        f.write(core.get_weights(w).tobytes())
    f.write(np.asarray(ev.indptr, "<i8").tobytes())
    f.write(np.asarray(ev.channels, "<i4").tobytes())
    mask = sum({"in": 1, "rec": 2, "out": 4}[m] for m in lc.learn)
    f.write(np.array([0, mask, lc.rate_in, lc.rate_rec, lc.rate_out, lc.signal_shift, lc.trace_shift,
                      lc.surrogate_log2, lc.target_hi, lc.target_lo, 0 if lc.weights == "shadow" else 1,
                      t.post_A, t.post_G, t.out_A, t.out_G, lc.feedback != "symmetric",
                      lc.eligibility == "events"], "<i4").tobytes())
    assert lc.rule == "eprop"
    for a in (t.pre_A, t.pre_G, t.g_hid, t.v_th, t.g_out):
        f.write(np.asarray(a, "<i4").tobytes())
    f.write(feedback_matrix(lc, w_out).astype(np.int8).tobytes())
    f.write(target_modes(c.n_out, label=bl.LABEL).tobytes())
PY
# the extension's flags (runtime/_build.py PORTABLE_FLAGS)
cc -std=c99 -O3 -fsigned-char -ffp-contract=off -fwrapv -Icsrc bench/callgrind_learn.c csrc/core.c csrc/learn.c \
    -o "$out/callgrind_learn"
modes=("$@")
[ ${#modes[@]} -gt 0 ] || modes=(0)
for m in "${modes[@]}"; do
    valgrind --tool=callgrind --callgrind-out-file="$out/cg.$m" \
        --toggle-collect=sw_learn_run --toggle-collect=sw_learn_flush \
        "$out/callgrind_learn" "$out/workload.bin" "$m" 2>"$out/vg.$m" | tee "$out/stdout.$m"
    ir=$(grep -E '^(summary|totals):' "$out/cg.$m" | head -1 | awk '{print $2}')
    steps=$(awk '{print $2}' "$out/stdout.$m")
    # two runs of T steps are collected
    echo "mode $m (${ELIGIBILITY:-traces}, surrogate_log2 ${SURROGATE_LOG2:-12}): $ir instructions in sw_learn_run + flush, $(( ir / (2 * steps) )) instr/step"
done
