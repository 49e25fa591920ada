"""Summarises resources/bench/block.sh: guest dd throughput and kiln's CPU time."""

import re
import sys

text = sys.stdin.read()
figures = {}
for kind in ("WRITE", "READ"):
    m = re.search(rf"^BENCH-{kind} (\d+) bytes .* copied, ([\d.]+) seconds", text, re.M)
    if not m:
        sys.exit(f"block.sh: no {kind.lower()} figure in the run's output:\n{text[-3000:]}")
    figures[kind] = int(m.group(1)) / float(m.group(2)) / (1 << 20)
m = re.search(r"^MEASURE .*cpu_us=(\d+) rc=(\d+)", text, re.M)
if not m or m.group(2) != "0":
    sys.exit(f"block.sh: kiln did not finish cleanly:\n{text[-3000:]}")
cpu_s = int(m.group(1)) / 1e6
print(f"sequential write (O_DIRECT, 1 MiB): {figures['WRITE']:8.1f} MiB/s")
print(f"sequential read  (O_DIRECT, 1 MiB): {figures['READ']:8.1f} MiB/s")
print(f"kiln CPU time for the whole run:    {cpu_s:8.2f} s (boot included, 512 MiB moved)")
