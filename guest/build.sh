#!/usr/bin/env bash
# Builds the boxctl guest: a kernel and an initramfs (boxctl-agent as /init plus the kernel
# modules it loads) into build/guest/ (or $OUT). See guest/README.md.
#
#   guest/build.sh                                   # Debian's linux-image-cloud-amd64
#   KERNEL=/boot/vmlinuz-X MODULES=/lib/modules/X guest/build.sh   # another kernel
#   MODULES=none KERNEL=... guest/build.sh           # a kernel with everything built in
#
# Environment:
#   OUT        output directory (default: build/guest)
#   KERNEL     kernel image to use instead of Debian's cloud kernel
#   MODULES    its /lib/modules/<release> tree, or "none"
#   KERNEL_PKG Debian meta-package to take the kernel from (default: linux-image-cloud-amd64)
#   COMPRESS   initramfs compression: none (default, fastest boot under TCG), gzip, zstd
#   VERSION    agent version string (default: git describe, or "dev")
#   STRIP_MODULE_SIGNATURES=1|0  strip module signatures: 50-100 ms faster module loading
#              under TCG; the guest kernel reports itself tainted, and kernels that enforce
#              signatures (module.sig_enforce, lockdown) refuse such modules. Default: 1 for
#              Debian's kernel (it does not enforce them), 0 for a KERNEL= of your own
#
# Idempotent and incremental: the kernel package is downloaded and unpacked once into
# $OUT/cache, the agent is rebuilt by go's cache, and outputs are only replaced when their
# content changes (their mtimes say whether anything did).
#
# Outputs in $OUT: vmlinuz, vmlinux (the uncompressed ELF kernel inside vmlinuz, when it has a
# PVH entry point), initramfs, boxctl-agent, guest.env (KERNEL_RELEASE, CMDLINE,
# AGENT_VERSION, MODULES_DIR, COMPRESS; shell syntax).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-$root/build/guest}"
cache="$out/cache"
compress="${COMPRESS:-none}"
mkdir -p "$out" "$cache" "$root/build/tools"

