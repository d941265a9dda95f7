#!/usr/bin/env bash
# An OCI layout holding one image whose single layer is a directory tree, made with umoci;
# the remaining arguments go to `umoci config` (Cmd, Env, ...).
#
#   oci-image-from-dir.sh ROOT_DIR LAYOUT TAG [UMOCI_CONFIG_ARGS...]
set -euo pipefail
root=${1:?usage: oci-image-from-dir.sh ROOT_DIR LAYOUT TAG [UMOCI_CONFIG_ARGS...]}
layout=${2:?usage}
tag=${3:?usage}
shift 3
command -v umoci >/dev/null || { echo "oci-image-from-dir: umoci is missing (apt-get install umoci)" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/vmpod-oci-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
rm -rf "$layout.tmp"
umoci init --layout "$layout.tmp"
umoci new --image "$layout.tmp:$tag"
umoci unpack --image "$layout.tmp:$tag" "$work/bundle" >/dev/null
cp -a "$root/." "$work/bundle/rootfs/"
umoci repack --image "$layout.tmp:$tag" "$work/bundle"
umoci config --image "$layout.tmp:$tag" --os linux --architecture amd64 "$@"
umoci gc --layout "$layout.tmp"
rm -rf "$layout"
mv "$layout.tmp" "$layout"
