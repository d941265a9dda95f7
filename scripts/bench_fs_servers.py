#!/usr/bin/env python3
"""Shared-filesystem servers side by side: vmpod-vmm's in-process virtio-fs server, virtiofsd
(QEMU's C one, over vhost-user) and QEMU's own 9p, each serving a fresh directory to the same
guest kernel and test initramfs. The guest's fs-bench mode mounts the share and runs the volume
benchmark's workload from it (scripts/bench_volumes.py: sequential write and read, then create,
stat and unlink of many files), timed by the guest's clock; a second, metadata-only pass is
where the host samples the server's CPU, divided by its 3 x files requests.

Cases, each where this host can run it:
  vmm virtio-fs (kvm)       vmpod-vmm; the server is its "virtio-fs" thread
  virtiofsd (kvm)           QEMU microvm on KVM, virtiofsd's processes
  virtiofsd (tcg)           the same on TCG
  9p (tcg)                  QEMU's own 9p server (what vmpod's QEMU backend uses): QEMU's
                            threads other than its vCPU's
Rows on the same accelerator compare servers directly. On kvm-pvm hosts every guest syscall is
emulated, so the kvm cases run a smaller workload (--pvm-files, --pvm-mib); their rates read as
ratios to each other, and the server CPU per request is the figure that carries over.
Prints a table, writes results/fs_servers.csv and results/fs_servers.png.

  scripts/bench_fs_servers.py [--runs N] [--cases vmm,virtiofsd-kvm,virtiofsd-tcg,9p-tcg]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_volumes import rates, workload
from benchlib import charts, cpu_seconds, threads_cpu, write_csv

ROOT = Path(__file__).resolve().parent.parent
GUEST = Path(os.environ.get("VMPOD_GUEST_DIR", ROOT / "build/guest"))
VMM = ROOT / "target/release/vmpod-vmm"
QEMU = ROOT / "scripts/qemu-microvm.sh"
VIRTIOFSD = Path("/usr/lib/qemu/virtiofsd")
KVM_PVM = Path("/sys/module/kvm_pvm").exists()
CMDLINE = "console=ttyS0 vmpod.test=fs-bench"
TAG = "bench"

# The guest's side: the full workload, then a marker, then the metadata pass the host samples;
# the VM stays up a second after it, so the host's last sample sees the server still running
# (QEMU is 9p's server, and it exits with the guest).
RUN = """echo "fs-bench full $(sh $1/workload.sh $1 data)"
echo "fs-bench meta-start"
echo "fs-bench meta $(sh $1/workload.sh $1 meta)"
sleep 1
"""


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


class Case:
    """One server and the VM in front of it; start() returns the VM, cpu() the server's CPU."""

    def __init__(self, name, accel, tmp, share):
        self.name, self.accel, self.tmp, self.share = name, accel, tmp, share
        self.console = tmp / "console.log"
        self.procs = []

    def qemu(self, extra):
        vm = subprocess.Popen(
            [str(QEMU), "--accel", self.accel, "--memory", "256",
             "--kernel", str(GUEST / "vmlinux"), "--initrd", str(GUEST / "test-initramfs.cpio"),
             "--cmdline", CMDLINE, "--console", str(self.console), "--", *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.procs.append(vm)
        return vm

    def stop(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.kill()
            proc.wait()


class VmmCase(Case):
    def start(self):
        config = self.tmp / "vm.json"
        config.write_text(
            f'{{"kernel": "{GUEST / "vmlinux"}", "initrd": "{GUEST / "test-initramfs.cpio"}", '
            f'"memory_mib": 256, "console": "{self.console}", "cmdline": "{CMDLINE}", '
            f'"fs": {{"tag": "{TAG}", "shared_dir": "{self.share}"}}}}')
        self.vm = subprocess.Popen([str(VMM), "--config", str(config)], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.procs.append(self.vm)
        return self.vm

    def cpu(self):
        return threads_cpu(self.vm.pid, lambda comm: comm == "virtio-fs")


class VirtiofsdCase(Case):
    def start(self):
        sock = self.tmp / "virtiofsd.sock"
        self.server = subprocess.Popen(
            [str(VIRTIOFSD), f"--socket-path={sock}", "-o", f"source={self.share}",
             "-o", "cache=auto"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        self.procs.append(self.server)
        deadline = time.monotonic() + 10
        while not sock.exists():
            if time.monotonic() > deadline or self.server.poll() is not None:
                sys.exit(f"bench: virtiofsd never made {sock}")
            time.sleep(0.01)
        return self.qemu(["-chardev", f"socket,id=fs,path={sock}",
                          "-device", f"vhost-user-fs-device,chardev=fs,tag={TAG}"])

    def cpu(self):
        # virtiofsd serves from a child in its own namespaces; count the parent as well.
        pids = [self.server.pid, *children(self.server.pid)]
        return sum(cpu_seconds(p) for p in pids)


class NinePCase(Case):
    def start(self):
        self.vm = self.qemu([
            "-fsdev", f"local,id=shared,path={self.share},security_model=passthrough,"
                      "multidevs=remap",
            "-device", f"virtio-9p-device,fsdev=shared,mount_tag={TAG}"])
        return self.vm

    def cpu(self):
        # QEMU runs the 9p server in its main loop and in worker threads that come and go;
        # its vCPU threads ("CPU 0/TCG") are the guest.
        vcpus = threads_cpu(self.vm.pid, lambda comm: comm.startswith("CPU "))
        return cpu_seconds(self.vm.pid) - vcpus


CASES = {
    "vmm": ("vmm virtio-fs (kvm)", "kvm", VmmCase),
    "virtiofsd-kvm": ("virtiofsd (kvm)", "kvm", VirtiofsdCase),
    "virtiofsd-tcg": ("virtiofsd (tcg)", "tcg", VirtiofsdCase),
    "9p-tcg": ("9p (tcg)", "tcg", NinePCase),
}


def run_case(key, mib, files, timeout):
    name, accel, kind = CASES[key]
    tmp = Path(tempfile.mkdtemp(prefix="vmpod-bench-fs-"))
    share = tmp / "share"
    share.mkdir()
    (share / "workload.sh").write_text(workload(mib, files))
    (share / "run.sh").write_text(RUN)
    case = kind(name, accel, tmp, share)
    try:
        vm = case.start()
        full = meta = cpu_start = None
        deadline = time.monotonic() + timeout
        while meta is None:
            if time.monotonic() > deadline:
                sys.exit(f"bench: {name}: no result in {timeout} s; console:\n{tail(case)}")
            if vm.poll() is not None:
                sys.exit(f"bench: {name}: the VM ended ({vm.returncode}): "
                         f"{vm.stderr.read().decode(errors='replace')[-400:]}\n{tail(case)}")
            cpu = case.cpu()
            text = case.console.read_text(errors="replace") if case.console.exists() else ""
            for line in text.splitlines():
                if line.startswith("fs-bench full "):
                    full = line.split(None, 2)[2]
                elif line.startswith("fs-bench meta-start") and cpu_start is None:
                    cpu_start = cpu
                elif line.startswith("fs-bench meta ") and cpu_start is not None:
                    meta = cpu - cpu_start
            time.sleep(0.05)
        if full is None:
            sys.exit(f"bench: {name}: the full pass printed nothing; console:\n{tail(case)}")
        return {**rates(full, mib, files), "server CPU us/request": meta * 1e6 / (3 * files)}
    finally:
        case.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def tail(case):
    if not case.console.exists():
        return "(no console output)"
    return "\n".join(case.console.read_text(errors="replace").splitlines()[-15:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--files", type=int, default=10_000, help="files per pass on TCG "
                        "(and on hardware KVM)")
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--pvm-files", type=int, default=100,
                        help="files per pass for the kvm cases on a kvm-pvm host")
    parser.add_argument("--pvm-mib", type=int, default=4)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per case and run")
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args()
    keys = [k for k in args.cases.split(",") if k]
    for key in keys:
        if key not in CASES:
            sys.exit(f"bench: unknown case '{key}' (known: {', '.join(CASES)})")
    for path in (GUEST / "vmlinux", GUEST / "test-initramfs.cpio", VMM, VIRTIOFSD):
        if not path.exists():
            sys.exit(f"bench: {path} is missing; run `make build guest` first")
    if not Path("/dev/kvm").exists():
        keys = [k for k in keys if CASES[k][1] != "kvm"]

    results, sizes = {k: [] for k in keys}, {}
    for run in range(args.runs):
        for key in keys:  # alternating, so drift hits every case alike
            small = KVM_PVM and CASES[key][1] == "kvm"
            mib, files = (args.pvm_mib, args.pvm_files) if small else (args.mib, args.files)
            sizes[key] = (mib, files)
            measured = run_case(key, mib, files, args.timeout)
            results[key].append(measured)
            print(f"  run {run} {CASES[key][0]}: " + ", ".join(
                f"{k} {v:.1f}" for k, v in measured.items()), file=sys.stderr)

    metrics = list(next(iter(results.values()))[0])
    width = {m: max(14, len(m) + 2) for m in metrics}
    print(f"\n{'case':22}{'MiB/files':>11}" + "".join(f"{m:>{width[m]}}" for m in metrics) +
          f"   (median of {args.runs}; host kvm-pvm: {KVM_PVM})")
    rows = []
    for key, runs in results.items():
        med = {m: statistics.median(r[m] for r in runs) for m in metrics}
        mib, files = sizes[key]
        print(f"{CASES[key][0]:22}{f'{mib}/{files}':>11}" +
              "".join(f"{med[m]:{width[m]}.1f}" for m in metrics))
        rows.append({"case": CASES[key][0], "mib": mib, "files": files,
                     **{m: round(v, 1) for m, v in med.items()}})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "fs_servers.csv", rows)
    charts(out, "fs_servers", "shared-filesystem servers, same guest (medians)",
           [r["case"] for r in rows],
           [("creates per second (log)", True, [(None, [r["create/s"] for r in rows])]),
            ("server CPU us per metadata request", False,
             [(None, [r["server CPU us/request"] for r in rows])])])
    print(f"csv: {out / 'fs_servers.csv'}, plot: {out / 'fs_servers.png'}")


if __name__ == "__main__":
    main()
