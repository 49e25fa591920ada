#!/usr/bin/env bash
# Run a test payload with access to a working /dev/kvm.
#
#   resources/rig/run.sh PAYLOAD_DIR [--timeout SECS] [--log FILE]
#
# PAYLOAD_DIR/run.sh (POSIX sh) runs either directly on the host (hardware
# KVM) or inside L1 of the nested QEMU/SVM rig (see README.md). The last line
# of stdout is "RIG-DONE rc=N" in both modes, and the exit status is N.
# Exit codes: N from the payload; 124 timeout; 125 rig failure (QEMU exited
# without RIG-DONE, L1 panicked or stopped, module loading failed, ...); a rig
# failure also prints "kiln-rig: RIG-FAILURE reason=..." on stderr.
# Env: KILN_RIG=1 forces the rig, KILN_RIG=0 forces direct mode; the L1
#      machine's tunables are listed in README.md.
set -euo pipefail

RIG_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
    echo "usage: $0 PAYLOAD_DIR [--timeout SECS] [--log FILE]" >&2
    exit 2
}

PAYLOAD=""
TIMEOUT=1800
LOG=""
while [ $# -gt 0 ]; do
    case "$1" in
    --timeout) [ $# -ge 2 ] || usage; TIMEOUT="$2"; shift 2 ;;
    --timeout=*) TIMEOUT="${1#*=}"; shift ;;
    --log) [ $# -ge 2 ] || usage; LOG="$2"; shift 2 ;;
    --log=*) LOG="${1#*=}"; shift ;;
    -h | --help) usage ;;
    -*) echo "unknown option $1" >&2; usage ;;
    *) [ -z "$PAYLOAD" ] || usage; PAYLOAD="$1"; shift ;;
    esac
done
[ -n "$PAYLOAD" ] || usage
[ -f "$PAYLOAD/run.sh" ] || { echo "kiln-rig: $PAYLOAD/run.sh not found" >&2; exit 2; }
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || { echo "kiln-rig: bad --timeout $TIMEOUT" >&2; exit 2; }
PAYLOAD="$(cd "$PAYLOAD" && pwd)"
if [ -n "$LOG" ]; then
    mkdir -p "$(dirname "$LOG")"
    : >"$LOG"
fi

say() { echo "kiln-rig: $*" >&2; }

TMP="$(mktemp -d "${TMPDIR:-/tmp}/kiln-rig.XXXXXX")"
# shellcheck disable=SC2317 # invoked via trap
cleanup() { rm -rf "$TMP"; }
trap cleanup EXIT
CONSOLE="$TMP/console.log" # everything stream() printed
L1LOG="$TMP/l1-kernel.log" # L1's kernel console and heartbeat (second serial port)
# L1 prints a heartbeat every 5 s; this long without a byte on its kernel console (boot
# included) means L1 stopped running, and the run is a rig failure.
STALL_SECS="${KILN_RIG_STALL_SECS:-90}"
trap 'exit 130' INT
trap 'exit 143' TERM

# Copy stdin lines to stdout (and the log), dropping the serial console's CRs.
# Line by line (no stdio buffering), so the console streams live. Stops
# copying after the "RIG-DONE rc=N" line (L1 prints "reboot: Power down" after
# it), so that line is always the last one. RIG-PAYLOAD-START and RIG-DONE are
# time-stamped into $TMP/marks for the timing report.
stream() {
    local line done=0
    while IFS= read -r line || [ -n "$line" ]; do
        [ "$done" -eq 0 ] || continue
        line="${line//$'\r'/}"
        printf '%s\n' "$line"
        printf '%s\n' "$line" >>"$CONSOLE"
        if [ -n "$LOG" ]; then printf '%s\n' "$line" >>"$LOG"; fi
        case "$line" in
        RIG-PAYLOAD-START*) printf '%s %s\n' "$(date +%s.%N)" "$line" >>"$TMP/marks" ;;
        RIG-DONE\ rc=*)
            if [[ "$line" =~ ^RIG-DONE\ rc=[0-9]+$ ]]; then
                printf '%s %s\n' "$(date +%s.%N)" "$line" >>"$TMP/marks"
                done=1
                if [ -n "${WATCHDOG_PID:-}" ]; then
                    { sleep 30; kill -TERM "$WATCHDOG_PID"; } </dev/null >/dev/null 2>&1 &
                    echo $! >"$TMP/watchdog.pid"
                fi
            fi
            ;;
        esac
    done
}

