"""The ``spikewire`` command line.

Subcommands are thin: they parse flags, set up logging and call into the
runtime.  Library code never prints; only this module writes to stdout.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import logging
import sys
import time
from typing import Any

import numpy as np

from .assets import demo_recording  # noqa: F401  (also spikewire.cli.demo_recording, its old home)

log = logging.getLogger("spikewire")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ---------------------------------------------------------------------------
# core demo: a small random network on the fixed-point core, synthetic input

def cmd_core_demo(args: argparse.Namespace) -> int:
    from .config import Chip, CoreConfig
    from .core import Core, Events

    rng = np.random.default_rng(args.seed)
    cfg = CoreConfig(n_in=32, n_hid=64, n_out=4, preset="bss2", shift_in=6, shift_rec=5, shift_out=6)
    chip = Chip(seed=args.seed, threshold=0.05, decay=0.05, gain=0.1)
    core = Core(cfg, chip)
    core.set_weights("in", rng.integers(-20, 48, (32, 64)).astype(np.int8))
    w_rec = rng.integers(-30, 31, (64, 64)).astype(np.int8)
    np.fill_diagonal(w_rec, 0)
    core.set_weights("rec", w_rec)
    core.set_weights("out", rng.integers(-63, 64, (64, 4)).astype(np.int8))
    # synthetic "audio": a moving band of active channels, 100 ms per sweep
    T = args.steps
    rate = np.zeros((T, 32))
    for t in range(T):
        centre = (t // 3) % 32
        rate[t, max(0, centre - 2):centre + 3] = 0.3
    raster = rng.random((T, 32)) < rate
    events = Events.from_raster(raster)
    block = 100
    print(json.dumps({"event": "core_demo", "network": "32 in -> 64 recurrent LIF -> 4 readout",
                      "preset": cfg.preset, "chip_seed": chip.seed, "steps": T}))
    t0 = time.perf_counter()
    for b in range(0, T, block):
        n = min(block, T - b)
        sub = Events(events.indptr[b:b + n + 1] - events.indptr[b],
                     events.channels[events.indptr[b]:events.indptr[b + n]])
        out = core.run(sub)
        print(json.dumps({
            "event": "block", "t_ms": [b, b + n], "input_spikes": int(len(sub.channels)),
            "hidden_spikes": out.n_spikes,
            "hidden_rate_hz": round(out.n_spikes / (n * 64) * 1000, 1),
            "readout_cadc_mean": [round(float(x), 1) for x in out.cadc.mean(axis=0)],
        }))
    dt = time.perf_counter() - t0
    print(json.dumps({"event": "done", "steps": T, "wall_s": round(dt, 4),
                      "real_time_factor": round(T / 1000 / dt, 1)}))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "core":
        if args.learn:
            from . import bench_learn
            bench_learn.run(args.json, args.runs, args.kernel, args.surrogate_log2, eligibility=args.eligibility)
            return 0
        from . import bench_core
        bench_core.run(args.json, args.runs, args.kernel, args.min_time, not args.no_c_loop)
        return 0
    if args.what == "e2e":
        from . import bench_e2e
        return bench_e2e.run(args.json, args.model)
    if args.what == "soak":
        from . import bench_soak
        argv = ["--rate", str(args.msg_rate), "--batch-steps", str(args.batch_steps)]
        argv += (["--seconds", str(args.seconds)] if args.seconds is not None else [])
        argv += (["--stream-seconds", str(args.stream_seconds)] if args.stream_seconds is not None else [])
        return bench_soak.main(argv + (["--json", args.json] if args.json else []))
    if args.what == "cpu":
        from . import bench_cpu
        argv = ["--rate", str(args.rate), "--block-ms", str(args.block_ms), "--model", args.model or "kws-digits"]
        argv += (["--json", args.json] if args.json else []) + (["--aarch64"] if args.aarch64 else [])
        return bench_cpu.main(argv + (["--runtime"] if args.runtime else []))
    print(f"unknown benchmark {args.what!r}", file=sys.stderr)
    return 2


def cmd_eval(args: argparse.Namespace) -> int:
    """``spikewire eval``: offline / streaming evaluation and calibration (tools/evaluate.py)."""
    from .tools import evaluate  # lazy: keeps the other subcommands light
    from .modelfile import ModelFileError

    try:
        report = evaluate.run(args)
    except (evaluate.EvalError, ModelFileError, FileNotFoundError, ValueError) as e:
        log.debug("eval failed", exc_info=True)
        print(f"spikewire eval: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, allow_nan=False) if args.json else evaluate.format_report(report))
    return 0


# ---------------------------------------------------------------------------
# streaming runtime: run / demo / devices  (runtime/pipeline.py, docs/runtime.md)

#: TOML keys of ``spikewire run --config FILE`` (flat, or under a [run] table) and their defaults.
RUN_DEFAULTS: dict = {
    "model": "kws-digits", "source": "mic", "sink": ["stdout"], "fast": False, "speed": 1.0, "rate": None,
    "block_ms": None, "device_id": None, "broker": None, "spikes": False, "metrics_interval": 5.0,
    "snapshot_dir": ".", "drain_timeout": 5.0, "duration": None, "log_level": None, "mqtt": {}, "control": {},
    "learn": False, "checkpoint": None, "checkpoint_s": 60.0, "rejected": False, "commands": None,
}
_RUN_TYPES: dict = {"model": str, "source": str, "sink": (str, list), "fast": bool, "speed": (int, float),
                    "rate": int, "block_ms": (int, float), "device_id": str, "broker": str, "spikes": bool,
                    "metrics_interval": (int, float), "snapshot_dir": str, "drain_timeout": (int, float),
                    "duration": (int, float), "log_level": str, "mqtt": dict, "control": dict,
                    "learn": bool, "checkpoint": str, "checkpoint_s": (int, float), "rejected": bool,
                    "commands": str}


class _UsageError(ValueError):
    pass


#: A run config is a few hundred bytes; a larger file is refused before it is read.
MAX_CONFIG_BYTES = 1 << 20
#: Tables nest at most this deep ([mqtt.homeassistant] is 2); deeper documents are refused.
MAX_CONFIG_DEPTH = 8


def _depth_exceeds(doc: Any, limit: int) -> bool:
    """True when tables/arrays nest deeper than ``limit`` (iterative: no recursion on hostile input)."""
    stack = [(doc, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            if d >= limit:
                return True
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return False


def _load_run_config(path: str) -> dict:
    """The TOML run config (device.toml): a regular file of at most 1 MiB, nested at most 8 deep, known
    keys of the right types; every problem is a usage error (exit 2) naming the key, never a traceback."""
    import tomllib

    from .safefile import read_regular

    try:
        raw = read_regular(path, MAX_CONFIG_BYTES)
    except OSError as e:
        raise _UsageError(f"cannot read config {path}: {e.strerror or e}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _UsageError(f"config {path} is not valid TOML: not UTF-8") from None
    except RecursionError:
        raise _UsageError(f"config {path} nests arrays or tables too deeply") from None
    except tomllib.TOMLDecodeError as e:
        raise _UsageError(f"config {path} is not valid TOML: {e}") from None
    if _depth_exceeds(doc, MAX_CONFIG_DEPTH):
        raise _UsageError(f"config {path} nests tables or arrays deeper than {MAX_CONFIG_DEPTH}")
    doc = doc.get("run", doc) if isinstance(doc.get("run"), dict) else doc
    if "sinks" in doc:
        doc["sink"] = doc.pop("sinks")
    out = {}
    for k, v in doc.items():
        if k not in _RUN_TYPES:
            raise _UsageError(f"config {path}: unknown key {k!r}; known keys: {', '.join(sorted(_RUN_TYPES))}")
        t = _RUN_TYPES[k]
        if isinstance(v, bool) and t is not bool or not isinstance(v, t):
            raise _UsageError(f"config {path}: {k} has the wrong type ({type(v).__name__})")
        if k == "control":
            _control_policy(v, f"config {path}: ")
        out[k] = [v] if k == "sink" and isinstance(v, str) else v
    return out


def _control_policy(doc: dict, where: str = ""):
    """The ``[control]`` table as a :class:`spikewire.control.ControlPolicy` (docs/security.md)."""
    from .control import ControlPolicy

    try:
        return ControlPolicy.from_dict(doc or {})
    except (TypeError, ValueError) as e:
        raise _UsageError(f"{where}{e}") from None


def _run_settings(args: argparse.Namespace) -> dict:
    """Defaults < TOML file < command-line flags."""
    cfg = dict(RUN_DEFAULTS)
    if getattr(args, "config", None):
        cfg.update(_load_run_config(args.config))
    for k in RUN_DEFAULTS:
        v = getattr(args, k, None)
        if v is not None:
            cfg[k] = v
    _check_settings(cfg)
    return cfg


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _number(cfg: dict, key: str, *, lo: float, hi: float, lo_open: bool = False, none: bool = False) -> None:
    v = cfg.get(key)
    if v is None and none:
        return
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and \
        (v > lo if lo_open else v >= lo) and v <= hi
    if not ok:
        raise _UsageError(f"{key.replace('_', '-')} must be a number {'>' if lo_open else '>='} {lo:g} and <= {hi:g}"
                          f", got {v!r:.40}")


def _check_settings(cfg: dict) -> None:
    """Run settings (flags and TOML alike) in range: finite numbers, known log level, sink specs as strings.
    What a source, sink or model checks itself (rates, URLs, model files) is left to it."""
    _number(cfg, "speed", lo=0, hi=1e6, lo_open=True)
    _number(cfg, "block_ms", lo=0, hi=10_000, lo_open=True, none=True)
    _number(cfg, "metrics_interval", lo=0, hi=86_400)
    _number(cfg, "drain_timeout", lo=0, hi=3_600)
    _number(cfg, "duration", lo=0, hi=1e9, lo_open=True, none=True)
    _number(cfg, "checkpoint_s", lo=0, hi=1e9, lo_open=True)
    for key in ("model", "source"):
        if not isinstance(cfg.get(key), str) or not cfg[key]:
            raise _UsageError(f"{key} must be a non-empty string, got {cfg.get(key)!r:.60}")
    sinks = cfg.get("sink")
    if sinks is not None and (not isinstance(sinks, list) or not all(isinstance(s, str) and s for s in sinks)):
        raise _UsageError(f"sink must be a list of sink specs (strings), got {sinks!r:.80}")
    for key in ("device_id", "broker", "checkpoint", "snapshot_dir"):
        v = cfg.get(key)
        if v is not None and (not isinstance(v, str) or not v):
            raise _UsageError(f"{key.replace('_', '-')} must be a non-empty string, got {v!r:.60}")
    lvl = cfg.get("log_level")
    if lvl is not None and (not isinstance(lvl, str) or lvl.lower() not in LOG_LEVELS):
        raise _UsageError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {lvl!r:.40}")


#: [mqtt] keys (MqttSink options a device.toml may set) and their types; [mqtt.backoff] keys.
MQTT_OPTIONS: dict = {"keyword_buffer": int, "spike_queue": int, "reply_queue": int, "command_queue": int,
                      "connect_timeout": float, "publish_timeout": float, "close_timeout": float,
                      "command_timeout": float, "keepalive": int, "client_id": str, "password_file": str,
                      "backoff": dict, "homeassistant": dict}
BACKOFF_KEYS = ("initial", "maximum", "factor", "jitter")


def _mqtt_options(opts: dict) -> dict:
    """The ``[mqtt]`` table checked (known keys, types, ranges) into MqttSink keyword options."""
    from .mqtt import Backoff

    if not isinstance(opts, dict):
        raise _UsageError(f"[mqtt] must be a table, got {type(opts).__name__}")
    o = dict(opts)
    for k, v in o.items():
        t = MQTT_OPTIONS.get(k)
        if t is None:
            raise _UsageError(f"[mqtt]: unknown key {k!r:.40}; known: {', '.join(MQTT_OPTIONS)}")
        if k == "backoff" and isinstance(v, Backoff):
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float) if t is float else t):
            kind = {float: "a number", int: "an integer", str: "a string", dict: "a table"}[t]
            raise _UsageError(f"[mqtt] {k} must be {kind}, got {type(v).__name__}")
        if t is int and not (1 <= v <= (65535 if k == "keepalive" else 1 << 20)):
            raise _UsageError(f"[mqtt] {k} must be in 1..{65535 if k == 'keepalive' else 1 << 20}, got {v}")
        if t is float and not (math.isfinite(v) and 0 < v <= 3600):
            raise _UsageError(f"[mqtt] {k} must be a number of seconds in (0, 3600], got {v!r}")
    if isinstance(o.get("backoff"), dict):
        b = o["backoff"]
        unknown = sorted(set(b) - set(BACKOFF_KEYS))
        if unknown:
            raise _UsageError(f"[mqtt.backoff]: unknown key(s) {unknown!r:.60}; known: {', '.join(BACKOFF_KEYS)}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b.values()):
            raise _UsageError("[mqtt.backoff] values must be numbers")
        try:
            o["backoff"] = Backoff(**b)
        except ValueError as e:
            raise _UsageError(f"[mqtt.backoff]: {e}") from None
    return o


def build_pipeline(cfg: dict, *, stream=None):
    """A :class:`spikewire.pipeline.Pipeline` from run settings (``RUN_DEFAULTS`` keys)."""
    from .pipeline import Pipeline
    from .sinks import parse_sink
    from .sources import SourceOptions, parse_source

    _check_settings(cfg)
    sinks_specs = cfg["sink"] or ["stdout"]
    broker = cfg["broker"] or next((s for s in sinks_specs if s.startswith(("mqtt://", "mqtts://"))), None)
    fast = bool(cfg["fast"])
    block_ms = cfg["block_ms"] if cfg["block_ms"] is not None else (100.0 if fast else 10.0)
    source = parse_source(cfg["source"], SourceOptions(block_ms=block_ms, fast=fast, speed=float(cfg["speed"]),
                                                       rate=cfg["rate"], broker=broker))
    mopts = _mqtt_options(cfg.get("mqtt") or {})
    sinks = [parse_sink(s, device_id=cfg["device_id"] or _default_device_id(), spikes=bool(cfg["spikes"]),
                        mqtt_options=mopts, stream=stream) for s in sinks_specs]
    if not float(cfg.get("checkpoint_s", 60.0)) > 0:
        raise _UsageError(f"--checkpoint-s must be > 0 seconds, got {cfg['checkpoint_s']}")
    return Pipeline(cfg["model"], source, sinks, metrics_interval=float(cfg["metrics_interval"]),
                    snapshot_dir=cfg["snapshot_dir"], drain_timeout=float(cfg["drain_timeout"]),
                    device_id=cfg["device_id"], control=_control_policy(cfg.get("control") or {}),
                    learn=bool(cfg.get("learn")), checkpoint=cfg.get("checkpoint"),
                    checkpoint_s=float(cfg.get("checkpoint_s", 60.0)), rejected=bool(cfg.get("rejected")))


def _default_device_id() -> str:
    import socket

    return socket.gethostname().split(".")[0] or "spikewire"


def _run_and_report(cfg: dict, prog: str) -> int:
    import asyncio

    from .frontend import SampleRateError
    from .mqtt import MqttFatalError
    from .modelfile import ModelFileError
    from .pipeline import PipelineError, run_pipeline
    from .sinks import SinkError
    from .sources import SourceError

    async def go() -> dict:
        pipeline = build_pipeline(cfg)
        where = _command_input(cfg)
        if cfg["duration"]:
            asyncio.get_running_loop().call_later(float(cfg["duration"]), pipeline.request_stop)
        if where is None:
            return await run_pipeline(pipeline)
        local = asyncio.create_task(_local_commands(pipeline, where), name="commands")
        try:
            return await run_pipeline(pipeline)
        finally:
            local.cancel()
            for r in await asyncio.gather(local, return_exceptions=True):
                if isinstance(r, Exception):
                    log.error("commands: %s", r, exc_info=r)

    try:
        final = asyncio.run(go())
    except (SourceError, SinkError, ModelFileError, FileNotFoundError, _UsageError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except (MqttFatalError, PipelineError, OSError) as e:
        log.debug("pipeline failed", exc_info=True)
        print(f"{prog}: error: {e}", file=sys.stderr)
        # a sample rate the model's front end cannot take is bad input (docs/runtime.md: exit 2)
        return 2 if isinstance(e.__cause__, SampleRateError) else 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"{prog}: aborted", file=sys.stderr)
        return 130
    print(json.dumps({"event": "final_metrics", **final}, separators=(",", ":")), file=sys.stderr)
    return 0


def _command_input(cfg: dict) -> str | None:
    """Where a local user's commands come from: ``"stdin"``, a path (file or FIFO), or None (off).
    Default: stdin with ``--learn``, unless stdin carries the audio (``--source stdin``)."""
    commands, stdin_audio = cfg.get("commands"), cfg["source"] == "stdin"
    if commands in ("off", "none"):
        return None
    if commands in ("-", "stdin"):
        if stdin_audio:
            raise _UsageError("--commands stdin: stdin carries the audio (--source stdin); give a FIFO or a file: "
                              "--commands PATH (mkfifo PATH)")
        return "stdin"
    if commands:
        if not os.path.exists(commands):
            raise _UsageError(f"--commands {commands}: no such file or FIFO (make one with: mkfifo {commands})")
        return commands
    if not cfg.get("learn"):
        return None
    if stdin_audio:
        log.warning("commands from stdin are off: stdin carries the audio; give --commands PATH (a FIFO) "
                    "or use MQTT control")
        return None
    return "stdin"


def _print_json_line(doc: dict) -> None:
    from .sinks import STDOUT_LOCK

    try:
        with STDOUT_LOCK:
            sys.stdout.write(json.dumps(doc, separators=(", ", ": ")) + "\n")
            sys.stdout.flush()
    except (BrokenPipeError, ValueError):  # the reader left: the stdout sink counts what it could not write
        pass


async def _local_commands(pipeline, where: str) -> None:
    """Command lines from stdin / a file / a FIFO into the pipeline's commands, replies on stdout."""
    import asyncio

    from .localcontrol import CommandLines, stdin_is_usable

    if where == "stdin" and not stdin_is_usable(0):
        log.warning("commands: stdin is a terminal this process is not in the foreground of; not reading it "
                    "(give --commands PATH, a FIFO)")
        return
    while not pipeline.running:
        await asyncio.sleep(0.01)
    reader: CommandLines | None = None
    channel = pipeline.control_channel(lambda data: reader.on_reply(data), name=f"commands:{where}")
    reader = CommandLines(channel, _print_json_line, path=None if where == "stdin" else where)
    reader.start()
    log.info("commands: reading %s (try: help)", reader.spec)
    try:
        await channel.run()
    finally:
        reader.stop()


