#!/bin/sh
# /init of the PCI guest (busybox sh). Built into the base initramfs by
# setup.sh; run.sh adds /vbdev/config (settings) and /vbdev/cmd (the program).
#
# 1. mounts proc, sysfs and devtmpfs, reserves hugepages;
# 2. loads the modules of the mode and binds every virtio-blk (1af4:1042) and
#    virtio-scsi (1af4:1048) PCI function to vfio-pci, uio_pci_generic, or
#    leaves it to the kernel's virtio drivers;
# 3. prints one "VBDEV-PCI <kind> <BDF> <driver> <node>" line per function,
#    kind blk/scsi (QEMU-emulated) or vhost-blk/vhost-scsi (vhost-user, told
#    apart by their PCI slots: 0x10-0x17 and 0x18-0x1e), exports
#    VBDEV_PCI_BLK / VBDEV_PCI_SCSI / VBDEV_PCI_VHOST_BLK /
#    VBDEV_PCI_VHOST_SCSI (space-separated BDFs) and VBDEV_PCI_MODE; in mode
#    kernel waits for the disks, prints "VBDEV-DISK <dev> <kind> <BDF>" per
#    disk and exports VBDEV_VHOST_BLK_DEV / VBDEV_VHOST_SCSI_DEV (their
#    /dev nodes); runs the program, prints "VBDEV-EXIT <code>";
# 4. powers off. Any failure before the program prints "VBDEV-ERROR <why>".

export PATH=/bin:/sbin HOME=/ TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The kernel found no /dev/console in the initramfs: take the console now.
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm
mount -t tmpfs tmpfs /dev/shm

MODE=vfio HUGEPAGES=0 NBLK=0 NSCSI=0 NSCSIDISKS=0 NVBLK=0 NVSCSI=0
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
VBDEV_PCI_VHOST_BLK=""
VBDEV_PCI_VHOST_SCSI=""
nblk=0
nscsi=0
nvblk=0
nvscsi=0
functions=""
for dev in /sys/bus/pci/devices/*; do
    [ "$(cat "$dev/vendor")" = 0x1af4 ] || continue
    case $(cat "$dev/device") in
    0x1042) kind=blk ;;
    0x1048) kind=scsi ;;
    *) continue ;;
    esac
    bdf=${dev##*/}
    # run.sh puts the vhost-user functions (same device ids) at fixed slots.
    slot=$(( 0x$(echo "$bdf" | cut -d: -f3 | cut -d. -f1) ))
    if [ $kind = blk ] && [ $slot -ge 16 ] && [ $slot -le 23 ]; then
        kind=vhost-blk
    elif [ $kind = scsi ] && [ $slot -ge 24 ] && [ $slot -le 30 ]; then
        kind=vhost-scsi
    fi
    if [ "$MODE" != kernel ]; then
        if [ -e "$dev/driver" ]; then
            echo "$bdf" >"$dev/driver/unbind" || fail "cannot unbind $bdf"
        fi
        echo "$driver" >"$dev/driver_override"
        echo "$bdf" >/sys/bus/pci/drivers_probe
    fi
    bound=$(readlink "$dev/driver")
    [ "${bound##*/}" = "$driver" ] || fail "$bdf ($kind) is bound to '${bound##*/}', not $driver"
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
    functions="$functions $kind:$bdf"
    case $kind in
    blk)
        VBDEV_PCI_BLK="${VBDEV_PCI_BLK:+$VBDEV_PCI_BLK }$bdf"
        nblk=$((nblk + 1))
        ;;
    scsi)
        VBDEV_PCI_SCSI="${VBDEV_PCI_SCSI:+$VBDEV_PCI_SCSI }$bdf"
        nscsi=$((nscsi + 1))
        ;;
    vhost-blk)
        VBDEV_PCI_VHOST_BLK="${VBDEV_PCI_VHOST_BLK:+$VBDEV_PCI_VHOST_BLK }$bdf"
        nvblk=$((nvblk + 1))
        ;;
    vhost-scsi)
        VBDEV_PCI_VHOST_SCSI="${VBDEV_PCI_VHOST_SCSI:+$VBDEV_PCI_VHOST_SCSI }$bdf"
        nvscsi=$((nvscsi + 1))
        ;;
    esac
done
[ $nblk -eq "$NBLK" ] || fail "found $nblk virtio-blk functions, expected $NBLK"
[ $nscsi -eq "$NSCSI" ] || fail "found $nscsi virtio-scsi functions, expected $NSCSI"
[ $nvblk -eq "$NVBLK" ] || fail "found $nvblk vhost-user-blk functions, expected $NVBLK"
[ $nvscsi -eq "$NVSCSI" ] || fail "found $nvscsi vhost-user-scsi functions, expected $NVSCSI"
if [ "$MODE" = vfio ] || [ "$MODE" = noiommu ]; then
    wait_for /dev/vfio/vfio || fail "/dev/vfio/vfio did not appear"
fi

# disks_of BDF: the kernel's disks (vdX, sdX) behind one PCI function
disks_of() {
    for b in /sys/bus/pci/devices/$1/virtio*/block/* \
        /sys/bus/pci/devices/$1/virtio*/host*/target*/*/block/*; do
        [ -e "$b" ] && echo "${b##*/}"
    done
}

VBDEV_VHOST_BLK_DEV=""
VBDEV_VHOST_SCSI_DEV=""
if [ "$MODE" = kernel ]; then
    # The kernel's disks: virtio-blk ones at once, SCSI ones after the scan.
    # Each blk function has one; the emulated SCSI controller NSCSIDISKS; a
    # vhost-user-scsi one at least one (its LUNs are the target's business).
    for f in $functions; do
        kind=${f%%:*}
        bdf=${f#*:}
        want=1
        [ $kind = scsi ] && want=$NSCSIDISKS
        i=0
        while [ "$(disks_of "$bdf" | wc -l)" -lt "$want" ]; do
            i=$((i + 1))
            [ $i -gt 200 ] && fail "the kernel did not show the disks of $kind $bdf: $(ls /sys/block)"
            usleep 50000
        done
        for d in $(disks_of "$bdf"); do
            echo "VBDEV-DISK /dev/$d $kind $bdf"
            case $kind in
            vhost-blk) VBDEV_VHOST_BLK_DEV="${VBDEV_VHOST_BLK_DEV:+$VBDEV_VHOST_BLK_DEV }/dev/$d" ;;
            vhost-scsi) VBDEV_VHOST_SCSI_DEV="${VBDEV_VHOST_SCSI_DEV:+$VBDEV_VHOST_SCSI_DEV }/dev/$d" ;;
            esac
        done
    done
fi

export VBDEV_PCI_MODE=$MODE VBDEV_PCI_BLK VBDEV_PCI_SCSI VBDEV_PCI_VHOST_BLK VBDEV_PCI_VHOST_SCSI
export VBDEV_VHOST_BLK_DEV VBDEV_VHOST_SCSI_DEV
echo "VBDEV-RUN $(cat /vbdev/cmdline)"
cd /tmp
sh /vbdev/cmd </dev/null
rc=$?
echo "VBDEV-EXIT $rc"
off
