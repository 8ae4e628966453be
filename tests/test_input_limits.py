"""Input from files and flags is bounded before anything is allocated (issue #12, item 5).

Sample rates: the front end's limits (csrc/spikewire.h and the resampler design budget) are
checked from scalars, so a rate near 384 kHz with no common divisor fails at once with a clear
message, and ``spikewire run`` exits 2 on it as docs/runtime.md says.  WAV files are streamed:
the ``wav:`` source never holds the whole file.  Memory is measured with ``tracemalloc`` (numpy
reports its buffers to it), which is deterministic; nothing here measures time.
"""
from __future__ import annotations

import asyncio
import os
import struct
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO
from spikewire.audio import WavReader, read_wav, read_wav_int16, write_wav
from spikewire.frontend import FrontEnd, FrontEndConfig, SampleRateError, check_input_rate
from spikewire.sources import SourceError, SourceOptions, WavSource, parse_source


def _peak_bytes(fn) -> tuple[int, object]:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        out = fn()
        return tracemalloc.get_traced_memory()[1], out
    except BaseException as e:  # noqa: BLE001 - the caller looks at the exception
        return tracemalloc.get_traced_memory()[1], e
    finally:
        tracemalloc.stop()


# --- sample rates -----------------------------------------------------------

@pytest.mark.parametrize("rate, msg", [
    (383998, "decimation factor 191999 \\(> 65536\\)"),    # cost 3.5 GB and 12 s before (#12)
    (383992, "resampler of 8351827 taps \\(> 524288\\)"),
    (96001, "interpolation factor 8000 \\(> 4096\\)"),
    (500000, "input_rate must be in 1000..384000 Hz, got 500000"),
    (0, "input_rate must be in 1000..384000 Hz, got 0"),
])
def test_rates_beyond_the_limits_fail_before_allocating(rate, msg):
    cfg = FrontEndConfig()  # 8 kHz
    peak, err = _peak_bytes(lambda: FrontEnd(cfg, rate))
    assert isinstance(err, SampleRateError) and isinstance(err, ValueError), err
    assert pytest.raises(SampleRateError, check_input_rate, cfg, rate).match(msg)
    assert peak < 64 * 1024, f"{peak} bytes allocated before {rate} Hz was refused"


def test_the_largest_accepted_design_is_bounded_and_the_c_core_takes_it():
    # 12052 -> 8000 Hz is the accepted rate with the largest design (524263 taps, L=2000, M=3013)
    cfg = FrontEndConfig()
    peak, fe = _peak_bytes(lambda: FrontEnd(cfg, 12052, kernel="c"))
    assert isinstance(fe, FrontEnd), fe
    assert peak < 100 * 2**20, f"design of the largest accepted resampler took {peak / 2**20:.0f} MiB"
    x = (np.random.default_rng(3).standard_normal(3000) * 4000).astype(np.int16)
    got = fe.process(x)
    want = FrontEnd(cfg, 12052, kernel="reference").process(x)
    assert got.n_steps > 100 and got.n_events > 0
    np.testing.assert_array_equal(got.indptr, want.indptr)  # C == reference on the largest design
    np.testing.assert_array_equal(got.channels, want.channels)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(rate=st.integers(1000, 384000), out=st.sampled_from([8000, 16000]))
def test_check_input_rate_agrees_with_the_c_front_end(rate, out):
    """Whatever check_input_rate accepts, sw_fe_create accepts (the Python mirror of the C limits
    is not looser than C); what it refuses is a SampleRateError, never a C status error."""
    cfg = FrontEndConfig(sample_rate=out)
    try:
        check_input_rate(cfg, rate)
    except SampleRateError:
        with pytest.raises(SampleRateError):
            FrontEnd(cfg, rate, kernel="c")
        return
    FrontEnd(cfg, rate, kernel="c")


