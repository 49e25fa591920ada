#!/usr/bin/env bash
# Snapshot benchmark on the host's /dev/kvm with a tiny guest that writes over half of its
# memory and then reads it back while counting (resources/bench/snapshot.py): for 128 MiB and
# 1 GiB guests, snapshot/create time (Full), snapshot/load request -> response and request ->
# the guest running again (File and Uffd backends), and the summed RSS and PSS of 10 clones of
# one snapshot.
# Each load figure is the median of RUNS loads (default 10). With Firecracker v1.16.1's binary
# beside the checkout (../shared/anchors/, or KILN_FIRECRACKER_ANCHORS), the same steps run for
# it too, alternated with kiln's.
#
#   resources/bench/snapshot.sh [RUNS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

runs=${1:-10}
cargo build --release --quiet
anchors=${KILN_FIRECRACKER_ANCHORS:-../shared/anchors}
args=()
if [ -x "$anchors/firecracker" ]; then
    args=(--firecracker "$anchors/firecracker")
fi
python3 resources/bench/snapshot.py target/release/kiln "$runs" "${args[@]}"
