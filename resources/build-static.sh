#!/usr/bin/env bash
# The release build: static `kiln` and `kiln-jailer` (a jail has no dynamic loader or shared
# libraries). The gnu target with +crt-static gives static-pie binaries; the flag is given for
# the explicit --target only, because without --target cargo would apply it to build scripts
# and proc-macros too, which cannot be static. The normal `cargo build` / `cargo test` stay
# dynamic debug builds.
#
# Prints the directory holding both binaries as the last line of stdout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

target=x86_64-unknown-linux-gnu
# RUSTFLAGS would replace the target's rustflags and silently give dynamic binaries.
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS
cargo build --release --target "$target" -p kiln -p jailer \
    --config "target.$target.rustflags = ['-C', 'target-feature=+crt-static']" >&2

dir="$(cd "${CARGO_TARGET_DIR:-target}/$target/release" && pwd)"
for bin in kiln kiln-jailer; do
    # A static binary has no program interpreter (no PT_INTERP / INTERP header).
    if readelf -l "$dir/$bin" | grep -q 'INTERP'; then
        echo "build-static: $dir/$bin is not static" >&2
        exit 1
    fi
done
echo "$dir"
