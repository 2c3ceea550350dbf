#!/usr/bin/env bash
# Start qemu-storage-daemon as a vhost-user-blk target for vbdev:
# a 1 GiB sparse raw image exported with 2 queues, 512-byte blocks, writable.
#
#   scripts/qsd-example.sh [IMAGE] [SOCKET]
#
#   IMAGE   raw image file, created (sparse, 1 GiB) if missing
#           (default /tmp/vbdev-disk.raw)
#   SOCKET  vhost-user-blk socket path (default /tmp/vbdev-blk.sock)
#
# Discards punch holes in the image (discard=unmap). The daemon runs in the
# background; stop it with:  kill $(cat /tmp/vbdev-qsd.pid)
set -euo pipefail

image=${1:-/tmp/vbdev-disk.raw}
socket=${2:-/tmp/vbdev-blk.sock}
pidfile=/tmp/vbdev-qsd.pid

if ! command -v qemu-storage-daemon >/dev/null 2>&1; then
    echo "error: qemu-storage-daemon not found (Debian/Ubuntu: apt-get install qemu-utils," >&2
    echo "       or qemu-system-common on older releases)." >&2
    exit 1
fi

if [[ -e $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "error: a daemon is already running (pid $(cat "$pidfile"));" >&2
    echo "       stop it first: kill \$(cat $pidfile)" >&2
    exit 1
fi

# QEMU option values escape ',' as ',,'.
esc() { printf '%s' "${1//,/,,}"; }

if [[ ! -e $image ]]; then
    truncate -s 1G "$image"
fi
# qemu-storage-daemon changes its directory to / when it daemonizes.
image=$(realpath "$image")
socket=$(realpath -m "$socket")

# --daemonize returns once the socket is listening.
qemu-storage-daemon \
    --blockdev "driver=file,node-name=file0,filename=$(esc "$image"),discard=unmap" \
    --blockdev "driver=raw,node-name=disk0,file=file0,discard=unmap" \
    --export "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=$(esc "$socket"),writable=on,num-queues=2,logical-block-size=512" \
    --pidfile "$pidfile" \
    --daemonize

echo "qemu-storage-daemon running (pid $(cat "$pidfile"))"
echo "  image:  $image ($(stat -c %s "$image") bytes)"
echo "  socket: $socket (vhost-user-blk, 2 queues)"
echo "stop it with: kill \$(cat $pidfile)"
