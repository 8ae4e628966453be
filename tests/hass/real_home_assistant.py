"""Home Assistant discovery against a real Home Assistant (a manual check, not part of the suite).

Home Assistant needs Python >= 3.13 and ~8 minutes of pip installs, and it fetches integration
requirements from PyPI when they are set up: too heavy and too networked for the test suite, which
checks the discovery messages on mosquitto and renders the templates with Jinja2 instead
(tests/test_hass.py). This script runs the real thing once:

    python3.13 -m venv /tmp/ha && /tmp/ha/bin/pip install homeassistant
    python -P tests/hass/real_home_assistant.py --hass /tmp/ha/bin/hass

It starts mosquitto (anonymous, loopback) and Home Assistant (http on loopback, onboarding, api,
config), onboards a user, adds the MQTT integration through its config flow, runs
``spikewire run`` with ``[mqtt.homeassistant] discovery = true`` on the digits recording at real time
and reads Home Assistant's states: the keyword event entity (event types = the model's vocabulary,
each keyword an event with its word as ``event_type``), the connectivity status and the six
diagnostic sensors while it runs, and the status off / the rest unavailable after it stopped.
Prints a JSON summary; exit code 0 when every check passed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

DEVICE = "pi-check"
SENSORS = {"real_time_factor", "keywords", "block_latency_p99", "uptime", "mqtt_reconnects", "dropped_keywords"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    def __init__(self, port: int):
        self.base, self.token = f"http://127.0.0.1:{port}", None

    def __call__(self, method: str, path: str, data=None, form: bool = False):
        headers, body = {}, None
        if data is not None:
            body = urllib.parse.urlencode(data).encode() if form else json.dumps(data).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded" if form else "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, body, headers, method=method)
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read() or b"null")

    def states(self) -> dict:
        return {s["entity_id"]: s for s in self("GET", "/api/states")
                if s["entity_id"].split(".", 1)[1].startswith(f"spikewire_{DEVICE.replace('-', '_')}")}


def wait(what: str, fn, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = fn()
            if got:
                return got
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(1.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hass", required=True, help="the hass executable of a Home Assistant venv")
    args = ap.parse_args()
    from spikewire.assets import demo_recording
    from spikewire.model import load

    vocab = load("kws-digits").vocabulary
    work = Path(tempfile.mkdtemp(prefix="spikewire-ha-"))
    mport, hport = free_port(), free_port()
    (work / "mosquitto.conf").write_text(f"listener {mport} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    (work / "config").mkdir()
    (work / "config" / "configuration.yaml").write_text(
        "homeassistant:\n  name: spikewire-check\n  latitude: 0\n  longitude: 0\n  elevation: 0\n"
        "  unit_system: metric\n  time_zone: UTC\n"
        f"http:\n  server_host: 127.0.0.1\n  server_port: {hport}\napi:\nonboarding:\nconfig:\n")
    mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    procs = [subprocess.Popen([mosq, "-c", str(work / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]
    checks: dict[str, bool] = {}
    try:
        with open(work / "hass.log", "wb") as log:
            procs.append(subprocess.Popen([args.hass, "-c", str(work / "config")], stdout=log, stderr=log))
        api = Api(hport)
        wait("Home Assistant's onboarding API", lambda: api("GET", "/api/onboarding"), 600)
        client = api.base + "/"
        code = api("POST", "/api/onboarding/users", {"client_id": client, "name": "check", "username": "check",
                                                     "password": "check-123456", "language": "en"})["auth_code"]
        api.token = api("POST", "/auth/token", {"grant_type": "authorization_code", "code": code,
                                                "client_id": client}, form=True)["access_token"]
        flow = api("POST", "/api/config/config_entries/flow", {"handler": "mqtt"})
        entry = api("POST", f"/api/config/config_entries/flow/{flow['flow_id']}", {"broker": "127.0.0.1",
                                                                                  "port": mport})
        checks["mqtt integration loaded"] = entry.get("result", {}).get("state") == "loaded"
        (work / "device.toml").write_text(
            f'model = "kws-digits"\nsource = "wav:{demo_recording()}"\ndevice_id = "{DEVICE}"\n'
            f'sinks = ["mqtt://127.0.0.1:{mport}/spikewire"]\nmetrics_interval = 2\n'
            "[mqtt.homeassistant]\ndiscovery = true\n")
        run = subprocess.Popen([sys.executable, "-P", "-m", "spikewire.cli", "run", "--config",
                                str(work / "device.toml")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(run)
        ev_id = f"event.spikewire_{DEVICE.replace('-', '_')}_keyword"
        live = wait("a keyword event and metrics in Home Assistant",
                    lambda: (s := api.states()).get(ev_id, {}).get("attributes", {}).get("event_type")
                    and all(s.get(f"sensor.spikewire_pi_check_{n}", {}).get("state") not in (None, "unavailable",
                                                                                            "unknown")
                            for n in SENSORS) and s, 120)
        run.wait(timeout=120)
        checks["spikewire run exit 0"] = run.returncode == 0
        ev = live[ev_id]["attributes"]
        checks["event types = vocabulary"] = ev["event_types"] == vocab
        checks["event_type is a word"] = ev["event_type"] in vocab
        checks["status on while running"] = live["binary_sensor.spikewire_pi_check_status"]["state"] == "on"
        checks["six sensors"] = {e.split("sensor.spikewire_pi_check_", 1)[1] for e in live
                                 if e.startswith("sensor.")} == SENSORS
        after = wait("offline in Home Assistant",
                     lambda: (s := api.states())["binary_sensor.spikewire_pi_check_status"]["state"] == "off" and s, 60)
        checks["status off after stop"] = True
        checks["others unavailable after stop"] = all(v["state"] == "unavailable" for k, v in after.items()
                                                      if not k.startswith("binary_sensor."))
        print(json.dumps({"home_assistant": api("GET", "/api/config")["version"], "checks": checks,
                          "while_running": {k: [v["state"], v["attributes"].get("event_type")]
                                            for k, v in sorted(live.items())}}, indent=1))
        return 0 if all(checks.values()) else 1
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if os.environ.get("KEEP") is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
