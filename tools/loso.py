"""Leave-one-speaker-out: one model per FSDD speaker trained without that speaker, each measured on
the C core on every recording of its held-out speaker (resumable)."""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from spikewire.progress import Progress

from .datasets import fsdd
from .export import export_model
from .recipe import TrainConfig
from .trainer import train

log = logging.getLogger(__name__)


def leave_one_speaker_out(cfg: TrainConfig, name: str = "kws-digits", progress: bool = False) -> dict:
    """Train one model per FSDD speaker with that speaker left out (``OUT/loso-SPEAKER``), measure
    it on the C core on every recording of the held-out speaker, write ``OUT/loso.json``.
    Each run resumes from its checkpoint, so an interrupted sweep continues where it stopped.
    ``progress``: a line per fold with rate and time left (each fold's training draws its own bar)."""
    out = Path(cfg.out)
    speakers = sorted({u.speaker for u in fsdd(cfg.data, "all") if u.speaker})
    per = {}
    folds = Progress(len(speakers), "leave-one-speaker-out folds", every=1 / max(len(speakers), 1),
                     tty=False) if progress else None
    for spk in speakers:
        c = dataclasses.replace(cfg, out=str(out / f"loso-{spk}"), exclude_speakers=[spk])
        path = Path(c.out) / f"{name}-without-{spk}.swm"
        t0 = time.time()
        res = train(c, resume=True, progress=progress)
        m = export_model(res, c, path, name).metrics
        per[spk] = {k: m.get(k) for k in ("core_test_acc", "torch_fixed_test_acc", "gap_points", "fsdd_test_n",
                                           "core_test_rejected", "false_accept_unknown_words",
                                           "false_accept_noise")}
        per[spk]["model"] = str(path)
        per[spk]["wall_s"] = round(time.time() - t0, 1)
        log.info("held-out %s: core accuracy %.4f on %d recordings", spk, m["core_test_acc"], m["fsdd_test_n"])
        if folds is not None:
            folds.update()
    if folds is not None:
        folds.close()
    accs = {s: v["core_test_acc"] for s, v in per.items()}
    summary = {"per_speaker": per, "mean_core_acc": float(np.mean(list(accs.values()))),
               "min_core_acc": min(accs.values()), "worst_speaker": min(accs, key=accs.get),
               "config": cfg.to_dict()}
    (out / "loso.json").write_text(json.dumps(summary, indent=1))
    return summary
