"""What the corpora's voices look like, and what a front end makes of them (issue 11).

    python -m spikewire.tools.audiostats --root ../shared/data [--per-speaker 6] [--out stats.json]

For a seeded sample of digit files of every speaker (``--per-speaker`` files each):

* **audio**: active level (dBFS RMS of the loudest quarter of 10 ms frames), noise floor
  (dBFS RMS of the quietest tenth), spectral tilt (dB per octave, least-squares slope of the
  long-term spectrum between 200 and 3400 Hz);
* **front ends** (the default log front end and ``normalize="pcen"`` with the many-voices
  settings): events per second, and the *speaker spread*: the standard deviation over
  speakers of log2(events/s) (0 = every voice gives the same amount of input), and the
  mean correlation between each speaker's per-channel profile and the mean profile;
* **noise**: the same files with -30 dBFS pink noise added: correlation of the per-channel,
  per-50 ms event counts with those of the clean file (1 = the noise changes nothing).

Numbers, not pass/fail: docs/training.md quotes them.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from typing import Optional, Sequence

import numpy as np

from spikewire.audio import read_wav
from spikewire.frontend import FrontEndConfig, encode
from spikewire.tools.datasets import CORPORA, load_corpus
from spikewire.tools.voices import VOICES_FRONTEND, active_rms


def noise_floor_db(x: np.ndarray, rate: int) -> float:
    n = max(1, rate // 100)
    k = x.shape[0] // n
    if k == 0:
        return float("-inf")
    fr = np.sort(np.mean(x[:k * n].astype(np.float64).reshape(k, n) ** 2, axis=1))
    q = fr[:max(1, k // 10)]
    return float(10 * np.log10(np.mean(q) + 1e-20))


def tilt_db_per_octave(x: np.ndarray, rate: int) -> float:
    n = 512
    if x.shape[0] < n:
        return float("nan")
    k = x.shape[0] // n
    spec = np.mean(np.abs(np.fft.rfft(x[:k * n].reshape(k, n) * np.hanning(n), axis=1)) ** 2, axis=0)
    f = np.fft.rfftfreq(n, 1.0 / rate)
    sel = (f >= 200) & (f <= min(3400, 0.45 * rate))
    if sel.sum() < 3:
        return float("nan")
    return float(np.polyfit(np.log2(f[sel]), 10 * np.log10(spec[sel] + 1e-20), 1)[0])


def pink(n: int, level_db: float, rng: np.random.Generator) -> np.ndarray:
    w = rng.standard_normal(n)
    s = np.fft.rfft(w)
    f = np.arange(s.shape[0], dtype=np.float64)
    f[0] = 1.0
    s /= np.sqrt(f)
    s[0] = 0.0
    y = np.fft.irfft(s, n)
    return y * (10 ** (level_db / 20) / (np.sqrt(np.mean(y ** 2)) + 1e-20))


def _grid(ev, n_ch: int, steps_per_bin: int) -> np.ndarray:
    steps = np.repeat(np.arange(ev.n_steps), np.diff(ev.indptr))
    g = np.zeros(((ev.n_steps + steps_per_bin - 1) // steps_per_bin + 1, n_ch))
    np.add.at(g, (steps // steps_per_bin, ev.channels), 1.0)
    return g


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def frontend_stats(files: dict, cfg: FrontEndConfig, noise_db: float = -30.0, seed: int = 0) -> dict:
    """``files``: {speaker: [(x, rate)]}."""
    rng = np.random.default_rng(seed)
    spb = max(1, int(round(50.0 / cfg.step_ms)))
    rates, profiles, noisy = {}, {}, []
    for spk, clips in files.items():
        prof = np.zeros(cfg.n_channels)
        ev_s, dur = 0, 0.0
        for x, r in clips:
            ev = encode(x, r, cfg)
            prof += np.bincount(ev.channels, minlength=cfg.n_channels)
            ev_s += ev.n_events
            dur += x.shape[0] / r
            y = np.clip(x + pink(x.shape[0], noise_db, rng), -1, 1)
            evn = encode(y, r, cfg)
            g0, g1 = _grid(ev, cfg.n_channels, spb), _grid(evn, cfg.n_channels, spb)
            m = min(g0.shape[0], g1.shape[0])
            noisy.append(_corr(g0[:m], g1[:m]))
        rates[spk] = ev_s / dur if dur else 0.0
        profiles[spk] = prof
    mean_prof = np.mean([p / max(p.sum(), 1) for p in profiles.values()], axis=0)
    cors = [_corr(p, mean_prof) for p in profiles.values()]
    lr = np.log2(np.array([max(v, 1e-3) for v in rates.values()]))
    return {"events_per_s_median": float(np.median(list(rates.values()))),
            "events_per_s_range": [float(min(rates.values())), float(max(rates.values()))],
            "speaker_spread_log2_rate": float(lr.std()),
            "profile_corr_to_mean": float(np.mean(cors)),
            "noise_corr_median": float(np.median(noisy)),
            "noise_db": noise_db}


def collect(root: str, per_speaker: int, seed: int = 0) -> dict:
    """{corpus: {speaker: [(x, rate)]}} digit files, ``per_speaker`` each (seeded)."""
    rng = np.random.default_rng(seed)
    out: dict = {}
    for c in CORPORA:
        if c.kind != "digits":
            continue
        by = defaultdict(list)
        for u in load_corpus(c, root):
            by[u.speaker].append(u)
        sel = {}
        for spk in sorted(by):
            us = by[spk]
            idx = rng.permutation(len(us))[:per_speaker]
            sel[spk] = [read_wav(us[i].path) for i in sorted(idx)]
        out[c.name] = sel
    return out


def audio_stats(files: dict) -> dict:
    lv, nf, tl = [], [], []
    for clips in files.values():
        for x, r in clips:
            lv.append(20 * np.log10(active_rms(x, r) + 1e-20))
            nf.append(noise_floor_db(x, r))
            tl.append(tilt_db_per_octave(x, r))
    q = lambda v: [float(np.nanpercentile(v, 10)), float(np.nanmedian(v)), float(np.nanpercentile(v, 90))]  # noqa
    return {"files": len(lv), "level_dbfs_p10_median_p90": q(lv), "noise_floor_dbfs_p10_median_p90": q(nf),
            "tilt_db_per_octave_p10_median_p90": q(tl)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m spikewire.tools.audiostats", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True)
    p.add_argument("--per-speaker", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    a = p.parse_args(argv)
    try:
        data = collect(a.root, a.per_speaker, a.seed)
    except ValueError as e:
        print(f"python -m spikewire.tools.audiostats: error: {e}", file=sys.stderr)
        return 2
    fes = {"log (default)": FrontEndConfig(step_ms=4.0, max_rate_hz=400.0, max_spikes_per_step=8),
           "pcen (voices)": FrontEndConfig(step_ms=4.0, **VOICES_FRONTEND)}
    rep: dict = {}
    everyone = {f"{c}:{s}": v for c, d in data.items() for s, v in d.items()}
    for c, d in data.items():
        rep[c] = {"speakers": len(d), **audio_stats(d)}
    rep["all digit speakers"] = {"speakers": len(everyone),
                                 **{name: frontend_stats(everyone, cfg, seed=a.seed) for name, cfg in fes.items()}}
    txt = json.dumps(rep, indent=1)
    print(txt)
    if a.out:
        with open(a.out, "w") as f:
            f.write(txt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
