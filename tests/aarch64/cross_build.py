"""Cross-build spikewire for an arm64 CPython: the package tree plus the cffi extension.

Runs on the x86-64 host (tests/aarch64/run.sh). The extension's C comes from the same
build script as ``pip install`` (runtime/_build.py: ffibuilder, SOURCES, INCLUDE_DIRS,
PORTABLE_FLAGS); the host's cffi emits it, ``aarch64-linux-gnu-gcc`` compiles it against the
arm64 Python headers of the sysroot. The packages are laid out as pyproject.toml's
``[tool.setuptools.package-dir]`` says (runtime/ -> spikewire/, ...), without any host binary.

    python tests/aarch64/cross_build.py --sysroot ROOT --out SITE
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CC = os.environ.get("SPIKEWIRE_AARCH64_CC", "aarch64-linux-gnu-gcc")
EM_AARCH64 = 183
SKIP = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc", "*.o", "_spikewire_c.c", "build")


def load_build_script():
    spec = importlib.util.spec_from_file_location("_spikewire_build", os.path.join(ROOT, "runtime", "_build.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def copy_packages(site: str) -> list[str]:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        st = tomllib.load(f)["tool"]["setuptools"]
    dirs = st["package-dir"]
    for pkg in st["packages"]:
        dst = os.path.join(site, *pkg.split("."))
        if os.path.exists(dst):
            shutil.rmtree(dst)
        shutil.copytree(os.path.join(ROOT, dirs[pkg]), dst, ignore=SKIP)
    return list(st["packages"])


def build_extension(site: str, sysroot: str, work: str) -> str:
    b = load_build_script()
    os.makedirs(work, exist_ok=True)
    c_file = os.path.join(work, "_spikewire_c.c")
    b.ffibuilder.emit_c_code(c_file)
    pkg, name = b.MODULE.rsplit(".", 1)
    so = os.path.join(site, *pkg.split("."), name + ".abi3.so")
    pyinc = os.path.join(sysroot, "usr", "include", "python3.11")
    if not os.path.isfile(os.path.join(pyinc, "Python.h")):
        raise SystemExit(f"cross_build: no arm64 Python headers at {pyinc} (libpython3.11-dev:arm64)")
    cmd = [CC, *b.PORTABLE_FLAGS, "-fPIC", "-shared", "-Wall", "-Werror=implicit-function-declaration",
           "-I", pyinc, "-idirafter", os.path.join(sysroot, "usr", "include"),
           *[f"-I{os.path.join(ROOT, d)}" for d in b.INCLUDE_DIRS], c_file,
           *[os.path.join(ROOT, s) for s in b.SOURCES], "-o", so]
    subprocess.run(cmd, check=True)
    return so


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sysroot", required=True, help="extracted arm64 Debian packages (usr/include/python3.11)")
    ap.add_argument("--out", required=True, help="site folder to write the packages into")
    ap.add_argument("--work", help="folder for the generated C (default OUT/../cffi)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    pkgs = copy_packages(args.out)
    so = build_extension(args.out, args.sysroot, args.work or os.path.join(os.path.dirname(args.out), "cffi"))
    with open(so, "rb") as f:
        head = f.read(20)
    machine = int.from_bytes(head[18:20], "little")
    print(f"cross_build: {', '.join(pkgs)} -> {args.out}; {os.path.relpath(so, args.out)}: ELF e_machine {machine}")
    if head[:4] != b"\x7fELF" or machine != EM_AARCH64:
        print(f"cross_build: {so} is not an aarch64 ELF (e_machine {EM_AARCH64})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
