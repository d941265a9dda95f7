#!/usr/bin/env python3
"""Device benchmark: our devices (served over vhost-user) against QEMU's own, same guest.

On QEMU microvm with TCG (what this kind of host runs the full stack on), alternating runs:
  blk:   the guest reads a 256 MiB disk sequentially (dd bs=1M); MiB/s in the guest, the same
         file read on the host, and device CPU per request: our backend's CPU time, or the CPU
         time of QEMU's main-loop thread (where its virtio-blk runs), divided by the requests
  vsock: 64 MiB echoed through the guest (full duplex); MiB/s each way and backend CPU per
         packet (QEMU has no user-space vsock device to compare with)
  net:   TCP between a server in a network namespace (on the tap) and the guest, 64 MiB each
         way, timed on the host; QEMU's virtio-net on a tap (QEMU 7.2's `-netdev vhost-user`
         cannot drive our backend, see ARCHITECTURE.md) and CPU per frame of its main loop
And once on vmpod-vmm itself (kvm-pvm here: the guest kernel runs emulated, so its MiB/s say
little, but the VMM's device CPU per request does not depend on the guest's speed): the same
three workloads, smaller, with the CPU of vmpod-vmm's event-loop thread, where its devices run.
Prints a table, writes results/devices.csv and results/devices.png (gnuplot).

  scripts/bench_devices.py [--runs N] [--no-vmm]
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import charts, cpu_seconds, median_of, threads_cpu, write_csv

ROOT = Path(__file__).resolve().parent.parent
GUEST = Path(os.environ.get("VMPOD_GUEST_DIR", ROOT / "build/guest"))
BACKEND = ROOT / "target/release/vmpod-vhost-user"
VMM = ROOT / "target/release/vmpod-vmm"
QEMU = ROOT / "scripts/qemu-microvm.sh"
DISK_MIB = 256
# Linux's virtio-blk issues reads of at most this size for sequential dd (max_sectors_kb).
REQUEST_BYTES = 128 << 10
VSOCK_MIB = 64
VSOCK_PACKET = 4096
NET_MIB = 64
# Sizes for vmpod-vmm on kvm-pvm, where every guest kernel entry is emulated.
PVM_DISK_MIB, PVM_VSOCK_MIB, PVM_NET_MIB = 32, 4, 1
TAP = "vmtap0"


def start_backend(sock, *device_args, seccomp=True):
    filters = [] if seccomp else ["--no-seccomp"]
    proc = subprocess.Popen([str(BACKEND), "--socket", str(sock), *filters, *device_args])
    deadline = time.monotonic() + 10
    while not sock.exists():
        if time.monotonic() > deadline:
            sys.exit(f"bench: backend never created {sock}")
        time.sleep(0.01)
    return proc


def qemu(cmdline, console, extra, prefix=()):
    return subprocess.Popen(
        [*prefix, str(QEMU), "--accel", "tcg", "--memory", "256", "--kernel", str(GUEST / "vmlinux"),
         "--initrd", str(GUEST / "test-initramfs.cpio"), "--cmdline", cmdline,
         "--console", str(console), "--", *extra],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)


def qemu_main_thread_cpu(pid):
    """CPU seconds of QEMU's main loop thread (device emulation without an iothread)."""
    return threads_cpu(pid, lambda name: name.startswith("qemu-system"))


def console_text(console):
    return console.read_text(errors="replace") if console.exists() else ""


def sample_device_cpu(vm, console, start_marker, finished, sample):
    """The device's CPU seconds between the guest printing start_marker and finished() (or the
    VM's end), sampled every 20 ms, since the process may be gone when the work is over."""
    start = last = None
    while vm.poll() is None and not finished():
        try:
            last = sample()
        except (FileNotFoundError, ProcessLookupError):
            break
        if start is None and start_marker in console_text(console):
            start = last
        time.sleep(0.02)
    if start is None or last is None:
        sys.exit(f"bench: the guest never printed '{start_marker}'; console:\n{console_text(console)}")
    return last - start


