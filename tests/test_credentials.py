"""MQTT password from a file or SPIKEWIRE_MQTT_PASSWORD (runtime/credentials.py), unit checks and
against a real mosquitto that requires the password (conftest's mqtt_auth_broker)."""

from __future__ import annotations

import asyncio

import pytest
from conftest import PASSWORD, USERNAME

from spikewire.credentials import ENV_VAR, CredentialsError, read_password_file, with_password
from spikewire.wire import parse_mqtt_url
from spikewire.sinks import SinkError, parse_sink


def test_password_file_strips_one_newline(tmp_path):
    p = tmp_path / "pw"
    p.write_bytes(b" pass word \n")
    assert read_password_file(p) == " pass word "
    p.write_bytes(b"pw\r\n")
    assert read_password_file(p) == "pw"


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"), (b"\n", "is empty"), (b"a\nb\n", "more than one line"),
    (b"\xff\xfe", "not UTF-8"), (b"x" * 5000, "longer than 4096"),
])
def test_password_file_errors(tmp_path, content, message):
    p = tmp_path / "pw"
    p.write_bytes(content)
    with pytest.raises(CredentialsError, match=message):
        read_password_file(p)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CredentialsError, match="pw-missing"):
        read_password_file(tmp_path / "pw-missing")


def test_with_password_sources_and_conflicts(tmp_path):
    p = tmp_path / "pw"
    p.write_text("from-file\n")
    url = parse_mqtt_url("mqtt://pi-01@broker/lab")
    assert with_password(url, environ={}) is url
    assert with_password(url, password_file=str(p), environ={ENV_VAR: "from-env"}).password == "from-file"
    assert with_password(url, environ={ENV_VAR: "from-env"}).password == "from-env"
    assert "from-env" not in repr(with_password(url, environ={ENV_VAR: "from-env"}))
    with pytest.raises(CredentialsError, match="set but empty"):
        with_password(url, environ={ENV_VAR: ""})
    with pytest.raises(CredentialsError, match="no user name"):
        with_password(parse_mqtt_url("mqtt://broker/lab"), environ={ENV_VAR: "x"})
    with pytest.raises(CredentialsError, match="keep one") as e:
        with_password(parse_mqtt_url("mqtt://pi-01:in-url@broker/lab"), password_file=p, environ={})
    assert "in-url" not in str(e.value) and "from-file" not in str(e.value)
    with pytest.raises(CredentialsError, match="path string"):
        with_password(url, password_file=3, environ={})


def test_sink_spec_reports_credential_errors(tmp_path):
    with pytest.raises(SinkError, match="is empty"):
        (tmp_path / "pw").write_text("")
        parse_sink("mqtt://pi-01@broker/lab", mqtt_options={"password_file": str(tmp_path / "pw")})


async def _connect(sink):
    async with sink:
        await sink.sink.wait_connected(5)
        return sink.sink.url.password is not None


@pytest.mark.parametrize("via", ["file", "env"])
def test_real_broker_accepts_the_password(mqtt_auth_broker, tmp_path, monkeypatch, via):
    url = mqtt_auth_broker.url("swcred", password=None)
    assert USERNAME in url and PASSWORD not in url
    options = {}
    if via == "file":
        (tmp_path / "pw").write_text(PASSWORD + "\n")
        options["password_file"] = str(tmp_path / "pw")
        monkeypatch.delenv(ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(ENV_VAR, PASSWORD)
    sink = parse_sink(url, device_id="cred", mqtt_options=options)
    assert asyncio.run(asyncio.wait_for(_connect(sink), 20))


def test_real_broker_without_password_is_refused(mqtt_auth_broker, monkeypatch):
    from spikewire.mqtt import MqttAuthError

    monkeypatch.delenv(ENV_VAR, raising=False)
    sink = parse_sink(mqtt_auth_broker.url("swcred", password=None), device_id="cred")
    with pytest.raises(MqttAuthError):
        asyncio.run(asyncio.wait_for(_connect(sink), 20))


def test_cli_exit_code_2_names_the_variable(monkeypatch, capsys):
    from conftest import DIGITS_WAV

    from spikewire.cli import main

    monkeypatch.setenv(ENV_VAR, "")
    rc = main(["run", "--model", "kws-digits", "--source", f"wav:{DIGITS_WAV}", "--fast",
               "--sink", "mqtt://pi-01@127.0.0.1:1/lab"])
    assert rc == 2 and ENV_VAR in capsys.readouterr().err
