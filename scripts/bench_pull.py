#!/usr/bin/env python3
"""Registry pull benchmark: `vmpod pull` of a four-layer image from Debian's docker-registry on
loopback against `skopeo copy` of the same image to an OCI layout.

The image (built here with umoci): the busybox tree, 32 MiB of random bytes (gzip cannot
shrink them), 40 MB of text (`seq`, compresses well) and 2,000 small files, each its own
layer. Cases, alternating, cold each run:
  vmpod pull          into an empty store (its own vmpod.toml): download, digest checks, every
                      layer unpacked and turned into erofs: ready to run
  skopeo copy         docker:// to a new OCI layout directory: download and digest checks only
  vmpod pull (again)  the same image into the store the previous run filled: manifest and
                      config only, no layer fetched
  vmpod image import  the layout skopeo wrote, into another empty store: the conversion
                      alone (digest checks, unpack, erofs), no network
The registry's files stay in the host's page cache for every case alike. Peak RSS is the
command's own (and its waited-for children's, mkfs.erofs for vmpod). Prints a table, writes
results/pull.csv and results/pull.png.

  scripts/bench_pull.py [--runs N]
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VMPOD = ROOT / "target/release/vmpod"
GUEST_DIR = Path(os.environ.get("VMPOD_GUEST_DIR", ROOT / "build/guest"))
REGISTRY = "/usr/bin/docker-registry"

LAYERS = r"""
set -eu
layout=$1 busybox=$2 work=$3
umoci init --layout "$layout"
umoci new --image "$layout:b"
add() {  # add NAME: one more layer holding what fill_NAME writes into the tree
    rm -rf "$work/bundle"
    umoci unpack --image "$layout:b" "$work/bundle" >/dev/null
    "fill_$1" "$work/bundle/rootfs"
    umoci repack --image "$layout:b" "$work/bundle"
}
fill_busybox() { cp -a "$busybox/." "$1/"; }
fill_random() { mkdir -p "$1/data"; head -c 33554432 /dev/urandom > "$1/data/random"; }
fill_text() { mkdir -p "$1/data"; seq 1 5000000 > "$1/data/numbers"; }
fill_small() {
    mkdir -p "$1/data/small"
    i=0; while [ $i -lt 2000 ]; do echo "file $i" > "$1/data/small/f$i"; i=$((i+1)); done
}
for layer in busybox random text small; do add $layer; done
rm -rf "$work/bundle"
umoci config --image "$layout:b" --os linux --architecture amd64 --config.cmd sh
umoci gc --layout "$layout"
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_registry(scratch: Path):
    port = free_port()
    config = scratch / "registry.yml"
    config.write_text(f"""version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {scratch / "storage"}
http:
  addr: 127.0.0.1:{port}
""")
    proc = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                sys.exit(f"bench: {REGISTRY} did not start (apt-get install docker-registry)")
            time.sleep(0.05)


def timed(cmd, env=None):
    """Wall ms and peak RSS MiB of one command, which must succeed."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = (time.monotonic() - t0) * 1e3
    err = proc.stderr.read().decode(errors="replace").strip()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed: {err}")
    return elapsed, usage.ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    busybox = GUEST_DIR / "busybox-rootfs"
    if not busybox.is_dir():
        sys.exit(f"bench: {busybox} is missing: run `make guest`")
    scratch = Path(tempfile.mkdtemp(prefix="vmpod-bench-pull-"))
    registry = None
    try:
        layout = scratch / "image"
        subprocess.run(["bash", "-c", LAYERS, "layers", str(layout), str(busybox), str(scratch)],
                       check=True, stdout=subprocess.DEVNULL)
        registry, addr = start_registry(scratch)
        image = f"{addr}/bench/layers:1"
        subprocess.run(["skopeo", "--insecure-policy", "copy", "-q", "--dest-tls-verify=false",
                        f"oci:{layout}:b", f"docker://{image}"], check=True)
        size = sum(f.stat().st_size for f in (layout / "blobs/sha256").iterdir())
        times = {"vmpod pull": [], "skopeo copy": [], "vmpod pull (again)": [],
                 "vmpod image import": []}
        rss = {name: [] for name in times}
        for run in range(args.runs):
            store = scratch / f"store-{run}"
            config = scratch / f"vmpod-{run}.toml"
            config.write_text(f'image_store = "{store}"\n')
            env = dict(os.environ, VMPOD_CONFIG=str(config))
            import_config = scratch / f"vmpod-import-{run}.toml"
            import_config.write_text(f'image_store = "{scratch / f"import-{run}"}"\n')
            import_env = dict(os.environ, VMPOD_CONFIG=str(import_config))
            cases = {
                "vmpod pull": ([str(VMPOD), "pull", image], env),
                "skopeo copy": (["skopeo", "--insecure-policy", "copy", "-q",
                                 "--src-tls-verify=false", f"docker://{image}",
                                 f"oci:{scratch / f'skopeo-{run}'}:b"], None),
                "vmpod pull (again)": ([str(VMPOD), "pull", image], env),
                "vmpod image import": ([str(VMPOD), "image", "import",
                                        str(scratch / f"skopeo-{run}"), "bench/layers:1"],
                                       import_env),
            }
            for name, (cmd, case_env) in cases.items():
                ms, peak = timed(cmd, case_env)
                times[name].append(ms)
                rss[name].append(peak)
            shutil.rmtree(store)
            shutil.rmtree(scratch / f"import-{run}")
            shutil.rmtree(scratch / f"skopeo-{run}")
            print(f"  run {run}: " + ", ".join(f"{n} {t[-1]:.0f} ms" for n, t in times.items()),
                  file=sys.stderr)
    finally:
        if registry:
            registry.kill()
            registry.wait()
        shutil.rmtree(scratch, ignore_errors=True)

    base = statistics.median(times["skopeo copy"])
    print(f"\n{'4 layers, ' + f'{size / 1e6:.0f} MB of blobs':28} {'median ms':>10} {'p90 ms':>8}"
          f" {'vs skopeo':>10} {'peak RSS MiB':>13}   ({args.runs} runs each, alternating)")
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        peak = statistics.median(rss[name])
        print(f"{name:28} {med:10.1f} {benchlib.pct(ts, 90):8.1f} {med / base:9.2f}x {peak:13.1f}")
        rows.append({"case": name, "median_ms": round(med, 1),
                     "p90_ms": round(benchlib.pct(ts, 90), 1),
                     "ratio_vs_skopeo_copy": round(med / base, 2),
                     "peak_rss_mib": round(peak, 1)})
    out = ROOT / "results"
    out.mkdir(exist_ok=True)
    benchlib.write_csv(out / "pull.csv", rows)
    benchlib.plot(out, "pull", "Registry pull of a 4-layer image on loopback (cold)",
                  [{"case": r["case"], "median_ms": r["median_ms"],
                    "idle_pss_mib": r["peak_rss_mib"]} for r in rows],
                  "median ms", "peak RSS MiB")


if __name__ == "__main__":
    main()
