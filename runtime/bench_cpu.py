"""`spikewire bench cpu`: the CPU budget in instructions (docs/raspberry-pi.md, "CPU budget").

Instructions are counted, not timed, so the numbers repeat: on x86-64 with valgrind's callgrind,
on aarch64 (``--aarch64``) with a QEMU TCG plugin counting executed A64 instructions
(tests/aarch64/insn_plugin.c) in Debian's arm64 CPython with the cross-built extension
(tests/aarch64/run.sh --prepare; needs a source checkout).

The workload (:func:`workload`) is the bundled digits recording (10.9 s, ten spoken digits),
linearly resampled to ``--rate`` (a microphone's rate; the model runs at 8 kHz), through the
shipped model in runtime-sized blocks (10 ms, as ``spikewire run``): phase ``frontend`` (C
front end per block), ``core`` (C core per block), ``decision`` (the numpy decider per block),
then the same audio in one call each (``frontend_one_call``, ``core_one_call``: the C work
with almost no Python around it), then learning on (``core_learn_readout``, ``core_learn_eprop``:
the same blocks through a :class:`~spikewire.learncore.LearningCore` of the model's core, one
stretch = core run + learner run + commit per block, a label on every step). The guest marks phase boundaries with ``os.getpgid(0)``
(callgrind ``--dump-before=getpgid``, the plugin's syscall hook), so imports and set-up are not
counted. callgrind also gives the instructions inside the C entry points (``c_only``), so
the Python overhead is measured, not estimated. ``--runtime`` adds the asyncio pipeline of
``spikewire demo`` (sources, queues, sinks, JSON) as one more phase.

A load estimate divides instructions per second of audio by (IPC x clock) for the Pi 4
(Cortex-A72, 1.5-1.8 GHz) and the Pi Zero 2 W (Cortex-A53, 1.0 GHz) over an assumed IPC range
(:data:`CPUS`); that is an estimate, not a measurement on a Pi.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PHASES = ["frontend", "core", "decision", "frontend_one_call", "core_one_call",
          "core_learn_readout", "core_learn_eprop", "replay_label"]
#: the learning phases: the core of phase ``core`` as a LearningCore with this rule learning these
#: matrices, one stretch (core run + learner run + commit) per block (runtime/learncore.py)
LEARN_PHASES = {"core_learn_readout": ("readout", ("out",)), "core_learn_eprop": ("eprop", ("in", "out"))}
RUNTIME_PHASE = "runtime_pipeline"
#: --runtime: the asyncio pipeline of ``spikewire demo`` (WAV source as fast as it goes, stdout sink)
#: on one block only (its start-up and shutdown: model load, front-end design, tasks, threads), on
#: the whole audio, the same paced at real time (each 10 ms block arrives alone, as from a
#: microphone), and fast with learning on (the replay buffer keeps every block, a core-state
#: checkpoint every 250 steps). Per second of audio, the start-up is taken off the others.
RUNTIME_STARTUP = "runtime_startup"
RUNTIME_PHASES = [RUNTIME_STARTUP, RUNTIME_PHASE, "runtime_live", "runtime_learn"]
#: C entry points whose inclusive cost is the C work of a phase (callgrind)
C_ENTRY = {"frontend": ("sw_fe_process", "sw_fe_flush"), "core": ("sw_core_run", "sw_core_run_ex"),
           "frontend_one_call": ("sw_fe_process", "sw_fe_flush"), "core_one_call": ("sw_core_run", "sw_core_run_ex"),
           **{p: ("sw_core_run_ex", "sw_learn_run", "sw_learn_commit") for p in (*LEARN_PHASES, "replay_label")}}
#: (name, clock GHz range, assumed IPC range) for the load estimate. IPC: instructions per cycle
#: of this integer, branchy, small-working-set code; the A72 is 3-wide out of order, the A53
#: 2-wide in order. These ranges are assumptions (no Pi measured here), stated with the result.
CPUS = [
    ("Raspberry Pi 4 (Cortex-A72)", (1.5, 1.8), (0.8, 1.5)),
    ("Raspberry Pi Zero 2 W (Cortex-A53)", (1.0, 1.0), (0.5, 0.9)),
]
TARGET_PCT = 3.0  # issue 14: inference <= 3 % of one Pi 4 core
TARGET_LEARN_PCT = 15.0  # issue 14: with learning on <= 15 %


def _mark() -> None:
    """Phase boundary: a getpgid(0) syscall the instruction counters watch for."""
    os.getpgid(0)


def _input(rate: int):
    import numpy as np

    from .audio import read_wav_int16
    from .assets import demo_recording

    x, r = read_wav_int16(demo_recording())
    if rate == r:
        return x, r
    n = int(round(x.shape[0] * rate / r))
    t = np.arange(n) * (r / rate)
    y = np.interp(t, np.arange(x.shape[0]), x.astype(np.float64))
    return np.clip(np.round(y), -32768, 32767).astype(np.int16), rate


def workload(rate: int = 16000, block_ms: float = 10.0, model: str = "kws-digits", runtime: bool = False) -> dict:
    """Run the phases between marks (see the module docstring); return what was processed."""
    import numpy as np

    from .events import Events
    from .frontend import FrontEnd
    from .model import load

    m = load(model)
    x, rate = _input(rate)
    bs = max(1, int(round(rate * block_ms / 1000)))
    blocks = [x[i:i + bs] for i in range(0, x.shape[0], bs)]
    fe = FrontEnd(m.frontend, rate, kernel="c")
    core = m.make_core()
    dec = m.decider()
    for b in blocks[:20]:  # warm-up: first-call paths (cffi lookups, numpy dispatch), then reset
        dec.update(core.run(fe.process(b)).cadc)
    fe.reset(); core.reset(); dec.reset()

    _mark()
    evs = [fe.process(b) for b in blocks] + [fe.flush()]
    _mark()
    outs = [core.run(e) for e in evs]
    _mark()
    kws = []
    for o in outs:
        kws += dec.update(o.cadc)
    kws += dec.flush()
    _mark()
    fe.reset()
    ev_all = Events.concat([fe.process(x), fe.flush()])
    _mark()
    core.reset()
    out_all = core.run(ev_all)
    _mark()
    learned = {}
    for phase, (rule, learn) in LEARN_PHASES.items():
        lcore = _learning_core(m, rule, learn, evs[:20])
        _mark()
        for e in evs:
            lcore.run(e, record=("cadc",))
        _mark()
        learned[phase] = {"stretches": lcore.stretches, "commits": lcore.commits,
                          # synapses whose shadow weight (Q16 accumulator) moved, and whose 6-bit weight did
                          "accumulators_moved": int(sum((lcore.learner.acc(w) != m.weights[w].astype(np.int32)
                                                         * 65536).sum() for w in learn)),
                          "weights_changed": int(sum((lcore.core.get_weights(w) != m.weights[w]).sum()
                                                     for w in learn))}
        lcore.close()
    replay = _replay_phase(m, evs)
    res = {"rate": rate, "block_ms": block_ms, "blocks": len(blocks), "audio_s": x.shape[0] / rate,
           "steps": ev_all.n_steps, "input_events": ev_all.n_events, "hidden_spikes": int(out_all.n_spikes),
           "keywords": len(kws), "model": m.name, "core_kernel": core.kernel, "learning": learned,
           "replay": replay}
    if runtime:
        _runtime_phase(model, x[:bs], rate, block_ms, counted=False)  # imports and first calls: not counted
        res["runtime"] = {name: _runtime_phase(model, x[:bs] if name == RUNTIME_STARTUP else x, rate, block_ms, **kw)
                          for name, kw in ((RUNTIME_STARTUP, {}), (RUNTIME_PHASE, {}), ("runtime_live", {"paced": True}),
                                           ("runtime_learn", {"learn": True}))}
    return res


def _replay_phase(m, evs) -> dict:
    """One late label replayed (the ``label`` command's work): the blocks go through the core and the
    decider into a ReplayBuffer as the pipeline keeps them with learning on; the last keyword's
    stretch is then labelled with its own word and replayed by an OnlineLearner (runtime/onlinelearn.py:
    from the checkpoint before it, learning on the stretch, commit) between two marks."""
    import gc

    import numpy as np

    from .learning import MATRICES, target_modes
    from .onlinelearn import OnlineLearner, ReplayBuffer, ReplayConfig
    from .pipeline import _run_keeping

    core, dec, buf = m.make_core(), m.decider(), ReplayBuffer(ReplayConfig())
    t, fired = 0, []
    for e in evs:
        out, state = _run_keeping(core, e, buf.wants_checkpoint(t))
        buf.add(t, e, state)
        dec.update(out.cadc, t)
        fired += [s for s in dec.take_stretches() if s.fired]
        t += e.n_steps
    dec.flush()
    fired += [s for s in dec.take_stretches() if s.fired]
    start, end, unit = fired[-1].start, fired[-1].end, fired[-1].unit
    t_ck, ck, ev = buf.covering(start, end)
    learner = OnlineLearner(m.core, m.params, {w: core.get_weights(w) for w in MATRICES}, base_weights=m.weights)
    modes = target_modes(m.core.n_out, label=unit)
    gc.collect()
    _mark()
    learner.learn(t_ck, ck, ev, start, end, modes)
    _mark()
    L = learner.lcore.learner
    moved = int(sum((L.acc(w) != m.weights[w].astype(np.int32) * 65536).sum() for w in learner.lc.learn))
    changed = int(sum((learner.weights()[w] != m.weights[w]).sum() for w in MATRICES))
    learner.close()
    return {"word": m.labels[unit], "stretch": [start, end], "stretch_steps": end + 1 - start,
            "replayed_steps": ev.n_steps, "rule": learner.lc.rule, "accumulators_moved": moved,
            "weights_changed": changed}


def _learning_core(m, rule: str, learn: tuple, warm):
    """The model's core as a LearningCore with learning on and a label on every step (readout unit 0
    high, the others low: the supervised case, where every step can carry a learning signal).
    Warmed up on ``warm`` (first-call paths), then back to the model's weights and a rested core."""
    from .learncore import LearningCore
    from .learning import LearningConfig, target_modes

    lcore = LearningCore(m.make_core(), LearningConfig(rule=rule, learn=learn))
    lcore.set_target(target_modes(m.core.n_out, label=0))
    lcore.set_learning(True)
    for e in warm:
        lcore.run(e, record=("cadc",))
    lcore.set_weights(m.weights)  # the accumulators start again from the model's weights
    lcore.reset()
    lcore.stretches = lcore.commits = 0
    return lcore


