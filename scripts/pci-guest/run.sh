#!/usr/bin/env bash
# Run a host program inside a QEMU guest (TCG) whose virtio-blk-pci and
# virtio-scsi-pci functions are bound to vfio-pci or uio_pci_generic, and exit
# with the program's exit code.
#
# Usage: scripts/pci-guest/run.sh [OPTIONS] -- HOST_BINARY [ARGS...]
#
#   --mode MODE        vfio (default): vfio-pci + type1, QEMU intel-iommu,
#                        iommu_platform=on, guest intel_iommu=on
#                      noiommu: vfio-pci with the rebuilt vfio.ko
#                        (enable_unsafe_noiommu_mode=1), no vIOMMU
#                      uio: uio_pci_generic, no vIOMMU
#                      kernel: the guest kernel's virtio-blk/virtio-scsi own the
#                        devices (disks /dev/vdX, /dev/sdX)
#   --disk FILE        raw image as a virtio-blk-pci function (repeatable)
#   --scsi-disk FILE   raw image as a scsi-hd disk on one virtio-scsi-pci
#                      controller, target N (0, 1, ...) LUN 0 (repeatable)
#   --vhost-user-blk SOCKET
#                      a vhost-user-blk-pci function connected to the target
#                      listening on SOCKET, at PCI slot 0x10, 0x11, ...
#                      (repeatable, up to 8; not with --mode vfio)
#   --vhost-user-scsi SOCKET
#                      a vhost-user-scsi-pci function connected to SOCKET, at
#                      PCI slot 0x18, 0x19, ... (repeatable, up to 7; not with
#                      --mode vfio). Guest RAM becomes a shared memfd when any
#                      vhost-user function is given.
#   --vhost-queues N   request queues of each vhost-user function (default 1;
#                      the target must offer at least N)
#   --timeout SECS     kill QEMU and fail (exit 124) after SECS (default 120)
#   --mem SIZE         guest RAM (default 512M)
#   --smp N            guest vCPUs (default 2; virtio-blk gets N queues)
#   --hugepages N      2 MiB hugepages reserved in the guest (default 32)
#   --env NAME=VALUE   set in the program's environment (repeatable)
#   --file SRC[:DEST]  also copy SRC into the guest, at DEST (default
#                      /vbdev/bin/NAME), with its shared libraries (repeatable)
#   --qemu-arg ARG     extra QEMU argument (repeatable)
#   --log FILE         also write the whole console output to FILE
#   --verbose          kernel messages at boot, and the QEMU command line
#
# The program runs as root in /tmp as /vbdev/bin/NAME, with VBDEV_PCI_MODE,
# VBDEV_PCI_BLK and VBDEV_PCI_SCSI (space-separated BDFs of the emulated
# functions), VBDEV_PCI_VHOST_BLK and VBDEV_PCI_VHOST_SCSI (those of the
# vhost-user functions) set; in mode kernel also VBDEV_VHOST_BLK_DEV and
# VBDEV_VHOST_SCSI_DEV (their disks, e.g. /dev/vdb, /dev/sdb). Console lines:
#   VBDEV-PCI <blk|scsi|vhost-blk|vhost-scsi> <BDF> <driver> <node>
#                                                one per virtio PCI function
#   VBDEV-DISK <dev> <kind> <BDF>                mode kernel: one per disk
#   VBDEV-EXIT <code>                            the program's exit code
#   VBDEV-ERROR <why>                            the guest setup failed
# Exit code: the program's, 124 on timeout, 125 when the guest printed no
# VBDEV-EXIT (setup failure, kernel panic, QEMU error), 2 on bad usage.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${VBDEV_CACHE:-$HOME/.cache/vbdev}/pci-guest"

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}
bad_usage() {
    echo "run.sh: $*" >&2
    echo "usage: run.sh [--mode vfio|noiommu|uio|kernel] [--disk FILE]... [--scsi-disk FILE]... [--vhost-user-blk SOCKET]... [--vhost-user-scsi SOCKET]... [--timeout SECS] -- HOST_BINARY [ARGS...]" >&2
    exit 2
}
log() {
    echo "pci-guest: $*" >&2
}

