"""``spikewire deploy bundle``: one file to install spikewire as a service on a Raspberry Pi.

The bundle (a tar.gz with one top folder, ``spikewire-pi/``) holds the sdist, the model, the
device config, the systemd unit, ``install.sh``, ``bundle.json`` (versions and the sha256 of every
file) and ``SHA256SUMS`` (checked by install.sh). The unit, install.sh and the default device.toml
are the templates in runtime/data/deploy/ -- the same files docs/raspberry-pi.md shows
(tests/test_raspberry_pi_doc.py). See docs/raspberry-pi.md, "Install".
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from .assets import deploy_template

TOP = "spikewire-pi"
MODEL_DIR = "/var/lib/spikewire/models"
DEFAULT_MODEL_LINE = f'model = "{MODEL_DIR}/kws-digits.swm"'


class DeployError(ValueError):
    """Bad input for a bundle (exit code 2)."""


def _checkout() -> Path | None:
    """The source checkout this package runs from (an editable install), or None."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "setup.py").is_file() and (root / ".git").exists() else None


def source_date_epoch() -> int:
    """The time stamped on every file of a bundle: ``SOURCE_DATE_EPOCH`` if set (the reproducible-builds
    convention), else the checkout's last commit time, else 0."""
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env is not None:
        try:
            t = int(env)
        except ValueError:
            raise DeployError(f"SOURCE_DATE_EPOCH={env!r} is not a whole number of seconds") from None
        if not 0 <= t < 2**33:
            raise DeployError(f"SOURCE_DATE_EPOCH={env!r} is out of range")
        return t
    root = _checkout()
    if root is not None:
        r = subprocess.run(["git", "log", "-1", "--format=%ct"], cwd=root, capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip().isdigit():
            return int(r.stdout.strip())
    return 0


def _tar_gz(out, members, mtime: int) -> None:
    """Write ``members`` ((TarInfo, bytes or None) in order) as a tar.gz whose bytes depend only on
    them and ``mtime``: every time stamp ``mtime`` (the gzip header's too), owner root (0/0, no
    names), modes 0644/0755, PAX format."""
    with open(out, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=mtime) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as t:
        for ti, data in members:
            ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = mtime, 0, 0, "", ""
            ti.mode = 0o755 if ti.isdir() or ti.mode & 0o111 else 0o644
            ti.pax_headers = {}
            t.addfile(ti, io.BytesIO(data) if data is not None else None)


def _repack(sdist: Path, mtime: int) -> None:
    """setuptools stamps the sdist with the build's clock and user: rewrite it with sorted members and
    the fixed stamps of :func:`_tar_gz`, so two builds of the same files give the same bytes."""
    with tarfile.open(sdist) as t:
        members = []
        for m in sorted(t.getmembers(), key=lambda m: m.name):
            if not (m.isfile() or m.isdir()):
                raise DeployError(f"sdist member {m.name} is neither a file nor a folder")
            members.append((m, t.extractfile(m).read() if m.isfile() else None))
    _tar_gz(sdist, members, mtime)


def build_sdist(dest: Path, mtime: int | None = None) -> Path:
    """An sdist built from a clean copy of the checkout's tracked files (as a fresh clone has),
    byte-reproducible (:func:`_repack`, stamped with :func:`source_date_epoch`)."""
    root = _checkout()
    if root is None:
        raise DeployError("this spikewire is not a source checkout, so it cannot build the sdist; "
                          "pass --sdist spikewire-VERSION.tar.gz")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=root, check=True, capture_output=True).stdout
    src = dest / "src"
    for f in filter(None, files.decode().split("\0")):
        p = root / f
        if p.is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            (src / f).write_bytes(p.read_bytes())
    r = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str((dest / "dist").resolve())], cwd=src,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"building the sdist failed:\n{r.stderr}")
    (sdist,) = (dest / "dist").glob("spikewire-*.tar.gz")
    _repack(sdist, source_date_epoch() if mtime is None else mtime)
    return sdist


def _device_toml(config: str | None, model_name: str) -> bytes:
    from .cli import _UsageError, _load_run_config

    installed = f"{MODEL_DIR}/{model_name}"
    if config is None:
        text = deploy_template("device.toml").decode()
        assert DEFAULT_MODEL_LINE in text
        return text.replace(DEFAULT_MODEL_LINE, f'model = "{installed}"').encode()
    try:
        cfg = _load_run_config(config)
        data = Path(config).read_bytes()
    except (_UsageError, OSError) as e:
        raise DeployError(str(e)) from None
    if cfg.get("model") != installed:
        raise DeployError(f"config {config}: model is {cfg.get('model')!r}, but the bundle installs the model "
                          f"at {installed}; set model = \"{installed}\"")
    return data


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_bundle(model: str, out: str, *, config: str | None = None, sdist: str | None = None,
                 force: bool = False) -> dict:
    """Write the bundle to ``out``; returns its bundle.json contents."""
    from . import __version__
    from .model import resolve

    if os.path.exists(out) and not force:
        raise DeployError(f"{out} exists (use --force to overwrite)")
    epoch = source_date_epoch()
    try:
        model_path = resolve(model)
        model_bytes = model_path.read_bytes()
    except (FileNotFoundError, OSError) as e:
        raise DeployError(f"model: {e}") from None
    from .model import Model
    from .modelfile import ModelFileError
    try:
        Model.load(model_path)
    except ModelFileError as e:
        raise DeployError(f"model {model_path}: {e}") from None
    device = _device_toml(config, model_path.name)
    with tempfile.TemporaryDirectory() as tmp:
        if sdist is None:
            sdist_path = build_sdist(Path(tmp), epoch)
        else:
            sdist_path = Path(sdist)
            if not sdist_path.is_file() or not sdist_path.name.startswith("spikewire-"):
                raise DeployError(f"--sdist {sdist}: not a spikewire-VERSION.tar.gz file")
        members: dict[str, bytes] = {
            sdist_path.name: sdist_path.read_bytes(),
            f"models/{model_path.name}": model_bytes,
            "device.toml": device,
            "spikewire.service": deploy_template("spikewire.service"),
            "install.sh": deploy_template("install.sh"),
        }
    info = {"format": 1, "spikewire_version": __version__, "sdist": sdist_path.name,
            "model": f"models/{model_path.name}", "python_built_with": sys.version.split()[0],
            "files": {name: {"sha256": _sha(data), "bytes": len(data)} for name, data in members.items()}}
    members["bundle.json"] = (json.dumps(info, indent=2, sort_keys=True) + "\n").encode()
    members["SHA256SUMS"] = "".join(f"{_sha(d)}  {n}\n" for n, d in members.items()).encode()
    tmp_out = f"{out}.partial"
    entries = []
    for name, data in members.items():
        ti = tarfile.TarInfo(f"{TOP}/{name}")
        ti.size, ti.mode = len(data), 0o755 if name == "install.sh" else 0o644
        entries.append((ti, data))
    _tar_gz(tmp_out, entries, epoch)  # the same files -> the same bytes
    os.replace(tmp_out, out)
    return info
