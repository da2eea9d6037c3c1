#!/usr/bin/env bash
# Fetches containerd 2.x from Debian sid for the shim's tests, without
# installing it: a private apt sources list and state under build/apt-sid,
# `apt-get download containerd`, then `dpkg-deb -x` into
# build/containerd-sid (its binaries are static Go programs and run here).
# Idempotent. When the package cannot be had at all (no mirror reachable),
# writes build/containerd-sid/UNAVAILABLE with the reason: the tests then
# skip the containerd 2.x checks and print it.
set -euo pipefail
cd "$(dirname "$0")/.."
out=build/containerd-sid
apt_dir=build/apt-sid
if [ -x "$out/usr/bin/containerd" ]; then
	exit 0
fi
rm -rf "$out" && mkdir -p "$out" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
echo "deb $mirror sid main" >"$apt_dir/sources.list"
apt_opts=(
	-o "Dir::Etc::SourceList=$PWD/$apt_dir/sources.list"
	-o "Dir::Etc::SourceParts=/dev/null"
	-o "Dir::State::Lists=$PWD/$apt_dir/lists"
	-o "Dir::Cache=$PWD/$apt_dir/cache"
	-o "Debug::NoLocking=1"
	-o "APT::Get::List-Cleanup=0"
)
fail() {
	echo "fetch-containerd-sid: $1" | tee "$out/UNAVAILABLE" >&2
	exit 0
}
apt-get "${apt_opts[@]}" -qq update 2>"$apt_dir/update.log" || fail "apt-get update of Debian sid failed: $(tail -3 "$apt_dir/update.log" | tr '\n' ' ')"
(cd "$apt_dir" && apt-get "${apt_opts[@]}" -qq download containerd) 2>"$apt_dir/download.log" ||
	fail "apt-get download containerd (sid) failed: $(tail -3 "$apt_dir/download.log" | tr '\n' ' ')"
deb=$(ls "$apt_dir"/containerd_*.deb | head -1)
dpkg-deb -x "$deb" "$out"
echo "fetch-containerd-sid: $(basename "$deb") unpacked into $out"
