#!/usr/bin/env python3
"""Boot benchmark: vmpod-vmm against QEMU microvm, side by side, alternating.

For each (VMM, guest) case it spawns the VMM, timestamps what arrives on the serial console, reads
the VMM's memory from /proc while the guest waits, then stops it. Prints a table of medians with
ratios against vmpod-vmm, writes results/boot.csv (every run) and results/boot.png (gnuplot).

  scripts/bench_boot.py [--runs N] [--linux-runs N] [--out DIR]

Figures:
  first_output_ms   spawn -> first serial line from the guest (tiny guest: its first instructions)
  boot_timer_ms     spawn -> the guest's boot-timer byte, as vmpod-vmm records it (vmpod-vmm only)
  init_ms           spawn -> "Run /init" on the console (Linux guest)
  user_ms           spawn -> the test init's report line (Linux guest: user space has run)
  rss_mib           resident memory of the VMM process while the guest idles
  overhead_mib      the same without the guest-memory mapping: what the VMM itself costs
  peak_rss_mib      VmHWM
"""

import argparse
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchlib import charts, median_of, write_csv

ROOT = Path(__file__).resolve().parent.parent
GUEST = Path(os.environ.get("VMPOD_GUEST_DIR", ROOT / "build/guest"))
VMM = ROOT / "target/release/vmpod-vmm"
KVM_PVM = Path("/sys/module/kvm_pvm").exists()


METRICS = ["first_output_ms", "boot_timer_ms", "init_ms", "user_ms", "rss_mib", "overhead_mib",
           "peak_rss_mib"]


def qemu_cmd(kernel, initrd, cmdline, memory, accel):
    # The launcher applies the same kvm-pvm workarounds vmpod-vmm does.
    cmd = [str(ROOT / "scripts/qemu-microvm.sh"), "--accel", accel, "--kernel", str(kernel),
           "--memory", str(memory), "--cmdline", cmdline]
    if initrd:
        cmd += ["--initrd", str(initrd)]
    return cmd


def vmm_cmd(kernel, initrd, cmdline, memory):
    cmd = [str(VMM), "--kernel", str(kernel), "--memory", str(memory), "--cmdline", cmdline,
           "--console", "stdout"]
    if initrd:
        cmd += ["--initrd", str(initrd)]
    return cmd


def memory_of(pid, guest_bytes):
    """(rss, rss outside the guest-memory mapping, peak rss) in MiB."""
    total = outside = 0
    size = 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(x, 16) for x in head.split("-"))
                size = end - start
            elif head == "Rss:":
                kib = int(line.split()[1])
                total += kib
                # Guest RAM is the one mapping at least as large as the guest's memory.
                if size < guest_bytes:
                    outside += kib
    peak = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1])
    return total / 1024, outside / 1024, peak / 1024


