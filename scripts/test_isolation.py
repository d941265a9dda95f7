#!/usr/bin/env python3
"""Tests of the isolation suite's parsing and verdicts (no container, no VM: fast; `make test`
runs them). `make isolation` runs the suite itself."""

import os
import subprocess
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import isolation_verdicts as iv  # noqa: E402

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
