#!/usr/bin/env bash
# Boots the default microVM and shows that it is alive: an interactive shell when run from a
# terminal, a short scripted session otherwise. Builds kiln, the guest kernel and the root
# filesystem first if they are missing. On a host whose /dev/kvm cannot run Linux guests
# (kvm_pvm), it says so and runs the scripted session inside the nested QEMU/SVM test rig.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null; then
    echo "kiln: cargo is required (a Rust toolchain installed with rustup)." >&2
    exit 1
fi

echo "kiln-demo: building kiln (release)" >&2
cargo build --release --quiet
echo "kiln-demo: building the guest (cached after the first run)" >&2
guest=$(bash resources/guest/build.sh | tail -n1)

hardware_kvm() {
    [ ! -d /sys/module/kvm_pvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo
}

mode=demo
if [ -t 0 ] && hardware_kvm; then
    mode=shell
fi

payload=$(mktemp -d)
trap 'rm -rf "$payload"' EXIT
cp target/release/kiln "$payload/kiln"
cp "$guest/vmlinux" "$guest/initramfs.cpio.gz" "$payload/"
cat >"$payload/vm.json" <<JSON
{
  "boot-source": {
    "kernel_image_path": "vmlinux",
    "initrd_path": "initramfs.cpio.gz",
    "boot_args": "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd quiet kiln.run=$mode"
  },
  "machine-config": {"vcpu_count": 1, "mem_size_mib": 256}
}
JSON

if hardware_kvm; then
    cd "$payload"
    if [ "$mode" = shell ]; then
        echo "kiln-demo: starting the microVM; type 'exit' in the guest shell to stop it" >&2
    fi
    exec ./kiln --no-api --config-file vm.json --boot-timer
fi

echo "kiln-demo: /dev/kvm here is kvm_pvm (no vmx/svm), which cannot run a Linux guest;" >&2
echo "kiln-demo: running the scripted session inside the nested QEMU/SVM test rig instead." >&2
cat >"$payload/run.sh" <<'SH'
#!/bin/sh
./kiln --no-api --config-file vm.json --boot-timer </dev/null
SH
bash resources/rig/run.sh "$payload" --timeout 600
