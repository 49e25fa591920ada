#!/usr/bin/env bash
# Network benchmark: TCP throughput between the default guest and the VMM's host over a
# virtio-net device on a tap, each way, and kiln's CPU time per GiB moved.
#
#   resources/bench/net.sh [MIB]        (MiB each way; default 512, or $NET_BENCH_MIB)
#
# The payload's run.sh puts tap0 (172.16.0.1/24) in a network namespace it creates and
# removes; the guest (2 vCPUs, 512 MiB, initramfs + a script drive) takes 172.16.0.2/24.
# Both ends run tcpbench.c (static, 1 MiB reads and writes, as iperf3 would): the guest gets it
# on a second raw drive. Guest -> host is timed by the host's `tcpbench recv` from the first
# byte to EOF; host -> guest by the host's `tcpbench send` from connect to the guest's close
# after EOF. Both on the host end (CLOCK_MONOTONIC), one after the other.
#
# Runs directly on hardware KVM, inside the nested QEMU/SVM rig on kvm_pvm hosts; there the
# figures include the cost of nested virtualization under TCG and are far below bare metal.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

mib=${1:-${NET_BENCH_MIB:-512}}
case $mib in
'' | *[!0-9]* | 0*)
    echo "net.sh: MIB must be a positive integer, not '$mib'" >&2
    exit 2
    ;;
esac

cargo build --release --quiet
guest=$(bash resources/guest/build.sh | tail -n1)
payload=$(mktemp -d)
log=$(mktemp)
trap 'rm -rf "$payload" "$log"' EXIT
gcc -O2 -static -o "$payload/measure" resources/bench/measure.c
gcc -O2 -static -o "$payload/tcpbench" resources/bench/tcpbench.c
cp "${CARGO_TARGET_DIR:-target}/release/kiln" "$payload/kiln"
cp "$guest/vmlinux" "$guest/initramfs.cpio.gz" "$payload/"
# iproute2 for netns and tuntap: busybox's ip applet has neither.
mkdir "$payload/bin"
cp "$(command -v ip)" "$payload/bin/ip"

# The guest script: the host -> guest listener waits first, then guest -> host runs, then the
# script waits for the listener, which exits when the host closes its end.
cat >"$payload/bench-script" <<SH
ip link set eth0 up
ip addr add 172.16.0.2/24 dev eth0
cat /dev/vdb > /tmp/tcpbench && chmod +x /tmp/tcpbench
/tmp/tcpbench recv 5002 >/dev/null &
/tmp/tcpbench send 172.16.0.1 5001 $((mib << 20)) >/dev/null
echo "GUEST-G2H-RC=\$?"
wait
SH
truncate -s 4096 "$payload/bench-script"
# A raw drive holding the static tcpbench; the zeros after the ELF do not matter to it.
cp "$payload/tcpbench" "$payload/tools.img"
truncate -s 4M "$payload/tools.img"
cat >"$payload/vm.json" <<'JSON'
{
  "boot-source": {
    "kernel_image_path": "vmlinux",
    "initrd_path": "initramfs.cpio.gz",
    "boot_args": "console=ttyS0 reboot=k panic=1 i8042.noaux quiet kiln.script=/dev/vda"
  },
  "machine-config": {"vcpu_count": 2, "mem_size_mib": 512},
  "drives": [
    {"drive_id": "script", "path_on_host": "bench-script", "is_root_device": false,
     "is_read_only": true},
    {"drive_id": "tools", "path_on_host": "tools.img", "is_root_device": false,
     "is_read_only": true}
  ],
  "network-interfaces": [
    {"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"}
  ]
}
JSON
cat >"$payload/run.sh" <<SH
#!/bin/sh
# Busybox sh in the rig prefers its own ip applet: call iproute2 by path.
IP=\$PWD/bin/ip
NS="\$IP netns exec kiln-netbench"
mkdir -p /run/netns
\$IP netns add kiln-netbench
\$NS \$IP tuntap add dev tap0 mode tap
\$IP -n kiln-netbench addr add 172.16.0.1/24 dev tap0
\$IP -n kiln-netbench link set tap0 up
\$IP -n kiln-netbench link set lo up
# Guest -> host, then host -> guest. tcpbench gives up by itself if the guest never shows up.
(\$NS ./tcpbench recv 5001 && \$NS ./tcpbench send 172.16.0.2 5002 $((mib << 20))) &
bench=\$!
\$NS ./measure KILN-GUEST-READY -- ./kiln --no-api --config-file vm.json \\
    --metrics-path metrics.json </dev/null
wait \$bench
echo "HOST-BENCH-RC=\$?"
# The device's own counts, one line of increases per flush.
sed 's/^/NET-METRICS /' metrics.json
\$IP netns del kiln-netbench
SH

bash resources/rig/run.sh "$payload" --timeout $((600 + mib * 4)) | tee "$log" >/dev/null || true
tr -d '\r' <"$log" | python3 resources/bench/summarize_net.py "$mib"