def _cli(*args, timeout: float = 60.0):
    return subprocess.run([sys.executable, "-P", "-m", "spikewire.cli", *args], capture_output=True,
                          timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("rate", ["0", "-3", "999", "384001"])
@pytest.mark.parametrize("source", ["stdin", "mic"])
def test_bad_rate_flag_exits_2(tiny_model_path, source, rate):
    r = _cli("run", "--model", str(tiny_model_path), "--source", source, "--rate", rate)
    assert r.returncode == 2, r.stderr
    assert f"--rate must be an integer in 1000..384000 Hz, got {rate}".encode() in r.stderr


def test_rate_zero_is_not_the_default():
    with pytest.raises(SourceError, match="got 0"):
        parse_source("stdin", SourceOptions(rate=0))
    assert parse_source("stdin", SourceOptions()).rate == 16000


@pytest.mark.parametrize("rate, msg", [(383998, b"decimation factor 191999"), (500, b"got 500"),
                                       (96001, b"interpolation factor 8000")])
def test_wav_with_a_bad_rate_exits_2(tiny_model_path, tmp_path, rate, msg):
    p = tmp_path / f"r{rate}.wav"
    write_wav(p, np.zeros(100, np.int16), rate)
    r = _cli("run", "--model", str(tiny_model_path), "--source", f"wav:{p}", "--fast")
    assert r.returncode == 2, r.stderr
    assert msg in r.stderr and b"Traceback" not in r.stderr


# --- streaming WAV ----------------------------------------------------------

ENCODINGS = [(1, 8), (1, 16), (1, 24), (1, 32), (3, 32), (3, 64)]


def _wav_bytes(tag: int, bits: int, channels: int, values: np.ndarray, rate: int = 8000) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    if tag == 3:
        data = values.astype("<f4" if bits == 32 else "<f8").tobytes()
    elif bits == 8:
        data = (values.astype(np.int64) & 0xFF).astype(np.uint8).tobytes()
    elif bits == 24:
        u = values.astype(np.int64) & 0xFFFFFF
        data = np.stack([u & 0xFF, (u >> 8) & 0xFF, u >> 16], -1).astype(np.uint8).tobytes()
    else:
        data = values.astype("<i2" if bits == 16 else "<i4").tobytes()
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body + (b"\0" if len(data) % 2 else b"")


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(enc=st.sampled_from(ENCODINGS), channels=st.integers(1, 3), frames=st.integers(0, 300),
       blocks=st.lists(st.integers(0, 97), min_size=1, max_size=8), seed=st.integers(0, 2**32 - 1))
def test_reading_in_blocks_gives_the_whole_file_bit_for_bit(tmp_path, enc, channels, frames, blocks, seed):
    tag, bits = enc
    rng = np.random.default_rng(seed)
    if tag == 3:
        values = rng.uniform(-1.2, 1.2, frames * channels)
    else:
        values = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), frames * channels)
    p = tmp_path / "x.wav"
    p.write_bytes(_wav_bytes(tag, bits, channels, values))
    whole_f, _ = read_wav(p)
    whole_i, _ = read_wav_int16(p)
    got_f, got_i = [], []
    with WavReader(p) as rf, WavReader(p) as ri:
        assert rf.frames == frames
        i = 0
        while rf.position < frames:
            n = blocks[i % len(blocks)] or 1
            got_f.append(rf.read_float(n))
            got_i.append(ri.read_int16(n))
            i += 1
        assert rf.read_float(10).size == 0 and ri.read_int16(10).size == 0
    np.testing.assert_array_equal(np.concatenate(got_f) if got_f else np.zeros(0, np.float32), whole_f)
    np.testing.assert_array_equal(np.concatenate(got_i) if got_i else np.zeros(0, np.int16), whole_i)


class _Discard:
    """An emitter that keeps only a hash-like summary of what it was given."""

    def __init__(self):
        self.samples = 0
        self.blocks = 0
        self.checksum = 0

    async def put(self, item):
        self.samples += item.samples.size
        self.blocks += 1
        self.checksum = (self.checksum * 31 + int(item.samples.astype(np.int64).sum())) % (1 << 61)

    def put_nowait(self, item):  # pragma: no cover - the wav source uses back-pressure
        raise AssertionError("wav source must not drop")


def _play(path, block_ms=100.0):
    async def go():
        sink = _Discard()
        async with WavSource(path, block_ms=block_ms, fast=True) as src:
            await src.run(sink)
        return sink, src
    return asyncio.run(go())


