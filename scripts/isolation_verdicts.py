"""The isolation suite's pure part: parsing what scripts/isolation-probe.sh prints, the verdict
of each probe (the container's view against the host's), the seccomp profile's count, and the
table. No process is started here; scripts/test_isolation.py tests all of it."""

from dataclasses import dataclass

# Verdicts, and what each means in the table.
SHARED = "host's"          # the container sees (or reaches) the host's own kernel or devices
OWN = "own"                # it sees a kernel or devices of its own, not the host's
HIDDEN = "hidden"          # the file exists on the host; the container cannot read it
BOUNDED = "bounded"        # the host stayed within the limit while the probe ran
UNBOUNDED = "unbounded"    # the host paid beyond the limit
NOT_RUN = "not run"        # deliberately not run (the table says why)
NOT_MEASURED = "not measured"  # the probe failed or could not run: never read as isolated
NA = "n/a"                 # the host has nothing to compare with

GOOD = {OWN, HIDDEN, BOUNDED}
BAD = {SHARED, UNBOUNDED}

ABSENT, DENIED, EMPTY = "absent", "denied", "empty"


@dataclass
class Reading:
    """One probe's line: state is ok, absent, denied or empty; items what was read."""
    state: str
    items: list

    @property
    def ok(self):
        return self.state == "ok"

    def show(self, width=48):
        if not self.ok:
            return self.state
        text = " | ".join(self.items)
        return text if len(text) <= width else text[:width - 1] + "…"


def parse_probe_output(text):
    """NAME<TAB>VALUE lines → {name: Reading}; lines not of that form are ignored."""
    readings = {}
    for line in text.splitlines():
        name, sep, value = line.partition("\t")
        if not sep or not name:
            continue
        if value.startswith("ok:"):
            readings[name] = Reading("ok", [i for i in value[3:].split(" | ")])
        elif value in (ABSENT, DENIED, EMPTY):
            readings[name] = Reading(value, [])
    return readings


# How each probe's container reading is compared with the host's.
#   equal:    the same items as the host's (a list of devices, the first symbols)
#   overlap:  any item in common (log lines with their timestamps, key serials)
#   near:     a number within a tolerance (uptime in seconds)
#   same_kernel: content that changes by the second: it is the host's if the container runs
#             on the host's kernel (the same boot_id), its own otherwise
#   host_paths: the paths it names exist on the host (but "/")
PROBES = [
    # (name, group, label, rule)
    ("uname_r", "kernel identity", "uname -r", "equal"),
    ("proc_version", "kernel identity", "/proc/version", "equal"),
    ("boot_id", "kernel identity", "boot_id", "equal"),
    ("uptime", "kernel identity", "uptime (s)", "near"),
    ("mem_total", "kernel identity", "MemTotal", "equal"),
    ("cpu_model", "kernel identity", "CPU model", "equal"),
    ("kallsyms", "host information", "/proc/kallsyms non-zero addresses", "equal"),
    ("dmesg", "host information", "dmesg", "overlap"),
    ("keys", "host information", "/proc/keys", "overlap"),
    ("interrupts", "host information", "/proc/interrupts devices", "equal"),
    ("net_devices", "host information", "/sys/class/net", "equal"),
    ("mount_paths", "host information", "host paths in mountinfo", "host_paths"),
    ("sched_debug", "host information", "/proc/sched_debug", "same_kernel"),
    ("timer_list", "host information", "/proc/timer_list", "same_kernel"),
]

UPTIME_TOLERANCE_S = 30.0


def view_verdict(rule, host, container, same_kernel=None, exists_on_host=None):
    """The verdict of one probe: host and container are Readings (container None: the probe
    did not run or printed nothing for it)."""
    if container is None:
        return NOT_MEASURED
    if host is None or not host.ok:
        # Nothing of the host's to leak; a readable file is the container's own kernel's.
        return OWN if container.ok and same_kernel is False else NA
    if not container.ok:
        return HIDDEN
    if rule == "equal":
        return SHARED if container.items == host.items else OWN
    if rule == "overlap":
        return SHARED if set(container.items) & set(host.items) else OWN
    if rule == "near":
        try:
            delta = abs(float(container.items[0]) - float(host.items[0]))
        except (ValueError, IndexError):
            return NOT_MEASURED
        return SHARED if delta <= UPTIME_TOLERANCE_S else OWN
    if rule == "same_kernel":
        if same_kernel is None:
            return NOT_MEASURED
        return SHARED if same_kernel else OWN
    if rule == "host_paths":
        if exists_on_host is None:
            return NOT_MEASURED
        return SHARED if host_paths(container, exists_on_host) else OWN
    raise ValueError(f"unknown rule {rule}")


def host_paths(reading, exists_on_host):
    """The paths of a mount_paths reading that name something on the host (but "/")."""
    if reading is None or not reading.ok:
        return []
    return [p for p in reading.items if p not in ("", "/") and exists_on_host(p)]


def runs_on_host_kernel(host, container):
    """True if both readings are of the same kernel boot (their boot_id), None if unknown."""
    h, c = host.get("boot_id"), container.get("boot_id")
    if h is None or c is None or not (h.ok and c.ok):
        return None
    return h.items == c.items


def view_verdicts(host, container, exists_on_host):
    """{probe name: verdict} for every probe of PROBES; container None: the run failed."""
    if container is None:
        return {name: NOT_MEASURED for name, *_ in PROBES}
    same = runs_on_host_kernel(host, container)
    return {name: view_verdict(rule, host.get(name), container.get(name), same, exists_on_host)
            for name, _, _, rule in PROBES}