def cmd_run(args: argparse.Namespace) -> int:
    """``spikewire run``: the streaming runtime (docs/runtime.md)."""
    try:
        cfg = _run_settings(args)
    except _UsageError as e:
        print(f"spikewire run: error: {e}", file=sys.stderr)
        return 2
    if cfg["log_level"] and args.log_level is None:  # the config file's level; --log-level wins
        logging.getLogger().setLevel(getattr(logging, cfg["log_level"].upper()))
    return _run_and_report(cfg, "spikewire run")


def cmd_demo(args: argparse.Namespace) -> int:
    """``spikewire demo``: the bundled digits recording through the whole pipeline, keywords as JSON lines."""
    cfg = dict(RUN_DEFAULTS)
    cfg.update(model=args.model, source=f"wav:{demo_recording()}", fast=not args.paced, spikes=args.spikes,
               sink=["stdout"] + ([args.mqtt] if args.mqtt else []), metrics_interval=0.0 if not args.mqtt else 5.0)
    return _run_and_report(cfg, "spikewire demo")


def cmd_devices(args: argparse.Namespace) -> int:
    """``spikewire devices``: list audio input devices (for ``--source mic:DEVICE``)."""
    from .sources import SourceError, list_input_devices

    try:
        devices = list_input_devices()
    except SourceError as e:
        print(f"spikewire devices: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(devices))
    elif not devices:
        print("spikewire devices: no audio input devices found (no sound card, or no audio server such as "
              "PulseAudio running)", file=sys.stderr)
        return 1
    else:
        for d in devices:
            print(f"{'*' if d['default'] else ' '} {d['index']:3d}  {d['name']}  ({d['hostapi']}, "
                  f"{d['channels']} ch, {d['default_rate']:g} Hz)")
    return 0


def add_runtime_commands(sub) -> None:
    r = sub.add_parser("run", help="the streaming runtime: audio/spikes in, keywords/spikes/metrics out",
                       description="Stream a source through front end, core and decision to sinks. "
                       "Flags override the --config TOML file. See docs/runtime.md.")
    r.add_argument("--config", metavar="TOML", help="settings file (keys as the long flags, '-' -> '_')")
    r.add_argument("--model", help="shipped model name or .swm path (default kws-digits)")
    r.add_argument("--source", help="mic[:DEVICE] | wav:PATH | stdin | mqtt:TOPIC (default mic)")
    r.add_argument("--sink", action="append", help="stdout | file:PATH | mqtt://HOST/PREFIX | mqtts://... "
                   "(repeatable; default stdout)")
    r.add_argument("--fast", action="store_true", default=None, help="wav: as fast as possible (not paced)")
    r.add_argument("--speed", type=float, help="wav: pace factor (2 = twice real time)")
    r.add_argument("--rate", type=int, help="stdin: sample rate (default 16000); mic: requested rate")
    r.add_argument("--block-ms", type=float, help="audio block length (default 10, 100 with --fast)")
    r.add_argument("--device-id", help="MQTT device id (default: host name)")
    r.add_argument("--broker", help="broker URL for an mqtt:TOPIC source (default: the first mqtt sink's)")
    r.add_argument("--spikes", action="store_true", default=None, help="stdout: also print spike batch lines")
    r.add_argument("--metrics-interval", type=float, help="seconds between metrics (default 5; 0 = off)")
    r.add_argument("--snapshot-dir", help="where 'snapshot' writes without a path (default .)")
    r.add_argument("--drain-timeout", type=float, help="seconds to drain on stop (default 5)")
    r.add_argument("--duration", type=float, help="stop after this many seconds")
    r.add_argument("--learn", action="store_true", default=None,
                   help="on-line learning on from the start; commands (label WORD [ID], ...) from stdin "
                   "(see --commands) and over MQTT control (docs/learning.md)")
    r.add_argument("--checkpoint", metavar="PATH", help="learnt weights: restored from / saved to this file")
    r.add_argument("--checkpoint-s", type=float, help="seconds between checkpoints when weights changed (default 60)")
    r.add_argument("--commands", metavar="PATH",
                   help="where a local user's commands come from (learn on|off, label WORD [ID], reward +1|-1 [ID], "
                   "save, revert, stretches, status, help; replies on stdout): a file or a FIFO (mkfifo), "
                   "'stdin', or 'off'. Default with --learn: stdin, unless --source stdin (the audio): then "
                   "give a FIFO here")
    r.add_argument("--rejected", action="store_true", default=None,
                   help="also send the stretches the decision rejected, with their ids (stdout lines "
                   "{\"event\": \"rejected\", ...}, MQTT PREFIX/DEVICE/rejected), so that a word that was not "
                   "heard can be labelled: label WORD ID")
    r.set_defaults(fn=cmd_run)

    d = sub.add_parser("demo", help="keyword spotting on a bundled recording of spoken digits (no mic, no broker)")
    d.add_argument("--model", default="kws-digits")
    d.add_argument("--mqtt", metavar="URL", help="also publish to this broker (mqtt://HOST/PREFIX)")
    d.add_argument("--spikes", action="store_true", help="also print spike batch lines")
    d.add_argument("--paced", action="store_true", help="play at real time instead of as fast as possible")
    d.set_defaults(fn=cmd_demo)

    v = sub.add_parser("devices", help="list audio input devices")
    v.add_argument("--json", action="store_true")
    v.set_defaults(fn=cmd_devices)


def cmd_train(args: argparse.Namespace) -> int:
    """``spikewire train``: the front door to training (tools/train.py; needs the [train] extra)."""
    try:
        import torch  # noqa: F401  lazy: only training needs it
    except ImportError:
        print("spikewire train: error: training needs PyTorch, which is not installed; "
              "install the extra: pip install 'spikewire[train]'", file=sys.stderr)
        return 2
    from .tools import train
    return train.main(args.train_args)


def cmd_adapt(args: argparse.Namespace) -> int:
    """``spikewire adapt``: personalisation through the runtime (tools/adapt.py; no torch needed)."""
    from .tools import adapt
    return adapt.main(args.adapt_args, prog="spikewire adapt")


def cmd_deploy(args: argparse.Namespace) -> int:
    """``spikewire deploy bundle``: a Raspberry Pi bundle (runtime/deploy.py, docs/raspberry-pi.md)."""
    from .deploy import DeployError, build_bundle

    try:
        info = build_bundle(args.model, args.out, config=args.config, sdist=args.sdist, force=args.force)
    except DeployError as e:
        print(f"spikewire deploy bundle: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"event": "bundle", "out": args.out, "spikewire_version": info["spikewire_version"],
                      "files": sorted(info["files"])}))
    return 0


