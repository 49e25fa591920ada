"""Summarises the MEASURE lines of resources/bench/measure.c: medians over the runs."""

import statistics
import sys

rows = [dict(kv.split("=", 1) for kv in line.split()[1:]) for line in sys.stdin if line.startswith("MEASURE")]
bad = [r for r in rows if r["rc"] != "0" or r["marker_us"] == "-1"]
if len(rows) < 5 or bad:
    sys.exit(f"boot.sh: {len(rows)} runs measured, {len(bad)} failed: {bad}")


def median(key):
    return statistics.median(int(r[key]) for r in rows)


print(f"runs:                     {len(rows)}")
print(f"process start -> marker:  {median('marker_us') / 1000:8.1f} ms (median)")
print(f"process start -> exit:    {median('exit_us') / 1000:8.1f} ms (median)")
print(f"peak RSS:                 {median('maxrss_kb') / 1024:8.1f} MiB (median)")
print(f"Guest-boot-time:          {median('boot_time_us') / 1000:8.1f} ms (median)")
