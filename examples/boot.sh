#!/usr/bin/env bash
# Boots an initramfs with Debian's kernel (examples/kernel.sh) under qemu (TCG: KVM guests hang on these
# machines): amd64 (the default) in the microvm machine, arm64 in the virt machine with a Cortex-A57; prints
# the first console line saying "hello from"; fails if none comes within 120 s.
# examples/run.sh and examples/operator-demo.sh boot what they built with it.
#   examples/boot.sh FILE [amd64|arm64]
set -euo pipefail
initrd=$1
arch=${2:-amd64}
kernel=$("$(dirname "$0")/kernel.sh" "$arch")
echo "booting $initrd ($arch) with $kernel (qemu, TCG) ..."
case $arch in
  amd64) qemu=(qemu-system-x86_64 -M microvm) append="console=ttyS0 rdinit=/init panic=-1 quiet tsc_early_khz=2000000" ;;
  arm64) qemu=(qemu-system-aarch64 -M virt -cpu cortex-a57) append="console=ttyAMA0 rdinit=/init panic=-1 quiet" ;;
  *) echo "$0: no machine for architecture $arch (amd64 or arm64)" >&2; exit 2 ;;
esac
timeout 120 "${qemu[@]}" -accel tcg -m 256 -nographic -no-reboot -kernel "$kernel" -initrd "$initrd" \
  -append "$append" </dev/null | grep -m1 "hello from"
