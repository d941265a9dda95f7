#!/usr/bin/env bash
# Builds the default `busybox` image, with no registry: an OCI layout made by umoci from the
# busybox tree build-busybox-rootfs.sh wrote. `make guest` imports it into vmpod's store.
#
#   build-busybox-image.sh OUT_DIR     # reads OUT_DIR/busybox-rootfs/, writes OUT_DIR/busybox-oci/
set -euo pipefail
out=${1:?usage: build-busybox-image.sh OUT_DIR}
root="$out/busybox-rootfs"
[ -d "$root" ] || { echo "build-busybox-image: $root is missing (scripts/build-busybox-rootfs.sh)" >&2; exit 1; }
command -v umoci >/dev/null || { echo "build-busybox-image: umoci is missing (apt-get install umoci)" >&2; exit 1; }
layout="$out/busybox-oci"
work=$(mktemp -d "${TMPDIR:-/tmp}/vmpod-busybox-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
rm -rf "$layout.tmp"
umoci init --layout "$layout.tmp"
umoci new --image "$layout.tmp:latest"
umoci unpack --image "$layout.tmp:latest" "$work/bundle" >/dev/null
cp -a "$root/." "$work/bundle/rootfs/"
umoci repack --image "$layout.tmp:latest" "$work/bundle"
umoci config --image "$layout.tmp:latest" --os linux --architecture amd64 \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.cmd sh --config.workingdir /
umoci gc --layout "$layout.tmp"
rm -rf "$layout"
mv "$layout.tmp" "$layout"
echo "$layout"
