#!/usr/bin/env python3
"""The isolation contrast: one probe suite run on the host, in a runc container and in a vmpod
container on each backend this host allows; what each container sees of the host's kernel and
what it can do to the host. Prints a table, writes results/isolation.md and
results/isolation.png.

  scripts/isolation.py [--backends qemu,vmm] [--out results]

What a container sees is scripts/isolation-probe.sh, run inside it (any reader can run it
anywhere). What it can do is measured here, on the host, while a hog runs in the container:
a fork bomb, a memory hog, a CPU hog and a disk filler, each inside the limit the runtime
offers, with a neighbour container of the same runtime timed meanwhile; and a guest kernel
panic, under vmpod only (under runc it would be the host's). runc runs a bundle of the same
busybox tree on an overlayfs of its own (as docker's overlay2), with docker's default
capabilities and the default seccomp profile this host has. Every container, VM, mount and
scratch file is removed at the end, after a failure and after Ctrl-C.
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import isolation_verdicts as iv
import seccomp_bpf as bpf

ROOT = Path(__file__).resolve().parent.parent
GUEST = Path(os.environ.get("VMPOD_GUEST_DIR", ROOT / "build/guest"))
ROOTFS = GUEST / "busybox-rootfs"
VMPOD = Path(os.environ.get("VMPOD", ROOT / "target/release/vmpod"))
PROBE = ROOT / "scripts/isolation-probe.sh"
# The default profile docker's rules produce, as shipped by containers-common (podman, CRI-O;
# derived from moby's profiles/seccomp/default.json); Debian's golang-github-containers-common.
SECCOMP_PROFILE = Path("/usr/share/containers/seccomp.json")
DOCKER_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
               "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
               "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]

PIDS_LIMIT = 64
MEMORY_LIMIT_MIB = 64
PROBE_TIMEOUT_S = 900
HOG_SECONDS = 10            # how long the neighbour is timed while a hog runs
FILL_CAP_MIB = 512
VMPOD_OVERHEAD_MIB = 96     # what `vmpod run` adds to --memory for the guest (cli/src/prepare.rs)

# Each hog says "started" once it runs; the fork bomb and the CPU hog run until stopped.
FORK_BOMB = "echo started; f() { f | f & }; f 2>/dev/null & exec sleep 3600"
CPU_HOG = "echo started; while :; do :; done & while :; do :; done & exec sleep 3600"
MEMORY_HOG = "echo started; exec tail /dev/zero"
DISK_FILLER = ("dd if=/dev/zero of=/fill bs=1M count={cap} 2>/tmp/dd.err; sync; "
               "echo written $(( $(stat -c %s /fill) / 1048576 )); tail -n 1 /tmp/dd.err")
# The guest kernel has no MAGIC_SYSRQ (guest-kernel/), so where /proc/sysrq-trigger is missing
# the panic comes from an OOM with panic_on_oom=2: a kernel panic all the same.
PANIC = ("if [ -e /proc/sysrq-trigger ]; then echo 'method: sysrq c' >&2; "
         "echo c > /proc/sysrq-trigger; else echo 'method: panic_on_oom=2 + an OOM' >&2; "
         "echo 2 > /proc/sys/vm/panic_on_oom && tail /dev/zero; fi; echo survived")


def log(msg):
    print(f"isolation: {msg}", file=sys.stderr, flush=True)


# --- host measurements ---------------------------------------------------------------------

def children_map():
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    return children


def tree(pid):
    children, found, stack = children_map(), [], [pid]
    while stack:
        p = stack.pop()
        found.append(p)
        stack.extend(children.get(p, []))
    return found


def rss_mib(pids):
    total = 0
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def host_dmesg():
    out = subprocess.run(["dmesg"], capture_output=True, text=True)
    return out.stdout.splitlines()


def new_kills(before, after):
    """OOM kills the host kernel logged between two dmesg readings."""
    old = set(before)
    return [line for line in after if line not in old and "Killed process" in line]


class Sampler(threading.Thread):
    """Samples f() every `period` s until stopped; keeps the maximum."""

    def __init__(self, f, period=0.1):
        super().__init__(daemon=True)
        self.f, self.period, self.peak, self.stop = f, period, None, threading.Event()

    def run(self):
        while not self.stop.is_set():
            v = self.f()
            if v is not None and (self.peak is None or v > self.peak):
                self.peak = v
            time.sleep(self.period)

    def finish(self):
        self.stop.set()
        self.join()
        return self.peak


# --- runtimes ------------------------------------------------------------------------------

class Scratch:
    """Everything a run makes on the host, undone in reverse by close()."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="vmpod-isolation-"))
        self.undo = []

    def close(self):
        while self.undo:
            action = self.undo.pop()
            try:
                action()
            except Exception as e:  # keep undoing the rest
                log(f"cleanup: {e}")
        subprocess.run(["umount", "--recursive", "--lazy", str(self.dir)],
                       stderr=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)


