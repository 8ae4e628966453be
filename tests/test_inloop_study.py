"""tools/inloop_study.py: the study's held-out split, table, recovered fraction and plot."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spikewire.tools.inloop_study import HeldOut, ROWS, main, recovered, table


class _U:
    def __init__(self, index):
        self.index = index


class _Data:
    def __init__(self):
        self.train_utts = [_U(i) for i in (5, 12, 9, 30, 6)]

    def train_variant(self, v):  # words in train_utts order, then background samples
        return [f"v{v}-{i}" for i in range(len(self.train_utts) + 2)]


def test_held_out_recordings_leave_the_fine_tuning_data():
    h = HeldOut(_Data())
    assert [u.index for u in h.val_utts] == [5, 9, 6]
    assert h.train_variant(1) == ["v1-1", "v1-3", "v1-5", "v1-6"]  # index 12, 30 and the background
    d = _Data()
    d.train_utts = [_U(20)]
    with pytest.raises(ValueError, match="validate"):
        HeldOut(d)


def _res():
    def acc(t):
        return {"test": t, "val": t}

    runs = {"0/3": {"software": acc(0.98), "in_loop": acc(0.98), "mismatch_aware": acc(0.97)}}
    for seed, (sw, il) in zip((3, 4, 5), ((0.70, 0.95), (0.80, 0.89), (0.60, 0.98))):
        runs[f"0.2/{seed}"] = {"software": acc(sw), "in_loop": acc(il), "moved": acc(0.8), "moved_tuned": acc(0.9),
                               "mismatch_aware": acc(0.85)}
    return {"runs": runs}


def test_table_gives_medians_and_ranges_over_chips():
    t = table(_res())
    lines = t.splitlines()
    assert lines[0] == "| | 0 % | 20 % |"
    row = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]] for ln in lines[2:]}
    assert row["1. software model, unchanged"] == ["98.0", "70.0 (60.0–80.0)"]
    assert row["2. in the loop on the chip"] == ["98.0", "95.0 (89.0–98.0)"]
    assert row["3a. moved to another chip"] == ["—", "80.0 (80.0–80.0)"]
    assert row["chips"] == ["1", "3"]
    assert len(row) == len(ROWS) + 1


def test_recovered_fraction_per_chip():
    m, lo, hi = recovered(_res(), 0.2)
    fr = sorted([(0.95 - 0.70) / 0.28, (0.89 - 0.80) / 0.18, (0.98 - 0.60) / 0.38])
    assert np.isclose(m, fr[1]) and np.isclose(lo, fr[0]) and np.isclose(hi, fr[2])
    r = _res()
    del r["runs"]["0/3"]
    assert recovered(r, 0.2) is None  # no ideal-chip accuracy to compare with


def test_report_writes_the_plot(tmp_path, capsys):
    import json

    (tmp_path / "results.json").write_text(json.dumps(_res()))
    png = tmp_path / "plot.png"
    assert main(["--out", str(tmp_path), "--report", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "| 2. in the loop on the chip |" in out and "loss recovered" in out
