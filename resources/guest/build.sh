#!/usr/bin/env bash
# Build the default Kiln microVM guest (kernel + busybox userland) from Debian
# packages only. See README.md next to this script.
#
# Usage: resources/guest/build.sh
#
# The output directory is printed as the last line of stdout:
#     dir=$(resources/guest/build.sh | tail -n1)
# Progress goes to stderr; the full build log is kept as build.log in the
# output directory (or guest-<key>.failed.log in the cache dir on failure).
#
# Environment:
#     KILN_CACHE_DIR   cache root (default: $HOME/.cache/kiln)
#     KILN_GUEST_JOBS  make -j value (default: nproc)

set -euo pipefail

# Everything goes to stderr by default; only the final path goes to stdout.
exec 3>&1 1>&2

log() { printf '[kiln-guest] %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF=$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")
FRAGMENT=$SCRIPT_DIR/kernel.fragment
INIT=$SCRIPT_DIR/init

KERNEL_PKG=linux-source-6.1
KERNEL_TARBALL=/usr/src/linux-source-6.1.tar.xz
BUSYBOX_PKG=busybox-static
BUSYBOX=/bin/busybox
ROOTFS_SIZE=64M

PACKAGES=(
	"$KERNEL_PKG" "$BUSYBOX_PKG"
	build-essential gcc make bc flex bison libelf-dev libssl-dev
	cpio gzip xz-utils tar e2fsprogs binutils util-linux
)

[ "$(uname -m)" = x86_64 ] || die "only x86_64 hosts are supported (no cross build)"
for f in "$FRAGMENT" "$INIT"; do
	[ -f "$f" ] || die "missing $f"
done

# ---------------------------------------------------------------------------
# 1. Packages
# ---------------------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done
if [ ${#missing[@]} -gt 0 ]; then
	log "installing missing packages: ${missing[*]}"
	sudo=()
	if [ "$(id -u)" -ne 0 ]; then
		command -v sudo >/dev/null || die "not root and no sudo; install: ${missing[*]}"
		sudo=(sudo)
	fi
	"${sudo[@]}" apt-get update >&2
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y --no-install-recommends "${missing[@]}" >&2
fi
[ -f "$KERNEL_TARBALL" ] || die "$KERNEL_TARBALL not found after installing $KERNEL_PKG"
[ -x "$BUSYBOX" ] || die "$BUSYBOX not found after installing $BUSYBOX_PKG"

# ---------------------------------------------------------------------------
# 2. Cache key and output directory
# ---------------------------------------------------------------------------
pkg_version() { dpkg-query -W -f='${Package}=${Version}\n' "$1"; }

key_input() {
	echo "fragment $(sha256sum <"$FRAGMENT" | cut -d' ' -f1)"
	echo "build.sh $(sha256sum <"$SELF" | cut -d' ' -f1)"
	echo "init $(sha256sum <"$INIT" | cut -d' ' -f1)"
	pkg_version "$KERNEL_PKG"
	pkg_version "$BUSYBOX_PKG"
}
KEY_INPUT=$(key_input)
KEY=$(printf '%s\n' "$KEY_INPUT" | sha256sum | cut -c1-16)

CACHE_DIR=${KILN_CACHE_DIR:-$HOME/.cache/kiln}
OUT=$CACHE_DIR/guest-$KEY

if [ -f "$OUT/.complete" ]; then
	log "cached: $OUT"
	echo "$OUT" >&3
	exit 0
fi

mkdir -p "$CACHE_DIR"
# Serialize concurrent builds of the same key.
exec 9>"$CACHE_DIR/.guest-$KEY.lock"
if ! flock -n 9; then
	log "another build of guest-$KEY is running, waiting for it"
	flock 9
fi
if [ -f "$OUT/.complete" ]; then
	log "cached (built concurrently): $OUT"
	echo "$OUT" >&3
	exit 0
fi
# Leftovers of interrupted builds of this key (we hold the lock).
rm -rf "$OUT" "$CACHE_DIR/guest-$KEY.tmp."*

TMP=$(mktemp -d "$CACHE_DIR/guest-$KEY.tmp.XXXXXX")
LOG=$TMP/build.log
FAILED_LOG=$CACHE_DIR/guest-$KEY.failed.log
on_exit() {
	local rc=$?
	if [ $rc -ne 0 ] && [ -d "$TMP" ]; then
		if [ -f "$LOG" ]; then
			cp "$LOG" "$FAILED_LOG" 2>/dev/null || :
			log "build failed; last lines of the log ($FAILED_LOG):"
			tail -n 40 "$LOG" >&2 || :
		fi
	fi
	rm -rf "$TMP"
	exit $rc
}
trap on_exit EXIT
trap 'exit 130' INT TERM HUP

log "building guest-$KEY in $TMP (log: build.log)"
printf '%s\n' "$KEY_INPUT" | sed 's/^/[kiln-guest] key input: /' >&2
START=$(date +%s)

# Run a command with its output appended to the build log.
run() {
	echo "+ $*" >>"$LOG"
	"$@" >>"$LOG" 2>&1
}

# ---------------------------------------------------------------------------
# 3. Kernel
# ---------------------------------------------------------------------------
# Keep the caller's environment out of kbuild.
unset ARCH CROSS_COMPILE KBUILD_OUTPUT KCONFIG_CONFIG KCONFIG_ALLCONFIG \
	LOCALVERSION INSTALL_PATH MAKEFLAGS MAKELEVEL MFLAGS O C W V
export ARCH=x86_64
export KBUILD_BUILD_USER=kiln KBUILD_BUILD_HOST=kiln

log "unpacking $KERNEL_TARBALL"
mkdir -p "$TMP/work"
run tar -xf "$KERNEL_TARBALL" -C "$TMP/work"
KSRC=$TMP/work/$(basename "$KERNEL_TARBALL" .tar.xz)
[ -f "$KSRC/Makefile" ] || die "unexpected tarball layout, no $KSRC/Makefile"

log "configuring: tinyconfig + kernel.fragment"
run make -C "$KSRC" tinyconfig
# -n: allnoconfig semantics, so options that tinyconfig never showed (they
# depended on something off) stay off unless the fragment asks for them.
(cd "$KSRC" && run ./scripts/kconfig/merge_config.sh -n .config "$FRAGMENT")
run make -C "$KSRC" olddefconfig

# Every option of the fragment must have its requested value in .config.
dropped=()
while IFS= read -r line; do
	line=${line%"${line##*[![:space:]]}"}
	opt=
	case "$line" in
	CONFIG_*=n | "# CONFIG_"*" is not set")
		opt=${line#\# }
		opt=${opt%%[= ]*}
		if grep -q "^$opt=" "$KSRC/.config"; then
			dropped+=("$line (is: $(grep "^$opt=" "$KSRC/.config"))")
		fi
		;;
	CONFIG_*=*)
		opt=${line%%=*}
		if ! grep -qxF "$line" "$KSRC/.config"; then
			dropped+=("$line (is: $(grep -E "^$opt=|^# $opt is not set" "$KSRC/.config" || echo 'absent'))")
		fi
		;;
	esac
done <"$FRAGMENT"
if [ ${#dropped[@]} -gt 0 ]; then
	log "kernel.fragment options not honoured by the final .config (missing dependency?):"
	printf '[kiln-guest]     %s\n' "${dropped[@]}" >&2
	die "kernel config check failed"
fi
log "kernel config check passed ($(grep -cE '^CONFIG_|^# CONFIG_.* is not set' "$FRAGMENT") options)"

JOBS=${KILN_GUEST_JOBS:-$(nproc)}
log "building vmlinux + bzImage with -j$JOBS (takes a few minutes)"
run make -C "$KSRC" -j"$JOBS" vmlinux bzImage

cp "$KSRC/vmlinux" "$TMP/vmlinux"
cp "$KSRC/arch/x86/boot/bzImage" "$TMP/bzImage"
cp "$KSRC/.config" "$TMP/kernel.config"

# vmlinux-nopvh: same image without the .notes section, which holds the Xen
# PHYS32_ENTRY note (and the build-id / Linux notes). .notes is the last
# section of the first PT_LOAD, so objcopy shortens that segment by the size
# of .notes and leaves an empty PT_NOTE header (p_filesz 0); everything else
# that gets loaded is unchanged (checked below).
run objcopy --remove-section=.notes "$TMP/vmlinux" "$TMP/vmlinux-nopvh"

# The Xen note type 0x12 is XEN_ELFNOTE_PHYS32_ENTRY.
has_pvh_note() {
	readelf -nW "$1" 2>/dev/null | grep -Eq '^[[:space:]]*Xen[[:space:]].*(0x00000012|PHYS32_ENTRY)'
}
has_pvh_note "$TMP/vmlinux" || die "vmlinux has no Xen PHYS32_ENTRY note (CONFIG_PVH?)"
! has_pvh_note "$TMP/vmlinux-nopvh" || die "vmlinux-nopvh still has the PVH note"
for f in vmlinux vmlinux-nopvh; do
	phdrs=$(readelf -lW "$TMP/$f" 2>&1) || die "readelf -l $f failed"
	if grep -qi 'warning\|error' <<<"$phdrs"; then
		die "readelf -l $f complains: $phdrs"
	fi
	echo "+ readelf -lW $f" >>"$LOG"
	echo "$phdrs" >>"$LOG"
done
# Loaded contents must be unchanged, except that segments may lose the
# .notes bytes at their end.
load_segments() { readelf -lW "$1" | awk '$1 == "LOAD" {print $2, $3, $4, $5}'; }
check_nopvh_loads() {
	local la lb oa va pa sa ob vb pb sb shrunk=0 notes
	notes=$(readelf -SW "$1" | awk '{sub(/^ *\[ *[0-9]+\] */, "")} $1 == ".notes" {print "0x" $5}')
	[ -n "$notes" ] || return 1
	la=$(load_segments "$1")
	lb=$(load_segments "$2")
	[ -n "$la" ] || return 1
	[ "$(wc -l <<<"$la")" = "$(wc -l <<<"$lb")" ] || return 1
	while read -r oa va pa sa ob vb pb sb; do
		[ "$oa $va $pa" = "$ob $vb $pb" ] || return 1
		[ $((sb)) -le $((sa)) ] || return 1
		shrunk=$((shrunk + sa - sb))
		cmp -s -n $((sb)) <(tail -c +$((oa + 1)) "$1") <(tail -c +$((ob + 1)) "$2") || return 1
	done < <(paste -d' ' <(echo "$la") <(echo "$lb"))
	[ "$shrunk" -eq $((notes)) ]
}
check_nopvh_loads "$TMP/vmlinux" "$TMP/vmlinux-nopvh" ||
	die "PT_LOAD segments of vmlinux-nopvh do not match vmlinux minus .notes"

# ---------------------------------------------------------------------------
# 4. Userland: busybox + /init, as initramfs and as ext4 image
# ---------------------------------------------------------------------------
log "staging busybox userland"
ROOT=$TMP/work/rootfs
mkdir -p "$ROOT"
for d in bin sbin usr/bin usr/sbin dev proc sys tmp mnt etc root run var; do
	mkdir -p "$ROOT/$d"
done
chmod 1777 "$ROOT/tmp"
chmod 0700 "$ROOT/root"
cp "$BUSYBOX" "$ROOT/bin/busybox"
chmod 0755 "$ROOT/bin/busybox"
# One absolute symlink per applet, at the applet's usual location.
"$BUSYBOX" --list-full | while read -r applet; do
	[ "$applet" = bin/busybox ] && continue
	mkdir -p "$ROOT/$(dirname "$applet")"
	ln -sfn /bin/busybox "$ROOT/$applet"
done
[ -L "$ROOT/bin/sh" ] || die "busybox provides no sh applet"
install -m 0755 "$INIT" "$ROOT/init"
# Kernel default for a disk root is /sbin/init; point it at our init instead
# of busybox's init applet.
ln -sfn /init "$ROOT/sbin/init"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\n' >"$ROOT/etc/group"
printf 'kiln\n' >"$ROOT/etc/hostname"
if [ "$(id -u)" -eq 0 ]; then
	mknod -m 0600 "$ROOT/dev/console" c 5 1
	mknod -m 0666 "$ROOT/dev/null" c 1 3
else
	log "not root: no device nodes in the image (the kernel provides /dev/console)"
fi

log "writing initramfs.cpio.gz"
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) |
	gzip -9 -n >"$TMP/initramfs.cpio.gz"

log "writing rootfs.ext4 ($ROOTFS_SIZE)"
truncate -s "$ROOTFS_SIZE" "$TMP/rootfs.ext4"
run mkfs.ext4 -q -F -L kiln-root -E root_owner=0:0 -d "$ROOT" "$TMP/rootfs.ext4"
run e2fsck -fn "$TMP/rootfs.ext4"

# ---------------------------------------------------------------------------
# 5. Publish
# ---------------------------------------------------------------------------
rm -rf "$TMP/work"
{
	echo "key=$KEY"
	printf '%s\n' "$KEY_INPUT"
	echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ) seconds=$(($(date +%s) - START))"
} >"$TMP/.complete"
chmod 0755 "$TMP"
mv -T "$TMP" "$OUT"
rm -f "$FAILED_LOG"
log "done in $(($(date +%s) - START))s: $OUT"
echo "$OUT" >&3
