#!/usr/bin/env bash
# The main job on a fresh machine: install, write the example image (no network needed
# beyond Debian and PyPI mirrors), build its initramfs, and boot it when qemu is there.
# With --arm64 the image has an arm64 half too (Debian's busybox-static:arm64, fetched with apt-get
# download, nothing installed): one call builds both, and each boots on its own architecture.
set -euo pipefail
cd "$(dirname "$0")/.."
arm64=${1:-}
if ! command -v busybox >/dev/null || ! command -v qemu-system-x86_64 >/dev/null; then
  apt-get install -y --no-install-recommends busybox-static qemu-system-x86 >/dev/null
fi
python3 -m pip install -q -e . 2>/dev/null || python3 -m pip install -q -e .
mkdir -p out
if [[ $arm64 != --arm64 ]]; then
  image=$(python3 examples/hello-image.py out/hello-image)
  initramfs-builder inspect "$image"
  initramfs-builder build "$image" -o out/hello.cpio.gz
  examples/boot.sh out/hello.cpio.gz  # Debian's kernel, fetched once into ~/.cache/initramfs-operator/kernel
  exit
fi
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64 && apt-get update -qq
fi
command -v qemu-system-aarch64 >/dev/null || apt-get install -y --no-install-recommends qemu-system-arm >/dev/null
cache=${INITRAMFS_TOOLS_CACHE:-$HOME/.cache/initramfs-operator}/busybox-arm64
if [[ ! -e $cache/bin/busybox ]]; then
  mkdir -p "$cache" && (cd "$cache" && apt-get download busybox-static:arm64 >/dev/null)
  dpkg-deb -x "$cache"/busybox-static_*_arm64.deb "$cache"
fi
image=$(python3 examples/hello-image.py out/hello-image-multi "$cache/bin/busybox")
initramfs-builder build "$image" --platform linux/amd64,linux/arm64 -o 'out/hello-{arch}.cpio.gz'
examples/boot.sh out/hello-amd64.cpio.gz amd64
examples/boot.sh out/hello-arm64.cpio.gz arm64