# heartbeat_monitor PID: TERM PID when $L1LOG has not grown for $STALL_SECS seconds, and
# leave $TMP/stalled saying so.
heartbeat_monitor() {
    local pid="$1" size last=-1 quiet=0
    while kill -0 "$pid" 2>/dev/null; do
        sleep 5
        size="$(stat -c %s "$L1LOG" 2>/dev/null || echo 0)"
        if [ "$size" != "$last" ]; then
            last="$size"
            quiet=0
        else
            quiet=$((quiet + 5))
        fi
        if [ "$quiet" -ge "$STALL_SECS" ]; then
            echo "$quiet" >"$TMP/stalled"
            timeout 20 python3 "$RIG_DIR/qmp-state.py" "$TMP/qmp.sock" >"$TMP/stall-state" 2>&1
            kill -TERM "$pid" 2>/dev/null
            return 0
        fi
    done
}

# run_streamed DIR ERRFILE CMD...: run CMD in DIR under `timeout`, in the
# background so that TERM/INT of this script stop it, with stdin /dev/null,
# stdout through stream(), stderr to ERRFILE (use /dev/stdout to merge).
# Returns CMD's (timeout's) exit status.
run_streamed() {
    local dir="$1" err="$2" fifo pid reader rc
    shift 2
    fifo="$(mktemp -u "$TMP/out.XXXXXX")"
    mkfifo "$fifo"
    # The subshell execs timeout, so $! is timeout's pid; timeout runs CMD in
    # its own process group and forwards TERM to it.
    (
        trap - INT TERM EXIT
        cd "$dir"
        if [ "$err" = /dev/stdout ]; then
            exec timeout --kill-after=10 "$TIMEOUT" "$@" </dev/null >"$fifo" 2>&1
        else
            exec timeout --kill-after=10 "$TIMEOUT" "$@" </dev/null >"$fifo" 2>"$err"
        fi
    ) &
    pid=$!
    # shellcheck disable=SC2064 # expand pid now
    trap "kill -TERM $pid 2>/dev/null; exit 130" INT
    # shellcheck disable=SC2064
    trap "kill -TERM $pid 2>/dev/null; exit 143" TERM
    local monitor=""
    if [ "${WATCHDOG:-0}" = 1 ]; then
        WATCHDOG_PID=$pid stream <"$fifo" &
        reader=$!
        heartbeat_monitor "$pid" </dev/null >/dev/null 2>&1 &
        monitor=$!
    else
        stream <"$fifo" &
        reader=$!
    fi
    rc=0
    wait "$pid" || rc=$?
    wait "$reader" || true
    if [ -n "$monitor" ]; then
        kill "$monitor" 2>/dev/null || true
        wait "$monitor" 2>/dev/null || true
    fi
    trap 'exit 130' INT
    trap 'exit 143' TERM
    rm -f "$fifo"
    return "$rc"
}

# --- mode selection ----------------------------------------------------------

hw_kvm() {
    [ -e /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo
}

case "${KILN_RIG:-}" in
1) MODE=rig; WHY="KILN_RIG=1" ;;
0) MODE=direct; WHY="KILN_RIG=0" ;;
"")
    if hw_kvm; then
        MODE=direct; WHY="/dev/kvm is hardware KVM (vmx/svm present)"
    elif [ -d /sys/module/kvm_pvm ]; then
        MODE=rig; WHY="/dev/kvm is kvm_pvm (software virtualization)"
    elif [ ! -e /dev/kvm ]; then
        MODE=rig; WHY="no /dev/kvm"
    else
        MODE=rig; WHY="no vmx/svm in /proc/cpuinfo"
    fi
    ;;
*) say "KILN_RIG must be 0 or 1"; exit 2 ;;
esac

# --- direct mode -------------------------------------------------------------

if [ "$MODE" = direct ]; then
    say "$WHY; running the payload directly on the host"
    mkdir -p "$TMP/payload"
    cp -a "$PAYLOAD/." "$TMP/payload/"
    rc=0
    KILN_RIG_MODE=direct run_streamed "$TMP/payload" /dev/stdout sh run.sh || rc=$?
    [ "$rc" -ne 137 ] || rc=124 # killed after the grace period
    [ "$rc" -ne 124 ] || say "timeout after ${TIMEOUT}s"
    echo "RIG-DONE rc=$rc" | stream
    exit "$rc"
fi

# --- rig mode ----------------------------------------------------------------

say "$WHY; running inside the nested QEMU/SVM rig"
CACHE="$("$RIG_DIR/setup.sh" | tail -n1)"
[ -f "$CACHE/.complete" ] || { say "setup.sh did not produce a rig"; exit 125; }
touch "$CACHE/.last-used" 2>/dev/null || true

# Second initramfs segment: the payload and the shared libraries its ELF
# files need. The kernel unpacks concatenated newc archives in order.
ROOT="$TMP/root"
mkdir -p "$ROOT/payload"
cp -a "$PAYLOAD/." "$ROOT/payload/"

