#!/bin/sh
# /init of the L1 guest of the kiln test rig (busybox sh, PID 1).
# Brings up KVM (kvm_amd on emulated SVM), runs /payload/run.sh and powers off.
# Two serial ports: ttyS0 carries only what this script and the payload print, and its last
# line is always "RIG-DONE rc=<status>"; ttyS1 is L1's kernel console (console=ttyS1), plus a
# "RIG-HEARTBEAT" line every few seconds, so that the host can tell an L1 that panicked or
# stopped running from a payload that is merely quiet, and kernel messages never land inside a
# payload's output lines.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root
export TERM=dumb
export KILN_RIG_MODE=rig

finish() {
    sync
    echo "RIG-DONE rc=$1"
    poweroff -f
    # poweroff should not return; never let PID 1 exit.
    while :; do sleep 1000; done
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || mount -t tmpfs -o mode=0755 tmpfs /dev
mkdir -p /dev/pts /dev/shm /dev/net
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
[ -e /dev/null ] || mknod -m 666 /dev/null c 1 3
[ -e /dev/console ] || mknod -m 600 /dev/console c 5 1
[ -e /dev/ptmx ] || ln -s pts/ptmx /dev/ptmx
[ -e /dev/ttyS0 ] || mknod -m 620 /dev/ttyS0 c 4 64
[ -e /dev/ttyS1 ] || mknod -m 620 /dev/ttyS1 c 4 65
# From here on, everything goes to the payload console (ttyS0), not the kernel's.
exec </dev/null >/dev/ttyS0 2>&1
ln -sf /proc/self/fd /dev/fd 2>/dev/null
ln -sf /proc/self/mounts /etc/mtab 2>/dev/null

# cgroup2 is handy for VMM jailer tests; ignore failure.
mkdir -p /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null

moddir=/lib/modules/rig
while read -r m; do
    [ -n "$m" ] || continue
    if ! err=$(insmod "$moddir/$m" 2>&1); then
        case "$err" in
        *"File exists"*) ;; # already loaded / built in
        *)
            echo "kiln-rig: insmod $m failed: $err"
            finish 125
            ;;
        esac
    fi
done <"$moddir/order"

# devtmpfs normally creates these; fall back to the well-known misc minors.
[ -e /dev/kvm ] || mknod -m 666 /dev/kvm c 10 232
[ -e /dev/net/tun ] || mknod -m 666 /dev/net/tun c 10 200
chmod 666 /dev/kvm /dev/net/tun
if [ ! -e /dev/kvm ]; then
    echo "kiln-rig: /dev/kvm missing after loading modules"
    finish 125
fi

# The heartbeat runs as long as L1's scheduler and timers do (RIG_HEARTBEAT_SECS in run.sh).
(
    while :; do
        echo "RIG-HEARTBEAT uptime=$(cut -d' ' -f1 /proc/uptime)" >/dev/ttyS1
        sleep 5
    done
) &
echo $! >/run/rig-heartbeat.pid # the rig's self-test stops it to play a silent L1

ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
hostname kiln-rig

# Machine-readable marker: the host measures boot time up to here.
echo "RIG-PAYLOAD-START uptime=$(cut -d' ' -f1 /proc/uptime)"
cd /payload || finish 125
sh /payload/run.sh </dev/null 2>&1
rc=$?
echo "RIG-PAYLOAD-END uptime=$(cut -d' ' -f1 /proc/uptime)"
# Seccomp audit records (the `quiet` console level hides them) go to L1's kernel log, where
# resources/seccomp-log.sh finds the syscalls a filter in log mode did not allow.
dmesg | grep -a 'type=1326' | sed 's/^/L1-AUDIT /' >/dev/ttyS1
finish "$rc"
