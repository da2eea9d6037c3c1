#!/usr/bin/env bash
# Installs what boxctl's build and tests need on a Debian bookworm machine:
# QEMU (system emulator and qemu-img/qemu-io), e2fsprogs (mkfs.ext4,
# debugfs), busybox-static (the tiny test image), cpio and zstd (guest
# initramfs), util-linux (flock), procps (pgrep/pkill in tests),
# docker-registry (a real registry for the push/pull tests), gcc (the
# libkrun test double is C), iproute2 (network namespaces in the network
# tests), Node.js with npm (the TypeScript client's tests under
# clients/typescript) and containerd 1.6 with ctr (the containerd shim's
# tests run their own daemons; nothing here starts the package's service).
# Idempotent: does nothing when everything
# is present. Needs root (or sudo) only when something is missing.
set -euo pipefail

need=()
check() { # check <command> <package>
	command -v "$1" >/dev/null 2>&1 || need+=("$2")
}
check qemu-system-x86_64 qemu-system-x86
check qemu-img qemu-utils
check qemu-io qemu-utils
check mkfs.ext4 e2fsprogs
check debugfs e2fsprogs
check cpio cpio
check zstd zstd
check flock util-linux
check pkill procps
check tar tar
check dpkg-deb dpkg
check docker-registry docker-registry
check cc gcc
check ip iproute2
check containerd containerd
check ctr containerd
check node nodejs
check npm npm
[ -x /bin/busybox ] || need+=(busybox-static)

if [ ${#need[@]} -eq 0 ]; then
	exit 0
fi
# de-duplicate
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
echo "install-deps: installing ${need[*]}"
sudo=""
if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
