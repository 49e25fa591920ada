#!/usr/bin/env bash
# Boot benchmark: boots the default guest (vmlinux via PVH, initramfs, 1 vCPU, 128 MiB) RUNS
# times with a release kiln and prints the medians of process start -> guest marker, process
# start -> kiln exit, kiln's peak RSS, and the guest boot time from the boot-timer device.
#
#   resources/bench/boot.sh [RUNS]      (default 7, at least 5)
#
# Runs directly on hardware KVM, inside the nested QEMU/SVM rig on kvm_pvm hosts; there the
# figures include the cost of nested virtualization under TCG and are far above bare metal.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

runs=${1:-7}
if [ "$runs" -lt 5 ]; then
    echo "boot.sh: use at least 5 runs" >&2
    exit 2
fi

cargo build --release --quiet
guest=$(bash resources/guest/build.sh | tail -n1)
payload=$(mktemp -d)
trap 'rm -rf "$payload"' EXIT
gcc -O2 -static -o "$payload/measure" resources/bench/measure.c
cp target/release/kiln "$payload/kiln"
cp "$guest/vmlinux" "$guest/initramfs.cpio.gz" "$payload/"
cat >"$payload/vm.json" <<'JSON'
{
  "boot-source": {
    "kernel_image_path": "vmlinux",
    "initrd_path": "initramfs.cpio.gz",
    "boot_args": "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd quiet"
  },
  "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}
}
JSON
cat >"$payload/run.sh" <<SH
#!/bin/sh
i=0
while [ \$i -lt $runs ]; do
    ./measure KILN-GUEST-READY -- ./kiln --no-api --config-file vm.json --boot-timer </dev/null
    i=\$((i + 1))
done
SH

log=$(mktemp)
bash resources/rig/run.sh "$payload" --timeout $((120 + runs * 60)) | tee "$log" >/dev/null
grep -a '^MEASURE' "$log" | tr -d '\r' | python3 resources/bench/summarize.py
rm -f "$log"
