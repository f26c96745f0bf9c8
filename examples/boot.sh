#!/usr/bin/env bash
# Boots an initramfs with Debian's kernel (examples/kernel.sh) in qemu's microvm machine (TCG: KVM
# guests hang on these machines) and prints the first console line saying "hello from"; fails if
# none comes within 120 s. examples/run.sh and examples/operator-demo.sh boot what they built with it.
set -euo pipefail
initrd=$1
kernel=$("$(dirname "$0")/kernel.sh")
echo "booting $initrd with $kernel (qemu, TCG) ..."
timeout 120 qemu-system-x86_64 -M microvm -accel tcg -m 256 -nographic -no-reboot -kernel "$kernel" \
  -initrd "$initrd" -append "console=ttyS0 rdinit=/init panic=-1 quiet tsc_early_khz=2000000" \
  </dev/null | grep -m1 "hello from"
