#!/usr/bin/env bash
# Prepare the nested QEMU/SVM test rig (see README.md in this directory).
#
# Idempotent. Installs the host tools (qemu-system-x86 from bookworm-backports,
# busybox-static, cpio), downloads the newest Debian 6.1 kernel package and
# builds a cache directory with:
#   vmlinuz            the L1 kernel (bzImage)
#   vmlinux            the same, uncompressed ELF for PVH boot (if possible)
#   modules/*.ko       the needed modules (uncompressed) + their dependencies
#   modules/order      load order (one file name per line)
#   base.cpio          newc archive: busybox + applet links + modules + /init
#   kernel-version     "<package> <version> <uname -r>"
#   .complete          stamp
#
# All progress goes to stderr; the last line of stdout is the cache directory.
set -euo pipefail

RIG_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_ROOT="${KILN_CACHE_DIR:-$HOME/.cache/kiln}"
# Modules needed in L1: KVM for AMD SVM, tun for tap devices, and the
# bridge/veth family for network tests. Dependencies are added from modules.dep.
WANT_MODULES=(kvm kvm-amd ccp irqbypass tun bridge stp llc veth)

log() { echo "kiln-rig-setup: $*" >&2; }
die() { log "error: $*"; exit 1; }

# Run a command as root (directly, or via sudo when not root).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) for: $*"
    fi
}

export DEBIAN_FRONTEND=noninteractive
export PATH="$PATH:/usr/sbin:/sbin"

apt_updated=0
apt_update() {
    if [ "$apt_updated" -eq 0 ]; then
        log "apt-get update"
        as_root apt-get update >&2
        apt_updated=1
    fi
}

# --- bookworm-backports ------------------------------------------------------

backports_configured() {
    grep -rqs --include='*.sources' --include='*.list' 'bookworm-backports' \
        /etc/apt/sources.list /etc/apt/sources.list.d/ ||
        apt-cache policy 2>/dev/null | grep -q 'bookworm-backports'
}

# Print "URIS<TAB>COMPONENTS<TAB>SIGNED_BY" of the stanza/line that carries the
# plain `bookworm` suite, taken from the existing apt configuration.
find_bookworm_source() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -e "$f" ] || continue
        awk '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ / bookworm /) {
                    printf "%s\t%s\t%s\n", uris, comps, signed; found = 1; exit
                }
                types = ""; uris = ""; suites = ""; comps = ""; signed = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            {
                line = $0
                key = line; sub(/:.*/, "", key)
                val = line; sub(/^[^:]*:[ \t]*/, "", val); gsub(/[ \t]+$/, "", val)
                k = tolower(key)
                if (k == "types") types = val
                else if (k == "uris") uris = val
                else if (k == "suites") suites = val
                else if (k == "components") comps = val
                else if (k == "signed-by") signed = val
            }
            END { if (!found) flush() }
        ' "$f"
    done | head -n1 && return 0
}

find_bookworm_list_line() {
    # One-line format fallback: deb [opts] URI bookworm comp...
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -e "$f" ] || continue
        awk '$1 == "deb" {
                i = 2; opts = ""
                if ($2 ~ /^\[/) { while ($i !~ /\]$/) { opts = opts " " $i; i++ } opts = opts " " $i; i++ }
                uri = $i; suite = $(i + 1)
                if (suite != "bookworm") next
                comps = ""; for (j = i + 2; j <= NF; j++) comps = comps (comps ? " " : "") $j
                signed = ""
                if (match(opts, /signed-by=[^] ]+/)) signed = substr(opts, RSTART + 10, RLENGTH - 10)
                printf "%s\t%s\t%s\n", uri, comps, signed; exit
             }' "$f"
    done | head -n1
}

