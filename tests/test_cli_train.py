"""`spikewire train`: the front door to tools/train.py; without torch a clear message and exit 2."""
from __future__ import annotations

import os
import subprocess
import sys


_MAIN = "import sys; from spikewire.cli import main; sys.exit(main(sys.argv[1:]))"


def _run(args, env=None):
    return subprocess.run([sys.executable, "-P", "-c", _MAIN, *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_train_help_lists_the_training_options():
    r = _run(["train", "--help"])
    assert r.returncode == 0, r.stderr
    assert "--data" in r.stdout and "--leave-one-speaker-out" in r.stdout


def test_train_reports_a_bad_argument_like_the_tool():
    r = _run(["train", "--epochs", "x"])
    assert r.returncode == 2
    assert "--epochs" in r.stderr


def test_train_without_torch_exits_2_with_a_clear_message(tmp_path):
    (tmp_path / "torch.py").write_text("raise ImportError('No module named torch')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = _run(["train", "--data", "x", "--out", str(tmp_path / "o")], env=env)
    assert r.returncode == 2
    assert "needs PyTorch" in r.stderr and "spikewire[train]" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()
