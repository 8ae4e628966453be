"""The streaming runtime with real parts: the C core, real files, a real mosquitto broker.

Every wait has a timeout; nothing asserts on timing.  The model is the tiny
hand-made one of conftest.py (fires on speech energy), so the expected
keywords come from running the same model offline on the same audio.
"""
from __future__ import annotations

import asyncio
import io
import json
import queue
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import DIGITS_WAV, REPO, SHIPPED_DEMO_WORDS, assert_heard_the_digits, make_tiny_model
from spikewire.audio import read_wav_int16
from spikewire.control import ControlPolicy
from spikewire.frontend import encode
from spikewire.model import Model
from spikewire.pipeline import Pipeline
from spikewire.sinks import FileSink, StdoutSink, parse_sink, read_spike_file
from spikewire.mqtt import MqttSpikeSource
from spikewire.sources import SourceOptions, WavSource, parse_source

aiomqtt = pytest.importorskip("aiomqtt")


# ---------------------------------------------------------------------------
# helpers

def offline(model: Model, samples: np.ndarray, rate: int):
    """(events, core output, keyword dicts) of the whole recording in one go."""
    ev = encode(samples, rate, model.frontend)
    out = model.make_core().run(ev)
    dec = model.decider()
    kws = dec.update(out.cadc, 0) + dec.flush()  # the pipeline decides what is open at the end, too
    return ev, out, [k.to_dict() for k in kws]


@pytest.fixture(scope="module")
def digits():
    x, rate = read_wav_int16(DIGITS_WAV)
    return x, rate


@pytest.fixture(scope="module")
def expected(digits):
    return offline(make_tiny_model(), *digits)


def run(coro, timeout: float = 30.0):
    async def go():
        async with asyncio.timeout(timeout):
            return await coro
    return asyncio.run(go())


def keyword_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]


def strip(events: list[dict]) -> list[dict]:
    return [{k: e[k] for k in ("word", "score", "t_start", "t_end", "stretch") if k in e} for e in events]


class Subscriber:
    """An aiomqtt subscriber collecting (topic, payload, retain, t_recv) with its own reconnect loop."""

    def __init__(self, broker, topics: list[str], *, client_id: str | None = None, persistent: bool = False):
        self.broker, self.topics = broker, topics
        self.client_id, self.persistent = client_id, persistent
        self.messages: list[tuple[str, bytes, bool, float]] = []
        self.ready = asyncio.Event()
        self.new = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def _loop(self):
        while True:
            try:
                async with aiomqtt.Client(**self.broker.client_kwargs(), identifier=self.client_id,
                                          clean_session=not self.persistent) as c:
                    for t in self.topics:
                        await c.subscribe(t, qos=1)
                    self.ready.set()
                    async for m in c.messages:
                        self.messages.append((str(m.topic), bytes(m.payload), m.retain, time.monotonic()))
                        self.new.set()
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)

    async def __aenter__(self):
        self._task = asyncio.create_task(self._loop())
        async with asyncio.timeout(10):
            await self.ready.wait()
        return self

    async def __aexit__(self, *exc):
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def on(self, suffix: str) -> list[bytes]:
        return [p for t, p, _, _ in self.messages if t.endswith(suffix)]

    async def wait_for(self, pred, timeout: float = 15.0):
        async with asyncio.timeout(timeout):
            while not pred():
                self.new.clear()
                await self.new.wait()


async def request(sub: Subscriber, prefix: str, cmd: dict | bytes, timeout: float = 10.0) -> dict:
    """Publish a control command and wait for the reply with the same id."""
    n0 = len(sub.on("/control/reply"))
    payload = cmd if isinstance(cmd, bytes) else json.dumps(cmd).encode()
    async with aiomqtt.Client(**sub.broker.client_kwargs()) as c:
        await c.publish(f"{prefix}/control", payload, qos=1)
    await sub.wait_for(lambda: len(sub.on("/control/reply")) > n0, timeout)
    return json.loads(sub.on("/control/reply")[n0])


