#!/usr/bin/env bash
# Prepare everything the PCI guest harness (run.sh) needs, in a cache directory
# that is reused between runs:
#
#   QEMU (qemu-system-x86_64, Debian bookworm), its firmware and missing shared
#   libraries, the Debian 6.1 guest kernel as an uncompressed PVH vmlinux, the
#   modules the guest loads, busybox-static, a vfio.ko rebuilt with
#   CONFIG_VFIO_NOIOMMU, and the base initramfs (busybox, modules, init).
#
# Usage: scripts/pci-guest/setup.sh [--update] [--quiet]
#   --update  ask apt for the newest kernel/QEMU/busybox versions and rebuild
#             the parts whose version changed (otherwise a complete cache is
#             used as it is, with no network access)
#   --quiet   print only a one-line summary when nothing had to be done
#
# Cache: ${VBDEV_CACHE:-$HOME/.cache/vbdev}/pci-guest (see README.md).
#
# Never installs a QEMU package: `apt-get install qemu-system-x86` would remove
# the qemu-utils 10.x this machine uses. Packages are fetched with
# `apt-get download` and unpacked with `dpkg-deb -x` into the cache; the shared
# libraries QEMU lacks on this host are unpacked the same way (LD_LIBRARY_PATH).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${VBDEV_CACHE:-$HOME/.cache/vbdev}/pci-guest"

update=0
quiet=0
for arg in "$@"; do
    case $arg in
        --update) update=1 ;;
        --quiet) quiet=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "setup.sh: unknown argument: $arg" >&2
            exit 2
            ;;
    esac
done

die() {
    echo "pci-guest setup: error: $*" >&2
    exit 1
}
did=()
say() {
    echo "pci-guest setup: $*"
}

# Packages QEMU 7.2 links against that this machine image lacks (found with
# ldd). They are unpacked next to QEMU, with their own missing dependencies
# (computed by `apt-get install -s`, which changes nothing).
qemu_lib_pkgs=(libcapstone4 libfdt1 libpmem1 librdmacm1 libibverbs1 libslirp0 libvdeplug2)

# Modules copied into the guest (with everything they depend on) and the sets
# init.sh loads, in this order after their dependencies.
#   kdrv: the kernel's own virtio drivers (the devices then show up as disks)
#   vfio: vfio-pci with the type1 IOMMU backend
#   uio:  uio_pci_generic
mod_sets=(
    "kdrv:virtio_pci virtio_blk virtio_scsi sd_mod"
    "vfio:vfio vfio_iommu_type1 vfio-pci"
    "uio:uio_pci_generic"
)

for cmd in apt-get apt-cache dpkg-deb tar xz readelf objcopy strip make flock sha256sum ldd grep awk; do
    command -v "$cmd" >/dev/null || die "$cmd not found (Debian packages: apt dpkg tar xz-utils binutils make util-linux coreutils libc-bin)"
done

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9 || die "cannot lock $cache/.lock"

# ---------------------------------------------------------------- helpers ---

