"""Shared fixtures: real mosquitto brokers on free loopback ports.

Session-scoped: ``mqtt_broker`` (anonymous), ``mqtt_auth_broker`` (user/password),
``mqtt_tls_broker`` (TLS with a throwaway CA + user/password). Function-scoped:
``mqtt_restartable_broker`` (anonymous, persistent sessions, can be stopped and
restarted on the same port for outage tests). Tests that use them are marked
``mqtt`` (deselect with ``-m "not mqtt"``) and skipped, with the reason, when
``mosquitto`` (or ``openssl`` for TLS) or ``aiomqtt`` is not installed. The test side of
a broker test: :class:`Subscriber` (records what arrives) and :func:`run_bounded` (a coroutine
with an overall deadline).

Every broker runs ``user root`` so that it can read the key files and write its
persistence file in pytest's private (0700) temp dirs when started as root.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from spikewire.assets import demo_recording

HOST = "127.0.0.1"
USERNAME = "spiker"
PASSWORD = "s3cret:p@ss/word"  # needs percent-encoding in URLs: exercises the URL parser


BROKER_FIXTURES = {"mqtt_broker", "mqtt_auth_broker", "mqtt_tls_broker", "mqtt_restartable_broker"}


def pytest_configure(config):
    config.addinivalue_line("markers", "mqtt: needs a real mosquitto broker (added automatically)")


def pytest_sessionfinish(session, exitstatus):
    """With SPIKEWIRE_NO_SKIP=1 (tests/run.sh, CI) a skipped test fails the run:
    whatever the suite needs is installed by the test command, never silently skipped."""
    if os.environ.get("SPIKEWIRE_NO_SKIP") != "1" or exitstatus != 0:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        for rep in skipped:
            reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
            reporter.write_line(f"SKIPPED (not allowed with SPIKEWIRE_NO_SKIP=1): {rep.nodeid}: {reason}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(config, items):
    for item in items:
        if BROKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.mqtt)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Broker:
    """One mosquitto process. ``url()`` builds a spikewire MQTT URL for it."""

    workdir: Path
    port: int
    conf_lines: list[str]
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    host: str = HOST
    proc: subprocess.Popen | None = None

    @property
    def tls(self) -> bool:
        return self.ca_file is not None

    @property
    def log_file(self) -> Path:
        return self.workdir / "mosquitto.log"

    def start(self, timeout: float = 5.0) -> None:
        assert self.proc is None, "broker already running"
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(self.conf_lines) + "\n")
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError(f"mosquitto exited at start:\n{self.log_file.read_text()[-2000:]}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop(hard=True)
                    raise RuntimeError(f"mosquitto not accepting on port {self.port} after {timeout} s") from None
                time.sleep(0.01)

    def stop(self, *, hard: bool = False) -> None:
        """SIGTERM (mosquitto saves its persistence file) or, with ``hard``, SIGKILL."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def url(self, prefix: str, *, username: str | None = "", password: str | None = "",
            ca: bool = True, scheme: str | None = None, **query: str) -> str:
        """URL with this broker's credentials unless overridden (``None`` leaves them out)."""
        user = self.username if username == "" else username
        pw = self.password if password == "" else password
        auth = ""
        if user is not None:
            auth = quote(user, safe="") + (":" + quote(pw, safe="") if pw is not None else "") + "@"
        if self.tls and ca and "cafile" not in query:
            query["cafile"] = str(self.ca_file)
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        scheme = scheme or ("mqtts" if self.tls else "mqtt")
        return f"{scheme}://{auth}{self.host}:{self.port}/{prefix}" + (f"?{qs}" if qs else "")

    def client_kwargs(self) -> dict:
        """Keyword arguments for an ``aiomqtt.Client`` talking to this broker (test subscribers)."""
        import ssl

        kw: dict = {"hostname": self.host, "port": self.port, "timeout": 5}
        if self.username:
            kw.update(username=self.username, password=self.password)
        if self.tls:
            kw["tls_context"] = ssl.create_default_context(cafile=str(self.ca_file))
        return kw