def _runtime_phase(model: str, x, rate: int, block_ms: float, paced: bool = False, learn: bool = False,
                   counted: bool = True) -> dict:
    """The asyncio pipeline (the audio as a WAV file, stdout sink into memory) between marks: as fast
    as it goes, or ``paced`` at real time; ``learn``: learning on (blocks kept for replays)."""
    import asyncio
    import gc
    import io
    import time

    from .cli import RUN_DEFAULTS, build_pipeline
    from .pipeline import run_pipeline

    from .audio import write_wav
    tmp = tempfile.mkdtemp(prefix="spikewire-bench-cpu-")
    wav = os.path.join(tmp, "in.wav")
    write_wav(wav, x, rate)
    cfg = dict(RUN_DEFAULTS)
    cfg.update(model=model, source=f"wav:{wav}", fast=not paced, speed=1.0, block_ms=block_ms, sink=["stdout"],
               metrics_interval=0.0, learn=learn)
    out = io.StringIO()

    async def go():
        p = build_pipeline(cfg, stream=out)
        # every front-end and core call on the event loop, as on a Pi, where a 10 ms block's calls take
        # well under a millisecond (Pipeline's inline_ms, 5 ms): under an emulator on a shared machine
        # some would take longer on the wall clock and go to the threads, and the count would
        # depend on the load
        p.inline_ms = 1e9
        return await run_pipeline(p)

    gc.collect()  # the garbage of earlier phases is not collected inside this one
    mark = _mark if counted else (lambda: None)
    t = time.monotonic()
    mark()
    final = asyncio.run(go())
    mark()
    wall = time.monotonic() - t
    shutil.rmtree(tmp, ignore_errors=True)
    return {"keywords": sum(1 for line in out.getvalue().splitlines() if line.startswith("{\"word\"")),
            "wall_s": round(wall, 3), "calls": final["calls"],
            "buffered_steps": final["learning"]["buffer_steps"]}