log() { echo "guest/build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# install_if_changed SRC DST: copy unless DST already has the same content.
install_if_changed() {
	if ! cmp -s "$1" "$2"; then
		cp "$1" "$2.new.$$" && mv -f "$2.new.$$" "$2"
		log "updated $2"
	fi
}

# Debian kernel package: resolve the versioned package behind the meta-package, download and
# unpack it once.
debian_kernel() {
	local meta="${KERNEL_PKG:-linux-image-cloud-amd64}" pkg deb dir
	command -v apt-cache >/dev/null || die "apt-cache not found: set KERNEL and MODULES to use another kernel"
	pkg="$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
	if [[ -z "$pkg" ]]; then
		log "package lists do not know $meta; running apt-get update"
		apt-get update -qq >&2 || die "apt-get update failed"
		pkg="$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
		[[ -n "$pkg" ]] || die "cannot resolve the kernel package behind $meta"
	fi
	mkdir -p "$cache/debs"
	deb="$(ls "$cache/debs/${pkg}"_*.deb 2>/dev/null | head -n1 || true)"
	if [[ -z "$deb" ]]; then
		log "downloading $pkg"
		if ! (cd "$cache/debs" && apt-get download "$pkg" >&2 2>/dev/null); then
			log "download failed; running apt-get update and retrying"
			apt-get update -qq >&2 || die "apt-get update failed"
			(cd "$cache/debs" && apt-get download "$pkg" >&2) || die "apt-get download $pkg failed"
		fi
		deb="$(ls "$cache/debs/${pkg}"_*.deb | head -n1)"
	fi
	dir="$cache/$(basename "$deb" .deb)"
	if [[ ! -f "$dir/.unpacked" ]]; then
		log "unpacking $(basename "$deb")"
		rm -rf "$dir" && mkdir -p "$dir"
		dpkg-deb -x "$deb" "$dir"
		touch "$dir/.unpacked"
	fi
	kernel="$(ls "$dir"/boot/vmlinuz-* | head -n1)"
	modules="$(ls -d "$dir"/lib/modules/* | head -n1)"
}

if [[ -n "${KERNEL:-}" ]]; then
	[[ -f "$KERNEL" ]] || die "KERNEL=$KERNEL does not exist"
	[[ -n "${MODULES:-}" ]] || die "KERNEL is set: also set MODULES=/lib/modules/<release> (or MODULES=none for a kernel without modules)"
	kernel="$KERNEL"
	modules="$MODULES"
	: "${STRIP_MODULE_SIGNATURES:=0}"
	if [[ "$modules" != none && ! -d "$modules" ]]; then
		die "MODULES=$modules is not a directory"
	fi
else
	debian_kernel
	# Debian's kernel loads unsigned modules too (no sig_enforce), so inside
	# the guest, where the box's root may load modules anyway, the check
	# guards nothing; under TCG it costs several ms of RSA per module.
	: "${STRIP_MODULE_SIGNATURES:=1}"
fi
if [[ "$modules" == none ]]; then
	modules=""
	release="${RELEASE:-unknown}"
else
	release="$(basename "$modules")"
fi

version="${VERSION:-$(git -C "$root" describe --always --dirty 2>/dev/null || echo dev)}"
log "building boxctl-agent $version"
# grpcnotrace leaves out gRPC's x/net/trace (and with it net/http and
# html/template): a third smaller agent, whose start-up under TCG is paid
# by every cold boot.
(cd "$root" && CGO_ENABLED=0 go build -tags grpcnotrace -trimpath -ldflags "-s -w -X main.version=$version" \
	-o "$out/boxctl-agent" ./guest/cmd/boxctl-agent)
(cd "$root" && go build -o "$root/build/tools/mkguest" ./guest/cmd/mkguest)
(cd "$root" && go build -o "$root/build/tools/vmlinux" ./guest/cmd/vmlinux)

strip=()
[[ "${STRIP_MODULE_SIGNATURES:-0}" == 1 ]] && strip=(-strip-signatures)
"$root/build/tools/mkguest" -agent "$out/boxctl-agent" ${modules:+-modules "$modules"} \
	-release "$release" -compress "$compress" "${strip[@]}" -o "$out/initramfs"
install_if_changed "$kernel" "$out/vmlinuz"

# The uncompressed kernel, for VMMs that boot it through its PVH entry point: no in-guest
# decompression (0.2-0.5 s of a boot under TCG, bench/coldboot; no KASLR either, see
# docs/security.md). Only for kernels with a PVH note; a stale one must not outlive its kernel.
rc=0
"$root/build/tools/vmlinux" -o "$out/vmlinux" "$out/vmlinuz" || rc=$?
case $rc in
0) ;;
2) log "no vmlinux: this kernel cannot boot through PVH (the qemu plugin uses vmlinuz)"
   rm -f "$out/vmlinux" ;;
*) die "extracting vmlinux from $out/vmlinuz failed" ;;
esac

# The kernel command line the agent is tested with; the VMM adds boxctl.* settings.
cmdline="console=ttyS0 quiet panic=-1 reboot=t tsc=reliable no_timer_check i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd cryptomgr.notests"
env_tmp="$out/guest.env.tmp.$$"
printf 'KERNEL_RELEASE=%s\nCMDLINE="%s"\nAGENT_VERSION=%s\nMODULES_DIR=%s\nCOMPRESS=%s\n' \
	"$release" "$cmdline" "$version" "$modules" "$compress" >"$env_tmp"
install_if_changed "$env_tmp" "$out/guest.env"
rm -f "$env_tmp"
log "ready: $out/vmlinuz$([[ -f $out/vmlinux ]] && echo " $out/vmlinux") $out/initramfs (kernel $release)"