def vmm(tmp, mode, console, devices, prefix=(), cmdline_extra="", seccomp=True):
    """vmpod-vmm with the test guest in `mode` and the given JSON device keys."""
    config = tmp / "vm.json"
    config.write_text(
        f'{{"kernel": "{GUEST / "vmlinux"}", "initrd": "{GUEST / "test-initramfs.cpio"}", '
        f'"memory_mib": 256, "console": "{console}", '
        f'"cmdline": "console=ttyS0 vmpod.test={mode} {cmdline_extra}", {devices}}}')
    filters = [] if seccomp else ["--no-seccomp"]
    return subprocess.Popen([*prefix, str(VMM), "--config", str(config), *filters],
                            stdin=subprocess.DEVNULL)


# Runs inside the bench's network namespace: times a download (the guest reads until the
# server closes) and an upload (the server reads until the guest closes), and counts the
# tap's frames; prints one line of results.
NET_SERVER = """
import socket, sys, time
mib, tap = int(sys.argv[1]), sys.argv[2]
def frames():
    base = f"/sys/class/net/{tap}/statistics/"
    return sum(int(open(base + f).read()) for f in ("rx_packets", "tx_packets"))
servers = []
for port in (5001, 5002):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(1)
    servers.append(s)
print("ready", flush=True)
chunk = bytes(range(256)) * 256
conn, _ = servers[0].accept()
f0, t0 = frames(), time.monotonic()
for _ in range(mib * 16):
    conn.sendall(chunk)
conn.shutdown(socket.SHUT_WR)
while conn.recv(65536):
    pass
down, f1 = time.monotonic() - t0, frames()
conn.close()
conn, _ = servers[1].accept()
t0, got = time.monotonic(), 0
while True:
    data = conn.recv(1 << 16)
    if not data:
        break
    got += len(data)
up, f2 = time.monotonic() - t0, frames()
print(down, up, got, f1 - f0, f2 - f1, flush=True)
"""


class NetNs:
    """A network namespace holding the tap the VM attaches to, deleted on exit."""

    def __init__(self):
        self.name = f"vmpod-bench-{os.getpid()}"

    def __enter__(self):
        subprocess.run(["ip", "netns", "del", self.name], stderr=subprocess.DEVNULL)
        for args in (["netns", "add", self.name], ["-n", self.name, "link", "set", "lo", "up"],
                     ["-n", self.name, "tuntap", "add", "dev", TAP, "mode", "tap"],
                     ["-n", self.name, "addr", "add", "10.77.0.1/24", "dev", TAP],
                     ["-n", self.name, "link", "set", TAP, "up"]):
            subprocess.run(["ip", *args], check=True)
        return self

    def __exit__(self, *_):
        subprocess.run(["ip", "netns", "del", self.name], check=True)

    def exec_prefix(self):
        return ["ip", "netns", "exec", self.name]


