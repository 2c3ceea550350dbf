#!/usr/bin/env bash
# Self-test of the PCI guest harness: builds probe.rs (rustc, no crates, linked
# against the host's glibc, so it also checks that run.sh copies the runtime)
# and boots the guest once per mode with one virtio-blk and one virtio-scsi
# disk. In each mode the probe checks config space, the virtio capabilities,
# BAR access and (vfio modes) the VFIO container/group/device ioctls; on the
# blk function it then runs one virtqueue from user space: reads sector 0
# (which must hold the mark the host put there), writes sector 1, and waits
# for the interrupts (MSI-X through VFIO, INTx through uio). The host then
# finds the probe's sector 1 in the image file.
# A last boot in kernel mode writes a marker to both disks through the guest
# kernel's drivers; the host then finds it in the image files.
#
# Usage: scripts/pci-guest/selftest.sh [MODE...]   (default: vfio uio noiommu kernel)
# Ends with "N passed, N failed"; exits non-zero when a mode failed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${VBDEV_CACHE:-$HOME/.cache/vbdev}/pci-guest"
modes=("$@")
((${#modes[@]} > 0)) || modes=(vfio uio noiommu kernel)

now() { echo "$EPOCHREALTIME"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

t0=$(now)
"$here/setup.sh"
t_setup=$(now)

command -v rustc >/dev/null || { echo "selftest: rustc not found" >&2; exit 1; }
sum=$( (sha256sum "$here/probe.rs"; rustc --version) | sha256sum | cut -c1-16)
probe=$cache/probe/probe-$sum
if [[ ! -x $probe ]]; then
    echo "selftest: building probe.rs"
    rm -rf "$cache/probe"
    mkdir -p "$cache/probe"
    rustc --edition 2024 -O -o "$probe.tmp" "$here/probe.rs"
    mv "$probe.tmp" "$probe"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/vbdev-pci-selftest.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
truncate -s 64M "$tmp/blk.img" "$tmp/scsi.img"
mark=VBDEV-SELFTEST-MARK
printf '%s\n' "$mark" | dd of="$tmp/blk.img" conv=notrunc 2>/dev/null

# sector IMAGE N: the first line of 512-byte sector N of IMAGE
sector() {
    dd if="$1" bs=512 skip="$2" count=1 2>/dev/null | tr -d '\0' | head -n1
}

passed=0
failed=0
results=()
for mode in "${modes[@]}"; do
    echo
    echo "==> selftest: mode $mode"
    t=$(now)
    rc=0
    if [[ $mode == kernel ]]; then
        # The guest kernel's virtio drivers write a marker at byte 4096 of
        # each disk; the host reads it back from the image files after exit.
        cat >"$tmp/mark.sh" <<'EOF'
#!/bin/sh
set -e
for d in /dev/vda /dev/sda; do
    printf 'VBDEV-MARK %s\n' "$d" | dd of="$d" bs=512 seek=8 conv=sync,notrunc,fsync 2>/dev/null
done
echo "marks written"
EOF
        chmod +x "$tmp/mark.sh"
        "$here/run.sh" --mode kernel --disk "$tmp/blk.img" --scsi-disk "$tmp/scsi.img" \
            --timeout 60 -- "$tmp/mark.sh" || rc=$?
        if ((rc == 0)); then
            for pair in "blk.img:/dev/vda" "scsi.img:/dev/sda"; do
                got=$(sector "$tmp/${pair%%:*}" 8)
                if [[ $got != "VBDEV-MARK ${pair#*:}" ]]; then
                    echo "selftest: ${pair%%:*} holds '$got', not the guest's marker" >&2
                    rc=1
                fi
            done
        fi
    else
        dd if=/dev/zero of="$tmp/blk.img" bs=512 seek=1 count=1 conv=notrunc 2>/dev/null
        "$here/run.sh" --mode "$mode" --disk "$tmp/blk.img" --scsi-disk "$tmp/scsi.img" \
            --timeout 60 -- "$probe" --blk 1 --scsi 1 --io --expect-mark "$mark" || rc=$?
        if ((rc == 0)); then
            got=$(sector "$tmp/blk.img" 1)
            if [[ $got != "VBDEV-PROBE-WROTE $mode" ]]; then
                echo "selftest: blk.img sector 1 holds '$got', not the probe's write" >&2
                rc=1
            fi
        fi
    fi
    took=$(secs "$t" "$(now)")
    if ((rc == 0)); then
        passed=$((passed + 1))
        results+=("PASS $mode (${took} s)")
    else
        failed=$((failed + 1))
        results+=("FAIL $mode (exit $rc, ${took} s)")
    fi
done

echo
echo "==> selftest summary (setup check $(secs "$t0" "$t_setup") s, total $(secs "$t0" "$(now)") s)"
printf '  %s\n' "${results[@]}"
echo "$passed passed, $failed failed"
((failed == 0))
