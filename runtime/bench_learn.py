"""`spikewire bench core --learn`: the e-prop workload (mode C) of the peer benchmark on the C core.

The network and input are those of ``spikewire bench core`` (shared/bench/WORKLOAD.md: 700
Poisson inputs at p = 10/700 -> 256 recurrent LIF -> 20 leaky readouts, 1000 x 1 ms steps).
Learning as mode C asks: e-prop with random feedback, every input and recurrent synapse
(700 x 256 + 256 x 256 = 244,736) carries its traces, the readout learns too, and the target
(class 3: unit 3 HI, the others LO) gives a learning signal every step.  The workload's
pseudo-derivative ``0.3 max(0, 1 - |V - 1|)`` has a support of one threshold on either side,
which is ``surrogate_log2 = 12`` here (threshold = 4096 units; docs/learning.md).

Measured (one process, one core):

- ``learn_steps_per_s``: core and learner in blocks, ``Core.run_ex`` over the 1000-step sample
  (spikes, pre-reset membranes, refractory counters, readout membranes) then ``Learner.run``
  over the same steps, state reset before each sample;
- ``learner_steps_per_s``: ``Learner.run`` alone on the recorded sample;
- ``core_steps_per_s``: ``Core.run_ex`` alone with the same outputs;
- ``learn_stream_steps_per_s``: one ``run_ex`` and one ``Learner.run`` call per 1 ms step.

Each figure: one warm-up, then ``runs`` timed runs; a run repeats the sample until it lasts at
least ``min_run_s``; reported as best and median (and all runs) in steps per second.  Wall
time on a shared machine moves with the load; ``bench/callgrind_learn.sh`` counts
instructions per step instead (repeatable).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time

import numpy as np

from . import bench_core as bc
from .config import fixed_params
from .core import Core, Events
from .learner import Learner
from .learning import MATRICES, LearningConfig, surrogate, target_modes

LABEL = 3                         # the workload's one-hot target class
RECORD = ("spikes", "hid_v_pre", "hid_ref", "out_v")


def learning_config(surrogate_log2: int = 12, eligibility: str = "traces") -> LearningConfig:
    """Mode C: e-prop, random feedback, every matrix learns."""
    return LearningConfig(rule="eprop", learn=("in", "rec", "out"), feedback="random", feedback_seed=20241123,
                          surrogate_log2=surrogate_log2, eligibility=eligibility)


def build(surrogate_log2: int = 12, kernel: str = "fast",
          eligibility: str = "traces") -> tuple[Core, Learner, LearningConfig]:
    core = bc.build_core()
    core.kernel = kernel
    lc = learning_config(surrogate_log2, eligibility)
    hid, out = fixed_params(core.config, core.chip)
    learner = Learner(core.config, hid, out, lc, {m: core.get_weights(m) for m in MATRICES})
    learner.kernel = kernel
    learner.set_target(target_modes(core.config.n_out, label=LABEL))
    return core, learner, lc


def refractory_at_start(hid_ref: np.ndarray, before: np.ndarray) -> np.ndarray:
    """The learner's refractory flags: refractory at the start of step t = counter after t-1 > 0."""
    refr = np.empty(hid_ref.shape, np.uint8)
    refr[0] = before
    refr[1:] = hid_ref[:-1] > 0
    return refr


def learn_block(core: Core, learner: Learner, ev: Events, refr_before: np.ndarray) -> dict:
    """One block: the core over ``ev``, then the learner over what it computed."""
    o = core.run_ex(ev, record=RECORD)
    refr = refractory_at_start(o.hid_ref, refr_before)
    learner.run(ev, o.spikes, o.hid_v_pre, refr, o.out_v)
    return {"z": o.spikes, "v_pre": o.hid_v_pre, "refr": refr, "y": o.out_v, "hid_ref": o.hid_ref,
            "n_spikes": o.n_spikes}


def _runs(fn, runs: int, min_run_s: float) -> list[float]:
    """Seconds per call of fn: one warm-up, then runs timed runs of >= min_run_s each."""
    t0 = time.perf_counter()
    fn()
    reps = max(1, math.ceil(min_run_s / max(time.perf_counter() - t0, 1e-9)))
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        out.append((time.perf_counter() - t0) / reps)
    return out


