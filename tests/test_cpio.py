"""The archive as independent readers (GNU cpio, bsdtar) and the kernel's rules see it."""

import io
import subprocess

import pytest

from fixtures.images import E, Layout
from fixtures.tools import need
from initramfs_operator import build
from initramfs_operator.archive import cpio
from initramfs_operator.errors import InvalidImageError
from initramfs_operator.oci import layout

IMAGE = [E("etc", "dir"), E("etc/hosts", data=b"127.0.0.1 localhost\n"), E("usr", "dir"), E("usr/bin", "dir"),
         E("usr/bin/ping", data=b"p" * 4097, mode=0o4755, uid=0, gid=0),
         E("usr/bin/crontab", data=b"c", mode=0o2755, gid=101), E("home", "dir"),
         E("home/user", "dir", mode=0o750, uid=1000, gid=1000),
         E("home/user/notes", data=b"n", uid=1000, gid=1000), E("bin", "symlink", link="usr/bin"),
         E("sbin", "dir"), E("sbin/hard", "hardlink", link="usr/bin/ping"),
         E("dev", "dir", mode=0o700), E("dev/kmsg", "char", major=1, minor=11, mode=0o644),
         E("dev/loop0", "block", major=7, minor=0, mode=0o660, gid=6), E("tmp", "dir", mode=0o1777)]
EXPECTED = {  # name: (mode string, uid, gid, size-or-device) as `bsdtar -tv --numeric-owner` shows them
    "bin": ("lrw-r--r--", 0, 0, "7"), "dev": ("drwx------", 0, 0, "0"), "dev/console": ("crw-------", 0, 0, "5,1"),
    "dev/kmsg": ("crw-r--r--", 0, 0, "1,11"), "dev/loop0": ("brw-rw----", 0, 6, "7,0"),
    "etc": ("drwxr-xr-x", 0, 0, "0"), "etc/hosts": ("-rw-r--r--", 0, 0, "20"), "home": ("drwxr-xr-x", 0, 0, "0"),
    "home/user": ("drwxr-x---", 1000, 1000, "0"), "home/user/notes": ("-rw-r--r--", 1000, 1000, "1"),
    "init": ("-rwxr-xr-x", 0, 0, None), "proc": ("dr-xr-xr-x", 0, 0, "0"), "root": ("drwx------", 0, 0, "0"),
    "run": ("drwxr-xr-x", 0, 0, "0"), "sbin": ("drwxr-xr-x", 0, 0, "0"), "sbin/hard": ("-rwsr-xr-x", 0, 0, None),
    "sys": ("dr-xr-xr-x", 0, 0, "0"), "tmp": ("drwxrwxrwt", 0, 0, "0"),
    "usr": ("drwxr-xr-x", 0, 0, "0"), "usr/bin": ("drwxr-xr-x", 0, 0, "0"),
    "usr/bin/crontab": ("-rwxr-sr-x", 0, 101, "1"), "usr/bin/ping": ("-rwsr-xr-x", 0, 0, "4097"),
}


@pytest.fixture
def archive(tmp_path):
    lay = Layout(tmp_path / "layout")
    lay.tag(lay.image([IMAGE], config={"Cmd": ["/bin/app"]}), "latest")
    init = tmp_path / "init"
    init.write_bytes(b"#!/bin/sh\necho hi\n")
    out = tmp_path / "initrd.cpio"
    options = build.BuildOptions(compression="none", init=str(init))
    build.build_file(layout.load(f"{lay.root}:latest"), str(out), options)
    return out


def test_bsdtar_lists_exactly_the_expected_entries(archive):
    need("bsdtar")
    listing = subprocess.run(["bsdtar", "-tvf", str(archive), "--numeric-owner"], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    seen = {}
    for line in listing:
        fields = line.split(" -> ")[0].split(" link to ")[0].split()
        name = fields[-1]
        device = fields[0][0] in "cb" and fields[4].endswith(",")  # "major, minor" is two fields
        size = fields[4] + fields[5] if device else fields[4]
        seen[name] = (fields[0], int(fields[2]), int(fields[3]), size)
    assert seen.keys() == EXPECTED.keys()
    assert any(line.endswith("usr/bin/ping link to sbin/hard") for line in listing)
    for name, (mode, uid, gid, size) in EXPECTED.items():
        assert seen[name][:3] == (mode, uid, gid), name
        if size is not None:
            assert seen[name][3] == size, name


def test_gnu_cpio_reads_order_hardlinks_and_devices(archive, tmp_path):
    need("cpio")
    with archive.open("rb") as stream:
        listing = subprocess.run(["cpio", "-itv", "--numeric-uid-gid"], stdin=stream, capture_output=True, text=True,
                                 check=True).stdout.splitlines()
    names = [line.split()[-3] if line.startswith("l") else line.split()[-1] for line in listing]
    assert set(names) == EXPECTED.keys() and len(names) == len(EXPECTED)
    for i, name in enumerate(names):  # every parent is listed before its children
        parent = name.rpartition("/")[0]
        assert not parent or parent in names[:i], name
    assert names == sorted(names, key=lambda n: n.split("/"))
    hardlinked = [line for line in listing if line.endswith((" sbin/hard", " usr/bin/ping"))]
    assert len(hardlinked) == 2 and all(line.split()[1] == "2" for line in hardlinked)  # both names, one inode
    out = tmp_path / "x"
    out.mkdir()
    with archive.open("rb") as stream:
        subprocess.run(["cpio", "-idu", "--quiet"], stdin=stream, cwd=out, check=True)
    ping, hard = (out / "usr/bin/ping").stat(), (out / "sbin/hard").stat()
    assert ping.st_ino == hard.st_ino and ping.st_size == 4097
    assert (out / "init").read_bytes() == b"#!/bin/sh\necho hi\n"
    # the data is stored once: the archive is smaller than two copies of it would need
    assert archive.read_bytes().count(b"p" * 4097) == 1


def test_padding_and_trailer(archive):
    data = archive.read_bytes()
    assert data.startswith(b"070701") and len(data) % 4 == 0
    assert b"TRAILER!!!\0" in data[-512:]


def test_files_of_4_gib_are_refused_not_truncated():
    with pytest.raises(InvalidImageError, match="4 GiB"):
        cpio.Writer(io.BytesIO()).write(cpio.Record("huge", 0o100644, size=1 << 32))


def test_essentials_do_not_override_the_image(tmp_path):
    lay = Layout(tmp_path / "layout")
    lay.tag(lay.image([[E("tmp", "dir", mode=0o755, uid=5), E("dev", "symlink", link="/somewhere"),
                        E("init", data=b"#!x", mode=0o700)]]), "t")
    out = tmp_path / "o.cpio"
    r = build.build_file(layout.load(f"{lay.root}:t"), str(out), build.BuildOptions(compression="none"))
    assert r.init == "image"
    listing = subprocess.run(["bsdtar", "-tvf", str(out), "--numeric-owner"], capture_output=True,
                             text=True).stdout
    assert "drwxr-xr-x  2 5" in listing and "dev -> /somewhere" in listing and "console" not in listing
    assert "-rwx------" in listing
