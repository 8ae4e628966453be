"""Generate tests/golden/learn_v1.txt (and with --si learn_si_v1.txt): golden vectors that pin the
learning rules' arithmetic (and synaptic intelligence's, docs/learning.md "Consolidation").

Run from the repository root:  python tests/golden/make_golden_learn.py [--si]
Regenerate ONLY when the rules are changed on purpose (docs/learning.md), and say so in the
commit message.  Read by tests/test_learn_c.py (numpy reference and C) and by tests/c/test_learn.c
(natively, under the sanitizers, with clang, and on aarch64 under qemu).

Each case stores a learner config, its integer tables, weights, one target, and a recorded core
trajectory (events, spikes, pre-reset membranes, refractory flags, readout membranes), so the
C test needs no core.  Format ('#' lines are comments, otherwise whitespace-separated tokens):
  case NAME
  lconfig n_in n_hid n_out rule learn_mask rate_in rate_rec rate_out signal_shift trace_shift
          surrogate_log2 target_hi target_lo weights sr_seed post_A post_G out_A out_G has_feedback
          eligibility (0 traces, 1 events)
  pre_A <n_hid>  pre_G <n_hid>  g_hid <n_hid>  v_th <n_hid>  g_out <n_out>
  feedback <n_hid*n_out>                       (only when has_feedback)
  w_in <n_in*n_hid>  w_rec <n_hid*n_hid>  w_out <n_hid*n_out>  modes <n_out>
  events T <T+1 indptr> <indptr[T] channels>
  z <T*n_hid>  v_pre <T*n_hid>  refr <T*n_hid>  y <T*n_out>
  expect FNV1A64_ACC FNV1A64_WEIGHTS
  end
FNV1A64_ACC is FNV-1a 64 over the accumulators in, rec, out (int32 little-endian) after the run
and a flush (which credits the events form's pending steps; nothing to do for traces);
FNV1A64_WEIGHTS over the weights in, rec, out (int8) after one commit.

learn_si_v1.txt has the same cases with synaptic intelligence on: one more line after lconfig,
  si si_c_log2 si_xi_log2
the trajectory is learnt four times (each time: traces reset, run, flush, commit), with a
consolidation after the first and the third, and the expect line has three hashes:
  expect FNV1A64_ACC FNV1A64_WEIGHTS FNV1A64_SI
over the final accumulators, weights, and the SI state: for each learning matrix in, rec, out
its prev, omega, importance, anchor (int32 little-endian).
"""
from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # golden_io, also under -P

from golden_io import fnv1a64, ints, write_golden  # noqa: E402
from spikewire.config import Chip, CoreConfig, fixed_params  # noqa: E402
from spikewire.events import Events  # noqa: E402
from spikewire.learning import (LearningConfig, ReferenceLearner, feedback_matrix,  # noqa: E402
                                reference_step_pre, tables, target_modes)
from spikewire.reference import ReferenceCore  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "learn_v1.txt")
OUT_SI = os.path.join(HERE, "learn_si_v1.txt")
RULES = {"eprop": 0, "superspike": 1, "readout": 2}
MASK = {"in": 1, "rec": 2, "out": 4}


def acc_hash(acc: dict) -> int:
    return fnv1a64(*(np.ascontiguousarray(acc[m], "<i4").tobytes() for m in ("in", "rec", "out")))


def weight_hash(w: dict) -> int:
    return fnv1a64(*(np.ascontiguousarray(w[m], np.int8).tobytes() for m in ("in", "rec", "out")))


CASES = [
    ("eprop_shadow_symmetric", 11, LearningConfig(learn=("in", "rec", "out"), rate_in=10, rate_rec=10, rate_out=8,
                                                  signal_shift=6, trace_shift=11), "label"),
    ("superspike_stochastic_random", 12, LearningConfig(rule="superspike", learn=("in", "rec"), rate_in=6, rate_rec=6,
                                                        signal_shift=4, feedback="random", feedback_seed=99,
                                                        weights="stochastic", sr_seed=1234, trace_shift=12,
                                                        surrogate_log2=13), "reward-"),
    ("readout_stochastic", 13, LearningConfig(rule="readout", learn=("out",), rate_out=4, signal_shift=2,
                                              weights="stochastic", sr_seed=7), "reward+"),
    ("eprop_uniform_saturating", 14, LearningConfig(learn=("in", "out"), rate_in=0, rate_out=0, signal_shift=0,
                                                    trace_shift=14, surrogate_log2=15, feedback="uniform"), "label"),
    # the events form: short SuperSpike kernels (window < T: credited in the run and by the flush),
    # and e-prop with each neuron's mismatched filters (window > T: credited by the flush)
    ("superspike_events_short", 15, LearningConfig(rule="superspike", learn=("in", "rec", "out"), eligibility="events",
                                                   ss_tau_rise_ms=1.0, ss_tau_decay_ms=2.0, rate_in=4, rate_rec=4,
                                                   rate_out=6, signal_shift=2, feedback="random",
                                                   feedback_seed=5), "label"),
    ("eprop_events_mismatch", 16, LearningConfig(learn=("in", "rec"), eligibility="events", rate_in=8, rate_rec=8,
                                                 signal_shift=4, weights="stochastic", sr_seed=3), "reward-"),
]


