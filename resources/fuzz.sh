#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS seconds each and prints, per target, the
# executions libFuzzer made and the crashes (crash, timeout, out-of-memory and leak inputs) it
# left in fuzz/artifacts/<target>/. Exits 1 if any target crashed, 2 if it cannot fuzz here.
#
#   resources/fuzz.sh 600            # cargo-fuzz on nightly, with AddressSanitizer
#   resources/fuzz.sh --stable 10    # the stable toolchain, libFuzzer's coverage without a
#                                    # sanitizer: what CI runs (resources/test.sh)
set -euo pipefail

stable=0
if [ "${1:-}" = --stable ]; then
    stable=1
    shift
fi
seconds=${1:?usage: resources/fuzz.sh [--stable] SECONDS}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"

triple=x86_64-unknown-linux-gnu
if [ "$stable" = 1 ]; then
    # cargo-fuzz's instrumentation, less the sanitizer (which needs nightly). A panic still
    # aborts, so libFuzzer reports it as a crash.
    export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
    cargo build --quiet --release --target "$triple" --bins
    targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^kiln-fuzz$')
else
    if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
        echo "fuzz.sh: no nightly toolchain (rustup toolchain install nightly); cargo-fuzz needs one" >&2
        exit 2
    fi
    if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
        echo "fuzz.sh: cargo-fuzz is not installed (cargo install cargo-fuzz)" >&2
        exit 2
    fi
    targets=$(cargo +nightly fuzz list)
fi

log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT
status=0
printf '%-14s %12s %8s\n' target executions crashes
for target in $targets; do
    mkdir -p "corpus/$target" "artifacts/$target"
    before=$(find "artifacts/$target" -type f | wc -l)
    # A crash ends the run early with a non-zero status; the count below reports it.
    if [ "$stable" = 1 ]; then
        "target/$triple/release/$target" -max_total_time="$seconds" -print_final_stats=1 \
            -artifact_prefix="artifacts/$target/" "corpus/$target" >"$log_dir/$target.log" 2>&1 || true
    else
        cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -print_final_stats=1 \
            >"$log_dir/$target.log" 2>&1 || true
    fi
    after=$(find "artifacts/$target" -type f | wc -l)
    executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log_dir/$target.log" | tail -1)
    crashes=$((after - before))
    if [ -z "$executions" ]; then
        # No final stats: the build or the run failed before libFuzzer reported.
        executions="?"
        tail -5 "$log_dir/$target.log" >&2
        status=1
    fi
    if [ "$crashes" -ne 0 ]; then
        status=1
        grep -a -m 3 -E 'panicked|ERROR' "$log_dir/$target.log" >&2 || true
    fi
    printf '%-14s %12s %8s\n' "$target" "$executions" "$crashes"
done
exit $status
