"""Tests for runtime/audio.py.

WAV bytes are built here with ``struct`` (independently of the reader), so the
tests check the reader against the RIFF/WAVE layout, not against itself.
"""
from __future__ import annotations

import struct
import wave

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spikewire.audio import AudioFileError, read_wav, read_wav_info, read_wav_int16, write_wav

PCM, FLOAT, EXT = 1, 3, 0xFFFE
GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"


def chunk(cid: bytes, body: bytes, size: int | None = None) -> bytes:
    size = len(body) if size is None else size
    return cid + struct.pack("<I", size) + body + (b"\x00" if len(body) % 2 else b"")


def fmt_body(tag, channels, rate, bits, *, ext_tag=None, valid_bits=None):
    block = channels * bits // 8
    body = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    if tag == EXT:
        body += struct.pack("<HHI", 22, valid_bits or bits, 0) + struct.pack("<H", ext_tag) + GUID_TAIL
    return body


def riff(*chunks: bytes, riff_size: int | None = None) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body) if riff_size is None else riff_size) + body


def encode(values, bits, tag=PCM) -> bytes:
    """Interleaved sample values (already integers / floats) -> little-endian bytes."""
    v = np.asarray(values)
    if tag == FLOAT:
        return v.astype("<f4" if bits == 32 else "<f8").tobytes()
    if bits == 8:
        return v.astype(np.uint8).tobytes()
    if bits == 16:
        return v.astype("<i2").tobytes()
    if bits == 32:
        return v.astype("<i4").tobytes()
    u = v.astype(np.int64) & 0xFFFFFF
    return np.stack([u & 0xFF, (u >> 8) & 0xFF, u >> 16], axis=-1).astype(np.uint8).tobytes()


