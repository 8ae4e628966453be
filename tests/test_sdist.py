"""The source distribution is complete: built from a clean copy of the tracked files, it installs
(compiling the C core from the sdist alone) and the installed package runs ``spikewire demo`` with
the same keyword events as this checkout's installed package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

from conftest import REPO


def _run(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=600, **kw)


def test_sdist_builds_installs_and_runs_demo(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    files = _run("git", "ls-files", "-z", cwd=REPO).stdout.split("\0")
    # a clean copy of the tracked files (as in a fresh clone; uncommitted edits included)
    for f in filter(None, files):
        p = REPO / f
        if p.is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            (src / f).write_bytes(p.read_bytes())
    _run(sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist"), cwd=src)
    (sdist,) = (tmp_path / "dist").glob("spikewire-*.tar.gz")
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {"csrc/spikewire.h", "csrc/core.c", "csrc/frontend.c",
            "models/kws-digits/kws-digits.swm", "runtime/data/digits.wav"} <= names

    target = tmp_path / "site"
    _run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(sdist), cwd=tmp_path)
    assert list((target / "spikewire").glob("_spikewire_c*.so"))
    code = "import sys, spikewire.cli as c; print(c.__file__, file=sys.stderr); sys.exit(c.main(['demo']))"
    env = {**os.environ, "PYTHONPATH": str(target)}
    fresh = _run(sys.executable, "-P", "-c", code, env=env, cwd=tmp_path)
    assert fresh.stderr.splitlines()[0].startswith(str(target))
    here = _run(sys.executable, "-P", "-c", code, cwd=tmp_path)
    events = [json.loads(line) for line in fresh.stdout.splitlines()]
    assert events and [json.loads(line) for line in here.stdout.splitlines()] == events

    # `bench e2e` starts the runtime in a second process: it must find the installed package
    # there too (it ran `-m runtime.bench_e2e` from the checkout, which an install does not have)
    code = "import sys, spikewire.cli as c; sys.exit(c.main(['bench', 'e2e', '--json', 'e2e.json']))"
    _run(sys.executable, "-P", "-c", code, env=env, cwd=tmp_path)
    e2e = json.loads((tmp_path / "e2e.json").read_text())
    assert "skipped" not in e2e, e2e
    assert e2e["keywords"] > 0 and e2e["audio_s"] > 10 and e2e["dropped"]["in_flight"] == 0
