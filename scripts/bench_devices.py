#!/usr/bin/env python3
"""Device benchmark: our devices (served over vhost-user) against QEMU's own, same guest.

On QEMU microvm with TCG (what this kind of host runs the full stack on), alternating runs:
  blk:   the guest reads a 256 MiB disk sequentially (dd bs=1M); MiB/s in the guest, the same
         file read on the host, and device CPU per request: our backend's CPU time, or the CPU
         time of QEMU's main-loop thread (where its virtio-blk runs), divided by the requests
  vsock: 64 MiB echoed through the guest (full duplex); MiB/s each way and backend CPU per
         packet (QEMU has no user-space vsock device to compare with)
Prints a table, writes results/devices.csv.

  scripts/bench_devices.py [--runs N]
"""

import argparse
import csv
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUEST = Path(os.environ.get("VMPOD_GUEST_DIR", ROOT / "build/guest"))
BACKEND = ROOT / "target/release/vmpod-vhost-user"
QEMU = ROOT / "scripts/qemu-microvm.sh"
CLK_TCK = os.sysconf("SC_CLK_TCK")
DISK_MIB = 256
# Linux's virtio-blk issues reads of at most this size for sequential dd (max_sectors_kb).
REQUEST_BYTES = 128 << 10
VSOCK_MIB = 64
VSOCK_PACKET = 4096


def cpu_seconds(pid, tid=None):
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    fields = open(path).read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def start_backend(sock, *device_args):
    proc = subprocess.Popen([str(BACKEND), "--socket", str(sock), *device_args])
    deadline = time.monotonic() + 10
    while not sock.exists():
        if time.monotonic() > deadline:
            sys.exit(f"bench: backend never created {sock}")
        time.sleep(0.01)
    return proc


def qemu(cmdline, console, extra):
    return subprocess.Popen(
        [str(QEMU), "--accel", "tcg", "--memory", "256", "--kernel", str(GUEST / "vmlinux"),
         "--initrd", str(GUEST / "test-initramfs.cpio"), "--cmdline", cmdline,
         "--console", str(console), "--", *extra],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)


def qemu_main_thread_cpu(pid):
    """CPU seconds of QEMU's main loop thread (device emulation without an iothread)."""
    total = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        name = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
        if name.startswith("qemu-system"):
            total += cpu_seconds(pid, tid)
    return total


def blk_run(tmp, disk, ours):
    console = tmp / "console.log"
    console.unlink(missing_ok=True)
    backend = None
    if ours:
        sock = tmp / "blk.sock"
        backend = start_backend(sock, "--blk", f"{disk},ro")
        extra = ["-chardev", f"socket,id=b0,path={sock}", "-device", "vhost-user-blk,chardev=b0"]
    else:
        extra = ["-drive", f"file={disk},if=none,id=d0,format=raw,readonly=on",
                 "-device", "virtio-blk-device,drive=d0"]
    vm = qemu("console=ttyS0 vmpod.test=blk-read", console, extra)
    # Sample the device thread's CPU just before the VM exits: poll until the report appears.
    device_cpu = 0.0
    while vm.poll() is None:
        text = console.read_text(errors="replace") if console.exists() else ""
        try:
            device_cpu = cpu_seconds(backend.pid) if ours else qemu_main_thread_cpu(vm.pid)
        except (FileNotFoundError, ProcessLookupError):
            pass
        if "vmpod-init: blk-read" in text:
            break
        time.sleep(0.02)
    vm.wait(timeout=60)
    if backend:
        backend.wait(timeout=10)
    line = next(l for l in console.read_text().splitlines() if l.startswith("vmpod-init: blk-read"))
    parts = line.split()
    sectors, t0, t1 = int(parts[2]), float(parts[5]), float(parts[6])
    mib = sectors * 512 / (1 << 20)
    requests = sectors * 512 / REQUEST_BYTES
    return {"mib_s": mib / max(t1 - t0, 1e-6), "cpu_us_per_request": device_cpu / requests * 1e6}


