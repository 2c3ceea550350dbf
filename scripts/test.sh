#!/usr/bin/env bash
# Run every check and test of the workspace. Run from anywhere; it works on the
# repository root. Meant for a fresh Debian 12 machine with the Rust toolchain
# (rustup) and qemu-utils (which ships qemu-storage-daemon) already present.
#
# Builds vhost-device-scsi from crates.io into ${VBDEV_CACHE:-~/.cache/vbdev}/cargo-root
# and installs SPDK's RPC client from PyPI into ${VBDEV_CACHE:-~/.cache/vbdev}/spdk-venv
# and the PCI guest (QEMU, kernel, busybox: Debian packages unpacked, never installed)
# into ${VBDEV_CACHE:-~/.cache/vbdev}/pci-guest once; keep that directory between CI
# runs to skip all three.
#
# Never installs or upgrades qemu packages: qemu-utils 10.x comes from
# bookworm-backports, and installing qemu-system-x86 would replace it with 7.2.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() {
    printf '\n==> %s\n' "$*"
}

step "checking prerequisites"

# Debian packages the build and tests need, as "command:package" pairs. A
# package is installed only when its command is missing, so on a prepared
# machine this does nothing. qemu-storage-daemon is handled separately below.
apt_deps=(
    cc:gcc          # linker used by rustc
    python3:python3 # SPDK's RPC client (below) and bench/compare.sh
    xz:xz-utils     # the PCI guest harness (scripts/pci-guest): kernel and packages
    readelf:binutils
    make:make       # the guest's vfio.ko rebuild (no-IOMMU mode)
)
apt_needed=()
for pair in "${apt_deps[@]}"; do
    cmd=${pair%%:*}
    pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || apt_needed+=("$pkg")
