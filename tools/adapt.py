"""Personalisation by labelled utterances on the device's C learner (issue 10): a measurement.

``python -m spikewire.tools.adapt --model M --data DIR --shots K [--speaker S] [--old-data FSDD]
[--out MODEL] [--json]`` picks K labelled utterances per word from DIR (seeded), learns each one
as a label would be learnt on the device, and reports the offline accuracy on the *other* files
of DIR before and after, and with ``--old-data`` on the FSDD standard test split of the other
speakers (forgetting).  JSON keys: ``new_before``, ``new_after``, ``old_before``, ``old_after``
(fractions 0-1), ``shots``, ``n_new_eval``, ``n_old_eval``, ``updates``.

Each shot is one stretch: the whole file from rest, through a :class:`LearningCore` (the C core
and the C learner) with learning on and the label as target, then a commit.  That is what the
runtime's replay does with a labelled stretch (tests/test_onlinelearn.py: a replay equals
learning live on the stretch), without the front end's stream around it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Optional, Sequence

import numpy as np

from spikewire.audio import read_wav
from spikewire.frontend import encode
from spikewire.learncore import LearningCore
from spikewire.learning import MATRICES, LearningConfig, target_modes
from spikewire.model import Model, load as load_model

from .datasets import Utterance, digit_folder, fsdd
from .offline import evaluate_files


def accuracy(model: Model, utts: Sequence[Utterance]) -> float | None:
    if not utts:
        return None
    results, _ = evaluate_files(model, utts)
    return float(np.mean([r.correct for r in results]))


def pick_shots(utts: Sequence[Utterance], vocabulary: Sequence[str], k: int, seed: int):
    """K utterances per word (seeded); returns (shots in a seeded order, the rest)."""
    rng = np.random.default_rng(seed)
    shots, rest = [], []
    for w in vocabulary:
        mine = sorted((u for u in utts if u.label == w), key=lambda u: str(u.path))
        idx = set(rng.permutation(len(mine))[:k].tolist())
        shots += [u for i, u in enumerate(mine) if i in idx]
        rest += [u for i, u in enumerate(mine) if i not in idx]
    order = rng.permutation(len(shots))
    return [shots[i] for i in order], rest


def learn_shots(model: Model, shots: Sequence[Utterance], lc: LearningConfig, passes: int = 1) -> Model:
    """The model after learning every shot (each from rest, ``passes`` times in turn)."""
    core = model.make_core()
    lcore = LearningCore(core, lc)
    labels = model.labels
    try:
        events = []
        for u in shots:
            x, rate = read_wav(u.path)
            events.append((encode(x, rate, model.frontend), labels.index(u.label)))
        for _ in range(passes):
            for ev, k in events:
                lcore.set_learning(False)
                lcore.reset()
                lcore.set_learning(True)
                lcore.set_target(target_modes(len(labels), label=k))
                lcore.run(ev, record=("spikes",), commit=True)
        w = lcore.weights()
    finally:
        lcore.close()
    training = dict(model.training)
    training["adapted"] = {"base_model": model.name, "shots": len(shots), "passes": passes,
                           "learning": lc.to_dict(), "updates": len(shots) * passes}
    return dataclasses.replace(model, weights={m: w[m] for m in MATRICES}, training=training)


def adapt(model: Model, new: Sequence[Utterance], shots_per_word: int, lc: LearningConfig, *, seed: int = 0,
          passes: int = 1, old: Optional[Sequence[Utterance]] = None) -> tuple[dict, Model]:
    shots, rest = pick_shots(new, model.vocabulary, shots_per_word, seed)
    adapted = learn_shots(model, shots, lc, passes)
    res = {"shots": shots_per_word, "n_shots": len(shots), "n_new_eval": len(rest), "passes": passes,
           "learning": lc.to_dict(), "updates": len(shots) * passes,
           "new_before": accuracy(model, rest), "new_after": accuracy(adapted, rest)}
    if old is not None:
        res.update(n_old_eval=len(old), old_before=accuracy(model, old), old_after=accuracy(adapted, old))
    res["weights_changed"] = int(sum(np.count_nonzero(adapted.weights[m] != model.weights[m]) for m in MATRICES))
    return res, adapted


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m spikewire.tools.adapt", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="kws-digits")
    p.add_argument("--data", required=True, help="digit folder ({digit}_{speaker}_{index}.wav) or FSDD")
    p.add_argument("--speaker", help="only this speaker's files of --data")
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--old-data", help="FSDD folder: its test split of the other speakers measures forgetting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--passes", type=int, default=1)
    p.add_argument("--learning", default="{}", help="LearningConfig fields as JSON, e.g. '{\"rate_out\": 8}'")
    p.add_argument("--out", help="write the adapted model here")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    model = load_model(a.model)
    lc = LearningConfig.from_dict(json.loads(a.learning))
    new = [u for u in digit_folder(a.data) if a.speaker is None or u.speaker == a.speaker]
    old = None
    if a.old_data:
        old = [u for u in fsdd(a.old_data, "test") if u.speaker != a.speaker]
    res, adapted = adapt(model, new, a.shots, lc, seed=a.seed, passes=a.passes, old=old)
    if a.out:
        adapted.save(a.out)
    print(json.dumps(res) if a.json else "\n".join(f"{k}: {v}" for k, v in res.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