def mqtt_pipeline(model, broker, prefix: str, *, speed: float | None = 4.0, fast=False, device="dev1",
                  extra_sinks=(), **mqtt_options):
    # close_timeout bounds the closing flush; the tests that do not test that bound give it room, so a loaded
    # machine (CI, parallel runs) cannot turn the flush into counted drops and a missing keyword.
    opts = {"spike_queue": 4096, "connect_timeout": 5.0, "close_timeout": 60.0}
    opts.update(mqtt_options)
    src = WavSource(DIGITS_WAV, fast=fast, speed=speed or 1.0, block_ms=10)
    sinks = [parse_sink(broker.url(prefix), device_id=device, mqtt_options=opts), *extra_sinks]
    return Pipeline(model, src, sinks, metrics_interval=0.5, device_id=device)


# ---------------------------------------------------------------------------
# files, stdin, CLI errors (no broker)

def test_demo_hears_the_spoken_digits_with_the_shipped_model(capsys):
    """The README's main command: the bundled recording through the whole pipeline with kws-digits."""
    from spikewire.cli import main

    assert main(["demo"]) == 0
    got = keyword_lines(capsys.readouterr().out)
    assert {e["model"] for e in got} == {"kws-digits"}
    assert [e["word"] for e in got] == SHIPPED_DEMO_WORDS
    assert_heard_the_digits(got, min_heard=len(SHIPPED_DEMO_WORDS))


def test_demo_with_the_fsdd_model_hears_all_ten_digits(capsys):
    """kws-digits-fsdd (v2.2, shipped beside v3) knows the recording's voices: every digit, in order."""
    from spikewire.cli import main

    assert main(["demo", "--model", "kws-digits-fsdd"]) == 0
    got = keyword_lines(capsys.readouterr().out)
    assert {e["model"] for e in got} == {"kws-digits-fsdd"}
    assert_heard_the_digits(got, min_heard=10)


@pytest.mark.parametrize("block_ms", [7, 10, 100])
def test_wav_source_matches_offline_for_any_block_size(tiny_model_path, expected, block_ms):
    out = io.StringIO()
    src = parse_source(f"wav:{DIGITS_WAV}", SourceOptions(block_ms=block_ms, fast=True))
    final = run(Pipeline(str(tiny_model_path), src, [StdoutSink(out)], metrics_interval=0).run())
    got = keyword_lines(out.getvalue())
    assert len(expected[2]) >= 5
    assert strip(got) == expected[2]
    assert [e["seq"] for e in got] == list(range(len(got)))
    assert {e["model"] for e in got} == {"tiny-test"}
    assert final["counts"]["keywords"] == len(got)
    assert final["dropped"]["audio"] == 0


@pytest.mark.parametrize("inline_ms", [0.0, 1e9])
def test_compute_on_the_loop_or_on_threads_gives_the_same_result(tiny_model_path, expected, inline_ms, tmp_path):
    """Front end and core calls run on the event loop (short calls, the default) or on their
    threads (inline_ms=0): the same keywords and the same spike file either way; the metrics say
    where the calls ran."""
    out = io.StringIO()
    path = tmp_path / "s.swsf"
    src = parse_source(f"wav:{DIGITS_WAV}", SourceOptions(block_ms=10, fast=True))
    final = run(Pipeline(str(tiny_model_path), src, [StdoutSink(out), parse_sink(f"file:{path}")],
                         metrics_interval=0, inline_ms=inline_ms).run())
    assert strip(keyword_lines(out.getvalue())) == expected[2]
    rec = read_spike_file(path)
    got = rec.input_events()
    assert np.array_equal(got.indptr, expected[0].indptr) and np.array_equal(got.channels, expected[0].channels)
    assert np.array_equal(rec.hidden_raster(), expected[1].spikes)
    blocks = final["counts"]["audio_blocks"]
    calls = final["calls"]
    assert blocks > 100 and sum(calls["frontend"].values()) == blocks + 1  # + the closing flush
    assert sum(calls["core"].values()) == final["counts"]["blocks"] > 100
    where = "thread" if inline_ms == 0 else "inline"
    assert calls["frontend"][where] == blocks + 1 and calls["core"][where] == final["counts"]["blocks"]
    assert calls["learn"] == {"inline": 0, "thread": 0}


