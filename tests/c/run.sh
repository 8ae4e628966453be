#!/usr/bin/env bash
# C-level tests of the core: golden vectors and malformed calls.
#  1. native build with -fsanitize=address,undefined (both kernels, AVX2 clones on x86-64)
#  2. native build with SW_NO_CLONES (the baseline-ISA path)
#  3. clang build (the same -Werror flags; clones and SW_NO_CLONES), the same golden file and
#     front-end hash as gcc
#  4. aarch64 cross build run under qemu-user, if aarch64-linux-gnu-gcc and qemu-aarch64 exist
#     (tests/run.sh installs them); the same golden file must pass there.
# Every front-end build also checks the stored events of tests/golden/frontend_v1.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=tests/c/build
mkdir -p "$out"
FLAGS=(-std=c99 -O2 -g -Wall -Wextra -Werror -fsigned-char -ffp-contract=off -fwrapv -Icsrc -Itests/c)
SRC=(tests/c/test_core.c csrc/core.c)
FE_SRC=(tests/c/test_frontend.c csrc/frontend.c csrc/core.c)
GOLD=tests/golden/core_v1.txt
FE_GOLD=tests/golden/frontend_v1.txt

echo "== C core tests: native, ASan + UBSan"
cc "${FLAGS[@]}" -fsanitize=address,undefined -fno-sanitize-recover=all "${SRC[@]}" -o "$out/test_core_asan"
ASAN_OPTIONS=detect_leaks=1 "$out/test_core_asan" "$GOLD"
cc "${FLAGS[@]}" -fsanitize=address,undefined -fno-sanitize-recover=all "${FE_SRC[@]}" -lm -o "$out/test_fe_asan"
ASAN_OPTIONS=detect_leaks=1 "$out/test_fe_asan" "$FE_GOLD" | tee "$out/fe_x86_asan.txt"

echo "== C core tests: native, baseline ISA (SW_NO_CLONES)"
cc "${FLAGS[@]}" -O3 -DSW_NO_CLONES "${SRC[@]}" -o "$out/test_core_base"
"$out/test_core_base" "$GOLD"
cc "${FLAGS[@]}" -O3 "${FE_SRC[@]}" -lm -o "$out/test_fe"
"$out/test_fe" "$FE_GOLD" > "$out/fe_x86.txt" || { cat "$out/fe_x86.txt"; exit 1; }
grep fe_hash "$out/fe_x86.txt"
# the front end's float path must not depend on optimisation level or sanitizers
[ "$(grep fe_hash "$out/fe_x86.txt")" = "$(grep fe_hash "$out/fe_x86_asan.txt")" ] \
    || { echo "front-end hash differs between -O1+sanitizers and -O3" >&2; exit 1; }

if command -v clang >/dev/null; then
    echo "== C core tests: clang $(clang -dumpversion)"
    clang "${FLAGS[@]}" -O3 "${SRC[@]}" -o "$out/test_core_clang"
    "$out/test_core_clang" "$GOLD"
    clang "${FLAGS[@]}" -O3 -DSW_NO_CLONES "${SRC[@]}" -o "$out/test_core_clang_base"
    "$out/test_core_clang_base" "$GOLD"
    clang "${FLAGS[@]}" -O3 "${FE_SRC[@]}" -lm -o "$out/test_fe_clang"
    "$out/test_fe_clang" "$FE_GOLD" > "$out/fe_clang.txt" || { cat "$out/fe_clang.txt"; exit 1; }
    [ "$(grep fe_hash "$out/fe_x86.txt")" = "$(grep fe_hash "$out/fe_clang.txt")" ] \
        || { echo "front-end events differ between gcc and clang" >&2; exit 1; }
elif [ "${SPIKEWIRE_REQUIRE_AARCH64:-0}" = 1 ]; then
    echo "clang missing (SPIKEWIRE_REQUIRE_AARCH64=1 requires every compiler)" >&2
    exit 1
else
    echo "== C core tests: clang SKIPPED (no clang)"
fi

if command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null; then
    echo "== C core tests: aarch64 under qemu"
    aarch64-linux-gnu-gcc "${FLAGS[@]}" -O3 "${SRC[@]}" -o "$out/test_core_a64"
    qemu-aarch64 -L /usr/aarch64-linux-gnu "$out/test_core_a64" "$GOLD"
    aarch64-linux-gnu-gcc "${FLAGS[@]}" -O3 "${FE_SRC[@]}" -lm -o "$out/test_fe_a64"
    qemu-aarch64 -L /usr/aarch64-linux-gnu "$out/test_fe_a64" "$FE_GOLD" > "$out/fe_a64.txt" || { cat "$out/fe_a64.txt"; exit 1; }
    grep fe_hash "$out/fe_a64.txt"
    [ "$(grep fe_hash "$out/fe_x86.txt")" = "$(grep fe_hash "$out/fe_a64.txt")" ] \
        || { echo "front-end events differ between x86-64 and aarch64" >&2; exit 1; }
elif [ "${SPIKEWIRE_REQUIRE_AARCH64:-0}" = 1 ]; then
    echo "aarch64 cross compiler or qemu-aarch64 missing (SPIKEWIRE_REQUIRE_AARCH64=1)" >&2
    exit 1
else
    echo "== C core tests: aarch64 SKIPPED (no aarch64-linux-gnu-gcc / qemu-aarch64)"
fi

# The learning kernels (csrc/learn.c) against tests/golden/learn_v1.txt and the synaptic
# intelligence cases of learn_si_v1.txt, both kernels each time.
LEARN_SRC=(tests/c/test_learn.c csrc/learn.c)
LEARN_GOLD=(tests/golden/learn_v1.txt tests/golden/learn_si_v1.txt)
echo "== C learning tests: native, ASan + UBSan; baseline ISA"
cc "${FLAGS[@]}" -fsanitize=address,undefined -fno-sanitize-recover=all "${LEARN_SRC[@]}" -o "$out/test_learn_asan"
ASAN_OPTIONS=detect_leaks=1 "$out/test_learn_asan" "${LEARN_GOLD[@]}"
cc "${FLAGS[@]}" -O3 -DSW_NO_CLONES "${LEARN_SRC[@]}" -o "$out/test_learn_base"
"$out/test_learn_base" "${LEARN_GOLD[@]}"
cc "${FLAGS[@]}" -O3 "${LEARN_SRC[@]}" -o "$out/test_learn"
"$out/test_learn" "${LEARN_GOLD[@]}"
if command -v clang >/dev/null; then
    echo "== C learning tests: clang"
    clang "${FLAGS[@]}" -O3 "${LEARN_SRC[@]}" -o "$out/test_learn_clang"
    "$out/test_learn_clang" "${LEARN_GOLD[@]}"
fi
if command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null; then
    echo "== C learning tests: aarch64 under qemu"
    aarch64-linux-gnu-gcc "${FLAGS[@]}" -O3 "${LEARN_SRC[@]}" -o "$out/test_learn_a64"
    qemu-aarch64 -L /usr/aarch64-linux-gnu "$out/test_learn_a64" "${LEARN_GOLD[@]}"
fi
