#!/usr/bin/env python3
"""Print what a stopped L1 is doing: QEMU's view of every vCPU, through its QMP socket.

    qmp-state.py QMP_SOCKET

run.sh calls it when L1 stopped printing, before it kills QEMU, so that a stall report says
whether L1 sat in HLT (a lost wake-up), spun in its own code, or was inside its guest.
"""
import json
import socket
import sys


def main() -> int:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(sys.argv[1])
    stream = sock.makefile("rw")

    def command(name, **arguments):
        stream.write(json.dumps({"execute": name, "arguments": arguments}) + "\n")
        stream.flush()
        while True:
            reply = json.loads(stream.readline())
            if "return" in reply or "error" in reply:
                return reply.get("return", reply.get("error"))

    json.loads(stream.readline())  # the greeting
    command("qmp_capabilities")
    for line in ("info registers -a", "info lapic", "info pic"):
        print(f"--- {line}")
        print(command("human-monitor-command", **{"command-line": line}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, ValueError) as err:
        print(f"qmp-state: {err}")
        sys.exit(1)