ensure_backports() {
    if backports_configured; then
        return 0
    fi
    local src uris comps signed out=/etc/apt/sources.list.d/kiln-backports.sources
    src="$(find_bookworm_source)"
    [ -n "$src" ] || src="$(find_bookworm_list_line)"
    [ -n "$src" ] || die "no apt source with suite 'bookworm' found; cannot add bookworm-backports"
    IFS=$'\t' read -r uris comps signed <<<"$src"
    [ -n "$uris" ] || die "could not parse URIs of the bookworm apt source"
    log "adding bookworm-backports ($out)"
    {
        echo "# Added by kiln resources/rig/setup.sh (qemu-system-x86 from backports)"
        echo "Types: deb"
        echo "URIs: $uris"
        echo "Suites: bookworm-backports"
        echo "Components: ${comps:-main}"
        if [ -n "$signed" ]; then echo "Signed-By: $signed"; fi
    } | as_root tee "$out.tmp" >/dev/null
    as_root mv "$out.tmp" "$out"
    apt_updated=0
    apt_update
}

# --- host packages -----------------------------------------------------------

pkg_version() { dpkg-query -W -f='${db:Status-Status} ${Version}\n' "$1" 2>/dev/null | awk '$1 == "installed" { print $2 }'; }

qemu_ok() {
    local v
    v="$(pkg_version qemu-system-x86)"
    [ -n "$v" ] && dpkg --compare-versions "$v" ge 1:10 && command -v qemu-system-x86_64 >/dev/null 2>&1
}

ensure_packages() {
    local missing=() p
    for p in busybox-static cpio kmod xz-utils zstd; do
        [ -n "$(pkg_version "$p")" ] || missing+=("$p")
    done
    if ! qemu_ok; then
        ensure_backports
        apt_update
        log "installing qemu-system-x86 from bookworm-backports"
        as_root apt-get install -y --no-install-recommends -t bookworm-backports \
            qemu-system-x86 qemu-system-data seabios ipxe-qemu >&2
        qemu_ok || die "qemu-system-x86 >= 10 is not installed after apt-get install"
    fi
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_update
        log "installing ${missing[*]}"
        as_root apt-get install -y --no-install-recommends "${missing[@]}" >&2
    fi
}

# --- kernel ------------------------------------------------------------------

# Print "<package> <version>" of the newest linux-image-6.1.0-N-amd64.
pick_kernel() {
    local name ver
    name="$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64(-unsigned)?$' 2>/dev/null |
        awk '{ print $1 }' | sed 's/-unsigned$//' | sort -t- -k4,4n -u | tail -n1)"
    [ -n "$name" ] || return 1
    ver="$(apt-cache policy "$name" | awk '/Candidate:/ { print $2 }')"
    if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
        name="$name-unsigned"
        ver="$(apt-cache policy "$name" | awk '/Candidate:/ { print $2 }')"
    fi
    [ -n "$ver" ] && [ "$ver" != "(none)" ] || return 1
    echo "$name $ver"
}