def add_deploy_commands(sub) -> None:
    d = sub.add_parser("deploy", help="deployment helpers (a Raspberry Pi bundle)")
    dsub = d.add_subparsers(dest="deploy_cmd", required=True)
    b = dsub.add_parser("bundle", help="one tar.gz with the sdist, model, device.toml, systemd unit, install.sh",
                        description="See docs/raspberry-pi.md. Unpack on the Pi and run sudo ./install.sh.")
    b.add_argument("--model", default="kws-digits", help="shipped model name or .swm path (default kws-digits)")
    b.add_argument("--config", metavar="TOML", help="device.toml to ship (default: the documented example)")
    b.add_argument("--out", default="spikewire-pi.tar.gz", help="bundle path (default spikewire-pi.tar.gz)")
    b.add_argument("--sdist", metavar="TAR_GZ", help="use this sdist instead of building one from the checkout")
    b.add_argument("--force", action="store_true", help="overwrite an existing --out")
    b.set_defaults(fn=cmd_deploy)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spikewire", description="Spiking neural networks on a bit-exact "
                                "BrainScaleS-2-like fixed-point core.")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="default warning (run: or log_level of its --config file)")
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("core-demo", help="run a small random network on the core with synthetic input")
    d.add_argument("--steps", type=int, default=1000)
    d.add_argument("--seed", type=int, default=1)
    d.set_defaults(fn=cmd_core_demo)

    b = sub.add_parser("bench", help="benchmarks (print JSON; never part of the tests)")
    b.add_argument("what", choices=["core", "e2e", "cpu", "soak"],
                   help="cpu: instructions per step and per second of audio (callgrind; --aarch64: qemu)")
    b.add_argument("--json", metavar="PATH")
    b.add_argument("--runs", type=int, default=5)
    b.add_argument("--kernel", choices=["fast", "reference"], default="fast")
    b.add_argument("--min-time", type=float, default=0.2, help="core: seconds per timed run (default 0.2)")
    b.add_argument("--no-c-loop", action="store_true", help="core: skip the bare C loop (needs a C compiler)")
    b.add_argument("--model", help="e2e, cpu: model name or .swm path (default kws-digits)")
    b.add_argument("--aarch64", action="store_true", help="cpu: A64 instructions under qemu (needs a checkout)")
    b.add_argument("--runtime", action="store_true", help="cpu: also count the whole asyncio pipeline")
    b.add_argument("--rate", type=int, default=16000, help="cpu: input sample rate (default 16000)")
    b.add_argument("--block-ms", type=float, default=10.0, help="cpu: audio block length (default 10, as run)")
    b.add_argument("--seconds", type=float, help="soak: wall seconds of hostile traffic (default 60 without "
                   "--stream-seconds)")
    b.add_argument("--stream-seconds", type=float, help="soak: run until this much stream time (3600 = an hour)")
    b.add_argument("--msg-rate", type=float, default=200.0, help="soak: messages per second (default 200)")
    b.add_argument("--batch-steps", type=int, default=10, help="soak: steps per valid spike batch (default 10)")
    b.add_argument("--learn", action="store_true",
                   help="core: the e-prop learning workload (mode C; JSON learn_steps_per_s)")
    b.add_argument("--surrogate-log2", type=int, default=12, help="core --learn: surrogate width 2^k (default 12)")
    b.add_argument("--eligibility", choices=["traces", "events"], default="traces",
                   help="core --learn: the learner's eligibility form (docs/learning.md)")
    b.set_defaults(fn=cmd_bench)

    e = sub.add_parser("eval", help="evaluate a keyword model on labelled WAVs (offline, --stream, --calibrate)",
                       description="Offline per-file accuracy, --stream keyword spotting on a long seeded "
                       "recording, or --calibrate the decision rule on the train split; see docs/evaluation.md.")
    e.add_argument("--model", required=True, help="shipped model name or path to a .swm file")
    e.add_argument("--data", required=True, help="FSDD folder (or its recordings/) or a labelled WAV folder")
    e.add_argument("--unknown", action="append", metavar="DIR",
                   help="a folder of WAVs of words outside the vocabulary, added as unknown words whatever "
                        "--split selects (repeatable; make one with 'python -m spikewire.tools.words')")
    e.add_argument("--split", choices=["all", "train", "test"], default="all",
                   help="FSDD index convention for {label}_{speaker}_{index}.wav: 0-4 test, 5+ train")
    e.add_argument("--speaker", action="append", metavar="NAME", help="only this speaker (repeatable)")
    e.add_argument("--per-speaker", action="store_true", help="offline: add per-speaker accuracy")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--plot", metavar="PNG", help="offline: confusion matrix + one file's spike raster")
    e.add_argument("--chip", type=int, metavar="SEED", help="simulate the device mismatch of this chip seed")
    e.add_argument("--mismatch", type=float, metavar="SPREAD",
                   help="relative mismatch spread of threshold, leak, decay, gain (default 0.05 with --chip)")
    e.add_argument("--stream", action="store_true", help="streaming evaluation on a concatenated recording")
    e.add_argument("--calibrate", action="store_true",
                   help="sweep the decision rule's parameters on a train-split stream, write the model to --out")
    e.add_argument("--out", metavar="SWM", help="--calibrate: where to write the calibrated model")
    e.add_argument("--seed", type=int, default=0, help="stream seed: order, gaps, noise")
    e.add_argument("--repeat", type=int, default=1, help="K streams, seeds seed..seed+K-1 (more audio hours)")
    e.add_argument("--noise", choices=["pink", "white", "none"], help="stream background noise (default pink)")
    e.add_argument("--noise-db", help="background noise RMS in dBFS, or 'off' (default -50)")
    e.add_argument("--gap", type=float, nargs=2, metavar=("MIN_S", "MAX_S"), help="gap range (default 0.3 2.0)")
    e.add_argument("--tolerance", type=float, help="seconds after an utterance in which it may fire (default 0.5)")
    e.add_argument("--block-ms", type=float, help="streaming block size in ms (default 10)")
    e.add_argument("--max-fa-per-hour", type=float, help="--calibrate: false-alarm target (default 2)")
    e.add_argument("--max-false-accept", type=float, metavar="RATE",
                   help="--calibrate: also accept at most this fraction of the --unknown words (e.g. 0.02)")
    e.add_argument("--rule", choices=("segment", "run"),
                   help="--calibrate: the decision rule to calibrate (default: the model's; docs/evaluation.md)")
    e.add_argument("--thresholds", help="--calibrate: comma-separated grid (defaults: tools/calibration.py GRIDS)")
    e.add_argument("--margins", help="--calibrate: comma-separated grid")
    e.add_argument("--min-steps", help="--calibrate: comma-separated grid")
    e.add_argument("--peaks", help="--calibrate (segment rule): comma-separated grid")
    e.add_argument("--hold-steps", help="--calibrate (segment rule): comma-separated grid")
    e.set_defaults(fn=cmd_eval)

    t = sub.add_parser("train", add_help=False, help="train a keyword model (needs the [train] extra; "
                       "`spikewire train --help` lists the options; docs/training.md)")
    t.set_defaults(fn=cmd_train)

    a = sub.add_parser("adapt", add_help=False, help="personalise a model: K labelled utterances per word "
                       "learnt through the runtime, accuracy before/after (`spikewire adapt --help`; "
                       "docs/learning.md)")
    a.set_defaults(fn=cmd_adapt)

    add_runtime_commands(sub)
    add_deploy_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.cmd == "train":  # tools/train.py parses its own options (and --help)
        args.train_args = extra
    elif args.cmd == "adapt":  # so does tools/adapt.py
        args.adapt_args = extra
    elif extra:
        parser.error("unrecognized arguments: " + " ".join(extra))
    _setup_logging(args.log_level or "warning")
    try:
        return args.fn(args)
    except BrokenPipeError:  # e.g. `spikewire demo | head`: the reader left, not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
