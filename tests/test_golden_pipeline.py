"""The whole pipeline (front end, core, decision) through the Python API against
tests/golden/pipeline_v1.json. tests/aarch64/run.sh checks the same record in an arm64
CPython under qemu with the cross-built extension (tests/golden/make_pipeline_golden.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "golden"))
import make_pipeline_golden as golden  # noqa: E402  (one definition of the record)


def stored() -> dict:
    return golden.load_record()


def test_record_names_the_commit_it_was_generated_from():
    with open(golden.OUT, encoding="utf-8") as f:
        prov = json.load(f)[golden.GENERATED_BY]
    assert prov["script"] == "tests/golden/make_pipeline_golden.py"
    assert len(prov["commit"]) >= 7 and not prov["commit"].endswith("-dirty")


def test_pipeline_matches_golden_record():
    assert golden.differences(golden.compute(), stored()) == []


def test_record_is_not_trivial():
    want = stored()
    assert want["frontend"]["events"] > 1000 and want["core"]["hidden_spikes"] > 1000
    assert len(want["keywords"]) >= 5


def test_differences_names_the_changed_field():
    want = stored()
    got = json.loads(json.dumps(want))
    got["core"]["hidden_spikes"] += 1
    got["keywords"][0]["word"] = "x"
    del got["frontend"]["sha256"]
    diff = golden.differences(got, want)
    assert any(d.startswith("core.hidden_spikes: got") for d in diff)
    assert any(d.startswith("keywords: got") for d in diff)
    assert "frontend.sha256: missing" in diff


def test_streaming_demo_gives_the_golden_keywords():
    """`spikewire demo` (the asyncio pipeline, 100 ms blocks) fires the record's keywords."""
    r = subprocess.run([sys.executable, "-P", "-m", "spikewire.cli", "demo", "--model", golden.MODEL],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(s) for s in r.stdout.splitlines()]
    got = [(k["word"], k["t_start"], k["t_end"], k["score"]) for k in lines]
    want = [(k["word"], k["t_start"], k["t_end"], k["score"]) for k in stored()["keywords"]]
    assert got == want