def net_run(tmp, on_vmm=False):
    console = tmp / "console.log"
    console.unlink(missing_ok=True)
    mib = PVM_NET_MIB if on_vmm else NET_MIB
    cmdline = f"vmpod.mib={mib}"
    with NetNs() as ns:
        server = subprocess.Popen([*ns.exec_prefix(), sys.executable, "-c", NET_SERVER, str(mib), TAP],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready", "bench: the TCP server did not start"
        if on_vmm:
            vm = vmm(tmp, "net-bulk", console,
                     f'"net": {{"tap": "{TAP}", "netns": "/run/netns/{ns.name}", "mac": "06:00:ac:10:00:02"}}',
                     cmdline_extra=cmdline)
        else:
            vm = qemu(f"console=ttyS0 vmpod.test=net-bulk {cmdline}", console,
                      ["-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no",
                       "-device", "virtio-net-device,netdev=n0,mac=06:00:ac:10:00:02"],
                      prefix=ns.exec_prefix())
        device_cpu = sample_device_cpu(vm, console, "ping ok", lambda: server.poll() is not None,
                                       lambda: cpu_seconds(vm.pid, vm.pid) if on_vmm else qemu_main_thread_cpu(vm.pid))
        # The VM may end first only on failure; the server's line is what counts.
        try:
            out, _ = server.communicate(timeout=600)
        finally:
            if server.poll() is None:
                server.kill()
        vm.wait(timeout=600)
    fields = out.split()
    if len(fields) != 5:
        sys.exit(f"bench: the TCP exchange did not finish; console:\n{console.read_text(errors='replace')}")
    down, up, got, frames_down, frames_up = float(fields[0]), float(fields[1]), int(fields[2]), int(fields[3]), int(fields[4])
    assert got == mib << 20, f"upload delivered {got} of {mib << 20} bytes"
    return [{"mib_s": mib / down, "cpu_us_per_request": None, "frames": frames_down},
            {"mib_s": mib / up, "cpu_us_per_request": None, "frames": frames_up}], device_cpu


def net_rows(tmp, name, run, on_vmm=False):
    (down, up), cpu = net_run(tmp, on_vmm)
    # The device's CPU covers both directions: spread per frame over all frames.
    per_frame = cpu / max(down["frames"] + up["frames"], 1) * 1e6
    rows = []
    for direction, r in (("host->guest", down), ("guest->host", up)):
        rows.append({"case": f"{name} tcp {direction}", "run": run, "mib_s": r["mib_s"],
                     "cpu_us_per_request": per_frame})
    return rows


def blk_run(tmp, disk, ours, on_vmm=False, seccomp=True):
    """`seccomp` False: our device process runs with its hidden --no-seccomp."""
    console = tmp / "console.log"
    console.unlink(missing_ok=True)
    backend = None
    if on_vmm:
        vm = vmm(tmp, "blk-read", console, f'"disks": [{{"path": "{disk}", "read_only": true}}]',
                 seccomp=seccomp)
        extra = None
    elif ours:
        sock = tmp / "blk.sock"
        backend = start_backend(sock, "--blk", f"{disk},ro", seccomp=seccomp)
        extra = ["-chardev", f"socket,id=b0,path={sock}", "-device", "vhost-user-blk,chardev=b0"]
    else:
        extra = ["-drive", f"file={disk},if=none,id=d0,format=raw,readonly=on",
                 "-device", "virtio-blk-device,drive=d0"]
    if extra is not None:
        vm = qemu("console=ttyS0 vmpod.test=blk-read", console, extra)
    if on_vmm:
        sample = lambda: cpu_seconds(vm.pid, vm.pid)
    elif ours:
        sample = lambda: cpu_seconds(backend.pid)
    else:
        sample = lambda: qemu_main_thread_cpu(vm.pid)
    done = lambda: " sectors in " in console_text(console)
    device_cpu = sample_device_cpu(vm, console, "blk-read starting", done, sample)
    vm.wait(timeout=600)
    if backend:
        backend.wait(timeout=10)
    line = next(l for l in console.read_text().splitlines() if " sectors in " in l)
    parts = line.split()
    sectors, t0, t1 = int(parts[2]), float(parts[5]), float(parts[6])
    mib = sectors * 512 / (1 << 20)
    requests = sectors * 512 / REQUEST_BYTES
    return {"mib_s": mib / max(t1 - t0, 1e-6), "cpu_us_per_request": device_cpu / requests * 1e6}


def vsock_run(tmp, on_vmm=False, seccomp=True):
    console = tmp / "console.log"
    console.unlink(missing_ok=True)
    sock, uds = tmp / "vs.sock", tmp / "vsock.sock"
    uds.unlink(missing_ok=True)
    if on_vmm:
        mib = PVM_VSOCK_MIB
        vm = vmm(tmp, "vsock-bulk", console, f'"vsock": {{"guest_cid": 3, "uds_path": "{uds}"}}',
                 seccomp=seccomp)
        backend = vm
    else:
        mib = VSOCK_MIB
        backend = start_backend(sock, "--vsock", f"3,{uds}", seccomp=seccomp)
        vm = qemu("console=ttyS0 vmpod.test=vsock-bulk", console,
                  ["-chardev", f"socket,id=v0,path={sock}", "-device", "vhost-user-vsock-device,chardev=v0"])
    while "listening on 1024" not in (console.read_text(errors="replace") if console.exists() else ""):
        if vm.poll() is not None:
            sys.exit("bench: the guest ended before listening")
        time.sleep(0.02)
    # vmpod-vmm serves devices on its main thread; the backend on its worker threads.
    device_cpu = (lambda: cpu_seconds(vm.pid, vm.pid)) if on_vmm else (lambda: cpu_seconds(backend.pid))
    cpu0 = device_cpu()
    total = mib << 20
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
    cpu = device_cpu() - cpu0
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
    vm.wait(timeout=600)
    backend.wait(timeout=10)
    assert received == total, f"echo returned {received} of {total} bytes"
    packets = 2 * total / VSOCK_PACKET
    return {"mib_s": mib / elapsed, "cpu_us_per_request": cpu / packets * 1e6}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-vmm", action="store_true", help="skip the vmpod-vmm (kvm-pvm) runs")
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args()
    for path in (BACKEND, VMM, GUEST / "vmlinux", GUEST / "test-initramfs.cpio"):
        if not path.exists():
            sys.exit(f"bench: {path} is missing; run `make build guest` first")

    rows = []

    def add(new, unit="request"):
        rows.extend(new)
        for r in new:
            cpu = r.get("cpu_us_per_request")
            cpu = f", {cpu:.1f} us/{unit}" if cpu is not None else ""
            print(f"  {r['case']} run {r['run']}: {r['mib_s']:.1f} MiB/s{cpu}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="vmpod-bench-") as tmp:
        tmp = Path(tmp)
        disk = tmp / "disk.img"
        make_disk(disk, DISK_MIB)
        for i in range(args.runs):
            for name, ours in (("blk vmpod (vhost-user)", True), ("blk qemu (virtio-blk-device)", False)):
                add([{"case": name, "run": i, **blk_run(tmp, disk, ours)}])
            start = time.monotonic()
            with open(disk, "rb") as f:
                while f.read(1 << 20):
                    pass
            rows.append({"case": "blk host read (page cache)", "run": i,
                         "mib_s": DISK_MIB / (time.monotonic() - start)})
            add([{"case": "vsock vmpod (vhost-user) echo", "run": i, **vsock_run(tmp)}], "packet")
            add(net_rows(tmp, "net qemu (virtio-net-device)", i), "frame")
        if not args.no_vmm:
            # One run each: a kvm-pvm boot alone takes most of a minute.
            small = tmp / "small.img"
            make_disk(small, PVM_DISK_MIB)
            add([{"case": "blk vmpod-vmm (kvm-pvm)", "run": 0, **blk_run(tmp, small, True, on_vmm=True)}])
            add([{"case": "vsock vmpod-vmm (kvm-pvm) echo", "run": 0, **vsock_run(tmp, on_vmm=True)}], "packet")
            add(net_rows(tmp, "net vmpod-vmm (kvm-pvm)", 0, on_vmm=True), "frame")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "devices.csv", rows, ["case", "run", "mib_s", "cpu_us_per_request"])
    summary = []
    print(f"\n{'case':40} {'MiB/s':>10} {'device CPU us/request':>22}   (medians; QEMU on TCG)")
    for case in dict.fromkeys(r["case"] for r in rows):
        mib = median_of(rows, "mib_s", case=case)
        cpu = median_of(rows, "cpu_us_per_request", case=case)
        summary.append((case, mib, cpu))
        print(f"{case:40} {mib:10.1f} {cpu if cpu is None else round(cpu, 1)!s:>22}")
    print("requests: blk = 128 KiB reads, vsock = 4 KiB packets, net = Ethernet frames (both ways)")
    print("kvm-pvm rows: the guest kernel is emulated here, so only their CPU per request compares")
    charts(out, "devices", "vmpod devices vs QEMU (medians)", [c for c, _, _ in summary], [
        ("MiB/s (log)", True, [("throughput", [m for _, m, _ in summary])]),
        ("device CPU us per request", False, [("CPU per request", [c for _, _, c in summary])]),
    ], "1400,500")
    print(f"csv: {out / 'devices.csv'}, plot: {out / 'devices.png'}")


def make_disk(path, mib):
    with open(path, "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(mib):
            f.write(block)


if __name__ == "__main__":
    main()
