#!/usr/bin/env bash
# Installs what building and testing vmpod needs on a fresh Debian 12 machine: Debian packages
# (only those missing) and the Rust components. Safe to run again; quiet when nothing is missing.
set -euo pipefail

packages=(
    # guest kernel build
    linux-source-6.1 build-essential bc bison flex libelf-dev libssl-dev cpio xz-utils
    # guests, the comparison hypervisor, the test initramfs (also zstd-compressed), test disks
    qemu-system-x86 busybox-static erofs-utils e2fsprogs iproute2 zstd
    # the agent links libseccomp statically; runc and crun are what the benchmarks compare with
    libseccomp-dev runc crun
    # images without a registry: the busybox image, the tests' OCI and Debian images
    umoci skopeo debootstrap
    # registry pulls: the tests' registry (Debian's docker-registry) and its htpasswd file
    docker-registry apache2-utils
    # the shim's tests run a real containerd; the CRI test gives its pods CNI networks, reaches
    # them from the node with curl and builds the CRI client (k8s-cri) from its .proto with protoc
    containerd containernetworking-plugins curl protobuf-compiler
    # benchmark plots
    gnuplot-nox
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }
for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component" >&2
done
command -v cargo-fuzz >/dev/null || { echo "setup: installing cargo-fuzz" >&2; cargo install --quiet --locked cargo-fuzz >&2; }

[ -r /dev/kvm ] || echo "setup: warning: /dev/kvm is not accessible; the VMM's tests will fail" >&2
