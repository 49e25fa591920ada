"""Snapshot benchmark, for resources/bench/snapshot.sh.

Boots a tiny guest on the host's /dev/kvm that writes a pattern over half of its memory and
then reads it back page by page, counting each read in memory, for each guest size:
snapshot/create time (Full, and Diff after 0.2 s of running); snapshot/load request to response and load request to the guest
running again (its count moving, read through /proc/PID/mem), with the File backend and with
the Uffd one (kiln-uffd-handler beside kiln, Firecracker's uffd_on_demand_handler beside its
binary); and the RSS and PSS of 10 clones of one snapshot next to one booted VM's. With Firecracker's binary (`--firecracker PATH`), the same
steps run for it, alternated with kiln's in each round so that the ratio holds on a noisy host.

    python3 snapshot.py KILN RUNS [--firecracker PATH]
"""

import http.client
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

LOAD_ADDR = 0x100_0000
COUNTER_ADDR = 0x5_0000
TOUCH_START = 0x200_0000
PAGE = 4096


def guest_elf(touch_bytes):
    """A 64-bit ELF: writes 0x01 bytes over `touch_bytes` from TOUCH_START, then reads a byte
    of each of those pages, over and over, counting each read in RBX and storing the count at
    COUNTER_ADDR: a restored clone reads all the memory it was written with."""
    pages = struct.pack("<I", touch_bytes // PAGE)
    code = (
        b"\xbf" + struct.pack("<I", TOUCH_START)  # mov edi, TOUCH_START
        + b"\xb9" + struct.pack("<I", touch_bytes // 8)  # mov ecx, touch_bytes / 8
        + b"\x48\xb8" + b"\x01" * 8  # mov rax, 0x0101010101010101
        + b"\xf3\x48\xab"  # rep stosq
        + b"\x31\xdb"  # xor ebx, ebx
        + b"\xbe" + struct.pack("<I", TOUCH_START)  # 1: mov esi, TOUCH_START
        + b"\xb9" + pages  # mov ecx, pages
        + b"\x8a\x06"  # 2: mov al, [rsi]
        + b"\x48\x81\xc6" + struct.pack("<I", PAGE)  # add rsi, PAGE
        + b"\x48\xff\xc3"  # inc rbx
        + b"\x48\x89\x1c\x25" + struct.pack("<I", COUNTER_ADDR)  # mov [COUNTER_ADDR], rbx
        + b"\xff\xc9"  # dec ecx
        + b"\x75\xe8"  # jnz 2b
        + b"\xeb\xdc"  # jmp 1b
    )
    image = code.ljust(PAGE, b"\0")
    ehdr = b"\x7fELF\x02\x01\x01\x00" + b"\0" * 8 + struct.pack(
        "<HHIQQQIHHHHHH", 2, 0x3E, 1, LOAD_ADDR, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, PAGE, LOAD_ADDR | 0xFFFF_FFFF_8000_0000, LOAD_ADDR,
                       PAGE, PAGE, PAGE)
    return (ehdr + phdr).ljust(PAGE, b"\0") + image


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def api(sock, method, path, body=None):
    conn = UnixHTTP(sock)
    conn.request(method, path, body=None if body is None else json.dumps(body),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    if resp.status >= 300:
        raise RuntimeError(f"{method} {path}: {resp.status} {data.decode()}")
    return data


def timed(sock, method, path, body):
    start = time.monotonic()
    api(sock, method, path, body)
    return time.monotonic() - start


class Vmm:
    def __init__(self, binary, tmp, name):
        self.sock = os.path.join(tmp, f"{name}.sock")
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        self.proc = subprocess.Popen([binary, "--api-sock", self.sock, "--id", name],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.sock)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{binary}: no API socket")
                time.sleep(0.001)
            finally:
                probe.close()

    def kill(self):
        self.proc.kill()
        self.proc.wait()
        if getattr(self, "handler", None):
            self.handler.kill()
            self.handler.wait()

    def status(self, field):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def pss(self):
        with open(f"/proc/{self.proc.pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
        return 0

    def counter_reader(self, mem_file):
        """A function that reads the guest's count from the mapping of `mem_file`, or with
        `None` from the first anonymous mapping of the guest's low memory (the Uffd backend),
        found as the largest anonymous mapping."""
        with open(f"/proc/{self.proc.pid}/maps") as f:
            maps = [line.split() for line in f]
        if mem_file is not None:
            real = os.path.realpath(mem_file)
            found = [m for m in maps if len(m) >= 6 and m[5] == real and int(m[2], 16) == 0]
        else:
            anon = [m for m in maps if len(m) == 5]
            found = sorted(anon, key=lambda m: -(int(m[0].split("-")[1], 16)
                                                 - int(m[0].split("-")[0], 16)))[:1]
        if not found:
            return None
        start = int(found[0][0].split("-")[0], 16)
        mem = open(f"/proc/{self.proc.pid}/mem", "rb", buffering=0)

        def read():
            # A page the page-fault handler has not served yet reads as an I/O error.
            try:
                mem.seek(start + COUNTER_ADDR)
                return struct.unpack("<Q", mem.read(8))[0]
            except OSError:
                return None
        return read


def count_in(mem_file):
    with open(mem_file, "rb") as f:
        f.seek(COUNTER_ADDR)
        return struct.unpack("<Q", f.read(8))[0]


def boot_and_snapshot(binary, tmp, name, kernel, mib, touch_bytes):
    """Boots the guest, waits until it has written `touch_bytes` and counts, and snapshots it
    paused; returns the booted VM's RSS and the median create time of three Full snapshots."""
    vm = Vmm(binary, tmp, name)
    try:
        api(vm.sock, "PUT", "/boot-source", {"kernel_image_path": kernel,
                                             "boot_args": "console=ttyS0"})
        api(vm.sock, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": mib,
                                                "track_dirty_pages": True})
        api(vm.sock, "PUT", "/actions", {"action_type": "InstanceStart"})
        snap, mem = os.path.join(tmp, f"{name}.snap"), os.path.join(tmp, f"{name}.mem")
        # The guest has written its pattern once its memory is resident.
        deadline = time.monotonic() + 600
        while vm.status("VmRSS") < touch_bytes and time.monotonic() < deadline:
            time.sleep(0.1)
        body = {"snapshot_path": snap, "mem_file_path": mem}
        for _ in range(60):
            time.sleep(0.5)
            api(vm.sock, "PATCH", "/vm", {"state": "Paused"})
            api(vm.sock, "PUT", "/snapshot/create", body)
            if count_in(mem) > 0:
                break
            api(vm.sock, "PATCH", "/vm", {"state": "Resumed"})
        else:
            raise RuntimeError(f"{name}: the guest never counted")
        rss = vm.status("VmRSS")
        creates = [timed(vm.sock, "PUT", "/snapshot/create", body) for _ in range(3)]
        # Diff snapshots after the guest ran again, each over a copy of the Full memory file.
        diffs = []
        for i in range(3):
            api(vm.sock, "PATCH", "/vm", {"state": "Resumed"})
            time.sleep(0.2)
            api(vm.sock, "PATCH", "/vm", {"state": "Paused"})
            layer = os.path.join(tmp, f"{name}-diff{i}.mem")
            diffs.append(timed(vm.sock, "PUT", "/snapshot/create", {
                "snapshot_type": "Diff", "mem_file_path": layer,
                "snapshot_path": os.path.join(tmp, f"{name}-diff.snap")}))
            os.unlink(layer)
        return rss, statistics.median(creates), statistics.median(diffs), snap, mem
    finally:
        vm.kill()


def load_once(binary, tmp, name, snap, mem, handler=None):
    """Loads the snapshot in a new process, its memory the file or (with `handler`, a
    page-fault handler's binary) served by the handler; returns (request to response, request
    to the count moving) in seconds, and the running VM (the caller kills it, and its
    handler)."""
    vm = Vmm(binary, tmp, name)
    saved = count_in(mem)
    backend = {"backend_type": "File", "backend_path": mem}
    vm.handler = None
    if handler:
        uffd_sock = os.path.join(tmp, f"{name}.uffd")
        if os.path.exists(uffd_sock):
            os.unlink(uffd_sock)
        vm.handler = subprocess.Popen([handler, uffd_sock, mem], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        while not os.path.exists(uffd_sock):
            time.sleep(0.001)
        backend = {"backend_type": "Uffd", "backend_path": uffd_sock}
    body = {"snapshot_path": snap, "resume_vm": True, "mem_backend": backend}
    start = time.monotonic()
    api(vm.sock, "PUT", "/snapshot/load", body)
    answered = time.monotonic() - start
    read = vm.counter_reader(None if handler else mem)
    if read is None:
        return answered, None, vm
    deadline = start + 5
    while read() in (saved, None) and time.monotonic() < deadline:
        pass
    running = time.monotonic() - start
    return answered, running if read() not in (saved, None) else None, vm


def ms(seconds):
    return "n/a" if seconds is None else f"{seconds * 1000:8.2f} ms"


def main():
    kiln, runs = sys.argv[1], int(sys.argv[2])
    handlers = {"kiln": os.path.join(os.path.dirname(kiln), "kiln-uffd-handler")}
    vmms = [("kiln", kiln)]
    if "--firecracker" in sys.argv:
        fc = sys.argv[sys.argv.index("--firecracker") + 1]
        vmms.append(("firecracker", fc))
        handlers["firecracker"] = os.path.join(os.path.dirname(fc), "uffd_on_demand_handler")
    with tempfile.TemporaryDirectory() as tmp:
        for mib in (128, 1024):
            kernel = os.path.join(tmp, f"guest-{mib}")
            with open(kernel, "wb") as f:
                f.write(guest_elf(mib << 19))  # half of memory
            print(f"== {mib} MiB guest ({mib // 2} MiB written before it counts)")
            snaps = {}
            for name, binary in vmms:
                try:
                    rss, create, diff, snap, mem = boot_and_snapshot(
                        binary, tmp, name, kernel, mib, mib << 19)
                except (RuntimeError, OSError) as e:
                    print(f"{name:12} failed: {e}")
                    continue
                snaps[name] = (binary, snap, mem, rss)
                print(f"{name:12} snapshot/create Full: {ms(create)}, Diff (0.2 s of running, "
                      f"new file): {ms(diff)}; booted VM RSS {rss >> 20} MiB")
            for backend in ("File", "Uffd"):
                loads = {name: ([], []) for name in snaps}
                for _ in range(runs):
                    for name, (binary, snap, mem, _) in snaps.items():
                        handler = handlers.get(name) if backend == "Uffd" else None
                        answered, running, vm = load_once(binary, tmp, f"{name}-load", snap,
                                                          mem, handler)
                        vm.kill()
                        loads[name][0].append(answered)
                        if running is not None:
                            loads[name][1].append(running)
                for name, (answered, running) in loads.items():
                    run = statistics.median(running) if running else None
                    print(f"{name:12} snapshot/load ({backend}) request -> response: "
                          f"{ms(statistics.median(answered))}; -> guest running: {ms(run)} "
                          f"(median of {len(answered)})")
            for name, (binary, snap, mem, rss) in snaps.items():
                clones = [load_once(binary, tmp, f"{name}-clone{i}", snap, mem)[2]
                          for i in range(10)]
                time.sleep(1)
                total_rss = sum(c.status("VmRSS") for c in clones)
                total_pss = sum(c.pss() for c in clones)
                for c in clones:
                    c.kill()
                print(f"{name:12} 10 clones: RSS {total_rss >> 20} MiB summed, PSS "
                      f"{total_pss >> 20} MiB summed; 10 x one booted VM's RSS = "
                      f"{(10 * rss) >> 20} MiB")


main()
