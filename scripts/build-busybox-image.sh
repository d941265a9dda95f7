#!/usr/bin/env bash
# Builds the default `busybox` image, with no registry: an OCI layout made by umoci from the
# busybox tree build-busybox-rootfs.sh wrote. `make images` imports it into vmpod's store.
#
#   build-busybox-image.sh OUT_DIR     # reads OUT_DIR/busybox-rootfs/, writes OUT_DIR/busybox-oci/
set -euo pipefail
out=${1:?usage: build-busybox-image.sh OUT_DIR}
root="$out/busybox-rootfs"
[ -d "$root" ] || { echo "build-busybox-image: $root is missing (scripts/build-busybox-rootfs.sh)" >&2; exit 1; }
"$(dirname "$0")/oci-image-from-dir.sh" "$root" "$out/busybox-oci" latest \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.cmd sh --config.workingdir /
echo "$out/busybox-oci"
