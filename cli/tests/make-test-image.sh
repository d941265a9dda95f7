#!/usr/bin/env bash
# A two-layer test image made with umoci from the busybox tree, written three ways:
# OUT/oci (an OCI layout), OUT/oci.tar (an oci-archive) and OUT/docker.tar (a docker-archive,
# by skopeo). Layer 2 deletes a file and a directory of layer 1 (whiteouts) and adds a user;
# the config sets Entrypoint, Cmd, Env, WorkingDir and User.
#
#   make-test-image.sh OUT BUSYBOX_ROOTFS
set -euo pipefail
out=${1:?usage: make-test-image.sh OUT BUSYBOX_ROOTFS}
busybox=${2:?usage: make-test-image.sh OUT BUSYBOX_ROOTFS}
layout="$out/oci"
umoci init --layout "$layout"
umoci new --image "$layout:t"
umoci unpack --image "$layout:t" "$out/bundle" >/dev/null
root="$out/bundle/rootfs"
cp -a "$busybox/." "$root/"
echo "from layer one" > "$root/etc/motd"
mkdir -p "$root/opt/keep" "$root/opt/drop"
echo a > "$root/opt/keep/a"
echo b > "$root/opt/drop/b"
umoci repack --image "$layout:t" "$out/bundle"
rm -rf "$out/bundle"
umoci unpack --image "$layout:t" "$out/bundle" >/dev/null
rm "$root/etc/motd"
rm -rf "$root/opt/drop"
echo 'app:x:1000:1000::/opt:/bin/sh' >> "$root/etc/passwd"
echo 'app:x:1000:' >> "$root/etc/group"
umoci repack --image "$layout:t" "$out/bundle"
rm -rf "$out/bundle"
umoci config --image "$layout:t" --os linux --architecture amd64 \
    --config.entrypoint /bin/sh --config.entrypoint -c \
    --config.cmd 'echo $GREETING from $(pwd) as $(id -un)' \
    --config.env GREETING=hi --config.env PATH=/bin \
    --config.workingdir /opt --config.user app
umoci gc --layout "$layout"
tar -C "$layout" -cf "$out/oci.tar" .
skopeo --insecure-policy copy -q "oci:$layout:t" "docker-archive:$out/docker.tar:vmpod-test/docker:1"