mode=vfio
disks=()
scsi_disks=()
vhost_blk=()
vhost_scsi=()
vhost_queues=1
timeout=120
mem=512M
smp=2
hugepages=32
envs=()
files=()
qemu_extra=()
logfile=""
verbose=0
while (($# > 0)); do
    case $1 in
        --mode) mode=${2:?}; shift ;;
        --disk) disks+=("${2:?}"); shift ;;
        --scsi-disk) scsi_disks+=("${2:?}"); shift ;;
        --vhost-user-blk) vhost_blk+=("${2:?}"); shift ;;
        --vhost-user-scsi) vhost_scsi+=("${2:?}"); shift ;;
        --vhost-queues) vhost_queues=${2:?}; shift ;;
        --timeout) timeout=${2:?}; shift ;;
        --mem) mem=${2:?}; shift ;;
        --smp) smp=${2:?}; shift ;;
        --hugepages) hugepages=${2:?}; shift ;;
        --env) envs+=("${2:?}"); shift ;;
        --file) files+=("${2:?}"); shift ;;
        --qemu-arg) qemu_extra+=("${2:?}"); shift ;;
        --log) logfile=${2:?}; shift ;;
        --verbose) verbose=1 ;;
        -h | --help) usage; exit 0 ;;
        --) shift; break ;;
        *) bad_usage "unknown argument: $1" ;;
    esac
    shift
done
(($# >= 1)) || bad_usage "no program given after --"
prog=$1
shift
case $mode in vfio | noiommu | uio | kernel) ;; *) bad_usage "unknown mode: $mode" ;; esac
[[ $timeout =~ ^[0-9]+$ ]] && ((timeout > 0)) || bad_usage "--timeout wants a positive number of seconds"
[[ $hugepages =~ ^[0-9]+$ ]] || bad_usage "--hugepages wants a number"
[[ -f $prog && -x $prog ]] || bad_usage "not an executable file: $prog"
for f in "${disks[@]}" "${scsi_disks[@]}"; do
    [[ -f $f || -b $f ]] || bad_usage "no such image file: $f"
done
for s in "${vhost_blk[@]}" "${vhost_scsi[@]}"; do
    [[ -S $s ]] || bad_usage "no vhost-user socket (is the target running?): $s"
