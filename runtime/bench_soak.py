"""`spikewire bench soak`: hostile traffic against a running pipeline (a benchmark, not a test; issue #12).

Starts its own mosquitto, runs a Pipeline in this process with an ``mqtt:TOPIC`` spike source and an
MQTT sink (control topic), and for ``--seconds`` publishes, at ``--rate`` messages per second, a mix of
valid spike batches (consecutive ``t0``) and hostile ones: truncated or garbage batches, headers
claiming 2^32-1 steps or 2^30 records, unit ids beyond ``n_in``, ``t0`` jumps and restarts, and on
``control`` malformed, deeply nested, oversized and unknown requests. Prints one JSON object:
what was sent by kind, the source and sink counters, and the process RSS (VmRSS, this process holds
the publisher too) before, after and its peak (VmHWM).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np


def _rss_kb(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def _hostile(kind: str, rng: random.Random, t0: int, n_in: int) -> tuple[str, bytes]:
    from .wire import SPIKE_HEADER, SPIKE_MAGIC, SPIKE_VERSION, encode_spike_batch

    if kind == "garbage":
        return "spikes", rng.randbytes(rng.randrange(0, 200))
    if kind == "truncated":
        return "spikes", encode_spike_batch(t0, 10, [1, 2], [3, 4], n_units=n_in)[:rng.randrange(1, 30)]
    if kind == "huge_steps":
        return "spikes", SPIKE_HEADER.pack(SPIKE_MAGIC, SPIKE_VERSION, 0, n_in, 0, 2**32 - 1, t0, 0)
    if kind == "huge_records":
        return "spikes", SPIKE_HEADER.pack(SPIKE_MAGIC, SPIKE_VERSION, 0, n_in, 0, 10, t0, 2**30)
    if kind == "bad_units":
        return "spikes", encode_spike_batch(t0, 10, [0], [n_in + 5], n_units=n_in + 6)
    if kind == "t0_jump":
        return "spikes", encode_spike_batch(t0 + rng.randrange(10**6, 10**9), 10, [], [], n_units=n_in)
    if kind == "t0_restart":
        return "spikes", encode_spike_batch(0, 10, [], [], n_units=n_in)
    if kind == "control_garbage":
        return "control", rng.randbytes(rng.randrange(0, 100))
    if kind == "control_deep":
        return "control", b"[" * 100000 + b"]" * 100000
    if kind == "control_big":
        return "control", b'{"cmd": "status", "x": "' + b"a" * 70000 + b'"}'
    if kind == "control_unknown":
        return "control", json.dumps({"cmd": "format_disk", "id": rng.randrange(1000)}).encode()
    raise ValueError(kind)


HOSTILE = ("garbage", "truncated", "huge_steps", "huge_records", "bad_units", "t0_jump", "t0_restart",
           "control_garbage", "control_deep", "control_big", "control_unknown")


async def _soak(seconds: float, rate: float, hostile_fraction: float, seed: int, port: int) -> dict:
    import aiomqtt

    from .mqtt import MqttSpikeSource
    from .pipeline import Pipeline
    from .sinks import parse_sink
    from .wire import encode_spike_batch

    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    prefix, dev, topic = "soak", "dev", "soak/in"
    broker = f"mqtt://127.0.0.1:{port}"
    source = MqttSpikeSource(topic, f"{broker}/{prefix}")
    sink = parse_sink(f"{broker}/{prefix}", device_id=dev, mqtt_options={"connect_timeout": 5.0})
    pipe = Pipeline("kws-digits", source, [sink], metrics_interval=0)
    n_in = 64
    rss_before = _rss_kb()
    task = asyncio.create_task(pipe.run())
    while not pipe._running:
        await asyncio.sleep(0.01)
        if task.done():
            task.result()
    async with asyncio.timeout(10):
        await source.subscribed.wait()
    rss_start = _rss_kb()
    sent: dict[str, int] = {"valid": 0}
    t_next = 0
    async with aiomqtt.Client("127.0.0.1", port) as pub:
        t_end = time.monotonic() + seconds
        i = 0
        start = time.monotonic()
        while time.monotonic() < t_end:
            if rng.random() < hostile_fraction:
                kind = rng.choice(HOSTILE)
                where, payload = _hostile(kind, rng, t_next, n_in)
                sent[kind] = sent.get(kind, 0) + 1
                await pub.publish(topic if where == "spikes" else f"{prefix}/{dev}/control", payload, qos=0)
            else:
                n = 10
                k = int(nrng.integers(0, 40))
                await pub.publish(topic, encode_spike_batch(t_next, n, nrng.integers(0, n, k), nrng.integers(0, n_in, k),
                                                            n_units=n_in), qos=0)
                t_next += n
                sent["valid"] += 1
            i += 1
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
    await asyncio.sleep(1.0)  # let the last messages arrive
    pipe.request_stop()
    final = await task
    return {"seconds": seconds, "rate_per_s": rate, "hostile_fraction": hostile_fraction, "seed": seed,
            "sent": sent, "sent_total": sum(sent.values()),
            "rss_kb": {"before_pipeline": rss_before, "start": rss_start, "end": _rss_kb(), "peak": _rss_kb("VmHWM")},
            "rss_growth_kb": _rss_kb() - rss_start,
            "source_counters": final["source_counters"], "stream_s": final["stream_s"],
            "sink_counters": {k: v for k, v in final["sinks"][sink.name].items()
                              if k.startswith(("control", "dropped", "ignored", "suppressed", "reconnects",
                                               "connect_failures"))}}


def main(argv: list[str] | None = None) -> int:
    from .bench_e2e import _start_mosquitto

    p = argparse.ArgumentParser(prog="spikewire bench soak", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--rate", type=float, default=200.0, help="messages per second")
    p.add_argument("--hostile", type=float, default=0.3, help="fraction of hostile messages")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = _start_mosquitto(Path(tmp))
        try:
            out = asyncio.run(_soak(a.seconds, a.rate, a.hostile, a.seed, port))
        finally:
            proc.terminate()
            proc.wait(5)
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
