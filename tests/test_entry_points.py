"""The doors into spikewire: ``python -m spikewire``, the log lines of ``spikewire train``, and
torch's flush-to-zero flag, which training turns on and must give back as it found it."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch  # required: tests/run.sh installs it (never skipped)

from spikewire.progress import run_logging
from spikewire.tools import train as T
from spikewire.tools import trainer


def test_python_m_spikewire_is_the_cli():
    r = subprocess.run([sys.executable, "-P", "-m", "spikewire", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: spikewire ") and "bench" in r.stdout and "train" in r.stdout
    r = subprocess.run([sys.executable, "-P", "-m", "spikewire", "no-such-command"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "invalid choice" in r.stderr


_AFTER_CLI = """
import logging, sys
from spikewire.cli import _setup_logging
from spikewire.progress import run_logging
_setup_logging("warning")  # what `spikewire` does before it hands over to a tool
run_logging(sys.argv[1])
logging.getLogger("spikewire.tools.train").info("epoch 1/4 done")
"""


def test_run_logging_works_after_the_cli_configured_logging(tmp_path):
    log_file = tmp_path / "train.log"
    r = subprocess.run([sys.executable, "-P", "-c", _AFTER_CLI, str(log_file)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "epoch 1/4 done" in log_file.read_text()
    assert "epoch 1/4 done" in r.stderr


@pytest.fixture
def root_handlers():
    """run_logging replaces the root logger's handlers (pytest's among them): put them back."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    yield
    for h in root.handlers:
        if h not in saved:
            h.close()
    root.handlers[:], root.level = saved, level


def test_train_main_writes_its_log_file_when_logging_was_configured(tmp_path, monkeypatch, root_handlers):
    """pytest has handlers on the root logger, as spikewire's CLI does: train.log must still be written."""
    assert logging.getLogger().handlers  # the situation of the bug: basicConfig alone would be a no-op

    class Stop(Exception):
        pass

    def fake_train(*a, **kw):
        logging.getLogger("spikewire.tools.train").info("fake epoch done")
        raise Stop

    monkeypatch.setattr(T, "Data", lambda *a, **kw: None)
    monkeypatch.setattr(T, "train", fake_train)
    out = tmp_path / "run"
    with pytest.raises(Stop):
        T.main(["--data", str(tmp_path), "--out", str(out)])
    assert "fake epoch done" in (out / "train.log").read_text()


def test_run_logging_without_a_file_logs_to_stderr(capfd, root_handlers):
    run_logging()
    logging.getLogger("spikewire.tools.voices_eval").info("fold 3 scored")
    assert "fold 3 scored" in capfd.readouterr().err


@pytest.mark.parametrize("before", [False, True])
def test_flush_denormals_restores_the_previous_state(before):
    torch.set_flush_denormal(before)
    try:
        assert trainer.denormals_flushed() is before  # the probe sees the flag
        with trainer.flush_denormals():
            assert trainer.denormals_flushed()
        assert trainer.denormals_flushed() is before
        with pytest.raises(RuntimeError):
            with trainer.flush_denormals():
                raise RuntimeError("a failed epoch")
        assert trainer.denormals_flushed() is before
    finally:
        torch.set_flush_denormal(False)


def test_train_flushes_denormals_inside_and_gives_the_flag_back(monkeypatch):
    seen = []
    monkeypatch.setattr(trainer, "_train", lambda *a: seen.append(trainer.denormals_flushed()) or {})
    torch.set_flush_denormal(False)
    threads = torch.get_num_threads()
    try:
        trainer.train(T.TrainConfig(data="", out="unused", threads=threads))
    finally:
        torch.set_num_threads(threads)
    assert seen == [True] and not trainer.denormals_flushed()
