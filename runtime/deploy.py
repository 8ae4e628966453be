"""``spikewire deploy bundle``: one file to install spikewire as a service on a Raspberry Pi.

The bundle (a tar.gz with one top folder, ``spikewire-pi/``) holds the sdist, the model, the
device config, the systemd unit, ``install.sh``, ``bundle.json`` (versions and the sha256 of every
file) and ``SHA256SUMS`` (checked by install.sh). The unit, install.sh and the default device.toml
are the templates in runtime/data/deploy/ -- the same files docs/raspberry-pi.md shows
(tests/test_raspberry_pi_doc.py). See docs/raspberry-pi.md, "Install".
"""
from __future__ import annotations

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


def build_sdist(dest: Path) -> Path:
    """An sdist built from a clean copy of the checkout's tracked files (as a fresh clone has)."""
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
    r = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(dest / "dist")], cwd=src,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"building the sdist failed:\n{r.stderr}")
    (sdist,) = (dest / "dist").glob("spikewire-*.tar.gz")
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
            sdist_path = build_sdist(Path(tmp))
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
    with tarfile.open(tmp_out, "w:gz") as t:
        for name, data in members.items():
            ti = tarfile.TarInfo(f"{TOP}/{name}")
            ti.size, ti.mode, ti.mtime = len(data), 0o755 if name == "install.sh" else 0o644, 0
            t.addfile(ti, io.BytesIO(data))
    os.replace(tmp_out, out)
    return info
