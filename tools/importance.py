"""``python -m spikewire.tools.importance``: a base model's synaptic-intelligence importance.

The device never saw the trajectory that trained its model, so synaptic intelligence
(docs/learning.md "Consolidation") has no importance to protect the original speakers with.
This tool walks a short trajectory of the device's own integer learner (the C ``LearningCore``)
on data the model was trained on (the FSDD *training* split, index >= 5, of its training
speakers; the test split 0-4 stays untouched for measuring forgetting): ``--per-word`` files per
word and speaker (seeded), each learnt from rest with its label as an on-line label is, one commit
each, with ``si`` on; then one consolidation. The importance that results is written into the
model file (``si_importance_*`` arrays) with the learning configuration it is valid for
(``learning``: same rule and rates as the device will use), and the model's own weights are kept:
they are the anchors.  Writes a new file; needs no torch.

    python -m spikewire.tools.importance --model M.swm --data FSDD_DIR [--exclude-speaker NAME]
        [--per-word 5] [--passes 1] [--learning JSON] [--seed 0] --out M-si.swm [--json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from spikewire.audio import read_wav
from spikewire.frontend import encode
from spikewire.learncore import LearningCore
from spikewire.learning import MATRICES, LearningConfig, target_modes
from spikewire.model import Model, load as load_model, resolve as resolve_model

from .datasets import DatasetError, Utterance, wav_folder

__all__ = ["base_importance", "main", "pick_training_files"]

#: adapt's default rule (tools/adapt.py DEFAULT_LEARNING) with synaptic intelligence on
DEFAULT_LEARNING = {"rule": "eprop", "learn": ["in", "out"], "rate_in": 12, "rate_out": 8, "weights": "shadow",
                    "si": True}


def pick_training_files(utts: Sequence[Utterance], vocabulary: Sequence[str], per_word: int,
                        seed: int) -> list[Utterance]:
    """``per_word`` training-split files per (speaker, word), seeded, in a seeded order."""
    rng = np.random.default_rng(seed)
    out = []
    for spk in sorted({u.speaker for u in utts}):
        for w in vocabulary:
            mine = sorted((u for u in utts if u.speaker == spk and u.label == w and u.split == "train"),
                          key=lambda u: str(u.path))
            out += [mine[i] for i in sorted(rng.permutation(len(mine))[:per_word].tolist())]
    return [out[i] for i in rng.permutation(len(out))]


def base_importance(model: Model, files: Sequence[Utterance], lc: LearningConfig, passes: int = 1,
                    log=None) -> tuple[dict, dict]:
    """Learn ``files`` (each from rest, with its label, one commit each; ``passes`` times) with
    synaptic intelligence on, consolidate; returns (importance per learning matrix, summary)."""
    if not lc.si:
        raise ValueError("the importance needs si = true in the learning config")
    labels = model.labels
    events = []
    for u in files:
        if u.split == "test":
            raise ValueError(f"{u.path}: a test-split file must not shape the importance")
        x, rate = read_wav(u.path)
        events.append((encode(x, rate, model.frontend), labels.index(u.label)))
    core = model.make_core()
    lcore = LearningCore(core, lc)
    try:
        t = time.perf_counter()
        for p in range(passes):
            for i, (ev, k) in enumerate(events):
                lcore.set_learning(False)
                lcore.reset()
                lcore.set_learning(True)
                lcore.set_target(target_modes(len(labels), label=k))
                lcore.run(ev, record=("spikes",), commit=True)
                if log and (i + 1) % 100 == 0:
                    log(f"pass {p + 1}/{passes}: {i + 1}/{len(events)} files")
        lcore.set_learning(False)
        moved = {m: int(np.count_nonzero(lcore.weights()[m] != model.weights[m])) for m in lc.learn}
        lcore.consolidate()
        imp = {m: lcore.learner.si_state(m, "importance") for m in lc.learn}
        steps, commits = lcore.learner.counters
    finally:
        lcore.close()
    summary = {"files": len(files), "passes": passes, "steps": steps, "commits": commits,
               "weights_moved_on_the_way": moved, "seconds": round(time.perf_counter() - t, 2),
               "importance": {m: {"mean": float(v.mean()) / 65536, "median": float(np.median(v)) / 65536,
                                  "p99": float(np.percentile(v, 99)) / 65536, "max": int(v.max()) / 65536,
                                  "nonzero": int(np.count_nonzero(v)), "n": int(v.size)}
                              for m, v in imp.items()}}
    return imp, summary


def main(argv=None, prog: str = "python -m spikewire.tools.importance") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="kws-digits", help="shipped model name or .swm path")
    p.add_argument("--data", required=True, help="the FSDD folder the model was trained on (or its recordings/; "
                   "any folder of {word}_{speaker}_{index}.wav)")
    p.add_argument("--exclude-speaker", action="append", default=[], metavar="NAME",
                   help="a speaker the model was not trained on (repeatable): none of its files are used")
    p.add_argument("--per-word", type=int, default=5, help="training files per word and speaker (default 5)")
    p.add_argument("--passes", type=int, default=1, help="passes over the files (default 1)")
    p.add_argument("--learning", default="{}", metavar="JSON",
                   help="LearningConfig fields over the default (adapt's: e-prop in+out 12/8, shadow; si on)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="the model file to write (the model with its importance)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    from spikewire.modelfile import ModelFileError
    try:
        if not 1 <= a.per_word <= 1000 or not 1 <= a.passes <= 100:
            raise ValueError(f"--per-word must be 1..1000 and --passes 1..100, got {a.per_word}, {a.passes}")
        path = resolve_model(a.model)
        model = load_model(path)
        d = json.loads(a.learning)
        if not isinstance(d, dict):
            raise ValueError("--learning must be a JSON object")
        lc = LearningConfig.from_dict({**DEFAULT_LEARNING, **d})
        root = Path(a.data)
        if (root / "recordings").is_dir():
            root = root / "recordings"
        utts = [u for u in wav_folder(root, model.vocabulary)
                if u.known and u.split == "train" and u.speaker not in set(a.exclude_speaker)]
        files = pick_training_files(utts, model.vocabulary, a.per_word, a.seed)
        if not files:
            raise ValueError(f"no training-split files of the model's words in {a.data}")
        log = (lambda s: print(s, file=sys.stderr, flush=True)) if a.verbose else None
        imp, summary = base_importance(model, files, lc, a.passes, log)
    except (DatasetError, ModelFileError, FileNotFoundError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    training = dict(model.training)
    training["importance"] = {"tool": "spikewire.tools.importance", "data": str(a.data),
                              "speakers": sorted({u.speaker for u in files}), "per_word": a.per_word,
                              "seed": a.seed, **{k: v for k, v in summary.items() if k != "importance"}}
    out = dataclasses.replace(model, learning=lc.to_dict(), importance=imp, training=training)
    out.save(a.out)
    summary["out"] = str(a.out)
    summary["speakers"] = training["importance"]["speakers"]
    print(json.dumps(summary) if a.json else "\n".join(f"{k}: {v}" for k, v in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
