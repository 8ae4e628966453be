"""Words synthesised with espeak-ng: words outside a keyword model's vocabulary, and the digits.

A keyword spotter must stay silent on words it does not know, and measuring
that needs words that played no part in choosing the model.  Three disjoint
sets, so that no number is measured on words that also tuned it:

* ``background``: trained on, as the "no keyword" unit's examples (tools/trainset.py);
* ``calibration``: never trained on; the decision rule is calibrated with them
  (``spikewire eval --calibrate --unknown DIR``);
* ``heldout``: never trained on, never calibrated on; false accepts are
  reported on them (training metrics, ``spikewire eval --unknown DIR``).

Homophones of the digits (won, to/too, for, ate) are left out of all three.

A fourth set, ``digits``, is the vocabulary itself (``zero`` ... ``nine``) in synthetic
voices: extra training speakers for ``python -m spikewire.tools.train --wavs DIR``
(docs/training.md has what it did for speakers the model never heard).

    python -m spikewire.tools.words --set calibration --out DIR [--per-word 10] [--seed 0]

writes ``DIR/WORD/WORD_VOICE_SPEED_PITCH.wav`` (the folder gives the label).
Clips are deterministic for a seed: voices cycle through :data:`ESPEAK_VOICES`,
speed and pitch are drawn from the seed.  espeak-ng is GPL-3.0; the audio it
generates is not covered by it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from spikewire.audio import read_wav, write_wav
from spikewire.tools.datasets import DIGIT_WORDS

BACKGROUND_WORDS = (
    "hello", "yes", "no", "stop", "go", "left", "right", "up", "down", "on", "off", "ten",
    "eleven", "twelve", "twenty", "hundred", "thousand", "cat", "dog", "house", "water", "music",
    "light", "open", "close", "table", "window", "apple", "orange", "green", "blue", "red", "happy",
    "morning", "night", "computer", "weather", "again", "maybe", "please",
)
CALIBRATION_WORDS = (
    "kitchen", "garden", "paper", "river", "summer", "winter", "money", "sister", "doctor", "pencil",
    "letter", "button", "rabbit", "mountain", "yesterday", "banana", "cheese", "monkey", "purple", "silver",
)
HELDOUT_WORDS = ("yellow", "bird", "wow", "learn", "follow", "visual", "tree", "sheila", "marvin", "forward")
UNKNOWN_SETS = {"background": BACKGROUND_WORDS, "calibration": CALIBRATION_WORDS, "heldout": HELDOUT_WORDS}
WORD_SETS = {**UNKNOWN_SETS, "digits": DIGIT_WORDS}
ESPEAK_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us+f2", "en-gb+f3",
                 "en-us+m3", "en-029+f4", "en-gb-scotland+m7")


class WordsError(RuntimeError):
    """espeak-ng is missing or failed."""


def trim(x: np.ndarray, rel: float = 0.02) -> np.ndarray:
    """Cut leading/trailing near-silence (espeak pads its output)."""
    if x.size == 0:
        return x
    thr = rel * np.max(np.abs(x))
    idx = np.flatnonzero(np.abs(x) > thr)
    return x[idx[0]:idx[-1] + 1] if idx.size else x[:0]


def espeak_clips(root: Path, words: Sequence[str], per_word: int, seed: int,
                 by_word: bool = False) -> list[tuple[str, Path]]:
    """Synthesise (once; cached under ``root``) ``per_word`` clips of each word with espeak-ng.

    Returns ``[(word, path)]``.  Files are ``root/WORD_VOICE_SPEED_PITCH.wav``, or
    ``root/WORD/WORD_VOICE_SPEED_PITCH.wav`` with ``by_word``; an existing file is
    reused (the name holds every setting).  Written atomically.
    """
    if shutil.which("espeak-ng") is None:
        raise WordsError("espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng)")
    out = []
    rng = np.random.default_rng([seed, 7])
    root = Path(root)
    for wi, word in enumerate(words):
        folder = root / word if by_word else root
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_word):
            voice = ESPEAK_VOICES[(wi * per_word + k) % len(ESPEAK_VOICES)]
            speed = int(rng.integers(110, 200))
            pitch = int(rng.integers(20, 80))
            p = folder / f"{word}_{voice.replace('+', '-')}_{speed}_{pitch}.wav"
            if not p.exists():
                with tempfile.NamedTemporaryFile(suffix=".wav", dir=folder, delete=False) as tmp:
                    tmp_path = Path(tmp.name)
                try:
                    try:
                        subprocess.run(["espeak-ng", "-w", str(tmp_path), "-s", str(speed), "-p", str(pitch),
                                        "-v", voice, word], check=True, capture_output=True, timeout=30)
                    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
                        raise WordsError(f"espeak-ng failed on {word!r} ({voice}): {e}") from None
                    x, r = read_wav(tmp_path)
                    write_wav(tmp_path, trim(x), r)
                    os.replace(tmp_path, p)
                finally:
                    if tmp_path.exists():
                        tmp_path.unlink()
            out.append((word, p))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m spikewire.tools.words", description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", required=True, choices=sorted(WORD_SETS), help="which word list")
    ap.add_argument("--out", required=True, type=Path, help="output folder (one sub-folder per word)")
    ap.add_argument("--per-word", type=int, default=10, help="clips per word (default 10)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.per_word < 1 or args.seed < 0:
        print(f"error: --per-word must be >= 1 and --seed >= 0, got {args.per_word} and {args.seed}",
              file=sys.stderr)
        return 2
    try:
        clips = espeak_clips(args.out, WORD_SETS[args.set], args.per_word, args.seed, by_word=True)
    except (WordsError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(clips)} clips of {len(WORD_SETS[args.set])} {args.set} words in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
