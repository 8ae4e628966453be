"""The in-the-loop study of issue 13 (docs/in-the-loop.md): for each mismatch spread and chip,

1. the software-trained model deployed unchanged on the chip;
2. after in-the-loop fine-tuning on that chip;
3. that model moved to a *different* chip (the next seed in ``--chips``), and after a short
   in-the-loop fine-tune there;
4. mismatch-aware software fine-tuning (a fresh random chip per batch, same spread, same epochs),
   deployed on the chip.

    python -m spikewire.tools.inloop_study --data PATH/TO/fsdd --out runs/study \\
        --spreads 0 0.05 0.1 0.2 --chips 3 4 5 [--epochs 2] [--move-epochs 1] [--lr 0.02]
    python -m spikewire.tools.inloop_study --out runs/study --report docs/in-the-loop.png

Every result is written to ``OUT/results.json`` as soon as it exists and fine-tuned models to
``OUT/models/``; a rerun skips what is there (resumable).  Accuracies are measured on the C core of
each chip on the FSDD test split and on a validation split (recording index 5-9 of every speaker,
held out of the fine-tuning data: the split for choosing settings).  ``--report`` prints the table
(median and range over chips) and writes the plot.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

log = logging.getLogger("spikewire.tools.inloop_study")

VAL_INDICES = range(5, 10)  # recording indices held out of fine-tuning (the validation split)
ROWS = ("software", "in_loop", "moved", "moved_tuned", "mismatch_aware")
ROW_NAMES = {"software": "1. software model, unchanged", "in_loop": "2. in the loop on the chip",
             "moved": "3a. moved to another chip", "moved_tuned": "3b. + short fine-tune there",
             "mismatch_aware": "4. mismatch-aware software"}


class HeldOut:
    """A ``spikewire.tools.train.Data`` without the validation recordings in its training variants."""

    def __init__(self, data):
        self.data = data
        self.drop = {i for i, u in enumerate(data.train_utts) if u.index in VAL_INDICES}
        self.val_utts = [u for u in data.train_utts if u.index in VAL_INDICES]
        if not self.val_utts:
            raise ValueError("no FSDD training recordings with index 5-9 to validate on")

    def train_variant(self, v: int):
        return [s for i, s in enumerate(self.data.train_variant(v)) if i not in self.drop]


def chip_of(seed: int, spread: float):
    from spikewire.config import Chip

    return Chip(seed=int(seed), threshold=spread, leak=spread, decay=spread, gain=spread)


def _key(spread: float, chip: int) -> str:
    return f"{spread:g}/{chip}"


class Study:
    def __init__(self, a):
        from spikewire.model import load
        from spikewire.tools.inloop import train_config_of
        from spikewire.tools.train import Data

        self.a = a
        self.out = Path(a.out)
        (self.out / "models").mkdir(parents=True, exist_ok=True)
        self.base = load(a.model)
        self.tcfg = train_config_of(self.base, data=a.data, cache=a.cache, out=str(self.out), variants=a.variants)
        data = Data(self.tcfg, self.base.frontend, self.base.vocabulary)
        self.data = HeldOut(data)
        self.sets = {"test": data.clean(data.test), "val": data.clean(self.data.val_utts)}
        self.path = self.out / "results.json"
        self.res = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.res.setdefault("settings", {k: v for k, v in vars(a).items() if k != "report"})
        self.res.setdefault("runs", {})
        self.res.setdefault("timing", {})

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.res, indent=1))
        tmp.replace(self.path)

    def acc(self, model, chip) -> dict:
        from spikewire.tools.inloop import evaluate_on_chip

        return {k: evaluate_on_chip(model, s, chip, self.a.noise, 0)["acc"] for k, s in self.sets.items()}

    def tune(self, name: str, model, chip, epochs: int, forward: str = "chip", spread: float = 0.0):
        """Fine-tune ``model`` (cached as OUT/models/NAME.swm) and return it with its history."""
        from spikewire.model import load
        from spikewire.tools.inloop import FinetuneConfig, VirtualChip, finetune

        path = self.out / "models" / f"{name}.swm"
        hpath = path.with_suffix(".json")
        if path.exists() and hpath.exists():
            return load(path), json.loads(hpath.read_text())
        fcfg = FinetuneConfig(epochs=epochs, lr=self.a.lr, batch_size=self.a.batch_size, seed=self.a.seed,
                              forward=forward, mismatch_spread=spread, threads=self.a.threads)
        vchip = VirtualChip(model.core, model.params, chip, self.a.noise, self.a.seed) if forward == "chip" else None
        tuned, hist = finetune(model, self.data, self.tcfg, fcfg, vchip)
        tuned.save(path)
        hpath.write_text(json.dumps(hist, indent=1))
        return tuned, hist

    def run(self) -> None:
        a = self.a
        for spread in a.spreads:
            chips = a.chips if spread > 0 else a.chips[:1]  # without mismatch every seed is the same chip
            aware = None
            for i, seed in enumerate(chips):
                key = _key(spread, seed)
                r = self.res["runs"].get(key, {})
                if all(k in r for k in ROWS if spread > 0 or k not in ("moved", "moved_tuned")):
                    continue
                t0 = time.time()
                chip = chip_of(seed, spread)
                r["software"] = self.acc(self.base, chip)
                tuned, hist = self.tune(f"s{spread:g}-chip{seed}", self.base, chip, a.epochs)
                r["in_loop"] = self.acc(tuned, chip)
                r["in_loop_history"] = [{k: h[k] for k in ("loss", "acc", "time_s", "cpu_s") if k in h} for h in hist]
                if spread > 0:
                    other = chips[(i + 1) % len(chips)] if len(chips) > 1 else seed + 1000
                    chip2 = chip_of(other, spread)
                    r["moved_to"] = other
                    r["moved"] = self.acc(tuned, chip2)
                    r["software_on_moved"] = self.acc(self.base, chip2)
                    t2, _ = self.tune(f"s{spread:g}-chip{seed}-to{other}", tuned, chip2, a.move_epochs)
                    r["moved_tuned"] = self.acc(t2, chip2)
                if aware is None:
                    fwd = "mismatch" if spread > 0 else "software"
                    aware, ah = self.tune(f"s{spread:g}-aware", self.base, None, a.epochs, fwd, spread)
                    self.res["timing"][f"{spread:g}/{fwd}"] = [{k: h[k] for k in ("time_s", "cpu_s") if k in h}
                                                             for h in ah]
                r["mismatch_aware"] = self.acc(aware, chip)
                r["wall_s"] = round(time.time() - t0, 1)
                self.res["runs"][key] = r
                self.save()
                log.info("spread %g chip %d: %s", spread, seed,
                         {k: r[k]["test"] for k in ROWS if k in r})


def _stats(v: Sequence[float]) -> tuple[float, float, float]:
    v = np.asarray(v, np.float64)
    return float(np.median(v)), float(v.min()), float(v.max())


def table(res: dict, split: str = "test") -> str:
    """Markdown table: median and range over chips of each row's accuracy, per spread."""
    spreads = sorted({float(k.split("/")[0]) for k in res["runs"]})
    head = "| | " + " | ".join(f"{100 * s:g} %" for s in spreads) + " |"
    lines = [head, "|---|" + "---|" * len(spreads)]
    for row in ROWS:
        cells = []
        for s in spreads:
            v = [r[row][split] for k, r in res["runs"].items() if float(k.split("/")[0]) == s and row in r]
            if not v:
                cells.append("—")
                continue
            m, lo, hi = _stats(v)
            cells.append(f"{100 * m:.1f}" + ("" if len(v) == 1 else f" ({100 * lo:.1f}–{100 * hi:.1f})"))
        lines.append(f"| {ROW_NAMES[row]} | " + " | ".join(cells) + " |")
    n = {s: sum(1 for k in res["runs"] if float(k.split("/")[0]) == s) for s in spreads}
    lines.append("| chips | " + " | ".join(str(n[s]) for s in spreads) + " |")
    return "\n".join(lines)


