"""What the benchmark scripts share: percentiles, the PSS of a process tree, CSV and a
two-panel gnuplot chart (time and memory per case)."""

import csv
import os
import statistics
import subprocess
from pathlib import Path


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def pss_kib(pid):
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def descendants(pid):
    """`pid` and every process below it."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        p = stack.pop()
        found.append(p)
        stack.extend(children.get(p, []))
    return found


def tree_pss_mib(pid):
    return sum(pss_kib(p) for p in descendants(pid)) / 1024


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(out: Path, name, title, rows, time_label, memory_label):
    """rows: dicts with case, median_ms and idle_pss_mib; writes out/name.png."""
    data = out / f"{name}.dat"
    data.write_text("".join(f'"{r["case"]}" {r["median_ms"]} {r["idle_pss_mib"]}\n' for r in rows))
    script = f"""
set terminal pngcairo size 1000,420
set output '{out / f"{name}.png"}'
set multiplot layout 1,2 title '{title}'
set style data histogram
set style fill solid 0.8
set ylabel '{time_label}'
set logscale y
plot '{data}' using 2:xtic(1) notitle
unset logscale y
set ylabel '{memory_label}'
plot '{data}' using 3:xtic(1) notitle
unset multiplot
"""
    subprocess.run(["gnuplot"], input=script.encode(), check=True)


def table(title, times, memory, base_name, runs):
    """Prints median, p90, ratio to `base_name` and idle memory per case; returns the rows."""
    base = statistics.median(times[base_name])
    rows = []
    print(f"\n{title:24} {'median ms':>10} {'p90 ms':>8} {'vs ' + base_name:>10} {'idle MiB':>9}"
          f"   ({runs} runs each, alternating)")
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"case": name, "median_ms": round(med, 1), "p90_ms": round(pct(ts, 90), 1),
                     f"ratio_vs_{base_name.replace(' ', '_')}": round(med / base, 2),
                     "idle_pss_mib": round(memory.get(name, 0), 1)})
        idle = f"{memory[name]:9.1f}" if name in memory else f"{'-':>9}"
        print(f"{name:24} {med:10.1f} {pct(ts, 90):8.1f} {med / base:9.1f}x {idle}")
    return rows
