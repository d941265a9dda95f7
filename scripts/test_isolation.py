#!/usr/bin/env python3
"""Tests of the isolation suite's parsing and verdicts (no container, no VM: fast; `make test`
runs them). `make isolation` runs the suite itself."""

import ctypes
import os
import struct
import subprocess
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import isolation_verdicts as iv  # noqa: E402
import seccomp_bpf as bpf  # noqa: E402

PROBE = Path(__file__).resolve().parent / "isolation-probe.sh"


def readings(**values):
    return iv.parse_probe_output("".join(f"{k}\t{v}\n" for k, v in values.items()))


class ParseProbeOutput(unittest.TestCase):
    def test_ok_values_split_into_items_and_states_have_none(self):
        r = readings(keys="ok:1a | 2b", dmesg="denied", timer_list="empty", sched_debug="absent")
        self.assertEqual(r["keys"].items, ["1a", "2b"])
        self.assertEqual([r[k].state for k in ("dmesg", "timer_list", "sched_debug")],
                         ["denied", "empty", "absent"])
        self.assertFalse(r["dmesg"].ok)

    def test_lines_of_another_form_are_ignored_not_guessed(self):
        r = iv.parse_probe_output("noise\nuname_r\tsomething odd\n\tok:x\nboot_id\tok:abc\n")
        self.assertEqual(list(r), ["boot_id"])

    def test_the_probe_script_runs_here_and_names_every_probe(self):
        out = subprocess.run(["sh", str(PROBE)], capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        r = iv.parse_probe_output(out.stdout)
        for name, *_ in iv.PROBES:
            self.assertIn(name, r)
        self.assertEqual(r["uname_r"].items, [os.uname().release])


class ViewVerdicts(unittest.TestCase):
    host = readings(uname_r="ok:6.18", boot_id="ok:h", uptime="ok:15000.5",
                    kallsyms="ok:ffffffff81000000 _text | ffffffff81000010 x",
                    dmesg="ok:[1.0] a | [2.0] b", keys="ok:11 | 22",
                    net_devices="ok:eth0 | lo", mount_paths="ok:/ | /run/netns",
                    timer_list="ok:Timer List", sched_debug="absent")

    def verdicts(self, exists=lambda p: p.startswith("/host/"), **container):
        return iv.view_verdicts(self.host, readings(**container), exists)

    def test_the_hosts_own_values_are_shared(self):
        v = self.verdicts(uname_r="ok:6.18", boot_id="ok:h", uptime="ok:15003.0",
                          dmesg="ok:[2.0] b | [3.0] c", keys="ok:22", timer_list="ok:Timer")
        for name in ("uname_r", "boot_id", "uptime", "dmesg", "keys", "timer_list"):
            self.assertEqual(v[name], iv.SHARED, name)

    def test_another_kernels_values_are_its_own(self):
        v = self.verdicts(uname_r="ok:6.1", boot_id="ok:g", uptime="ok:3.2",
                          kallsyms="ok:ffffffff81000000 _text | ffffffff81000020 y",
                          dmesg="ok:[0.5] z", net_devices="ok:lo", timer_list="ok:Timer")
        for name in ("uname_r", "boot_id", "uptime", "kallsyms", "dmesg", "net_devices",
                     "timer_list"):
            self.assertEqual(v[name], iv.OWN, name)

    def test_a_masked_or_unreadable_file_is_hidden(self):
        v = self.verdicts(keys="empty", dmesg="denied", kallsyms="absent")
        self.assertEqual((v["keys"], v["dmesg"], v["kallsyms"]), (iv.HIDDEN,) * 3)

    def test_a_probe_that_printed_nothing_is_not_measured_never_isolated(self):
        v = self.verdicts(uname_r="ok:6.1")
        self.assertEqual(v["boot_id"], iv.NOT_MEASURED)
        self.assertEqual(iv.view_verdicts(self.host, None, os.path.exists)["uname_r"],
                         iv.NOT_MEASURED)

    def test_content_without_boot_ids_to_compare_is_not_measured(self):
        v = self.verdicts(timer_list="ok:Timer")
        self.assertEqual(v["timer_list"], iv.NOT_MEASURED)

    def test_what_the_host_lacks_cannot_leak(self):
        self.assertEqual(self.verdicts(sched_debug="absent")["sched_debug"], iv.NA)

    def test_mount_paths_leak_when_they_name_host_paths_other_than_root(self):
        self.assertEqual(self.verdicts(mount_paths="ok:/ | /host/upper")["mount_paths"],
                         iv.SHARED)
        self.assertEqual(self.verdicts(mount_paths="ok:/ | /run/vmpod/layers")["mount_paths"],
                         iv.OWN)

    def test_an_unparsable_uptime_is_not_measured(self):
        self.assertEqual(self.verdicts(uptime="ok:soon")["uptime"], iv.NOT_MEASURED)


class Containment(unittest.TestCase):
    def test_bounds(self):
        self.assertEqual(iv.bounded_verdict(64, 72), iv.BOUNDED)
        self.assertEqual(iv.bounded_verdict(500, 72), iv.UNBOUNDED)
        self.assertEqual(iv.bounded_verdict(None, 72), iv.NOT_MEASURED)

    def test_latency_within_twice_the_baseline_is_bounded(self):
        self.assertEqual(iv.latency_verdict(10.0, 19.0), iv.BOUNDED)
        self.assertEqual(iv.latency_verdict(10.0, 25.0), iv.UNBOUNDED)
        self.assertEqual(iv.latency_verdict(None, 25.0), iv.NOT_MEASURED)
        self.assertEqual(iv.latency_verdict(10.0, None), iv.NOT_MEASURED)


class Seccomp(unittest.TestCase):
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0}]},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW",
             "includes": {"arches": ["amd64", "x32"]}},
            {"names": ["sync_file_range2"], "action": "SCMP_ACT_ALLOW",
             "includes": {"arches": ["ppc64le"]}},
            {"names": ["mount"], "action": "SCMP_ACT_ALLOW",
             "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["chroot"], "action": "SCMP_ACT_ALLOW",
             "includes": {"caps": ["CAP_SYS_CHROOT"]}},
            {"names": ["mount"], "action": "SCMP_ACT_ERRNO",
             "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0}],
             "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
        ]}

    def test_allowlist_follows_arch_and_capabilities(self):
        self.assertEqual(iv.allowed_syscalls(self.profile, ["CAP_SYS_CHROOT"]),
                         {"read", "write", "personality", "arch_prctl", "chroot", "clone"})
        self.assertIn("mount", iv.allowed_syscalls(self.profile, ["CAP_SYS_ADMIN"]))
        self.assertNotIn("clone", iv.allowed_syscalls(self.profile, ["CAP_SYS_ADMIN"]))

    def test_a_profile_allowing_by_default_is_refused(self):
        with self.assertRaises(ValueError):
            iv.allowed_syscalls({"defaultAction": "SCMP_ACT_ALLOW"}, [])

    def test_runtime_profile_drops_rules_for_other_arches_and_caps(self):
        spec = iv.runtime_profile(self.profile, ["CAP_SYS_CHROOT"])
        names = [n for r in spec["syscalls"] for n in r["names"]]
        self.assertNotIn("sync_file_range2", names)
        self.assertIn("chroot", names)
        self.assertEqual(spec["defaultErrnoRet"], 1)
        self.assertFalse(any("includes" in r or "excludes" in r for r in spec["syscalls"]))


