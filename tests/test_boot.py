"""The proof that "bootable" is true: Debian's kernel boots what we built and runs its /init."""

import pytest

from fixtures.boot import boot
from fixtures.images import E, Layout, busybox_entries
from initramfs_operator import build
from initramfs_operator.oci import layout

MARKER = "initramfs-operator-booted"
INIT = f"""#!/bin/sh
mount -t proc proc /proc
cat /etc/motd
echo "{MARKER[:10]}""{MARKER[10:]} uid=$(id -u) console=$(ls /dev/console)"
poweroff -f
"""


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_boots_in_qemu(compression, kernel, busybox_static, tmp_path):
    lay = Layout(tmp_path / "layout")
    # two layers, the second replacing a file of the first, so the flattened tree is what boots
    lay.tag(lay.image([busybox_entries(busybox_static, INIT, [E("etc/motd", data=b"old\n")]),
                       [E("etc/motd", data=b"motd from the top layer\n")]]), "boot")
    initrd = tmp_path / f"initrd.{compression}"
    build.build_file(layout.load(f"{lay.root}:boot"), str(initrd), build.BuildOptions(compression=compression))
    console = boot(kernel, initrd, MARKER)
    assert f"{MARKER} uid=0 console=/dev/console" in console
    assert "motd from the top layer" in console
