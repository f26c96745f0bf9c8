#!/usr/bin/env bash
# Prints the path of a kernel to boot initramfs images with: /boot/vmlinuz-* of the package Debian's
# linux-image-ARCH currently depends on (ARCH: amd64, the default, or arm64), fetched from the
# configured Debian mirror with `apt-get download` and unpacked with `dpkg-deb -x` (never installed),
# once, into the cache that examples/boot.sh and the boot tests (tests/fixtures/boot.py) share.
# arm64 needs `dpkg --add-architecture arm64 && apt-get update` first (.ci/run does it).
set -euo pipefail
shopt -s nullglob
arch=${1:-amd64}
cache=${INITRAMFS_TOOLS_CACHE:-$HOME/.cache/initramfs-operator}/kernel
[[ $arch == amd64 ]] || cache+=-$arch

kernels=("$cache"/boot/vmlinuz-*)
if ((${#kernels[@]} == 0)); then
  mkdir -p "$cache"
  debs=("$cache"/linux-image-[0-9]*.deb)
  if ((${#debs[@]} == 0)); then
    # awk reads to the end (no early exit) so apt-cache never dies of SIGPIPE under pipefail.
    package=$(apt-cache depends "linux-image-$arch:$arch" |
                awk '/Depends: linux-image-[0-9]/ && !name {name = $2} END {print name}')
    if [[ -z $package ]]; then
      echo "$0: apt-cache names no package for linux-image-$arch:$arch (apt-get update first?)" >&2
      exit 1
    fi
    (cd "$cache" && apt-get download "$package" >/dev/null)
    debs=("$cache"/linux-image-[0-9]*.deb)
  fi
  dpkg-deb -x "${debs[-1]}" "$cache"
  kernels=("$cache"/boot/vmlinuz-*)
fi
echo "${kernels[-1]}"
