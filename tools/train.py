"""Offline surrogate-gradient training of keyword-spotting models for the spikewire core.

    python -m spikewire.tools.train --data /work/shared/data/fsdd --out runs/kws [--epochs N] [--seed S] [--resume]

Pipeline
--------
* Words: FSDD (train split; index 5..49) plus, optionally, folders of labelled WAVs
  (``--wavs DIR``, labels outside the vocabulary train the "no keyword" unit).  Every
  file goes through the *same* front end as the runtime (``spikewire.frontend.encode``);
  clean encodings are kept in :class:`spikewire.tools.datasets.SpikeCache`.
* Augmentation: each word is placed inside background context (0-300 ms before,
  100-300 ms after; silence or white/pink/brown noise at a random SNR) with a random
  gain, then encoded.  ``--variants`` deterministic augmented copies of the training
  set are encoded once and cached (``cache/train-v1/<hash>.npz``); epoch e uses copy
  e mod variants.
* "No keyword" unit: noise segments at random levels and non-digit words synthesised
  with espeak-ng (several voices, speeds, pitches; cached WAVs, generated
  deterministically), placed in the same kind of context.
* Model: :class:`spikewire.tools.snn.SNN` (64 in, 192 recurrent LIF, 11 leaky readout: fits
  the bss2 preset; 4 ms steps).  Float-mode epochs first (fast), then fixed-mode epochs at
  ``fixed_lr_scale`` of the learning rate whose forward pass is the core's integer
  arithmetic bit for bit.  Loss: cross entropy on the per-unit max (and, by default, also
  the mean) over time of the readout membrane, plus per-neuron rate bounds.  W_rec is
  learned; an exponential moving average of the weights is evaluated and exported
  (docs/training.md has the recipe and what each option did).
* Batches bucketed by length, BPTT, Adam with cosine decay, seeds everywhere,
  a checkpoint per epoch, ``--resume`` continues exactly.
* Export (:func:`export_model`): a ``spikewire.model.Model`` with integer weights, the
  ideal chip's integer parameters, the CADC range and offline threshold chosen on the
  training set (a starting point for the streaming decision; calibrate it with
  ``spikewire eval --calibrate``), the training config and metrics including the
  accuracy of the C core on the FSDD test split.

Modules: ``recipe`` (:class:`TrainConfig`), ``augment`` (context, gain, speed, noise
segments), ``trainset`` (encoded and cached sets, batches), ``trainer`` (the loop),
``export`` (the model file), ``loso`` (leave-one-speaker-out); this one is the command line
and re-exports their public names.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from spikewire.progress import run_logging

# the pieces, re-exported: ``spikewire.tools.train`` stays the one import for all of them
from .augment import in_context, noise_segment
from .datasets import DIGIT_WORDS, fsdd
from .export import choose_readout, core_scores, export_model
from .loso import leave_one_speaker_out
from .recipe import TrainConfig, frontend_config
from .trainer import (build_net, evaluate_torch, loss_terms, mode_of_epoch, neuron_params, set_mode, train)
from .trainset import Data, Sample, batches, dense_batch

__all__ = ["TrainConfig", "frontend_config", "in_context", "noise_segment", "Data", "Sample", "batches",
           "dense_batch", "build_net", "evaluate_torch", "loss_terms", "mode_of_epoch", "neuron_params", "set_mode",
           "train", "choose_readout", "core_scores", "export_model", "leave_one_speaker_out", "main", "DIGIT_WORDS"]


log = logging.getLogger("spikewire.tools.train")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--in-the-loop" in argv:  # fine-tuning on a virtual chip: its own options (tools/inloop.py)
        from spikewire.tools.inloop import main as inloop_main

        return inloop_main([x for x in argv if x != "--in-the-loop"])
    p = argparse.ArgumentParser(prog="python -m spikewire.tools.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="FSDD folder (with recordings/)")
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, model, log")
    p.add_argument("--wavs", action="append", default=[], help="extra folder of labelled WAVs (repeatable)")
    p.add_argument("--cache", default="", help="cache folder (default $SPIKEWIRE_CACHE or ~/.cache/spikewire)")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--float-epochs", type=int, default=TrainConfig.float_epochs)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mismatch", type=float, default=0.0, help="train on a fresh chip per batch with this spread")
    p.add_argument("--surrogate", default=TrainConfig.surrogate)
    p.add_argument("--readout", default=TrainConfig.readout, choices=["max", "mean", "max+mean"])
    p.add_argument("--threads", type=int, default=TrainConfig.threads)
    p.add_argument("--rec-lr-scale", type=float, default=TrainConfig.rec_lr_scale)
    p.add_argument("--tau", type=float, nargs=4, metavar=("SYN", "MEM", "OUT_SYN", "OUT_MEM"),
                   default=[TrainConfig.tau_syn_ms, TrainConfig.tau_mem_ms, TrainConfig.out_tau_syn_ms,
                            TrainConfig.out_tau_mem_ms], help="time constants (ms) of hidden and readout")
    p.add_argument("--exclude-speaker", action="append", default=[], metavar="NAME",
                   help="leave this FSDD speaker out of training and test on all of its recordings (repeatable)")
    p.add_argument("--leave-one-speaker-out", action="store_true",
                   help="train one model per FSDD speaker without that speaker (OUT/loso-NAME/), test each on "
                        "all recordings of its held-out speaker, summarise in OUT/loso.json; resumable")
    p.add_argument("--tau-syn-range", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                   help="per-neuron hidden synaptic time constants, log-uniform in LO..HI ms")
    p.add_argument("--tau-mem-range", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                   help="per-neuron hidden membrane time constants, log-uniform in LO..HI ms")
    p.add_argument("--step-ms", type=float, default=TrainConfig.step_ms, help="time step of front end and core")
    p.add_argument("--n-hid", type=int, default=TrainConfig.n_hid)
    p.add_argument("--ema", type=float, default=TrainConfig.ema, help="weight-average decay per step (0: off)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--in-the-loop", action="store_true",
                   help="fine-tune a model on a virtual chip instead (docs/in-the-loop.md; "
                        "`spikewire train --in-the-loop --help` lists its options)")
    p.add_argument("--name", default="kws-digits")
    p.add_argument("--model", default="", help="model file to write (default OUT/NAME.swm)")
    a = p.parse_args(argv)
    if a.leave_one_speaker_out and a.exclude_speaker:
        p.error("--leave-one-speaker-out chooses the excluded speaker itself; drop --exclude-speaker")
    out = Path(a.out)
    try:  # bad settings or data: one clear line, no traceback, nothing trained
        cfg = TrainConfig(data=a.data, out=str(out), wavs=a.wavs, cache=a.cache, seed=a.seed, epochs=a.epochs,
                          exclude_speakers=a.exclude_speaker, step_ms=a.step_ms, n_hid=a.n_hid, ema=a.ema,
                          float_epochs=a.float_epochs, batch_size=a.batch_size, lr=a.lr, surrogate=a.surrogate,
                          readout=a.readout, threads=a.threads, rec_lr_scale=a.rec_lr_scale,
                          tau_syn_ms=a.tau[0], tau_mem_ms=a.tau[1], out_tau_syn_ms=a.tau[2],
                          out_tau_mem_ms=a.tau[3], tau_syn_range_ms=tuple(a.tau_syn_range or ()),
                          tau_mem_range_ms=tuple(a.tau_mem_range or ()), mismatch=a.mismatch > 0,
                          mismatch_spread=a.mismatch or TrainConfig.mismatch_spread)
        data = None if a.leave_one_speaker_out else Data(cfg, frontend_config(cfg), DIGIT_WORDS)
        if a.leave_one_speaker_out:
            fsdd(cfg.data, "all")
    except ValueError as e:  # includes DatasetError
        print(f"python -m spikewire.tools.train: error: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    run_logging(out / "train.log")
    if a.leave_one_speaker_out:
        summary = leave_one_speaker_out(cfg, a.name, progress=True)
        log.info("leave-one-speaker-out: %s", json.dumps(summary, indent=1))
        return 0
    t0 = time.time()
    res = train(cfg, resume=a.resume, data=data, progress=True)
    path = Path(a.model) if a.model else out / f"{a.name}.swm"
    model = export_model(res, cfg, path, a.name)
    log.info("wrote %s in %.1f s total", path, time.time() - t0)
    log.info("metrics: %s", json.dumps(model.metrics, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
