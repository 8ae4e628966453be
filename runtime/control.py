"""The control protocol: requests ``{"cmd": NAME, "id": ID, **args}``, replies ``{id, ok, error?, result?}``,
the registry of command handlers, and :class:`ControlChannel`, one door into the registry per place
requests come from. Not MQTT: whatever carries the JSON payloads (the MQTT sink's ``control`` topic
today) hands them to a :class:`ControlChannel` (or, one at a time, to :meth:`CommandRegistry.handle`).
The payloads are specified in ``docs/mqtt.md`` ("Control"), the pipeline's commands in ``docs/runtime.md``.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import inspect
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .ratelog import RateLimitedLog
from .wire import PayloadError, decode_json_object, json_safe

__all__ = [
    "CommandError",
    "CommandRegistry",
    "CommandSpec",
    "ControlChannel",
    "ControlPolicy",
    "ControlCommand",
    "ControlPayloadError",
    "encode_reply",
    "parse_command_line",
    "parse_control",
]

log = logging.getLogger(__name__)


class CommandError(Exception):
    """Raised by a command handler (or the parser) to send ``{"ok": false, "error": str(exc)}``."""


@dataclasses.dataclass(frozen=True)
class ControlCommand:
    """A parsed control request: ``{"cmd": NAME, "id": ID, **args}``."""

    cmd: str
    id: str | int | None
    args: dict[str, Any]


class ControlPayloadError(PayloadError):
    """A control payload could not be parsed; ``request_id`` is its ``id`` if one was readable."""

    def __init__(self, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.request_id = request_id


def parse_control(payload: bytes | str) -> ControlCommand:
    """Parse a control payload; raises :class:`ControlPayloadError` (a :class:`PayloadError`)."""
    doc = decode_json_object(payload, "control payload", ControlPayloadError)
    req_id = doc.pop("id", None)
    if req_id is not None and (isinstance(req_id, bool) or not isinstance(req_id, (str, int))):
        raise ControlPayloadError(f"control id must be a string, an integer or null, got {type(req_id).__name__}")
    cmd = doc.pop("cmd", None)
    if cmd is None:
        raise ControlPayloadError("control payload has no 'cmd'", req_id)
    if not isinstance(cmd, str) or not cmd:
        raise ControlPayloadError(f"control 'cmd' must be a non-empty string, got {cmd!r:.60}", req_id)
    return ControlCommand(cmd=cmd, id=req_id, args=doc)


#: The longest command line :func:`parse_command_line` takes (a terminal line, not a payload).
MAX_COMMAND_LINE = 4096


def _scalar(text: str) -> Any:
    """``key=value`` values of a command line: true/false, integers (``+1`` too), else the text."""
    low = text.lower()
    if low in ("true", "on", "yes"):
        return True
    if low in ("false", "off", "no"):
        return False
    try:
        return int(text, 10)
    except ValueError:
        return text


def parse_command_line(line: str, request_id: Any = None) -> dict | None:
    """A command typed by a local user (``spikewire run --learn``: the terminal, stdin or a FIFO) as the
    control request it stands for (docs/runtime.md, "Commands from the terminal"); None for a blank
    line or a ``#`` comment. Raises :class:`ControlPayloadError` for a line it cannot read.

    ``learn on|off [KEY=VALUE ...]``, ``label WORD [ID]``, ``reward +1|-1 [ID]``, ``reload [PATH]``,
    ``snapshot [PATH]``, any other ``CMD [KEY=VALUE ...]`` (``matrices=in,out`` is a list), or a JSON
    request ``{"cmd": ...}`` as on MQTT. The result goes through the same registry as MQTT control.
    """
    if len(line) > MAX_COMMAND_LINE:
        raise ControlPayloadError(f"command line longer than {MAX_COMMAND_LINE} characters", request_id)
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    if text.startswith("{"):
        doc = decode_json_object(text, "command", ControlPayloadError)
        doc.setdefault("id", request_id)
        return doc
    words = text.split()
    cmd, rest = words[0], words[1:]
    doc: dict[str, Any] = {"cmd": cmd, "id": request_id}
    positional = [w for w in rest if "=" not in w]
    keyed = [w for w in rest if "=" in w]

    def bad(msg: str) -> ControlPayloadError:
        return ControlPayloadError(f"{cmd}: {msg}", request_id)

    def stretch_id(w: str) -> int:
        try:
            v = int(w, 10)
        except ValueError:
            raise bad(f"stretch id must be an integer, got {w!r:.40}") from None
        if v < 0:
            raise bad(f"stretch id must be >= 0, got {v}")
        return v

    if cmd == "learn" and positional:
        if len(positional) > 1 or positional[0].lower() not in ("on", "off"):
            raise bad("usage: learn on|off [KEY=VALUE ...]")
        doc["on"] = positional[0].lower() == "on"
    elif cmd == "label" and positional:
        if len(positional) > 2:
            raise bad("usage: label WORD [STRETCH_ID]")
        doc["word"] = positional[0]
        if len(positional) == 2:
            doc["stretch"] = stretch_id(positional[1])
    elif cmd == "reward" and positional:
        if len(positional) > 2 or positional[0] not in ("+1", "1", "-1"):
            raise bad("usage: reward +1|-1 [STRETCH_ID]")
        doc["value"] = int(positional[0])
        if len(positional) == 2:
            doc["stretch"] = stretch_id(positional[1])
    elif cmd in ("reload", "snapshot") and positional:
        if len(positional) > 1:
            raise bad(f"usage: {cmd} [PATH]")
        doc["path"] = positional[0]
    elif positional:
        raise bad(f"unexpected {' '.join(positional)!r:.60} (arguments are KEY=VALUE)")
    for kv in keyed:
        key, _, value = kv.partition("=")
        if not key or key in ("cmd", "id") or key in doc:
            raise bad(f"bad or repeated argument {key!r:.40}")
        doc[key] = value.split(",") if key == "matrices" else _scalar(value)
    return doc


def encode_reply(request_id: Any, ok: bool, *, result: Any = None, error: str | None = None) -> bytes:
    """The ``control/reply`` JSON: ``{id, ok, error?, result?}``."""
    doc: dict[str, Any] = {"id": request_id, "ok": ok}
    if error is not None:
        doc["error"] = error
    if result is not None:
        doc["result"] = json_safe(result)
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


@dataclasses.dataclass(frozen=True)
class ControlPolicy:
    """Who may do what through the control topics on this device (``[control]`` in device.toml).

    ``enabled`` false: the MQTT sinks do not subscribe to ``control`` at all (nothing is read,
    nothing is answered). ``allow``: the command names accepted (``None``: every registered
    command); any other is answered ``not allowed`` and counted in ``control_errors``.
    ``models_dir``: the only folder ``reload`` may load model files from (besides the shipped
    model names); ``None``: shipped names only. See docs/security.md.
    """

    enabled: bool = True
    allow: tuple[str, ...] | None = None
    models_dir: str | None = None

    KEYS = ("enabled", "allow", "models_dir")

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"[control] enabled must be true or false, got {self.enabled!r:.40}")
        if self.allow is not None:
            if isinstance(self.allow, str) or not isinstance(self.allow, Iterable):
                raise ValueError(f"[control] allow must be a list of command names, got {self.allow!r:.60}")
            allow = tuple(self.allow)
            if not all(isinstance(c, str) and c for c in allow):
                raise ValueError(f"[control] allow must be a list of non-empty command names, got {allow!r:.80}")
            object.__setattr__(self, "allow", allow)
        if self.models_dir is not None:
            if not isinstance(self.models_dir, (str, os.PathLike)) or not os.fspath(self.models_dir):
                raise ValueError(f"[control] models_dir must be a folder path, got {self.models_dir!r:.80}")
            object.__setattr__(self, "models_dir", os.fspath(self.models_dir))

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "ControlPolicy":
        unknown = sorted(set(doc) - set(cls.KEYS))
        if unknown:
            raise ValueError(f"[control]: unknown key(s) {', '.join(unknown)}; known: {', '.join(cls.KEYS)}")
        return cls(**doc)

    def allows(self, cmd: str) -> bool:
        return self.allow is None or cmd in self.allow

    def model_file(self, ref: str) -> Path:
        """The file a ``reload`` request may load for ``ref`` (not a shipped name): inside ``models_dir``
        after resolving symlinks, a regular ``.swm`` file, no ``..``. Raises :class:`CommandError`
        without touching anything outside ``models_dir``; the message names no file contents."""
        if self.models_dir is None:
            raise CommandError("reload: only shipped model names are allowed here (no [control] models_dir)")
        if "\0" in ref or not ref:
            raise CommandError("reload: bad model path")
        rel = Path(ref)
        if ".." in rel.parts:
            raise CommandError(f"reload: {ref!r:.100}: '..' is not allowed in a model path")
        root = Path(self.models_dir).resolve()
        given = Path(os.path.abspath(Path(self.models_dir) / rel))
        # lexical check first: a path outside the folder is refused without a look at the file system
        if not (given.is_relative_to(Path(os.path.abspath(self.models_dir))) or given.is_relative_to(root)):
            raise CommandError(f"reload: {ref!r:.100} is outside the models folder {self.models_dir}")
        try:
            real = given.resolve(strict=True)
        except (OSError, RuntimeError):
            raise CommandError(f"reload: no model {ref!r:.100} in the models folder {self.models_dir}") from None
        if real == root or not real.is_relative_to(root):  # a symlink out of the folder
            raise CommandError(f"reload: {ref!r:.100} is outside the models folder {self.models_dir}")
        if real.suffix != ".swm":
            raise CommandError(f"reload: {ref!r:.100} is not a .swm model file")
        if not real.is_file():
            raise CommandError(f"reload: {ref!r:.100} is not a regular file")
        return real


ArgType = type | tuple[type, ...]


@dataclasses.dataclass(frozen=True)
class CommandSpec:
    """A registered control command: handler plus argument schema (name -> accepted types)."""

    name: str
    handler: Callable[..., Any]
    required: Mapping[str, ArgType]
    optional: Mapping[str, ArgType]
    help: str = ""


def _type_ok(value: Any, types: ArgType) -> bool:
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def _type_name(types: ArgType) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in types)


class CommandRegistry:
    """Control command handlers by name. The sink parses and validates; handlers only act.

    Register with ``registry.register("pause", handler)`` or as a decorator::

        @registry.register("label", required={"word": str}, optional={"weight": float})
        async def label(word, weight=1.0): ...

    A handler receives the validated arguments as keyword arguments (``id`` and
    ``cmd`` removed), may be sync or async, and returns a JSON-serialisable
    result (or ``None``). Raising :class:`CommandError` or ``ValueError`` gives an
    error reply with that message; any other exception is logged and reported
    as ``"TypeName: message"``. Argument types: ``str``, ``int``, ``float`` (also
    accepts ints), ``bool``, ``list``, ``dict``; ``bool`` is never an ``int``.
    """

    def __init__(self) -> None:
        self._specs: dict[str, CommandSpec] = {}
        self.allowed: frozenset[str] | None = None  # None: every registered command (ControlPolicy.allow)

    def register(
        self,
        name: str,
        handler: Callable[..., Any] | None = None,
        *,
        required: Mapping[str, ArgType] | None = None,
        optional: Mapping[str, ArgType] | None = None,
        help: str = "",  # noqa: A002
        replace: bool = False,
    ) -> Any:
        if not isinstance(name, str) or not name:
            raise ValueError(f"command name must be a non-empty string, got {name!r}")
        if name in self._specs and not replace:
            raise ValueError(f"command {name!r} is already registered (pass replace=True)")
        reserved = {"id", "cmd"} & (set(required or ()) | set(optional or ()))
        if reserved:
            raise ValueError(f"command {name!r}: argument names {sorted(reserved)} are reserved")

        def add(fn: Callable[..., Any]) -> Callable[..., Any]:
            self._specs[name] = CommandSpec(name, fn, dict(required or {}), dict(optional or {}), help)
            return fn

        return add if handler is None else add(handler)

    def unregister(self, name: str) -> None:
        self._specs.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def names(self) -> list[str]:
        """Registered commands that are allowed (all of them unless :attr:`allowed` is set)."""
        return sorted(n for n in self._specs if self.allowed is None or n in self.allowed)

    def help(self) -> dict[str, str]:
        """The allowed commands and their help texts."""
        return {n: self._specs[n].help for n in self.names()}

    def validate(self, command: ControlCommand) -> CommandSpec:
        """Check that the command exists and its arguments match; raises :class:`CommandError`."""
        spec = self._specs.get(command.cmd)
        if spec is None:
            known = ", ".join(self.names()) or "none"
            raise CommandError(f"unknown cmd {command.cmd!r:.60}; known: {known}")
        if self.allowed is not None and command.cmd not in self.allowed:
            raise CommandError(f"cmd {command.cmd!r:.60} is not allowed on this device ([control] allow)")
        missing = [k for k in spec.required if k not in command.args]
        if missing:
            raise CommandError(f"{command.cmd}: missing argument(s) {', '.join(missing)}")
        for key, value in command.args.items():
            types = spec.required.get(key, spec.optional.get(key))
            if types is None:
                raise CommandError(f"{command.cmd}: unexpected argument {key!r}")
            if not _type_ok(value, types):
                raise CommandError(
                    f"{command.cmd}: argument {key!r} must be {_type_name(types)}, got {type(value).__name__}"
                )
        return spec

    async def execute(self, command: ControlCommand, *, timeout: float | None = None) -> bytes:
        """Validate and run a command; returns the encoded reply. Never raises (except cancellation)."""
        try:
            spec = self.validate(command)
            async with asyncio.timeout(timeout):
                result = spec.handler(**command.args)
                if inspect.isawaitable(result):
                    result = await result
            return encode_reply(command.id, True, result=result)
        except (CommandError, ValueError) as exc:
            return encode_reply(command.id, False, error=str(exc) or type(exc).__name__)
        except TimeoutError:
            return encode_reply(command.id, False, error=f"{command.cmd}: timed out after {timeout} s")
        except Exception as exc:  # a handler bug must not kill the sink
            log.exception("control command %r failed", command.cmd)
            return encode_reply(command.id, False, error=f"{type(exc).__name__}: {exc}")

    async def handle(self, payload: bytes | str, *, timeout: float | None = None) -> bytes:
        """Parse, validate and run one raw control payload; returns the encoded reply. Never raises."""
        try:
            command = parse_control(payload)
        except ControlPayloadError as exc:
            return encode_reply(exc.request_id, False, error=str(exc))
        return await self.execute(command, timeout=timeout)


class ControlChannel:
    """One door into a :class:`CommandRegistry`: raw payloads from one place (the MQTT ``control`` topic,
    a line on a pipe, ...) in, encoded replies out through ``reply``.

    :meth:`submit` (event-loop thread only; never blocks, never raises) parses and validates at
    once: a malformed or invalid request is answered right away and counted in ``control_errors``.
    A valid one waits in a queue of ``queue`` commands; when it is full the request is answered
    ``busy`` and counted in ``dropped_commands``. :meth:`run` executes them one at a time, in arrival
    order ("pause" then "resume" must not overtake each other), each bounded by ``timeout`` seconds.

    ``counts`` gets ``control_received``, ``control_errors``, ``dropped_commands`` and
    ``suppressed_warnings`` (warnings about bad requests are logged at most once a second); pass
    the owner's counter dict to have them there.
    """

    def __init__(self, registry: CommandRegistry, reply: Callable[[bytes], None], *, name: str = "control",
                 queue: int = 16, timeout: float | None = 10.0, counts: dict[str, int] | None = None) -> None:
        if isinstance(queue, bool) or not isinstance(queue, int) or queue < 1:
            raise ValueError(f"control queue must be a positive integer, got {queue!r}")
        self.registry = registry
        self.name = name
        self._reply = reply
        self._cap = queue
        self._timeout = timeout
        self._pending: collections.deque[ControlCommand] = collections.deque()
        self._ready: asyncio.Event | None = None
        self.counts = counts if counts is not None else {}
        for key in ("control_received", "control_errors", "dropped_commands"):
            self.counts.setdefault(key, 0)
        self._warnings = RateLimitedLog(log, counts=self.counts)  # a flood of bad requests: one warning a second

    def submit(self, payload: bytes | str) -> None:
        """Take one raw request; malformed, invalid or over-capacity ones are answered at once."""
        self.counts["control_received"] += 1
        try:
            command = parse_control(payload)
        except ControlPayloadError as exc:
            self.counts["control_errors"] += 1
            self._warnings.warning("%s: malformed control payload: %s", self.name, exc)
            self._reply(encode_reply(exc.request_id, False, error=str(exc)))
            return
        try:
            self.registry.validate(command)
        except CommandError as exc:
            self.counts["control_errors"] += 1
            self._warnings.warning("%s: rejected control command: %s", self.name, exc)
            self._reply(encode_reply(command.id, False, error=str(exc)))
            return
        if len(self._pending) >= self._cap:
            self.counts["dropped_commands"] += 1
            self._reply(encode_reply(command.id, False, error=f"busy: {self._cap} commands pending"))
            return
        self._pending.append(command)
        if self._ready is not None:
            self._ready.set()

    @property
    def pending(self) -> int:
        """Commands accepted and not yet started."""
        return len(self._pending)

    async def run(self) -> None:
        """Execute queued commands one at a time until cancelled (start it once per channel)."""
        self._ready = asyncio.Event()
        while True:
            while not self._pending:
                self._ready.clear()
                await self._ready.wait()
            command = self._pending.popleft()
            log.info("%s: control command %r (id=%r)", self.name, command.cmd, command.id)
            self._reply(await self.registry.execute(command, timeout=self._timeout))
