"""Flattening compared file by file with an independent implementation, umoci."""

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from fixtures.images import E, Layout
from fixtures.tools import need
from initramfs_operator import build
from initramfs_operator.oci import layout

ESSENTIALS = [E("dev", "dir"), E("dev/console", "char", major=5, minor=1, mode=0o600), E("proc", "dir"),
              E("sys", "dir"), E("tmp", "dir", mode=0o1777), E("run", "dir"), E("root", "dir", mode=0o700),
              E("init", data=b"#!/bin/sh\n", mode=0o755)]

BASE = ESSENTIALS + [
    E("etc", "dir"), E("etc/base", data=b"base\n"), E("etc/shadow", data=b"secret", mode=0o640, gid=42),
    E("bin", "dir"), E("bin/su", data=b"suid", mode=0o4755), E("bin/tool", data=b"tool", mode=0o2711, uid=7, gid=8),
    E("shared", "dir", mode=0o3775, uid=1000, gid=1000), E("shared/f", data=b"s", uid=1000, gid=1000),
    E("bin/abs", "symlink", link="/etc/base", mode=0o777), E("bin/rel", "symlink", link="../etc/base"),
    E("bin/dangling", "symlink", link="/nowhere/at/all"),
    E("data", "dir"), E("data/a", data=b"same inode"), E("data/b", "hardlink", link="data/a"),
    E("data/c", "hardlink", link="data/a"),
    E("data/gone", data=b"target later deleted"), E("data/keep1", "hardlink", link="data/gone"),
    E("data/moved", data=b"target later replaced"), E("data/keep2", "hardlink", link="data/moved"),
    E("devs", "dir"), E("devs/null", "char", major=1, minor=3, mode=0o666), E("devs/sda", "block", major=8, minor=0,
                                                                                 mode=0o660, gid=6),
    E("devs/pipe", "fifo", mode=0o644),
    E("opq", "dir"), E("opq/old1", data=b"1"), E("opq/sub", "dir"), E("opq/sub/old2", data=b"2"),
    E("dir2file", "dir"), E("dir2file/child", data=b"c"),
    E("file2dir", data=b"was a file"),
    E("deleted", data=b"x"), E("deleted_dir", "dir"), E("deleted_dir/x", data=b"x"),
    E("sym2dir", "symlink", link="etc"),
    E("chmod_me", data=b"m", mode=0o600),
    E("big", data=os.urandom(300_000)),
]
MIDDLE = [
    E(".wh.deleted"), E(".wh.deleted_dir"),
    E("opq", "dir", mode=0o750), E("opq/.wh..wh..opq"), E("opq/new", data=b"new"),
    E("dir2file", data=b"now a file"),
    E("file2dir", "dir", mode=0o700), E("file2dir/inside", data=b"i"),
    E("data/.wh.gone"), E("data/moved", data=b"replacement"),
    E("data/uplink", "hardlink", link="etc/base"),  # a hardlink in an upper layer to a lower file
    E("sym2dir", "dir"), E("sym2dir/f", data=b"f"),
    E("chmod_me", data=b"m", mode=0o4750, uid=3, gid=4),
    E("etc", "dir", mode=0o711, uid=0, gid=0),
]
TOP = [
    E("deleted", data=b"back again"),  # re-created after a lower whiteout
    E("bin/.wh.dangling"),
    E("data/.wh.a"),  # b and c keep the inode
    E("devs/null", "symlink", link="/dev/null"),  # a device replaced by a symlink
]


def snapshot(root: Path) -> dict[str, tuple]:
    """type, mode, owner, symlink target, content hash, hardlink group and device numbers of every entry."""
    entries, inodes = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            content = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None
            target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
            rdev = (os.major(st.st_rdev), os.minor(st.st_rdev)) if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(
                st.st_mode) else None
            perm = None if stat.S_ISLNK(st.st_mode) else stat.S_IMODE(st.st_mode)
            entries[rel] = [stat.S_IFMT(st.st_mode), perm, st.st_uid, st.st_gid, target, content, rdev]
    for group in inodes.values():
        if len(group) > 1 or not stat.S_ISDIR(root.joinpath(group[0]).lstat().st_mode):
            for rel in group:
                entries[rel].append(tuple(sorted(group)) if len(group) > 1 else None)
    return {k: tuple(v) for k, v in entries.items()}


@pytest.fixture
def stacked(tmp_path) -> Path:
    lay = Layout(tmp_path / "layout", media_type_field=False)  # umoci itself writes no mediaType
    lay.tag(lay.image([BASE, MIDDLE, TOP], compression="gzip", config={"Cmd": ["/init"]}), "v1")
    return lay.root


def test_flatten_matches_umoci(stacked, tmp_path):
    need("umoci")
    need("cpio")
    subprocess.run(["umoci", "unpack", "--image", f"{stacked}:v1", str(tmp_path / "bundle")], check=True,
                   capture_output=True)
    archive = tmp_path / "initrd.cpio"
    build.build_file(layout.load(f"{stacked}:v1"), str(archive), build.BuildOptions(compression="none"))
    ours = tmp_path / "ours"
    ours.mkdir()
    with open(archive, "rb") as f:
        subprocess.run(["cpio", "-idmu", "--quiet", "--no-absolute-filenames"], stdin=f, cwd=ours, check=True)

    theirs, mine = snapshot(tmp_path / "bundle/rootfs"), snapshot(ours)
    differences = {p: (theirs.get(p), mine.get(p)) for p in theirs.keys() | mine.keys()
                   if theirs.get(p) != mine.get(p)}
    assert differences == {}
    # and the cases really are in there
    assert mine["data/b"][-1] == ("data/b", "data/c")
    assert "deleted_dir" not in mine and mine["deleted"][5] == hashlib.sha256(b"back again").hexdigest()
    assert sorted(p for p in mine if p.startswith("opq/")) == ["opq/new"]
    assert mine["bin/su"][1] == 0o4755 and mine["devs/sda"][6] == (8, 0)


def test_source_date_epoch_and_reproducible(stacked, tmp_path):
    digests = set()
    for i, threads in enumerate((1, 2, 1)):
        for compression in ("gzip", "zstd"):
            out = tmp_path / f"{i}.{compression}"
            r = build.build_file(layout.load(f"{stacked}:v1"), str(out),
                                 build.BuildOptions(compression=compression, threads=threads,
                                               source_date_epoch=1_500_000_000))
            assert r.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
            digests.add((compression, r.sha256))
    assert len(digests) == 2  # one per compression, whatever the thread count
    listing = subprocess.run(["bsdtar", "-tvf", str(tmp_path / "0.gzip")], capture_output=True, text=True).stdout
    assert "2017" in listing and "2020" not in listing  # clamped from the tar mtimes of 2020