SI_CASES = [
    ("si_eprop_shadow_traces", 21, LearningConfig(learn=("in", "rec", "out"), rate_in=12, rate_rec=12, rate_out=9,
                                                  signal_shift=5, trace_shift=11, si=True, si_c_log2=4,
                                                  si_xi_log2=-2), "label"),
    ("si_superspike_events_stochastic", 22, LearningConfig(rule="superspike", learn=("in", "out"), eligibility="events",
                                                           ss_tau_rise_ms=1.0, ss_tau_decay_ms=2.0, rate_in=7,
                                                           rate_out=8, signal_shift=3, weights="stochastic", sr_seed=9,
                                                           si=True, si_c_log2=12, si_xi_log2=-6), "reward-"),
    ("si_readout_shadow", 23, LearningConfig(rule="readout", learn=("out",), rate_out=7, signal_shift=2, si=True,
                                             si_c_log2=-2, si_xi_log2=0), "reward+"),
]
SI_ROUNDS, SI_CONSOLIDATE_AFTER = 4, (0, 2)


def si_hash(learner) -> int:
    """prev, omega, importance, anchor of every learning matrix (in, rec, out), int32 little-endian;
    ``learner`` is a ReferenceLearner or a C Learner."""
    chunks = []
    for m in ("in", "rec", "out"):
        if m not in learner.lc.learn:
            continue
        for k in ("prev", "omega", "importance", "anchor"):
            if isinstance(learner, ReferenceLearner):
                a = {"prev": learner.si_prev, "omega": learner.si_omega, "importance": learner.si_importance,
                     "anchor": learner.si_anchor}[k][m]
            else:
                a = learner.si_state(m, k)
            chunks.append(np.ascontiguousarray(a, "<i4").tobytes())
    return fnv1a64(*chunks)


def si_rounds(learner, modes, ev, rec, step=None) -> None:
    """The SI cases' procedure: SI_ROUNDS stretches over the recorded trajectory (traces reset, run,
    flush, commit), a consolidation after the rounds in SI_CONSOLIDATE_AFTER.  ``step`` drives a
    ReferenceLearner one step at a time; without it ``learner`` is a C Learner."""
    for r in range(SI_ROUNDS):
        learner.reset_traces()
        learner.set_target(modes)
        if step is not None:
            step(learner)
        else:
            learner.run(ev, rec["z"], rec["v_pre"], rec["refr"], rec["y"])
        learner.flush()
        learner.commit()
        if r in SI_CONSOLIDATE_AFTER:
            learner.consolidate()


def build_si(seed: int, lc: LearningConfig, target: str):
    config, hid, out, w, modes, ev, rec, _, _ = build(seed, dataclasses.replace(lc, si=False), target)
    ip, ch = np.asarray(ev.indptr), np.asarray(ev.channels)
    T = len(ip) - 1

    def step(ref):
        for t in range(T):
            counts = np.bincount(ch[ip[t]:ip[t + 1]], minlength=config.n_in)
            z_prev = rec["z"][t - 1] if t else np.zeros(config.n_hid, bool)
            ref.step(counts, z_prev, rec["v_pre"][t], rec["refr"][t], rec["z"][t], rec["y"][t])

    ref = ReferenceLearner(config, hid, out, lc, w)
    si_rounds(ref, modes, ev, rec, step)
    assert any(ref.si_importance[m].any() for m in lc.learn), "an SI case without importance pins nothing"
    return config, hid, out, w, modes, ev, rec, acc_hash(ref.acc), weight_hash(ref.w), si_hash(ref)


