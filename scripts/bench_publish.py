#!/usr/bin/env python3
"""Published-port benchmark: the latency of one small HTTP/1.0 GET to busybox httpd in a
`vmpod run -d -p` container, from the host through the published port (a Python socket: no
client process per request; and curl: one process per request) against the same request
from inside the VM (busybox wget, one process per request, through `vmpod exec`). The guest's
clock may tick in 10 ms steps (jiffies on QEMU/TCG), too coarse for one request, so inside the
VM each sample is a batch of BATCH requests timed together, divided by BATCH. Medians and p90
of --runs samples each. Prints a table, writes results/publish.csv.

  scripts/bench_publish.py [--runs N]
"""

import argparse
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import pct, write_csv

ROOT = Path(__file__).resolve().parent.parent
VMPOD = ROOT / "target/release/vmpod"
SERVE = "mkdir /www && echo published > /www/index.html && exec httpd -f -p 80 -h /www"
# One line per batch: microseconds for BATCH wget requests. busybox awk's printf %d is 32-bit,
# so the seconds are cut to what an interval needs.
BATCH = 10
IN_VM = r"""
now() { adjtimex | awk '/tv_sec/{s=$2} /tv_usec/{u=$2} END{print (s%100000)*1000000+u}'; }
i=0
while [ $i -lt RUNS ]; do
  a=$(now); j=0
  while [ $j -lt BATCH ]; do wget -q -O /dev/null http://127.0.0.1:80/index.html; j=$((j+1)); done
  b=$(now)
  echo $((b-a))
  i=$((i+1))
done
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return reply


def timed(f):
    start = time.perf_counter()
    f()
    return (time.perf_counter() - start) * 1000


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    runs = parser.parse_args().runs
    port = free_port()
    cid = subprocess.run([str(VMPOD), "run", "-d", "-p", f"127.0.0.1:{port}:80", "busybox",
                          "sh", "-c", SERVE], check=True, capture_output=True,
                         text=True).stdout.strip()
    try:
        deadline = time.time() + 120
        while b"200 OK" not in get(port):
            if time.time() > deadline:
                sys.exit(f"port {port} never answered")
            time.sleep(0.2)
        for _ in range(3):
            get(port)
        url = f"http://127.0.0.1:{port}/index.html"
        times = {
            "host socket, published": [timed(lambda: get(port)) for _ in range(runs)],
            "host curl, published": [
                timed(lambda: subprocess.run(["curl", "-s", "-o", "/dev/null", "-0", url],
                                             check=True)) for _ in range(runs)],
        }
        out = subprocess.run([str(VMPOD), "exec", cid, "sh", "-c",
                              IN_VM.replace("RUNS", str(runs)).replace("BATCH", str(BATCH))],
                             check=True, capture_output=True, text=True).stdout
        times["in-VM wget"] = [int(line) / 1000 / BATCH for line in out.split()]
    finally:
        subprocess.run([str(VMPOD), "rm", "-f", cid], capture_output=True)
    rows = []
    print(f"\n{'GET /index.html':26} {'median ms':>10} {'p90 ms':>8}   ({runs} samples each)")
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"case": name, "median_ms": round(med, 2), "p90_ms": round(pct(ts, 90), 2)})
        print(f"{name:26} {med:10.2f} {pct(ts, 90):8.2f}")
    print(f"(in the VM: each sample the mean of a batch of {BATCH})")
    (ROOT / "results").mkdir(exist_ok=True)
    write_csv(ROOT / "results/publish.csv", rows)


if __name__ == "__main__":
    main()
