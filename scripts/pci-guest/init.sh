#!/bin/sh
# /init of the PCI guest (busybox sh). Built into the base initramfs by
# setup.sh; run.sh adds /vbdev/config (settings) and /vbdev/cmd (the program).
#
# 1. mounts proc, sysfs and devtmpfs, reserves hugepages;
# 2. loads the modules of the mode and binds every virtio-blk (1af4:1042) and
#    virtio-scsi (1af4:1048) PCI function to vfio-pci, uio_pci_generic, or
#    leaves it to the kernel's virtio drivers;
# 3. prints one "VBDEV-PCI <blk|scsi> <BDF> <driver> <node>" line per function,
#    exports VBDEV_PCI_BLK / VBDEV_PCI_SCSI (space-separated BDFs) and
#    VBDEV_PCI_MODE, runs the program, prints "VBDEV-EXIT <code>";
# 4. powers off. Any failure before the program prints "VBDEV-ERROR <why>".

export PATH=/bin:/sbin HOME=/ TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The kernel found no /dev/console in the initramfs: take the console now.
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm
mount -t tmpfs tmpfs /dev/shm

MODE=vfio HUGEPAGES=0 NBLK=0 NSCSI=0 NSCSIDISKS=0
. /vbdev/config
KVER=$(cat /etc/kver)
MODDIR=/lib/modules/$KVER

off() {
    sync
    poweroff -f
    echo o >/proc/sysrq-trigger
    sleep 10
}

fail() {
    echo "VBDEV-ERROR $*"
    echo "--- last kernel messages:"
    dmesg | tail -n 25
    off
}

# load_set NAME: insmod every module of /etc/modorder-NAME (dependencies first)
load_set() {
    while read -r mod; do
        name=${mod##*/}
        name=${name%.ko}
        grep -q "^$(echo "$name" | tr - _) " /proc/modules && continue
        file=$MODDIR/$mod
        args=""
        if [ "$MODE" = noiommu ] && [ "$mod" = kernel/drivers/vfio/vfio.ko ]; then
            # Debian's vfio.ko has no no-IOMMU support; setup.sh rebuilt it.
            file=$MODDIR/extra/noiommu/vfio.ko
            args=enable_unsafe_noiommu_mode=1
        fi
        insmod "$file" $args || fail "insmod $file $args failed"
    done <"/etc/modorder-$1"
}

# wait_for PATH: up to ~5 s for a device node or sysfs entry to appear
wait_for() {
    i=0
    while [ ! -e "$1" ]; do
        i=$((i + 1))
        [ $i -gt 100 ] && return 1
        usleep 50000
    done
}

[ "$HUGEPAGES" -gt 0 ] && echo "$HUGEPAGES" >/proc/sys/vm/nr_hugepages

case $MODE in
vfio | noiommu)
    load_set vfio
    driver=vfio-pci
    ;;
uio)
    load_set uio
    driver=uio_pci_generic
    ;;
kernel)
    load_set kdrv
    driver=virtio-pci
    ;;
*) fail "unknown mode $MODE" ;;
esac

VBDEV_PCI_BLK=""
VBDEV_PCI_SCSI=""
nblk=0
nscsi=0
for dev in /sys/bus/pci/devices/*; do
    [ "$(cat "$dev/vendor")" = 0x1af4 ] || continue
    case $(cat "$dev/device") in
    0x1042) kind=blk ;;
    0x1048) kind=scsi ;;
    *) continue ;;
    esac
    bdf=${dev##*/}
    if [ "$MODE" != kernel ]; then
        if [ -e "$dev/driver" ]; then
            echo "$bdf" >"$dev/driver/unbind" || fail "cannot unbind $bdf"
        fi
        echo "$driver" >"$dev/driver_override"
        echo "$bdf" >/sys/bus/pci/drivers_probe
    fi
    bound=$(readlink "$dev/driver")
    [ "${bound##*/}" = "$driver" ] || fail "$bdf is bound to '${bound##*/}', not $driver"
    case $MODE in
    vfio)
        group=$(readlink "$dev/iommu_group") || fail "$bdf has no IOMMU group (is the vIOMMU on?)"
        node=/dev/vfio/${group##*/}
        ;;
    noiommu)
        group=$(readlink "$dev/iommu_group") || fail "$bdf has no IOMMU group"
        node=/dev/vfio/noiommu-${group##*/}
        ;;
    uio)
        u=$(ls "$dev/uio" 2>/dev/null | head -n1)
        [ -n "$u" ] || fail "$bdf has no uio device"
        node=/dev/$u
        ;;
    kernel)
        node=$(ls -d "$dev"/virtio* 2>/dev/null | head -n1)
        node=${node##*/}
        ;;
    esac
    if [ "$MODE" != kernel ]; then
        wait_for "$node" || fail "$node for $bdf did not appear"
    fi
    echo "VBDEV-PCI $kind $bdf $driver $node"
    if [ $kind = blk ]; then
        VBDEV_PCI_BLK="${VBDEV_PCI_BLK:+$VBDEV_PCI_BLK }$bdf"
        nblk=$((nblk + 1))
    else
        VBDEV_PCI_SCSI="${VBDEV_PCI_SCSI:+$VBDEV_PCI_SCSI }$bdf"
        nscsi=$((nscsi + 1))
    fi
done
[ $nblk -eq "$NBLK" ] || fail "found $nblk virtio-blk functions, expected $NBLK"
[ $nscsi -eq "$NSCSI" ] || fail "found $nscsi virtio-scsi functions, expected $NSCSI"
if [ "$MODE" = vfio ] || [ "$MODE" = noiommu ]; then
    wait_for /dev/vfio/vfio || fail "/dev/vfio/vfio did not appear"
fi
if [ "$MODE" = kernel ]; then
    # The kernel's disks: virtio-blk ones at once, SCSI ones after the scan.
    i=0
    while [ "$(ls /sys/block | grep -c '^[vs]d')" -lt $((NBLK + NSCSIDISKS)) ]; do
        i=$((i + 1))
        [ $i -gt 100 ] && fail "the kernel did not show all disks: $(ls /sys/block)"
        usleep 50000
    done
    for b in /sys/block/vd* /sys/block/sd*; do
        [ -e "$b" ] && echo "VBDEV-DISK /dev/${b##*/}"
    done
fi

export VBDEV_PCI_MODE=$MODE VBDEV_PCI_BLK VBDEV_PCI_SCSI
echo "VBDEV-RUN $(cat /vbdev/cmdline)"
cd /tmp
sh /vbdev/cmd </dev/null
rc=$?
echo "VBDEV-EXIT $rc"
off