done
# Debian splits venv's pip bootstrap (ensurepip) into python3-venv.
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    apt_needed+=(python3-venv)
fi
if ((${#apt_needed[@]} > 0)); then
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then sudo=(sudo); fi
    echo "installing: ${apt_needed[*]}"
    "${sudo[@]}" apt-get update
    "${sudo[@]}" apt-get install -y --no-install-recommends "${apt_needed[@]}"
fi

# qemu-storage-daemon is the vhost-user-blk target of the integration tests.
# Do not try to install it: see the comment at the top.
if ! command -v qemu-storage-daemon >/dev/null 2>&1; then
    echo "error: qemu-storage-daemon not found in PATH." >&2
    echo "       The integration tests need it (Debian package qemu-utils >= 7; this" >&2
    echo "       machine image is expected to ship qemu-utils 10.x from bookworm-backports)." >&2
    echo "       Do NOT install qemu-system-x86 to get it: that replaces qemu-utils." >&2
    exit 1
fi
qemu-storage-daemon --version | head -n1

for tool in cargo rustup; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "error: $tool not found in PATH (install Rust with rustup)." >&2
        exit 1
    fi
done
missing_components=()
cargo fmt --version >/dev/null 2>&1 || missing_components+=(rustfmt)
cargo clippy --version >/dev/null 2>&1 || missing_components+=(clippy)
if ((${#missing_components[@]} > 0)); then
    rustup component add "${missing_components[@]}"
fi
cargo --version

# vhost-device-scsi (rust-vmm) is the third-party vhost-user-scsi target of the
# integration tests. It is not packaged in Debian, so it is built from crates.io
# (about 30 s) into a cache directory that survives between runs, and only when
# the pinned version is not there yet. The tests find it through
# VBDEV_VHOST_DEVICE_SCSI; if that is already set, it is used as is.
vds_version=0.1.0
vds_root="${VBDEV_CACHE:-$HOME/.cache/vbdev}/cargo-root"
if [[ -z ${VBDEV_VHOST_DEVICE_SCSI:-} ]]; then
    vds_bin="$vds_root/bin/vhost-device-scsi"
    if [[ ! -x $vds_bin ]] ||
        ! grep -qF "\"vhost-device-scsi $vds_version " "$vds_root/.crates.toml" 2>/dev/null; then
        echo "installing vhost-device-scsi $vds_version into $vds_root"
        # --force: reinstall over a stale or partial cache entry.
        if ! cargo install vhost-device-scsi --version "$vds_version" --locked --force \
            --root "$vds_root"; then
            echo "warning: the build with --locked failed; retrying without --locked" >&2
            cargo install vhost-device-scsi --version "$vds_version" --force --root "$vds_root" || {
                echo "error: cannot install vhost-device-scsi $vds_version (see above)." >&2
                echo "       The integration tests need it as their vhost-user-scsi target." >&2
                exit 1
            }
        fi
    fi
    export VBDEV_VHOST_DEVICE_SCSI="$vds_bin"
fi
# It has no --version; --help proves that the binary runs on this machine.
if ! "$VBDEV_VHOST_DEVICE_SCSI" --help >/dev/null; then
    echo "error: $VBDEV_VHOST_DEVICE_SCSI does not run." >&2
    exit 1
fi
echo "vhost-device-scsi: $VBDEV_VHOST_DEVICE_SCSI"

# SPDK's own JSON-RPC client (PyPI `spdk`, command `spdk-rpc`, i.e. rpc.py) drives
# `vbdev serve` in the integration tests. Installed, pinned, into a venv in the same
# cache directory; the tests find it through VBDEV_SPDK_RPC.
spdk_version=26.9
spdk_venv="${VBDEV_CACHE:-$HOME/.cache/vbdev}/spdk-venv"
if [[ -z ${VBDEV_SPDK_RPC:-} ]]; then
    if ! "$spdk_venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('spdk') != '$spdk_version')" 2>/dev/null; then
        echo "installing spdk $spdk_version (PyPI) into $spdk_venv"
        rm -rf "$spdk_venv"
        python3 -m venv "$spdk_venv" && "$spdk_venv/bin/pip" install --quiet "spdk==$spdk_version" || {
            echo "error: cannot install SPDK's RPC client (pip install spdk==$spdk_version)." >&2
            echo "       The vbdev serve tests need it." >&2
            exit 1
        }
    fi
    export VBDEV_SPDK_RPC="$spdk_venv/bin/spdk-rpc"
fi
if ! "$VBDEV_SPDK_RPC" --help >/dev/null; then
    echo "error: $VBDEV_SPDK_RPC does not run." >&2
    exit 1
fi
echo "spdk-rpc: $VBDEV_SPDK_RPC"

# The PCI guest harness (QEMU, a guest kernel, busybox: Debian packages unpacked into
# ${VBDEV_CACHE:-~/.cache/vbdev}/pci-guest, never installed) that the virtio-pci tests boot.
# About 30 s the first time, then a check of the cache.
if ! scripts/pci-guest/setup.sh --quiet; then
    echo "error: cannot set up the PCI guest harness (see above)." >&2
    exit 1
fi

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

# --all-features: the test-utils features too, and with them the ring benchmark.
step "cargo clippy --workspace --all-targets --all-features -- -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings

# The PCI guest's stand-alone programs (built with plain rustc inside the harness) get the
# workspace's formatting and its unsafe lints too.
step "rustfmt --check and clippy-driver (workspace unsafe lints) on scripts/pci-guest/*.rs"
rustfmt --check --edition 2024 scripts/pci-guest/*.rs
clip_out=$(mktemp -d)
for f in scripts/pci-guest/*.rs; do
    clippy-driver --edition 2024 --crate-type bin -D warnings \
        -D clippy::undocumented_unsafe_blocks -D clippy::missing_safety_doc \
        -D unsafe_op_in_unsafe_fn -o "$clip_out/$(basename "$f" .rs)" "$f"
done
rm -rf "$clip_out"

step "RUSTDOCFLAGS=\"-D warnings\" cargo doc --workspace --no-deps"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

step "cargo test --workspace"
cargo test --workspace

step "cargo bench -p vbdev-virtio --features test-utils --no-run (the ring benchmark builds)"
cargo bench -p vbdev-virtio --features test-utils --no-run

step "cargo test --workspace --release"
cargo test --workspace --release

step "scripts/pci-guest/selftest.sh (a QEMU guest with virtio-pci devices bound to vfio-pci, uio_pci_generic, vfio no-IOMMU and the kernel's drivers: one virtqueue request each)"
scripts/pci-guest/selftest.sh

step "bench/compare.sh --smoke (the comparison harness runs: every cell once, 1 s)"
bench/compare.sh --smoke

step "ring_floor example against vbdev's polling blk and scsi targets (1 s each; every request answered good)"
cargo build --release -p vbdev --bins
cargo build --release -p vbdev-virtio --example ring_floor
floor_dir=$(mktemp -d)
for dev in blk scsi; do
    target/release/vbdev target --socket "$floor_dir/$dev.sock" --poll --null 1G --dev-type "$dev" \
        >"$floor_dir/$dev.log" 2>&1 &
    floor_target=$!
    for _ in $(seq 200); do
        [[ -S $floor_dir/$dev.sock ]] && break
        sleep 0.05
    done
    # Exits non-zero on any request not answered good, or on 5 s without a completion.
    if ! out=$(target/release/examples/ring_floor "$floor_dir/$dev.sock" "$dev" 32 1); then
        kill "$floor_target" 2>/dev/null || true
        echo "ring_floor $dev failed: $out; target log:" >&2
        cat "$floor_dir/$dev.log" >&2
        exit 1
    fi
    echo "$out"
    kill -INT "$floor_target"
    wait "$floor_target" || true
done
rm -rf "$floor_dir"

step "all checks passed"
