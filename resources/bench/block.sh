#!/usr/bin/env bash
# Block benchmark: inside the default guest, sequential O_DIRECT writes then reads of 256 MiB
# on a virtio-block drive (busybox dd, 1 MiB blocks), and kiln's CPU time for the run, for
# three images of the drive: raw, a fresh qcow2 overlay over a raw base, and a fully allocated
# qcow2 image (qemu-img makes the images on the VMM's host; it is never part of Kiln).
#
#   resources/bench/block.sh
#
# Runs directly on hardware KVM, inside the nested QEMU/SVM rig on kvm_pvm hosts; there the
# figures include the cost of nested virtualization under TCG and are far below bare metal.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

cargo build --release --quiet
guest=$(bash resources/guest/build.sh | tail -n1)
payload=$(mktemp -d)
trap 'rm -rf "$payload"' EXIT
gcc -O2 -static -o "$payload/measure" resources/bench/measure.c
cp target/release/kiln "$payload/kiln"
cp "$guest/vmlinux" "$guest/initramfs.cpio.gz" "$payload/"
mkdir -p "$payload/bin"
cp /usr/bin/qemu-img "$payload/bin/qemu-img"

cat >"$payload/bench-script" <<'SH'
# busybox dd prints no rate, so the script times each transfer with /proc/uptime (10 ms).
t0=$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/zero of=/dev/vda bs=1M count=256 oflag=direct 2>/dev/null
t1=$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/vda of=/dev/null bs=1M count=256 iflag=direct 2>/dev/null
t2=$(cut -d' ' -f1 /proc/uptime)
echo "BENCH-WRITE bytes=268435456 start=$t0 end=$t1"
echo "BENCH-READ bytes=268435456 start=$t1 end=$t2"
SH
truncate -s 4096 "$payload/bench-script"
cat >"$payload/vm.json" <<'JSON'
{
  "boot-source": {
    "kernel_image_path": "vmlinux",
    "initrd_path": "initramfs.cpio.gz",
    "boot_args": "console=ttyS0 reboot=k panic=1 i8042.noaux quiet kiln.script=/dev/vdb"
  },
  "machine-config": {"vcpu_count": 2, "mem_size_mib": 256},
  "drives": [
    {"drive_id": "data", "path_on_host": "data.img", "is_root_device": false,
     "is_read_only": false, "cache_type": "Unsafe"},
    {"drive_id": "script", "path_on_host": "bench-script", "is_root_device": false,
     "is_read_only": true}
  ]
}
JSON
cat >"$payload/run.sh" <<'SH'
#!/bin/sh
QEMU_IMG="$PWD/bin/qemu-img"
for variant in raw qcow2-overlay qcow2-allocated; do
    rm -f data.img base.raw
    case $variant in
    raw) truncate -s 256M data.img ;;
    qcow2-overlay)
        truncate -s 256M base.raw
        $QEMU_IMG create -q -f qcow2 -b base.raw -F raw data.img ;;
    qcow2-allocated) $QEMU_IMG create -q -f qcow2 -o preallocation=full data.img 256M ;;
    esac
    echo "BENCH-VARIANT $variant"
    ./measure KILN-GUEST-READY -- ./kiln --no-api --config-file vm.json </dev/null
done
SH
log=$(mktemp)
bash resources/rig/run.sh "$payload" --timeout 900 | tee "$log" >/dev/null || true
tr -d '\r' <"$log" | python3 resources/bench/summarize_block.py
rm -f "$log"
