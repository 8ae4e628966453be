"""cffi (API mode) build script for the spikewire C core.

The one public header, csrc/spikewire.h, is what ``cdef`` reads: its
preprocessor lines are dropped here, everything else is plain declarations.
All ``csrc/*.c`` files are compiled into ``spikewire._spikewire_c``.
"""
from __future__ import annotations

import glob
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CSRC = os.path.join(ROOT, "csrc")

# Flags that keep results identical across CPUs (docs/fixed-point.md):
# plain char is signed everywhere, no FMA contraction, signed overflow wraps.
PORTABLE_FLAGS = ["-std=c99", "-O3", "-fsigned-char", "-ffp-contract=off", "-fwrapv"]
#: C sources and include folders, relative to the repository root (where setup.py is);
#: also used by the aarch64 cross build (tests/aarch64/cross_build.py).
SOURCES = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(CSRC, "*.c")))
INCLUDE_DIRS = [os.path.relpath(CSRC, ROOT)]
#: the extension module's import name (spikewire/_spikewire_c.abi3.so)
MODULE = "spikewire._spikewire_c"


def _cdef_text() -> str:
    with open(os.path.join(CSRC, "spikewire.h"), encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    keep = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#"):
            m = re.match(r"#define\s+(SW_\w+)\s+(-?\d+)\s*$", s)
            if m:
                keep.append(f"#define {m.group(1)} {m.group(2)}")
            continue
        keep.append(line)
    return "\n".join(keep)


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    MODULE,
    '#include <stdint.h>\n#include "spikewire.h"\n',
    sources=SOURCES,
    include_dirs=INCLUDE_DIRS,
    extra_compile_args=PORTABLE_FLAGS,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
