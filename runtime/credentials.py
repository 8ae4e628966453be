"""The MQTT password from a file or the environment, so that it need not sit in a URL.

A broker URL may name only the user (``mqtt://pi-01@broker.lan/spikewire``); the password then
comes from, in this order:

1. ``password_file`` (``[mqtt] password_file = "/etc/spikewire/mqtt-password"`` in device.toml):
   the file's content, with one trailing newline removed;
2. the environment variable ``SPIKEWIRE_MQTT_PASSWORD`` (e.g. ``Environment=`` or an
   ``EnvironmentFile=`` of a systemd unit).

A password in the URL and one from a file or the environment at the same time is an error
(it is never clear which one was meant). Every error names the file or the variable, never
the password. docs/mqtt.md, "Broker URL", documents this.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from .safefile import FileTooLargeError, read_regular

ENV_VAR = "SPIKEWIRE_MQTT_PASSWORD"


class CredentialsError(ValueError):
    """The password file or variable is unusable, or conflicts with the URL."""


def read_password_file(path: str | os.PathLike) -> str:
    """The password in ``path`` (UTF-8, one trailing newline removed; must not be empty)."""
    try:
        raw = read_regular(path, 4096)
    except FileTooLargeError:
        raise CredentialsError(f"MQTT password file {os.fspath(path)!r}: longer than 4096 bytes") from None
    except OSError as e:
        raise CredentialsError(f"MQTT password file {os.fspath(path)!r}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialsError(f"MQTT password file {os.fspath(path)!r}: not UTF-8") from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise CredentialsError(f"MQTT password file {os.fspath(path)!r} is empty")
    if "\n" in text:
        raise CredentialsError(f"MQTT password file {os.fspath(path)!r}: more than one line")
    return text


def with_password(url, *, password_file: str | os.PathLike | None = None,
                  environ: Mapping[str, str] | None = None):
    """``url`` (a :class:`spikewire.mqtt.MqttUrl`) with the password from the file or environment.

    Returned unchanged when neither is set. Raises :class:`CredentialsError` when the file is
    unusable, the variable is empty, the URL has no user name, or the URL already has a password.
    """
    environ = os.environ if environ is None else environ
    if password_file is not None:
        if not isinstance(password_file, (str, os.PathLike)):
            raise CredentialsError(f"MQTT password_file must be a path string, got {type(password_file).__name__}")
        source = f"password file {os.fspath(password_file)!r}"
        password = read_password_file(password_file)
    elif ENV_VAR in environ:
        source = f"environment variable {ENV_VAR}"
        password = environ[ENV_VAR]
        if not password:
            raise CredentialsError(f"MQTT {source} is set but empty")
    else:
        return url
    if url.username is None:
        raise CredentialsError(f"MQTT {source} given, but the broker URL has no user name (mqtt://USER@host/PREFIX)")
    if url.password is not None:
        raise CredentialsError(f"MQTT broker URL has a password and the {source} gives one too; keep one")
    return dataclasses.replace(url, password=password)