@pytest.mark.parametrize("channels, bits", [(1, 16), (2, 16), (2, 32)])
def test_wav_source_streams_with_bounded_memory(tmp_path, channels, bits):
    rate, seconds = 16000, 300
    rng = np.random.default_rng(7)
    x = rng.integers(-3000, 3000, (rate * seconds, channels)).astype(np.int16)
    p = tmp_path / "long.wav"
    if bits == 16:
        write_wav(p, x, rate)
    else:
        p.write_bytes(_wav_bytes(3, 32, channels, (x / 32768.0).reshape(-1), rate))
    size = os.path.getsize(p)
    assert size >= 9_000_000
    expected = read_wav_int16(p)[0]
    del x
    peak, (sink, src) = _peak_bytes(lambda: _play(p))
    assert sink.samples == expected.size == src.counters["samples"]
    n = 1600
    want = 0
    for a in range(0, expected.size, n):
        want = (want * 31 + int(expected[a:a + n].astype(np.int64).sum())) % (1 << 61)
    assert sink.checksum == want and sink.blocks == -(-expected.size // n)
    # about one second of audio is read at a time: far below the file (or its int16 copy)
    assert peak < size // 8, f"peak {peak} bytes while streaming a {size}-byte file"


def test_float_wav_with_nan_fails_before_the_stream_starts(tmp_path):
    v = np.zeros(40000)
    v[33333] = np.nan
    p = tmp_path / "nan.wav"
    p.write_bytes(_wav_bytes(3, 32, 1, v))

    async def go():
        async with WavSource(p, fast=True):
            pass

    with pytest.raises(SourceError, match="non-finite float sample in frame 33333"):
        asyncio.run(go())


# --- model files: the header's types are checked (#12 item 7) ----------------

def _resave(src, dst, **changes):
    from spikewire.modelfile import load_container, save_container

    header, arrays = load_container(src)
    header.update(changes)
    save_container(dst, header, arrays)
    return dst


@pytest.mark.parametrize("changes, msg", [
    (dict(vocabulary=[1, 2]), "vocabulary\\[0\\] must be a non-empty printable string"),  # eval crashed on it
    (dict(vocabulary="lh"), "vocabulary must be a list of words, got str"),
    (dict(vocabulary=["low", ""]), "vocabulary\\[1\\] must be a non-empty"),
    (dict(vocabulary=["low", "x" * 65]), "at most 64 characters"),
    (dict(vocabulary=["low", "hi\ngh"]), "vocabulary\\[1\\] must be a non-empty printable"),
    (dict(vocabulary=["low", None]), "vocabulary\\[1\\]"),
    (dict(has_none_unit="false"), "has_none_unit must be true or false"),
    (dict(training=[1]), "training must be an object"),
    (dict(metrics="good"), "metrics must be an object"),
])
def test_model_header_types_are_checked(tiny_model_path, tmp_path, changes, msg):
    from spikewire.model import ModelFileError, load

    bad = _resave(tiny_model_path, tmp_path / "bad.swm", **changes)
    with pytest.raises(ModelFileError, match=msg) as e:
        load(bad)
    assert str(bad) in str(e.value)


def test_eval_refuses_a_model_with_integer_words(tiny_model_path, tmp_path):
    bad = _resave(tiny_model_path, tmp_path / "ints.swm", vocabulary=[0, 1])
    (tmp_path / "data").mkdir()
    r = _cli("eval", "--model", str(bad), "--data", str(tmp_path / "data"))
    assert r.returncode == 2 and b"vocabulary[0]" in r.stderr and b"Traceback" not in r.stderr, r.stderr


# --- Events.from_raster: counts bounded before allocating (#12 item 7) ---------

@pytest.mark.parametrize("raster, msg", [
    (np.array([[2**62]]), "raster count 4611686018427387904 exceeds 1048576"),  # numpy segfaulted here
    (np.array([[2**63 + 5]], np.uint64), "raster count 9223372036854775813 exceeds"),  # wrapped negative
    (np.full((3, 64), 2**15), "2097152 input events in step 0"),
    (np.full((1000, 64), 2**14, np.int32), "raster holds 1048576000 events, more than 268435456"),
    (np.array([[-1, 0]]), "counts must be >= 0"),
])
def test_from_raster_bounds_counts_before_allocating(raster, msg):
    from spikewire.events import Events

    peak, err = _peak_bytes(lambda: Events.from_raster(raster))
    assert isinstance(err, ValueError) and pytest.raises(ValueError, Events.from_raster, raster).match(msg)
    assert peak < 4 * raster.nbytes + 65536, f"{peak} bytes allocated before refusing"


def test_from_raster_max_events_and_the_core():
    from spikewire.core import Core
    from spikewire.config import CoreConfig
    from spikewire.events import Events

    r = np.array([[3, 0, 1], [0, 0, 0], [1, 2, 0]], np.uint16)
    ev = Events.from_raster(r)
    assert ev.indptr.tolist() == [0, 4, 4, 7] and ev.channels.tolist() == [0, 0, 0, 2, 0, 1, 1]
    with pytest.raises(ValueError, match="raster holds 7 events, more than 6"):
        Events.from_raster(r, max_events=6)
    core = Core(CoreConfig(n_in=3, n_hid=4, n_out=2))
    with pytest.raises(ValueError, match="raster count 1048577 exceeds"):
        core.run(np.full((2, 3), (1 << 20) + 1))


@pytest.mark.parametrize("where", ["sink", "source"])
def test_mqtts_with_a_missing_ca_file_exits_2(tiny_model_path, tmp_path, where):
    """A missing CA file is a usage error (exit 2) named in one line, found before any connection."""
    ca = tmp_path / "no-such-ca.crt"
    url = f"mqtts://127.0.0.1:1/p?cafile={ca}"
    if where == "sink":
        args = ["--source", "stdin", "--sink", url]
    else:
        args = ["--source", "mqtt:p/in", "--broker", url]
    r = _cli("run", "--model", str(tiny_model_path), *args, "--duration", "5")
    assert r.returncode == 2, r.stderr
    assert f"cannot load CA file '{ca}'".encode() in r.stderr and b"Traceback" not in r.stderr, r.stderr
