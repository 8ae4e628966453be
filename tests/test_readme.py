"""The README's Python section is true: its example runs against the installed package, and its
table names exactly the public API of ``import spikewire``."""
from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
SECTION = README.split("## Using spikewire from Python", 1)[1].split("\n## ", 1)[0]


def test_the_python_example_runs():
    (code,) = re.findall(r"```python\n(.*?)```", SECTION, re.S)
    check = "\nassert out.cadc.shape == (1000, 10) and words == [] and len(blob) > 0\nprint('ok')\n"
    r = subprocess.run([sys.executable, "-P", "-c", code + check], capture_output=True, text=True, timeout=120,
                       cwd=REPO / "tests")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "ok"


def test_the_table_is_the_public_api():
    import spikewire

    rows = [line for line in SECTION.splitlines() if line.startswith("| `")]
    named = {n for row in rows for n in re.findall(r"`(\w+)`", row.split("|")[1])}
    assert named == set(spikewire.__all__) - {"__version__"}
    for n in named:
        assert getattr(spikewire, n) is not None
