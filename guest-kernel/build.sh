#!/usr/bin/env bash
# Builds vmpod's guest kernel (vmlinux, PVH-bootable) from Debian's linux-source-6.1.
#
# The result is cached outside the repository, keyed by a hash of the fragment, our patches and
# the source package's version, so a rebuild happens only when one of those changes.
#
#   guest-kernel/build.sh [OUT_DIR]    # prints the path of the cached vmlinux; copies it to OUT_DIR
#
# Environment: VMPOD_CACHE (default /var/cache/vmpod), JOBS (default: nproc).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache_root=${VMPOD_CACHE:-/var/cache/vmpod}
tarball=/usr/src/linux-source-6.1.tar.xz
jobs=${JOBS:-$(nproc)}
out_dir=${1:-}

die() { echo "guest-kernel: $*" >&2; exit 1; }

[ -f "$tarball" ] || die "missing $tarball: install the linux-source-6.1 package (scripts/setup.sh does)"
src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null) || die "cannot read the version of linux-source-6.1"

key=$( { echo "$src_version"; cat "$here/config.fragment"; cat "$here"/patches/*.patch; } | sha256sum | cut -c1-16)
cached="$cache_root/kernel/$key"

if [ ! -f "$cached/vmlinux" ]; then
    work="$cache_root/kernel/build-$key"
    rm -rf "$work"
    mkdir -p "$work"
    trap 'rm -rf "$work"' EXIT
    echo "guest-kernel: building $key from linux-source $src_version with $jobs jobs (about 12-20 minutes)" >&2
    tar -C "$work" -xf "$tarball"
    src="$work/linux-source-6.1"
    for p in "$here"/patches/*.patch; do
        patch -d "$src" -p1 --quiet --forward < "$p" || die "patch $(basename "$p") does not apply"
    done
    make -C "$src" -s KCONFIG_ALLCONFIG="$here/config.fragment" allnoconfig >/dev/null

    # Kconfig drops options whose dependencies are unmet without a word; we don't.
    missing=0
    while IFS= read -r line; do
        case "$line" in
            CONFIG_*=*) grep -qxF "$line" "$src/.config" || { echo "guest-kernel: $line did not survive into .config (got: $(grep -E "^(# )?${line%%=*}[= ]" "$src/.config" || echo absent))" >&2; missing=1; } ;;
            "# CONFIG_"*" is not set") opt=${line#\# }; opt=${opt%% *}; ! grep -q "^$opt=" "$src/.config" || { echo "guest-kernel: $opt must stay unset" >&2; missing=1; } ;;
        esac
    done < "$here/config.fragment"
    [ "$missing" = 0 ] || die "config fragment not fully applied; fix config.fragment"

    make -C "$src" -s -j"$jobs" vmlinux >&2
    mkdir -p "$cached"
    cp "$src/vmlinux" "$src/.config" "$cached/"
    strip --strip-debug "$cached/vmlinux" 2>/dev/null || true
    rm -rf "$work"
    trap - EXIT
fi

if [ -n "$out_dir" ]; then
    mkdir -p "$out_dir"
    cp "$cached/vmlinux" "$out_dir/vmlinux"
    cp "$cached/.config" "$out_dir/vmlinux.config"
fi
echo "$cached/vmlinux"
