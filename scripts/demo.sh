#!/usr/bin/env bash
# The main job until the embedded target exists: start a qemu-storage-daemon
# vhost-user-blk export, show what vbdev sees (`vbdev io info`), write a pattern,
# read it back through vbdev and check it, check it in the image file too, stop.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

dir=$(mktemp -d /tmp/vbdev-demo.XXXXXX)
image=$dir/disk.raw
socket=$dir/blk.sock
pidfile=/tmp/vbdev-qsd.pid
cleanup() {
    if [[ -e $pidfile ]]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT

cargo build --release -q -p vbdev
vbdev=target/release/vbdev

scripts/qsd-example.sh "$image" "$socket"
echo "+ vbdev io --vhost-user $socket info"
"$vbdev" io --vhost-user "$socket" info
echo "+ vbdev io ... write --offset 1536 --pattern 0xa5 --length 1048576"
"$vbdev" io --vhost-user "$socket" write --offset 1536 --pattern 0xa5 --length 1048576
echo "+ vbdev io ... read --offset 1536 --length 1048576 --pattern 0xa5"
"$vbdev" io --vhost-user "$socket" read --offset 1536 --length 1048576 --pattern 0xa5
echo "+ vbdev io ... flush"
"$vbdev" io --vhost-user "$socket" flush
kill "$(cat "$pidfile")"
# The daemon removes its pidfile on exit: that is our signal that the image is final.
for _ in $(seq 100); do [[ -e $pidfile ]] || break; sleep 0.1; done
if cmp -s <(head -c 1048576 /dev/zero | tr '\0' '\245') <(tail -c +1537 "$image" | head -c 1048576); then
    echo "image file holds the pattern at offset 1536: ok"
else
    echo "image file does not hold the written pattern" >&2
    exit 1
fi
