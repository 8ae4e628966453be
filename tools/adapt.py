"""``spikewire adapt``: personalisation by K labelled utterances per word, through the runtime (issue 10).

``spikewire adapt --model M --data DIR --shots K [--old-data FSDD] [--out MODEL] [--json] [--seed S]``
(also ``python -m spikewire.tools.adapt``) picks K labelled utterances per word from DIR (seeded),
plays them as one audio stream through the streaming runtime (:class:`spikewire.pipeline.Pipeline`
with on-line learning on) and, after each utterance's stretch of evidence was decided, sends
``label WORD STRETCH_ID`` through the pipeline's control path, exactly as a user's label arrives
(docs/learning.md, "Personalisation").  It reports the offline accuracy on the *other* files of DIR
before and after, and with ``--old-data`` on the FSDD standard test split (index 0-4) of the other
speakers (forgetting).  JSON keys: ``new_before``, ``new_after``, ``old_before``, ``old_after``
(fractions 0-1; ``old_*`` null without ``--old-data``), ``shots``, ``n_new_eval`` and more
(``updates``, ``unheard``, ``seconds``, ...).  ``--out`` writes the adapted model (a normal model file)
with its provenance under ``training.adapted``.

A shot whose stretch the decision never saw (no word unit reached the threshold) cannot be labelled,
by a user or here: it is counted in ``unheard`` and its file listed in ``unheard_files``.  A rejected
stretch is a stretch: it is labelled like one that fired a keyword.

Needs no torch: the runtime, the front end and the C core only.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from spikewire.audio import read_wav_int16
from spikewire.learning import MATRICES, LearningConfig
from spikewire.model import Model, load as load_model, resolve as resolve_model
from spikewire.onlinelearn import ReplayConfig
from spikewire.sources import AudioBlock, Source

from .datasets import DatasetError, Utterance, wav_folder
from .offline import evaluate_files

__all__ = ["AdaptError", "ShotStream", "accuracy", "adapt", "main", "pick_shots", "stream_shots"]


class AdaptError(ValueError):
    """Bad input for ``spikewire adapt`` (the message says what)."""


def accuracy(model: Model, utts: Sequence[Utterance]) -> float | None:
    """Offline per-file accuracy (the model's offline rule on the C core); None for no files."""
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


class ShotStream(Source):
    """An audio source fed by a driver: :meth:`feed` queues samples, :meth:`end` ends the stream.

    Blocks of ``block_ms`` go to the pipeline with back-pressure (nothing is lost); ``fed`` counts
    the samples queued so far (:meth:`spikewire.pipeline.Pipeline.until_decided` waits for them)."""

    def __init__(self, rate: int, block_ms: float = 10.0):
        super().__init__("adapt:shots")
        self.rate = int(rate)
        self.block = max(1, int(round(rate * block_ms / 1000.0)))
        self.fed = 0
        self._q: asyncio.Queue = asyncio.Queue()
        self.counters = {"blocks": 0, "samples": 0}

    def feed(self, samples: np.ndarray) -> int:
        x = np.ascontiguousarray(samples, np.int16)
        self._q.put_nowait(x)
        self.fed += x.size
        return self.fed

    def end(self) -> None:
        self._q.put_nowait(None)

    async def run(self, emit) -> None:
        while (x := await self._q.get()) is not None:
            for i in range(0, x.size, self.block):
                block = x[i:i + self.block].copy()
                await emit.put(AudioBlock(block, time.monotonic()))
                self.counters["blocks"] += 1
                self.counters["samples"] += block.size


def _overlap(a0: int, a1: int, b0: int, b1: int) -> int:
    """Steps shared by [a0, a1) and [b0, b1)."""
    return max(0, min(a1, b1) - max(a0, b0))


async def _stream(model: Model, shots: Sequence[Utterance], audio: Sequence[np.ndarray], rate: int,
                  lc: LearningConfig, passes: int, gap_s: float, log, epochs: int = 1) -> dict:
    from spikewire.pipeline import Pipeline

    src = ShotStream(rate)
    pipe = Pipeline(model, src, [], metrics_interval=0, learn=True, learning=lc,
                    replay=ReplayConfig(passes=passes))
    replies: dict[int, asyncio.Future] = {}

    def on_reply(data: bytes) -> None:
        doc = json.loads(data)
        fut = replies.pop(doc.get("id"), None)
        if fut is not None and not fut.done():
            fut.set_result(doc)

    channel = pipe.control_channel(on_reply, name="adapt", timeout=None)
    next_id = iter(range(1, 1 << 62))

    async def call(cmd: str, **args) -> dict:
        rid = next(next_id)
        replies[rid] = asyncio.get_running_loop().create_future()
        channel.submit(json.dumps({"cmd": cmd, "id": rid, **args}))
        return await replies[rid]

    gap = np.zeros(int(round(gap_s * rate)), np.int16)
    out = {"updates": 0, "label_errors": [], "unheard_files": [], "extra_stretches": 0, "fired_right": 0,
           "fired_wrong": 0, "rejected": 0, "weights": None}
    run = asyncio.create_task(pipe.run(), name="adapt-pipeline")
    chan = asyncio.create_task(channel.run(), name="adapt-control")
    try:
        while not pipe.running:
            if run.done():
                run.result()
            await asyncio.sleep(0.005)
        await pipe.until_decided(src.feed(gap))
        for i, (u, x) in enumerate(list(zip(shots, audio)) * epochs):   # the shots again each epoch
            s0 = await pipe.until_decided(src.fed)
            s1 = await pipe.until_decided(src.feed(x))
            s2 = await pipe.until_decided(src.feed(gap))     # its stretch is decided in the silence after it
            r = await call("stretches")
            mine = [s for s in r["result"]["stretches"] if _overlap(s["start"], s["end"] + 1, s0, s2) > 0]
            if not mine:
                out["unheard_files"].append(str(u.path))
                log(f"shot {i + 1}/{len(shots)} {u.label} {Path(u.path).name}: no stretch (unheard)")
                continue
            out["extra_stretches"] += len(mine) - 1
            st = max(mine, key=lambda s: (_overlap(s["start"], s["end"] + 1, s0, s1), s["end"] - s["start"]))
            heard = model.labels[st["unit"]]
            if not st["fired"]:
                out["rejected"] += 1
            elif heard == u.label:
                out["fired_right"] += 1
            else:
                out["fired_wrong"] += 1
            rep = await call("label", word=u.label, stretch=st["id"])
            if rep["ok"]:
                out["updates"] += 1
            else:
                out["label_errors"].append({"file": str(u.path), "error": rep["error"]})
            log(f"shot {i + 1}/{len(shots)} {u.label} {Path(u.path).name}: stretch {st['id']} "
                f"({'fired' if st['fired'] else 'rejected'}, {heard}) -> "
                + (f"{rep['result']['weights_changed']} weights changed" if rep["ok"] else rep["error"]))
        if lc.si:   # the end of this task: what was learnt becomes importance (docs/learning.md)
            rep = await call("consolidate")
            if not rep["ok"]:
                raise AdaptError(f"consolidate: {rep['error']}")
            out["importance"] = await pipe.learning.si_importance()
        core = pipe.learning_bundle().core
        out["weights"] = await pipe.run_core_thread(lambda: {m: core.get_weights(m) for m in MATRICES})
        out["learning_counts"] = dict(pipe.learning.counts)
    finally:
        src.end()
        pipe.request_stop()
        chan.cancel()
        await asyncio.gather(chan, return_exceptions=True)
        await run
    return out


def stream_shots(model: Model, shots: Sequence[Utterance], lc: LearningConfig, *, passes: int = 1, epochs: int = 1,
                 gap_s: float = 1.0, log=None) -> dict:
    """Play ``shots`` through a learning :class:`~spikewire.pipeline.Pipeline`, each labelled through
    its control path once its stretch was decided; returns the counts and the live core's weights."""
    if not shots:
        raise AdaptError("no shots to learn")
    audio, rates = [], set()
    for u in shots:
        x, r = read_wav_int16(u.path)
        audio.append(x)
        rates.add(r)
    if len(rates) != 1:
        raise AdaptError(f"the shots must share one sample rate to be one stream, got {sorted(rates)} Hz")
    return asyncio.run(_stream(model, shots, audio, rates.pop(), lc, passes, gap_s, log or (lambda s: None), epochs))


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def adapt(model: Model, new: Sequence[Utterance], shots_per_word: int, lc: LearningConfig, *, seed: int = 0,
          passes: int = 1, epochs: int = 1, old: Optional[Sequence[Utterance]] = None, gap_s: float = 1.0,
          base_sha256: str | None = None, log=None) -> tuple[dict, Model]:
    """Pick the shots, stream them with their labels, measure; returns (report, adapted model)."""
    if shots_per_word < 1:
        raise AdaptError(f"--shots must be >= 1, got {shots_per_word}")
    t = time.perf_counter()
    shots, rest = pick_shots(new, model.vocabulary, shots_per_word, seed)
    st = stream_shots(model, shots, lc, passes=passes, epochs=epochs, gap_s=gap_s, log=log)
    from spikewire.checkpoint import model_id

    training = dict(model.training)
    training["adapted"] = {"base_model": model.name, "base_sha256": base_sha256, "base_id": model_id(model),
                           "rule": lc.rule, "learning": lc.to_dict(), "passes": passes, "epochs": epochs,
                           "shots": shots_per_word,
                           "shot_files": [Path(u.path).name for u in shots], "seed": seed,
                           "updates": st["updates"], "unheard": len(st["unheard_files"])}
    imp = st.get("importance")
    adapted = dataclasses.replace(model, name=f"{model.name}-adapted", weights=st["weights"], training=training,
                                  **({"importance": {**(model.importance or {}), **imp}, "learning": lc.to_dict()}
                                     if imp else {}))
    res = {"shots": shots_per_word, "n_shots": len(shots), "n_new_eval": len(rest), "seed": seed,
           "passes": passes, "epochs": epochs, "rule": lc.rule, "learning": lc.to_dict(), "consolidate": lc.si,
           "updates": st["updates"],
           "unheard": len(st["unheard_files"]), "unheard_files": st["unheard_files"],
           "label_errors": st["label_errors"], "extra_stretches": st["extra_stretches"],
           "shots_fired_right": st["fired_right"], "shots_fired_wrong": st["fired_wrong"],
           "shots_rejected": st["rejected"],
           "new_before": accuracy(model, rest), "new_after": accuracy(adapted, rest),
           "old_before": None, "old_after": None, "n_old_eval": 0}
    if old is not None:
        res.update(n_old_eval=len(old), old_before=accuracy(model, old), old_after=accuracy(adapted, old))
    res["weights_changed"] = int(sum(np.count_nonzero(adapted.weights[m] != model.weights[m]) for m in MATRICES))
    res["seconds"] = round(time.perf_counter() - t, 2)
    return res, adapted


#: The learning rule ``adapt`` uses unless ``--learning`` changes fields of it: e-prop on ``in`` and ``out``
#: with rates 12 / 8, shadow weights (the best row of docs/learning.md, "Personalisation").
DEFAULT_LEARNING = {"rule": "eprop", "learn": ["in", "out"], "rate_in": 12, "rate_out": 8, "weights": "shadow"}


def old_speakers(root, vocabulary: Sequence[str], exclude: set) -> tuple[list[Utterance], int]:
    """The standard test split (index 0-4) of an FSDD-style folder (``root`` or ``root/recordings``),
    without the speakers in ``exclude``; returns (utterances of the vocabulary, files of other words)."""
    root = Path(root)
    if (root / "recordings").is_dir():
        root = root / "recordings"
    test = [u for u in wav_folder(root, vocabulary) if u.split == "test" and u.speaker not in exclude]
    return [u for u in test if u.known], sum(not u.known for u in test)


def build_parser(prog: str = "spikewire adapt") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Personalise a keyword model: K labelled utterances per word from DIR are played "
        "through the runtime with learning on, each labelled by its stretch id as a user would; accuracy on "
        "DIR's other files (and the original speakers' FSDD test split) before and after. docs/learning.md.")
    p.add_argument("--model", default="kws-digits", help="shipped model name or .swm path (default kws-digits)")
    p.add_argument("--data", required=True, help="the new speaker's labelled WAVs: {word}_{speaker}_{index}.wav "
                   "(FSDD style, digits allowed) or WORD/*.wav")
    p.add_argument("--speaker", help="only this speaker's files of --data")
    p.add_argument("--shots", type=int, default=5, help="labelled utterances per word (default 5)")
    p.add_argument("--old-data", metavar="FSDD_DIR",
                   help="FSDD folder: its test split (index 0-4) of the speakers not in --data measures forgetting")
    p.add_argument("--seed", type=int, default=0, help="which shots, and their order (default 0)")
    p.add_argument("--passes", type=int, default=1, help="replays per label (default 1)")
    p.add_argument("--epochs", type=int, default=1,
                   help="the shots are played (and labelled) this many times in the same order (default 1)")
    p.add_argument("--gap", type=float, default=1.0, help="seconds of silence after each shot (default 1)")
    p.add_argument("--learning", default="{}", metavar="JSON",
                   help="LearningConfig fields over the model's own learning config (kws-digits: the readout rule at "
                   "rate 2^-8), or, for a model without one, the default (e-prop, in+out, rates 12/8, shadow weights), "
                   "e.g. '{\"rule\": \"superspike\"}' (docs/learning.md)")
    p.add_argument("--consolidate", action="store_true",
                   help="synaptic intelligence: start from the model's importance and learning config "
                   "(python -m spikewire.tools.importance makes them), pull important weights toward the "
                   "model's, and consolidate at the end (--out keeps the new importance); docs/learning.md")
    p.add_argument("--out", metavar="SWM", help="write the adapted model here (a normal model file)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per shot on stderr")
    return p


