"""spikewire.assets: the one place the bundled files are found, in the installed package."""
from __future__ import annotations

from pathlib import Path

import spikewire
from spikewire import assets, cli
from spikewire.audio import read_wav_int16


def test_demo_recording_is_the_packages_file():
    p = Path(assets.demo_recording())
    assert p.is_file() and p.name == "digits.wav"
    assert p.parent == Path(spikewire.__file__).parent / "data"  # where the installed package keeps it
    x, rate = read_wav_int16(p)
    assert rate == 8000 and 10.5 < x.size / rate < 11.5
    assert cli.demo_recording is assets.demo_recording  # the old import path still answers


def test_deploy_templates():
    assert assets.deploy_template("device.toml").startswith(b'model = "/var/lib/spikewire/models/')
    assert b"ExecStart=/opt/spikewire/venv/bin/spikewire run" in assets.deploy_template("spikewire.service")
    assert assets.deploy_template("install.sh").startswith(b"#!/bin/sh")
