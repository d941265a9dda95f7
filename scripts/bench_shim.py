#!/usr/bin/env python3
"""Shim benchmark: `ctr run --rm IMAGE true` through containerd (Debian's 1.6, started here
with its own root and socket) with the runc shim and with the vmpod shim, alternating, with
medians, p90 and the ratio; and the host memory of one idle pod (`sleep 3600`): the sum of
PSS of the shim and every process below it (for vmpod: the VMM, its device backends and the
guest memory it touched; for runc: the container). Prints a table, writes results/shim.csv
and results/shim.png.

  scripts/bench_shim.py [--runs N]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import plot, table, tree_pss_mib, write_csv

ROOT = Path(__file__).resolve().parent.parent
GUEST = Path(os.environ.get("VMPOD_GUEST_DIR", ROOT / "build/guest"))
BIN = ROOT / "target/release"
IMAGE = "docker.io/library/busybox:latest"
RUNTIMES = {"runc shim": "io.containerd.runc.v2", "vmpod shim (qemu tcg)": "io.containerd.vmpod.v2"}


class Containerd:
    def __init__(self, tmp: Path):
        self.dir = tmp
        (tmp / "config.toml").write_text(
            f'version = 2\nroot = "{tmp}/root"\nstate = "{tmp}/state"\n'
            f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{tmp}/containerd.sock"\n'
            f'[ttrpc]\n  address = "{tmp}/containerd.sock.ttrpc"\n')
        env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", VMPOD_GUEST_DIR=str(GUEST))
        self.proc = subprocess.Popen(["containerd", "--config", str(tmp / "config.toml")], env=env,
                                     stdout=open(tmp / "containerd.log", "w"), stderr=subprocess.STDOUT)
        for _ in range(500):
            if (tmp / "containerd.sock").exists():
                break
            time.sleep(0.02)
        archive = tmp / "busybox.tar"
        subprocess.run(["skopeo", "--insecure-policy", "copy", "-q", f"oci:{GUEST / 'busybox-oci'}:latest",
                        f"docker-archive:{archive}:{IMAGE}"], check=True)
        self.ctr("images", "import", str(archive))

    def ctr(self, *args, check=True):
        return subprocess.run(["ctr", "-a", str(self.dir / "containerd.sock"), *args],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, check=check)

    def close(self):
        self.proc.kill()
        self.proc.wait()


def shim_pid(container_id):
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].decode(errors="replace").split("/")[-1].startswith("containerd-shim") \
                    and f"-id\0{container_id}".encode() in b"\0".join(cmd):
                return int(entry)
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args()
    if not (BIN / "containerd-shim-vmpod-v2").exists() or not (GUEST / "busybox-oci").exists():
        sys.exit("bench: build the shim and the guest first (`make build guest`)")
    times = {name: [] for name in RUNTIMES}
    memory = {}
    with tempfile.TemporaryDirectory(prefix="vmpod-bench-shim-") as tmp:
        c = Containerd(Path(tmp))
        try:
            for i in range(args.runs):
                for name, runtime in RUNTIMES.items():
                    t0 = time.monotonic()
                    out = c.ctr("run", "--rm", "--runtime", runtime, IMAGE, f"b{os.getpid()}-{i}", "true",
                                check=False)
                    if out.returncode != 0:
                        sys.exit(f"bench: {name} failed: {out.stderr.strip()}")
                    times[name].append((time.monotonic() - t0) * 1e3)
                print(f"  run {i}: " + ", ".join(f"{n} {t[-1]:.0f} ms" for n, t in times.items()),
                      file=sys.stderr)
            for name, runtime in RUNTIMES.items():
                cid = f"idle{os.getpid()}-{runtime.split('.')[2]}"
                c.ctr("run", "-d", "--runtime", runtime, IMAGE, cid, "sleep", "3600")
                time.sleep(8 if "vmpod" in runtime else 2)
                pid = shim_pid(cid)
                memory[name] = tree_pss_mib(pid) if pid else 0
                c.ctr("task", "kill", "-s", "KILL", cid, check=False)
                time.sleep(1)
                c.ctr("task", "delete", cid, check=False)
                c.ctr("container", "rm", cid, check=False)
        finally:
            c.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = table("ctr run --rm ... true", times, memory, "runc shim", args.runs)
    write_csv(out / "shim.csv", rows)
    plot(out, "shim", "containerd: the vmpod shim vs the runc shim (medians)", rows,
         "ms, ctr run --rm of true (log)", "MiB PSS of an idle pod")
    print(f"csv: {out / 'shim.csv'}, plot: {out / 'shim.png'}")


if __name__ == "__main__":
    main()
