#!/usr/bin/env bash
# Self-test of the kiln test rig.
#
#   resources/rig/selftest.sh [--quick]
#
# 1. Builds kvm-smoke.c twice (static and dynamically linked against glibc)
#    and runs both through run.sh (rig or direct mode, as run.sh decides;
#    KILN_RIG=1 forces the rig). Checks KVM-SMOKE OK from both binaries and
#    RIG-DONE rc=0, and reports the boot/total timings.
# 2. Checks that a payload's exit status is propagated (RIG-DONE rc=3, exit 3).
# 3. Checks direct mode (KILN_RIG=0) with a payload that does not need KVM.
# 4. Unless --quick: checks the timeout path (exit 124).
# 5. In rig mode: an L1 kernel panic and an L1 that stops printing are rig failures (exit 125,
#    "RIG-FAILURE reason=l1-panic" / "reason=l1-stall" on stderr).
set -euo pipefail

RIG_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
QUICK=0
[ "${1:-}" != "--quick" ] || QUICK=1

TMP="$(mktemp -d "${TMPDIR:-/tmp}/kiln-rig-selftest.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

failures=0
# check DESCRIPTION COMMAND...: run COMMAND, report PASS/FAIL.
check() {
    local desc="$1"
    shift
    if "$@"; then
        echo "selftest: PASS: $desc" >&2
    else
        echo "selftest: FAIL: $desc" >&2
        failures=$((failures + 1))
    fi
}
# last_line_is TEXT FILE
last_line_is() { [ "$(tail -n1 "$2")" = "$1" ]; }

command -v gcc >/dev/null || { echo "selftest: gcc is required" >&2; exit 1; }

# --- 1. KVM smoke test, static + dynamic --------------------------------------
P="$TMP/smoke"
mkdir -p "$P"
gcc -static -O2 -Wall -Wextra -o "$P/kvm-smoke-static" "$RIG_DIR/kvm-smoke.c"
gcc -O2 -Wall -Wextra -o "$P/kvm-smoke-dynamic" "$RIG_DIR/kvm-smoke.c"
cat >"$P/run.sh" <<'EOF'
#!/bin/sh
set -e
echo "payload: mode=$KILN_RIG_MODE cwd=$(pwd) kernel=$(uname -r)"
echo "payload: svm flags: $(grep -c svm /proc/cpuinfo || true)"
lsmod
ls -l /dev/kvm /dev/net/tun
# /payload must be writable
echo scratch >written-by-payload && rm written-by-payload
./kvm-smoke-static
./kvm-smoke-dynamic
EOF

LOG="$TMP/smoke.log"
t0=$(date +%s.%N)
set +e
# stdout to a file, stderr shown live and kept for the timing line.
{ "$RIG_DIR/run.sh" "$P" --timeout 600 --log "$LOG" 2>&1 >"$TMP/smoke.out" | tee "$TMP/smoke.err" >&2; }
rc=${PIPESTATUS[0]}
set -e
t1=$(date +%s.%N)
cat "$TMP/smoke.out"
check "smoke payload exit status 0 (got $rc)" [ "$rc" -eq 0 ]
check "KVM-SMOKE OK from the static and the dynamic binary" [ "$(grep -c '^KVM-SMOKE OK' "$LOG")" -eq 2 ]
check "last line of stdout and log is RIG-DONE rc=0" last_line_is "RIG-DONE rc=0" "$LOG"
check "stdout equals the log" cmp -s "$TMP/smoke.out" "$LOG"
timing="$(sed -n 's/^kiln-rig: //p' "$TMP/smoke.err" | grep 'boot to payload' || true)"
wall="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')"

# --- 2. exit status propagation -----------------------------------------------
P2="$TMP/rc"
mkdir -p "$P2"
printf '#!/bin/sh\necho "payload: exiting with 3"\nexit 3\n' >"$P2/run.sh"
set +e
"$RIG_DIR/run.sh" "$P2" --timeout 600 >"$TMP/rc.out" 2>/dev/null
rc=$?
set -e
check "payload exit status 3 propagated (got $rc)" [ "$rc" -eq 3 ]
check "last line is RIG-DONE rc=3" last_line_is "RIG-DONE rc=3" "$TMP/rc.out"

# --- 3. direct mode -------------------------------------------------------------
set +e
KILN_RIG=0 "$RIG_DIR/run.sh" "$P2" --timeout 60 >"$TMP/direct.out" 2>/dev/null
rc=$?
set -e
check "direct mode (KILN_RIG=0): exit status 3 (got $rc)" [ "$rc" -eq 3 ]
check "direct mode: output and RIG-DONE rc=3" grep -q '^payload: exiting with 3' "$TMP/direct.out"
check "direct mode: last line is RIG-DONE rc=3" last_line_is "RIG-DONE rc=3" "$TMP/direct.out"

# --- 4. timeout -----------------------------------------------------------------
if [ "$QUICK" -eq 0 ]; then
    P3="$TMP/hang"
    mkdir -p "$P3"
    printf '#!/bin/sh\necho "payload: sleeping"\nsleep 600\n' >"$P3/run.sh"
    set +e
    "$RIG_DIR/run.sh" "$P3" --timeout 30 >"$TMP/hang.out" 2>/dev/null
    rc=$?
    set -e
    check "timeout: exit status 124 (got $rc)" [ "$rc" -eq 124 ]
    check "timeout: last line is RIG-DONE rc=124" last_line_is "RIG-DONE rc=124" "$TMP/hang.out"
fi

# --- 5. rig failures: an L1 kernel panic and a silent L1 ----------------------------
# Only the rig has an L1 to fail.
if grep -q 'running inside the nested' "$TMP/smoke.err"; then
    P4="$TMP/panic"
    mkdir -p "$P4"
    printf '#!/bin/sh
echo "payload: crashing L1"
echo c >/proc/sysrq-trigger
sleep 600
' >"$P4/run.sh"
    set +e
    "$RIG_DIR/run.sh" "$P4" --timeout 300 >"$TMP/panic.out" 2>"$TMP/panic.err"
    rc=$?
    set -e
    check "L1 panic: exit status 125 (got $rc)" [ "$rc" -eq 125 ]
    check "L1 panic: RIG-FAILURE reason=l1-panic" grep -q 'RIG-FAILURE reason=l1-panic' "$TMP/panic.err"
    check "L1 panic: the end of L1's kernel log is shown" grep -q '^kiln-rig: L1: ' "$TMP/panic.err"

    P5="$TMP/silent"
    mkdir -p "$P5"
    printf '#!/bin/sh
echo "payload: stopping the heartbeat"
kill "$(cat /run/rig-heartbeat.pid)"
sleep 600
' >"$P5/run.sh"
    set +e
    KILN_RIG_STALL_SECS=20 "$RIG_DIR/run.sh" "$P5" --timeout 300 >"$TMP/silent.out" 2>"$TMP/silent.err"
    rc=$?
    set -e
    check "silent L1: exit status 125 (got $rc)" [ "$rc" -eq 125 ]
    check "silent L1: RIG-FAILURE reason=l1-stall" grep -q 'RIG-FAILURE reason=l1-stall' "$TMP/silent.err"
    check "silent L1: last line is RIG-DONE rc=125" last_line_is "RIG-DONE rc=125" "$TMP/silent.out"
fi

echo "selftest: smoke run: ${timing:-no rig timing (direct mode?)}; run.sh wall clock incl. setup check + initramfs build: ${wall}s" >&2
if [ "$failures" -ne 0 ]; then
    echo "selftest: $failures check(s) failed" >&2
    exit 1
fi
echo "selftest: all checks passed" >&2
