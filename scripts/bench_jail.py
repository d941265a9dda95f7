#!/usr/bin/env python3
"""Jail and seccomp benchmark: what the VMM's confinement costs, with and without it.

  spawn -> ready, vmpod-vmm (kvm-pvm here), tiny guest: the sandbox's own steps (jail with uid
      claim, cgroup and slot directory, descriptors passed; sandbox/examples/bench_jail_boot.rs)
      to the guest's "tiny: waiting", in four cases: jailed or not (`VMPOD_JAIL=0`'s path),
      filtered or not (vmpod-vmm's hidden --no-seccomp), alternating
  spawn -> agent ready, QEMU (TCG) through `vmpod run --rm busybox true`: VMPOD_TIMING's
      vm_boot_to_agent, jailed against VMPOD_JAIL=0, restored from the template and cold-booted.
      QEMU's -sandbox and vmpod-vhost-user's filter stay on in both: the sandbox has no switch
      for them, by design
  device CPU per request, with and without the device process's filter (vmpod-vhost-user's
      --no-seccomp; with --vmm also vmpod-vmm's on kvm-pvm, a Linux boot of about a minute each):
      scripts/bench_devices.py's blk and vsock workloads

Prints tables, writes results/jail.csv (every run) and results/jail.png (gnuplot).

  scripts/bench_jail.py [--runs N] [--vmm]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import bench_devices
from benchlib import charts, pct, write_csv

ROOT = Path(__file__).resolve().parent.parent
GUEST = Path(os.environ.get("VMPOD_GUEST_DIR", ROOT / "build/guest"))
BOOT = ROOT / "target/release/examples/bench_jail_boot"
VMPOD = ROOT / "target/release/vmpod"

TINY_CASES = {
    "vmm jailed, filtered": [],
    "vmm jailed, no filter": ["--no-seccomp"],
    "vmm unjailed, filtered": ["--no-jail"],
    "vmm unjailed, no filter": ["--no-jail", "--no-seccomp"],
}


def tiny_boots(runs):
    times = {case: [] for case in TINY_CASES}
    env = dict(os.environ, VMPOD_GUEST_DIR=str(GUEST))
    for i in range(runs):
        for case, flags in TINY_CASES.items():
            out = subprocess.run([str(BOOT), "--runs", "1", *flags], env=env,
                                 capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"bench: {case}: {out.stderr.strip()}")
            times[case].append(float(out.stdout.split()[0]))
        print(f"  tiny run {i}: " + ", ".join(f"{c} {t[-1]:.1f} ms" for c, t in times.items()),
              file=sys.stderr)
    return times


def qemu_boots(runs):
    cases = {}
    for boot, extra in (("template", []), ("cold", ["--cold-boot"])):
        for jail in ("1", "0"):
            name = f"qemu {boot}, {'jailed' if jail == '1' else 'VMPOD_JAIL=0'}"
            cases[name] = (extra, jail)
    times = {case: [] for case in cases}
    for i in range(runs):
        for case, (extra, jail) in cases.items():
            env = dict(os.environ, VMPOD_TIMING="1", VMPOD_JAIL=jail)
            out = subprocess.run([str(VMPOD), "run", "--rm", *extra, "busybox", "true"], env=env,
                                 stdin=subprocess.DEVNULL, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"bench: {case} failed ({out.returncode}): {out.stderr.strip()}")
            step = next(float(f.split("=")[1]) for line in out.stderr.splitlines()
                        if line.startswith("vmpod: timing ms:")
                        for f in line.split(":", 2)[2].split() if f.startswith("vm_boot_to_agent="))
            times[case].append(step)
        print(f"  qemu run {i}: " + ", ".join(f"{c} {t[-1]:.0f} ms" for c, t in times.items()),
              file=sys.stderr)
    return times


def device_costs(runs, with_vmm):
    """{case: {True: [us per request], False: [...]}}, True being with the filter."""
    costs = {}
    with tempfile.TemporaryDirectory(prefix="vmpod-bench-jail-") as tmp:
        tmp = Path(tmp)
        disk = tmp / "disk.img"
        bench_devices.make_disk(disk, bench_devices.DISK_MIB)
        work = [("blk vhost-user (128 KiB read)", lambda f: bench_devices.blk_run(tmp, disk, True, seccomp=f)),
                ("vsock vhost-user (4 KiB packet)", lambda f: bench_devices.vsock_run(tmp, seccomp=f))]
        vmm_runs = 0
        if with_vmm:
            small = tmp / "small.img"
            bench_devices.make_disk(small, bench_devices.PVM_DISK_MIB)
            work += [("blk vmpod-vmm kvm-pvm (128 KiB read)",
                      lambda f: bench_devices.blk_run(tmp, small, True, on_vmm=True, seccomp=f)),
                     ("vsock vmpod-vmm kvm-pvm (4 KiB packet)",
                      lambda f: bench_devices.vsock_run(tmp, on_vmm=True, seccomp=f))]
        for case, run in work:
            costs[case] = {True: [], False: []}
            # A kvm-pvm Linux boot takes about a minute: one run each there.
            for i in range(1 if "kvm-pvm" in case else runs):
                for filtered in (True, False):
                    us = run(filtered)["cpu_us_per_request"]
                    costs[case][filtered].append(us)
                    print(f"  {case} {'filtered' if filtered else 'no filter'} run {i}: {us:.1f} us",
                          file=sys.stderr)
    return costs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--vmm", action="store_true",
                        help="also vmpod-vmm's device cost on kvm-pvm (a minute per Linux boot)")
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args()
    for path in (BOOT, VMPOD, GUEST / "tiny-guest.elf", GUEST / "vmlinux"):
        if not path.exists():
            sys.exit(f"bench: {path} is missing; run `make build guest` and "
                     "`cargo build --release -p vmpod-sandbox --example bench_jail_boot` first")
    if os.geteuid() != 0:
        sys.exit("bench: the jail needs root")

    rows = []
    boots = {**tiny_boots(args.runs), **qemu_boots(max(args.runs // 2, 1))}
    print(f"\n{'spawn -> ready':34} {'median ms':>10} {'p90 ms':>8} {'runs':>5}")
    for case, ts in boots.items():
        print(f"{case:34} {statistics.median(ts):10.1f} {pct(ts, 90):8.1f} {len(ts):5}")
        rows += [{"part": "boot", "case": case, "filtered": "", "run": i, "value": t,
                  "unit": "ms"} for i, t in enumerate(ts)]

    costs = device_costs(max(args.runs // 2, 1), args.vmm)
    print(f"\n{'device CPU per request':40} {'filtered us':>12} {'no filter us':>13} {'change':>8}")
    for case, by in costs.items():
        on, off = statistics.median(by[True]), statistics.median(by[False])
        print(f"{case:40} {on:12.1f} {off:13.1f} {(on / off - 1) * 100:+7.0f}%")
        for filtered, values in by.items():
            rows += [{"part": "device", "case": case, "filtered": filtered, "run": i, "value": v,
                      "unit": "us/request"} for i, v in enumerate(values)]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "jail.csv", rows)
    device_cases = [f"{c} {'on' if f else 'off'}" for c, by in costs.items() for f in (True, False)]
    charts(out, "jail", "vmpod: the jail and seccomp filters, on and off (medians)", list(boots), [
        ("ms, spawn to ready (log)", True, [(None, [statistics.median(t) for t in boots.values()])]),
        ("device CPU us per request", False,
         [(None, [statistics.median(by[f]) for by in costs.values() for f in (True, False)])],
         device_cases),
    ], "1200,460")
    print(f"csv: {out / 'jail.csv'}, plot: {out / 'jail.png'}")


if __name__ == "__main__":
    main()
