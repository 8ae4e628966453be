"""Every reader of a file the operator names refuses what is not a regular file at once and checks the
size before reading (runtime/safefile.py, docs/security.md): a FIFO used to block `open` for good (a
model, a checkpoint, the run config, the password file, a TLS CA file), and /dev/zero never ends (a
checkpoint or the run config was read until memory ran out).

Each call runs on a thread joined with a bound: a reader that blocks fails the test instead of hanging
it (the FIFO is then opened for writing, which releases the blocked reader)."""
from __future__ import annotations

import os
import threading

import pytest

from spikewire import checkpoint, safefile
from spikewire.audio import WavReader
from spikewire.cli import MAX_CONFIG_BYTES, _load_run_config, _UsageError
from spikewire.credentials import CredentialsError, read_password_file
from spikewire.model import Model
from spikewire.modelfile import ModelFileError, load_container
from spikewire.sinks import read_spike_file


def bounded_call(fn, path, timeout=10.0):
    """fn() on a thread; returns its result or exception. Fails if it is still running after ``timeout``."""
    out: list = []

    def go():
        try:
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 - returned to the caller to check
            out.append(e)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        if os.path.exists(path) and not os.path.isfile(path):
            try:  # release a reader blocked on a FIFO
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        t.join(5)
        pytest.fail(f"reading {path} blocked for {timeout} s")
    return out[0]


def _tls(p):
    from spikewire.mqtt import tls_context
    from spikewire.wire import parse_mqtt_url

    return tls_context(parse_mqtt_url(f"mqtts://127.0.0.1:8883/x?cafile={p}"))


def _mqtt_tls_error():
    from spikewire.mqtt import MqttTlsError

    return MqttTlsError


READERS = {
    # name: (call, error type(s) it must raise, text the message must hold)
    "model": (lambda p: Model.load(p), ModelFileError, "not a regular file"),
    "container": (lambda p: load_container(p), ModelFileError, "not a regular file"),
    "wav": (lambda p: WavReader(p), OSError, "not a regular file"),
    "password": (lambda p: read_password_file(p), CredentialsError, "not a regular file"),
    "config": (lambda p: _load_run_config(p), _UsageError, "not a regular file"),
    "spike file": (lambda p: read_spike_file(p), OSError, "not a regular file"),
    "tls ca": (_tls, None, "not a regular file"),
    "checkpoint": (lambda p: checkpoint.read_newest(p, n_in=1, n_hid=1, n_out=1), None, "not a regular file"),
}


@pytest.fixture(params=["fifo", "dev-zero", "folder"])
def not_a_file(request, tmp_path):
    if request.param == "fifo":
        p = tmp_path / "pipe"
        os.mkfifo(p)
        return str(p)
    if request.param == "folder":
        return str(tmp_path)
    return "/dev/zero"


@pytest.mark.parametrize("reader", sorted(READERS))
def test_readers_refuse_what_is_not_a_regular_file_at_once(reader, not_a_file):
    call, err, text = READERS[reader]
    out = bounded_call(lambda: call(not_a_file), not_a_file)
    if reader == "checkpoint":   # refusals are reported, the pipeline starts from the model's weights
        assert out[0] is None and out[1] is None and len(out[2]) == 1 and text in out[2][0], out
        return
    err = err or _mqtt_tls_error()
    assert isinstance(out, err), repr(out)
    assert text in str(out), str(out)


def test_sizes_are_checked_before_reading(tmp_path):
    """Sparse files larger than each reader's limit: refused from fstat, nothing of that size read."""
    import tracemalloc

    def sparse(name, size):
        p = tmp_path / name
        with open(p, "wb") as f:
            f.truncate(size)
        return str(p)

    cases = [
        (lambda: _load_run_config(sparse("big.toml", MAX_CONFIG_BYTES + 1)), _UsageError, "more than the 1048576"),
        (lambda: read_password_file(sparse("pw", 4097)), CredentialsError, "longer than 4096 bytes"),
        (lambda: checkpoint.read_newest(sparse("ck", checkpoint.MAX_BYTES + 1), n_in=1, n_hid=1, n_out=1),
         None, "more than a checkpoint can be"),
        (lambda: safefile.read_regular(sparse("x", 1 << 30), 1 << 20), safefile.FileTooLargeError,
         "1073741824 bytes, more than the 1048576-byte limit"),
    ]
    for fn, err, text in cases:
        tracemalloc.start()
        try:
            try:
                out = fn()
            except Exception as e:  # noqa: BLE001
                out = e
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20, peak
        if err is None:
            assert out[0] is None and text in out[2][0], out
        else:
            assert isinstance(out, err) and text in str(out), repr(out)


def test_read_regular_reads_a_regular_file(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert safefile.read_regular(p, 3) == b"abc"
    with pytest.raises(safefile.FileTooLargeError):
        safefile.read_regular(p, 2)
    with pytest.raises(FileNotFoundError):
        safefile.read_regular(tmp_path / "missing", 10)
