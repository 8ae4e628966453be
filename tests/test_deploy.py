"""``spikewire deploy bundle``: the bundle holds what bundle.json and SHA256SUMS say, its install.sh
(``--prefix --no-system``) installs a working spikewire whose ``demo`` gives this checkout's keyword
events, and bad input is a clear error with exit code 2."""

from __future__ import annotations

import hashlib
import json
import os
import site
import subprocess
import sys
import tarfile

import pytest

from spikewire.cli import main
from spikewire.assets import deploy_template as template

from conftest import SHIPPED_DEMO_WORDS

NAMES = {"device.toml", "spikewire.service", "install.sh", "bundle.json", "SHA256SUMS",
         "models/kws-digits.swm"}


def _run(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=900, **kw)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "spikewire-pi.tar.gz"
    assert main(["deploy", "bundle", "--model", "kws-digits", "--out", str(out)]) == 0
    return out


def test_bundle_members_and_checksums(bundle):
    with tarfile.open(bundle) as t:
        files = {m.name.split("/", 1)[1]: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}
        assert all(m.name.startswith("spikewire-pi/") for m in t.getmembers())
        assert t.getmember("spikewire-pi/install.sh").mode & 0o111
    sdists = [n for n in files if n.startswith("spikewire-") and n.endswith(".tar.gz")]
    assert len(sdists) == 1 and set(files) == NAMES | set(sdists)
    info = json.loads(files["bundle.json"])
    from spikewire import __version__
    assert info["spikewire_version"] == __version__ and info["sdist"] == sdists[0] == f"spikewire-{__version__}.tar.gz"
    assert set(info["files"]) == set(files) - {"bundle.json", "SHA256SUMS"}
    for name, meta in info["files"].items():
        assert hashlib.sha256(files[name]).hexdigest() == meta["sha256"] and len(files[name]) == meta["bytes"]
    sums = dict(reversed(line.split("  ", 1)) for line in files["SHA256SUMS"].decode().splitlines())
    assert set(sums) == set(files) - {"SHA256SUMS"}
    assert all(hashlib.sha256(files[n]).hexdigest() == h for n, h in sums.items())
    # the model is the shipped one, the unit and install.sh are the templates (docs/raspberry-pi.md)
    from spikewire.model import resolve
    assert files["models/kws-digits.swm"] == resolve("kws-digits").read_bytes()
    assert files["spikewire.service"] == template("spikewire.service")
    assert files["install.sh"] == template("install.sh")
    assert files["device.toml"] == template("device.toml")
    with tarfile.open(fileobj=__import__("io").BytesIO(files[sdists[0]])) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {"runtime/data/deploy/install.sh", "runtime/data/deploy/spikewire.service",
            "runtime/data/deploy/device.toml", "csrc/spikewire.h"} <= names


def _stamps(data: bytes, epoch: int) -> list[str]:
    """Every member's stamps in a tar.gz (and its gzip header): a list of what is not ``epoch``/root."""
    bad = [] if int.from_bytes(data[4:8], "little") == epoch else ["gzip header mtime"]
    with tarfile.open(fileobj=__import__("io").BytesIO(data)) as t:
        for m in t.getmembers():
            if (m.mtime, m.uid, m.gid, m.uname, m.gname) != (epoch, 0, 0, "", ""):
                bad.append(f"{m.name}: {m.mtime} {m.uid}/{m.gid} {m.uname}/{m.gname}")
    return bad


def test_bundle_is_byte_reproducible(bundle, tmp_path, monkeypatch):
    """Two builds of the same checkout give the same bytes: every time stamp in the bundle and in its
    sdist is the last commit's time (or SOURCE_DATE_EPOCH), owners are root, the sdist is sorted."""
    again = tmp_path / "again.tar.gz"
    assert main(["deploy", "bundle", "--model", "kws-digits", "--out", str(again)]) == 0
    assert again.read_bytes() == bundle.read_bytes()
    epoch = int(subprocess.run(["git", "log", "-1", "--format=%ct"], cwd=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), capture_output=True, text=True, check=True).stdout)
    data = bundle.read_bytes()
    with tarfile.open(bundle) as t:
        sdist = next(t.extractfile(m).read() for m in t.getmembers() if m.name.endswith(".tar.gz"))
    assert _stamps(data, epoch) == [] and _stamps(sdist, epoch) == []
    with tarfile.open(fileobj=__import__("io").BytesIO(sdist)) as t:
        names = t.getnames()
        assert names == sorted(names) and len(names) > 50
        assert {oct(m.mode) for m in t.getmembers()} <= {"0o644", "0o755"}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    third = tmp_path / "third.tar.gz"
    assert main(["deploy", "bundle", "--model", "kws-digits", "--out", str(third)]) == 0
    with tarfile.open(third) as t:
        sdist3 = next(t.extractfile(m).read() for m in t.getmembers() if m.name.endswith(".tar.gz"))
    assert _stamps(third.read_bytes(), 1700000000) == [] and _stamps(sdist3, 1700000000) == []
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    assert main(["deploy", "bundle", "--out", str(tmp_path / "x.tar.gz")]) == 2


