#!/usr/bin/env bash
# Assembles the tiny PVH test guest (vmm/tests/guest/tiny.S) into OUT_DIR/tiny-guest.elf.
set -euo pipefail
src=$(cd "$(dirname "$0")/../vmm/tests/guest" && pwd)
out=${1:?usage: build-tiny-guest.sh OUT_DIR}
mkdir -p "$out"
as --64 -o "$out/tiny.o" "$src/tiny.S"
ld -m elf_x86_64 -nostdlib --build-id=none -z noexecstack -T "$src/tiny.ld" -o "$out/tiny-guest.elf" "$out/tiny.o"
rm -f "$out/tiny.o"
