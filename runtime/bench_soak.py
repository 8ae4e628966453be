"""`spikewire bench soak`: hostile traffic against a running pipeline (a benchmark, not a test; issue #12).

Starts its own mosquitto, runs a Pipeline in this process with an ``mqtt:TOPIC`` spike source and an
MQTT sink (control topic), and publishes, at ``--rate`` messages per second, a mix of valid spike
batches (consecutive ``t0``, ``--batch-steps`` steps each) and hostile messages: truncated or garbage
batches, headers claiming 2^32-1 steps or 2^30 records, unit ids beyond ``n_in``, ``t0`` jumps and
restarts, and on ``control`` malformed, deeply nested, oversized and unknown requests, learning
commands with bad arguments, and valid ``status`` requests. It subscribes to the control replies and
counts them. Prints one JSON object: what was sent by kind, the replies, the source and sink
counters, stream and wall time, and the process RSS (VmRSS; this process holds the publisher too)
before, at the start, sampled along the run, at the end and its peak (VmHWM).

Stream time is what the spike batches carry (``steps * step_ms``), not the wall clock: the source
takes batches as fast as they arrive, so with ``--stream-seconds`` the run ends when the pipeline has
streamed that much (an hour of stream time at 25 steps per batch and 400 messages a second takes
about two minutes of wall time); ``--seconds`` bounds the wall time.
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
    if kind == "control_learn_bad":   # learning commands with arguments of the wrong type or range
        cmd, args = rng.choice([
            ("learn", {"rule": rng.choice(["x" * 60_000, 5, None, ["eprop"]])}),
            ("learn", {"rate_in": rng.choice([-1, 31, 2**70, 1.5, "16"])}),
            ("learn", {"matrices": rng.choice([["in", "in"], ["w"], "in", [1]])}),
            ("learn", {"passes": rng.choice([0, 101, 10**9])}),
            ("learn", {"target_hi": -40000}),
            ("label", {"word": rng.choice(["nine", "x" * 1000, 7])}),
            ("label", {"word": "one", "stretch": rng.choice([-1, 2**62, "3"])}),
            ("reward", {"value": rng.choice([0, 2, -5, "1", True])}),
            ("save", {"path": "/etc/passwd"}),
            ("revert", {"all": True}),
        ])
        return "control", json.dumps({"cmd": cmd, "id": rng.randrange(10**6), **args}).encode()
    raise ValueError(kind)


HOSTILE = ("garbage", "truncated", "huge_steps", "huge_records", "bad_units", "t0_jump", "t0_restart",
           "control_garbage", "control_deep", "control_big", "control_unknown", "control_learn_bad")


async def _soak(seconds: float | None, stream_seconds: float | None, rate: float, hostile_fraction: float,
                seed: int, port: int, batch_steps: int, samples: int) -> dict:
    import aiomqtt

    from .mqtt import MqttSpikeSource
    from .pipeline import Pipeline
    from .sinks import parse_sink
    from .wire import encode_spike_batch

    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    prefix, dev, topic = "soak", "dev", "soak/in"
    control = f"{prefix}/{dev}/control"
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
    step_s = pipe.step_ms / 1000.0
    sent: dict[str, int] = {"valid": 0, "control_status": 0}
    replies = {"ok": 0, "error": 0}
    t_next = 0
    rss_samples = []
    goal_steps = None if stream_seconds is None else round(stream_seconds / step_s)
    async with aiomqtt.Client("127.0.0.1", port) as pub:
        await pub.subscribe(f"{control}/reply", qos=0)

        async def count_replies():
            async for m in pub.messages:
                replies["ok" if json.loads(m.payload).get("ok") else "error"] += 1
        reader = asyncio.create_task(count_replies())
        # wait for the sink's session (it subscribes to control before it publishes anything)
        async with asyncio.timeout(10):
            while sink.sink is None or not sink.sink.connected:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        rss_start = _rss_kb()
        start = time.monotonic()
        t_end = None if seconds is None else start + seconds
        every = (goal_steps or (seconds or 60.0) * rate * batch_steps) / max(samples, 1)
        next_sample = 0.0
        i = 0
        while (t_end is None or time.monotonic() < t_end) and (goal_steps is None or t_next < goal_steps):
            if t_next >= next_sample:
                rss_samples.append({"wall_s": round(time.monotonic() - start, 2), "stream_s": round(t_next * step_s, 1),
                                    "rss_kb": _rss_kb()})
                next_sample += every
            r = rng.random()
            if r < hostile_fraction:
                kind = rng.choice(HOSTILE)
                where, payload = _hostile(kind, rng, t_next, n_in)
                sent[kind] = sent.get(kind, 0) + 1
                await pub.publish(topic if where == "spikes" else control, payload, qos=0)
            elif r < hostile_fraction + 0.01:
                sent["control_status"] += 1
                await pub.publish(control, json.dumps({"cmd": "status", "id": i}).encode(), qos=0)
            else:
                n = batch_steps
                k = int(nrng.integers(0, 4 * n))
                await pub.publish(topic, encode_spike_batch(t_next, n, nrng.integers(0, n, k), nrng.integers(0, n_in, k),
                                                            n_units=n_in), qos=0)
                t_next += n
                sent["valid"] += 1
            i += 1
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        wall = time.monotonic() - start
        await asyncio.sleep(2.0)  # let the last messages and replies arrive
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    pipe.request_stop()
    final = await task
    rss_samples.append({"wall_s": round(time.monotonic() - start, 2), "stream_s": final["stream_s"], "rss_kb": _rss_kb()})
    control_sent = sum(v for k, v in sent.items() if k.startswith("control"))
    return {"seconds": seconds, "stream_seconds_goal": stream_seconds, "rate_per_s": rate,
            "hostile_fraction": hostile_fraction, "batch_steps": batch_steps, "seed": seed,
            "wall_s": round(wall, 2), "stream_s": final["stream_s"], "stream_per_wall": round(final["stream_s"] / wall, 2),
            "sent": sent, "sent_total": sum(sent.values()), "valid_steps_sent": t_next, "steps": final["steps"],
            "control_sent": control_sent, "control_replies": replies,
            "rss_kb": {"before_pipeline": rss_before, "start": rss_start, "end": _rss_kb(), "peak": _rss_kb("VmHWM")},
            "rss_growth_kb": _rss_kb() - rss_start, "rss_samples": rss_samples,
            "source_counters": final["source_counters"],
            "pipeline_dropped": final["dropped"],
            "sink_counters": {k: v for k, v in final["sinks"][sink.name].items()
                              if k.startswith(("control", "dropped", "ignored", "suppressed", "reconnects",
                                               "connect_failures", "published_replies"))}}


def main(argv: list[str] | None = None) -> int:
    from .bench_e2e import _start_mosquitto

    p = argparse.ArgumentParser(prog="spikewire bench soak", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=None,
                   help="wall seconds of traffic (default 60 without --stream-seconds; else no wall limit)")
    p.add_argument("--stream-seconds", type=float, default=None,
                   help="run until the pipeline has streamed this much stream time (3600: an hour)")
    p.add_argument("--rate", type=float, default=200.0, help="messages per second")
    p.add_argument("--batch-steps", type=int, default=10, help="steps per valid spike batch (4 ms each)")
    p.add_argument("--hostile", type=float, default=0.3, help="fraction of hostile messages")
    p.add_argument("--samples", type=int, default=20, help="RSS samples along the run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH")
    a = p.parse_args(argv)
    if a.seconds is None and a.stream_seconds is None:
        a.seconds = 60.0
    if not 1 <= a.batch_steps <= 10_000 or not a.rate > 0 or not 0 <= a.hostile <= 0.99:
        p.error("--batch-steps must be 1..10000, --rate > 0, --hostile in 0..0.99")
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = _start_mosquitto(Path(tmp))
        try:
            out = asyncio.run(_soak(a.seconds, a.stream_seconds, a.rate, a.hostile, a.seed, port, a.batch_steps,
                                    a.samples))
        finally:
            proc.terminate()
            proc.wait(5)
    import os
    out["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