# -- counting ---------------------------------------------------------------------------------
def _checkout() -> Path:
    root = Path(__file__).resolve().parent.parent
    if not (root / "tests" / "aarch64" / "run.sh").is_file():
        raise SystemExit("spikewire bench cpu --aarch64 needs a source checkout (tests/aarch64/)")
    return root


def _workload_cmd(python: list[str], args) -> list[str]:
    cmd = python + ["-m", "spikewire.bench_cpu", "--workload", "--rate", str(args.rate),
                    "--block-ms", str(args.block_ms), "--model", args.model]
    return cmd + (["--runtime"] if args.runtime else [])


def _phase_names(runtime: bool) -> list[str]:
    return PHASES + (RUNTIME_PHASES if runtime else [])


def _phase_marks(runtime: bool) -> tuple[dict[str, int], int]:
    """Each phase's starting mark (it ends at the next one) and the number of marks the workload makes:
    the first five phases are back to back (marks 0-5); every later phase has a mark of its own
    before and after it (its set-up in between is not counted)."""
    starts = {name: i for i, name in enumerate(PHASES[:5])}
    k = 6
    for name in _phase_names(runtime)[5:]:
        starts[name] = k
        k += 2
    return starts, k


def count_x86(args) -> dict:
    """callgrind: per-phase totals and the C entry points' inclusive counts."""
    if not shutil.which("valgrind"):
        raise SystemExit("spikewire bench cpu: valgrind not found (apt-get install valgrind)")
    tmp = tempfile.mkdtemp(prefix="spikewire-callgrind-")
    base = os.path.join(tmp, "cg")
    cmd = ["valgrind", "--tool=callgrind", "--dump-before=getpgid", f"--callgrind-out-file={base}"]
    r = subprocess.run(cmd + _workload_cmd([sys.executable, "-P"], args), capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"callgrind run failed:\n{r.stderr[-3000:]}")
    info = json.loads(r.stdout.strip().splitlines()[-1])
    names = _phase_names(args.runtime)
    parts = sorted(glob.glob(base + ".*"), key=lambda p: int(p.rsplit(".", 1)[1]))
    # part k (k >= 1) ends at mark k-1: the phase that starts at mark i is part i+2
    starts, n_marks = _phase_marks(args.runtime)
    if len(parts) != n_marks:
        raise SystemExit(f"callgrind wrote {len(parts)} parts, expected {n_marks} (one per mark)")
    phase_parts = [parts[starts[name] + 1] for name in names]
    out = {}
    for name, part in zip(names, phase_parts):
        total = _callgrind_total(part)
        row = {"instructions": total}
        if name in C_ENTRY:
            inc = _callgrind_inclusive(part)
            row["c_only"] = sum(inc.get(f, 0) for f in C_ENTRY[name])
        out[name] = row
    shutil.rmtree(tmp, ignore_errors=True)
    return {"isa": "x86-64", "counter": "valgrind callgrind (Ir)", "workload": info, "phases": out}


