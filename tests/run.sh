#!/usr/bin/env bash
# The test command (README, second command; .ci/run calls exactly this).
# Installs what the tests need where it is missing, builds the package, runs
# the C core tests (sanitizers, aarch64 under qemu) and the pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# --- system packages: real broker, cross toolchain + qemu, audio stack -----
need=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto mosquitto-clients)
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
command -v clang >/dev/null || need+=(clang)
command -v systemd-analyze >/dev/null || need+=(systemd)
ldconfig -p 2>/dev/null | grep -q libportaudio.so.2 || need+=(libportaudio2)
command -v pulseaudio >/dev/null || need+=(pulseaudio pulseaudio-utils)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v sox >/dev/null || need+=(sox)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "== installing system packages: ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
        echo "== missing system packages (not root, cannot apt-get; tests needing them will fail): ${need[*]}"
    fi
fi
export PATH="$PATH:/usr/sbin"

# --- Python packages: torch CPU build first (a bare 'torch' would pull CUDA) --
# torch is required: the torch == core tests are part of the suite, never skipped.
$PY -m pip install -q --disable-pip-version-check "torch==2.13.0"
$PY -m pip install -q --disable-pip-version-check -e ".[test,train]"

# --- C core: sanitizers, baseline ISA, aarch64 ---------------------------------
SPIKEWIRE_REQUIRE_AARCH64=${CI:+1} bash tests/c/run.sh

# --- the Python package in an arm64 CPython under qemu (cross-built extension) ---
SPIKEWIRE_REQUIRE_AARCH64=${CI:+1} PYTHON=$PY bash tests/aarch64/run.sh

# --- Python suite (exit 5 = no tests collected is a failure here, not success) -
# -P / PYTHONSAFEPATH: the checkout is never on sys.path, so tests (and the CLI
# subprocesses they start) import the installed `spikewire`, never a folder here.
# SPIKEWIRE_NO_SKIP: a skipped test fails the run (tests/conftest.py).
export PYTHONSAFEPATH=1 SPIKEWIRE_NO_SKIP=1
set +e
$PY -P -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then
    echo "pytest collected no tests: treating as failure" >&2
    exit 1
fi
exit $rc
