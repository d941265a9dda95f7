#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 60); fails on the first crash,
# leaving the reproducer in fuzz/artifacts/<target>/.
#
# cargo fuzz needs a few unstable rustc flags; RUSTC_BOOTSTRAP lets the stable toolchain (the
# only one here) accept them.
set -euo pipefail
seconds=${1:-60}
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || { echo "fuzz: cargo-fuzz is missing (scripts/setup.sh installs it)" >&2; exit 1; }
export RUSTC_BOOTSTRAP=1
# The targets keep a scratch disk and a socket directory under TMPDIR; give them their own.
TMPDIR=$(mktemp -d -t vmpod-fuzz.XXXXXX)
export TMPDIR
trap 'rm -rf "$TMPDIR"' EXIT
for target in $(cargo fuzz list); do
    echo "fuzz: $target for ${seconds}s" >&2
    log=$(mktemp)
    if ! cargo fuzz run "$target" -- -max_total_time="$seconds" > "$log" 2>&1; then
        tail -40 "$log" >&2
        rm -f "$log"
        echo "fuzz: $target failed" >&2
        exit 1
    fi
    grep -E '^Done' "$log" | sed "s/^/fuzz: $target: /" >&2 || true
    rm -f "$log"
done
