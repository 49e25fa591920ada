#!/usr/bin/env bash
# Measure how often the nested rig fails, with kiln and Firecracker side by side.
#
#   resources/rig/soak.sh [--boots N] [--per-rig R] [--stress] [--vcpus V] [--label TEXT]
#
# Boots the default Linux guest (resources/guest) N times (default 100) inside the rig, two
# guests at a time: each round starts kiln and Firecracker (../shared/anchors/firecracker or
# $FIRECRACKER; kiln twice when it is absent) side by side, each with the same config, and
# waits for both. One rig boot runs R rounds (default 25); a rig that fails (L1 panic, L1
# stall, QEMU exit) is counted and a fresh one runs the rounds that are left.
# --stress keeps one host core busy (stress-ng --cpu 1) for the whole run.
# The rig configuration comes from run.sh's environment (KILN_RIG_SMP, KILN_RIG_ACCEL,
# KILN_RIG_CPU, KILN_RIG_APPEND, KILN_RIG_QEMU_ARGS); the summary line names it.
#
# A boot is "ok" when the guest printed its marker and the VMM exited 0 (reboot=k); "early"
# when the VMM exited 0 before the marker (a triple fault, as KVM_EXIT_SHUTDOWN); "timeout"
# when it ran for longer than the boot timeout; "fail" otherwise. The last lines are:
#   soak-vmm: vmm=kiln boots=50 ok=50 early=0 timeout=0 fail=0 max_secs=9.1
#   soak-vmm: vmm=firecracker ...
#   soak-summary: config="..." stress=1 boots=100 failed_boots=0 rig_runs=4 rig_failures=0 ...
set -euo pipefail
RIG_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$RIG_DIR/../.." && pwd)"

BOOTS=100
PER_RIG=25
STRESS=0
VCPUS=1
LABEL=""
BOOT_TIMEOUT=120
usage() {
    sed -n '2,4p' "$0" >&2
    exit 2
}
while [ $# -gt 0 ]; do
    case "$1" in
    --boots) BOOTS="$2"; shift 2 ;;
    --per-rig) PER_RIG="$2"; shift 2 ;;
    --stress) STRESS=1; shift ;;
    --vcpus) VCPUS="$2"; shift 2 ;;
    --label) LABEL="$2"; shift 2 ;;
    *) usage ;;
    esac
done
for n in "$BOOTS" "$PER_RIG" "$VCPUS"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || usage
done

say() { echo "soak: $*" >&2; }

FC="${FIRECRACKER:-$ROOT/../shared/anchors/firecracker}"
OTHER=firecracker
if [ ! -x "$FC" ]; then
    say "Firecracker not found at $FC (set FIRECRACKER); both guests of a round run kiln"
    OTHER=kiln
fi

KILN="${KILN_BIN:-}"
if [ -z "$KILN" ]; then
    (cd "$ROOT" && cargo build --quiet -p kiln)
    KILN="$ROOT/target/debug/kiln"