def _rates(seconds: list[float], steps: int) -> dict:
    r = sorted(steps / s for s in seconds)
    return {"best": round(r[-1]), "median": round(statistics.median(r)), "min": round(r[0]),
            "all": [round(x) for x in r]}


def run(json_path: str | None = None, runs: int = 5, kernel: str = "fast", surrogate_log2: int = 12,
        n_steps: int = bc.T, min_run_s: float = 0.2, stream: bool = True, eligibility: str = "traces") -> dict:
    core, learner, lc = build(surrogate_log2, kernel, eligibility)
    ev_full = bc.workload_input(0)
    ip = np.asarray(ev_full.indptr)
    ev = Events(ip[:n_steps + 1].copy(), np.asarray(ev_full.channels)[:ip[n_steps]].copy())
    n_hid = core.config.n_hid
    zero = np.zeros(n_hid, np.uint8)

    def reset():
        core.reset()
        learner.reset_traces()

    def both():
        reset()
        learn_block(core, learner, ev, zero)
        learner.flush()

    reset()
    rec = learn_block(core, learner, ev, zero)

    def learner_only():
        learner.reset_traces()
        learner.run(ev, rec["z"], rec["v_pre"], rec["refr"], rec["y"])
        learner.flush()

    def core_only():
        core.reset()
        core.run_ex(ev, record=RECORD)

    per_step = [Events(np.array([0, ip[t + 1] - ip[t]], np.int64), np.asarray(ev.channels)[ip[t]:ip[t + 1]])
                for t in range(n_steps)]

    def streaming():
        reset()
        before = zero
        for e1 in per_step:
            before = learn_block(core, learner, e1, before)["hid_ref"][0] > 0
        learner.flush()

    result = {
        "workload": "peer-v1 mode C: e-prop (random feedback) on 700-256(rec)-20, all 244,736 input and "
                    "recurrent synapses with traces, readout learning, target class 3 every step",
        "kernel": kernel,
        "eligibility": eligibility,
        "surrogate_log2": surrogate_log2,
        "steps": n_steps,
        "learn_steps_per_s": _rates(_runs(both, runs, min_run_s), n_steps),
        "learner_steps_per_s": _rates(_runs(learner_only, runs, min_run_s), n_steps),
        "core_steps_per_s": _rates(_runs(core_only, runs, min_run_s), n_steps),
    }
    if stream:
        result["learn_stream_steps_per_s"] = _rates(_runs(streaming, runs, min_run_s), n_steps)
    # what the kernels see: activity, surrogate support, learning signal
    psi = surrogate(rec["v_pre"], learner_v_th(core), rec["refr"].astype(bool), surrogate_log2)
    result.update({
        "hidden_spikes_per_step": rec["n_spikes"] / n_steps,
        "input_spikes_per_step": len(ev.channels) / n_steps,
        "psi_nonzero_fraction": round(float((psi != 0).mean()), 4),
        "synapses_with_traces": (core.config.n_in + n_hid) * n_hid,
        "runs": runs, "min_run_s": min_run_s,
        "loadavg_1min": round(os.getloadavg()[0], 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "python": platform.python_version(),
        "machine": platform.machine(),
    })
    text = json.dumps(result, indent=2)
    print(text)
    if json_path:
        with open(json_path, "w") as f:
            f.write(text + "\n")
    return result


def learner_v_th(core: Core) -> np.ndarray:
    hid, _ = fixed_params(core.config, core.chip)
    return hid.v_th.astype(np.int64)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m spikewire.bench_learn", description=__doc__.splitlines()[0])
    p.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--kernel", choices=["fast", "reference"], default="fast")
    p.add_argument("--surrogate-log2", type=int, default=12)
    p.add_argument("--steps", type=int, default=bc.T)
    p.add_argument("--min-run-s", type=float, default=0.2)
    p.add_argument("--no-stream", action="store_true")
    p.add_argument("--eligibility", choices=["traces", "events"], default="traces")
    a = p.parse_args(argv)
    run(a.json, a.runs, a.kernel, a.surrogate_log2, a.steps, a.min_run_s, not a.no_stream, a.eligibility)
    return 0


if __name__ == "__main__":
    sys.exit(main())