def test_a_cancelled_thread_call_keeps_its_lane_until_it_ends():
    """A call cannot be stopped once it runs on the lane's thread: when its caller is cancelled
    (a control command's timeout), the next call of that lane, even one that would run on the
    loop, waits for it (else a Core would see two threads)."""
    from spikewire.pipeline import _Lane

    async def go():
        lane = _Lane("t", 0.0)  # the first call goes to the thread
        started, release, order = threading.Event(), threading.Event(), []

        def slow():
            started.set()
            release.wait(30)
            order.append("slow")

        first = asyncio.create_task(lane.call(slow))
        while not started.is_set():
            await asyncio.sleep(0.001)
        first.cancel()
        lane.inline_s = 1e9  # the next call may run on the loop
        second = asyncio.create_task(lane.call(order.append, "quick"))
        for _ in range(50):
            await asyncio.sleep(0)
        before = list(order)
        release.set()
        await second
        lane.shutdown(wait=True)
        return before, order, first.cancelled(), lane.calls

    before, order, cancelled, calls = run(go())
    assert before == [] and order == ["slow", "quick"] and cancelled
    assert calls == {"inline": 1, "thread": 1}


def test_inline_ms_must_not_be_negative(tiny_model_path):
    src = parse_source(f"wav:{DIGITS_WAV}", SourceOptions(fast=True))
    with pytest.raises(ValueError, match="inline_ms"):
        Pipeline(str(tiny_model_path), src, [], inline_ms=-1)


def test_segment_rule_decides_the_open_segment_at_the_end_of_the_stream(digits, tmp_path):
    """A recording that stops in the middle of a word: the segment rule has not
    decided it yet when the source ends; the pipeline flushes the decider, so the
    keyword is reported (at the last step) instead of being lost."""
    import dataclasses

    from spikewire.audio import write_wav

    model = make_tiny_model("tiny-seg")
    model = dataclasses.replace(model, decision=dataclasses.replace(model.decision, rule="segment", peak=150))
    model.save(tmp_path / "seg.swm")
    x, rate = digits
    _, _, full = offline(model, x, rate)
    k = next(k for k in full if k["t_end"] - k["t_start"] > 0.2)  # a long segment ...
    cut_s = k["t_start"] + 0.1  # ... and the recording ends 100 ms into it
    n_before = full.index(k)
    y = x[:int(cut_s * rate)]
    write_wav(tmp_path / "cut.wav", y.astype(np.float32) / 32768.0, rate)
    _, out, want = offline(model, read_wav_int16(tmp_path / "cut.wav")[0], rate)
    n = out.cadc.shape[0]
    assert len(model.decider().update(out.cadc, 0)) == n_before  # without the flush it would be lost
    assert len(want) == n_before + 1 and want[-1]["t_end"] == pytest.approx((n - 1) / 1000)
    buf = io.StringIO()
    src = parse_source(f"wav:{tmp_path / 'cut.wav'}", SourceOptions(block_ms=10, fast=True))
    final = run(Pipeline(str(tmp_path / "seg.swm"), src, [StdoutSink(buf)], metrics_interval=0).run())
    assert strip(keyword_lines(buf.getvalue())) == want
    assert final["counts"]["keywords"] == n_before + 1


