#!/usr/bin/env bash
# Run every check and test of the workspace. Run from anywhere; it works on the
# repository root. Meant for a fresh Debian 12 machine with the Rust toolchain
# (rustup) and qemu-utils (which ships qemu-storage-daemon) already present.
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
    cc:gcc # linker used by rustc
)
apt_needed=()
for pair in "${apt_deps[@]}"; do
    cmd=${pair%%:*}
    pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || apt_needed+=("$pkg")
done
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

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "RUSTDOCFLAGS=\"-D warnings\" cargo doc --workspace --no-deps"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

step "cargo test --workspace"
cargo test --workspace

step "cargo test --workspace --release"
cargo test --workspace --release

step "all checks passed"
