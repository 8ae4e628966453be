#!/usr/bin/env bash
# Instructions per step of the core on the peer workload, under callgrind
# (repeatable, unlike wall time on a shared machine).  Needs valgrind and an
# installed spikewire (the workload is built by spikewire.bench_core).
#   bash bench/callgrind.sh [MODE ...]     (modes: see bench/callgrind_core.c)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
[ -n "${KEEP:-}" ] || trap 'rm -rf "$out"' EXIT; echo "work dir $out"
python -P - "$out/workload.bin" <<'PY'
import sys
import numpy as np
from spikewire import bench_core as b
from spikewire.config import fixed_params
core = b.build_core()
c = core.config
hid, out = fixed_params(c, core.chip)
ev = b.workload_input(0)
with open(sys.argv[1], "wb") as f:
    f.write(np.array([c.n_in, c.n_hid, c.n_out, c.shift_in, c.shift_rec, c.shift_out,
                      c.t_ref_steps, b.T, len(ev.channels), 0], "<i4").tobytes())
    for pop in (hid, out):
        for name in pop.FIELDS:
            f.write(np.asarray(getattr(pop, name), "<i4").tobytes())
    for w in ("in", "rec", "out"):
        f.write(core.get_weights(w).tobytes())
    f.write(np.asarray(ev.indptr, "<i8").tobytes())
    f.write(np.asarray(ev.channels, "<i4").tobytes())
PY
# the extension's flags (runtime/_build.py PORTABLE_FLAGS)
cc -std=c99 -O3 -fsigned-char -ffp-contract=off -fwrapv -Icsrc bench/callgrind_core.c csrc/core.c \
    -o "$out/callgrind_core"
modes=("$@")
[ ${#modes[@]} -gt 0 ] || modes=(0)
for m in "${modes[@]}"; do
    valgrind --tool=callgrind --callgrind-out-file="$out/cg.$m" \
        --toggle-collect=sw_core_run_ex \
        "$out/callgrind_core" "$out/workload.bin" "$m" 2>"$out/vg.$m" | tee "$out/stdout.$m"
    ir=$(grep -E '^(summary|totals):' "$out/cg.$m" | head -1 | awk '{print $2}')
    steps=$(awk '{print $2}' "$out/stdout.$m")
    # two runs of T steps are collected
    echo "mode $m: $ir instructions in sw_core_run_ex, $(( ir / (2 * steps) )) instr/step"
done
