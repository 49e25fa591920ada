"""Summarises resources/bench/block.sh: guest dd throughput and the VMM's CPU time, per image."""

import re
import sys

text = sys.stdin.read()
parts = re.split(r"^BENCH-VARIANT (\S+)$", text, flags=re.M)
if len(parts) < 3:
    sys.exit(f"block.sh: no variant ran:\n{text[-3000:]}")
print(f"{'image':<16} {'write MiB/s':>12} {'read MiB/s':>11} {'VMM CPU s':>10} {'vCPU CPU s':>11}")
for variant, out in zip(parts[1::2], parts[2::2]):
    figures = {}
    for kind in ("WRITE", "READ"):
        m = re.search(rf"^BENCH-{kind} bytes=(\d+) start=([\d.]+) end=([\d.]+)", out, re.M)
        if not m:
            sys.exit(f"block.sh: no {kind.lower()} figure for {variant}:\n{out[-3000:]}")
        figures[kind] = int(m.group(1)) / (float(m.group(3)) - float(m.group(2))) / (1 << 20)
    m = re.search(r"^MEASURE .*rc=(\d+)", out, re.M)
    threads = re.search(r"CPU time: VMM threads (\d+) ms, vCPU threads (\d+) ms", out)
    if not m or m.group(1) != "0" or not threads:
        sys.exit(f"block.sh: kiln did not finish cleanly for {variant}:\n{out[-3000:]}")
    vmm_s, vcpu_s = int(threads.group(1)) / 1e3, int(threads.group(2)) / 1e3
    print(f"{variant:<16} {figures['WRITE']:12.1f} {figures['READ']:11.1f} {vmm_s:10.2f} {vcpu_s:11.2f}")
print("(VMM CPU: the event-loop thread, device emulation included, for the whole run with boot;")
print(" 512 MiB moved per image.)")
