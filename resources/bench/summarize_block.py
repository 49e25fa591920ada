"""Summarises resources/bench/block.sh: guest dd throughput and kiln's CPU time."""

import re
import sys

text = sys.stdin.read()
figures = {}
for kind in ("WRITE", "READ"):
    m = re.search(rf"^BENCH-{kind} bytes=(\d+) start=([\d.]+) end=([\d.]+)", text, re.M)
    if not m:
        sys.exit(f"block.sh: no {kind.lower()} figure in the run's output:\n{text[-3000:]}")
    seconds = float(m.group(3)) - float(m.group(2))
    figures[kind] = int(m.group(1)) / seconds / (1 << 20)
m = re.search(r"^MEASURE .*cpu_us=(\d+) rc=(\d+)", text, re.M)
if not m or m.group(2) != "0":
    sys.exit(f"block.sh: kiln did not finish cleanly:\n{text[-3000:]}")
process_cpu_s = int(m.group(1)) / 1e6
threads = re.search(r"CPU time: VMM threads (\d+) ms, vCPU threads (\d+) ms", text)
if not threads:
    sys.exit(f"block.sh: kiln logged no CPU time:\n{text[-3000:]}")
vmm_s, vcpu_s = int(threads.group(1)) / 1e3, int(threads.group(2)) / 1e3
print(f"sequential write (O_DIRECT, 1 MiB): {figures['WRITE']:8.1f} MiB/s")
print(f"sequential read  (O_DIRECT, 1 MiB): {figures['READ']:8.1f} MiB/s")
print(f"VMM CPU time (event loop, devices): {vmm_s:8.2f} s for the run (boot included, 512 MiB moved)")
print(f"vCPU threads CPU time (incl. guest): {vcpu_s:7.2f} s; whole process {process_cpu_s:.2f} s")