def insn(code, k=0, jt=0, jf=0):
    return (code, jt, jf, k)


LD_ABS, JEQ, RET = 0x20, 0x15, 0x06
KILL, ERRNO_EPERM = 0x80000000, 0x00050001
# An allowlist as seccompiler lays one out: the arch, then one test per number, `openat`
# (257) only with its first argument equal to 5, everything else killed.
ALLOWLIST = [insn(LD_ABS, 4), insn(JEQ, bpf.AUDIT_ARCH_X86_64, 1, 0), insn(RET, KILL),
             insn(LD_ABS, 0), insn(JEQ, 0, 0, 1), insn(RET, bpf.RET_ALLOW),
             insn(JEQ, 257, 0, 3), insn(LD_ABS, 16), insn(JEQ, 5, 0, 1),
             insn(RET, bpf.RET_ALLOW), insn(RET, KILL)]
# A denylist as libseccomp lays one out for QEMU: `mknod` (133) fails, the rest is allowed.
DENYLIST = [insn(LD_ABS, 0), insn(0x25, 200, 2, 0), insn(JEQ, 133, 0, 1),
            insn(RET, ERRNO_EPERM), insn(RET, bpf.RET_ALLOW)]


class SeccompFilters(unittest.TestCase):
    names = {0: "read", 1: "write", 133: "mknod", 257: "openat"}

    def test_an_allowlist_allows_its_numbers_and_argument_checked_ones(self):
        self.assertEqual(bpf.allowed([ALLOWLIST], self.names), ["openat", "read"])

    def test_a_denylist_allows_all_but_what_it_denies(self):
        self.assertEqual(bpf.allowed([DENYLIST], self.names), ["openat", "read", "write"])

    def test_a_thread_with_two_filters_gets_what_both_allow(self):
        self.assertEqual(bpf.allowed([ALLOWLIST, DENYLIST], self.names), ["openat", "read"])

    def test_a_thread_with_no_filter_allows_everything(self):
        self.assertEqual(bpf.allowed([], self.names), sorted(self.names.values()))

    def test_broken_programs_are_refused_by_name(self):
        with self.assertRaisesRegex(bpf.BpfError, "whole instructions"):
            bpf.decode(b"\0" * 12)
        with self.assertRaisesRegex(bpf.BpfError, "runs off its end"):
            bpf.allowed([[insn(LD_ABS, 0)]], self.names)

    def test_the_cell_is_bounded_only_when_every_thread_is_filtered(self):
        value, verdict = iv.filter_cell({"vmpod-vmm": {"vmpod-vmm": 34, "vcpu": 21}}, 362)
        self.assertEqual(verdict, iv.BOUNDED)
        self.assertIn("vmpod-vmm: vcpu 21, vmpod-vmm 34", value)
        self.assertEqual(iv.filter_cell({"qemu": {"qemu": 362}}, 362)[1], iv.NOT_MEASURED)
        self.assertEqual(iv.filter_cell({"qemu": {"qemu": 300}}, 362, ["9: EPERM"])[1],
                         iv.NOT_MEASURED)
        self.assertEqual(iv.filter_cell({}, 362, ["9: EPERM"]),
                         ("not read: 9: EPERM", iv.NOT_MEASURED))

    def test_the_headers_name_the_common_syscalls(self):
        names = bpf.syscall_names()
        self.assertEqual(names[0], "read")
        self.assertEqual(names[257], "openat")

    def test_a_real_process_filter_is_read_back_from_the_kernel(self):
        # A child installs DENYLIST for real, then waits; what the kernel hands back must be
        # that program, and its verdicts the same.
        ready_r, ready_w = os.pipe()
        hold_r, hold_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                raw = b"".join(struct.pack("<HBBI", *i) for i in DENYLIST)
                buf = ctypes.create_string_buffer(raw)

                class Prog(ctypes.Structure):
                    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
                prog = Prog(len(DENYLIST), ctypes.addressof(buf))
                libc = ctypes.CDLL(None, use_errno=True)
                libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
                ok = libc.prctl(22, 2, ctypes.byref(prog), 0, 0)  # PR_SET_SECCOMP, FILTER
                os.write(ready_w, b"1" if ok == 0 else b"0")
                os.read(hold_r, 1)
            finally:
                os._exit(0)
        try:
            self.assertEqual(os.read(ready_r, 1), b"1")
            allowed = bpf.process_allowed(pid, self.names)
            self.assertEqual(list(allowed.values()), [["openat", "read", "write"]])
        finally:
            os.write(hold_w, b"x")
            os.waitpid(pid, 0)
            for fd in (ready_r, ready_w, hold_r, hold_w):
                os.close(fd)


class Tables(unittest.TestCase):
    rows = [("kernel identity", "uname -r", {"host": ("6.18", ""), "runc": ("6.18", iv.SHARED),
                                            "vmpod": ("6.1", iv.OWN)}),
            ("containment", "a|b", {"runc": ("", iv.NOT_RUN)})]

    def test_markdown_has_a_group_line_and_escapes_pipes(self):
        md = iv.render_markdown(self.rows, ["host", "runc", "vmpod"])
        self.assertIn("| **kernel identity** |", md)
        self.assertIn("6.1 — **own**", md)
        self.assertIn("| a\\|b |", md)
        self.assertIn("**not measured**", md)  # the missing vmpod cell of the second row

    def test_text_table_cuts_long_cells(self):
        text = iv.render_text([("g", "p", {"runc": ("x" * 100, iv.SHARED)})], ["runc"], 20)
        self.assertIn("…", text)


if __name__ == "__main__":
    unittest.main()
