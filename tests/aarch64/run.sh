#!/usr/bin/env bash
# The Python package on aarch64 without a Pi: Debian bookworm's arm64 CPython 3.11 under
# qemu-user importing the cross-built cffi extension (../shared recipe "aarch64", b1).
#   sysroot  arm64 .debs fetched with a PRIVATE apt state (the host's apt config, architectures
#            and installed packages are not touched), extracted, never installed
#   wheels   numpy, cffi, aiomqtt, sounddevice (the host's versions) as aarch64/pure wheels
#   package  tests/aarch64/cross_build.py: the package tree + the extension from runtime/_build.py
# Checks, all in the arm64 Python under qemu-aarch64 -L SYSROOT:
#   1. spikewire imports, the extension is the aarch64 one and passes the ABI check
#   2. the pipeline golden record (front end, core, decision; tests/golden/pipeline_v1.json)
#   3. `spikewire demo` prints exactly the keyword lines the host prints
#   4. without PortAudio: `spikewire devices` and `run --source mic` fail with a clear message
#      (no traceback); everything else above ran without it
# The sysroot and wheels are cached in $SPIKEWIRE_AARCH64_CACHE (default ~/.cache/spikewire-aarch64),
# keyed by package list and versions; a lock makes parallel runs safe.
# Called by tests/run.sh; SPIKEWIRE_REQUIRE_AARCH64=1 (CI) makes missing tools an error.
# --prepare: only fetch and cross-build, then print SYSROOT=, SITE=, PKG= lines (for
# `spikewire bench cpu --aarch64`); SPIKEWIRE_AARCH64_OUT sets the build folder.
set -euo pipefail
PREPARE=0
[ "${1:-}" = --prepare ] && PREPARE=1
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
REQUIRE=${SPIKEWIRE_REQUIRE_AARCH64:-0}

for tool in aarch64-linux-gnu-gcc qemu-aarch64 apt-get dpkg-deb; do
    if ! command -v "$tool" >/dev/null; then
        if [ "$REQUIRE" = 1 ]; then echo "aarch64 python: $tool missing (SPIKEWIRE_REQUIRE_AARCH64=1)" >&2; exit 1; fi
        echo "== aarch64 python SKIPPED (no $tool)"; exit 0
    fi
done

t0=$(date +%s)
CACHE=${SPIKEWIRE_AARCH64_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spikewire-aarch64}
mkdir -p "$CACHE"
out=${SPIKEWIRE_AARCH64_OUT:-tests/aarch64/build}
rm -rf "$out"; mkdir -p "$out"

SUITES="bookworm bookworm-security"
# runtime closure of these (with dependencies) + the headers package alone
RUNTIME_PKGS="python3.11-minimal libpython3.11-stdlib libstdc++6"  # numpy wheels link libstdc++ (manylinux allows it)
HEADER_PKGS="libpython3.11-dev"
# parts of the closure that only matter to an installed system (maintainer scripts), never imported
EXCLUDE='^(dpkg|tar|install-info|perl|perl-base|perl-modules-.*|libperl.*|mailcap|media-types|mime-support|readline-common)$'
WHEELS=()
for p in numpy cffi aiomqtt paho-mqtt sounddevice; do
    WHEELS+=("$p==$($PY -c "import importlib.metadata as m; print(m.version('$p'))")")
done

key() { printf '%s\n' "$@" | sha256sum | cut -c1-16; }
SYSROOT=$CACHE/sysroot-$(key "$SUITES" "$RUNTIME_PKGS" "$HEADER_PKGS" "$EXCLUDE" v1)
SITE=$CACHE/site-$(key "${WHEELS[@]}" v1)

