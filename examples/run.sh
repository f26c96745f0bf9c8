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
kernel=$(examples/kernel.sh)  # Debian's, fetched once into ~/.cache/initramfs-operator/kernel
echo "booting out/hello.cpio.gz with $kernel (qemu, TCG) ..."
timeout 120 qemu-system-x86_64 -M microvm -accel tcg -m 256 -nographic -no-reboot -kernel "$kernel" \
  -initrd out/hello.cpio.gz -append "console=ttyS0 rdinit=/init panic=-1 quiet tsc_early_khz=2000000" </dev/null | grep -m1 "hello from"