done
((${#vhost_blk[@]} <= 8)) || bad_usage "at most 8 --vhost-user-blk (slots 0x10-0x17)"
((${#vhost_scsi[@]} <= 7)) || bad_usage "at most 7 --vhost-user-scsi (slots 0x18-0x1e)"
[[ $vhost_queues =~ ^[0-9]+$ ]] && ((vhost_queues > 0)) || bad_usage "--vhost-queues wants a positive number"
if [[ $mode == vfio ]] && ((${#vhost_blk[@]} + ${#vhost_scsi[@]} > 0)); then
    # With iommu_platform=on the frontend would send IOTLB messages, which the
    # targets do not implement; without it the device would bypass the vIOMMU.
    bad_usage "vhost-user functions need --mode noiommu, uio or kernel (no vIOMMU)"
fi
for e in "${envs[@]}"; do
    [[ $e =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || bad_usage "--env wants NAME=VALUE: $e"
done

t_start=$EPOCHREALTIME

# Cache check (milliseconds when everything is there; downloads otherwise).
"$here/setup.sh" --quiet >&2 || { log "setup.sh failed"; exit 125; }
# shellcheck disable=SC1091
. "$cache/env"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/vbdev-pci-guest.XXXXXX")
qpid=""
kill_qemu() {
    if [[ -n $qpid ]] && kill -0 "$qpid" 2>/dev/null; then
        kill -TERM "$qpid" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$qpid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$qpid" 2>/dev/null || true
        wait "$qpid" 2>/dev/null || true
    fi
    qpid=""
}
cleanup() {
    kill_qemu
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'log "interrupted; QEMU killed"; exit 130' INT
trap 'log "terminated; QEMU killed"; exit 143' TERM

# ------------------------------------------------------------- initramfs ---

# Second cpio archive, appended to the cached base: the program, extra files,
# the glibc runtime they need (loader and libraries at their host paths, as
# found by ldd), /vbdev/config and /vbdev/cmd. The stage holds symlinks;
# cpio -L stores the files they point to.
st=$tmp/stage
mkdir -p "$st/vbdev/bin"

# add_file SRC DEST: stage SRC at DEST (absolute guest path)
add_file() {
    local src dest=$2
    src=$(readlink -f "$1")
    mkdir -p "$st$(dirname "$dest")"
    ln -sfn "$src" "$st$dest"
}
# add_elf SRC DEST: add_file, plus its shared libraries
add_elf() {
    add_file "$1" "$2"
    local out line lib
    # ldd fails on static binaries and scripts; they need nothing.
    out=$(ldd "$1" 2>/dev/null) || return 0
    while IFS= read -r line; do
        case $line in
            *"=> not found"*)
                log "error: $1 needs a library the host lacks: $line"
                exit 125
                ;;
            *"=> /"*) lib=${line#*=> } ;;
            *[[:space:]]/*) lib=${line#"${line%%/*}"} ;;
            *) continue ;;
        esac
        lib=${lib%% (*}
        [[ -e $st$lib ]] || add_file "$lib" "$lib"
    done <<<"$out"
}

name=${prog##*/}
add_elf "$prog" "/vbdev/bin/$name"
for spec in "${files[@]}"; do
    src=${spec%%:*}
    dest=/vbdev/bin/${src##*/}
    [[ $spec == *:* ]] && dest=${spec#*:}
    [[ -e $src ]] || bad_usage "--file: no such file: $src"
    [[ $dest == /* ]] || bad_usage "--file: DEST must be absolute: $spec"
    add_elf "$src" "$dest"
done

# sq WORD: WORD quoted for sh
sq() {
    printf "'%s'" "${1//\'/\'\\\'\'}"
}
{
    echo "MODE=$mode"
    echo "HUGEPAGES=$hugepages"
    echo "NBLK=${#disks[@]}"
    if ((${#scsi_disks[@]} > 0)); then echo "NSCSI=1"; else echo "NSCSI=0"; fi
    echo "NSCSIDISKS=${#scsi_disks[@]}"
    echo "NVBLK=${#vhost_blk[@]}"
    echo "NVSCSI=${#vhost_scsi[@]}"
} >"$tmp/config"
{
    for e in "${envs[@]}"; do echo "export ${e%%=*}=$(sq "${e#*=}")"; done
    printf 'exec %s' "$(sq "/vbdev/bin/$name")"
    for a in "$@"; do printf ' %s' "$(sq "$a")"; done
    echo
} >"$tmp/cmd"
{
    printf '%s' "/vbdev/bin/$name"
    for a in "$@"; do printf ' %s' "$a"; done
    echo
} >"$tmp/cmdline"
for f in config cmd cmdline; do ln -s "$tmp/$f" "$st/vbdev/$f"; done

cp "$initramfs_base" "$tmp/initrd.cpio"
(cd "$st" && find . -mindepth 1 | LC_ALL=C sort | "$busybox" cpio -o -H newc -R 0:0 -L 2>/dev/null) >>"$tmp/initrd.cpio" ||
    { log "error: cpio of the program failed"; exit 125; }

# ------------------------------------------------------------------ QEMU ---

append="console=ttyS0 panic=-1 no_timer_check"
((verbose)) || append+=" quiet"
iommu_opt=""
qemu=(
    "$qemu_bin" -L "$qemu_fw" -nodefaults -no-user-config -display none
    -serial stdio -monitor none -no-reboot
    -accel tcg -M q35 -m "$mem" -smp "$smp"
    -kernel "$kernel" -initrd "$tmp/initrd.cpio"
)
if [[ $mode == vfio ]]; then
    # Before the PCI devices. Without iommu_platform=on a virtio device
    # bypasses the vIOMMU and DMA silently goes to the wrong address.
    qemu+=(-device intel-iommu)
    iommu_opt=",iommu_platform=on"
    append+=" intel_iommu=on"
fi
i=0
for f in "${disks[@]}"; do
    qemu+=(-drive "file=$f,if=none,id=blk$i,format=raw,discard=unmap"
        -device "virtio-blk-pci,drive=blk$i,disable-legacy=on$iommu_opt")
    i=$((i + 1))
done
if ((${#scsi_disks[@]} > 0)); then
    qemu+=(-device "virtio-scsi-pci,id=scsi0,disable-legacy=on$iommu_opt")
    i=0
    for f in "${scsi_disks[@]}"; do
        qemu+=(-drive "file=$f,if=none,id=sd$i,format=raw,discard=unmap"
            -device "scsi-hd,drive=sd$i,bus=scsi0.0,channel=0,scsi-id=$i,lun=0")
        i=$((i + 1))
    done
fi
# vhost-user functions: the target maps guest RAM, so it must be a shared
# memfd. They sit at fixed slots (blk 0x10.., scsi 0x18..) so the guest tells
# them from the emulated functions of the same device ids (1af4:1042/1048).
if ((${#vhost_blk[@]} + ${#vhost_scsi[@]} > 0)); then
    qemu+=(-object "memory-backend-memfd,id=vbdev-ram,size=$mem,share=on"
        -machine memory-backend=vbdev-ram)
fi
i=0
for s in "${vhost_blk[@]}"; do
    qemu+=(-chardev "socket,id=vub$i,path=$s"
        -device "vhost-user-blk-pci,chardev=vub$i,num-queues=$vhost_queues,disable-legacy=on,addr=$(printf '0x%x' $((0x10 + i)))")
    i=$((i + 1))
done
i=0
for s in "${vhost_scsi[@]}"; do
    qemu+=(-chardev "socket,id=vus$i,path=$s"
        -device "vhost-user-scsi-pci,chardev=vus$i,num_queues=$vhost_queues,disable-legacy=on,addr=$(printf '0x%x' $((0x18 + i)))")
    i=$((i + 1))
done
qemu+=(-append "$append" "${qemu_extra[@]}")
((verbose)) && log "QEMU: ${qemu[*]}"

# QEMU dies with this script even on SIGKILL (which no trap sees): the
# parent-death signal of setpriv (util-linux), where it has one.
pdeath=()
if setpriv --help 2>/dev/null | grep -e --pdeathsig >/dev/null; then
    pdeath=(setpriv --pdeathsig KILL)
fi
mkfifo "$tmp/console"
LD_LIBRARY_PATH=$qemu_ld_library_path QEMU_MODULE_DIR=$qemu_module_dir \
    "${pdeath[@]}" "${qemu[@]}" </dev/null >"$tmp/console" 2>&1 &
qpid=$!
exec 3<"$tmp/console"
[[ -n $logfile ]] && : >"$logfile"

t_boot=$EPOCHREALTIME
deadline=$((${t_boot%.*} + timeout))
exit_code=""
guest_error=""
timed_out=0
while :; do
    now=${EPOCHREALTIME%.*}
    left=$((deadline - now))
    if ((left <= 0)); then
        timed_out=1
        break
    fi
    if IFS= read -r -t "$left" -u 3 line; then
        :
    else
        st_read=$?
        if ((st_read > 128)); then
            timed_out=1
            break
        fi
        # EOF: QEMU closed the console; print a last unterminated line.
        [[ -z $line ]] && break
    fi
    line=${line//$'\r'/}
    printf '%s\n' "$line"
    [[ -n $logfile ]] && printf '%s\n' "$line" >>"$logfile"
    if [[ $line =~ VBDEV-EXIT\ ([0-9]+)$ ]]; then
        exit_code=${BASH_REMATCH[1]}
        # The guest powers off next; do not wait the whole timeout if it hangs.
        now=${EPOCHREALTIME%.*}
        ((deadline > now + 15)) && deadline=$((now + 15))
    elif [[ $line =~ VBDEV-ERROR\ (.*)$ ]]; then
        guest_error=${BASH_REMATCH[1]}
    fi
done
exec 3<&-

t_end=$EPOCHREALTIME
elapsed() {
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'
}
if ((timed_out)); then
    kill_qemu
    if [[ -n $exit_code ]]; then
        log "warning: the guest did not power off after the program exited; QEMU killed"
        log "program exited with $exit_code (mode $mode)"
        exit "$exit_code"
    fi
    log "TIMEOUT: no guest exit within $timeout s (--timeout); QEMU killed"
    exit 124
fi
qemu_status=0
wait "$qpid" || qemu_status=$?
qpid=""
if [[ -z $exit_code ]]; then
    if [[ -n $guest_error ]]; then
        log "FAILED: guest setup failed: $guest_error"
    else
        log "FAILED: the guest printed no VBDEV-EXIT line (QEMU exit status $qemu_status); see the console output above"
    fi
    exit 125
fi
((qemu_status == 0)) || log "warning: QEMU exited with status $qemu_status"
log "program exited with $exit_code (mode $mode; QEMU $(elapsed "$t_boot" "$t_end") s, total $(elapsed "$t_start" "$t_end") s)"
exit "$exit_code"