# Resolve WANT_MODULES + dependencies in load order. Prints module paths
# relative to /lib/modules/<kver>/ (as in modules.dep), dependencies first.
resolve_modules() {
    local moddir="$1"
    awk -v want="${WANT_MODULES[*]}" '
        function norm(p,   b) { b = p; sub(/.*\//, "", b); sub(/\.ko(\.[a-z]+)?$/, "", b); gsub(/-/, "_", b); return b }
        function visit(m,   i, n, d) {
            if (m in done) return
            if (m in visiting) return
            visiting[m] = 1
            n = split(deps[m], d, " ")
            for (i = 1; i <= n; i++) visit(d[i])
            done[m] = 1; print m
        }
        FILENAME ~ /modules\.builtin$/ { builtin[norm($1)] = 1; next }
        {
            p = $1; sub(/:$/, "", p)
            rest = $0; sub(/^[^:]*:[ \t]*/, "", rest)
            deps[p] = rest; byname[norm(p)] = p
        }
        END {
            n = split(want, w, " ")
            for (i = 1; i <= n; i++) {
                m = w[i]; gsub(/-/, "_", m)
                if (m in byname) visit(byname[m])
                else if (m in builtin) continue
                else { print "MISSING " w[i]; exit 1 }
            }
        }
    ' "$moddir/modules.builtin" "$moddir/modules.dep"
}

# Decompress the ELF vmlinux out of the bzImage. QEMU can boot it directly via
# its PVH entry point, which skips the in-guest decompression (~3 s under TCG).
# Leaves no vmlinux if that is not possible; run.sh then uses the bzImage.
extract_vmlinux() {
    local bz="$1" out="$2" off magic tool
    for magic in 'xz:\xfd7zXZ\x00' 'gzip:\x1f\x8b\x08' 'zstd:\x28\xb5\x2f\xfd'; do
        tool="${magic%%:*}"
        off="$(LC_ALL=C grep -obUaP "${magic#*:}" "$bz" | head -n1 | cut -d: -f1)" || true
        [ -n "$off" ] || continue
        case "$tool" in
        xz) tail -c +$((off + 1)) "$bz" | xz -dc --single-stream >"$out" 2>/dev/null || true ;;
        gzip) tail -c +$((off + 1)) "$bz" | gzip -dc >"$out" 2>/dev/null || true ;;
        zstd) tail -c +$((off + 1)) "$bz" | zstd -qdc >"$out" 2>/dev/null || true ;;
        esac
        # ELF with a Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY = 0x12)?
        if [ "$(head -c4 "$out" | od -An -c | tr -d ' \n')" = '177ELF' ] &&
            LC_ALL=C grep -qaP '\x04\x00\x00\x00[\x04\x08]\x00\x00\x00\x12\x00\x00\x00Xen\x00' "$out"; then
            log "extracted PVH-bootable vmlinux ($tool)"
            return 0
        fi
    done
    rm -f "$out"
    log "no PVH-bootable vmlinux in the bzImage; L1 boots the compressed kernel"
}

build_rig() {
    local pkg="$1" ver="$2" dest="$3" tmp="$4"
    local dl="$tmp/dl" root="$tmp/pkg" out="$tmp/rig" cpioroot="$tmp/cpioroot"
    mkdir -p "$dl" "$root" "$out/modules" "$cpioroot"
    log "downloading $pkg=$ver"
    (cd "$dl" && apt-get download -o APT::Sandbox::User=root "$pkg=$ver" >&2) || {
        apt_update
        (cd "$dl" && apt-get download -o APT::Sandbox::User=root "$pkg=$ver" >&2)
    }
    local debs=("$dl"/*.deb) deb
    deb="${debs[0]}"
    [ -f "$deb" ] || die "apt-get download produced no .deb"
    log "extracting $(basename "$deb")"
    dpkg-deb -x "$deb" "$root"
    local vmlinuz kver moddir kernels=("$root"/boot/vmlinuz-*)
    vmlinuz="${kernels[0]}"
    [ -f "$vmlinuz" ] || die "no vmlinuz in $deb"
    kver="${vmlinuz##*/vmlinuz-}"
    moddir="$root/lib/modules/$kver"
    [ -d "$moddir" ] || moddir="$root/usr/lib/modules/$kver"
    [ -d "$moddir/kernel" ] || die "no modules in $deb"
    if [ ! -f "$moddir/modules.dep" ]; then
        # Debian generates modules.dep at install time; do it for the extract.
        log "depmod $kver"
        depmod -b "${moddir%/lib/modules/"$kver"}" "$kver" >&2
    fi
    [ -f "$moddir/modules.dep" ] || die "depmod did not produce modules.dep"
    cp "$vmlinuz" "$out/vmlinuz"
    extract_vmlinux "$out/vmlinuz" "$out/vmlinux"

    local list
    list="$(resolve_modules "$moddir")" || die "module resolution failed: $list"
    : >"$out/modules/order"
    local rel f base
    while read -r rel; do
        [ -n "$rel" ] || continue
        f="$moddir/$rel"
        base="${rel##*/}"
        case "$base" in
        *.ko.xz) xz -dc "$f" >"$out/modules/${base%.xz}"; base="${base%.xz}" ;;
        *.ko.zst) zstd -qdc "$f" >"$out/modules/${base%.zst}"; base="${base%.zst}" ;;
        *.ko.gz) gzip -dc "$f" >"$out/modules/${base%.gz}"; base="${base%.gz}" ;;
        *.ko) cp "$f" "$out/modules/$base" ;;
        *) die "unexpected module file $rel" ;;
        esac
        echo "$base" >>"$out/modules/order"
    done <<<"$list"
    log "modules (load order): $(tr '\n' ' ' <"$out/modules/order")"
    echo "$pkg $ver $kver" >"$out/kernel-version"

    # Base initramfs: busybox, applet links, modules, /init.
    local bb
    bb="$(command -v busybox || true)"
    [ -n "$bb" ] || bb=/bin/busybox
    mkdir -p "$cpioroot"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,etc,root,payload,lib/modules/rig}
    cp "$bb" "$cpioroot/bin/busybox"
    local applet
    while read -r applet; do
        applet="${applet#/}"
        if [ -z "$applet" ] || [ -e "$cpioroot/$applet" ]; then continue; fi
        mkdir -p "$cpioroot/$(dirname "$applet")"
        ln -s /bin/busybox "$cpioroot/$applet"
    done < <("$bb" --list-full)
    cp "$out/modules/"*.ko "$out/modules/order" "$cpioroot/lib/modules/rig/"
    install -m 0755 "$RIG_DIR/l1-init.sh" "$cpioroot/init"
    echo "root:x:0:0:root:/root:/bin/sh" >"$cpioroot/etc/passwd"
    echo "root:x:0:" >"$cpioroot/etc/group"
    (cd "$cpioroot" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >"$out/base.cpio"

    touch "$out/.complete"
    # Atomic publish.
    if ! mv -T "$out" "$dest" 2>/dev/null; then
        [ -e "$dest/.complete" ] || die "could not move rig into $dest"
    fi
}

