"""Summarises resources/bench/net.sh: TCP throughput each way and kiln's CPU time per GiB.

Reads the run's output on stdin; the optional argument is the MiB sent each way, checked
against what tcpbench reports."""

import json
import re
import sys

text = sys.stdin.read()


def fail(why):
    sys.exit(f"net.sh: {why}; the run printed:\n{text[-3000:]}")


script_exit = re.search(r"^KILN-SCRIPT-EXIT rc=(\d+)", text, re.M)
if not script_exit:
    fail("the guest script never finished (no KILN-SCRIPT-EXIT line): the guest stopped early")
expected = int(sys.argv[1]) << 20 if len(sys.argv) > 1 else None
rates = {}
moved = 0
for kind, label in (("G2H", "guest -> host"), ("H2G", "host -> guest")):
    m = re.search(rf"^BENCH-{kind} bytes=(\d+) seconds=([\d.]+)", text, re.M)
    if not m:
        fail(f"no {label} figure (BENCH-{kind} line)")
    nbytes, seconds = int(m.group(1)), float(m.group(2))
    if expected is not None and nbytes != expected:
        fail(f"{label} moved {nbytes} bytes, not {expected}")
    if seconds <= 0:
        fail(f"{label} took no time")
    rates[label] = (nbytes * 8 / seconds / 1e9, nbytes / seconds / (1 << 20), seconds)
    moved += nbytes
m = re.search(r"^MEASURE .*cpu_us=(\d+) rc=(\d+)", text, re.M)
if not m or m.group(2) != "0":
    fail("kiln did not finish cleanly (no MEASURE line with rc=0)")
process_cpu_s = int(m.group(1)) / 1e6
threads = re.search(r"CPU time: VMM threads (\d+) ms, vCPU threads (\d+) ms", text)
if not threads:
    fail("kiln logged no CPU time")
vmm_s, vcpu_s = int(threads.group(1)) / 1e3, int(threads.group(2)) / 1e3
counts = {"net_eth0": {}, "vcpu": {}}
for line in re.findall(r"^NET-METRICS (.*)", text, re.M):
    flushed = json.loads(line)
    for group, totals in counts.items():
        for name, value in flushed.get(group, {}).items():
            totals[name] = totals.get(name, 0) + value
if not counts["net_eth0"]:
    fail("kiln wrote no net_eth0 metrics")
gib = moved / (1 << 30)
for label, (gbit, mib_s, seconds) in rates.items():
    print(f"{label}: {gbit:.3f} Gbit/s ({mib_s:.1f} MiB/s, {seconds:.1f} s)")
print(f"VMM CPU time per GiB: {vmm_s / gib:.2f} s "
      f"(VMM threads {vmm_s:.2f} s for {gib:.2f} GiB moved in total, boot included)")
print(f"vCPU threads CPU time per GiB: {vcpu_s / gib:.2f} s "
      f"({vcpu_s:.2f} s, guest included); whole process {process_cpu_s:.2f} s")
for group, totals in counts.items():
    print(f"{group} counts, boot and both transfers: "
          + ", ".join(f"{k} {v}" for k, v in sorted(totals.items()) if v))
