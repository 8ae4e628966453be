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
    assert out.getvalue() == "\repochs: [##......] 1/4 25% 0.03/s elapsed 00:30 left 01:30"
    p.close()
    assert out.getvalue().endswith("\n")


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="total"):
        Progress(-1)
    with pytest.raises(ValueError, match="every"):
        Progress(3, every=0)
    with pytest.raises(ValueError, match="non-negative"):
        Progress(3, stream=io.StringIO()).update(-2)
