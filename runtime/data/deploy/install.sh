#!/bin/sh
# spikewire deploy bundle installer (made by `spikewire deploy bundle`; docs/raspberry-pi.md).
# Run from the unpacked bundle:  sudo ./install.sh
#   on a Raspberry Pi: apt packages, the spikewire user, /opt/spikewire/venv, the model under
#   /var/lib/spikewire/models, /etc/spikewire/device.toml (an existing one is kept), the systemd unit,
#   enabled and started.
#   --prefix DIR    install everything under DIR (paths in device.toml and the unit rewritten)
#   --no-system     no apt-get, no useradd, no systemctl (for tests)
#   --python PY     the interpreter for the venv (default python3)
#   --pip-args ARGS extra arguments for pip install (e.g. "--no-deps --no-build-isolation")
set -eu
PREFIX=""
SYSTEM=1
PYTHON=python3
PIP_ARGS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || { echo "install.sh: --prefix needs a directory" >&2; exit 2; }
                  PREFIX="$2"; shift 2 ;;
        --no-system) SYSTEM=0; shift ;;
        --python) [ $# -ge 2 ] || { echo "install.sh: --python needs an interpreter" >&2; exit 2; }
                  PYTHON="$2"; shift 2 ;;
        --pip-args) [ $# -ge 2 ] || { echo "install.sh: --pip-args needs a value" >&2; exit 2; }
                  PIP_ARGS="$2"; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -n "$PREFIX" ]; then
    mkdir -p "$PREFIX"
    PREFIX=$(cd "$PREFIX" && pwd)
fi
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE"
sha256sum -c --quiet SHA256SUMS || { echo "install.sh: bundle files do not match SHA256SUMS" >&2; exit 2; }
SDIST=$(ls spikewire-*.tar.gz)
OPT="$PREFIX/opt/spikewire"
ETC="$PREFIX/etc/spikewire"
VAR="$PREFIX/var/lib/spikewire"
UNITDIR="$PREFIX/etc/systemd/system"
rewrite() {  # the bundle's absolute paths -> under PREFIX
    sed -e "s#/opt/spikewire#$OPT#g" -e "s#/etc/spikewire#$ETC#g" -e "s#/var/lib/spikewire#$VAR#g" "$1"
}

if [ "$SYSTEM" = 1 ]; then
    apt-get update
    apt-get install -y build-essential python3-dev python3-venv libportaudio2
    id spikewire >/dev/null 2>&1 || \
        useradd --system --home-dir /var/lib/spikewire --create-home --groups audio spikewire
fi
mkdir -p "$OPT" "$ETC" "$VAR/models" "$UNITDIR"
[ -x "$OPT/venv/bin/python" ] || "$PYTHON" -m venv "$OPT/venv"
# shellcheck disable=SC2086  # PIP_ARGS is a list of words
"$OPT/venv/bin/python" -m pip install -q $PIP_ARGS "$HERE/$SDIST"
cp models/*.swm "$VAR/models/"
if [ -e "$ETC/device.toml" ]; then
    echo "install.sh: keeping the existing $ETC/device.toml (the bundle's is device.toml here)" >&2
else
    rewrite device.toml > "$ETC/device.toml"
fi
rewrite spikewire.service > "$UNITDIR/spikewire.service"
if [ "$SYSTEM" = 1 ]; then
    chown -R spikewire:spikewire "$VAR"
    systemctl daemon-reload
    systemctl enable --now spikewire
    systemctl restart spikewire
fi
echo "install.sh: installed $SDIST into $OPT/venv; unit $UNITDIR/spikewire.service"
