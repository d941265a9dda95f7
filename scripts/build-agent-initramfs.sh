#!/usr/bin/env bash
# Builds the guest's initramfs: vmpod-agent as /init and the console device node, nothing else.
#
#   build-agent-initramfs.sh AGENT_BINARY OUT_DIR    # writes OUT_DIR/initramfs.cpio
set -euo pipefail
agent=${1:?usage: build-agent-initramfs.sh AGENT_BINARY OUT_DIR}
out=${2:?usage: build-agent-initramfs.sh AGENT_BINARY OUT_DIR}
[ -x "$agent" ] || { echo "build-agent-initramfs: $agent is missing (make build)" >&2; exit 1; }
if readelf -d "$agent" 2>/dev/null | grep -q NEEDED; then
    echo "build-agent-initramfs: $agent is dynamically linked; build it with crt-static" >&2
    exit 1
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/dev"
cp "$agent" "$root/init"
# The kernel gives PID 1 /dev/console as stdio only if the node exists before devtmpfs.
mknod -m 600 "$root/dev/console" c 5 1
mkdir -p "$out"
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) > "$out/initramfs.cpio.tmp"
mv "$out/initramfs.cpio.tmp" "$out/initramfs.cpio"
echo "$out/initramfs.cpio"