def put(tmp_path, data: bytes, name="x.wav"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


# --- decoding of every supported encoding --------------------------------

PCM_CASES = [
    # bits, raw values, expected floats
    (8, [0, 64, 128, 192, 255], [-1.0, -0.5, 0.0, 0.5, 127 / 128]),
    (16, [-32768, -16384, 0, 1, 32767], [-1.0, -0.5, 0.0, 2 ** -15, 32767 / 32768]),
    (24, [-(2 ** 23), -1, 0, 1, 2 ** 23 - 1], [-1.0, -(2 ** -23), 0.0, 2 ** -23, 1 - 2 ** -23]),
    (32, [-(2 ** 31), 0, 2 ** 30, 2 ** 31 - 1], [-1.0, 0.0, 0.5, 1 - 2 ** -31]),
]


@pytest.mark.parametrize("bits,raw,expected", PCM_CASES, ids=lambda c: str(c) if isinstance(c, int) else None)
@pytest.mark.parametrize("extensible", [False, True])
def test_pcm_decoding(tmp_path, bits, raw, expected, extensible):
    fmt = fmt_body(EXT, 1, 8000, bits, ext_tag=PCM) if extensible else fmt_body(PCM, 1, 8000, bits)
    p = put(tmp_path, riff(chunk(b"fmt ", fmt), chunk(b"data", encode(raw, bits))))
    x, rate = read_wav(p)
    assert rate == 8000
    assert x.dtype == np.float32 and x.shape == (len(raw),)
    np.testing.assert_array_equal(x, np.asarray(expected, dtype=np.float32))
    info = read_wav_info(p)
    assert (info.format_tag, info.bits, info.extensible, info.frames) == (PCM, bits, extensible, len(raw))


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("extensible", [False, True])
def test_float_decoding_clips_to_unit_range(tmp_path, bits, extensible):
    fmt = fmt_body(EXT, 1, 16000, bits, ext_tag=FLOAT) if extensible else fmt_body(FLOAT, 1, 16000, bits)
    vals = [0.0, 0.25, -0.75, 1.5, -3.0]
    p = put(tmp_path, riff(chunk(b"fmt ", fmt), chunk(b"data", encode(vals, bits, FLOAT))))
    x, rate = read_wav(p)
    assert rate == 16000
    np.testing.assert_array_equal(x, np.float32([0.0, 0.25, -0.75, 1.0, -1.0]))


def test_extensible_24_in_32_container(tmp_path):
    """wValidBitsPerSample < container: samples are left-justified, scale by the container."""
    fmt = fmt_body(EXT, 1, 8000, 32, ext_tag=PCM, valid_bits=24)
    raw = np.array([1 << 8, -(1 << 31)], dtype=np.int64)
    p = put(tmp_path, riff(chunk(b"fmt ", fmt), chunk(b"data", encode(raw, 32))))
    x, _ = read_wav(p)
    np.testing.assert_array_equal(x, np.float32([2 ** -23, -1.0]))


def test_float_nan_is_an_error(tmp_path):
    p = put(tmp_path, riff(chunk(b"fmt ", fmt_body(FLOAT, 1, 8000, 32)),
                           chunk(b"data", encode([0.0, np.nan], 32, FLOAT))))
    with pytest.raises(AudioFileError, match="non-finite float sample in frame 1"):
        read_wav(p)


def test_multichannel_downmix_by_mean(tmp_path):
    # 3 frames x 2 channels, interleaved
    raw = [16384, -16384, 32767, 32767, 0, 8192]
    p = put(tmp_path, riff(chunk(b"fmt ", fmt_body(PCM, 2, 22050, 16)), chunk(b"data", encode(raw, 16))))
    x, rate = read_wav(p)
    assert rate == 22050
    np.testing.assert_array_equal(x, np.float32([0.0, 32767 / 32768, 4096 / 32768]))
    assert read_wav_info(p).channels == 2


def test_skips_list_chunk_and_odd_padding(tmp_path):
    """An odd-sized chunk is followed by a pad byte; LIST/fact chunks before data are skipped."""
    odd = chunk(b"junk", b"abc")  # 3 bytes + 1 pad byte
    assert len(odd) == 12
    lst = chunk(b"LIST", b"INFOISFT" + struct.pack("<I", 5) + b"test\x00")
    data = chunk(b"data", encode([100, -100, 7], 16))
    p = put(tmp_path, riff(odd, chunk(b"fmt ", fmt_body(PCM, 1, 8000, 16)), lst, chunk(b"fact", b"\x03\x00\x00\x00"),
                           data))
    x, _ = read_wav_int16(p)
    np.testing.assert_array_equal(x, np.int16([100, -100, 7]))


def test_odd_8bit_data_chunk_then_trailer(tmp_path):
    """3 bytes of 8-bit data plus its pad byte, followed by a trailing chunk."""
    p = put(tmp_path, riff(chunk(b"fmt ", fmt_body(PCM, 1, 8000, 8)), chunk(b"data", bytes([128, 0, 255])),
                           chunk(b"LIST", b"INFO")))
    x, _ = read_wav(p)
    np.testing.assert_array_equal(x, np.float32([0.0, -1.0, 127 / 128]))


def test_data_before_fmt_and_wrong_riff_size(tmp_path):
    p = put(tmp_path, riff(chunk(b"data", encode([5, 6], 16)), chunk(b"fmt ", fmt_body(PCM, 1, 8000, 16)),
                           riff_size=0))
    x, _ = read_wav_int16(p)
    np.testing.assert_array_equal(x, np.int16([5, 6]))


def test_empty_data_chunk(tmp_path):
    p = put(tmp_path, riff(chunk(b"fmt ", fmt_body(PCM, 1, 8000, 16)), chunk(b"data", b"")))
    x, rate = read_wav(p)
    assert x.shape == (0,) and x.dtype == np.float32 and rate == 8000


def test_reads_what_stdlib_wave_writes(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.integers(-32768, 32768, size=(500, 2), dtype=np.int16)
    p = tmp_path / "std.wav"
    with wave.open(str(p), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(11025)
        w.writeframes(raw.astype("<i2").tobytes())
    x, rate = read_wav(p)
    assert rate == 11025
    np.testing.assert_array_equal(x, (raw.astype(np.float64).mean(axis=1) / 32768).astype(np.float32))


# --- truncation -----------------------------------------------------------


def test_truncated_data_is_an_error_unless_allowed(tmp_path):
    full = riff(chunk(b"fmt ", fmt_body(PCM, 1, 8000, 16)), chunk(b"data", encode(np.arange(10), 16)))
    p = put(tmp_path, full[:-5])  # cuts 2.5 samples
    with pytest.raises(AudioFileError, match=r"truncated: data chunk claims 20 bytes but only 15 remain"):
        read_wav(p)
    x, _ = read_wav_int16(p, allow_truncated=True)
    np.testing.assert_array_equal(x, np.arange(7, dtype=np.int16))
    assert read_wav_info(p, allow_truncated=True).truncated


def test_partial_frame_in_data_chunk(tmp_path):
    p = put(tmp_path, riff(chunk(b"fmt ", fmt_body(PCM, 2, 8000, 16)), chunk(b"data", encode([1, 2, 3], 16))))
    with pytest.raises(AudioFileError, match="data chunk size 6 is not a multiple of the frame size 4"):
        read_wav(p)
    x, _ = read_wav_int16(p, allow_truncated=True)
    assert x.tolist() == [2]  # round(mean(1, 2)) half to even


# --- errors ---------------------------------------------------------------

FMT16 = chunk(b"fmt ", fmt_body(PCM, 1, 8000, 16))
DATA = chunk(b"data", encode([1, 2], 16))

BAD_FILES = [
    (b"", "0 bytes, too short"),
    (b"RIFF\x00\x00", "too short"),
    (b"ID3\x04" + bytes(40), "not a WAV file"),
    (b"RIFF" + struct.pack("<I", 4) + b"AVI ", "not a WAV file"),
    (b"RIFX" + struct.pack(">I", 4) + b"WAVE", "unsupported RIFF variant"),
    (riff(DATA), "no 'fmt ' chunk"),
    (riff(FMT16), "no 'data' chunk"),
    (riff(FMT16, b"da"), "truncated chunk header at offset 36"),
    (riff(chunk(b"fmt ", fmt_body(PCM, 1, 8000, 16)[:12]), DATA), "'fmt ' chunk is 12 bytes"),
    (riff(chunk(b"fmt ", fmt_body(6, 1, 8000, 8)), DATA), "unsupported format tag 0x0006"),
    (riff(chunk(b"fmt ", fmt_body(PCM, 1, 8000, 12)), DATA), "unsupported PCM sample size 12 bits"),
    (riff(chunk(b"fmt ", fmt_body(FLOAT, 1, 8000, 16)), DATA), "unsupported IEEE float sample size 16"),
    (riff(chunk(b"fmt ", fmt_body(PCM, 0, 8000, 16)), DATA), "channel count is 0"),
    (riff(chunk(b"fmt ", fmt_body(PCM, 1, 0, 16)), DATA), "sample rate is 0"),
    (riff(chunk(b"fmt ", struct.pack("<HHIIHH", 1, 1, 8000, 16000, 4, 16)), DATA), "block align 4"),
    (riff(chunk(b"fmt ", fmt_body(EXT, 1, 8000, 16, ext_tag=PCM)[:30]), DATA), "EXTENSIBLE 'fmt ' chunk is 30"),
    (riff(chunk(b"fmt ", fmt_body(EXT, 1, 8000, 16, ext_tag=PCM)[:-1] + b"\x00"), DATA), "sub-format GUID"),
    (riff(chunk(b"fmt ", fmt_body(EXT, 1, 8000, 16, ext_tag=PCM, valid_bits=20)), DATA), "wValidBitsPerSample 20"),
    (riff(FMT16, chunk(b"LIST", b"abcd", size=100), DATA), "chunk b'LIST' at offset 36 claims 100 bytes"),
]


@pytest.mark.parametrize("data,message", BAD_FILES)
def test_bad_files_raise_audio_file_error(tmp_path, data, message):
    p = put(tmp_path, data, "bad.wav")
    with pytest.raises(AudioFileError, match=message) as exc:
        read_wav(p)
    assert str(p) in str(exc.value) and exc.value.path == str(p)
    assert isinstance(exc.value, ValueError)


def test_missing_file_is_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_wav(tmp_path / "nope.wav")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzz_mutated_wav_never_crashes(tmp_path, data):
    good = riff(chunk(b"LIST", b"INFOabc"), FMT16, chunk(b"data", encode(np.arange(-20, 20) * 100, 16)))
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "overwrite"]))
    pos = data.draw(st.integers(0, len(good) - 1))
    if kind == "flip":
        mutated = bytearray(good)
        mutated[pos] ^= 1 << data.draw(st.integers(0, 7))
        mutated = bytes(mutated)
    elif kind == "truncate":
        mutated = good[:pos]
    elif kind == "insert":
        mutated = good[:pos] + data.draw(st.binary(min_size=1, max_size=8)) + good[pos:]
    else:
        blob = data.draw(st.binary(min_size=1, max_size=8))
        mutated = good[:pos] + blob + good[pos + len(blob):]
    p = put(tmp_path, mutated, "fuzz.wav")
    try:
        x, rate = read_wav(p)
    except AudioFileError:
        return
    assert x.dtype == np.float32 and x.ndim == 1
    assert np.all(np.abs(x) <= 1.0) and rate >= 1


