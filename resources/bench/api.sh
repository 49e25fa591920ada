#!/usr/bin/env bash
# API benchmark:
# - process start -> the API socket accepting connections (on this host: no KVM involved);
# - InstanceStart -> the guest's marker, booting the default guest through the API with curl
#   (directly on hardware KVM, inside the nested QEMU/SVM rig on kvm_pvm hosts, where the
#   figures include nested TCG virtualization).
# Each is the median of RUNS runs (default 10).
#
#   resources/bench/api.sh [RUNS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

runs=${1:-10}
cargo build --release --quiet
python3 resources/bench/api_socket.py target/release/kiln "$runs"

guest=$(bash resources/guest/build.sh | tail -n1)
payload=$(mktemp -d)
trap 'rm -rf "$payload"' EXIT
mkdir -p "$payload/bin"
cp target/release/kiln "$payload/kiln"
cp /usr/bin/curl "$payload/bin/curl"
cp "$guest/vmlinux" "$guest/initramfs.cpio.gz" "$payload/"
cat >"$payload/run.sh" <<SH
#!/bin/sh
# Times InstanceStart -> marker: the boot timer counts from the moment the VMM handles
# InstanceStart to the guest init's write just before it prints the marker; the wall time
# (/proc/uptime, 10 ms) from the request to the marker on the console cross-checks it.
CURL="\$PWD/bin/curl -s -o /dev/null --unix-socket /tmp/bench.sock"
i=0
while [ \$i -lt $runs ]; do
    rm -f /tmp/bench.sock out.txt
    ./kiln --api-sock /tmp/bench.sock --boot-timer </dev/null >out.txt 2>&1 &
    k=\$!
    while [ ! -S /tmp/bench.sock ]; do sleep 0.01; done
    \$CURL -X PUT http://localhost/boot-source -d '{"kernel_image_path": "vmlinux", "initrd_path": "initramfs.cpio.gz", "boot_args": "console=ttyS0 reboot=k panic=1 i8042.noaux quiet"}'
    \$CURL -X PUT http://localhost/machine-config -d '{"vcpu_count": 1, "mem_size_mib": 128}'
    t0=\$(cut -d' ' -f1 /proc/uptime)
    \$CURL -X PUT http://localhost/actions -d '{"action_type": "InstanceStart"}'
    until grep -q KILN-GUEST-READY out.txt; do sleep 0.01; done
    t1=\$(cut -d' ' -f1 /proc/uptime)
    wait \$k
    bt=\$(grep -o 'Guest-boot-time = *[0-9]*' out.txt | grep -o '[0-9]*\$')
    echo "APIBENCH start=\$t0 marker=\$t1 boot_time_us=\$bt"
    i=\$((i + 1))
done
SH
log=$(mktemp)
bash resources/rig/run.sh "$payload" --timeout $((120 + runs * 60)) | tee "$log" >/dev/null || true
tr -d '\r' <"$log" | python3 -c '
import statistics, sys
rows = [dict(kv.split("=") for kv in l.split()[1:]) for l in sys.stdin if l.startswith("APIBENCH ")]
if len(rows) < 1 or any(not r["boot_time_us"] for r in rows):
    sys.exit(f"api.sh: {len(rows)} boots measured, some without a boot time: {rows}")
timer = statistics.median(int(r["boot_time_us"]) for r in rows) / 1000
wall = statistics.median(float(r["marker"]) - float(r["start"]) for r in rows) * 1000
print(f"InstanceStart -> guest marker: {timer:8.1f} ms (boot timer, median of {len(rows)})")
print(f"InstanceStart -> marker on the console: {wall:8.0f} ms (wall, 10 ms resolution)")
'
rm -f "$log"
