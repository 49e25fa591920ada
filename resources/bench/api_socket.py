"""Process start -> the API socket accepting connections, for resources/bench/api.sh.

Starts `kiln --api-sock` RUNS times and measures, with a monotonic clock, the time from just
before the process is spawned to the first successful connect() on its socket.
"""

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

kiln, runs = sys.argv[1], int(sys.argv[2])
samples = []
with tempfile.TemporaryDirectory() as tmp:
    sock_path = os.path.join(tmp, "api.sock")
    for _ in range(runs):
        start = time.monotonic()
        proc = subprocess.Popen([kiln, "--api-sock", sock_path],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(sock_path)
                samples.append(time.monotonic() - start)
                break
            except OSError:
                if time.monotonic() - start > 10:
                    sys.exit("api.sh: kiln never accepted on its socket")
            finally:
                s.close()
        proc.kill()
        proc.wait()
print(f"process start -> API socket accepting: {statistics.median(samples) * 1000:8.2f} ms "
      f"(median of {runs}; min {min(samples) * 1000:.2f}, max {max(samples) * 1000:.2f})")
