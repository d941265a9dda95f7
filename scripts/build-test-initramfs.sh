#!/usr/bin/env bash
# Builds the test initramfs (busybox-static from Debian) into OUT_DIR/test-initramfs.cpio.
#
# Its /init reports what the guest sees (vCPUs, RAM, kernel, uptime) on one line, writes the
# boot-timer byte, and reboots; "vmpod.test=panic" on the command line makes it panic instead.
set -euo pipefail
out=${1:?usage: build-test-initramfs.sh OUT_DIR}
busybox=/bin/busybox
if [ ! -x "$busybox" ] || readelf -d "$busybox" 2>/dev/null | grep -q NEEDED; then
    echo "build-test-initramfs: $busybox is missing or not static (apt-get install busybox-static)" >&2
    exit 1
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,dev,proc,sys}
cp "$busybox" "$root/bin/busybox"
cat > "$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
# RAM as the firmware map says: the end of the last "System RAM" range, in MiB.
ram_end=0
while read -r range _ kind rest; do
    case "$kind $rest" in "System RAM"*) ram_end=$(( 0x${range#*-} + 1 ));; esac
done < /proc/iomem
echo "vmpod-init: cpus=$(nproc) ram_mib=$((ram_end >> 20)) memtotal_kb=$(awk '/MemTotal/{print $2}' /proc/meminfo) kernel=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)"
printf '\173' | dd of=/dev/port bs=1 seek=1008 count=1 2>/dev/null
case " $(cat /proc/cmdline) " in
    *" vmpod.test=panic "*) echo "vmpod-init: exiting to make the kernel panic"; exit 1 ;;
esac
reboot -f
INIT
chmod +x "$root/init"
mkdir -p "$out"
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) > "$out/test-initramfs.cpio"
echo "$out/test-initramfs.cpio"
