"""`spikewire run --learn` for a local user (runtime/localcontrol.py, cli.py): commands typed on stdin, or
written to a FIFO when stdin carries the audio, go through the pipeline's command registry and each gets a
reply line on stdout; the stretch id of a keyword line is what `label` takes; refused commands change
nothing. Real subprocesses, the real bundled recording, the shipped model."""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import DIGITS_WAV
from spikewire.audio import read_wav_int16
from spikewire.localcontrol import CommandLines


class Lines:
    """stdout of a subprocess as JSON objects, read in a thread (a hang fails the test, never blocks it)."""

    def __init__(self, proc: subprocess.Popen):
        self.q: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        self.err: list[str] = []
        threading.Thread(target=self._read, args=(proc.stdout,), daemon=True).start()
        threading.Thread(target=lambda: self.err.extend(proc.stderr), daemon=True).start()

    def _read(self, f) -> None:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                self.q.put(json.loads(line))
        self.q.put(None)

    def wait(self, pred, timeout: float = 60.0) -> dict:
        for d in self.seen:
            if pred(d):
                self.seen.remove(d)
                return d
        end = time.monotonic() + timeout
        while True:
            d = self.q.get(timeout=max(0.01, end - time.monotonic()))
            if d is None:
                raise AssertionError(f"the process ended; lines seen: {self.seen[-5:]}")
            if pred(d):
                return d
            self.seen.append(d)


def _reply(lines: Lines, cmd: str) -> dict:
    return lines.wait(lambda d: d.get("event") == "reply" and d.get("cmd") == cmd)


def _spikewire(args, **kw) -> subprocess.Popen:
    code = "import sys; from spikewire.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-P", "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _finish(proc: subprocess.Popen, lines: Lines | None = None) -> tuple[int, str]:
    if lines is None:
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        return proc.returncode, err
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    time.sleep(0.1)                      # the reader threads see the end of the pipes
    return proc.returncode, "".join(lines.err)


def test_commands_from_stdin(tmp_path):
    proc = _spikewire(["run", "--model", "kws-digits", "--source", f"wav:{DIGITS_WAV}", "--speed", "1", "--learn",
                       "--rejected", "--duration", "30", "--metrics-interval", "0"], stdin=subprocess.PIPE)
    lines = Lines(proc)

    def send(text: str) -> None:
        proc.stdin.write(text + "\n")
        proc.stdin.flush()

    try:
        kw = lines.wait(lambda d: "word" in d and "stretch" in d)
        other = "one" if kw["word"] != "one" else "two"
        send(f"label {other} {kw['stretch']}")
        ok = _reply(lines, "label")
        send("label banana")
        unknown_word = _reply(lines, "label")
        send(f"label {other} {kw['stretch'] + 10 ** 6}")
        unknown_stretch = _reply(lines, "label")
        send("reward 5")
        bad_reward = _reply(lines, "reward")
        send("status")
        status = _reply(lines, "status")
        send("learn off")
        off = _reply(lines, "learn")
        send(f"label {other}")
        label_off = _reply(lines, "label")
        send("stretches")
        stretches = _reply(lines, "stretches")
        send("help")
        helped = _reply(lines, "help")
        send("# a comment, no reply")
        send("status")
        status2 = _reply(lines, "status")
    finally:
        proc.stdin.close()
        proc.terminate()
        rc, err = _finish(proc, lines)
    assert rc == 0, err[-2000:]
    assert ok["ok"] and ok["result"]["stretch"] == kw["stretch"] and ok["result"]["label"] == other, ok
    assert not unknown_word["ok"] and "unknown word 'banana'" in unknown_word["error"]
    assert not unknown_stretch["ok"] and "unknown stretch" in unknown_stretch["error"]
    assert not bad_reward["ok"] and "usage: reward" in bad_reward["error"]
    assert off["ok"] and off["result"]["on"] is False
    assert not label_off["ok"] and "learning is off" in label_off["error"]
    assert kw["stretch"] in [s["id"] for s in stretches["result"]["stretches"]]
    assert {"label", "learn", "reward", "save", "revert", "stretches", "status"} <= set(helped["result"]["commands"])
    # the refused commands learnt nothing: one label in all, and nothing changed after the first status
    learn1, learn2 = status["result"]["learning"], status2["result"]["learning"]
    assert learn1["labels"] == learn2["labels"] == 1 and learn1["replays"] == learn2["replays"] == 1
    assert learn2["weights_changed"] == learn1["weights_changed"]