exec 8>"$CACHE/lock"
flock 8
if [ ! -x "$SYSROOT/usr/bin/python3.11" ]; then
    echo "== aarch64 python: fetching Debian arm64 CPython into $SYSROOT"
    tmp=$(mktemp -d "$CACHE/tmp.XXXXXX")
    A=$tmp/apt
    mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/parts" "$A/prefs" "$tmp/debs" "$tmp/root"
    : > "$A/status"
    for s in $SUITES; do
        case $s in *-security) url=http://deb.debian.org/debian-security ;; *) url=http://deb.debian.org/debian ;; esac
        echo "deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $url $s main"
    done > "$A/sources.list"
    APT=(-o "Dir::Etc::SourceList=$A/sources.list" -o "Dir::Etc::SourceParts=$A/parts"
         -o "Dir::Etc::Preferences=$A/prefs/none" -o "Dir::Etc::PreferencesParts=$A/prefs"
         -o "Dir::State=$A" -o "Dir::State::Lists=$A/lists" -o "Dir::State::status=$A/status"
         -o "Dir::Cache=$A/cache" -o "APT::Architecture=arm64" -o "APT::Architectures::=arm64"
         -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root" -q)
    apt-get "${APT[@]}" update >/dev/null
    pkgs=$(apt-cache "${APT[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
               --no-replaces --no-enhances --no-pre-depends $RUNTIME_PKGS \
           | grep -E '^[a-z0-9]' | grep -vE "$EXCLUDE" | sort -u)
    (cd "$tmp/debs" && apt-get "${APT[@]}" download $pkgs $HEADER_PKGS >/dev/null)
    for d in "$tmp"/debs/*.deb; do dpkg-deb -x "$d" "$tmp/root"; done
    ls "$tmp/debs" > "$tmp/root/.spikewire-debs"
    # .pyc files once (the interpreter under qemu would compile on every start: 4-5x slower imports);
    # 3.11.x share one bytecode format, so the host's 3.11 writes them
    $PY -m compileall -q -j0 "$tmp/root/usr/lib/python3.11" >/dev/null || true
    mv "$tmp/root" "$SYSROOT"
    rm -rf "$tmp"
fi
if [ ! -d "$SITE" ]; then
    echo "== aarch64 python: aarch64 wheels ${WHEELS[*]} into $SITE"
    tmp=$(mktemp -d "$CACHE/tmp.XXXXXX")
    $PY -m pip install -q --disable-pip-version-check --target "$tmp/site" --only-binary=:all: \
        --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 --python-version 3.11 \
        --implementation cp "${WHEELS[@]}"
    $PY -m compileall -q -j0 "$tmp/site" >/dev/null || true
    mv "$tmp/site" "$SITE"
    rm -rf "$tmp"
fi
flock -u 8
echo "== aarch64 python: $(grep -o '^python3.11-minimal_[^_]*' "$SYSROOT/.spikewire-debs"), ${WHEELS[*]}"

$PY tests/aarch64/cross_build.py --sysroot "$SYSROOT" --out "$out/site" --work "$out/cffi"
$PY -m compileall -q "$out/site" tests/golden >/dev/null
if [ $PREPARE = 1 ]; then
    echo "SYSROOT=$SYSROOT"; echo "SITE=$SITE"; echo "PKG=$(cd "$out/site" && pwd)"; exit 0
fi

a64() {  # the arm64 interpreter; -P: only PYTHONPATH, never the checkout
    env -u PYTHONSAFEPATH PYTHONPATH="$out/site:$SITE" \
        timeout 600 qemu-aarch64 -L "$SYSROOT" "$SYSROOT/usr/bin/python3.11" -P "$@"
}

echo "== aarch64 python: import"
a64 - <<'EOF'
import platform, spikewire
from spikewire import _spikewire_c as ext
from spikewire.core import ABI_VERSION, _lib
assert platform.machine() == "aarch64", platform.machine()
assert _lib.sw_abi_version() == ABI_VERSION
print(f"  {platform.python_implementation()} {platform.python_version()} on {platform.machine()}, "
      f"spikewire {spikewire.__version__}, extension {ext.__file__.rsplit('/', 1)[-1]}, ABI {ABI_VERSION}")
EOF

echo "== aarch64 python: pipeline golden record"
a64 tests/golden/make_pipeline_golden.py --check

echo "== aarch64 python: front-end golden vectors (design from the configs + C kernel)"
a64 tests/golden/make_golden_frontend.py --check

echo "== aarch64 python: spikewire demo == x86-64"
$PY -P -m spikewire.cli demo > "$out/demo_x86.txt" 2>/dev/null
a64 -m spikewire.cli demo > "$out/demo_a64.txt" 2>"$out/demo_a64.err" || { cat "$out/demo_a64.err" >&2; exit 1; }
[ -s "$out/demo_x86.txt" ] || { echo "host demo printed no keywords" >&2; exit 1; }
cmp "$out/demo_x86.txt" "$out/demo_a64.txt" || { diff "$out/demo_x86.txt" "$out/demo_a64.txt" >&2; exit 1; }
echo "  $(wc -l < "$out/demo_a64.txt") keyword lines identical"

echo "== aarch64 python: no PortAudio"
expect_clear_error() {  # expected exit code, then the command
    local want=$1; shift
    set +e; a64 -m spikewire.cli "$@" > "$out/np.out" 2> "$out/np.err"; local rc=$?; set -e
    if [ $rc != "$want" ] || ! grep -q "PortAudio" "$out/np.err" || grep -q "Traceback" "$out/np.err"; then
        echo "spikewire $*: exit $rc (want $want), stderr:" >&2; cat "$out/np.err" >&2; exit 1
    fi
    echo "  spikewire $*: exit $rc: $(head -c 160 "$out/np.err")"
}
ls "$SYSROOT"/usr/lib/aarch64-linux-gnu/libportaudio* >/dev/null 2>&1 && { echo "sysroot has PortAudio" >&2; exit 1; }
expect_clear_error 1 devices
expect_clear_error 2 run --source mic --duration 1
echo "== aarch64 python: OK in $(( $(date +%s) - t0 )) s"
