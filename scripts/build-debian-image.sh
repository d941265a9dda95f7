#!/usr/bin/env bash
# Builds a small Debian image for the tests (a real distribution: perl, dpkg, a full /etc),
# with debootstrap from Debian's mirror and umoci, as an OCI layout. It is cached outside the
# tree, since a fresh one takes minutes:
#
#   build-debian-image.sh     # prints the layout's path ($VMPOD_CACHE or ~/.cache/vmpod)
set -euo pipefail
cache=${VMPOD_CACHE:-$HOME/.cache/vmpod}
suite=bookworm
layout="$cache/debian-$suite-oci"
if [ -f "$layout/index.json" ]; then
    echo "$layout"
    exit 0
fi
for tool in debootstrap; do
    command -v $tool >/dev/null || { echo "build-debian-image: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done
# The mirror apt already uses.
mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
mirror=${mirror:-http://deb.debian.org/debian}
mkdir -p "$cache"
work=$(mktemp -d "$cache/.debian-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
debootstrap --variant=minbase "$suite" "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -20 "$work/debootstrap.log" >&2
    echo "build-debian-image: debootstrap of $suite from $mirror failed" >&2
    exit 1
}
# What the image does not need: apt's lists and caches.
rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
"$(dirname "$0")/oci-image-from-dir.sh" "$work/root" "$layout" "$suite" \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.cmd bash
echo "$layout"
