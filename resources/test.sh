#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this script):
#   formatting, clippy, unit tests, and the integration tests, which boot the tiny guest on the
#   host's /dev/kvm and the real Linux guest directly (hardware KVM) or in the nested QEMU/SVM
#   rig (kvm_pvm). Installs what it needs from Debian packages on first use.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n=== %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null; then
    echo "kiln: cargo is required (a Rust toolchain installed with rustup)." >&2
    exit 1
fi

step "Host tools for the end-to-end checks"
missing=()
for pkg in strace e2fsprogs qemu-utils iproute2 binutils; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2
fi

step "Formatting"
cargo fmt --all -- --check

step "Clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "Fuzz targets: a 10 s smoke run of each (longer runs: resources/fuzz.sh, fuzz/README.md)"
bash resources/fuzz.sh --stable 10

step "Guest kernel and root filesystems (cached under ~/.cache/kiln)"
bash resources/guest/build.sh >/dev/null

step "Test rig, and its self-test (exit statuses, an L1 panic and a silent L1 are rig failures)"
bash resources/rig/setup.sh >/dev/null
bash resources/rig/selftest.sh --quick

step "Static release build of kiln and kiln-jailer (tests/jailer.rs runs them)"
KILN_STATIC_DIR="$(bash resources/build-static.sh | tail -n1)"
export KILN_STATIC_DIR

step "Unit and integration tests"
cargo test --workspace --doc
cargo test --workspace --all-targets
