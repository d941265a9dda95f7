#!/usr/bin/env python3
"""Run benchmark: `vmpod run --rm busybox true` (the image `make images` imports) against
`runc run` and `crun run` of an OCI bundle over the busybox tree that image was made from, alternating, with medians, p90 and ratios; vmpod's
breakdown (image lookup, VM boot to agent ready, container create, start and run, teardown)
from VMPOD_TIMING;
and the host memory of one idle `sleep 3600` (sum of PSS of every process it keeps, guest
memory included) for each. crun runs in a mount namespace with a cgroup2-only /sys/fs/cgroup
and --cgroup-manager=disabled, since it refuses this host's hybrid cgroups.
Prints a table, writes results/run.csv and results/run.png.

  scripts/bench_run.py [--runs N]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import alternate, plot, table, tree_pss_mib, write_csv

ROOT = Path(__file__).resolve().parent.parent
GUEST = Path(os.environ.get("VMPOD_GUEST_DIR", ROOT / "build/guest"))
ROOTFS = GUEST / "busybox-rootfs"
VMPOD = ROOT / "target/release/vmpod"


def bundle(tmp, args):
    b = tmp / "bundle"
    b.mkdir(exist_ok=True)
    (b / "config.json").unlink(missing_ok=True)
    subprocess.run(["runc", "spec"], cwd=b, check=True)
    config = json.loads((b / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = args
    config["root"] = {"path": str(ROOTFS), "readonly": True}
    (b / "config.json").write_text(json.dumps(config))
    return b


def commands(tmp, args, name):
    b = bundle(tmp, args)
    crun = (f"mount -t cgroup2 none /sys/fs/cgroup && exec crun --cgroup-manager=disabled "
            f"run --bundle {b} {name}-crun")
    return {
        "vmpod (qemu tcg)": [str(VMPOD), "run", "--rm", "busybox", *args],
        "runc": ["runc", "run", "--bundle", str(b), f"{name}-runc"],
        "crun": ["unshare", "-m", "sh", "-c", crun],
    }


def start_times(tmp, runs):
    times, steps = alternate(commands(tmp, ["true"], f"bench{os.getpid()}"), runs)
    return times, steps["vmpod (qemu tcg)"]


def idle_memory(tmp):
    """PSS of everything one idle `sleep 3600` keeps alive, in MiB."""
    result = {}
    for name, cmd in commands(tmp, ["sleep", "3600"], f"idle{os.getpid()}").items():
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(8 if name.startswith("vmpod") else 2)
        result[name] = tree_pss_mib(proc.pid)
        os.killpg(proc.pid, 9)
        proc.wait()
        if name != "vmpod (qemu tcg)":
            engine = name
            subprocess.run([engine, "delete", "-f", f"idle{os.getpid()}-{engine}"],
                           stderr=subprocess.DEVNULL)
        time.sleep(1)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args()
    for path in (VMPOD, ROOTFS):
        if not path.exists():
            sys.exit(f"bench: {path} is missing; run `make build guest` first")
    with tempfile.TemporaryDirectory(prefix="vmpod-bench-run-") as tmp:
        times, steps = start_times(Path(tmp), args.runs)
        memory = idle_memory(Path(tmp))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = table("start to exit of `true`", times, memory, "runc", args.runs)
    print("vmpod breakdown (medians, ms): " +
          ", ".join(f"{s} {statistics.median(v):.1f}" for s, v in steps.items()))
    write_csv(out / "run.csv", rows)
    plot(out, "run", "vmpod run vs runc and crun (medians)", rows,
         "ms, start to exit of true (log)", "MiB PSS of an idle sleep")
    print(f"csv: {out / 'run.csv'}, plot: {out / 'run.png'}")


if __name__ == "__main__":
    main()
