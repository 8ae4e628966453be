"""Per-corpus evaluation of a model on the speaker-disjoint protocol, on the C core (issue 11).

    python -m spikewire.tools.voices_eval MODEL.swm --root ../shared/data --fold validation \\
        [--fsdd-test-out] [--calibrate] --out report.json

For the test side of the fold (the same split as :func:`spikewire.tools.voices.fold_utterances`):

* **offline, per corpus**: digit accuracy (a rejection is an error) and the share of
  non-digit words accepted as a digit, through ``spikewire.tools.evaluate.evaluate_files``
  (C front end, C core, the model's decision rule);
* **streaming** (``evaluate_stream``: FrontEnd -> core -> Decider in 10 ms blocks):
  (1) held-out speakers' digits mixed with held-out speakers' words (Speech Commands and
  DSPSpeech-20), quiet pink noise at -50 dBFS and in -30 dBFS pink noise: hits, false
  accepts per word, false alarms per hour; (2) the FSDD test split at -50 and -30 dBFS
  pink noise (the standard-split regression check); (3) 10 minutes of -30 dBFS pink
  noise alone: false alarms per hour of noise.

``--calibrate`` first chooses the decision parameters on a streaming run over
*training-side* files of the fold (FSDD train split, training speakers' Speech Commands
digits and words; ``evaluate.calibrate``, at most 2 false alarms/h and 5 % of words
accepted; ``--max-false-accept``) and evaluates the calibrated model (written next to the report).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from spikewire.model import Model
from spikewire.progress import run_logging
from spikewire.tools.datasets import Utterance
from spikewire.tools.evaluate import (
    Stream,
    calibrate,
    evaluate_files,
    evaluate_stream,
    make_noise,
    offline_metrics,
    run_stream,
    score_stream,
)
from spikewire.tools.voices import fold_utterances

log = logging.getLogger("spikewire.tools.voices_eval")


def _sample(us: Sequence[Utterance], n: int, seed: int) -> list[Utterance]:
    us = list(us)
    if len(us) <= n:
        return us
    idx = np.random.default_rng(seed).choice(len(us), size=n, replace=False)
    return [us[i] for i in sorted(idx)]


def per_corpus(model: Model, utts: Sequence[Utterance]) -> dict:
    """Offline metrics per corpus (C core)."""
    out = {}
    for c in sorted({u.corpus for u in utts}):
        us = [u for u in utts if u.corpus == c]
        res, _ = evaluate_files(model, us)
        m = offline_metrics(res, model.vocabulary)
        out[c] = {k: m[k] for k in ("n", "accuracy", "rejected", "n_unknown", "false_accept_rate")}
        if m["n"]:
            spk = {}
            for r in res:
                if r.known:
                    spk.setdefault(r.speaker, []).append(r.correct)
            out[c]["speakers"] = len(spk)
            out[c]["worst_speaker_accuracy"] = min(float(np.mean(v)) for v in spk.values())
    return out


def noise_only(model: Model, minutes: float, level_db: float, seed: int) -> dict:
    rate = model.frontend.sample_rate
    x = make_noise(int(minutes * 60 * rate), "pink", level_db, np.random.default_rng(seed))
    s = Stream(x, rate, [], seed, {"kind": "pink", "level_dbfs": level_db})
    kws, _ = run_stream(model, s)
    sc = score_stream(kws, [], s.duration_s)
    return {"minutes": minutes, "level_dbfs": level_db, "n_false_alarms": sc["n_false_alarms"],
            "false_alarms_per_hour": sc["false_alarms_per_hour"]}


def _stream(model, utts, seed, noise_db) -> dict:
    ev = evaluate_stream(model, utts, seed=seed, noise="pink", noise_db=noise_db)
    return {k: ev[k] for k in ("n_utterances", "hit_rate", "wrong_word_rate", "n_unknown", "false_accept_rate",
                               "false_alarms_per_hour", "audio_hours")}


def evaluate_fold(model: Model, root: str, fold: str, fsdd_test_out: bool, seed: int = 0,
                  n_stream_words: int = 300, noise_minutes: float = 10.0) -> dict:
    _, test = fold_utterances(root, fold, seed, fsdd_test_out)
    t0 = time.time()
    rep: dict = {"model": model.name, "fold": fold, "fsdd_test_out": fsdd_test_out,
                 "frontend_hash": model.frontend.config_hash(), "decision": dataclasses.asdict(model.decision)}
    rep["offline"] = per_corpus(model, test)
    held_digits = [u for u in test if u.known and u.corpus != "fsdd"]
    held_words = _sample([u for u in test if not u.known], n_stream_words, seed)
    fsdd_test = [u for u in test if u.corpus == "fsdd"]
    streams = {}
    if held_digits or held_words:
        for db in (-50.0, -30.0):
            streams[f"heldout_speakers_pink{int(db)}"] = _stream(model, held_digits + held_words, seed, db)
    if fsdd_test:
        for db in (-50.0, -30.0):
            streams[f"fsdd_test_pink{int(db)}"] = _stream(model, fsdd_test, seed, db)
    rep["streaming"] = streams
    rep["noise_only"] = noise_only(model, noise_minutes, -30.0, seed)
    rep["wall_s"] = round(time.time() - t0, 1)
    return rep


def calibration_set(root: str, fold: str, fsdd_test_out: bool, seed: int = 0) -> list[Utterance]:
    """Training-side files for calibration: 200 FSDD train-split files, every training speaker's
    non-FSDD digit, 200 training speakers' words."""
    train, _ = fold_utterances(root, fold, seed, fsdd_test_out)
    fs = _sample([u for u in train if u.corpus == "fsdd" and u.split == "train"], 200, seed + 1)
    dg = [u for u in train if u.known and u.corpus != "fsdd"]
    wd = _sample([u for u in train if not u.known], 200, seed + 2)
    return fs + dg + wd


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m spikewire.tools.voices_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--root", required=True)
    p.add_argument("--fold", default="validation")
    p.add_argument("--fsdd-test-out", action="store_true")
    p.add_argument("--calibrate", action="store_true")
    p.add_argument("--max-false-accept", type=float, default=0.05,
                   help="calibration: at most this share of the training speakers' words accepted (default 0.05)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="report JSON")
    a = p.parse_args(argv)
    run_logging()
    try:
        model = Model.load(a.model)
        rep: dict = {}
        if a.calibrate:
            cal = calibration_set(a.root, a.fold, a.fsdd_test_out, a.seed)
            model, crep = calibrate(model, cal, seed=a.seed, max_false_accept=a.max_false_accept, offline=False)
            rep["calibration"] = {k: crep[k] for k in ("met_target", "before", "chosen", "data", "max_false_accept",
                                                       "top_by_hit_rate")}
            path = Path(a.out).with_suffix(".calibrated.swm")
            model.save(path)
            rep["calibrated_model"] = str(path)
        rep.update(evaluate_fold(model, a.root, a.fold, a.fsdd_test_out, a.seed))
    except ValueError as e:
        print(f"python -m spikewire.tools.voices_eval: error: {e}", file=sys.stderr)
        return 2
    Path(a.out).write_text(json.dumps(rep, indent=1))
    print(json.dumps({k: rep[k] for k in ("offline", "streaming", "noise_only")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