is_elf() { [ "$(head -c4 "$1" 2>/dev/null | od -An -c | tr -d ' \n')" = '177ELF' ]; }

copy_host_file() { # copy /abs/path (dereferenced) to the same path in ROOT
    local src="$1"
    [ -e "$ROOT$src" ] && return 0
    mkdir -p "$ROOT$(dirname "$src")"
    cp -L "$src" "$ROOT$src"
}

declare -A seen=()
nelf=0
while IFS= read -r -d '' f; do
    is_elf "$f" || continue
    out="$(ldd "$f" 2>/dev/null)" || continue # static, or not a host ELF
    nelf=$((nelf + 1))
    while read -r lib; do
        if [ -z "$lib" ] || [ -n "${seen[$lib]:-}" ]; then continue; fi
        seen[$lib]=1
        copy_host_file "$lib"
    done < <(awk '
        $2 == "=>" && $3 ~ /^\// { print $3; next }
        $1 ~ /^\// { print $1 }
        $2 == "=>" && $3 == "not" { printf "kiln-rig: warning: %s needs %s, not found on the host\n", f, $1 > "/dev/stderr" }
    ' f="${f#"$ROOT"}" <<<"$out")
done < <(find "$ROOT/payload" -type f -size +63c -print0)
[ "$nelf" -eq 0 ] || say "copied ${#seen[@]} shared libraries for $nelf dynamic ELF file(s)"
# glibc finds libraries in its default multiarch dirs; give it a cache too.
if [ "${#seen[@]}" -gt 0 ] && [ -f /etc/ld.so.cache ]; then
    mkdir -p "$ROOT/etc"
    cp /etc/ld.so.cache "$ROOT/etc/ld.so.cache"
fi

INITRD="$TMP/l1.cpio"
cp "$CACHE/base.cpio" "$INITRD"
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >>"$INITRD"
rm -rf "$ROOT"
if [ "${KILN_RIG_GZIP:-0}" = 1 ]; then # measured slower; kept for comparisons
    gzip -1 "$INITRD" && mv "$INITRD.gz" "$INITRD"
fi

# Skip the guest's delay-loop calibration (~0.8 s under TCG): under TCG the
# guest TSC runs at the host TSC rate, so reuse the host's loops-per-jiffy
# (bogomips * 500000 / HZ, Debian kernels use HZ=250).
LPJ=""
bogo="$(awk -F: '/^bogomips/ { print $2 + 0; exit }' /proc/cpuinfo 2>/dev/null || true)"
if [ -n "$bogo" ]; then
    LPJ="$(awk -v b="$bogo" 'BEGIN { v = int(b * 2000); if (v > 0) print "lpj=" v }')"
fi

# The uncompressed vmlinux boots via PVH and skips the slow in-guest
# decompression; KILN_RIG_BZIMAGE=1 uses the bzImage instead.
KERNEL="$CACHE/vmlinux"
if [ ! -f "$KERNEL" ] || [ "${KILN_RIG_BZIMAGE:-0}" = 1 ]; then KERNEL="$CACHE/vmlinuz"; fi
# Extra QEMU arguments, split on spaces (e.g. "-icount shift=auto").
read -r -a QEMU_EXTRA <<<"${KILN_RIG_QEMU_ARGS:-}"
: >"$L1LOG"
# shellcheck disable=SC2054 # commas are QEMU option syntax
QEMU=(
    qemu-system-x86_64
    -accel "${KILN_RIG_ACCEL:-tcg,thread=multi}"
    -cpu "${KILN_RIG_CPU:-EPYC-Milan,+svm,+npt}"
    -smp "${KILN_RIG_SMP:-2}"
    -m "${KILN_RIG_MEM:-3G}"
    -machine pc
    -nodefaults -no-user-config
    -display none -vga none
    -chardev stdio,id=con,signal=off,mux=off
    -serial chardev:con
    -serial "file:$L1LOG"
    -monitor none
    -qmp "unix:$TMP/qmp.sock,server=on,wait=off"
    -no-reboot
    -kernel "$KERNEL"
    -initrd "$INITRD"
    -append "console=ttyS1 quiet panic=-1 mitigations=off nokaslr tsc=reliable 8250.nr_uarts=2 $LPJ ${KILN_RIG_APPEND:-}"
    "${QEMU_EXTRA[@]}"
)

say "L1: $(cat "$CACHE/kernel-version"), initrd $(($(stat -c %s "$INITRD") / 1048576)) MiB, timeout ${TIMEOUT}s"
start=$(date +%s.%N)
# QEMU: no stdin and no tty, so it leaves the terminal alone. Its own
# messages go to a file (printed afterwards minus the harmless TCG CPUID
# warnings). After RIG-DONE, L1 powers off at once; if QEMU still runs 30 s
# later, stream() stops it.
qrc=0
WATCHDOG=1 run_streamed "$TMP" "$TMP/qemu.err" "${QEMU[@]}" || qrc=$?
end=$(date +%s.%N)
if [ -f "$TMP/watchdog.pid" ]; then kill "$(cat "$TMP/watchdog.pid")" 2>/dev/null || true; fi
if grep -v "TCG doesn't support requested feature" "$TMP/qemu.err" >"$TMP/qemu.err2"; then
    sed -i 's/^/kiln-rig: qemu: /' "$TMP/qemu.err2"
    cat "$TMP/qemu.err2" >&2
fi
# On failure, put QEMU's messages into the log too (before the RIG-DONE line).
qemu_err_to_log() { if [ -n "$LOG" ] && [ -s "$TMP/qemu.err2" ]; then cat "$TMP/qemu.err2" >>"$LOG"; fi; }
# L1's kernel messages without the heartbeats.
l1_messages() { grep -av '^RIG-HEARTBEAT' "$L1LOG" | tr -d '\r' || true; }
# KILN_RIG_L1_LOG=FILE keeps them (appended), e.g. for resources/seccomp-log.sh.
if [ -n "${KILN_RIG_L1_LOG:-}" ]; then
    { echo "=== kiln-rig L1 log $(date -u +%FT%TZ)"; l1_messages; } >>"$KILN_RIG_L1_LOG"
fi
# A rig failure: say why on stderr (and in the log), with the end of L1's kernel log.
rig_failure() {
    local reason="$1" detail="$2"
    say "RIG-FAILURE reason=$reason: $detail"
    l1_messages | tail -n 30 | sed 's/^/kiln-rig: L1: /' >&2
    if [ -n "$LOG" ]; then
        echo "kiln-rig: RIG-FAILURE reason=$reason: $detail" >>"$LOG"
        l1_messages | tail -n 30 | sed 's/^/kiln-rig: L1: /' >>"$LOG"
    fi
}
# L1 kernel messages that show the rig itself is unwell, even when the payload finished.
L1_TROUBLE='Kernel panic|soft lockup|hard LOCKUP|rcu_.*(stall|detected)|BUG:|corrupted stack|general protection fault|Oops|watchdog: '
if l1_messages | grep -aEq "$L1_TROUBLE"; then
    l1_messages | grep -aE "$L1_TROUBLE" | head -n 5 | sed 's/^/kiln-rig: L1-TROUBLE: /' >&2
fi

t_payload=$(awk -v s="$start" '/RIG-PAYLOAD-START/ { printf "%.1f", $1 - s; exit }' "$TMP/marks" 2>/dev/null || true)
say "L1 boot to payload: ${t_payload:-?}s, total: $(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.1f", e - s }')s"

