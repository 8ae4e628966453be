"""runtime/progress.py: a bar on a tty, plain lines elsewhere; clock injected (no timing)."""
from __future__ import annotations

import io

import pytest

from spikewire.progress import Progress


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_when_not_a_tty_every_tenth_and_at_the_end():
    out, clk = io.StringIO(), _Clock()
    with Progress(20, "eval", stream=out, clock=clk) as p:
        for _ in range(20):
            clk.t += 0.5
            p.update()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [ln.split()[1] for ln in lines] == [f"{k}/20" for k in range(2, 20, 2)] + ["20/20"]
    assert lines[-1] == "eval: 20/20 100% 2.00/s elapsed 00:10 left 00:00"


def test_bar_with_rate_and_time_left_on_a_tty():
    out, clk = _Tty(), _Clock()
    p = Progress(4, "epochs", stream=out, width=8, clock=clk)
    clk.t += 30.0
    p.update()
    assert out.getvalue() == "\repochs: [##......] 1/4 25% 30.0 s each elapsed 00:30 left 01:30"
    p.close()
    assert out.getvalue().endswith("\n")


def test_tty_redraws_at_most_every_min_interval_and_always_at_the_end():
    out, clk = _Tty(), _Clock()
    p = Progress(1000, "files", stream=out, clock=clk, min_interval=0.5)
    for _ in range(1000):
        clk.t += 1 / 128  # 128 files per second (exact in binary): a redraw every 64 files
        p.update()
    assert out.getvalue().count("\r") == 16  # at 1 (the first), 65, 129, ... 961
    p.close()
    last = out.getvalue().split("\r")[-1]
    assert last.startswith("files: [") and " 1000/1000 100% 128.00/s elapsed 00:08 left 00:00" in last
    assert last.endswith("\n")
    p.close()  # once
    assert out.getvalue().count("\n") == 1


def test_clear_blanks_the_bar_for_a_log_line_and_desc_can_change():
    out, clk = _Tty(), _Clock()
    p = Progress(10, "epoch 1/10", stream=out, width=4, clock=clk, min_interval=0)
    clk.t += 2
    p.update()
    drawn = out.getvalue()[1:]
    p.clear()
    assert out.getvalue() == "\r" + drawn + "\r" + " " * len(drawn) + "\r"
    p.desc = "epoch 2/10 batch 3/7"
    p.update(0)  # redraw, same count
    assert out.getvalue().endswith("\repoch 2/10 batch 3/7: [....] 1/10 10% 2.0 s each elapsed 00:02 left 00:18")


def test_a_shorter_line_overwrites_the_old_one_completely():
    out, clk = _Tty(), _Clock()
    p = Progress(10, "a long description", stream=out, width=4, clock=clk, min_interval=0)
    p.update()
    first = out.getvalue()
    p.desc = "x"
    p.update(0)
    second = out.getvalue()[len(first):]
    assert len(second) == len(first) and second.rstrip(" ").startswith("\rx: [")


def test_tty_false_gives_plain_lines_on_a_terminal():
    out, clk = _Tty(), _Clock()
    with Progress(4, "folds", stream=out, clock=clk, every=0.25, tty=False) as p:
        for _ in range(4):
            clk.t += 60
            p.update()
    assert "\r" not in out.getvalue()
    assert out.getvalue().splitlines() == [
        f"folds: {k}/4 {25 * k}% 60.0 s each elapsed {k:02d}:00 left {4 - k:02d}:00" for k in (1, 2, 3, 4)]


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="total"):
        Progress(-1)
    with pytest.raises(ValueError, match="every"):
        Progress(3, every=0)
    with pytest.raises(ValueError, match="min_interval"):
        Progress(3, min_interval=-1)
    with pytest.raises(ValueError, match="non-negative"):
        Progress(3, stream=io.StringIO()).update(-2)
