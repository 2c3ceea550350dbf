#!/usr/bin/env bash
# Unbind/rebind stress of a vhost-user-scsi function served by `vbdev target`: each
# boot unbinds and rebinds the function CYCLES times in the guest
# (/sys/bus/pci/drivers/virtio-pci/{unbind,bind}) and reads the disk after each
# rebind with a timeout. Prints one line per boot and exits 1 if any boot hung.
#
# Usage: scripts/pci-guest/rebind-stress.sh [BOOTS [CYCLES]]   (default 8 boots, 3 cycles)
#
#   VBDEV      the vbdev binary (default target/debug/vbdev; build it first)
#   LOG        the target's --log filter (default debug)
#   OUT        directory for the logs (default a new /tmp/vbdev-rebind.XXXXXX):
#              bootN.target (target stderr), bootN.console (guest console)
#
# A boot that hangs prints, from the guest, "REBIND-HANG cycle N: ..." followed by the
# kernel's last messages.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
boots=${1:-8}
cycles=${2:-3}
vbdev=${VBDEV:-$root/target/debug/vbdev}
log=${LOG:-debug}
out=${OUT:-$(mktemp -d /tmp/vbdev-rebind.XXXXXX)}
mkdir -p "$out"
[ -x "$vbdev" ] || { echo "rebind-stress: no $vbdev (cargo build -p vbdev)" >&2; exit 2; }

guest=$out/guest.sh
cat >"$guest" <<'EOF'
#!/bin/sh
N=${REBIND_CYCLES:-3}
bdf=${VBDEV_PCI_VHOST_SCSI%% *}
drv=/sys/bus/pci/drivers/virtio-pci
disk() {
    for b in /sys/bus/pci/devices/$bdf/virtio*/host*/target*/*/block/*; do
        [ -e "$b" ] && { echo /dev/${b##*/}; return 0; }
    done
    return 1
}
hang() { echo "REBIND-HANG $*"; dmesg | tail -20; exit 3; }
d=$(disk) || { echo "REBIND-FAIL no disk at start"; exit 1; }
timeout 5 dd if=$d of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null || hang "cycle 0: read of $d timed out"
i=1
while [ $i -le $N ]; do
    echo $bdf >$drv/unbind
    # bind probes synchronously (the SCSI scan included): in the background, so a
    # hung scan is reported instead of hanging this script.
    echo $bdf >$drv/bind &
    t=0
    d=""
    while [ $t -lt 100 ]; do
        d=$(disk) && break
        usleep 100000
        t=$((t + 1))
    done
    [ -n "$d" ] || hang "cycle $i: no disk 10 s after bind"
    wait
    timeout 5 dd if=$d of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null || hang "cycle $i: read of $d timed out"
    echo "REBIND-CYCLE $i ok $d"
    i=$((i + 1))
done
echo "REBIND-OK $N"
EOF
chmod +x "$guest"

hung=0
for b in $(seq "$boots"); do
    sock=$out/boot$b.sock
    "$vbdev" --log "$log" target --dev-type scsi --queues 2 --socket "$sock" --malloc 16M \
        2>"$out/boot$b.target" &
    tp=$!
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
    "$here/run.sh" --mode kernel --timeout 90 --vhost-queues 2 --vhost-user-scsi "$sock" \
        --env REBIND_CYCLES="$cycles" -- "$guest" >"$out/boot$b.console" 2>&1
    rc=$?
    kill "$tp" 2>/dev/null
    wait "$tp" 2>/dev/null
    res=$(grep -a -m1 -E 'REBIND-(OK|HANG|FAIL)' "$out/boot$b.console")
    echo "boot $b: exit $rc: ${res:-no result (see $out/boot$b.console)}"
    [ "$rc" = 0 ] || hung=1
done
echo "logs in $out"
exit $hung