def bounded_verdict(measured, bound):
    """A containment measure (host processes, host MiB) against its bound; None: failed."""
    if measured is None or bound is None:
        return NOT_MEASURED
    return BOUNDED if measured <= bound else UNBOUNDED


def latency_verdict(before_ms, during_ms, factor=2.0):
    """A neighbour's latency while a hog runs: bounded when within `factor` of before."""
    if not before_ms or not during_ms:
        return NOT_MEASURED
    return BOUNDED if during_ms <= factor * before_ms else UNBOUNDED


# Seccomp: the syscalls a profile lets a container make, for one architecture and one
# capability set, evaluated as runc and podman evaluate a docker-format profile.
ARCH_NAMES = {"x86_64": {"amd64", "SCMP_ARCH_X86_64"}}


def allowed_syscalls(profile, caps, arch="x86_64"):
    """The names a docker-format profile allows (ACT_ALLOW, with or without argument rules)
    for a process with capabilities `caps` on `arch`; the default action must refuse."""
    if profile.get("defaultAction") == "SCMP_ACT_ALLOW":
        raise ValueError("a profile that allows by default has no allowlist to count")
    arches = ARCH_NAMES.get(arch, {arch})
    caps = set(caps)
    allowed = set()
    for rule in profile.get("syscalls", []):
        if rule.get("action") != "SCMP_ACT_ALLOW":
            continue
        includes, excludes = rule.get("includes") or {}, rule.get("excludes") or {}
        if includes.get("arches") and not arches & set(includes["arches"]):
            continue
        if excludes.get("arches") and arches & set(excludes["arches"]):
            continue
        if includes.get("caps") and not set(includes["caps"]) <= caps:
            continue
        if excludes.get("caps") and set(excludes["caps"]) & caps:
            continue
        allowed.update(rule.get("names") or [rule.get("name")])
    allowed.discard(None)
    return allowed


def filter_cell(counts, total, errors=()):
    """The attack-surface cell of a vmpod column: `counts` is {process: {thread kind: number
    of syscalls its filters allow}}, read from the kernel; `total` is how many x86_64 has.
    Bounded only when every thread of every VMM process is filtered."""
    if not counts:
        why = "; ".join(errors) if errors else "no VMM process found"
        return (f"not read: {why}", NOT_MEASURED)
    parts = [f"{proc}: " + ", ".join(f"{t} {n}" for t, n in sorted(threads.items()))
             for proc, threads in sorted(counts.items())]
    value = (f"none directly; the VMM's threads may make (of {total}): " + "; ".join(parts))
    unfiltered = any(n >= total for threads in counts.values() for n in threads.values())
    if errors:
        value += " (unread: " + "; ".join(errors) + ")"
    return (value, NOT_MEASURED if unfiltered or errors else BOUNDED)


def runtime_profile(profile, caps, arch="x86_64"):
    """The OCI `linux.seccomp` for runc: the profile's rules for these caps and arch, with
    includes/excludes resolved (runc takes no conditions)."""
    arches = ARCH_NAMES.get(arch, {arch})
    caps = set(caps)
    rules = []
    for rule in profile.get("syscalls", []):
        includes, excludes = rule.get("includes") or {}, rule.get("excludes") or {}
        if includes.get("arches") and not arches & set(includes["arches"]):
            continue
        if excludes.get("arches") and arches & set(excludes["arches"]):
            continue
        if includes.get("caps") and not set(includes["caps"]) <= caps:
            continue
        if excludes.get("caps") and set(excludes["caps"]) & caps:
            continue
        out = {"names": rule.get("names") or [rule["name"]], "action": rule["action"]}
        if rule.get("args"):
            out["args"] = rule["args"]
        if rule.get("errnoRet") is not None:
            out["errnoRet"] = rule["errnoRet"]
        rules.append(out)
    spec = {"defaultAction": profile["defaultAction"], "architectures": ["SCMP_ARCH_X86_64",
            "SCMP_ARCH_X86", "SCMP_ARCH_X32"], "syscalls": rules}
    if profile.get("defaultErrnoRet") is not None:
        spec["defaultErrnoRet"] = profile["defaultErrnoRet"]
    return spec


# The table.
def render_markdown(rows, columns):
    """rows: (group, label, {column: (value, verdict)}); one line per row, value and verdict in
    each cell."""
    head = "| probe | " + " | ".join(columns) + " |\n"
    head += "|---|" + "---|" * len(columns) + "\n"
    lines = []
    group = None
    for g, label, cells in rows:
        if g != group:
            lines.append(f"| **{g}** |" + " |" * len(columns))
            group = g
        parts = []
        for c in columns:
            value, verdict = cells.get(c, ("", NOT_MEASURED))
            value = str(value).replace("|", "\\|")
            parts.append(f"{value} — **{verdict}**" if verdict and value else
                         f"**{verdict}**" if verdict else value)
        label = label.replace("|", "\\|")
        lines.append(f"| {label} | " + " | ".join(parts) + " |")
    return head + "\n".join(lines) + "\n"


def render_text(rows, columns, width=30):
    """The same table for a terminal: value (verdict) per cell, cut to `width`."""
    def cell(value, verdict):
        text = f"{value} ({verdict})" if verdict and value else (verdict or str(value))
        return text if len(text) <= width else text[:width - 1] + "…"
    out = [f"{'probe':36} " + " ".join(f"{c:{width}}" for c in columns)]
    group = None
    for g, label, cells in rows:
        if g != group:
            out.append(f"-- {g}")
            group = g
        out.append(f"{label[:36]:36} " + " ".join(
            f"{cell(*cells.get(c, ('', NOT_MEASURED))):{width}}" for c in columns))
    return "\n".join(out)
