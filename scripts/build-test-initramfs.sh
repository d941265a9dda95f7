#!/usr/bin/env bash
# Builds the test initramfs (busybox-static from Debian) into OUT_DIR/test-initramfs.cpio.
#
# Its /init reports what the guest sees (vCPUs, RAM, kernel, uptime) on one line, writes the
# boot-timer byte, and reboots; "vmpod.test=panic" on the command line makes it panic instead,
# "vmpod.test=wait" keeps it running (for memory measurements), "vmpod.test=devices" exercises
# the virtio disks and rng, "vmpod.test=vsock" the vsock device, "vmpod.test=net" the network
# (see vmm/tests/devices.rs); "blk-read", "vsock-bulk" and "net-bulk" serve the device benchmark,
# "fs-bench" the virtio-fs one.
set -euo pipefail
out=${1:?usage: build-test-initramfs.sh OUT_DIR}
busybox=/bin/busybox
if [ ! -x "$busybox" ] || readelf -d "$busybox" 2>/dev/null | grep -q NEEDED; then
    echo "build-test-initramfs: $busybox is missing or not static (apt-get install busybox-static)" >&2
    exit 1
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,dev,proc,sys,mnt}
cp "$busybox" "$root/bin/busybox"
# The guest side of the vsock tests (static glibc: no musl here).
gcc -static -O2 -Wall -o "$root/bin/vsock-test" "$(dirname "$0")/../vmm/tests/guest/vsock-test.c"
# Device nodes in the archive itself, so /init can signal boot-done before mounting anything.
mknod -m 600 "$root/dev/console" c 5 1
mknod -m 600 "$root/dev/port" c 1 4
printf '\173' > "$root/boot-done.byte"
cat > "$root/init" <<'INIT'
#!/bin/busybox sh
# Under kvm-pvm a fresh process now and then starts with a zero FS base and dies on its first
# TLS access, before doing anything (guest-kernel/README.md). Each set-up step that starts a
# process is therefore tried again, and the report below uses shell built-ins only.
retry() {
    for try in 1 2 3; do
        "$@" && return 0
        echo "vmpod-init: retrying $1 (try $try failed)"
    done
    return 1
}
# Boot-timer byte (123 to port 0x3f0) first: it marks "user space is running".
retry /bin/busybox dd if=/boot-done.byte of=/dev/port bs=1 seek=1008 count=1 2>/dev/null
retry /bin/busybox --install -s /bin
retry mount -t proc proc /proc
retry mount -t sysfs sys /sys
retry mount -t devtmpfs dev /dev
# RAM as the firmware map says: the end of the last "System RAM" range, in MiB.
ram_end=0
while read -r range _ kind rest; do
    case "$kind $rest" in "System RAM"*) ram_end=$(( 0x${range#*-} + 1 ));; esac
done < /proc/iomem
cpus=0
while read -r key _; do
    [ "$key" = processor ] && cpus=$((cpus + 1))
done < /proc/cpuinfo
read -r kernel < /proc/sys/kernel/osrelease
read -r uptime _ < /proc/uptime
read -r cmdline < /proc/cmdline
echo "vmpod-init: cpus=$cpus ram_mib=$((ram_end >> 20)) kernel=$kernel uptime=$uptime"
case " $cmdline " in
    *" vmpod.test=panic "*) echo "vmpod-init: exiting to make the kernel panic"; exit 1 ;;
    *" vmpod.test=wait "*) echo "vmpod-init: waiting"; exec sleep 100000 ;;
    *" vmpod.test=vsock "*)
        # Guest-initiated first (the host listens on <socket>_5000), then an echo server on
        # port 1024 for a host-initiated connection.
        vsock-test connect 5000 "hello from the guest"
        vsock-test echo 1024 ;;
    *" vmpod.test=vsock-bulk "*)
        # One 64 MiB full-duplex stream, then 32 concurrent ones.
        vsock-test echo 1024 33 ;;
    *" vmpod.test=net "*)
        # The host side is 10.77.0.1 on the tap, with a file server on port 8080.
        ip link set eth0 up && ip addr add 10.77.0.2/24 dev eth0
        ping -c 1 -W 20 10.77.0.1 >/dev/null && echo "vmpod-init: ping ok"
        wget -q -O /payload.bin http://10.77.0.1:8080/payload.bin &&
            echo "vmpod-init: fetched sha256 $(sha256sum /payload.bin)" ;;
    *" vmpod.test=net-bulk "*)
        # TCP throughput: the host (10.77.0.1) sends on port 5001 until it closes, then
        # receives vmpod.mib MiB on port 5002; the host times both.
        mib=16
        for word in $cmdline; do
            case "$word" in vmpod.mib=*) mib=${word#vmpod.mib=} ;; esac
        done
        ip link set eth0 up && ip addr add 10.77.0.2/24 dev eth0
        ping -c 1 -W 20 10.77.0.1 >/dev/null && echo "vmpod-init: ping ok"
        nc 10.77.0.1 5001 </dev/null >/dev/null && echo "vmpod-init: net download done"
        dd if=/dev/zero bs=64k count=$((mib * 16)) 2>/dev/null | nc 10.77.0.1 5002 >/dev/null &&
            echo "vmpod-init: net upload done" ;;
    *" vmpod.test=fs-bench "*)
        # The virtio-fs benchmark (scripts/bench_fs_servers.py): the shared directory brings its
        # own workload, so every server (vmpod-vmm's, virtiofsd, QEMU's 9p) runs the same steps.
        { mount -t virtiofs bench /mnt 2>/dev/null ||
            mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=mmap bench /mnt; } &&
            sh /mnt/run.sh /mnt &&
            echo "vmpod-init: fs-bench done" ;;
    *" vmpod.test=ext4-write "*)
        mount -t ext4 /dev/vda /mnt && echo "survives a reboot" > /mnt/note.txt && umount /mnt &&
            echo "vmpod-init: ext4 written" ;;
    *" vmpod.test=ext4-read "*)
        mount -t ext4 -o ro /dev/vda /mnt && echo "vmpod-init: ext4 note: $(cat /mnt/note.txt)" ;;
    *" vmpod.test=blk-read "*)
        # Sequential read of the whole first disk, timed by the guest's clock.
        echo "vmpod-init: blk-read starting"
        read -r t0 _ < /proc/uptime
        dd if=/dev/vda of=/dev/null bs=1M 2>/dev/null
        read -r t1 _ < /proc/uptime
        echo "vmpod-init: blk-read $(cat /sys/block/vda/size) sectors in $t0 $t1" ;;
    *" vmpod.test=devices "*)
        # Disks found by serial: "layer0" a read-only erofs with payload.bin, "scratch" a raw
        # disk; and a virtio-rng.
        for d in /sys/block/vd*; do
            case "$(cat "$d/serial" 2>/dev/null)" in
                layer0) layer=/dev/${d##*/} ;;
                scratch) scratch=/dev/${d##*/} ;;
            esac
        done
        mount -t erofs -o ro "$layer" /mnt && echo "vmpod-init: erofs sha256 $(sha256sum /mnt/payload.bin)"
        # Under kvm-pvm a fresh process now and then starts with a zero FS base and dies on
        # its first TLS access (guest-kernel/README.md); such a try is retried, and said so.
        for try in 1 2 3; do
            rng=$(head -c 16 /dev/hwrng | od -An -tx1 | tr -d ' \n')
            [ ${#rng} = 32 ] && break
            echo "vmpod-init: retrying the hwrng read (try $try failed)"
        done
        echo "vmpod-init: hwrng $rng"
        echo "written by the guest" | dd of="$scratch" bs=512 conv=sync,fsync 2>/dev/null && echo "vmpod-init: scratch written"
        if dd if=/dev/zero of="$layer" bs=512 count=1 conv=fsync 2>/dev/null; then
            echo "vmpod-init: layer written"
        else
            echo "vmpod-init: layer write refused"
        fi ;;
esac
# kvm-pvm's FS-base flake (guest-kernel/README.md) can kill the reboot process too; init must
# not fall off the end (the kernel would panic), so it tries again.
for try in 1 2 3; do
    reboot -f
    echo "vmpod-init: retrying the reboot (try $try failed)"
done
INIT
chmod +x "$root/init"
mkdir -p "$out"
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) > "$out/test-initramfs.cpio"
echo "$out/test-initramfs.cpio"
