"""docs/raspberry-pi.md stays true: the systemd unit and device.toml it shows are the deploy
bundle's templates (runtime/data/deploy/, one source), the unit passes ``systemd-analyze verify``
(with ExecStart pointed at this environment's installed ``spikewire``) and keeps the restart policy
the doc explains, and the device.toml is a valid run config."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

DOC = (REPO / "docs" / "raspberry-pi.md").read_text()


def block(lang: str) -> str:
    m = re.search(rf"```{lang}\n(.*?)```", DOC, re.S)
    assert m, f"no ```{lang} block in docs/raspberry-pi.md"
    return m.group(1)


def test_doc_shows_the_bundle_templates():
    from spikewire.assets import deploy_template as template

    assert block("ini") == template("spikewire.service").decode()
    assert block("toml") == template("device.toml").decode()


def test_unit_passes_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    unit = block("ini")
    for line in ("User=spikewire", "SupplementaryGroups=audio", "Restart=on-failure",
                 "RestartPreventExitStatus=2", "StandardOutput=journal"):
        assert line in unit.splitlines()
    exe = Path(sys.executable).parent / "spikewire"
    assert exe.exists()
    doc_exe = "/opt/spikewire/venv/bin/spikewire"
    assert f"ExecStart={doc_exe} run --config" in unit
    (tmp_path / "spikewire.service").write_text(unit.replace(doc_exe, str(exe)))
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "spikewire.service")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "spikewire.service" not in r.stderr, r.stderr


def test_device_toml_example_is_a_valid_run_config(tmp_path):
    from spikewire.cli import _load_run_config

    (tmp_path / "device.toml").write_text(block("toml"))
    cfg = _load_run_config(str(tmp_path / "device.toml"))  # raises on an unknown key or a wrong type
    assert cfg["device_id"] == "pi-kitchen" and cfg["mqtt"]["password_file"]
    user_part = cfg["sink"][0].split("://", 1)[1].split("@", 1)[0]
    assert user_part == "pi-kitchen"  # the user only: no password in the URL


def test_home_assistant_snippets_are_valid_settings():
    """The [mqtt.homeassistant] tables shown here and in docs/mqtt.md are accepted, and the ACL line
    this doc names is in the ACL that tests/test_mqtt_acl.py runs."""
    import tomllib

    from spikewire.hass import Discovery

    mqtt_doc = (REPO / "docs" / "mqtt.md").read_text()
    blocks = [b for text in (DOC, mqtt_doc) for b in re.findall(r"```toml\n(.*?)```", text, re.S)
              if "[mqtt.homeassistant]" in b]
    assert len(blocks) == 2
    for b in blocks:
        assert Discovery.from_options(tomllib.loads(b)["mqtt"]["homeassistant"]) == Discovery(True)
    assert "pattern write homeassistant/+/%u/+/config" in DOC and "pattern write homeassistant/+/%u/+/config\n" in mqtt_doc