def test_file_sink_round_trip(tiny_model_path, expected, tmp_path):
    ev, core_out, _ = expected
    path = tmp_path / "session.swsf"
    src = WavSource(DIGITS_WAV, fast=True, block_ms=13)
    run(Pipeline(str(tiny_model_path), src, [parse_sink(f"file:{path}")], metrics_interval=0).run())
    rec = read_spike_file(path)
    assert rec.header["model"] == "tiny-test" and rec.header["n_in"] == 16 and rec.header["n_hid"] == 16
    assert rec.n_steps == ev.n_steps and not rec.truncated and rec.end is not None
    got = rec.input_events()
    np.testing.assert_array_equal(got.indptr, ev.indptr)  # multiplicity kept
    np.testing.assert_array_equal(got.channels, ev.channels)
    np.testing.assert_array_equal(rec.hidden_raster(), core_out.spikes)
    # a file cut inside its last frame reads back up to there
    data = path.read_bytes()
    cut = tmp_path / "cut.swsf"
    cut.write_bytes(data[:len(data) // 2])
    part = read_spike_file(cut)
    assert part.truncated and 0 < part.n_steps < rec.n_steps
    np.testing.assert_array_equal(part.hidden_raster(), core_out.spikes[:part.n_steps])
    (tmp_path / "bad.swsf").write_bytes(b"NOPE" + data[4:])
    with pytest.raises(ValueError, match="not a spikewire spike file"):
        read_spike_file(tmp_path / "bad.swsf")


def _cli(*args, input_bytes: bytes | None = None, timeout: float = 60.0, **kw):
    return subprocess.run([sys.executable, "-P", "-m", "spikewire.cli", *args], input=input_bytes,
                          capture_output=True, timeout=timeout, cwd=REPO, **kw)


def test_stdin_source_via_cli(tiny_model_path, digits, expected):
    x, rate = digits
    pcm = x.astype("<i2").tobytes() + b"\x01"  # an odd trailing byte is dropped and logged
    r = _cli("run", "--model", str(tiny_model_path), "--source", "stdin", "--rate", str(rate),
             "--sink", "stdout", input_bytes=pcm)
    assert r.returncode == 0, r.stderr.decode()
    got = keyword_lines(r.stdout.decode())
    assert strip(got) == expected[2]
    final = [json.loads(line) for line in r.stderr.decode().splitlines() if line.startswith('{"event":"final_metrics"')]
    assert final and final[0]["counts"]["audio_samples"] == x.size
    assert final[0]["source_counters"]["odd_bytes"] == 1


def test_toml_config_and_flag_override(tiny_model_path, expected, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'model = "{tiny_model_path}"\nsource = "wav:/nonexistent.wav"\nsinks = ["stdout"]\n'
                   f'fast = true\nmetrics_interval = 0\n')
    r = _cli("run", "--config", str(cfg), "--source", f"wav:{DIGITS_WAV}")  # the flag wins over the file
    assert r.returncode == 0, r.stderr.decode()
    assert strip(keyword_lines(r.stdout.decode())) == expected[2]
    cfg.write_text('modle = "x"\n')
    r = _cli("run", "--config", str(cfg))
    assert r.returncode == 2 and b"unknown key 'modle'" in r.stderr


def test_bad_inputs_give_clear_errors(tiny_model_path, tmp_path):
    r = _cli("run", "--model", str(tiny_model_path), "--source", "wav:/no/such.wav", "--fast")
    assert r.returncode == 2 and b"no such file: /no/such.wav" in r.stderr
    bad = tmp_path / "corrupt.swm"
    bad.write_bytes(b"this is not a model" * 10)
    r = _cli("run", "--model", str(bad), "--source", f"wav:{DIGITS_WAV}", "--fast")
    assert r.returncode == 2 and str(bad).encode() in r.stderr, r.stderr
    r = _cli("run", "--model", str(tiny_model_path), "--source", "speaker:0")
    assert r.returncode == 2 and b"unknown source 'speaker:0'" in r.stderr
    r = _cli("run", "--model", str(tiny_model_path), "--source", f"wav:{DIGITS_WAV}", "--sink", "udp://x")
    assert r.returncode == 2 and b"unknown sink 'udp://x'" in r.stderr
    notwav = tmp_path / "x.wav"
    notwav.write_bytes(b"RIFF1234WAVEjunk")
    r = _cli("run", "--model", str(tiny_model_path), "--source", f"wav:{notwav}", "--fast")
    assert r.returncode == 2 and b"cannot read" in r.stderr


def _readline(stream, timeout: float) -> bytes:
    """One line from a subprocess pipe, failing the test after ``timeout`` s instead of blocking for
    ever (the reader thread ends when the process is killed and the pipe closes)."""
    box: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: box.put(stream.readline()), daemon=True).start()
    try:
        return box.get(timeout=timeout)
    except queue.Empty:
        pytest.fail(f"no line from the subprocess within {timeout} s")


def test_sigterm_drains_and_exits_cleanly(tiny_model_path, digits):
    x, rate = digits
    p = subprocess.Popen([sys.executable, "-P", "-m", "spikewire.cli", "run", "--model", str(tiny_model_path),
                          "--source", "stdin", "--rate", str(rate), "--metrics-interval", "0"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        p.stdin.write(x[:rate * 3].astype("<i2").tobytes())  # 3 s, then the pipe stays open
        p.stdin.flush()
        line = _readline(p.stdout, timeout=60)  # the first keyword: the pipeline is running
        assert line.startswith(b"{"), line
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err.decode()
    assert b'"event":"final_metrics"' in err
    final = json.loads(err.decode().splitlines()[-1])
    # everything the source had read was processed (drained), not dropped
    assert 0 < final["counts"]["audio_samples"] == final["source_counters"]["samples"] <= rate * 3
    assert final["dropped"]["in_flight"] == 0


# ---------------------------------------------------------------------------
# MQTT

def test_mqtt_keywords_spikes_status(tiny_model_path, mqtt_broker, expected):
    from spikewire.wire import decode_keyword, decode_spike_batch

    ev, core_out, kws = expected
    prefix = "t-basic"

    async def go():
        async with Subscriber(mqtt_broker, [f"{prefix}/#"]) as sub:
            final = await mqtt_pipeline(str(tiny_model_path), mqtt_broker, prefix, speed=4.0).run()
            await sub.wait_for(lambda: len(sub.on("/keyword")) >= len(kws)
                               and b"offline" in sub.on("/status"), 10)
            return sub, final

    sub, final = run(go())
    got = [decode_keyword(p) for p in sub.on("dev1/keyword")]  # validates the documented schema
    assert strip(got) == kws
    assert [g["seq"] for g in got] == list(range(len(kws)))
    assert {g["model"] for g in got} == {"tiny-test"} and len({g["session"] for g in got}) == 1
    assert sub.on("dev1/status")[0] == b"online" and sub.on("dev1/status")[-1] == b"offline"
    # spike batches decode to exactly what the core produced for the same input
    hidden = np.zeros_like(core_out.spikes)
    for p in sub.on("dev1/spikes/hidden"):
        b = decode_spike_batch(p)
        assert b.population == 1 and b.n_units == 16
        hidden[b.t0:b.t0 + b.n_steps] = b.to_raster()
    assert final["sinks"][next(iter(final["sinks"]))]["dropped_spike_batches"] == 0
    np.testing.assert_array_equal(hidden, core_out.spikes)
    inp = np.zeros((ev.n_steps, 16), np.uint8)
    for p in sub.on("dev1/spikes/input"):
        b = decode_spike_batch(p)
        inp[b.t0:b.t0 + b.n_steps] = b.to_raster()
    np.testing.assert_array_equal(inp, (ev.to_dense(16) > 0).astype(np.uint8))
    metrics = [json.loads(p) for p in sub.on("dev1/metrics")]
    assert metrics, "no metrics published"
    m = metrics[-1]
    for key in ("rtf", "queues", "dropped", "latency_ms", "spikes_per_s", "mqtt", "steps"):
        assert key in m
    assert m["steps"] == ev.n_steps  # the final snapshot went out before the sink closed


def test_last_will_when_the_runtime_dies(tiny_model_path, mqtt_broker):
    prefix = "t-will"

    async def go():
        async with Subscriber(mqtt_broker, [f"{prefix}/+/status"]) as sub:
            p = subprocess.Popen([sys.executable, "-P", "-m", "spikewire.cli", "run", "--model", str(tiny_model_path),
                                  "--source", "stdin", "--rate", "8000", "--device-id", "doomed",
                                  "--sink", mqtt_broker.url(prefix)],
                                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 cwd=REPO)
            try:
                await sub.wait_for(lambda: b"online" in sub.on("doomed/status"), 20)
                p.kill()  # no DISCONNECT: the broker publishes the will
                await sub.wait_for(lambda: sub.on("doomed/status")[-1:] == [b"offline"], 20)
            finally:
                if p.poll() is None:
                    p.kill()
                p.wait()
            return sub.on("doomed/status")

    assert run(go(), 45) == [b"online", b"offline"]


def hidden_end(sub: Subscriber) -> int:
    """The step after the last hidden spike batch received (batches carry t0 and n_steps)."""
    from spikewire.wire import decode_spike_batch

    ends = [b.t0 + b.n_steps for b in map(decode_spike_batch, sub.on("/spikes/hidden"))]
    return max(ends, default=0)


def test_control_pause_resume_reload_snapshot_and_malformed(tiny_model_path, mqtt_broker, tmp_path):
    other = tmp_path / "other.swm"
    make_tiny_model("tiny-other").save(other)
    prefix = "t-ctl"
    dev = "ctl"

    async def go():
        async with Subscriber(mqtt_broker, [f"{prefix}/#"]) as sub:
            pipe = mqtt_pipeline(str(tiny_model_path), mqtt_broker, prefix, speed=1.0, device=dev)
            pipe.snapshot_dir = tmp_path
            pipe.control = ControlPolicy(models_dir=str(tmp_path))  # reload takes model files from here only
            task = asyncio.create_task(pipe.run())
            base = f"{prefix}/{dev}"
            await sub.wait_for(lambda: len(sub.on(f"{dev}/spikes/hidden")) > 5, 15)
            # malformed commands: error replies, the pipeline keeps going
            bad = [await request(sub, base, b"not json {"),
                   await request(sub, base, {"cmd": "explode", "id": 1}),
                   await request(sub, base, {"cmd": "reload", "id": 2, "path": 42}),
                   await request(sub, base, {"cmd": "reload", "id": 3, "path": "/no/such.swm"}),
                   await request(sub, base, {"cmd": "pause", "id": 4, "extra": True})]
            # pause: the core stops (no spike batches, step counter frozen)
            r = await request(sub, base, {"cmd": "pause", "id": "p"})
            assert r["ok"] and r["result"]["paused"]
            # a block the core was running when the pause came finishes; once a block has been
            # skipped the core is idle, and then every batch it made reaches the subscriber
            async with asyncio.timeout(15):
                while pipe.metrics_snapshot()["counts"]["paused_blocks"] == 0:
                    await asyncio.sleep(0.01)
            core_steps = pipe._core_bundle.core.steps  # no pause before: stream step == core step
            await sub.wait_for(lambda: hidden_end(sub) >= core_steps, 15)
            n_paused = len(sub.on(f"{dev}/spikes/hidden"))
            await asyncio.sleep(0.8)  # a window in which nothing may come (no upper bound on time)
            paused_stats = (len(sub.on(f"{dev}/spikes/hidden")) - n_paused, pipe._core_bundle.core.steps - core_steps,
                            pipe.metrics_snapshot()["counts"]["paused_steps"])
            r = await request(sub, base, {"cmd": "resume", "id": "r"})
            assert r["ok"] and not r["result"]["paused"]
            n_resumed = len(sub.on(f"{dev}/spikes/hidden"))
            await sub.wait_for(lambda: len(sub.on(f"{dev}/spikes/hidden")) > n_resumed + 3, 10)
            # the first model must have spoken before the reload (the assertion on `models` below);
            # waiting for it here, not for a fixed time, keeps the test independent of the machine's load
            await sub.wait_for(lambda: len(sub.on(f"{dev}/keyword")) > 0, 20)
            snap = await request(sub, base, {"cmd": "snapshot", "id": "s"})
            escape = await request(sub, base, {"cmd": "snapshot", "id": "e", "path": "../evil.npz"})
            assert not escape["ok"] and "outside the snapshot directory" in escape["error"], escape
            reload_ = await request(sub, base, {"cmd": "reload", "id": "l", "path": str(other)})
            n_kw = len(sub.on(f"{dev}/keyword"))
            await sub.wait_for(lambda: len(sub.on(f"{dev}/keyword")) > n_kw, 15)
            pipe.request_stop()
            final = await task
            return sub, bad, paused_stats, snap, reload_, final

    sub, bad, paused_stats, snap, reload_, final = run(go(), 60)
    assert [b["ok"] for b in bad] == [False] * 5
    assert bad[0]["id"] is None and "JSON" in bad[0]["error"]
    assert "unknown cmd 'explode'" in bad[1]["error"]
    assert "'path' must be str" in bad[2]["error"]
    assert "outside the models folder" in bad[3]["error"]
    assert "unexpected argument 'extra'" in bad[4]["error"]
    new_batches, new_core_steps, paused_steps = paused_stats
    assert new_batches == 0 and new_core_steps == 0 and paused_steps > 0
    assert snap["ok"], snap
    with np.load(snap["result"]["path"], allow_pickle=False) as z:
        assert z["core_state"].size == snap["result"]["bytes"]
        meta = json.loads(z["meta_json"].tobytes())
    assert meta["model"] == "tiny-test"
    assert reload_["ok"] and reload_["result"]["model"] == "tiny-other", reload_
    models = [json.loads(p)["model"] for p in sub.on(f"{dev}/keyword")]
    assert models[-1] == "tiny-other" and "tiny-test" in models
    assert final["model"] == "tiny-other"


@pytest.mark.parametrize("kind", ["auth", "tls"])
def test_user_password_and_tls(tiny_model_path, mqtt_auth_broker, mqtt_tls_broker, expected, kind):
    from spikewire.mqtt import MqttAuthError, decode_keyword

    broker = mqtt_auth_broker if kind == "auth" else mqtt_tls_broker
    prefix = f"t-{kind}"

    async def go():
        async with Subscriber(broker, [f"{prefix}/+/keyword"]) as sub:
            await mqtt_pipeline(str(tiny_model_path), broker, prefix, fast=True).run()
            await sub.wait_for(lambda: len(sub.on("/keyword")) >= len(expected[2]), 10)
            return [decode_keyword(p) for p in sub.on("/keyword")]

    assert strip(run(go())) == expected[2]

    async def wrong_password():
        src = WavSource(DIGITS_WAV, fast=True)
        sink = parse_sink(broker.url(prefix, password="wrong"), device_id="x")
        await Pipeline(str(tiny_model_path), src, [sink]).run()

    with pytest.raises(MqttAuthError, match="Not authorized|not authori[sz]ed|refused"):
        run(wrong_password())


def test_broker_outage_every_keyword_exactly_once(tiny_model_path, mqtt_restartable_broker, expected):
    from spikewire.mqtt import Backoff, decode_keyword

    broker = mqtt_restartable_broker
    kws = expected[2]
    prefix = "t-outage"

    async def go():
        async with Subscriber(broker, [f"{prefix}/+/keyword"], client_id="outage-sub", persistent=True) as sub:
            pipe = mqtt_pipeline(str(tiny_model_path), broker, prefix, speed=2.0,
                                 backoff=Backoff(initial=0.1, factor=2.0, maximum=0.5, jitter=0.2))
            task = asyncio.create_task(pipe.run())
            await sub.wait_for(lambda: len(sub.on("/keyword")) >= 2, 15)
            await asyncio.to_thread(broker.stop)  # SIGTERM: the persistent session survives
            outage_step = pipe._step
            await asyncio.sleep(3.0)
            await asyncio.to_thread(broker.start)
            final = await task
            await sub.wait_for(lambda: len({json.loads(p)["seq"] for p in sub.on("/keyword")}) >= len(kws), 20)
            return sub, final, outage_step

    sub, final, outage_step = run(go(), 90)
    events = [decode_keyword(p) for p in sub.on("/keyword")]
    seen, unique = set(), []
    for e in events:  # a QoS-1 redelivery after reconnection is removed by (session, seq)
        if (e["session"], e["seq"]) not in seen:
            seen.add((e["session"], e["seq"]))
            unique.append(e)
    assert [e["seq"] for e in unique] == list(range(len(kws)))  # exactly once, in order
    assert strip(unique) == kws
    assert outage_step < expected[0].n_steps  # the outage overlapped the stream
    mq = next(v for k, v in final["sinks"].items() if k.startswith("mqtt:"))
    assert mq["dropped_spike_batches"] > 0 and mq["reconnects"] >= 1
    assert mq["dropped_keywords"] == 0


def test_mqtt_spike_source_validates_and_feeds_the_core(tiny_model_path, mqtt_broker, tmp_path):
    from spikewire.wire import encode_spike_batch

    model = make_tiny_model()
    rng = np.random.default_rng(3)
    batches = []
    for i in range(6):
        T = 50
        raster = rng.random((T, 16)) < 0.2
        s, u = np.nonzero(raster)
        batches.append((i * T, T, s, u))
    path = tmp_path / "mqtt-in.swsf"
    topic = "t-src/feed"

    async def go():
        src = MqttSpikeSource(topic, mqtt_broker.url("t-src"))
        pipe = Pipeline(model, src, [FileSink(path)], metrics_interval=0)
        task = asyncio.create_task(pipe.run())
        async with asyncio.timeout(10):
            while src.subscribed is None or not src.subscribed.is_set():
                await asyncio.sleep(0.01)
        async with aiomqtt.Client(**mqtt_broker.client_kwargs()) as c:
            for k, (t0, T, s, u) in enumerate(batches):
                await c.publish(topic, encode_spike_batch(t0, T, s, u, n_units=16), qos=1)
                if k == 2:
                    await c.publish(topic, b"garbage", qos=1)
                    await c.publish(topic, encode_spike_batch(999, 5, [0], [20], n_units=32), qos=1)
                    await c.publish(topic, b"SWSB\x01\x00" + b"\x00" * 30, qos=1)
        async with asyncio.timeout(10):
            while src.counters["batches"] < len(batches):
                await asyncio.sleep(0.01)
        pipe.request_stop()
        return await task, src.counters

    final, counters = run(go())
    assert counters["malformed"] == 2 and counters["bad_units"] == 1 and counters["batches"] == 6
    rec = read_spike_file(path)
    raster = np.zeros((300, 16), np.int32)
    for t0, T, s, u in batches:
        raster[t0 + s, u] = 1
    from spikewire.events import Events
    ev = Events.from_raster(raster)
    got = rec.input_events()
    np.testing.assert_array_equal(got.indptr, ev.indptr)
    np.testing.assert_array_equal(got.channels, ev.channels)
    np.testing.assert_array_equal(rec.hidden_raster(), model.make_core().run(ev).spikes)


def test_stdout_sink_counts_lines_after_the_reader_left():
    import io

    from spikewire.sinks import StdoutSink

    class Gone(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    sink = StdoutSink(Gone())
    assert sink._write('{"a": 1}\n') == 0
    assert sink._write('{"b": 2}\n{"c": 3}\n') == 0
    assert sink.counters() == {"lines": 0, "unwritten_lines": 3}
