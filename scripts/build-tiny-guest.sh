#!/usr/bin/env bash
# Assembles the tiny test guests (vmm/tests/guest/) into OUT_DIR:
#   tiny-guest.elf      32-bit PVH ELF (tiny.S)
#   tiny64-guest.elf    64-bit ELF without PVH note: the Linux 64-bit entry (tiny64.S)
#   tiny64-guest.bzImage  the same code behind a minimal bzImage setup header
set -euo pipefail
src=$(cd "$(dirname "$0")/../vmm/tests/guest" && pwd)
out=${1:?usage: build-tiny-guest.sh OUT_DIR}
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

link() { # NAME SOURCE SCRIPT
    as --64 -o "$tmp/$1.o" "$src/$2"
    ld -m elf_x86_64 -nostdlib --build-id=none -z noexecstack --no-warn-rwx-segments \
        -T "$src/$3" -o "$out/$1.elf" "$tmp/$1.o"
}
link tiny-guest tiny.S tiny.ld
link tiny64-guest tiny64.S tiny64.ld

# bzImage: one setup sector after the boot sector, then the kernel loaded at 1 MiB.
poke() { printf "$2" | dd of="$tmp/setup" bs=1 seek=$(($1)) conv=notrunc status=none; }
head -c 1024 /dev/zero > "$tmp/setup"
poke 0x1f1 '\001'              # setup_sects
poke 0x1fe '\125\252'          # boot_flag 0xaa55
poke 0x202 'HdrS'              # header magic
poke 0x206 '\014\002'          # boot protocol 2.12
poke 0x211 '\001'              # loadflags: LOADED_HIGH
poke 0x214 '\000\000\020\000'  # code32_start = 0x100000
objcopy -O binary "$out/tiny64-guest.elf" "$tmp/kernel.bin"
cat "$tmp/setup" "$tmp/kernel.bin" > "$out/tiny64-guest.bzImage"