def build(seed: int, lc: LearningConfig, target: str):
    rng = np.random.default_rng([seed, 5])
    config = CoreConfig(n_in=9, n_hid=7, n_out=3, shift_in=7, shift_rec=5, t_ref_steps=1, noise_amp=200,
                        noise_seed=seed)
    hid, out = fixed_params(config, Chip(seed=seed, threshold=0.1, decay=0.1, gain=0.1))
    w = {"in": rng.integers(-20, 64, (9, 7)).astype(np.int8), "rec": rng.integers(-25, 26, (7, 7)).astype(np.int8),
         "out": rng.integers(-63, 64, (7, 3)).astype(np.int8)}
    T = 60
    counts = rng.poisson(0.4 if lc.trace_shift < 14 else 3.0, (T, 9))
    ev = Events.from_raster(counts)
    ip, ch = np.asarray(ev.indptr), np.asarray(ev.channels)
    core = ReferenceCore(config, hid, out)
    core.w_in, core.w_rec, core.w_out = w["in"], w["rec"], w["out"]
    ref = ReferenceLearner(config, hid, out, lc, w)
    modes = {"label": target_modes(3, label=1), "reward-": target_modes(3, reward=-1, decided=2),
             "reward+": target_modes(3, reward=1, decided=0)}[target]
    ref.set_target(modes)
    rec = {k: [] for k in ("z", "v_pre", "refr", "y")}
    for t in range(T):
        z_prev, v_pre, refr, z, y = reference_step_pre(core, ch[ip[t]:ip[t + 1]])
        ref.step(counts[t], z_prev, v_pre, refr, z, y)
        for k, v in zip(rec, (z, v_pre, refr, y)):
            rec[k].append(v)
    ref.flush()
    h_acc = acc_hash(ref.acc)
    ref.commit()
    h_w = weight_hash(ref.w)
    return config, hid, out, w, modes, ev, {k: np.array(v) for k, v in rec.items()}, h_acc, h_w


def main(argv=None) -> int:
    si = "--si" in (sys.argv[1:] if argv is None else argv)
    lines = []
    for name, seed, lc, target in (SI_CASES if si else CASES):
        if si:
            config, hid, out, w, modes, ev, rec, h_acc, h_w, h_si = build_si(seed, lc, target)
        else:
            config, hid, out, w, modes, ev, rec, h_acc, h_w = build(seed, lc, target)
        t = tables(config, hid, out, lc)
        has_fb = lc.feedback != "symmetric"
        lines += [f"case {name}",
                  "lconfig " + ints([config.n_in, config.n_hid, config.n_out, RULES[lc.rule],
                                     sum(MASK[m] for m in lc.learn), lc.rate_in, lc.rate_rec, lc.rate_out,
                                     lc.signal_shift, lc.trace_shift, lc.surrogate_log2, lc.target_hi,
                                     lc.target_lo, 0 if lc.weights == "shadow" else 1, lc.sr_seed, t.post_A,
                                     t.post_G, t.out_A, t.out_G, int(has_fb), int(lc.eligibility == "events")])]
        if si:
            lines.append(f"si {lc.si_c_log2} {lc.si_xi_log2}")
        lines += ["pre_A " + ints(t.pre_A), "pre_G " + ints(t.pre_G), "g_hid " + ints(t.g_hid),
                  "v_th " + ints(t.v_th), "g_out " + ints(t.g_out)]
        if has_fb:
            lines.append("feedback " + ints(feedback_matrix(lc, w["out"])))
        lines += ["w_in " + ints(w["in"]), "w_rec " + ints(w["rec"]), "w_out " + ints(w["out"]),
                  "modes " + ints(modes),
                  f"events {ev.n_steps} " + ints(ev.indptr) + (" " + ints(ev.channels) if ev.n_events else ""),
                  "z " + ints(rec["z"]), "v_pre " + ints(rec["v_pre"]), "refr " + ints(rec["refr"]),
                  "y " + ints(rec["y"]),
                  f"expect {h_acc:016x} {h_w:016x}" + (f" {h_si:016x}" if si else ""), "end"]
    if si:
        write_golden(OUT_SI, "spikewire learning golden vectors, synaptic intelligence, v1 -- pins docs/learning.md "
                     "\"Consolidation\"", "make_golden_learn.py", "from the numpy reference", lines)
    else:
        write_golden(OUT, "spikewire learning golden vectors v1 -- pins the learning rules (docs/learning.md)",
                     "make_golden_learn.py", "from the numpy reference", lines)
    print(f"wrote {OUT_SI if si else OUT} ({len(SI_CASES if si else CASES)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
