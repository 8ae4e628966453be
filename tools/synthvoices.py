"""Synthetic voices as extra training speakers (issue 11): the digits, and non-digit words, spoken by
espeak-ng voice variants, flite voices and Debian festival voices.

    python -m spikewire.tools.synthvoices --out DIR [--per-digit 3] [--seed 0]

writes ``DIR/digits/{digit}_{speaker}_{n}.wav`` (read by
:func:`spikewire.tools.datasets.digit_folder`) and ``DIR/words/{word}/{speaker}_{n}.wav`` (the
"no keyword" class, :func:`~spikewire.tools.datasets.word_folder`, the words of
:data:`spikewire.tools.words.BACKGROUND_WORDS`, ``--words-per-voice`` of them per voice, so a
synthetic timbre is not by itself a sign of a digit).  A *speaker* is one engine voice:

* espeak-ng: :data:`ESPEAK_BASES` (accents) x variants (:data:`ESPEAK_VARIANTS`), ``--espeak-voices``
  of the combinations (seeded); speed 120-200 wpm and pitch 25-75 drawn per clip;
* flite (``apt-get install flite``): its voices kal, kal16, awb, rms, slt; duration stretch
  0.85-1.25 and a mean pitch around the voice's own drawn per clip;
* festival (``apt-get install festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts``):
  kal_diphone, ked_diphone, cmu_us_slt_arctic_hts; duration stretch 0.85-1.25 per clip.

Engines that are not installed are skipped (and said so).  Every clip is trimmed of leading and
trailing near-silence and written at the engine's own rate; the file name holds the speaker and
the clip index, the settings are drawn from the seed, so a rerun writes the same files (existing
files are kept).  The licences: espeak-ng GPL-3.0, flite BSD-like (CMU), festival and its voices
MIT/BSD-like (CSTR, CMU); the audio they generate is not covered by the programs' licences.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from spikewire.audio import read_wav, write_wav
from spikewire.tools.datasets import DIGIT_WORDS
from spikewire.tools.words import BACKGROUND_WORDS, WordsError, trim

ESPEAK_BASES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029",
                "en-us-nyc")
ESPEAK_VARIANTS = ("", "f1", "f2", "f3", "f4", "f5", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "klatt", "klatt2",
                   "klatt3", "klatt4", "klatt6", "Alicia", "Andrea", "Annie", "belinda", "david", "ed", "grandma",
                   "john", "linda", "max", "michel", "norbert", "paul", "steph", "travis", "victor", "whisper")
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
#: flite's mean pitch (Hz) per voice, around which a clip's is drawn (0.85-1.2 x)
FLITE_F0 = {"kal": 105.0, "kal16": 105.0, "awb": 110.0, "rms": 100.0, "slt": 170.0}
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")


def _run(cmd: Sequence[str], what: str, stdin: Optional[str] = None) -> None:
    try:
        subprocess.run(list(cmd), check=True, capture_output=True, timeout=60, input=stdin, text=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        raise WordsError(f"{what} failed: {e}") from None


def _write_clip(p: Path, make: Callable[[Path], None]) -> None:
    """``make(tmp)`` writes a WAV to tmp; it is trimmed and renamed to ``p`` (atomically)."""
    p.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(suffix=".wav", dir=p.parent, delete=False) as tmp:
        tmp_path = Path(tmp.name)
    try:
        make(tmp_path)
        x, r = read_wav(tmp_path)
        x = trim(x)
        if x.size < r // 20:
            raise WordsError(f"{p.name}: the engine produced less than 50 ms of sound")
        write_wav(tmp_path, x, r)
        os.replace(tmp_path, p)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def speakers(seed: int, espeak_voices: int) -> list[tuple[str, str, str]]:
    """``[(speaker id, engine, voice)]`` of the installed engines, in a fixed order."""
    out = []
    if shutil.which("espeak-ng"):
        combos = [(b, v) for b in ESPEAK_BASES for v in ESPEAK_VARIANTS]
        rng = np.random.default_rng([seed, 11])
        for i in sorted(rng.permutation(len(combos))[:espeak_voices]):
            b, v = combos[int(i)]
            out.append((f"espeak-{b}" + (f"-{v}" if v else ""), "espeak", b + (f"+{v}" if v else "")))
    if shutil.which("flite"):
        out += [(f"flite-{v}", "flite", v) for v in FLITE_VOICES]
    if shutil.which("text2wave"):
        out += [(f"festival-{v.replace('_', '-')}", "festival", v) for v in FESTIVAL_VOICES]
    return out


def say(engine: str, voice: str, text: str, rng: np.random.Generator) -> Callable[[Path], None]:
    """A writer of one clip of ``text`` with settings drawn from ``rng`` (drawn now, not at write time)."""
    if engine == "espeak":
        speed, pitch = int(rng.integers(120, 201)), int(rng.integers(25, 76))
        return lambda p: _run(["espeak-ng", "-w", str(p), "-s", str(speed), "-p", str(pitch), "-v", voice, text],
                              f"espeak-ng {voice}")
    if engine == "flite":
        stretch, f0 = rng.uniform(0.85, 1.25), FLITE_F0[voice] * rng.uniform(0.85, 1.2)
        return lambda p: _run(["flite", "-voice", voice, "--setf", f"duration_stretch={stretch:.3f}",
                               "--setf", f"int_f0_target_mean={f0:.1f}", "-t", text, "-o", str(p)], f"flite {voice}")
    if engine == "festival":
        stretch = rng.uniform(0.85, 1.25)
        return lambda p: _run(["text2wave", "-eval", f"(voice_{voice})", "-eval",
                               f"(Parameter.set 'Duration_Stretch {stretch:.3f})", "-o", str(p)],
                              f"festival {voice}", stdin=text)
    raise ValueError(f"unknown engine {engine!r}")


def generate(out: Path, per_digit: int = 3, words_per_voice: int = 8, seed: int = 0,
             espeak_voices: int = 40) -> tuple[int, int, list[str]]:
    """Write the clips (existing files kept); returns (digit clips, word clips, speaker ids)."""
    out = Path(out)
    spk = speakers(seed, espeak_voices)
    n_d = n_w = 0
    for si, (sid, engine, voice) in enumerate(spk):
        rng = np.random.default_rng([seed, 13, si])
        for d, word in enumerate(DIGIT_WORDS):
            for k in range(per_digit):
                make = say(engine, voice, word, rng)
                p = out / "digits" / f"{d}_{sid}_{k}.wav"
                if not p.exists():
                    _write_clip(p, make)
                n_d += 1
        for k, wi in enumerate(sorted(rng.permutation(len(BACKGROUND_WORDS))[:words_per_voice])):
            word = BACKGROUND_WORDS[int(wi)]
            make = say(engine, voice, word, rng)
            p = out / "words" / word / f"{sid}_{k}.wav"
            if not p.exists():
                _write_clip(p, make)
            n_w += 1
    return n_d, n_w, [s[0] for s in spk]


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m spikewire.tools.synthvoices", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--per-digit", type=int, default=3, help="clips of each digit per voice (default 3)")
    ap.add_argument("--words-per-voice", type=int, default=8, help="background words per voice (default 8)")
    ap.add_argument("--espeak-voices", type=int, default=40, help="espeak-ng accent+variant combinations (40)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if min(a.per_digit, a.espeak_voices) < 1 or a.words_per_voice < 0 or a.seed < 0:
        print("error: --per-digit and --espeak-voices must be >= 1, --words-per-voice and --seed >= 0", file=sys.stderr)
        return 2
    for tool, pkg in (("espeak-ng", "espeak-ng"), ("flite", "flite"), ("text2wave", "festival + festvox voices")):
        if shutil.which(tool) is None:
            print(f"note: {tool} not installed ({pkg}); its voices are skipped", file=sys.stderr)
    try:
        n_d, n_w, spk = generate(a.out, a.per_digit, a.words_per_voice, a.seed, a.espeak_voices)
    except (WordsError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{n_d} digit clips and {n_w} word clips of {len(spk)} synthetic voices in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
