#!/bin/sh
# Start a Firecracker microVM from the delivered initramfs (run on a VM host).
#   firecracker-launch.sh NAMESPACE DIRECTORY KERNEL [SOCKET]
# `current` is re-pointed atomically by the delivery agent; resolving it once, here, pins this VM
# to one version even if a rebuild rolls forward while it boots.
set -eu
namespace=$1 directory=$2 kernel=$3 socket=${4:-/run/firecracker-$$.sock}
root=${INITRAMFS_DELIVERY_ROOT:-/var/lib/initramfs}
initrd=$(readlink -f "$root/$namespace/$directory/current")
[ -f "$initrd" ] || { echo "no delivered initramfs under $root/$namespace/$directory" >&2; exit 1; }
cat > "/tmp/fc-$$.json" <<JSON
{
  "boot-source": {"kernel_image_path": "$kernel", "initrd_path": "$initrd",
                  "boot_args": "console=ttyS0 rdinit=/init panic=-1 reboot=k"},
  "machine-config": {"vcpu_count": 1, "mem_size_mib": 256}
}
JSON
exec firecracker --api-sock "$socket" --config-file "/tmp/fc-$$.json"