apt_ready=0
# apt-get download/apt-cache need package lists; a fresh machine may have none.
apt_prepare() {
    ((apt_ready)) && return 0
    command -v apt-get >/dev/null || die "apt-get not found (Debian 12 host expected)"
    command -v dpkg-deb >/dev/null || die "dpkg-deb not found"
    local policy
    policy=$(apt-cache policy linux-image-amd64 2>/dev/null) || true
    if [[ $policy != *"Candidate: "[0-9]* ]]; then
        say "apt-get update (no package lists)"
        as_root apt-get update -q >/dev/null || die "apt-get update failed"
    fi
    apt_ready=1
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

# candidate VERSION of PACKAGE
candidate() {
    # awk reads all its input: an early exit could SIGPIPE apt-cache (pipefail).
    apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ && !v {v = $2} END {print v}'
}

# apt_download DIR PKG=VER...: fetch .debs into DIR (retries once after
# `apt-get update`, in case the lists are older than the mirror).
apt_download() {
    local dir=$1
    shift
    mkdir -p "$dir"
    if ! (cd "$dir" && apt-get -q -o APT::Sandbox::User=root download "$@" >/dev/null); then
        say "apt-get download failed; refreshing package lists and retrying"
        as_root apt-get update -q >/dev/null || die "apt-get update failed"
        (cd "$dir" && apt-get -q -o APT::Sandbox::User=root download "$@" >/dev/null) ||
            die "apt-get download $* failed"
    fi
}

# deb_of DIR PKG: path of the downloaded .deb of PKG in DIR
deb_of() {
    local f
    f=$(compgen -G "$1/$2_*.deb" | head -n1) || true
    [[ -n $f ]] || die "downloaded package $2 not found in $1"
    echo "$f"
}

# stamp_ok DIR WANT: DIR is complete and (if WANT is not empty) of version WANT
stamp_ok() {
    [[ -f $1/.complete ]] || return 1
    [[ -z $2 ]] || [[ $(cat "$1/.complete") == "$2" ]]
}

# --------------------------------------------------------- resolve versions ---

# Versions come from apt only when something is missing or with --update; a
# complete cache is reused offline, whatever apt would say now.
need_resolve=$update
for part in qemu kernel busybox noiommu; do
    [[ -f $cache/$part/.complete ]] || need_resolve=1
done

want_qemu="" want_kernel="" want_busybox=""
if ((need_resolve)); then
    apt_prepare
    qemu_ver=$(candidate qemu-system-x86)
    [[ -n $qemu_ver && $qemu_ver != "(none)" ]] || die "no candidate for qemu-system-x86"
    # -common has the accelerator modules (accel-tcg-x86_64.so), -data the
    # option ROMs, seabios the BIOS.
    want_qemu="qemu-system-x86=$qemu_ver"
    for p in qemu-system-common qemu-system-data seabios; do
        want_qemu+=" $p=$(candidate $p)"
    done

    kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ && !k {k = $2} END {print k}')
    [[ -n $kpkg ]] || die "cannot resolve linux-image-amd64 to a kernel package"
    kpkg_ver=$(candidate "$kpkg")
    want_kernel="$kpkg=$kpkg_ver"

    busybox_ver=$(candidate busybox-static)
    want_busybox="busybox-static=$busybox_ver"
fi

# -------------------------------------------------------------------- QEMU ---

qdir=$cache/qemu
if ! stamp_ok "$qdir" "$want_qemu"; then
    say "fetching QEMU: $want_qemu"
    rm -rf "$qdir" "$cache/dl-qemu"
    dl=$cache/dl-qemu
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    apt_download "$dl" $want_qemu
    mkdir -p "$qdir/root"
    for d in "$dl"/*.deb; do dpkg-deb -x "$d" "$qdir/root"; done

    # Shared libraries missing on this host, plus their own missing deps.
    lib_pkgs=$(apt-get install -s --no-install-recommends "${qemu_lib_pkgs[@]}" 2>/dev/null |
        awk '/^Inst / {print $2}') || true
    if [[ -n $lib_pkgs ]]; then
        say "fetching QEMU's shared libraries: $(echo $lib_pkgs)"
        # shellcheck disable=SC2086
        apt_download "$dl/libs" $lib_pkgs
        for d in "$dl"/libs/*.deb; do dpkg-deb -x "$d" "$qdir/root"; done
    fi

    # -L directory: the firmware the x86 machine loads (SeaBIOS, option ROMs
    # such as linuxboot_dma.bin and pvh.bin). qemu-system-data's own links point
    # at /usr/share/seabios, which does not exist here.
    mkdir -p "$qdir/fw"
    for f in "$qdir"/root/usr/share/qemu/* "$qdir"/root/usr/share/seabios/*; do
        [[ -f $f ]] || continue
        ln -sfn "../root/${f#"$qdir"/root/}" "$qdir/fw/${f##*/}"
    done
    # What this harness does not need: other emulators' firmware, docs, the
    # display/audio modules (they would need more libraries anyway).
    rm -rf "$qdir"/root/usr/share/{doc,man,lintian,applications,icons,bash-completion}
    rm -rf "$dl"
    echo "$want_qemu" >"$qdir/.complete"
    did+=("QEMU")
fi
qemu_bin=$qdir/root/usr/bin/qemu-system-x86_64
qemu_env=(
    "LD_LIBRARY_PATH=$qdir/root/usr/lib/x86_64-linux-gnu:$qdir/root/lib/x86_64-linux-gnu"
    "QEMU_MODULE_DIR=$qdir/root/usr/lib/x86_64-linux-gnu/qemu"
)
# Checked on every run (cheap): the host may have lost a library.
if missing=$(env "${qemu_env[@]}" ldd "$qemu_bin" 2>&1 | grep 'not found'); then
    die "QEMU misses shared libraries (delete $qdir to refetch, or install them):