def main(argv=None, prog: str = "python -m spikewire.tools.adapt") -> int:
    a = build_parser(prog).parse_args(argv)
    from spikewire.modelfile import ModelFileError

    try:
        if not 1 <= a.shots <= 1000:
            raise AdaptError(f"--shots must be in 1..1000, got {a.shots}")
        if not 1 <= a.epochs <= 100:
            raise AdaptError(f"--epochs must be in 1..100, got {a.epochs}")
        if not 0.2 <= a.gap <= 60:
            raise AdaptError(f"--gap must be in 0.2..60 s, got {a.gap}")
        path = resolve_model(a.model)
        model = load_model(path)
        try:
            lcd = json.loads(a.learning)
            if not isinstance(lcd, dict):
                raise ValueError("not a JSON object")
            if a.consolidate:
                lc = LearningConfig.from_dict({**(model.learning or DEFAULT_LEARNING), **lcd, "si": True})
            else:
                lc = LearningConfig.from_dict({**(model.learning or DEFAULT_LEARNING), **lcd})
            ReplayConfig(passes=a.passes)
        except (ValueError, TypeError) as e:
            raise AdaptError(f"--learning / --passes: {e}") from None
        if a.consolidate and model.importance is None:
            raise AdaptError(f"--consolidate: {a.model} has no importance (make it with "
                             "python -m spikewire.tools.importance)")
        utts = [u for u in wav_folder(a.data, model.vocabulary) if a.speaker is None or u.speaker == a.speaker]
        if not utts:
            raise AdaptError(f"no files of speaker {a.speaker!r} in {a.data}")
        unknown = sorted({u.label for u in utts if not u.known})
        new = [u for u in utts if u.known]
        short = [w for w in model.vocabulary if sum(u.label == w for u in new) < a.shots]
        if short:
            raise AdaptError(f"{a.data} has fewer than {a.shots} files of {', '.join(short)}")
        old, old_other = None, 0
        if a.old_data:
            old, old_other = old_speakers(a.old_data, model.vocabulary, {u.speaker for u in new})
            if not old:
                raise AdaptError(f"{a.old_data}: no test-split files of speakers other than those of --data")
        log = (lambda s: print(s, file=sys.stderr, flush=True)) if a.verbose else None
        res, adapted = adapt(model, new, a.shots, lc, seed=a.seed, passes=a.passes, epochs=a.epochs, old=old,
                             gap_s=a.gap,
                             base_sha256=_sha256(path), log=log)
    except (AdaptError, DatasetError, ModelFileError, FileNotFoundError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    res["model"] = model.name
    res["unknown_words_skipped"] = {"words": unknown, "files": len(utts) - len(new), "old_files": old_other}
    if a.out:
        adapted.save(a.out)
        res["out"] = str(a.out)
    if a.json:
        print(json.dumps(res))
    else:
        for k in ("new_before", "new_after", "old_before", "old_after"):
            v = res[k]
            print(f"{k}: {'-' if v is None else f'{100 * v:.1f} %'}")
        for k, v in res.items():
            if k not in ("new_before", "new_after", "old_before", "old_after", "learning"):
                print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