fi
ARTIFACTS="$(bash "$ROOT/resources/guest/build.sh" | tail -n1)"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/kiln-soak.XXXXXX")"
STRESS_PID=""
cleanup() {
    if [ -n "$STRESS_PID" ]; then kill "$STRESS_PID" 2>/dev/null || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT
if [ "$STRESS" = 1 ]; then
    if ! command -v stress-ng >/dev/null; then
        apt-get update >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends stress-ng >&2
    fi
    stress-ng --cpu 1 --quiet &
    STRESS_PID=$!
fi

P="$TMP/payload"
mkdir -p "$P"
cp "$KILN" "$P/kiln"
if [ "$OTHER" = firecracker ]; then cp "$FC" "$P/firecracker"; fi
cp "$ARTIFACTS/vmlinux" "$ARTIFACTS/initramfs.cpio.gz" "$P/"
cat >"$P/vm.json" <<EOF
{
  "boot-source": {"kernel_image_path": "vmlinux", "initrd_path": "initramfs.cpio.gz",
                  "boot_args": "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd"},
  "drives": [],
  "machine-config": {"vcpu_count": $VCPUS, "mem_size_mib": 256, "smt": false}
}
EOF
# The L1 side: ROUNDS rounds of two VMMs side by side, one line per boot.
cat >"$P/run.sh" <<'EOF'
#!/bin/sh
up() { cut -d' ' -f1 /proc/uptime; }
# What each thread of a VMM that outlived its time is doing: in KVM_RUN (syscall 16, ioctl),
# waiting on a lock (202, futex), writing (1), ... and the kernel stack, so that a stopped
# guest can be told from a stuck VMM.
threads() { # PID
    for t in /proc/"$1"/task/*; do
        echo "SOAK-THREAD $(cat "$t/comm") syscall=$(cut -d' ' -f1 "$t/syscall") wchan=$(cat "$t/wchan")"
        sed 's/^/SOAK-THREAD   /' "$t/stack" 2>/dev/null | head -n 8
    done
}
boot() { # VMM SLOT
    t0=$(up)
    "./$1" --no-api --config-file vm.json </dev/null >"out.$2" 2>&1 &
    pid=$!
    n=0
    while kill -0 "$pid" 2>/dev/null && [ "$n" -lt "$BOOT_TIMEOUT" ]; do
        sleep 1
        n=$((n + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        threads "$pid" >"threads.$2"
        kill -9 "$pid"
        wait "$pid"
        rc=124
    else
        wait "$pid"
        rc=$?
    fi
    t1=$(up)
    if [ "$rc" = 0 ] && grep -q KILN-GUEST-READY "out.$2"; then
        result=ok
    elif [ "$rc" = 124 ]; then
        result=timeout
    elif [ "$rc" = 0 ]; then
        result=early
    else
        result=fail
    fi
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    echo "SOAK-BOOT vmm=$1 result=$result rc=$rc secs=$secs"
    if [ "$result" != ok ]; then tail -n 8 "out.$2" | sed "s/^/SOAK-TAIL $1: /"; fi
    if [ "$result" = timeout ]; then cat "threads.$2"; rm -f "threads.$2"; fi
}
i=0
while [ "$i" -lt "$ROUNDS" ]; do
    # Alternate which VMM starts first.
    if [ $((i % 2)) = 0 ]; then a=kiln; b=$OTHER; else a=$OTHER; b=kiln; fi
    boot "$a" a >res.a &
    pa=$!
    boot "$b" b >res.b &
    pb=$!
    wait "$pa" "$pb"
    cat res.a res.b
    i=$((i + 1))
done
EOF

config="smp=${KILN_RIG_SMP:-2} accel=${KILN_RIG_ACCEL:-tcg,thread=multi} cpu=${KILN_RIG_CPU:-EPYC-Milan,+svm,+npt}"
[ -z "${KILN_RIG_APPEND:-}" ] || config="$config append='${KILN_RIG_APPEND}'"
[ -z "${KILN_RIG_QEMU_ARGS:-}" ] || config="$config qemu='${KILN_RIG_QEMU_ARGS}'"
[ -z "$LABEL" ] || config="$LABEL: $config"
say "config: $config, stress=$STRESS, vcpus=$VCPUS, $BOOTS boots"

RESULTS="$TMP/results"
: >"$RESULTS"
rig_runs=0
rig_failures=0
reasons=""
start=$(date +%s)
while [ "$(grep -c '^SOAK-BOOT' "$RESULTS" || true)" -lt "$BOOTS" ]; do
    left=$((BOOTS - $(grep -c '^SOAK-BOOT' "$RESULTS" || true)))
    rounds=$(((left + 1) / 2))
    [ "$rounds" -le "$PER_RIG" ] || rounds=$PER_RIG
    sed -i "1a ROUNDS=$rounds OTHER=$OTHER BOOT_TIMEOUT=$BOOT_TIMEOUT" "$P/run.sh"
    rig_runs=$((rig_runs + 1))
    rc=0
    timeout_secs=$((rounds * BOOT_TIMEOUT + 300))
    KILN_RIG=1 bash "$RIG_DIR/run.sh" "$P" --timeout "$timeout_secs" >"$TMP/out" 2>"$TMP/err" || rc=$?
    sed -i '2d' "$P/run.sh"
    grep -a '^SOAK-' "$TMP/out" | tee -a "$RESULTS" | grep -v '^SOAK-BOOT vmm=[a-z]* result=ok' >&2 || true
    grep -a 'L1-TROUBLE' "$TMP/err" >&2 || true
    if [ "$rc" -ne 0 ]; then
        rig_failures=$((rig_failures + 1))
        why="$(grep -ao 'RIG-FAILURE reason=[a-z0-9-]*' "$TMP/err" | head -n1 | cut -d= -f2 || true)"
        reasons="$reasons ${why:-rc$rc}"
        say "rig run $rig_runs failed (rc=$rc ${why:-}):"
        grep -a 'kiln-rig' "$TMP/err" | tail -n 20 >&2
        # A rig that dies on every run would loop forever.
        [ "$rig_failures" -lt 10 ] || { say "10 rig failures; giving up"; break; }
    fi
done
secs=$(($(date +%s) - start))

failed=0
for vmm in kiln firecracker; do
    grep -q "^SOAK-BOOT vmm=$vmm " "$RESULTS" || continue
    awk -v vmm="$vmm" '
        $1 == "SOAK-BOOT" && $2 == "vmm=" vmm {
            n++; split($3, r, "="); c[r[2]]++
            split($5, s, "="); if (s[2] + 0 > max) max = s[2] + 0
        }
        END { printf "soak-vmm: vmm=%s boots=%d ok=%d early=%d timeout=%d fail=%d max_secs=%.1f\n",
              vmm, n, c["ok"], c["early"], c["timeout"], c["fail"], max }' "$RESULTS"
done
failed=$(grep -c '^SOAK-BOOT .* result=[^o]' "$RESULTS" || true)
total=$(grep -c '^SOAK-BOOT' "$RESULTS" || true)
echo "soak-summary: config=\"$config\" stress=$STRESS vcpus=$VCPUS boots=$total failed_boots=$failed rig_runs=$rig_runs rig_failures=$rig_failures reasons=\"${reasons# }\" secs=$secs"
