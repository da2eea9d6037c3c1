#!/usr/bin/env bash
# The quick start: build a tiny OCI image from Debian's busybox-static and
# run `uname -a` in a real VM with it. Run through `make demo`, which first
# installs what is needed and builds boxctl, its plugins and the guest.
set -euo pipefail
cd "$(dirname "$0")/.."
image=build/demo/busybox
if [ ! -f "$image/index.json" ]; then
	go run ./test/images/cmd/mkbusybox -o "$image"
fi
echo "+ bin/boxctl run --rm oci-layout:$image -- uname -a"
bin/boxctl run --rm "oci-layout:$image" -- uname -a