def _base_conf(workdir: Path, port: int, *, persistence: bool = False) -> list[str]:
    lines = ["user root", "per_listener_settings true", f"listener {port} {HOST}"]
    if persistence:
        lines[:0] = ["persistence true", f"persistence_location {workdir}/", "persistence_file mosquitto.db"]
    else:
        lines[:0] = ["persistence false"]
    return lines


def _need(binary: str) -> None:
    pytest.importorskip("aiomqtt", reason="broker tests talk to mosquitto through aiomqtt")
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} not installed (apt-get install mosquitto mosquitto-clients openssl)")


def _password_file(workdir: Path) -> Path:
    path = workdir / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), USERNAME, PASSWORD],
                   check=True, capture_output=True, timeout=10)
    return path


def _throwaway_ca(workdir: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for localhost/127.0.0.1 made with openssl (about 1 s)."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=workdir, timeout=30)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=spikewire-test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
        "-out", "server.csr")
    (workdir / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "san.ext", "-out", "server.crt")
    return workdir / "ca.crt", workdir / "server.crt", workdir / "server.key"


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory):
    """Anonymous mosquitto on a free loopback port."""
    _need("mosquitto")
    workdir = tmp_path_factory.mktemp("mosquitto-plain")
    port = free_port()
    broker = Broker(workdir, port, _base_conf(workdir, port) + ["allow_anonymous true"])
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def mqtt_auth_broker(tmp_path_factory):
    """mosquitto that requires USERNAME/PASSWORD."""
    _need("mosquitto")
    _need("mosquitto_passwd")
    workdir = tmp_path_factory.mktemp("mosquitto-auth")
    port = free_port()
    conf = _base_conf(workdir, port) + ["allow_anonymous false", f"password_file {_password_file(workdir)}"]
    broker = Broker(workdir, port, conf, username=USERNAME, password=PASSWORD)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def mqtt_tls_broker(tmp_path_factory):
    """mosquitto with TLS (throwaway CA, server cert for localhost and 127.0.0.1) and USERNAME/PASSWORD."""
    _need("mosquitto")
    _need("mosquitto_passwd")
    _need("openssl")
    workdir = tmp_path_factory.mktemp("mosquitto-tls")
    ca, cert, key = _throwaway_ca(workdir)
    port = free_port()
    conf = _base_conf(workdir, port) + [
        "allow_anonymous false",
        f"password_file {_password_file(workdir)}",
        f"cafile {ca}",
        f"certfile {cert}",
        f"keyfile {key}",
    ]
    broker = Broker(workdir, port, conf, username=USERNAME, password=PASSWORD, ca_file=ca)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def mqtt_restartable_broker(tmp_path):
    """Anonymous mosquitto of this test only; ``stop()``/``start()`` keep the port.

    Persistence is on: a SIGTERM-stopped broker keeps persistent (clean_session=False)
    subscriber sessions and their subscriptions across the restart.
    """
    _need("mosquitto")
    port = free_port()
    broker = Broker(tmp_path, port, _base_conf(tmp_path, port, persistence=True) + ["allow_anonymous true"])
    broker.start()
    yield broker
    broker.stop(hard=True)


# ---------------------------------------------------------------------------
# Streaming runtime (tests/test_pipeline.py, tests/test_mic.py): a tiny hand-made model
# whose two "word" units respond to low / high channels, so it fires on speech energy.
# Used until (and besides) the trained kws-digits model.

REPO = Path(__file__).resolve().parents[1]
DIGITS_WAV = Path(demo_recording())  # the installed package's copy (spikewire.assets)
# what is said in it, in order (runtime/data/README.md)
DIGITS_WAV_WORDS = ["seven", "two", "nine", "zero", "four", "one", "eight", "three", "six", "five"]
DIGITS_WAV_SPANS_S = [(0.300, 0.732), (1.332, 1.900), (2.500, 2.979), (3.579, 4.132), (4.732, 5.082),
                      (5.682, 6.162), (6.762, 7.271), (7.871, 8.479), (9.079, 9.294), (9.894, 10.284)]


#: what the shipped kws-digits (v3) hears of the bundled recording through the file source, in order:
#: bit-exact on every CPU.  v3 is calibrated to keep other words out and finds about half of the FSDD
#: test split's digits in streams (48 % hits, MODEL_CARD.md); v2.2 heard all ten.
SHIPPED_DEMO_WORDS = ["seven", "one"]


