#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS seconds each and prints, per target, the
# executions libFuzzer made and the crashes (crash, timeout, out-of-memory and leak inputs) it
# left in fuzz/artifacts/<target>/. Exits 1 if any target crashed, 2 if it cannot fuzz here.
#
#   resources/fuzz.sh 600
set -euo pipefail

seconds=${1:?usage: resources/fuzz.sh SECONDS}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "fuzz.sh: no nightly toolchain (rustup toolchain install nightly); cargo-fuzz needs one" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is not installed (cargo install cargo-fuzz)" >&2
    exit 2
fi

targets=$(cargo +nightly fuzz list)
log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT
status=0
printf '%-14s %12s %8s\n' target executions crashes
for target in $targets; do
    mkdir -p "corpus/$target" "artifacts/$target"
    before=$(find "artifacts/$target" -type f | wc -l)
    # A crash ends the run early with a non-zero status; the count below reports it.
    cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -print_final_stats=1 \
        >"$log_dir/$target.log" 2>&1 || true
    after=$(find "artifacts/$target" -type f | wc -l)
    executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log_dir/$target.log" | tail -1)
    crashes=$((after - before))
    if [ -z "$executions" ]; then
        # No final stats: the build or the run failed before libFuzzer reported.
        executions="?"
        tail -5 "$log_dir/$target.log" >&2
        status=1
    fi
    [ "$crashes" -eq 0 ] || status=1
    printf '%-14s %12s %8s\n' "$target" "$executions" "$crashes"
done
exit $status