rc="$(sed -n 's/^RIG-DONE rc=\([0-9][0-9]*\)$/\1/p' "$CONSOLE" | tail -n1)"
if [ -n "$rc" ]; then
    [ "$rc" -ne 125 ] || rig_failure l1-setup "L1 could not set up KVM"
    exit "$rc"
fi
if [ -f "$TMP/stalled" ]; then
    rig_failure l1-stall "L1 printed nothing on its console for $(cat "$TMP/stalled") s (no heartbeat); QEMU killed"
    grep -a '^RIG-HEARTBEAT' "$L1LOG" | tail -n 3 | sed 's/^/kiln-rig: L1 last heartbeats: /' >&2
    sed 's/^/kiln-rig: L1 state: /' "$TMP/stall-state" >&2
    qemu_err_to_log
    echo "RIG-DONE rc=125" | stream
    exit 125
fi
if l1_messages | grep -aq 'Kernel panic'; then
    rig_failure l1-panic "$(l1_messages | grep -a 'Kernel panic' | head -n1)"
    qemu_err_to_log
    echo "RIG-DONE rc=125" | stream
    exit 125
fi
if [ "$qrc" -eq 124 ] || [ "$qrc" -eq 137 ]; then
    # The payload's own steps have timeouts inside L1: a run that outlives them all means
    # L1 stopped keeping time or running them.
    rig_failure rig-timeout "timeout after ${TIMEOUT}s; QEMU killed"
    qemu_err_to_log
    echo "RIG-DONE rc=124" | stream
    exit 124
fi
rig_failure qemu-exit "QEMU exited (status $qrc) without a RIG-DONE line"
qemu_err_to_log
echo "RIG-DONE rc=125" | stream
exit 125