$missing"
fi

# ----------------------------------------------------------------- busybox ---

bdir=$cache/busybox
if ! stamp_ok "$bdir" "$want_busybox"; then
    say "fetching $want_busybox"
    rm -rf "$bdir" "$cache/dl-busybox"
    apt_download "$cache/dl-busybox" "$want_busybox"
    mkdir -p "$bdir"
    dpkg-deb --fsys-tarfile "$(deb_of "$cache/dl-busybox" busybox-static)" |
        tar -xO ./bin/busybox >"$bdir/busybox"
    chmod 755 "$bdir/busybox"
    rm -rf "$cache/dl-busybox"
    "$bdir/busybox" --list | grep -x cpio >/dev/null || die "busybox has no cpio applet"
    echo "$want_busybox" >"$bdir/.complete"
    did+=("busybox")
fi
busybox=$bdir/busybox

# ------------------------------------------------------------------ kernel ---

kdir=$cache/kernel
if ! stamp_ok "$kdir" "$want_kernel"; then
    say "fetching guest kernel: $want_kernel"
    rm -rf "$kdir" "$cache/dl-kernel" "$cache/noiommu"
    dl=$cache/dl-kernel
    apt_download "$dl" "$want_kernel"
    kpkg=${want_kernel%%=*}
    mkdir -p "$dl/x"
    dpkg-deb -x "$(deb_of "$dl" "$kpkg")" "$dl/x"
    kver=$(cd "$dl/x/lib/modules" && ls | head -n1)
    [[ -n $kver && -f $dl/x/boot/vmlinuz-$kver ]] || die "unexpected layout in $kpkg"
    mkdir -p "$kdir"
    cp "$dl/x/boot/vmlinuz-$kver" "$kdir/vmlinuz"
    cp "$dl/x/boot/config-$kver" "$kdir/config"

    # The uncompressed PVH vmlinux boots about 3-4 s faster under TCG than the
    # bzImage, whose XZ decompression is slow when emulated. Extract it from
    # the bzImage payload (XZ for 6.1, zstd for newer kernels).
    vmlinuz=$kdir/vmlinuz
    off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$vmlinuz" | head -n1 | cut -d: -f1) || true
    if [[ -n $off ]]; then
        tail -c +$((off + 1)) "$vmlinuz" | xz -dc --single-stream >"$kdir/vmlinux.tmp" 2>/dev/null || true
    else
        off=$(LC_ALL=C grep -obUaP '\x28\xb5\x2f\xfd' "$vmlinuz" | head -n1 | cut -d: -f1) || true
        if [[ -n $off ]]; then
            tail -c +$((off + 1)) "$vmlinuz" | zstd -qdc >"$kdir/vmlinux.tmp" 2>/dev/null || true
        fi
    fi
    # Xen ELF note 0x12 (XEN_ELFNOTE_PHYS32_ENTRY) is the PVH entry point.
    if [[ -s $kdir/vmlinux.tmp ]] && readelf -n "$kdir/vmlinux.tmp" 2>/dev/null | grep "(0x00000012)" >/dev/null; then
        mv "$kdir/vmlinux.tmp" "$kdir/vmlinux"
        say "extracted PVH vmlinux ($(($(stat -c %s "$kdir/vmlinux") >> 20)) MiB)"
    else
        rm -f "$kdir/vmlinux.tmp"
        say "warning: no PVH vmlinux could be extracted; the guest boots the bzImage (slower)"
    fi

    # Module closure of every set, found through a depmod of the whole tree
    # (the package ships no modules.dep). busybox's depmod lists all
    # dependencies of a module, transitively.
    "$busybox" depmod -b "$dl/x" "$kver" || die "depmod of the kernel's modules failed"
    declare -A dep_of=() path_of=()
    while IFS= read -r line; do
        file=${line%%:*}
        name=${file##*/}
        name=${name%.ko*}
        name=${name//-/_}
        path_of[$name]=$file
        deps=""
        for d in ${line#*:}; do
            d=${d##*/}
            d=${d%.ko*}
            deps+=" ${d//-/_}"
        done
        dep_of[$name]=$deps
    done <"$dl/x/lib/modules/$kver/modules.dep"

    # Depth-first, dependencies before the module: a valid insmod order.
    declare -A seen=()
    order=()
    visit() {
        local m=${1//-/_} d
        [[ -n ${seen[$m]:-} ]] && return 0
        seen[$m]=1
        [[ -n ${path_of[$m]:-} ]] || die "module $m not found in $kpkg (is it built in?)"
        for d in ${dep_of[$m]}; do visit "$d"; done
        order+=("$m")
    }
    mdir=$kdir/modules/lib/modules/$kver
    mkdir -p "$mdir"
    for set in "${mod_sets[@]}"; do
        # Each set lists all it needs, so init.sh can load any set alone.
        seen=()
        order=()
        for m in ${set#*:}; do visit "$m"; done
        : >"$kdir/modorder-${set%%:*}"
        for m in "${order[@]}"; do
            src=${path_of[$m]}
            mkdir -p "$mdir/$(dirname "$src")"
            cp "$dl/x/lib/modules/$kver/$src" "$mdir/$src"
            echo "$src" >>"$kdir/modorder-${set%%:*}"
        done
    done
    cp "$dl/x/lib/modules/$kver"/modules.{builtin,builtin.modinfo,order} "$mdir/" 2>/dev/null || true
    "$busybox" depmod -b "$kdir/modules" "$kver" || die "depmod of the module subset failed"
    echo "$kver" >"$kdir/kver"
    rm -rf "$dl"
    echo "$want_kernel" >"$kdir/.complete"
    did+=("kernel $kver")
fi
kver=$(cat "$kdir/kver")

# ------------------------------------------------------- vfio.ko (noiommu) ---

# Debian builds its kernels with CONFIG_VFIO_NOIOMMU unset. In 6.1 all of the
# no-IOMMU code is in vfio.ko, so only that module is rebuilt, from Debian's
# linux-source against Debian's headers, and checked to export the same
# symbol CRCs as the stock one (so the stock vfio-pci loads on top of it).
ndir=$cache/noiommu
kpkg_full=$(cat "$kdir/.complete")
if ! stamp_ok "$ndir" "$kpkg_full"; then
    kpkg=${kpkg_full%%=*}
    kpkg_ver=${kpkg_full#*=}
    abi=${kver%-*}                          # 6.1.0-56-amd64 -> 6.1.0-56
    series=$(echo "$kver" | cut -d. -f1,2) # 6.1
    say "building vfio.ko with CONFIG_VFIO_NOIOMMU for $kver"
    command -v make >/dev/null || die "make not found (apt-get install make)"
    rm -rf "$ndir" "$cache/dl-noiommu"
    dl=$cache/dl-noiommu
    apt_prepare
    apt_download "$dl" "linux-source-$series=$kpkg_ver" "linux-headers-$kver=$kpkg_ver" \
        "linux-headers-$abi-common=$kpkg_ver" "linux-kbuild-$series=$kpkg_ver"
    mkdir -p "$dl/x" "$dl/build"
    for p in "linux-headers-$kver" "linux-headers-$abi-common" "linux-kbuild-$series"; do
        dpkg-deb -x "$(deb_of "$dl" "$p")" "$dl/x"
    done
    dpkg-deb --fsys-tarfile "$(deb_of "$dl" "linux-source-$series")" |
        tar -xO "./usr/src/linux-source-$series.tar.xz" |
        tar -xJ -C "$dl" "linux-source-$series/drivers/vfio" ||
        die "cannot extract drivers/vfio from linux-source-$series"
    hdr=$dl/x/usr/src/linux-headers-$kver
    # The headers' Makefile includes the -common one by absolute path.
    sed -i "s#^include /usr/src/#include $dl/x/usr/src/#" "$hdr/Makefile"
    cc=$(awk -F' *= *' '$1 == "CC" {print $2}' "$hdr/.kernelvariables" | awk '{print $NF}' | sed 's/.*)//')
    command -v "${cc:-gcc}" >/dev/null || die "the kernel headers want compiler ${cc}; install it (apt-get install ${cc})"
    src=$dl/linux-source-$series/drivers/vfio
    for f in vfio_main.c iova_bitmap.c container.c vfio.h; do
        [[ -f $src/$f ]] || die "$f not in linux-source-$series/drivers/vfio (kernel too new for this recipe?)"
        cp "$src/$f" "$dl/build/"
    done
    cat >"$dl/build/Kbuild" <<'EOF'
obj-m := vfio.o
vfio-y := vfio_main.o iova_bitmap.o container.o
ccflags-y += -DCONFIG_VFIO_NOIOMMU=1
EOF
    make -s -C "$hdr" M="$dl/build" modules >"$dl/build.log" 2>&1 ||
        { cat "$dl/build.log" >&2; die "building vfio.ko failed (log above)"; }
    # Same CRCs as the stock vfio.ko exports, or the stock vfio-pci-core
    # would refuse to load on top of it.
    awk '$3 ~ /drivers\/vfio\/vfio$/ {print $1, $2}' "$hdr/Module.symvers" | sort >"$dl/crc.stock"
    awk '{print $1, $2}' "$dl/build/Module.symvers" | sort >"$dl/crc.new"
    [[ -s $dl/crc.stock ]] && cmp -s "$dl/crc.stock" "$dl/crc.new" ||
        die "the rebuilt vfio.ko exports other symbol CRCs than the stock one:
$(diff "$dl/crc.stock" "$dl/crc.new" | head)"
    vermagic=$(objcopy -O binary --only-section=.modinfo "$dl/build/vfio.ko" /dev/stdout | tr '\0' '\n' | sed -n 's/^vermagic=//p')
    [[ $vermagic == "$kver "* ]] || die "rebuilt vfio.ko has vermagic '$vermagic', expected $kver"
    mkdir -p "$ndir"
    strip --strip-debug -o "$ndir/vfio.ko" "$dl/build/vfio.ko"
    rm -rf "$dl"
    echo "$kpkg_full" >"$ndir/.complete"
    did+=("vfio.ko (noiommu)")
fi

# -------------------------------------------------------- base initramfs ---

# busybox (with an applet link for each applet), the modules, the load orders,
# and /init. Rebuilt when init.sh, the kernel or busybox change. run.sh
# appends a second cpio archive with the program to run.
key=$( (cat "$here/init.sh" "$kdir/.complete" "$bdir/.complete" "$ndir/.complete") | sha256sum | cut -c1-16)
base=$cache/initramfs/base-$key.cpio
if [[ ! -f $base ]]; then
    say "building base initramfs"
    rm -rf "$cache/initramfs"
    st=$cache/initramfs/stage
    mkdir -p "$st"/{bin,sbin,etc,proc,sys,dev,tmp,run,vbdev}
    cp "$busybox" "$st/bin/busybox"
    for a in $("$busybox" --list); do
        [[ $a == busybox ]] || ln -sf busybox "$st/bin/$a"
    done
    ln -sf ../bin/busybox "$st/sbin/modprobe"
    mkdir -p "$st/lib/modules"
    cp -a "$kdir/modules/lib/modules/$kver" "$st/lib/modules/"
    mkdir -p "$st/lib/modules/$kver/extra/noiommu"
    cp "$ndir/vfio.ko" "$st/lib/modules/$kver/extra/noiommu/vfio.ko"
    for f in "$kdir"/modorder-*; do cp "$f" "$st/etc/"; done
    echo "$kver" >"$st/etc/kver"
    install -m 755 "$here/init.sh" "$st/init"
    (cd "$st" && find . -mindepth 1 | LC_ALL=C sort | "$busybox" cpio -o -H newc -R 0:0 2>/dev/null) >"$base.tmp" ||
        die "cpio failed"
    mv "$base.tmp" "$base"
    rm -rf "$st"
    did+=("base initramfs")
fi

# ---------------------------------------------------------------- summary ---

if [[ -f $kdir/vmlinux ]]; then kimg=$kdir/vmlinux; else kimg=$kdir/vmlinuz; fi
# Sourced by run.sh.
{
    printf 'qemu_bin=%q\n' "$qemu_bin"
    printf 'qemu_fw=%q\n' "$qdir/fw"
    printf 'qemu_ld_library_path=%q\n' "${qemu_env[0]#*=}"
    printf 'qemu_module_dir=%q\n' "${qemu_env[1]#*=}"
    printf 'kernel=%q\n' "$kimg"
    printf 'kver=%q\n' "$kver"
    printf 'busybox=%q\n' "$busybox"
    printf 'initramfs_base=%q\n' "$base"
} >"$cache/env.tmp"
mv "$cache/env.tmp" "$cache/env"

if ((${#did[@]} > 0)) || ((!quiet)); then
    ((${#did[@]} > 0)) && say "prepared: ${did[*]}"
    say "ready in $cache ($(du -sm "$cache" | cut -f1) MB): QEMU $(cut -d' ' -f1 "$qdir/.complete" | cut -d= -f2), kernel $kver, $(cat "$bdir/.complete")"
fi