# Remove rig caches of other script/kernel versions that were not used for
# KILN_RIG_KEEP_DAYS (default 3) days. run.sh touches .last-used on every run.
prune_old() {
    local keep="$1" d
    for d in "$CACHE_ROOT"/rig-*; do
        if [ ! -d "$d" ] || [ "$d" = "$keep" ]; then continue; fi
        if [ -z "$(find "$d" -maxdepth 1 -name '.last-used' -mtime -"${KILN_RIG_KEEP_DAYS:-3}" 2>/dev/null)" ] &&
            [ -z "$(find "$d" -maxdepth 0 -mtime -"${KILN_RIG_KEEP_DAYS:-3}" 2>/dev/null)" ]; then
            log "removing old rig cache $d"
            rm -rf "$d" "$CACHE_ROOT/.${d##*/}.lock"
        fi
    done
}

main() {
    ensure_packages

    local kv
    if ! kv="$(pick_kernel)"; then
        apt_update
        kv="$(pick_kernel)" || die "no linux-image-6.1.0-*-amd64 package available"
    fi
    local pkg ver
    read -r pkg ver <<<"$kv"

    local key
    key="$( (cat "$RIG_DIR/setup.sh" "$RIG_DIR/l1-init.sh"; echo "$pkg $ver") | sha256sum | cut -c1-16)"
    local dest="$CACHE_ROOT/rig-$key"
    mkdir -p "$CACHE_ROOT"

    if [ ! -e "$dest/.complete" ]; then
        exec 9>"$CACHE_ROOT/.rig-$key.lock"
        flock 9
        if [ ! -e "$dest/.complete" ]; then
            rm -rf "$dest"
            local tmp
            tmp="$(mktemp -d "$CACHE_ROOT/.rig-$key.tmp.XXXXXX")"
            # shellcheck disable=SC2064
            trap "rm -rf '$tmp'" EXIT
            build_rig "$pkg" "$ver" "$dest" "$tmp"
            rm -rf "$tmp"
            trap - EXIT
            log "built $dest"
            prune_old "$dest"
        fi
        flock -u 9
        exec 9>&-
    else
        log "rig cache is complete: $dest ($pkg $ver)"
    fi
    echo "$dest"
}

main "$@"