def test_install_sh_prefix_no_system_installs_a_working_spikewire(bundle, tmp_path):
    with tarfile.open(bundle) as t:
        t.extractall(tmp_path / "unpacked", filter="data")
    here = tmp_path / "unpacked" / "spikewire-pi"
    prefix = tmp_path / "root"
    # no network here: the venv gets spikewire from the sdist (compiled from source) and its
    # dependencies (numpy, cffi, setuptools) from this environment's site-packages via PYTHONPATH
    deps = os.pathsep.join(site.getsitepackages())
    env = {**os.environ, "PYTHONPATH": deps}
    r = _run("sh", str(here / "install.sh"), "--prefix", str(prefix), "--no-system", "--python", sys.executable,
             "--pip-args", "--no-deps --no-build-isolation --no-index", env=env, cwd=tmp_path)
    assert "installed spikewire-" in r.stdout
    # the C core was compiled from the sdist into the new venv
    assert list((prefix / "opt/spikewire/venv/lib").glob("python3*/site-packages/spikewire/_spikewire_c*.so"))
    unit = (prefix / "etc/systemd/system/spikewire.service").read_text()
    exe = prefix / "opt/spikewire/venv/bin/spikewire"
    assert f"ExecStart={exe} run --config {prefix}/etc/spikewire/device.toml" in unit.splitlines()
    assert unit.replace(str(prefix), "") == template("spikewire.service").decode()
    model = prefix / "var/lib/spikewire/models/kws-digits.swm"
    from spikewire.cli import _load_run_config
    cfg = _load_run_config(str(prefix / "etc/spikewire/device.toml"))
    assert cfg["model"] == str(model) and model.is_file()

    code = ("import sys, spikewire.cli as c; print(c.__file__, file=sys.stderr); "
            "sys.exit(c.main(['demo', '--model', sys.argv[1]]))")
    venv_py = str(prefix / "opt/spikewire/venv/bin/python")
    fresh = _run(venv_py, "-P", "-c", code, str(model), env=env, cwd=tmp_path)
    assert fresh.stderr.splitlines()[0].startswith(str(prefix / "opt/spikewire/venv"))
    here_run = _run(sys.executable, "-P", "-c", code, "kws-digits", cwd=tmp_path)
    events = [json.loads(line) for line in fresh.stdout.splitlines()]
    assert [e["word"] for e in events if "word" in e] == SHIPPED_DEMO_WORDS  # what kws-digits hears of it
    assert events == [json.loads(line) for line in here_run.stdout.splitlines()]
    # the installed console script is the venv's and runs
    assert _run(str(exe), "--help", env=env).stdout.startswith("usage: spikewire")
    # a second run keeps an edited device.toml
    (prefix / "etc/spikewire/device.toml").write_text("# edited\n")
    r = _run("sh", str(here / "install.sh"), "--prefix", str(prefix), "--no-system", "--python", sys.executable,
             "--pip-args", "--no-deps --no-build-isolation --no-index", env=env, cwd=tmp_path)
    assert "keeping the existing" in r.stderr
    assert (prefix / "etc/spikewire/device.toml").read_text() == "# edited\n"


def test_install_sh_refuses_a_tampered_bundle(bundle, tmp_path):
    with tarfile.open(bundle) as t:
        t.extractall(tmp_path, filter="data")
    here = tmp_path / "spikewire-pi"
    (here / "device.toml").write_text("model = 'evil'\n")
    r = subprocess.run(["sh", str(here / "install.sh"), "--prefix", str(tmp_path / "root"), "--no-system"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "do not match SHA256SUMS" in r.stderr
    assert not (tmp_path / "root" / "opt").exists()


def test_bad_input_exits_2(tmp_path, capsys, bundle):
    out = tmp_path / "b.tar.gz"
    assert main(["deploy", "bundle", "--model", str(tmp_path / "nope.swm"), "--out", str(out)]) == 2
    assert "no model" in capsys.readouterr().err and not out.exists()
    assert main(["deploy", "bundle", "--config", str(tmp_path / "missing.toml"), "--out", str(out)]) == 2
    assert "cannot read config" in capsys.readouterr().err and not out.exists()
    (tmp_path / "bad.toml").write_text("model = [\n")
    assert main(["deploy", "bundle", "--config", str(tmp_path / "bad.toml"), "--out", str(out)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    (tmp_path / "other.toml").write_text('model = "kws-digits"\n')
    assert main(["deploy", "bundle", "--config", str(tmp_path / "other.toml"), "--out", str(out)]) == 2
    assert "set model = \"/var/lib/spikewire/models/kws-digits.swm\"" in capsys.readouterr().err
    (tmp_path / "broken.swm").write_bytes(b"not a model")
    assert main(["deploy", "bundle", "--model", str(tmp_path / "broken.swm"), "--out", str(out)]) == 2
    assert "broken.swm" in capsys.readouterr().err and not out.exists()
    before = bundle.read_bytes()
    assert main(["deploy", "bundle", "--out", str(bundle)]) == 2
    assert "exists (use --force" in capsys.readouterr().err and bundle.read_bytes() == before


def test_every_runtime_dependency_is_in_the_arm64_check():
    """On a Pi, pip resolves spikewire's dependencies from PyPI (docs/raspberry-pi.md, "Install");
    tests/aarch64/run.sh installs them as aarch64 wheels and runs spikewire on them in an arm64
    CPython. A dependency added to pyproject.toml must be in that list, or the arm64 check would not
    cover it."""
    import re
    import tomllib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    names = {re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower().replace("_", "-") for d in deps}
    script = open(os.path.join(root, "tests", "aarch64", "run.sh")).read()
    listed = set(re.search(r"^for p in ([^;]+); do\n    WHEELS\+=", script, re.M).group(1).split())
    assert names and names <= listed, names - listed