def vsock_run(tmp):
    console = tmp / "console.log"
    console.unlink(missing_ok=True)
    sock, uds = tmp / "vs.sock", tmp / "vsock.sock"
    backend = start_backend(sock, "--vsock", f"3,{uds}")
    vm = qemu("console=ttyS0 vmpod.test=vsock-bulk", console,
              ["-chardev", f"socket,id=v0,path={sock}", "-device", "vhost-user-vsock-device,chardev=v0"])
    while "listening on 1024" not in (console.read_text(errors="replace") if console.exists() else ""):
        if vm.poll() is not None:
            sys.exit("bench: the guest ended before listening")
        time.sleep(0.02)
    cpu0 = cpu_seconds(backend.pid)
    total = VSOCK_MIB << 20
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(str(uds))
    conn.sendall(b"CONNECT 1024\n")
    line = b""
    while not line.endswith(b"\n"):
        line += conn.recv(1)
    chunk = bytes(range(256)) * 256
    start = time.monotonic()

    def send():
        sent = 0
        while sent < total:
            conn.sendall(chunk)
            sent += len(chunk)
        conn.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send)
    sender.start()
    received = 0
    while True:
        data = conn.recv(1 << 16)
        if not data:
            break
        received += len(data)
    elapsed = time.monotonic() - start
    sender.join()
    cpu = cpu_seconds(backend.pid) - cpu0
    conn.close()
    # The bench feeds only the bulk stream; the guest waits for 32 more: give them and finish.
    for _ in range(32):
        c = socket.socket(socket.AF_UNIX)
        c.connect(str(uds))
        c.sendall(b"CONNECT 1024\n")
        c.shutdown(socket.SHUT_WR)
        while c.recv(4096):
            pass
        c.close()
    vm.wait(timeout=60)
    backend.wait(timeout=10)
    assert received == total, f"echo returned {received} of {total} bytes"
    packets = 2 * total / VSOCK_PACKET
    return {"mib_s": VSOCK_MIB / elapsed, "cpu_us_per_request": cpu / packets * 1e6}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args()
    for path in (BACKEND, GUEST / "vmlinux", GUEST / "test-initramfs.cpio"):
        if not path.exists():
            sys.exit(f"bench: {path} is missing; run `make build guest` first")

    rows = []
    with tempfile.TemporaryDirectory(prefix="vmpod-bench-") as tmp:
        tmp = Path(tmp)
        disk = tmp / "disk.img"
        with open(disk, "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(DISK_MIB):
                f.write(block)
        for i in range(args.runs):
            for name, ours in (("blk vmpod (vhost-user)", True), ("blk qemu (virtio-blk-device)", False)):
                r = blk_run(tmp, disk, ours)
                rows.append({"case": name, "run": i, **r})
                print(f"  {name} run {i}: {r['mib_s']:.0f} MiB/s, {r['cpu_us_per_request']:.1f} us/request",
                      file=sys.stderr)
            start = time.monotonic()
            with open(disk, "rb") as f:
                while f.read(1 << 20):
                    pass
            rows.append({"case": "blk host read (page cache)", "run": i,
                         "mib_s": DISK_MIB / (time.monotonic() - start)})
            r = vsock_run(tmp)
            rows.append({"case": "vsock vmpod (vhost-user) echo", "run": i, **r})
            print(f"  vsock run {i}: {r['mib_s']:.0f} MiB/s each way, {r['cpu_us_per_request']:.1f} us/packet",
                  file=sys.stderr)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "devices.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["case", "run", "mib_s", "cpu_us_per_request"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"\n{'case':34} {'MiB/s':>10} {'device CPU us/request':>22}   (medians of {args.runs}, QEMU TCG guest)")
    for case in dict.fromkeys(r["case"] for r in rows):
        mib = statistics.median(r["mib_s"] for r in rows if r["case"] == case)
        cpus = [r["cpu_us_per_request"] for r in rows if r["case"] == case and "cpu_us_per_request" in r]
        cpu = f"{statistics.median(cpus):22.1f}" if cpus else f"{'-':>22}"
        print(f"{case:34} {mib:10.0f} {cpu}")
    print(f"csv: {out / 'devices.csv'}")


if __name__ == "__main__":
    main()
