"""The proof that "bootable" is true: Debian's kernel boots what we built and runs its /init."""

import hashlib
import re
import subprocess

import pytest

from fixtures.boot import boot
from fixtures.images import E, Layout, busybox_entries
from fixtures.tools import REPO, need
from initramfs_operator import build
from initramfs_operator.oci import layout

MARKER = "initramfs-operator-booted"
INIT = f"""#!/bin/sh
mount -t proc proc /proc
cat /etc/motd
busybox md5sum /big
echo "{MARKER[:10]}""{MARKER[10:]} uid=$(id -u) console=$(ls /dev/console)"
poweroff -f
"""
# 9 MiB: more than one block of every format (lz4's are 8 MiB), and the kernel's md5 of it on the console
BIG = b"".join(i.to_bytes(4, "little") for i in range(9 << 18))


@pytest.mark.parametrize("compression, level", [
    ("gzip", None), ("zstd", None), ("none", None),
    ("lz4", None), ("lz4", 12),  # fast and high compression mode
    ("xz", 0), ("xz", 9),  # blocks of 1 MiB; the largest dictionary (64 MiB) the kernel must allocate
])
def test_boots_in_qemu(compression, level, kernel, busybox_static, tmp_path):
    lay = Layout(tmp_path / "layout")
    # two layers, the second replacing a file of the first, so the flattened tree is what boots
    lay.tag(lay.image([busybox_entries(busybox_static, INIT, [E("etc/motd", data=b"old\n"), E("big", data=BIG)]),
                       [E("etc/motd", data=b"motd from the top layer\n")]]), "boot")
    initrd = tmp_path / f"initrd.{compression}"
    options = build.BuildOptions(compression=compression, level=level)
    build.build_file(layout.load(f"{lay.root}:boot"), str(initrd), options)
    console = boot(kernel, initrd, MARKER)
    assert f"{MARKER} uid=0 console=/dev/console" in console
    assert "motd from the top layer" in console
    assert f"{hashlib.md5(BIG).hexdigest()}  /big" in console


def test_the_readme_quick_start_builds_the_example_and_boots_it(kernel, busybox_static):
    """`examples/run.sh`, the README's first command, as a user runs it (qemu and busybox are checked
    first, so that it does not install them): the example image becomes out/hello.cpio.gz, which
    boots, and its generated /init runs the Entrypoint as the image's User."""
    need("qemu-system-x86_64")
    done = subprocess.run([str(REPO / "examples/run.sh")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert re.search(r"^hello from Linux \S+ as hello in /srv/hello: it boots$", done.stdout, re.M), done.stdout[-2000:]
    assert (REPO / "out/hello.cpio.gz").stat().st_size > 0