def recovered(res: dict, spread: float, split: str = "test") -> Optional[tuple[float, float, float]]:
    """Per chip: (in-loop - software) / (ideal - software), the fraction of the mismatch loss recovered."""
    ideal = [r["software"][split] for k, r in res["runs"].items() if float(k.split("/")[0]) == 0]
    if not ideal:
        return None
    out = []
    for k, r in res["runs"].items():
        if float(k.split("/")[0]) == spread and "in_loop" in r:
            loss = ideal[0] - r["software"][split]
            if loss > 0:
                out.append((r["in_loop"][split] - r["software"][split]) / loss)
    return _stats(out) if out else None


def plot(res: dict, path: Path, split: str = "test") -> None:
    # no pyplot: a Figure with its own Agg canvas touches no process-wide backend state
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    spreads = sorted({float(k.split("/")[0]) for k in res["runs"]})
    fig = Figure(figsize=(6.4, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for j, row in enumerate(ROWS):
        xs, ys = [], []
        for s in spreads:
            for k, r in res["runs"].items():
                if float(k.split("/")[0]) == s and row in r:
                    xs.append(100 * s + (j - 2) * 0.35)
                    ys.append(100 * r[row][split])
        if not xs:
            continue
        med = [np.median([y for x, y in zip(xs, ys) if abs(x - (100 * s + (j - 2) * 0.35)) < 1e-9])
               for s in spreads if any(abs(x - (100 * s + (j - 2) * 0.35)) < 1e-9 for x in xs)]
        sx = [100 * s + (j - 2) * 0.35 for s in spreads if any(abs(x - (100 * s + (j - 2) * 0.35)) < 1e-9 for x in xs)]
        line, = ax.plot(sx, med, "-", marker="o", label=ROW_NAMES[row])
        ax.plot(xs, ys, ".", color=line.get_color(), alpha=0.5)
    ax.set_xlabel("mismatch spread (%)")
    ax.set_ylabel(f"accuracy on the chip, FSDD {split} (%)")
    ax.set_xticks([100 * s for s in spreads])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m spikewire.tools.inloop_study", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="", help="FSDD folder (with recordings/)")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="kws-digits-fsdd",
                   help="the software-trained model (path or shipped name; default: the FSDD model the study was made with)")
    p.add_argument("--spreads", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2])
    p.add_argument("--chips", type=int, nargs="+", default=[3, 4, 5])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--move-epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--variants", type=int, default=2, help="augmented training copies to cycle through")
    p.add_argument("--noise", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default="")
    p.add_argument("--report", default="", metavar="PNG", help="print the table of OUT/results.json, write the plot")
    a = p.parse_args(argv)
    if a.report:
        res = json.loads((Path(a.out) / "results.json").read_text())
        for split in ("test", "val"):
            print(f"FSDD {split}:\n{table(res, split)}\n")
            for s in sorted({float(k.split('/')[0]) for k in res['runs']}):
                rc = recovered(res, s, split)
                if rc and s > 0:
                    print(f"spread {100 * s:g} %: loss recovered by in-the-loop {100 * rc[0]:.0f} % "
                          f"(chips {100 * rc[1]:.0f}–{100 * rc[2]:.0f} %)")
            print()
        plot(res, Path(a.report))
        return 0
    if not a.data:
        p.error("--data is needed to run the study")
    if any(not 0 <= s <= 0.5 for s in a.spreads):
        p.error("spreads must be in 0..0.5")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # the study's progress
    Study(a).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
