#!/usr/bin/env bash
# Builds a busybox root filesystem (Debian's busybox-static) as a directory and as an erofs
# image: what the agent tests (the image) and the CLI tests (`--rootfs`, the directory) run.
#
#   build-busybox-rootfs.sh OUT_DIR     # writes OUT_DIR/busybox-rootfs/ and OUT_DIR/busybox.erofs
set -euo pipefail
out=${1:?usage: build-busybox-rootfs.sh OUT_DIR}
busybox=/bin/busybox
if [ ! -x "$busybox" ] || readelf -d "$busybox" 2>/dev/null | grep -q NEEDED; then
    echo "build-busybox-rootfs: $busybox is missing or not static (apt-get install busybox-static)" >&2
    exit 1
fi
mkdir -p "$out"
root="$out/busybox-rootfs"
rm -rf "$root"
mkdir -p "$root"/{bin,dev,etc,proc,sys,tmp,root,home,var,run}
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' > "$root/etc/group"
# Fixed timestamps: the same busybox gives the same tree (and the same cached layer for
# `vmpod run --rootfs`), and the same image.
find "$root" -exec touch -h -d @0 {} +
mkfs.erofs --quiet --all-root -T0 -U 00000000-0000-0000-0000-000000000001 "$out/busybox.erofs.tmp" "$root" >/dev/null
mv "$out/busybox.erofs.tmp" "$out/busybox.erofs"
echo "$out/busybox.erofs"
