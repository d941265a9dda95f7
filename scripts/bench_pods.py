#!/usr/bin/env python3
"""Pod benchmark through the CRI: a kubelet-like client (shim/examples/bench_pods.rs) starts
and stops pods on containerd 1.6 with its CRI plugin on, runc vs vmpod, alternating: start is
RunPodSandbox until the app container runs, stop is StopContainer + StopPodSandbox +
RemovePodSandbox. Medians, p90 and the ratio to runc; and the host memory of one idle pod (PSS
of the shim and every process below it: runc's pause and app, vmpod's VMM and helpers). A
handler whose pod cannot start is skipped, saying why. Prints a table, writes
results/pods.csv and results/pods.png.

  scripts/bench_pods.py [--runs N]
"""

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from benchlib import charts, pct, write_csv

ROOT = Path(__file__).resolve().parent.parent


def plot(out: Path, rows):
    """Three panels: start, stop (medians, ms) and an idle pod's PSS; writes out/pods.png."""
    charts(out, "pods", "pods through the CRI: vmpod vs runc (medians)",
           [r["case"] for r in rows],
           [(label, False, [(None, [r[key] for r in rows])]) for key, label in [
               ("median_ms", "ms, pod start until the app runs"),
               ("stop_median_ms", "ms, pod stop and removal"),
               ("idle_pss_mib", "MiB PSS of an idle pod")]], "1400,420")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args()
    out = subprocess.run(
        ["cargo", "run", "--release", "-q", "-p", "vmpod-shim", "--example", "bench_pods", "--",
         "--runs", str(args.runs)],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        sys.exit(f"bench: bench_pods failed ({out.returncode})")
    start, stop, stop_container, memory = {}, {}, {}, {}
    for line in out.stdout.splitlines():
        kind, handler, *rest = line.split(",", 2 if line.startswith("skip") else -1)
        if kind == "skip":
            print(f"bench: {handler} skipped: {rest[0]}", file=sys.stderr)
        elif kind == "time":
            start.setdefault(handler, []).append(float(rest[1]))
            stop.setdefault(handler, []).append(float(rest[2]))
            stop_container.setdefault(handler, []).append(float(rest[3]))
        elif kind == "memory":
            memory[handler] = float(rest[0])
    if "runc" not in start:
        sys.exit("bench: no runc figures")
    base_start, base_stop = statistics.median(start["runc"]), statistics.median(stop["runc"])
    rows = []
    print(f"\n{'handler':10} {'start ms':>9} {'p90':>7} {'vs runc':>8} {'stop ms':>9} {'p90':>7}"
          f" {'vs runc':>8} {'idle MiB':>9}   ({args.runs} runs each, alternating)")
    for handler in start:
        s, t = statistics.median(start[handler]), statistics.median(stop[handler])
        rows.append({"case": handler, "median_ms": round(s, 1),
                     "p90_ms": round(pct(start[handler], 90), 1),
                     "ratio_vs_runc": round(s / base_start, 2),
                     "stop_median_ms": round(t, 1), "stop_p90_ms": round(pct(stop[handler], 90), 1),
                     "stop_ratio_vs_runc": round(t / base_stop, 2),
                     "stop_container_median_ms": round(statistics.median(stop_container[handler]), 1),
                     "idle_pss_mib": round(memory.get(handler, 0), 1)})
        print(f"{handler:10} {s:9.1f} {pct(start[handler], 90):7.1f} {s / base_start:7.1f}x"
              f" {t:9.1f} {pct(stop[handler], 90):7.1f} {t / base_stop:7.1f}x"
              f" {memory.get(handler, 0):9.1f}")
    print("of the stop, StopContainer (grace period 10 s): " + ", ".join(
        f"{h} {statistics.median(v):.1f} ms" for h, v in stop_container.items()))
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    write_csv(dest / "pods.csv", rows)
    plot(dest, rows)
    print(f"csv: {dest / 'pods.csv'}, plot: {dest / 'pods.png'}")


if __name__ == "__main__":
    main()
