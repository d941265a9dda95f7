#!/usr/bin/env python3
"""Shared-volume benchmark: the same file workload on the sandbox's shared filesystem and on
its peers, in one run.

The workload (one busybox shell script, timed inside the shell that runs it):
  write: 64 MiB written sequentially (dd bs=1M, then sync)    -> MiB/s
  read:  the same file read back (dd bs=1M)                    -> MiB/s
  create, stat, unlink: 10,000 empty files (`: >`, one `ls -l`, one `rm -rf`) -> ops/s
Cases:
  shared       a `-v` volume in a container (QEMU's 9p on the QEMU backend)
  rootfs       the container's own root filesystem (overlayfs on a guest tmpfs)
  host         the host directory itself, with the host's sh and coreutils (no VM)
The guest cases run in one background container on the backend this host runs (QEMU with
TCG on kvm-pvm hosts: every guest instruction is translated, so the guest cases are slow in
absolute terms and read as ratios to each other). QEMU's CPU time per 9p request is the CPU
QEMU used during the shared case's metadata steps divided by the 30,000 operations.
Prints a table, writes results/volumes.csv and results/volumes.png.

  scripts/bench_volumes.py [--runs N]
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VMPOD = ROOT / "target/release/vmpod"
FILES = 10_000
MIB = 64

WORKLOAD_TEMPLATE = r"""
set -e
d="$1/bench.$$"
mkdir -p "$d"
# busybox's date has no %%N: there /proc/uptime counts in hundredths of a second.
case $(date +%%N) in
  *N) now() { read up _ < /proc/uptime; echo "$up"; } ;;
  *) now() { date +%%s.%%N; } ;;
esac
t0=$(now)
if [ "$2" != meta ]; then
  dd if=/dev/zero of="$d/big" bs=1M count=%(mib)d 2>/dev/null; sync; t1=$(now)
  dd if="$d/big" of=/dev/null bs=1M 2>/dev/null; t2=$(now)
  rm "$d/big"
else
  t1=$t0; t2=$t0
fi
mkdir "$d/many"; cd "$d/many"
i=0; while [ $i -lt %(files)d ]; do : > f$i; i=$((i+1)); done; t3=$(now)
ls -l > /dev/null; t4=$(now)
cd /; rm -rf "$d"; t5=$(now)
echo "$t0 $t1 $t2 $t3 $t4 $t5"
"""


def workload(mib=MIB, files=FILES):
    return WORKLOAD_TEMPLATE % {"mib": mib, "files": files}


WORKLOAD = workload()


def qemu_pids():
    out = subprocess.run(["pgrep", "-f", "qemu-system-x86_64"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def rates(stamps, mib=MIB, files=FILES):
    t = [float(x) for x in stamps.split()]
    # A step faster than the clock's resolution counts as one tick.
    tick = lambda a, b: max(t[b] - t[a], 0.001)
    return {
        "write MiB/s": mib / (tick(0, 1)),
        "read MiB/s": mib / (tick(1, 2)),
        "create/s": files / (tick(2, 3)),
        "stat/s": files / (tick(3, 4)),
        "unlink/s": files / (tick(4, 5)),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    volume = Path(tempfile.mkdtemp(prefix="vmpod-bench-volume-"))
    script = volume / "workload.sh"
    script.write_text(WORKLOAD)
    cid = subprocess.run([str(VMPOD), "run", "-d", "-v", f"{volume}:/data", "busybox",
                          "sleep", "86400"], capture_output=True, text=True)
    if cid.returncode != 0:
        sys.exit(f"bench: vmpod run failed: {cid.stderr.strip()}")
    cid = cid.stdout.strip()
    results = {name: [] for name in ("shared", "rootfs", "host")}
    cpu_per_op = []
    try:
        for run in range(args.runs):
            for name in results:
                if name == "host":
                    # The host's own shell and coreutils: the file system is what is compared.
                    cmd = ["sh", str(script), str(volume)]
                else:
                    where = "/data" if name == "shared" else "/tmp"
                    cmd = [str(VMPOD), "exec", cid, "sh", "/data/workload.sh", where]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    sys.exit(f"bench: {name}: {out.stderr.strip()}")
                measured = rates(out.stdout.strip().splitlines()[-1])
                results[name].append(measured)
                print(f"  run {run} {name}: " + ", ".join(f"{k} {v:.0f}" for k, v in measured.items()),
                      file=sys.stderr)
        for _ in range(args.runs):
            before = sum(benchlib.cpu_seconds(p) for p in qemu_pids())
            out = subprocess.run([str(VMPOD), "exec", cid, "sh", "/data/workload.sh", "/data",
                                  "meta"], capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"bench: metadata pass: {out.stderr.strip()}")
            used = sum(benchlib.cpu_seconds(p) for p in qemu_pids()) - before
            cpu_per_op.append(used * 1e6 / (3 * FILES))
    finally:
        subprocess.run([str(VMPOD), "rm", "-f", cid], capture_output=True)
        shutil.rmtree(volume, ignore_errors=True)

    keys = list(next(iter(results.values()))[0])
    print(f"\n{'case':10}" + "".join(f"{k:>14}" for k in keys) + f"   (median of {args.runs})")
    rows = []
    for name, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in keys}
        print(f"{name:10}" + "".join(f"{med[k]:14.1f}" for k in keys))
        rows.append({"case": name, **{k: round(v, 1) for k, v in med.items()}})
    print(f"\nQEMU's CPU per metadata operation on the shared volume (its TCG emulation of the "
          f"guest included): "
          f"{statistics.median(cpu_per_op):.0f} us (median of {args.runs})")
    out = ROOT / "results"
    out.mkdir(exist_ok=True)
    benchlib.write_csv(out / "volumes.csv", rows)
    # The plot's two panels: metadata (create/s) and sequential write (MiB/s).
    benchlib.plot(out, "volumes", "Shared volume vs peers (higher is better)",
                  [{"case": r["case"], "median_ms": r["create/s"], "idle_pss_mib": r["write MiB/s"]}
                   for r in rows], "create/s", "write MiB/s")


if __name__ == "__main__":
    main()
