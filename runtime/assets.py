"""One place for the files bundled in the package: ``spikewire/data/`` once installed
(``runtime/data/`` in the checkout, pyproject.toml ``package-data``).

* :func:`demo_recording`: ``digits.wav``, the spoken digits ``spikewire demo`` plays (its licence
  and provenance in ``data/README.md``); also the workload of ``spikewire bench e2e``/``bench cpu``
  and of the golden files in tests/golden;
* :func:`deploy_template`: the Raspberry Pi bundle templates in ``data/deploy/``.

The shipped models are the ``spikewire.models`` package (``spikewire.model.shipped_models``).
Paths come from :mod:`importlib.resources`, so they are right for a wheel, an sdist install and an
editable checkout alike.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

DEMO_RECORDING = "digits.wav"


def data_path(*parts: str) -> Path:
    """Path of a bundled file under ``spikewire/data/``."""
    return Path(str(resources.files("spikewire").joinpath("data", *parts)))


def demo_recording() -> str:
    """Path of the bundled recording of spoken digits (8 kHz mono, 10.9 s)."""
    return str(data_path(DEMO_RECORDING))


def deploy_template(name: str) -> bytes:
    """A Raspberry Pi bundle template (``device.toml``, ``spikewire.service``, ``install.sh``)."""
    return data_path("deploy", name).read_bytes()
