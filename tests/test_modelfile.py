"""Tests for runtime/modelfile.py (the container format of docs/model-format.md).

``build_raw`` below re-implements the documented byte layout independently of
the writer, so crafted files (valid checksum, lying table) test the reader's
checks rather than the writer's habits.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spikewire.modelfile import (
    ALIGNMENT,
    CONTAINER_VERSION,
    DTYPES,
    MAGIC,
    ModelFileError,
    atomic_writer,
    load_container,
    save_container,
)

HEADER = {"schema_version": 1, "name": "kws-digits", "vocabulary": ["zero", "one"], "nested": {"a": [1, 2.5, None]}}


def build_raw(header: dict, data: bytes = b"", *, magic=MAGIC, version=CONTAINER_VERSION, header_bytes=None) -> bytes:
    hb = json.dumps(header).encode() if header_bytes is None else header_bytes
    start = -(-(16 + len(hb)) // ALIGNMENT) * ALIGNMENT
    body = magic + struct.pack("<II", version, len(hb)) + hb
    body += b"\x00" * (start - len(body)) + data
    return body + hashlib.sha256(body).digest()


def entry(name, dtype, shape, offset, nbytes=None):
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize if nbytes is None else nbytes
    return {"name": name, "dtype": dtype, "shape": list(shape), "offset": offset, "nbytes": n}


def sample_arrays():
    rng = np.random.default_rng(7)
    arrays = {}
    for i, dt in enumerate(DTYPES):
        info = np.iinfo(dt) if np.dtype(dt).kind in "iu" else np.finfo(dt)
        arrays[f"{dt}_2d"] = np.array([[info.min, info.max, 0], [1, 2, 3]], dtype=dt)
        arrays[f"{dt}_scalar"] = np.array(3, dtype=dt)
        arrays[f"{dt}_empty"] = np.zeros((0, 4), dtype=dt)
        arrays[f"{dt}_3d_odd"] = rng.integers(0, 100, size=(3, 1, 5 + i)).astype(dt)
    arrays["f64_specials"] = np.array([np.nan, np.inf, -np.inf, -0.0, 5e-324])
    arrays["big_endian_in"] = np.arange(5, dtype=">i4")
    arrays["fortran_in"] = np.asfortranarray(np.arange(12, dtype=np.int16).reshape(3, 4))
    arrays["sliced_in"] = np.arange(20, dtype=np.float32)[::3]
    return arrays


def assert_same(got: dict, want: dict):
    assert list(got) == list(want)
    for k in want:
        a, b = got[k], np.asarray(want[k])
        assert a.dtype == b.dtype.newbyteorder("=") and a.shape == b.shape, k
        np.testing.assert_array_equal(a, b, err_msg=k)
        assert a.flags.c_contiguous and a.flags.writeable and a.dtype.isnative, k


# --- round trip -----------------------------------------------------------


def test_roundtrip_all_dtypes_and_shapes(tmp_path):
    p = tmp_path / "m.swm"
    arrays = sample_arrays()
    save_container(p, HEADER, arrays)
    header, got = load_container(p)
    assert header == HEADER
    assert_same(got, arrays)
    assert [q.name for q in tmp_path.iterdir()] == ["m.swm"]


def test_layout_matches_documentation(tmp_path):
    p = tmp_path / "m.swm"
    save_container(p, {"schema_version": 3}, {"a": np.arange(3, dtype=np.int16), "b": np.float64([1.5])})
    raw = p.read_bytes()
    assert raw[:8] == MAGIC == b"\x89SPKWIRE"
    version, hlen = struct.unpack_from("<II", raw, 8)
    assert version == CONTAINER_VERSION == 1
    header = json.loads(raw[16:16 + hlen])
    assert header["arrays"] == [entry("a", "int16", (3,), 0), entry("b", "float64", (1,), 64)]
    start = -(-(16 + hlen) // 64) * 64
    assert raw[16 + hlen:start] == b"\x00" * (start - 16 - hlen)
    assert np.frombuffer(raw, "<i2", 3, start).tolist() == [0, 1, 2]
    assert np.frombuffer(raw, "<f8", 1, start + 64).tolist() == [1.5]
    assert len(raw) == start + 128 + 32
    assert raw[-32:] == hashlib.sha256(raw[:-32]).digest()
    # an independently built file with the same content loads the same
    q = tmp_path / "q.swm"
    q.write_bytes(build_raw(header, raw[start:-32]))
    h2, a2 = load_container(q)
    assert h2 == {"schema_version": 3} and a2["a"].tolist() == [0, 1, 2]


def test_no_arrays_and_unicode_header(tmp_path):
    p = tmp_path / "m.swm"
    header = {"schema_version": 1, "note": "Grüße ✓", "empty": {}}
    save_container(p, header, {})
    assert load_container(p) == (header, {})


def test_file_mode_follows_umask(tmp_path):
    umask = os.umask(0o022)
    try:
        save_container(tmp_path / "m.swm", HEADER, {})
    finally:
        os.umask(umask)
    assert (tmp_path / "m.swm").stat().st_mode & 0o777 == 0o644


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    p = tmp_path / "m.swm"
    save_container(p, HEADER, {"w": np.int8([1])})
    before = p.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_writer(p) as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert p.read_bytes() == before
    assert [q.name for q in tmp_path.iterdir()] == ["m.swm"]


@pytest.mark.parametrize("header,arrays,message", [
    ({}, {}, "'schema_version' must be an integer >= 1, got None"),
    ({"schema_version": True}, {}, "got True"),
    ({"schema_version": "1"}, {}, "got '1'"),
    ({"schema_version": 1, "arrays": []}, {}, "'arrays' is reserved"),
    ({"schema_version": 1, "x": float("nan")}, {}, "not strict-JSON"),
    ({"schema_version": 1, "x": np.int64(3)}, {}, "not strict-JSON"),
    ({"schema_version": 1, "x": {1: 2}}, {}, r"header\['x'\] has a non-string key 1"),
    ({"schema_version": 1}, {"b": np.array([True])}, "array 'b' has dtype bool"),
    ({"schema_version": 1}, {"h": np.float16([1])}, "array 'h' has dtype float16"),
    ({"schema_version": 1}, {"o": np.array([{}], dtype=object)}, "array 'o' has dtype object"),
    ({"schema_version": 1}, {"c": np.complex64([1])}, "array 'c' has dtype complex64"),
    ({"schema_version": 1}, {"": np.int8([1])}, "non-empty strings, got ''"),
])
def test_save_rejects_bad_input(tmp_path, header, arrays, message):
    with pytest.raises(ValueError, match=message):
        save_container(tmp_path / "m.swm", header, arrays)
    assert not list(tmp_path.iterdir())


# --- corrupt files --------------------------------------------------------


def load_bytes(tmp_path, raw: bytes, name="bad.swm"):
    p = tmp_path / name
    p.write_bytes(raw)
    return load_container(p)


def table_file(arrays_table, data: bytes, **extra):
    return build_raw({"schema_version": 1, **extra, "arrays": arrays_table}, data)


BAD = [
    (b"", "not a spikewire model file|truncated"),
    (MAGIC[:5], "truncated: file is 5 bytes"),
    (b"PK\x03\x04" + bytes(100), "not a spikewire model file"),
    (b"\x93NUMPY" + bytes(100), "not a spikewire model file"),
    (MAGIC + struct.pack("<II", 1, 0) + bytes(10), "truncated: file is 26 bytes"),
    (build_raw({"schema_version": 1, "arrays": []}, version=2), "unsupported container version 2"),
    (build_raw({"schema_version": 1, "arrays": []}, magic=b"\x89SPKWIRF"), "magic"),
    (build_raw({}, header_bytes=b"\xff\xfe{}"), "not valid UTF-8"),
    (build_raw({}, header_bytes=b'{"schema_version": 1, "arrays": [}'), "not valid JSON"),
    (build_raw({}, header_bytes=b'{"schema_version": 1, "arrays": [], "x": NaN}'), "NaN"),
    (build_raw({}, header_bytes=b'{"schema_version": 1, "schema_version": 2, "arrays": []}'), "duplicate JSON key"),
    (build_raw({}, header_bytes=b"[" * 100000 + b"]" * 100000), "nested too deeply|must be a JSON object"),
    (build_raw({}, header_bytes=b"[1, 2]"), "must be a JSON object, got list"),
    (build_raw({"arrays": []}), "'schema_version' must be an integer >= 1, got None"),
    (build_raw({"schema_version": 1}), "has no array table"),
    (table_file({"a": 1}, b""), "has no array table"),
    (table_file([["a"]], b""), "entry 0 must be an object"),
    (table_file([{**entry("a", "int8", (1,), 0), "extra": 1}], bytes(64)), "entry 0 must be an object"),
    (table_file([entry("", "int8", (1,), 0)], bytes(64)), "bad name ''"),
    (table_file([entry("a", "int8", (1,), 0), entry("a", "int8", (1,), 64)], bytes(128)), "'a' appears twice"),
    (table_file([entry("a", "int8", (1,), 0) | {"dtype": "object"}], bytes(64)), "dtype 'object' is not one of"),
    (table_file([entry("a", "int8", (1,), 0) | {"dtype": "<i4"}], bytes(64)), "dtype '<i4' is not one of"),
    (table_file([entry("a", "int8", (1,), 0) | {"shape": [-1]}], bytes(64)), r"bad shape \[-1\]"),
    (table_file([entry("a", "int8", (1,), 0) | {"shape": [True]}], bytes(64)), r"bad shape \[true\]|bad shape \[True\]"),
    (table_file([entry("a", "int8", (1,), 0) | {"shape": 3}], bytes(64)), "bad shape 3"),
    (table_file([entry("a", "int8", (1,), 0) | {"shape": [1] * 40}], bytes(64)), "bad shape"),
    (table_file([entry("a", "int8", (1,), 32)], bytes(64)), "bad offset 32"),
    (table_file([entry("a", "int8", (1,), -64)], bytes(64)), "bad offset -64"),
    (table_file([entry("a", "int8", (1,), 0.0)], bytes(64)), "bad offset 0.0"),
    (table_file([entry("a", "int8", (1,), 0, nbytes="1")], bytes(64)), "bad nbytes '1'"),
    (table_file([entry("a", "int32", (2,), 0, nbytes=4)], bytes(64)), r"nbytes 4 does not match shape \[2\] x int32"),
    (table_file([entry("a", "int32", (17,), 0)], bytes(64)), r"bytes \[0, 68\) are out of bounds of the 64-byte"),
    (table_file([entry("a", "int8", (1,), 128)], bytes(64)), "out of bounds"),
    (table_file([entry("a", "int64", (16,), 0), entry("b", "int8", (1,), 64)], bytes(128)),
     r"arrays 'a' \[0, 128\) and 'b' \[64, 65\) overlap"),
]


@pytest.mark.parametrize("raw,message", BAD, ids=[f"{i}-{m[:30]}" for i, (_, m) in enumerate(BAD)])
def test_corrupt_files_raise_model_file_error(tmp_path, raw, message):
    with pytest.raises(ModelFileError, match=message) as exc:
        load_bytes(tmp_path, raw)
    assert str(tmp_path / "bad.swm") in str(exc.value)


def test_header_length_beyond_file_with_valid_checksum(tmp_path):
    body = MAGIC + struct.pack("<II", 1, 10 ** 9) + b"{}"
    with pytest.raises(ModelFileError, match="header length 1000000000 exceeds the 2 bytes available"):
        load_bytes(tmp_path, body + hashlib.sha256(body).digest())


def test_zero_size_arrays_may_share_offsets(tmp_path):
    raw = table_file([entry("a", "int8", (0,), 0), entry("b", "float64", (0, 3), 0), entry("c", "int8", (2,), 0)],
                     bytes([7, 9]) + bytes(62))
    header, arrays = load_bytes(tmp_path, raw)
    assert arrays["a"].shape == (0,) and arrays["b"].shape == (0, 3) and arrays["c"].tolist() == [7, 9]


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="cannot read file") as exc:
        load_container(tmp_path / "missing.swm")
    assert isinstance(exc.value.__cause__, FileNotFoundError)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ModelFileError, match="cannot read file"):
        load_container(tmp_path)


def test_checksum_mismatch_detected(tmp_path):
    p = tmp_path / "m.swm"
    save_container(p, HEADER, {"w": np.arange(100, dtype=np.int32)})
    raw = bytearray(p.read_bytes())
    raw[-40] ^= 0x01  # a byte inside the last array
    p.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        load_container(p)


@pytest.mark.parametrize("content", [b"root:x:0:0:root:/root:/bin/bash\n" * 4, b"\x89SPKWIRF" + bytes(40),
                                     b"SECRET=hunter2\n"])
def test_wrong_magic_message_carries_none_of_the_file(tmp_path, content):
    """A reload reply goes to the network: refusing a non-model file must not quote its bytes."""
    p = tmp_path / "passwd"
    p.write_bytes(content)
    with pytest.raises(ModelFileError, match="not a spikewire model file") as exc:
        load_container(p)
    text = str(exc.value).replace(str(p), "").replace(repr(MAGIC), "")
    for k in range(4, len(content) + 1):
        for i in range(len(content) - k + 1):
            chunk = content[i:i + k]
            assert chunk.decode("latin-1") not in text and repr(chunk)[2:-1] not in text, (chunk, text)
        if k > 6:
            break


def test_checksum_message_carries_no_digest_bytes(tmp_path):
    p = tmp_path / "m.swm"
    save_container(p, HEADER, {"w": np.arange(10, dtype=np.int32)})
    raw = bytearray(p.read_bytes())
    raw[-40] ^= 0x01
    p.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="checksum mismatch") as exc:
        load_container(p)
    stored, computed = bytes(raw[-32:]), hashlib.sha256(bytes(raw[:-32])).digest()
    assert stored.hex()[:8] not in str(exc.value) and computed.hex()[:8] not in str(exc.value)


def test_fifo_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.swm"
    os.mkfifo(fifo)
    # opening a FIFO for reading blocks until a writer appears: give it one that writes nothing
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        with pytest.raises(ModelFileError, match="not a regular file"):
            load_container(fifo)
    finally:
        os.close(fd)


def test_size_limit_and_header_length_checked_before_reading(tmp_path):
    """A big file is refused from fstat and its 16-byte prefix; the rest is never read."""
    big = tmp_path / "big.swm"
    with open(big, "wb") as f:  # sparse: 64 MiB on paper, a prefix claiming a 1 GB header
        f.write(MAGIC + struct.pack("<II", CONTAINER_VERSION, 10 ** 9))
        f.truncate(64 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match="more than the 1048576-byte limit"):
            load_container(big, max_bytes=1 << 20)
        with pytest.raises(ModelFileError, match="header length 1000000000 exceeds"):
            load_container(big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


@pytest.mark.parametrize("claim", [2 ** 31, 2 ** 62])
def test_huge_array_claim_rejected_without_allocating(tmp_path, claim):
    raw = table_file([entry("w", "uint8", (claim,), 0)], bytes(64))
    p = tmp_path / "huge.swm"
    p.write_bytes(raw)
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match=f"bytes \\[0, {claim}\\) are out of bounds"):
            load_container(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # numpy reports its allocations to tracemalloc


# --- fuzzing --------------------------------------------------------------

FUZZ_ARRAYS = {"w_in": np.arange(-20, 20, dtype=np.int8).reshape(5, 8), "tau": np.float32([0.5, 2.0]),
               "empty": np.zeros(0, dtype=np.int64)}


@pytest.fixture
def valid_file(tmp_path):
    p = tmp_path / "good.swm"
    save_container(p, HEADER, FUZZ_ARRAYS)
    return p.read_bytes()


def mutate(data, raw: bytes) -> bytes:
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite"]), label="kind")
    pos = data.draw(st.integers(0, len(raw) - 1), label="pos")
    if kind == "flip":
        out = bytearray(raw)
        out[pos] ^= 1 << data.draw(st.integers(0, 7))
        return bytes(out)
    if kind == "truncate":
        return raw[:pos]
    if kind == "insert":
        return raw[:pos] + data.draw(st.binary(min_size=1, max_size=16)) + raw[pos:]
    if kind == "delete":
        return raw[:pos] + raw[pos + data.draw(st.integers(1, 16)):]
    blob = data.draw(st.binary(min_size=1, max_size=16))
    return raw[:pos] + blob + raw[pos + len(blob):]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutations_always_detected(tmp_path, valid_file, data):
    mutated = mutate(data, valid_file)
    p = tmp_path / "fuzz.swm"
    p.write_bytes(mutated)
    if mutated == valid_file:
        header, arrays = load_container(p)
        assert header == HEADER
        assert_same(arrays, FUZZ_ARRAYS)
    else:
        with pytest.raises(ModelFileError):
            load_container(p)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header_bytes=st.one_of(
    st.binary(max_size=200),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                 lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                 max_leaves=12).map(lambda o: json.dumps(o).encode()),
    st.fixed_dictionaries({"schema_version": st.integers(-2, 3), "arrays": st.lists(st.fixed_dictionaries({
        "name": st.sampled_from(["a", "b", ""]), "dtype": st.sampled_from(list(DTYPES) + ["bool"]),
        "shape": st.lists(st.integers(-1, 70), max_size=3), "offset": st.integers(-64, 256),
        "nbytes": st.integers(-1, 300)}), max_size=3)}).map(lambda o: json.dumps(o).encode()),
), data=st.binary(max_size=256))
def test_fuzz_crafted_headers_with_valid_checksum(tmp_path, header_bytes, data):
    """A crafted file (correct checksum) either loads consistently or raises ModelFileError."""
    p = tmp_path / "crafted.swm"
    p.write_bytes(build_raw({}, data, header_bytes=header_bytes))
    try:
        header, arrays = load_container(p)
    except ModelFileError:
        return
    assert isinstance(header, dict) and "arrays" not in header
    for name, a in arrays.items():
        assert a.dtype.name in DTYPES and a.nbytes <= len(data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrays=st.dictionaries(
    st.text(min_size=1, max_size=6),
    st.sampled_from(DTYPES).flatmap(lambda dt: st.lists(st.integers(0, 4), max_size=3).flatmap(
        lambda shape: st.just(np.arange(int(np.prod(shape)), dtype=dt).reshape(shape) * 3))),
    max_size=5))
def test_fuzz_roundtrip(tmp_path, arrays):
    p = tmp_path / "rt.swm"
    save_container(p, {"schema_version": 2}, arrays)
    header, got = load_container(p)
    assert header == {"schema_version": 2}
    assert_same(got, arrays)
