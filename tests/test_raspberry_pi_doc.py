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


def _service_config(broker, tmp_path: Path, prefix: str, *, model: str | None = None) -> Path:
    """The bundle's device.toml as the unit runs it, with what this machine has instead of the Pi's:
    the test broker (its user, the password in the password file, no TLS), the digits recording
    paced at real time instead of the USB microphone, paths under tmp_path."""
    from conftest import DIGITS_WAV
    from spikewire.assets import deploy_template
    from spikewire.model import resolve

    pw = tmp_path / "mqtt-password"
    pw.write_text(broker.password + "\n")
    pw.chmod(0o640)
    text = deploy_template("device.toml").decode()
    swaps = {'model = "/var/lib/spikewire/models/kws-digits.swm"': f'model = "{model or resolve("kws-digits")}"',
             'source = "mic:USB"': f'source = "wav:{DIGITS_WAV}"',
             'sinks = ["mqtts://pi-kitchen@broker.lan/spikewire?cafile=/etc/spikewire/ca.crt"]':
                 f'sinks = ["mqtt://{broker.username}@{broker.host}:{broker.port}/{prefix}"]',
             '"/etc/spikewire/mqtt-password"': f'"{pw}"',
             '"/var/lib/spikewire/learnt.swst"': f'"{tmp_path / "learnt.swst"}"',
             '"/var/lib/spikewire/models"': f'"{tmp_path}"'}
    for old, new in swaps.items():
        assert old in text, old
        text = text.replace(old, new)
    cfg = tmp_path / "device.toml"
    cfg.write_text(text)
    return cfg


def _exec_start(cfg: Path) -> list[str]:
    """The unit's ExecStart with this environment's spikewire and ``cfg``."""
    line = next(x for x in block("ini").splitlines() if x.startswith("ExecStart="))
    exe, *args = line.split("=", 1)[1].split()
    assert exe == "/opt/spikewire/venv/bin/spikewire" and args == ["run", "--config", "/etc/spikewire/device.toml"]
    return [str(Path(sys.executable).parent / "spikewire"), "run", "--config", str(cfg)]


def test_service_stop_crash_and_bad_config_as_the_unit_sees_them(mqtt_auth_broker, tmp_path):
    """The unit's command with the bundle's device.toml (adapted above): while it runs the device is
    `online`; `systemctl stop` (SIGTERM, systemd's default KillSignal) publishes the retained
    `offline` and exits 0, so Restart=on-failure leaves it stopped; a crash or power loss (SIGKILL)
    leaves the broker's last will `offline`, and exits non-zero (restarted); a config error exits 2
    (RestartPreventExitStatus=2: not restarted)."""
    import asyncio
    import signal

    from conftest import Subscriber, run_bounded

    async def one(sig, prefix: str) -> tuple[list[bytes], int, bytes]:
        status = f"{prefix}/pi-kitchen/status"
        (tmp_path / prefix).mkdir()
        cmd = _exec_start(_service_config(mqtt_auth_broker, tmp_path / prefix, prefix))
        async with Subscriber(mqtt_auth_broker, status) as sub:
            p = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                     stderr=asyncio.subprocess.PIPE)
            try:
                await sub.wait_for(lambda m: (status, b"online", False) in m, 60)
                p.send_signal(sig)
                async with asyncio.timeout(60):
                    _, err = await p.communicate()
                await sub.wait_for(lambda m: m[-1][1] == b"offline", 30)
            finally:
                if p.returncode is None:
                    p.kill()
                    await p.wait()
            got = [pl for _, pl, _ in sub.messages]
        async with Subscriber(mqtt_auth_broker, status) as late:  # what a dashboard sees afterwards
            retained = await late.wait_for(lambda m: m, 10)
        assert retained == [(status, b"offline", True)]
        return got, p.returncode, err

    got, rc, err = run_bounded(one(signal.SIGTERM, "svc-stop"), 150)
    assert got == [b"online", b"offline"] and rc == 0, err.decode()[-2000:]
    assert b'"event":"final_metrics"' in err
    got, rc, _ = run_bounded(one(signal.SIGKILL, "svc-kill"), 150)
    assert got == [b"online", b"offline"] and rc == -signal.SIGKILL  # the offline is the broker's will
    (tmp_path / "bad").mkdir()
    bad = _service_config(mqtt_auth_broker, tmp_path / "bad", "svc-bad", model=str(tmp_path / "missing.swm"))
    r = subprocess.run(_exec_start(bad), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "missing.swm" in r.stderr and "Traceback" not in r.stderr