def test_commands_from_a_fifo_when_stdin_is_the_audio(tmp_path):
    fifo = tmp_path / "commands"
    os.mkfifo(fifo)
    x, rate = read_wav_int16(DIGITS_WAV)
    proc = _spikewire(["run", "--model", "kws-digits", "--source", "stdin", "--rate", str(rate), "--learn",
                       "--commands", str(fifo), "--duration", "60", "--metrics-interval", "0"], stdin=subprocess.PIPE)
    lines = Lines(proc)
    opened: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: opened.put(open(fifo, "w")), daemon=True).start()   # waits for the reader
    try:
        # the audio on stdin; stdin stays open, so the stream goes on while the commands come
        proc.stdin.buffer.write(np.asarray(x, "<i2").tobytes())
        proc.stdin.flush()
        kw = lines.wait(lambda d: "word" in d and "stretch" in d)
        cmd = opened.get(timeout=60)
        cmd.write(f"label {kw['word']} {kw['stretch']}\nlabel nope\n")
        cmd.close()                        # a FIFO is opened again for the next writer
        ok = _reply(lines, "label")
        bad = _reply(lines, "label")
        with open(fifo, "w") as again:
            again.write("stretches\n")
        listed = _reply(lines, "stretches")
    finally:
        proc.stdin.close()
        rc, err = _finish(proc, lines)
    assert rc == 0, err[-2000:]
    assert ok["ok"] and ok["result"]["stretch"] == kw["stretch"], ok
    assert not bad["ok"] and "unknown word 'nope'" in bad["error"]
    assert kw["stretch"] in [s["id"] for s in listed["result"]["stretches"]]


def test_stdin_cannot_carry_audio_and_commands(tmp_path):
    proc = _spikewire(["run", "--source", "stdin", "--learn", "--commands", "stdin"], stdin=subprocess.DEVNULL)
    rc, err = _finish(proc)
    assert rc == 2 and "stdin carries the audio" in err and "FIFO" in err
    proc = _spikewire(["run", "--source", "stdin", "--commands", str(tmp_path / "nope")], stdin=subprocess.DEVNULL)
    rc, err = _finish(proc)
    assert rc == 2 and "mkfifo" in err
    # --learn with stdin audio and no --commands: runs, and says where commands can come from
    proc = _spikewire(["run", "--source", "stdin", "--learn", "--model", "kws-digits"], stdin=subprocess.DEVNULL)
    rc, err = _finish(proc)
    assert rc == 0 and "--commands PATH" in err


def test_command_lines_are_bounded_and_each_gets_one_reply():
    """The reader in-process: an over-long line and a non-UTF-8 line are answered, not crashes."""
    import asyncio

    from spikewire.control import MAX_COMMAND_LINE, CommandRegistry, ControlChannel

    r, w = os.pipe()
    got: list[dict] = []

    async def go():
        reg = CommandRegistry()
        reg.register("status", lambda: {"fine": True})
        reader = None
        chan = ControlChannel(reg, lambda data: reader.on_reply(data))
        reader = CommandLines(chan, got.append, fd=r)
        task = asyncio.create_task(chan.run())
        reader.start()
        os.write(w, b"status\n" + b"x" * (3 * MAX_COMMAND_LINE) + b"\n" + b"\xff\xfe\n" + b"status extra\nstatus\n")
        os.close(w)
        while len(got) < 5:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(asyncio.wait_for(go(), 20))
    os.close(r)
    assert sum(1 for d in got if d["ok"]) == 2
    errors = sorted(d["error"] for d in got if not d["ok"])
    assert any("longer than" in e for e in errors) and any("not UTF-8" in e for e in errors)
    assert any("unexpected 'extra'" in e for e in errors) and len(got) == 5