# --- writing --------------------------------------------------------------


def test_write_read_roundtrip_exact_on_grid(tmp_path):
    rng = np.random.default_rng(1)
    q = rng.integers(-32768, 32768, size=1001) / 32768.0
    p = tmp_path / "rt.wav"
    write_wav(p, q.astype(np.float32), 16000)
    x, rate = read_wav(p)
    assert rate == 16000
    np.testing.assert_array_equal(x, q.astype(np.float32))
    info = read_wav_info(p)
    assert (info.format_tag, info.bits, info.channels) == (PCM, 16, 1)
    assert p.stat().st_size == 44 + 2 * 1001


def test_write_clips_and_rounds(tmp_path):
    p = tmp_path / "clip.wav"
    write_wav(p, np.array([2.0, -2.0, 1.0, -1.0, 0.5 / 32768, 1.5 / 32768]), 8000)
    x, _ = read_wav_int16(p)
    np.testing.assert_array_equal(x, np.int16([32767, -32768, 32767, -32768, 0, 2]))


def test_write_int16_verbatim_and_stdlib_reads_it(tmp_path):
    raw = np.array([[1, -1], [32767, -32768], [0, 5]], dtype=np.int16)
    p = tmp_path / "st.wav"
    write_wav(p, raw, 44100)
    with wave.open(str(p), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (2, 2, 44100, 3)
        got = np.frombuffer(w.readframes(3), dtype="<i2").reshape(3, 2)
    np.testing.assert_array_equal(got, raw)
    assert [q.name for q in tmp_path.iterdir()] == ["st.wav"]  # no temporary file left behind


@pytest.mark.parametrize("samples,rate,message", [
    (np.zeros(4, dtype=np.int32), 8000, "floating point or int16, got dtype int32"),
    (np.zeros((2, 2, 2)), 8000, r"shape \(2, 2, 2\)"),
    (np.array([0.0, np.nan]), 8000, "NaN or infinite"),
    (np.zeros(4), 0, "rate must be an integer in 1..2\\*\\*32-1, got 0"),
    (np.zeros(4), 8000.0, "got 8000.0"),
])
def test_write_rejects_bad_input(tmp_path, samples, rate, message):
    with pytest.raises(ValueError, match=message):
        write_wav(tmp_path / "bad.wav", samples, rate)
    assert not list(tmp_path.iterdir())
