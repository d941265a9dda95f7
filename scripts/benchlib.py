"""What the benchmark scripts share: percentiles, the PSS of a process tree, CSV and a
two-panel gnuplot chart (time and memory per case)."""

import csv
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def alternate(cases, runs):
    """Runs every case's command `runs` times, alternating; returns the wall times in ms per
    case and, per case, the steps vmpod reports with VMPOD_TIMING (step -> list of ms)."""
    times = {name: [] for name in cases}
    steps = {name: {} for name in cases}
    env = dict(os.environ, VMPOD_TIMING="1")
    for i in range(runs):
        for name, cmd in cases.items():
            t0 = time.monotonic()
            out = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                 text=True)
            elapsed = time.monotonic() - t0
            if out.returncode != 0:
                sys.exit(f"bench: {name} failed ({out.returncode}): {out.stderr.strip()}")
            times[name].append(elapsed * 1e3)
            for line in out.stderr.splitlines():
                if line.startswith("vmpod: timing ms:"):
                    for field in line.split(":", 2)[2].split():
                        step, ms = field.split("=")
                        steps[name].setdefault(step, []).append(float(ms))
        print(f"  run {i}: " + ", ".join(f"{n} {t[-1]:.0f} ms" for n, t in times.items()),
              file=sys.stderr)
    return times, steps


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def rollup_kib(pid, field):
    """A field of /proc/PID/smaps_rollup (Pss, Rss), in KiB; 0 for a process that is gone."""
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def pss_kib(pid):
    return rollup_kib(pid, "Pss")


def threads(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except (FileNotFoundError, ProcessLookupError):
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


def tree_usage(pid):
    """PSS and RSS (MiB), processes and threads of `pid` and everything below it."""
    tree = descendants(pid)
    return {
        "pss_mib": sum(pss_kib(p) for p in tree) / 1024,
        "rss_mib": sum(rollup_kib(p, "Rss") for p in tree) / 1024,
        "processes": len(tree),
        "threads": sum(threads(p) for p in tree),
    }


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


def plot_panels(out: Path, name, title, panels):
    """Side-by-side bar charts, one per panel: panels is a list of (y label, [(case, value)],
    log scale or not); writes out/name.png (gnuplot)."""
    script = [
        "set terminal pngcairo size 1200,460",
        f"set output '{out / f'{name}.png'}'",
        f"set multiplot layout 1,{len(panels)} title '{title}'",
        "set style data histogram",
        "set style fill solid 0.8",
        "set xtics rotate by -30 font ',8'",
    ]
    for i, (label, bars, log) in enumerate(panels):
        data = out / f"{name}-{i}.dat"
        data.write_text("".join(f'"{case}" {value}\n' for case, value in bars))
        script += ["set logscale y" if log else "unset logscale y", f"set ylabel '{label}'",
                   f"plot '{data}' using 2:xtic(1) notitle noenhanced"]
    script.append("unset multiplot")
    subprocess.run(["gnuplot"], input="\n".join(script).encode(), check=True)