class Runc:
    """runc on a bundle of the busybox tree, with an overlayfs root per container."""

    def __init__(self, scratch, profile):
        self.name, self.scratch, self.profile, self.n = "runc", scratch, profile, 0

    def bundle(self, args, pids=None, memory_mib=None, cpus=None):
        self.n += 1
        cid = f"vmpod-iso-{os.getpid()}-{self.n}"
        b = self.scratch.dir / cid
        for d in ("upper", "work", "rootfs"):
            (b / d).mkdir(parents=True)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={ROOTFS},upperdir={b}/upper,workdir={b}/work",
                        str(b / "rootfs")], check=True)
        self.scratch.undo.append(lambda: subprocess.run(["umount", "-l", str(b / "rootfs")]))
        subprocess.run(["runc", "spec"], cwd=b, check=True)
        config = json.loads((b / "config.json").read_text())
        config["process"]["terminal"] = False
        config["process"]["args"] = args
        config["process"]["capabilities"] = {k: DOCKER_CAPS for k in
                                             ("bounding", "effective", "permitted")}
        config["root"] = {"path": "rootfs", "readonly": False}
        config["hostname"] = "probe"
        if self.profile:
            config["linux"]["seccomp"] = iv.runtime_profile(self.profile, DOCKER_CAPS)
        resources = config["linux"].setdefault("resources", {})
        if pids:
            resources["pids"] = {"limit": pids}
        if memory_mib:
            resources["memory"] = {"limit": memory_mib << 20, "swap": memory_mib << 20}
        if cpus:
            resources["cpu"] = {"quota": int(cpus * 100000), "period": 100000}
        (b / "config.json").write_text(json.dumps(config))
        self.scratch.undo.append(lambda: subprocess.run(
            ["runc", "delete", "-f", cid], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return cid, b

    def start(self, script, **limits):
        cid, b = self.bundle(["sh", "-c", script], **limits)
        proc = subprocess.Popen(["runc", "run", "--bundle", str(b), cid],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.scratch.undo.append(lambda: kill_tree(proc))
        proc.upper, proc.cid = b / "upper", cid
        return proc

    def stop(self, proc):
        subprocess.run(["runc", "delete", "-f", proc.cid], capture_output=True)
        kill_tree(proc)

    def start_neighbour(self):
        cid, b = self.bundle(["sleep", "3600"])
        subprocess.run(["runc", "run", "-d", "--bundle", str(b), cid], check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        return cid

    def exec_true(self, neighbour):
        return exec_ok(["runc", "exec", neighbour, "true"])

    def stop_neighbour(self, neighbour):
        subprocess.run(["runc", "delete", "-f", neighbour], capture_output=True)



class Vmpod:
    """`vmpod run` on one backend, with the busybox tree as --rootfs."""

    def __init__(self, scratch, backend):
        self.name = f"vmpod ({backend})"
        self.scratch, self.backend, self.n = scratch, backend, 0

    def command(self, script, pids=None, memory_mib=None, cpus=None, privileged=False,
                detach=None):
        cmd = [str(VMPOD), "run", "--rm", "--hypervisor", self.backend, "--hostname", "probe"]
        if detach:
            cmd += ["-d", "--name", detach]
        if pids:
            cmd += ["--pids-limit", str(pids)]
        if memory_mib:
            cmd += ["--memory", f"{memory_mib}m"]
        if cpus:
            cmd += ["--cpus", str(cpus)]
        if privileged:
            cmd += ["--privileged"]
        return cmd + ["--rootfs", str(ROOTFS), "sh", "-c", script]

    def start(self, script, **limits):
        proc = subprocess.Popen(self.command(script, **limits), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        self.scratch.undo.append(lambda: kill_tree(proc))
        proc.upper = None
        return proc

    def stop(self, proc):
        kill_tree(proc)  # the VM dies with the CLI

    def start_neighbour(self):
        self.n += 1
        name = f"vmpod-iso-{os.getpid()}-{self.n}"
        self.scratch.undo.append(lambda: subprocess.run(
            [str(VMPOD), "rm", "-f", name], capture_output=True))
        subprocess.run(self.command("exec sleep 3600", detach=name), check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=600)
        return name

    def exec_true(self, neighbour):
        return exec_ok([str(VMPOD), "exec", neighbour, "true"])

    def stop_neighbour(self, neighbour):
        subprocess.run([str(VMPOD), "rm", "-f", neighbour], capture_output=True)


EXEC_FAILURES = []


# kvm-pvm now and then starts a guest process with a wrong FS base, which dies of SIGSEGV at
# its first TLS access (guest-kernel/README.md): `true` exiting 139 is that, the neighbour's VM
# and agent having answered, so it is run again, as the end-to-end tests do.
FLAKE_STATUS, FLAKE_TRIES = 139, 3


def exec_ok(cmd, timeout=120):
    """Runs a neighbour's `exec true`; a failure is logged and kept for the record."""
    for _ in range(FLAKE_TRIES):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            EXEC_FAILURES.append(f"{' '.join(cmd)}: no answer in {timeout} s")
            return False
        if out.returncode == 0:
            return True
        EXEC_FAILURES.append(f"{' '.join(cmd)}: exit {out.returncode}: {out.stderr.strip()[-200:]}")
        log(EXEC_FAILURES[-1])
        if out.returncode != FLAKE_STATUS:
            return False
    return False


def kill_tree(proc):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def finish(proc, timeout):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        out, err = proc.communicate()
        return None, out, err
    return proc.returncode, out, err


# --- the probes ----------------------------------------------------------------------------

def probe_view(runtime):
    """What the container sees: the probe script's readings, None if it did not run."""
    proc = runtime.start(PROBE.read_text())
    status, out, err = finish(proc, PROBE_TIMEOUT_S)
    if status != 0:
        log(f"{runtime.name}: the probe script failed ({status}): {err.strip()[-300:]}")
        return None
    return iv.parse_probe_output(out)


def neighbour_latency(runtime, neighbour, seconds=None, count=5):
    """Median ms of `exec true` in the neighbour: `count` times, or for `seconds`."""
    times, end = [], time.monotonic() + (seconds or 0)
    while len(times) < count or (seconds and time.monotonic() < end):
        t0 = time.monotonic()
        if not runtime.exec_true(neighbour):
            return None
        times.append((time.monotonic() - t0) * 1e3)
    return statistics.median(times)


def wait_started(proc, timeout):
    """True once the container printed its first line ("started")."""
    box = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return bool(box and box[0].strip() == "started")


def with_hog(runtime, neighbour, script, measure, stop=True, **limits):
    """Runs `script` in a container with `limits`; from its "started" on, samples
    measure(proc) and times the neighbour for HOG_SECONDS; then stops it (or waits for its
    end). Returns (status, stdout, stderr, peak measure, neighbour ms); status None: the hog
    never started or was stopped."""
    proc = runtime.start(script, **limits)
    if not wait_started(proc, 600):
        runtime.stop(proc)
        _, err = proc.communicate()
        log(f"{runtime.name}: the hog did not start: {err.strip()[-300:]}")
        return None, "", err, None, None
    sampler = Sampler(lambda: measure(proc) if proc.poll() is None else None)
    sampler.start()
    time.sleep(1)
    latency = neighbour_latency(runtime, neighbour, seconds=HOG_SECONDS, count=3) \
        if neighbour else None
    if stop:
        peak = sampler.finish()
        runtime.stop(proc)
        out, err = proc.communicate()
        return None, out, err, peak, latency
    status, out, err = finish(proc, 300)
    return status, out, err, sampler.finish(), latency


def containment(runtime, neighbour, baseline_ms):
    results = {}
    log(f"{runtime.name}: fork bomb (pids limit {PIDS_LIMIT})")
    status, out, err, peak, ms = with_hog(
        runtime, neighbour, FORK_BOMB,
        lambda p: len(tree(p.pid)), pids=PIDS_LIMIT)
    results["fork_bomb"] = {"host_processes": peak, "neighbour_ms": ms}

    log(f"{runtime.name}: memory hog (limit {MEMORY_LIMIT_MIB} MiB)")
    idle = runtime.start("echo started; exec sleep 3600")
    idle_mib = rss_mib(tree(idle.pid)) if wait_started(idle, 600) else None
    time.sleep(1)
    idle_mib = rss_mib(tree(idle.pid)) if idle_mib is not None else None
    runtime.stop(idle)
    before = host_dmesg()
    status, out, err, peak, _ = with_hog(
        runtime, None, MEMORY_HOG, lambda p: rss_mib(tree(p.pid)), stop=False,
        memory_mib=MEMORY_LIMIT_MIB)
    kills = [k for k in new_kills(before, host_dmesg()) if "(tail)" in k]
    # A hog killed within one sample period is missed by sampling; the host kernel's kill
    # record has its RSS at the kill.
    for line in kills:
        rss = sum(int(v) for v in re.findall(r"(?:anon|file|shmem)-rss:(\d+)kB", line)) / 1024
        peak = max(peak or 0, idle_mib + rss) if idle_mib is not None else peak
    results["memory_hog"] = {"peak_mib": peak, "idle_mib": idle_mib, "status": status,
                             "host_oom_kills": kills, "stderr": err.strip()[-200:]}

    log(f"{runtime.name}: CPU hog (1 CPU)")
    status, out, err, _, ms = with_hog(
        runtime, neighbour, CPU_HOG, lambda p: None, cpus=1)
    results["cpu_hog"] = {"neighbour_ms": ms}

    log(f"{runtime.name}: disk filler ({FILL_CAP_MIB} MiB cap)")
    proc = runtime.start(DISK_FILLER.replace("{cap}", str(FILL_CAP_MIB)))
    status, out, err = finish(proc, 600)
    written = re.search(r"written (\d+)", out or "")
    on_host = None
    if proc.upper is not None:
        on_host = int(subprocess.run(["du", "-sm", str(proc.upper)], capture_output=True,
                                     text=True).stdout.split()[0])
    results["disk_filler"] = {"written_mib": int(written.group(1)) if written else None,
                              "host_disk_mib": on_host, "status": status,
                              "dd": (out or "").strip().splitlines()[-1:] }
    results["baseline_ms"] = baseline_ms
    return results


def panic(runtime, neighbour, host_boot_id):
    log(f"{runtime.name}: guest kernel panic from a privileged container")
    alive_before = runtime.exec_true(neighbour)
    proc = runtime.start(PANIC, privileged=True, memory_mib=MEMORY_LIMIT_MIB)
    status, out, err = finish(proc, 900)
    alive = runtime.exec_true(neighbour) if alive_before else None
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    method = re.search(r"method: (.*)", err or "")
    return {"status": status, "survived": "survived" in (out or ""),
            "report": (err or "").strip().splitlines()[-1:],
            "method": method.group(1) if method else None,
            "neighbour_alive": alive, "host_up": boot_id == host_boot_id}


# --- the table -----------------------------------------------------------------------------

def view_cells(host, readings, exists):
    verdicts = iv.view_verdicts(host, readings, exists)
    cells = {}
    for name, _, _, _ in iv.PROBES:
        r = (readings or {}).get(name)
        if name == "mount_paths" and r is not None and r.ok:
            found = iv.host_paths(r, exists)
            value = " ".join(found[:2]) + (" …" if len(found) > 2 else "") if found else "none"
        else:
            value = r.show(40) if r is not None else ""
        cells[name] = (value, verdicts[name])
    return cells


def containment_cells(r, kind):
    """Cells of the containment rows for one runtime column."""
    cells = {}
    if r is None:
        return {k: ("", iv.NOT_MEASURED) for k in
                ("fork_bomb", "fork_latency", "memory_hog", "memory_kill", "cpu_hog",
                 "disk_filler", "panic")}
    base = r["baseline_ms"]
    fb = r["fork_bomb"]
    bound = PIDS_LIMIT + 8 if kind == "runc" else 16
    cells["fork_bomb"] = (f"{fb['host_processes']} host processes (limit {PIDS_LIMIT})"
                          if fb["host_processes"] is not None else "",
                          iv.bounded_verdict(fb["host_processes"], bound))
    cells["fork_latency"] = (fmt_latency(base, fb["neighbour_ms"]),
                             iv.latency_verdict(base, fb["neighbour_ms"]))
    m = r["memory_hog"]
    growth = (m["peak_mib"] - m["idle_mib"] if None not in (m["peak_mib"], m["idle_mib"])
              else None)
    mem_bound = MEMORY_LIMIT_MIB + 16 if kind == "runc" else MEMORY_LIMIT_MIB + VMPOD_OVERHEAD_MIB
    cells["memory_hog"] = (f"+{growth:.0f} MiB host RSS (bound {mem_bound})"
                           if growth is not None else "", iv.bounded_verdict(growth, mem_bound))
    if m["status"] == 137 and m["host_oom_kills"]:
        who = "tail, in its cgroup, by the host kernel's OOM killer"
    elif m["status"] == 137:
        who = "tail, by the guest kernel's OOM killer; on the host: nothing"
    else:
        who = f"exit {m['status']}"
    cells["memory_kill"] = (who, iv.SHARED if m["host_oom_kills"] else
                            iv.OWN if m["status"] == 137 else iv.NOT_MEASURED)
    cpu = r["cpu_hog"]
    cells["cpu_hog"] = (fmt_latency(base, cpu["neighbour_ms"]),
                        iv.latency_verdict(base, cpu["neighbour_ms"]))
    d = r["disk_filler"]
    if d["written_mib"] is None:
        cells["disk_filler"] = ("", iv.NOT_MEASURED)
    elif d["host_disk_mib"] is not None:
        full = d["written_mib"] >= FILL_CAP_MIB
        cells["disk_filler"] = (f"{d['written_mib']} MiB written, {d['host_disk_mib']} MiB "
                                f"on the host's disk{' (our cap)' if full else ''}",
                                iv.UNBOUNDED if full else iv.BOUNDED)
    else:
        full = d["written_mib"] >= FILL_CAP_MIB
        cells["disk_filler"] = (f"{d['written_mib']} MiB written, layer full (in guest "
                                f"memory)", iv.UNBOUNDED if full else iv.BOUNDED)
    return cells


def fmt_latency(base, during):
    if not base or not during:
        return ""
    return f"exec true {base:.0f} → {during:.0f} ms"


def panic_cell(p):
    if p is None:
        return ("would panic the host", iv.NOT_RUN)
    if p["status"] is None:
        return (f"{p['method']}: the run did not end in time", iv.NOT_MEASURED)
    report = p["report"][0] if p["report"] else f"exit {p['status']}"
    neighbour = {True: "answers", False: "lost", None: "not measured (no answer before)"}
    value = (f"{p['method']}: its VM ended ({report[:140]}); neighbour "
             f"{neighbour[p['neighbour_alive']]}; host {'up' if p['host_up'] else 'rebooted'}")
    if p["survived"] or p["status"] == 0:
        return (value, iv.NOT_MEASURED)  # no panic happened
    if not p["host_up"] or p["neighbour_alive"] is False:
        return (value, iv.UNBOUNDED)
    return (value, iv.BOUNDED if p["neighbour_alive"] else iv.NOT_MEASURED)


CONTAINMENT_ROWS = [
    ("fork_bomb", "fork bomb, pids limit 64: host processes"),
    ("fork_latency", "fork bomb: neighbour's latency"),
    ("memory_hog", f"memory hog, limit {MEMORY_LIMIT_MIB} MiB: host RSS"),
    ("memory_kill", "memory hog: who is killed"),
    ("cpu_hog", "CPU hog, 1 CPU: neighbour's latency"),
    ("disk_filler", "disk filler: where it lands"),
    ("panic", "kernel panic from a privileged container"),
]


def plot(out, rows, columns):
    """A grid: one row per probe, one column per runtime, coloured by verdict."""
    colour = {iv.OWN: "#4caf50", iv.HIDDEN: "#81c784", iv.BOUNDED: "#4caf50",
              iv.SHARED: "#e53935", iv.UNBOUNDED: "#e53935", iv.NOT_RUN: "#9e9e9e",
              iv.NOT_MEASURED: "#bdbdbd", iv.NA: "#eeeeee"}
    def q(text):
        return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'
    n, m = len(rows), len(columns)
    width = max(340 + 190 * m, 900)  # the title's width
    lines = [f"set terminal pngcairo size {width},{120 + 30 * n} font 'sans,10'",
             f"set output '{out}'", "set termoption noenhanced", "unset border",
             "unset tics", "unset key",
             "set title " + q("What a container sees of the host kernel and can do to the "
                              "host (green: isolated; red: the host's; grey: not run or not "
                              "measured)"),
             f"set xrange [-2.2:{m}]", f"set yrange [-{n}:1.2]", "set lmargin 1",
             "set rmargin 1", "set tmargin 3", "set bmargin 1"]
    for j, c in enumerate(columns):
        lines.append(f"set label {q(c)} at {j + 0.5},0.5 center font 'sans,11'")
    for i, (_, label, cells) in enumerate(rows):
        y = -i - 1
        lines.append(f"set label {q(label)} at -2.15,{y + 0.5} left")
        for j, c in enumerate(columns):
            verdict = cells.get(c, ("", iv.NOT_MEASURED))[1]
            lines.append(f"set object rect from {j + 0.03},{y + 0.05} to {j + 0.97},{y + 0.95} "
                         f"fc rgb '{colour.get(verdict, '#ffffff')}' fs solid noborder")
            lines.append(f"set label {q(verdict)} at {j + 0.5},{y + 0.5} center front")
    lines.append("plot NaN notitle")
    subprocess.run(["gnuplot"], input="\n".join(lines).encode(), check=True)


def interrupted(*_):
    raise KeyboardInterrupt


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="qemu,vmm",
                        help="vmpod backends to try (vmm: only where it runs in time)")
    parser.add_argument("--vmm-timeout", type=int, default=240,
                        help="seconds vmpod-vmm may take to run a container before it is "
                             "reported not measured")
    parser.add_argument("--seccomp-profile", default=str(SECCOMP_PROFILE),
                        help="the docker-format default profile runc applies and the table "
                             "counts (moby's profiles/seccomp/default.json works too)")
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args()
    for path in (VMPOD, ROOTFS):
        if not path.exists():
            sys.exit(f"isolation: {path} is missing; run `make build guest` first")
    for tool in ("runc", "gnuplot"):
        if not shutil.which(tool):
            sys.exit(f"isolation: {tool} is not installed")
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)  # also when started in the background
    started = time.monotonic()
    scratch = Scratch()
    try:
        table = run_suite(scratch, args)
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        scratch.close()
        sys.exit(130)
    finally:
        scratch.close()
    write(Path(args.out), *table, time.monotonic() - started)


def run_suite(scratch, args):
    profile_path = Path(args.seccomp_profile)
    profile = json.loads(profile_path.read_text()) if profile_path.exists() else None
    host = iv.parse_probe_output(subprocess.run(["sh", str(PROBE)], capture_output=True,
                                                text=True).stdout)
    host_boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    runtimes = [Runc(scratch, profile)]
    for backend in args.backends.split(","):
        runtimes.append(Vmpod(scratch, backend))
    columns = ["host"] + [r.name for r in runtimes]
    notes = {}
    view, contain, panics, surface = {}, {}, {}, {}
    runc_filter = None
    for runtime in runtimes:
        kind = "runc" if isinstance(runtime, Runc) else "vmpod"
        log(f"{runtime.name}: what the container sees")
        t0 = time.monotonic()
        if isinstance(runtime, Vmpod) and runtime.backend == "vmm":
            # A first run builds vmpod-vmm's template (on kvm-pvm a guest boots in a minute
            # or more); a run that does not finish in time leaves vmm out of the table.
            try:
                first = subprocess.run(runtime.command("true"), capture_output=True,
                                       text=True, timeout=args.vmm_timeout)
                if first.returncode != 0:
                    notes[runtime.name] = f"`vmpod run --hypervisor vmm` failed: " \
                                          f"{first.stderr.strip()[-200:]}"
            except subprocess.TimeoutExpired:
                notes[runtime.name] = (f"`vmpod run --hypervisor vmm` did not finish in "
                                       f"{args.vmm_timeout} s")
            if runtime.name in notes:
                log(f"{runtime.name}: not measured: {notes[runtime.name]}")
                view[runtime.name] = None
                continue
        view[runtime.name] = probe_view(runtime)
        log(f"{runtime.name}: probes took {time.monotonic() - t0:.1f} s")
        if view[runtime.name] is None:
            # A backend that cannot run the probe script runs no hog either.
            notes[runtime.name] = (f"the probe script did not finish in {PROBE_TIMEOUT_S} s "
                                   f"(or failed); its containment probes were not run")
            continue
        try:
            neighbour = runtime.start_neighbour()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            notes[runtime.name] = f"the neighbour container did not start: {e}"
            continue
        try:
            baseline = neighbour_latency(runtime, neighbour, count=5)
            contain[runtime.name] = containment(runtime, neighbour, baseline)
            if kind == "vmpod":
                panics[runtime.name] = panic(runtime, neighbour, host_boot_id)
                surface[runtime.name] = iv.filter_cell(*read_filters(
                    runtime, ("qemu", "vmpod-vmm", "vmpod-vhost")))
            else:
                runc_filter = read_filters(runtime, ("sleep",))
        finally:
            runtime.stop_neighbour(neighbour)
    if "runc" in view:
        surface["runc"] = runc_surface(
            *(runc_filter if runc_filter else ({}, 0, ["the containment run did not happen"])),
            len(iv.allowed_syscalls(profile, DOCKER_CAPS)) if profile else None, profile_path)

    # A path in the container's mountinfo names the host when it exists on the host and not
    # in the container's own tree (/sys, /proc... exist in both and say nothing).
    def exists(path):
        return os.path.exists(path) and not os.path.lexists(ROOTFS / path.lstrip("/"))
    rows = []
    host_cells = {name: (host[name].show(40) if name in host else "", "")
                  for name, *_ in iv.PROBES}
    per_column = {"host": host_cells}
    for runtime in runtimes:
        per_column[runtime.name] = view_cells(host, view.get(runtime.name), exists)
        kind = "runc" if isinstance(runtime, Runc) else "vmpod"
        per_column[runtime.name].update(containment_cells(
            contain.get(runtime.name), kind))
        per_column[runtime.name]["panic"] = (panic_cell(None) if kind == "runc" else
                                             panic_cell(panics.get(runtime.name))
                                             if runtime.name in panics else
                                             ("", iv.NOT_MEASURED))
        per_column[runtime.name]["syscalls"] = surface.get(runtime.name, ("", iv.NOT_MEASURED))
    for name, group, label, _ in iv.PROBES:
        rows.append((group, label, {c: per_column[c].get(name, ("", "")) for c in per_column}))
    for key, _ in CONTAINMENT_ROWS + [("syscalls", "")]:
        per_column["host"][key] = ("—", "")
    for key, label in CONTAINMENT_ROWS:
        rows.append(("containment, measured on the host", label,
                     {c: per_column[c].get(key, ("", "")) for c in per_column}))
    rows.append(("attack surface", "host-kernel syscalls reachable",
                 {c: per_column[c].get("syscalls", ("", "")) for c in per_column}))
    return rows, columns, notes, contain, panics


def read_filters(runtime, comms):
    """({process: {thread kind: number of syscalls allowed}}, how many x86_64 has, errors)
    for the processes named `comms` while a container of this runtime runs, read from the
    kernel: the container's own process under runc, the VMM's processes under vmpod."""
    proc = runtime.start("echo started; exec sleep 3600")
    counts, errors, names = {}, [], {}
    try:
        wait_started(proc, 600)
        names = bpf.syscall_names()
        for pid in tree(proc.pid):
            try:
                comm = open(f"/proc/{pid}/comm").read().strip()
                if not comm.startswith(comms):
                    continue
                for thread, allowed in bpf.process_allowed(pid, names).items():
                    counts.setdefault(comm, {})[thread] = len(allowed)
            except (OSError, bpf.BpfError) as e:
                errors.append(f"{pid}: {e}")
    finally:
        runtime.stop(proc)
    return counts, len(names), errors


def runc_surface(counts, total, errors, profile_count, profile_path):
    """runc's attack-surface cell: what the container's filter lets it call in the host
    kernel, beside what the profile names."""
    named = (f"{profile_count} named by {profile_path} for docker's default capabilities"
             if profile_count is not None else f"no {profile_path}")
    sleeps = [n for threads in counts.values() for n in threads.values()]
    if not sleeps:
        return (f"not read ({'; '.join(errors) or 'no container process found'}); {named}",
                iv.NOT_MEASURED)
    return (f"{max(sleeps)} of {total} syscalls of the host kernel, read from the container's "
            f"filter ({named})", iv.SHARED)


def write(out, rows, columns, notes, contain, panics, seconds):
    out.mkdir(parents=True, exist_ok=True)
    print(iv.render_text(rows, columns))
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    md = ["# Isolation: runc and vmpod side by side", "",
          f"Produced by `make isolation` (scripts/isolation.py, {when}, "
          f"{seconds:.0f} s) on this host: kernel {os.uname().release}, {os.cpu_count()} CPUs. "
          "Each cell is what the container read or what the host measured, then the verdict: "
          "**own** / **hidden** / **bounded** (isolated), **host's** / **unbounded** (shared "
          "with or paid by the host), **not measured** (the probe failed or could not run: "
          "never read as isolated), **not run** (deliberately).", "",
          iv.render_markdown(rows, columns), ""]
    for name, note in notes.items():
        md.append(f"- {name}: not measured: {note}")
    md.append("")
    md.append("Raw containment measurements:")
    md.append("")
    md.append("```json")
    md.append(json.dumps({"containment": contain, "panic": panics,
                          "neighbour_exec_failures": EXEC_FAILURES}, indent=1, default=str))
    md.append("```")
    (out / "isolation.md").write_text("\n".join(md) + "\n")
    (out / "isolation.json").write_text(json.dumps(
        {"seconds": round(seconds), "columns": columns, "notes": notes,
         "rows": [{"group": g, "probe": label, "cells": cells} for g, label, cells in rows]},
        indent=1) + "\n")
    plot(out / "isolation.png", rows, columns[1:])
    print(f"isolation: {seconds:.0f} s; table: {out / 'isolation.md'} (and .json), picture: "
          f"{out / 'isolation.png'}")


if __name__ == "__main__":
    main()
