"""`spikewire bench e2e`: the whole streaming runtime against a real mosquitto broker.

Starts its own mosquitto (skips with a message if it is not installed), then
runs the runtime as a separate process twice on the bundled digits recording
(``runtime/data/digits.wav``, 10.9 s):

* **fast** (``--fast``): ``pipeline_rtf`` = runtime wall time from pipeline start to
  the last block decided / audio duration (lower is better; 0.01 = 100x real time).
* **paced** (real time, 10 ms blocks), with an MQTT subscriber in this process:
  ``latency_ms_p50/p99`` per keyword event = time the event was received by the
  subscriber - time the audio block holding the last sample the decision used
  (the block whose steps fired the keyword) entered the runtime.  Both are
  ``CLOCK_MONOTONIC`` (``time.monotonic()``), shared by the two processes.
  ``block_latency_ms_p50/p99``: the same for every block, entry -> decision (from
  the runtime's own metrics).  ``rss_mb``: peak RSS (VmHWM) of the runtime process.

Targets (docs/runtime.md): p99 <= block length + 15 ms; RSS <= 80 MB.
"""
from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .assets import demo_recording

BLOCK_MS = 10.0
TARGET_P99_EXTRA_MS = 15.0
TARGET_RSS_MB = 80.0


def _model_path(ref: str | None) -> tuple[str, str]:
    """The model to benchmark (default: the shipped kws-digits) and its name."""
    from .model import load

    ref = ref or "kws-digits"
    return ref, load(ref).name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_mosquitto(tmp: Path) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"user root\npersistence false\nlistener {port} 127.0.0.1\nallow_anonymous true\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("mosquitto did not start") from None
            time.sleep(0.01)


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# -- the runtime process of the paced run ---------------------------------------------------

def _worker(model: str, wav: str, url: str, fast: bool) -> int:
    """Run the pipeline; print one JSON line per keyword with its entry time, then the final metrics."""
    from .pipeline import Pipeline
    from .sinks import Sink, parse_sink
    from .sources import WavSource

    class Trace(Sink):
        name = "trace"

        async def keyword(self, item):
            sys.stdout.write(json.dumps({"seq": item.event["seq"], "t_in": item.t_in}) + "\n")
            sys.stdout.flush()

    src = WavSource(wav, fast=fast, block_ms=100.0 if fast else BLOCK_MS)
    sinks = [parse_sink(url, device_id="bench"), Trace()]
    final = asyncio.run(Pipeline(model, src, sinks, metrics_interval=0).run())
    print(json.dumps({"event": "done", "rss_peak_mb": round(_peak_rss_mb(), 1), "final": final}), flush=True)
    return 0


async def _paced(model: str, wav: str, port: int, fast: bool) -> dict:
    import aiomqtt

    url = f"mqtt://127.0.0.1:{port}/bench"
    received: dict[int, float] = {}
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe("bench/bench/keyword", qos=1)

        async def listen():
            async for m in client.messages:
                received[json.loads(m.payload)["seq"]] = time.monotonic()

        listener = asyncio.create_task(listen())
        proc = await asyncio.create_subprocess_exec(
            # the installed package, as the parent imported it (-P: never the working folder)
            sys.executable, "-P", "-m", "spikewire.bench_e2e", "--worker", model, wav, url,
            "fast" if fast else "paced", stdout=asyncio.subprocess.PIPE)
        entries: dict[int, float] = {}
        done = None
        async with asyncio.timeout(120):
            async for line in proc.stdout:
                doc = json.loads(line)
                if "seq" in doc:
                    entries[doc["seq"]] = doc["t_in"]
                else:
                    done = doc
            if await proc.wait() != 0 or done is None:
                raise RuntimeError(f"the e2e runtime process failed (exit status {proc.returncode}; "
                                   "its error is printed above)")
            while len(received) < len(entries):
                await asyncio.sleep(0.01)
        listener.cancel()
    lat = [(received[s] - entries[s]) * 1000.0 for s in sorted(entries)]
    return {"latencies_ms": lat, "worker": done}


def run(json_path: str | None = None, model: str | None = None) -> int:
    out: dict = {"benchmark": "e2e", "machine": platform.machine(), "python": platform.python_version(),
                 "cpus": os.cpu_count(), "recording": "runtime/data/digits.wav"}
    if shutil.which("mosquitto") is None:
        out["skipped"] = "mosquitto not installed (apt-get install mosquitto); the e2e benchmark needs a broker"
        print(json.dumps(out))
        return 0
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        model, out["model"] = _model_path(model)
        broker, port = _start_mosquitto(tmp)
        try:
            wav = demo_recording()
            fast = asyncio.run(_paced(model, wav, port, fast=True))
            f = fast["worker"]["final"]
            out["pipeline_rtf"] = round(f["uptime_s"] / f["stream_s"], 5)
            out["compute_rtf"] = f["rtf"]
            out["audio_s"] = f["stream_s"]
            paced = asyncio.run(_paced(model, wav, port, fast=False))
            lat = paced["latencies_ms"]
            w = paced["worker"]
            out["keywords"] = len(lat)
            out["block_ms"] = BLOCK_MS
            out["latency_ms_p50"] = round(float(np.percentile(lat, 50)), 3) if lat else None
            out["latency_ms_p99"] = round(float(np.percentile(lat, 99)), 3) if lat else None
            out["latency_ms_max"] = round(max(lat), 3) if lat else None
            out["block_latency_ms_p50"] = w["final"]["latency_ms"]["block_p50"]
            out["block_latency_ms_p99"] = w["final"]["latency_ms"]["block_p99"]
            out["rss_mb"] = w["rss_peak_mb"]
            out["dropped"] = w["final"]["dropped"]
            out["targets"] = {
                "latency_ms_p99": BLOCK_MS + TARGET_P99_EXTRA_MS, "rss_mb": TARGET_RSS_MB,
                "met": bool(lat) and out["latency_ms_p99"] <= BLOCK_MS + TARGET_P99_EXTRA_MS
                and out["rss_mb"] <= TARGET_RSS_MB}
        finally:
            broker.terminate()
            broker.wait(timeout=5)
    text = json.dumps(out, indent=2)
    print(text)
    if json_path:
        Path(json_path).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        sys.exit(_worker(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "fast"))
    sys.exit(run(sys.argv[1] if len(sys.argv) > 1 else None))
