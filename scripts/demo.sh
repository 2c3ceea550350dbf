#!/usr/bin/env bash
# The main job: vbdev out of the box, then against a third-party target.
# 1. start vbdev's own vhost-user-blk target on a file (`vbdev target`), show what the
#    initiator sees (`vbdev io info`), write a pattern, read it back and check it,
#    stop the target (SIGTERM) and check the pattern in the file;
# 2. vbdev's own vhost-user-scsi target with 2 targets x 2 LUNs: the scan, and a verified
#    write/read on one LUN;
# 3. the same as 1 against a qemu-storage-daemon export.
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

echo "== vbdev's own target"
own_image=$dir/own.raw
own_socket=$dir/own.sock
truncate -s 64M "$own_image"
"$vbdev" target --socket "$own_socket" --file "$own_image" --queues 2 2>"$dir/target.log" &
target_pid=$!
for _ in $(seq 100); do [[ -S $own_socket ]] && break; sleep 0.1; done
echo "+ vbdev io --vhost-user $own_socket info"
"$vbdev" io --vhost-user "$own_socket" info
"$vbdev" io --vhost-user "$own_socket" write --offset 1536 --pattern 0x5a --length 1048576
"$vbdev" io --vhost-user "$own_socket" read --offset 1536 --length 1048576 --pattern 0x5a
kill -TERM "$target_pid"
wait "$target_pid"
if cmp -s <(head -c 1048576 /dev/zero | tr '\0' '\132') <(tail -c +1537 "$own_image" | head -c 1048576); then
    echo "image file holds the pattern at offset 1536: ok"
else
    echo "image file does not hold the written pattern" >&2
    exit 1
fi

echo "== vbdev's own virtio-scsi target: 2 targets x 2 LUNs"
scsi_socket=$dir/scsi.sock
"$vbdev" target --socket "$scsi_socket" --dev-type scsi --targets 2 --luns 2 --malloc 64M 2>"$dir/scsi-target.log" &
scsi_pid=$!
for _ in $(seq 100); do [[ -S $scsi_socket ]] && break; sleep 0.1; done
echo "+ vbdev io --vhost-user $scsi_socket --dev-type scsi info"
"$vbdev" io --vhost-user "$scsi_socket" --dev-type scsi info
echo "+ vbdev io ... --bdev VirtioScsi0t1l1 write / read --offset 4096 --pattern 0x3c --length 1048576"
"$vbdev" io --vhost-user "$scsi_socket" --dev-type scsi --bdev VirtioScsi0t1l1 write --offset 4096 --pattern 0x3c --length 1048576
"$vbdev" io --vhost-user "$scsi_socket" --dev-type scsi --bdev VirtioScsi0t1l1 read --offset 4096 --length 1048576 --pattern 0x3c
kill -TERM "$scsi_pid"
wait "$scsi_pid"

echo "== qemu-storage-daemon"
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
