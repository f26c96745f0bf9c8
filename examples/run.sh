#!/usr/bin/env bash
# The main job on a fresh machine: install, write the example image (no network needed
# beyond Debian and PyPI mirrors), build its initramfs, and boot it when qemu is there.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v busybox >/dev/null || ! command -v qemu-system-x86_64 >/dev/null; then
  apt-get install -y --no-install-recommends busybox-static qemu-system-x86 >/dev/null
fi
python3 -m pip install -q -e . 2>/dev/null || python3 -m pip install -q -e .
mkdir -p out
image=$(python3 examples/hello-image.py out/hello-image)
initramfs-builder inspect "$image"
initramfs-builder build "$image" -o out/hello.cpio.gz
examples/boot.sh out/hello.cpio.gz  # Debian's kernel, fetched once into ~/.cache/initramfs-operator/kernel
