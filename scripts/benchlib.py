"""What the benchmark scripts share: percentiles and medians, CPU time and the PSS of a
process tree, CSV and gnuplot bar charts side by side."""

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


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid, tid=None):
    """User and system CPU seconds of a process (its ended threads included) or of one of its
    threads; 0 for one that is gone."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    try:
        fields = open(path).read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def threads_cpu(pid, keep):
    """CPU seconds of the threads of `pid` whose name `keep` accepts; 0 for a process gone."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    total = 0.0
    for tid in tids:
        try:
            comm = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if keep(comm):
            total += cpu_seconds(pid, tid)
    return total


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


def write_csv(path, rows, fields=None):
    """Every row, with the columns `fields` (default: the first row's keys); a row without
    some column leaves it empty."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields or list(rows[0]), restval="")
        writer.writeheader()
        writer.writerows(rows)


def median_of(rows, metric, **match):
    """The median of `metric` over the rows whose fields equal `match`; None without any."""
    values = [r[metric] for r in rows
              if r.get(metric) is not None and all(r.get(k) == v for k, v in match.items())]
    return statistics.median(values) if values else None


def charts(out: Path, name, title, labels, panels, size="1100,450"):
    """Writes out/name.png: bar charts side by side, one per panel. Each panel is (y label, log
    scale, [(series title or None, one value per label)]), over the shared x `labels`, or with a
    fourth item, its own labels; a value of None leaves a gap."""
    body, data_files = [], []
    for i, (ylabel, log, lines, *own) in enumerate(panels):
        xs = own[0] if own else labels
        data = out / f"{name}-{i}.dat"
        data_files.append(data)
        data.write_text("".join(
            f'"{x}" ' + " ".join("NaN" if v[j] is None else f"{v[j]:.3f}" for _, v in lines)
            + "\n" for j, x in enumerate(xs)))
        body.append("set logscale y\nset yrange [*:*]" if log else "unset logscale y\n"
                    "set yrange [0:*]")
        plots = [f"'{data}' using {column}:xtic(1) "
                 + (f"title '{series}'" if series else "notitle")
                 for column, (series, _) in enumerate(lines, start=2)]
        body.append(f"set ylabel '{ylabel}'\nplot " + ", ".join(plots))
    script = "\n".join([
        f"set terminal pngcairo size {size}", f"set output '{out / f'{name}.png'}'",
        # Case names are shown as written: an underscore is not a subscript.
        "set termoption noenhanced",
        f"set multiplot layout 1,{len(panels)} title '{title}'",
        "set style data histograms", "set style histogram clustered",
        "set style fill solid 0.8", "set xtics rotate by -30 font ',8'",
        "set key outside bottom center horizontal", *body, "unset multiplot", ""])
    try:
        subprocess.run(["gnuplot"], input=script.encode(), check=True)
    finally:
        for data in data_files:
            data.unlink(missing_ok=True)


def plot(out: Path, name, title, rows, time_label, memory_label):
    """rows: dicts with case, median_ms and idle_pss_mib; writes out/name.png."""
    charts(out, name, title, [r["case"] for r in rows],
           [(time_label, True, [(None, [r["median_ms"] for r in rows])]),
            (memory_label, False, [(None, [r["idle_pss_mib"] for r in rows])])], "1000,420")


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