def _callgrind_total(path: str) -> int:
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("summary:"):
                return int(line.split()[1])
    raise SystemExit(f"{path}: no summary line")


def _callgrind_inclusive(path: str) -> dict[str, int]:
    r = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                       capture_output=True, text=True, check=True)
    out: dict[str, int] = {}
    for line in r.stdout.splitlines():
        m = re.match(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?\S*?:?(sw_\w+)\b", line)
        if m:
            out[m.group(2)] = max(out.get(m.group(2), 0), int(m.group(1).replace(",", "")))
    return out


def count_aarch64(args) -> dict:
    """A64 instructions with the TCG plugin, in the arm64 CPython under qemu-user."""
    root = _checkout()
    work = Path(tempfile.mkdtemp(prefix="spikewire-a64-bench-"))
    env = dict(os.environ, SPIKEWIRE_AARCH64_OUT=str(work / "a64"), PYTHON=sys.executable)
    r = subprocess.run(["bash", str(root / "tests" / "aarch64" / "run.sh"), "--prepare"], cwd=root, env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"tests/aarch64/run.sh --prepare failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    paths = dict(line.split("=", 1) for line in r.stdout.splitlines() if re.match(r"^[A-Z_]+=", line))
    plugin = work / "insn_plugin.so"
    subprocess.run(["cc", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared",
                    "-fvisibility=hidden", str(root / "tests" / "aarch64" / "insn_plugin.c"), "-o", str(plugin)],
                   check=True)
    counts = work / "counts.txt"
    qenv = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    qenv.update(PYTHONPATH=f"{paths['PKG']}:{paths['SITE']}", PYTHONHASHSEED="0")
    sysroot = paths["SYSROOT"]
    cmd = ["qemu-aarch64", "-L", sysroot, "-plugin", f"{plugin},out={counts}",
           os.path.join(sysroot, "usr", "bin", "python3.11"), "-P"]
    r = subprocess.run(_workload_cmd(cmd, args), capture_output=True, text=True, env=qenv)
    if r.returncode != 0:
        raise SystemExit(f"the workload failed under qemu:\n{r.stderr[-3000:]}")
    info = json.loads(r.stdout.strip().splitlines()[-1])
    marks = [int(line.split()[2]) for line in counts.read_text().splitlines() if line.startswith("mark ")]
    starts, n_marks = _phase_marks(args.runtime)
    if len(marks) != n_marks:
        raise SystemExit(f"the plugin saw {len(marks)} marks, expected {n_marks}")
    out = {name: {"instructions": marks[i + 1] - marks[i]} for name, i in starts.items()}
    shutil.rmtree(work, ignore_errors=True)
    return {"isa": "aarch64 (A64)", "counter": "qemu-aarch64 TCG plugin (tests/aarch64/insn_plugin.c)",
            "python": paths.get("PYTHON_VERSION", "3.11"), "workload": info, "phases": out}


def summarize(res: dict) -> dict:
    """Per step / per second of audio, the Python overhead, and the load estimate."""
    w, ph = res["workload"], res["phases"]
    for row in ph.values():
        row["per_step"] = round(row["instructions"] / w["steps"], 1)
        row["per_audio_s"] = round(row["instructions"] / w["audio_s"])
        if "c_only" in row:
            row["c_only_per_audio_s"] = round(row["c_only"] / w["audio_s"])
    inference = sum(ph[p]["instructions"] for p in ("frontend", "core", "decision"))
    per_s = inference / w["audio_s"]
    res["inference_per_audio_s"] = round(per_s)
    res["inference_per_step"] = round(inference / w["steps"], 1)
    res["python_overhead_per_audio_s"] = {
        p: round((ph[p]["instructions"] - ph[p + "_one_call"]["instructions"]) / w["audio_s"])
        for p in ("frontend", "core")}
    # learning on: the core phase replaced by the LearningCore phase of each rule
    learn = {p: (ph["frontend"]["instructions"] + ph[p]["instructions"] + ph["decision"]["instructions"])
             / w["audio_s"] for p in LEARN_PHASES if p in ph}
    res["learning_on_per_audio_s"] = {p: round(v) for p, v in learn.items()}
    # the runtime per second of audio in steady state: its start-up and shutdown taken off
    startup = ph[RUNTIME_STARTUP]["instructions"] if RUNTIME_STARTUP in ph else 0
    runtime = {p: (ph[p]["instructions"] - startup) / w["audio_s"] for p in RUNTIME_PHASES[1:] if p in ph}
    res["runtime_per_audio_s"] = {p: round(v) for p, v in runtime.items()}
    if startup:
        res["runtime_startup_instructions"] = startup
    replay = None
    if "replay_label" in ph and "replay" in w:  # one replay: per replay and per replayed step, not per second
        replay = ph["replay_label"]["instructions"]
        res["replay_label"] = {**w["replay"], "instructions": replay,
                               "per_replayed_step": round(replay / w["replay"]["replayed_steps"], 1)}

    def load(per_s: float, ghz: tuple, ipc: tuple) -> list[float]:
        return [round(100 * per_s / (ipc[1] * ghz[1] * 1e9), 2), round(100 * per_s / (ipc[0] * ghz[0] * 1e9), 2)]

    def ms(n: int, ghz: tuple, ipc: tuple) -> list[float]:
        return [round(1000 * n / (ipc[1] * ghz[1] * 1e9), 1), round(1000 * n / (ipc[0] * ghz[0] * 1e9), 1)]

    if res["isa"].startswith("aarch64"):
        est = []
        for name, ghz, ipc in CPUS:
            est.append({"cpu": name, "ghz": list(ghz), "ipc": list(ipc),
                        "load_pct_of_one_core": load(per_s, ghz, ipc),
                        "learning_on_load_pct": {p: load(v, ghz, ipc) for p, v in learn.items()}})
            if runtime:
                est[-1]["runtime_load_pct"] = {p: load(v, ghz, ipc) for p, v in runtime.items()}
            if replay is not None:
                est[-1]["replay_label_ms"] = ms(replay, ghz, ipc)
        res["estimate"] = est
        res["target_pct_pi4"] = TARGET_PCT
        res["target_learning_pct_pi4"] = TARGET_LEARN_PCT
    return res


def _print(res: dict) -> None:
    w = res["workload"]
    print(f"# {res['isa']}, {res['counter']}; {w['audio_s']:.2f} s of audio at {w['rate']} Hz in "
          f"{w['block_ms']:g} ms blocks, {w['steps']} steps, {w['input_events']} input events, "
          f"{w['hidden_spikes']} hidden spikes, {w['keywords']} keywords")
    print(f"{'phase':20s} {'instr/step':>12s} {'instr/s audio':>15s} {'C only/s':>12s}")
    for name, row in res["phases"].items():
        c = f"{row['c_only_per_audio_s']:,}" if "c_only_per_audio_s" in row else "-"
        print(f"{name:20s} {row['per_step']:12,.0f} {row['per_audio_s']:15,} {c:>12s}")
    print(f"inference (frontend + core + decision): {res['inference_per_audio_s']:,} instr per s of audio; "
          f"Python overhead per s: {res['python_overhead_per_audio_s']}")
    for e in res.get("estimate", []):
        lo, hi = e["load_pct_of_one_core"]
        rt = "".join(f"; {p} {v[0]}-{v[1]} %" for p, v in e.get("runtime_load_pct", {}).items())
        print(f"{e['cpu']}: {lo}-{hi} % of one core (IPC {e['ipc'][0]}-{e['ipc'][1]}, "
              f"{e['ghz'][0]}-{e['ghz'][1]} GHz){rt}")
    if "runtime_startup_instructions" in res:
        print(f"runtime start-up and shutdown (one block): {res['runtime_startup_instructions']:,} instr, "
              "taken off the runtime phases below")
    for p, run in w.get("runtime", {}).items():
        if p in res["runtime_per_audio_s"]:
            print(f"{p}: {res['runtime_per_audio_s'][p]:,} instr per s of audio ({run['keywords']} keywords, "
                  f"{run['wall_s']} s wall, calls {run['calls']})")
    if "replay_label" in res:
        r = res["replay_label"]
        ms_ = "; ".join(f"{e['cpu']}: {e['replay_label_ms'][0]}-{e['replay_label_ms'][1]} ms"
                        for e in res.get("estimate", []))
        print(f"one label replayed ({r['rule']}, '{r['word']}', {r['stretch_steps']} steps learnt of "
              f"{r['replayed_steps']} replayed): {r['instructions']:,} instr, {r['per_replayed_step']:,} per "
              f"replayed step" + (f"; {ms_}" if ms_ else ""))
    for p, v in res["learning_on_per_audio_s"].items():
        rule, learn = LEARN_PHASES[p]
        pct = "; ".join(f"{e['cpu']}: {e['learning_on_load_pct'][p][0]}-{e['learning_on_load_pct'][p][1]} %"
                        for e in res.get("estimate", []))
        print(f"learning on ({rule}, learning {'+'.join(learn)}, a commit per block): {v:,} instr per s of audio"
              + (f"; {pct}" if pct else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="spikewire bench cpu", description=__doc__.splitlines()[0])
    ap.add_argument("--aarch64", action="store_true", help="A64 instructions under qemu (needs a checkout)")
    ap.add_argument("--runtime", action="store_true", help="also count the asyncio pipeline (spikewire demo path)")
    ap.add_argument("--rate", type=int, default=16000, help="input sample rate (default 16000)")
    ap.add_argument("--block-ms", type=float, default=10.0, help="block size (default 10, as spikewire run)")
    ap.add_argument("--model", default="kws-digits")
    ap.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    ap.add_argument("--workload", action="store_true", help=argparse.SUPPRESS)  # the counted child process
    args = ap.parse_args(argv)
    if args.rate <= 0 or args.block_ms <= 0:
        ap.error("--rate and --block-ms must be > 0")
    if args.workload:
        print(json.dumps(workload(args.rate, args.block_ms, args.model, args.runtime)))
        return 0
    res = count_aarch64(args) if args.aarch64 else count_x86(args)
    res["host"] = {"machine": platform.machine(), "python": platform.python_version()}
    summarize(res)
    _print(res)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