def run_once(cmd, markers, memory_mib, wait_marker, timeout):
    """Spawns `cmd`, returns {marker: ms after spawn} plus memory figures, then stops it."""
    env = dict(os.environ, RUST_LOG="info")
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    seen = {}
    buf = b""
    errbuf = b""
    result = {}
    deadline = start + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout, proc.stderr], [], [], 0.5)
            now = time.monotonic()
            for stream in ready:
                chunk = os.read(stream.fileno(), 65536)
                if stream is proc.stderr:
                    errbuf += chunk
                    continue
                if not chunk:
                    continue
                buf += chunk
                if "first_output_ms" not in seen:
                    seen["first_output_ms"] = (now - start) * 1000
                for name, text in markers.items():
                    if name not in seen and text.encode() in buf:
                        seen[name] = (now - start) * 1000
            if wait_marker.encode() in buf:
                time.sleep(0.2)  # let the guest settle into its idle loop
                rss, outside, peak = memory_of(proc.pid, memory_mib << 20)
                result.update(rss_mib=rss, overhead_mib=outside, peak_rss_mib=peak)
                break
            if proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        errbuf += proc.stderr.read() or b""
    for line in errbuf.decode(errors="replace").splitlines():
        if "guest boot done after" in line:
            result["boot_timer_ms"] = int(line.split()[-2]) / 1000
    result.update(seen)
    if "rss_mib" not in result:
        sys.stderr.write(f"bench: {cmd[0]} never reached {wait_marker!r}\n"
                         f"{buf.decode(errors='replace')[-2000:]}\n{errbuf.decode(errors='replace')[-2000:]}\n")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs per VMM with the tiny guest")
    parser.add_argument("--linux-runs", type=int, default=1 if KVM_PVM else 5,
                        help="runs per VMM with the Linux guest (slow on kvm-pvm)")
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args()

    tiny = GUEST / "tiny-guest.elf"
    kernel, initrd = GUEST / "vmlinux", GUEST / "test-initramfs.cpio"
    for path in (VMM, tiny, kernel, initrd):
        if not path.exists():
            sys.exit(f"bench: {path} is missing; run `make build guest` first")

    linux_cmdline = "console=ttyS0 vmpod.test=wait"
    cases = [
        # (case, vmm, command, markers, wait marker, memory MiB, runs, timeout s)
        ("tiny", "vmpod-vmm", vmm_cmd(tiny, None, "tiny=wait", 128),
         {}, "tiny: waiting", 128, args.runs, 30),
        ("tiny", "qemu-kvm", qemu_cmd(tiny, None, "tiny=wait", 128, "kvm"),
         {}, "tiny: waiting", 128, args.runs, 30),
        ("linux", "vmpod-vmm", vmm_cmd(kernel, initrd, linux_cmdline, 256),
         {"init_ms": "Run /init", "user_ms": "vmpod-init: cpus="}, "vmpod-init: waiting", 256, args.linux_runs, 600),
        ("linux", "qemu-kvm", qemu_cmd(kernel, initrd, linux_cmdline, 256, "kvm"),
         {"init_ms": "Run /init", "user_ms": "vmpod-init: cpus="}, "vmpod-init: waiting", 256, args.linux_runs, 600),
        ("linux", "qemu-tcg", qemu_cmd(kernel, initrd, linux_cmdline, 256, "tcg"),
         {"init_ms": "Run /init", "user_ms": "vmpod-init: cpus="}, "vmpod-init: waiting", 256, max(args.linux_runs, 5), 120),
    ]

    rows = []
    for case in ("tiny", "linux"):
        group = [c for c in cases if c[0] == case]
        runs = max(c[6] for c in group)
        for i in range(runs):  # alternate VMMs run by run, so drift hits all alike
            for (name, vmm, cmd, markers, wait, mem, n, timeout) in group:
                if i >= n:
                    continue
                figures = run_once(cmd, markers, mem, wait, timeout)
                rows.append(dict(case=name, vmm=vmm, run=i, **figures))
                print(f"  {name:5} {vmm:9} run {i}: " + " ".join(
                    f"{k}={v:.1f}" for k, v in figures.items()), file=sys.stderr)

    metrics = METRICS
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "boot.csv", rows, ["case", "vmm", "run"] + metrics)

    def median(case, vmm, metric):
        return median_of(rows, metric, case=case, vmm=vmm)

    print(f"\n{'case':6} {'vmm':10} " + " ".join(f"{m:>16}" for m in metrics) + "   (medians)")
    summary = []
    for case in ("tiny", "linux"):
        for vmm in ("vmpod-vmm", "qemu-kvm", "qemu-tcg"):
            values = [median(case, vmm, m) for m in metrics]
            if all(v is None for v in values):
                continue
            summary.append((case, vmm, values))
            cells = []
            for m, v in zip(metrics, values):
                base = median(case, "vmpod-vmm", m)
                if v is None:
                    cells.append(f"{'-':>16}")
                elif vmm != "vmpod-vmm" and base:
                    cells.append(f"{v:9.1f} ({v / base:4.1f}x)")
                else:
                    cells.append(f"{v:16.1f}")
            print(f"{case:6} {vmm:10} " + " ".join(cells))
    print(f"\nruns: tiny {args.runs} per VMM, linux {args.linux_runs} per VMM"
          f" (qemu-tcg {max(args.linux_runs, 5)}); host kvm-pvm: {KVM_PVM}; csv: {out / 'boot.csv'}")
    plot(summary, out)


def plot(summary, out):
    """Two bar charts: start-up times (log scale) and memory."""
    labels = [f"{case}/{vmm}" for case, vmm, _ in summary]
    column = {m: [values[i] for _, _, values in summary] for i, m in enumerate(METRICS)}
    try:
        charts(out, "boot", "vmpod-vmm vs QEMU microvm (medians)", labels, [
            ("ms after spawn (log)", True, [("first guest output", column["first_output_ms"]),
                                            ("Run /init", column["init_ms"])]),
            ("MiB", False, [("VMM overhead (RSS outside guest memory)", column["overhead_mib"]),
                            ("total RSS", column["rss_mib"])])])
        print(f"plot: {out / 'boot.png'}")
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"plot: skipped ({e})", file=sys.stderr)


if __name__ == "__main__":
    main()