def assert_heard_the_digits(got: list[dict], t_offset: float = 0.0, min_heard: int = 9) -> None:
    """Every keyword is the digit being spoken when it fired (or within 0.5 s after), no digit twice,
    and at least ``min_heard`` of the 10 digits are heard.  The bundled recording through the file
    source is bit-exact on every CPU (:data:`SHIPPED_DEMO_WORDS`); through a microphone the audio is
    resampled and delayed by the sound server, so one miss more is possible there, a wrong word is
    not."""
    heard = {}
    for e in got:
        t = e["t_end"] - t_offset
        i = next((i for i, (a, b) in enumerate(DIGITS_WAV_SPANS_S) if a <= t <= b + 0.5), None)
        assert i is not None, f"keyword outside every digit: {e}"
        assert e["word"] == DIGITS_WAV_WORDS[i], f"{e} while {DIGITS_WAV_WORDS[i]!r} was spoken"
        assert i not in heard, f"{DIGITS_WAV_WORDS[i]!r} reported twice"
        heard[i] = e
    assert len(heard) >= min_heard, f"heard only {[e['word'] for e in got]}"


def make_tiny_model(name: str = "tiny-test"):
    import numpy as np

    from spikewire.config import CoreConfig, fixed_params
    from spikewire.decision import DecisionConfig
    from spikewire.frontend import FrontEndConfig
    from spikewire.model import Model

    fe = FrontEndConfig(n_channels=16)
    cc = CoreConfig(n_in=16, n_hid=16, n_out=3, shift_in=10, shift_out=8)
    w_in = np.zeros((16, 16), np.int8)
    np.fill_diagonal(w_in, 40)
    w_out = np.zeros((16, 3), np.int8)
    w_out[:8, 0] = 30
    w_out[8:, 1] = 30
    return Model(name=name, vocabulary=["low", "high"], has_none_unit=True, frontend=fe, core=cc,
                 params=fixed_params(cc), weights={"in": w_in, "rec": np.zeros((16, 16), np.int8), "out": w_out},
                 # the run rule fires often on this model (16 keywords in the digits recording): the
                 # runtime tests are about plumbing and want many keywords
                 decision=DecisionConfig(threshold=150, margin=8, min_steps=3, refractory_ms=400, rule="run"))


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """A saved tiny model (``tiny-test``, 16 in -> 16 hidden -> low/high/_none)."""
    path = tmp_path_factory.mktemp("models") / "tiny-test.swm"
    make_tiny_model().save(path)
    return path


# -- the test side of broker tests ------------------------------------------------------------

def run_bounded(coro, timeout: float = 20.0):
    """Run a coroutine in a fresh loop with an overall deadline (a hang fails, it never blocks the suite)."""

    async def bounded():
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


class Subscriber:
    """A test-side aiomqtt client that subscribes to ``topics`` (QoS 1) and records each message as
    (topic, payload, retain); ``client`` also publishes. Use as ``async with``."""

    def __init__(self, broker, *topics: str, **kwargs):
        import aiomqtt  # the broker fixtures have skipped already where it is missing

        self.client = aiomqtt.Client(**broker.client_kwargs(), **kwargs)
        self.topics = topics
        self.messages: list[tuple[str, bytes, bool]] = []
        self._new = asyncio.Event()
        self._task = None

    async def __aenter__(self):
        await self.client.__aenter__()
        for topic in self.topics:
            await self.client.subscribe(topic, qos=1)
        self._task = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, *exc):
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.client.__aexit__(None, None, None)

    async def _collect(self):
        async for m in self.client.messages:
            self.messages.append((str(m.topic), bytes(m.payload), bool(m.retain)))
            self._new.set()

    async def wait_for(self, predicate, timeout: float = 5.0):
        """Wait until predicate(messages) is truthy; return its value."""
        async with asyncio.timeout(timeout):
            while not (result := predicate(self.messages)):
                self._new.clear()
                await self._new.wait()
        return result

    def on(self, topic: str) -> list[bytes]:
        return [p for t, p, _ in self.messages if t == topic]
