"""Golden vectors of the audio front end (tests/golden/frontend_v1.txt) pin it across releases and CPUs.

Each case stores a config and input rate, the kernel parameters designed from
them (float32 bit patterns), a signal and the events it gives (count per step
and a hash).  Checked here: the design from the config (float64 math rounded
to float32), the C kernel and the numpy reference on the stored parameters, in
one call and in odd block sizes, and the public ``encode``.  The same file is
checked by tests/c/test_frontend.c natively, with sanitizers, clang and on
aarch64 under qemu (tests/c/run.sh), and in the arm64 CPython (design + C
kernel, tests/aarch64/run.sh).
"""
from __future__ import annotations

import os
import sys

import pytest

from spikewire.frontend import Events, FrontEndConfig, _RefKernel, encode

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "golden"))
from make_golden_frontend import (OUT, c_kernel, check_design, check_events, read_golden,  # noqa: E402
                                  run_kernel)

CASES = [pytest.param(c, id=c.name) for c in read_golden()]


def test_golden_file_covers_the_settings():
    cases = [p.values[0] for p in CASES]
    assert len(cases) >= 5
    assert {c.params.norm for c in cases} == {0, 1}  # the log path and PCEN
    assert any(c.params.rs_up * c.params.rs_down > 1 for c in cases)  # the resampler
    assert any(c.config == FrontEndConfig() for c in cases)  # the default settings
    assert all(c.n_events > 100 for c in cases)


@pytest.mark.parametrize("case", CASES)
def test_design_from_the_config_matches_golden(case):
    check_design(case)


@pytest.mark.parametrize("case", CASES)
def test_c_kernel_matches_golden(case):
    check_events(case, *run_kernel(c_kernel(case.params), case.signal))


@pytest.mark.parametrize("case", CASES)
def test_c_kernel_in_odd_blocks_matches_golden(case):
    k = c_kernel(case.params)
    x, parts, pos, sizes = case.signal, [], 0, [1, 37, 160, 7, 999]
    while pos < len(x):
        n = sizes[len(parts) % len(sizes)]
        parts.append(k.process(x[pos:pos + n]))
        pos += n
    ev = Events.concat(parts + [k.flush()])
    check_events(case, ev.indptr, ev.channels)


@pytest.mark.parametrize("case", CASES)
def test_reference_kernel_matches_golden(case):
    check_events(case, *run_kernel(_RefKernel(case.params), case.signal))


@pytest.mark.parametrize("case", CASES)
def test_encode_matches_golden(case):
    ev = encode(case.signal, case.rate, case.config)
    check_events(case, ev.indptr, ev.channels)


def test_a_changed_golden_value_fails(tmp_path):
    """The checks can fail: one event more in one step of the stored counts is caught."""
    text = open(OUT).read()
    i = text.index("\ncounts ") + len("\ncounts ")
    j = text.index(" ", i)
    bad = tmp_path / "bad.txt"
    bad.write_text(text[:i] + str(int(text[i:j]) + 1) + text[j:])
    case = read_golden(str(bad))[0]
    with pytest.raises(AssertionError, match="events per step differ first at step 0"):
        check_events(case, *run_kernel(c_kernel(case.params), case.signal))
