#!/usr/bin/env python3
"""Template benchmark: `vmpod run --rm busybox true` restored from its VM template, the same
with --cold-boot, and `runc run` of the same busybox tree, alternating, with medians, p90 and
ratios; VM start to agent ready (VMPOD_TIMING's vm_boot_to_agent: for a template, QEMU's start,
the memory copy, the restore and the agent's first answer) for both vmpod cases; and the host
memory of 20 idle sandboxes (`run -d busybox sleep 3600`, the sum of PSS of every process each
keeps, guest memory included) from the template and cold-booted; and, where /dev/kvm opens,
the same for a few idle vmpod-vmm sandboxes from their template (their guest memory is the
template's file mapped copy-on-write, so clones share its pages). Each idle sandbox is also
counted in RSS, processes and threads (its VMM and helpers: every VM carries its spare disk
slots, ARCHITECTURE.md "Disk slots at runtime"); --vmpod measures another build the same way
(e.g. one from before the slots, to compare).
Prints a table, writes results/template.csv and results/template.png.

  scripts/bench_template.py [--runs N] [--idle N] [--vmm-idle N] [--vmpod PATH]
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

from benchlib import alternate, pct, plot, table, tree_usage, write_csv

ROOT = Path(__file__).resolve().parent.parent
GUEST = Path(os.environ.get("VMPOD_GUEST_DIR", ROOT / "build/guest"))
ROOTFS = GUEST / "busybox-rootfs"
VMPOD = ROOT / "target/release/vmpod"


def runc_bundle(tmp):
    b = tmp / "bundle"
    b.mkdir(exist_ok=True)
    subprocess.run(["runc", "spec"], cwd=b, check=True)
    config = json.loads((b / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = ["true"]
    config["root"] = {"path": str(ROOTFS), "readonly": True}
    (b / "config.json").write_text(json.dumps(config))
    return b


def vmpod(*args, check=True):
    out = subprocess.run([str(VMPOD), *args], stdin=subprocess.DEVNULL, capture_output=True,
                         text=True, env=dict(os.environ, VMPOD_TIMING="1"))
    if check and out.returncode != 0:
        sys.exit(f"bench: vmpod {' '.join(args)} failed: {out.stderr.strip()}")
    return out


def start_times(tmp, runs):
    b = runc_bundle(tmp)
    cases = {
        "vmpod template": [str(VMPOD), "run", "--rm", "busybox", "true"],
        "vmpod cold boot": [str(VMPOD), "run", "--rm", "--cold-boot", "busybox", "true"],
        "runc": ["runc", "run", "--bundle", str(b), f"bench-template-{os.getpid()}"],
    }
    times, steps = alternate(cases, runs)
    to_agent = {name: steps[name]["vm_boot_to_agent"]
                for name in ("vmpod template", "vmpod cold boot")}
    return times, to_agent


def monitors():
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
            except (FileNotFoundError, ProcessLookupError):
                continue
            if b"__monitor" in cmdline:
                pids.append(int(entry))
    return pids


def idle_memory(count, cold, hypervisor="auto"):
    """Means per sandbox (PSS and RSS in MiB, processes, threads) with `count` idle
    sandboxes running at once."""
    names = [f"bench-idle-{os.getpid()}-{i}" for i in range(count)]
    extra = ["--hypervisor", hypervisor] + (["--cold-boot"] if cold else [])
    try:
        for name in names:
            vmpod("run", "-d", "--name", name, *extra, "busybox", "sleep", "3600")
        time.sleep(5)
        found = monitors()
        if len(found) != count:
            sys.exit(f"bench: {len(found)} sandboxes running, not {count}")
        usage = [tree_usage(pid) for pid in found]
        return {key: sum(u[key] for u in usage) / count for key in usage[0]}
    finally:
        vmpod("rm", "-f", *names, check=False)


def main():
    global VMPOD
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--idle", type=int, default=20)
    parser.add_argument("--vmm-idle", type=int, default=5,
                        help="idle vmpod-vmm sandboxes (slow to start on kvm-pvm); 0 skips")
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("--vmpod", default=str(VMPOD),
                        help="the vmpod binary to measure (its vmpod-vmm and vmpod-vhost-user "
                             "beside it)")
    args = parser.parse_args()
    VMPOD = Path(args.vmpod)
    for path in (VMPOD, ROOTFS):
        if not path.exists():
            sys.exit(f"bench: {path} is missing; run `make build guest` first")
    # The template is built before anything is timed.
    vmpod("template", "build", "busybox")
    with tempfile.TemporaryDirectory(prefix="vmpod-bench-template-") as tmp:
        times, to_agent = start_times(Path(tmp), args.runs)
    usage = {
        "vmpod template": idle_memory(args.idle, cold=False),
        "vmpod cold boot": idle_memory(args.idle, cold=True),
    }
    memory = {name: u["pss_mib"] for name, u in usage.items()}
    vmm_idle = None
    if args.vmm_idle and os.access("/dev/kvm", os.R_OK | os.W_OK):
        vmpod("template", "build", "--hypervisor", "vmm", "busybox")
        vmm_idle = idle_memory(args.vmm_idle, cold=False, hypervisor="vmm")["pss_mib"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = table("start to exit of `true`", times, memory, "runc", args.runs)
    print(f"(idle MiB: PSS per sandbox with {args.idle} idle sandboxes running at once)")
    if vmm_idle is not None:
        print(f"vmpod-vmm template: {vmm_idle:.1f} MiB PSS per sandbox with {args.vmm_idle} "
              "idle sandboxes running at once")
    for name, values in to_agent.items():
        print(f"{name}: VM start to agent ready median {statistics.median(values):.1f} ms, "
              f"p90 {pct(values, 90):.1f} ms")
    for name, u in usage.items():
        print(f"{name}, idle: {u['pss_mib']:.1f} MiB PSS, {u['rss_mib']:.1f} MiB RSS, "
              f"{u['processes']:.0f} processes, {u['threads']:.0f} threads per sandbox "
              "(VMM and helpers)")
    ratio = statistics.median(to_agent["vmpod cold boot"]) / statistics.median(
        to_agent["vmpod template"])
    print(f"template vs cold boot to agent ready: {ratio:.1f}x faster")
    for row in rows:
        if row["case"] in to_agent:
            row["to_agent_median_ms"] = round(statistics.median(to_agent[row["case"]]), 1)
        else:
            row["to_agent_median_ms"] = ""
        u = usage.get(row["case"], {})
        row["idle_rss_mib"] = round(u["rss_mib"], 1) if u else ""
        row["idle_threads"] = round(u["threads"]) if u else ""
    write_csv(out / "template.csv", rows)
    plot(out, "template", "vmpod run from a template vs a cold boot vs runc (medians)", rows,
         "ms, start to exit of true (log)", f"MiB PSS per idle sandbox ({args.idle} at once)")
    print(f"csv: {out / 'template.csv'}, plot: {out / 'template.png'}")


if __name__ == "__main__":
    main()
