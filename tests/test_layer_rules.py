"""The OCI layer rules one at a time, table-driven (in the style of umoci's oci/layer tests): synthetic
layers built in Python, the archive read back with the strict newc Reader, no external tool.
test_flatten.py compares a stack using all of them at once with umoci."""

from dataclasses import dataclass, field

import pytest

from fixtures.images import E, Layout, kernel_view, read_archive
from initramfs_operator import build
from initramfs_operator.errors import InvalidImageError
from initramfs_operator.oci import layout

BOOT = {"dev", "dev/console", "proc", "sys", "tmp", "run", "root", "init"}
T = 1_600_000_000  # the fixtures' mtime


def f(data: bytes, perm: int = 0o644, uid: int = 0, gid: int = 0) -> tuple:
    return ("file", perm, uid, gid, T, data)


def d(perm: int = 0o755, uid: int = 0, gid: int = 0, mtime: int = T) -> tuple:
    return ("dir", perm, uid, gid, mtime, None)


def sym(target: str) -> tuple:
    return ("symlink", 0o777, 0, 0, T, target)


@dataclass
class Case:
    layers: list[list[E]]
    expect: dict[str, tuple] = field(default_factory=dict)
    links: set[frozenset[str]] = field(default_factory=set)
    refused: str = ""  # a regex the InvalidImageError must match, instead of `expect`


CASES = {
    # whiteouts
    "whiteout removes a lower file": Case(
        [[E("a", data=b"a"), E("b", data=b"b")], [E(".wh.a")]], {"b": f(b"b")}),
    "whiteout removes a lower directory and its contents": Case(
        [[E("x", "dir"), E("x/y", "dir"), E("x/y/z", data=b"z"), E("k", data=b"k")], [E(".wh.x")]],
        {"k": f(b"k")}),
    "whiteout of something that is not there is nothing": Case(
        [[E("k", data=b"k")], [E(".wh.missing"), E("k2/.wh.missing")]],
        {"k": f(b"k")}),  # and no parent is created for it
    "whiteout never hides what its own layer adds, before or after it": Case(
        [[E("a", data=b"old"), E("b", data=b"old")],
         [E("a", data=b"new"), E(".wh.a"), E(".wh.b"), E("b", data=b"new")]],
        {"a": f(b"new"), "b": f(b"new")}),
    "a whited-out path can be re-created above": Case(
        [[E("a", "dir"), E("a/x", data=b"x")], [E(".wh.a")], [E("a", data=b"file now")]], {"a": f(b"file now")}),
    "whiteout inside a subdirectory": Case(
        [[E("s", "dir"), E("s/a", data=b"a"), E("s/b", data=b"b")], [E("s/.wh.a")]],
        {"s": d(), "s/b": f(b"b")}),
    # opaque directories
    "opaque hides everything below, keeps this layer's entries wherever the marker is": Case(
        [[E("o", "dir"), E("o/old", data=b"1"), E("o/sub", "dir"), E("o/sub/deep", data=b"2")],
         [E("o/new1", data=b"n1"), E("o", "dir", mode=0o750), E("o/.wh..wh..opq"), E("o/new2", data=b"n2")]],
        {"o": d(0o750), "o/new1": f(b"n1"), "o/new2": f(b"n2")}),
    "opaque empties a re-declared subdirectory too": Case(
        [[E("o", "dir"), E("o/sub", "dir"), E("o/sub/old", data=b"1")],
         [E("o", "dir"), E("o/.wh..wh..opq"), E("o/sub", "dir", mode=0o700), E("o/sub/new", data=b"2")]],
        {"o": d(), "o/sub": d(0o700), "o/sub/new": f(b"2")}),
    "opaque on a directory no lower layer has": Case(
        [[E("k", data=b"k")], [E("fresh", "dir"), E("fresh/.wh..wh..opq"), E("fresh/x", data=b"x")]],
        {"k": f(b"k"), "fresh": d(), "fresh/x": f(b"x")}),
    # type changes
    "a file replaces a directory and all it held": Case(
        [[E("p", "dir"), E("p/child", data=b"c")], [E("p", data=b"now a file")]], {"p": f(b"now a file")}),
    "a directory replaces a file": Case(
        [[E("p", data=b"file")], [E("p", "dir", mode=0o700), E("p/in", data=b"i")]],
        {"p": d(0o700), "p/in": f(b"i")}),
    "a directory over a directory takes the upper metadata and keeps the lower contents": Case(
        [[E("p", "dir", uid=1), E("p/low", data=b"l")],
         [E("p", "dir", mode=0o711, uid=2, gid=3), E("p/up", data=b"u")]],
        {"p": d(0o711, 2, 3), "p/low": f(b"l"), "p/up": f(b"u")}),
    "a symlink replaces a directory": Case(
        [[E("p", "dir"), E("p/x", data=b"x")], [E("p", "symlink", link="/elsewhere")]], {"p": sym("/elsewhere")}),
    "a directory replaces a symlink": Case(
        [[E("p", "symlink", link="etc")], [E("p", "dir"), E("p/f", data=b"f")]], {"p": d(), "p/f": f(b"f")}),
    "a device replaced by a symlink, a fifo by a file": Case(
        [[E("n", "char", major=1, minor=3, mode=0o666), E("q", "fifo")],
         [E("n", "symlink", link="/dev/null"), E("q", data=b"q")]],
        {"n": sym("/dev/null"), "q": f(b"q")}),
    # hardlinks
    "hardlinks share one inode": Case(
        [[E("a", data=b"same", mode=0o4755), E("b", "hardlink", link="a"), E("c", "hardlink", link="b")]],
        {n: f(b"same", 0o4755) for n in "abc"}, {frozenset("abc")}),
    "a hardlink outlives its whited-out target": Case(
        [[E("t", data=b"kept"), E("l", "hardlink", link="t")], [E(".wh.t")]], {"l": f(b"kept")}),
    "a hardlink keeps the old content when its target is replaced": Case(
        [[E("t", data=b"old"), E("l", "hardlink", link="t")], [E("t", data=b"new")]],
        {"t": f(b"new"), "l": f(b"old")}),
    "a hardlink in an upper layer to a lower file": Case(
        [[E("lib", "dir"), E("lib/x", data=b"x", uid=5)], [E("up", "hardlink", link="lib/x")]],
        {"lib": d(), "lib/x": f(b"x", uid=5), "up": f(b"x", uid=5)}, {frozenset({"lib/x", "up"})}),
    "a hardlink to a missing target is refused": Case([[E("l", "hardlink", link="nowhere")]], refused="missing"),
    "a hardlink to a directory is refused": Case([[E("d", "dir"), E("l", "hardlink", link="d")]],
                                                 refused="a directory"),
    # never through a symlink
    "a write under a lower symlink is refused": Case(
        [[E("etc", "dir"), E("link", "symlink", link="etc")], [E("link/passwd", data=b"x")]],
        refused=r"'link/passwd' lies under 'link', which is not a directory"),
    "a write under a symlink of the same layer is refused": Case(
        [[E("link", "symlink", link="/"), E("link/x", data=b"x")]], refused="lies under 'link'"),
    "a write under a file is refused": Case([[E("file", data=b"f"), E("file/x", data=b"x")]],
                                            refused="lies under 'file'"),
    "whiteouts and opaque markers under a symlink touch nothing": Case(
        [[E("etc", "dir"), E("etc/keep", data=b"k"), E("link", "symlink", link="etc")],
         [E("link/.wh.keep"), E("link/.wh..wh..opq")]],
        {"etc": d(), "etc/keep": f(b"k"), "link": sym("etc")}),
    # names
    "missing parents are created 0755 root": Case(
        [[E("a/b/c", data=b"c")]], {"a": d(mtime=0), "a/b": d(mtime=0), "a/b/c": f(b"c")}),
    "absolute and dotted names are made relative; the root entry's metadata is ignored": Case(
        [[E("./", "dir", mode=0o700, uid=9), E("/abs", "dir"), E("./abs//x/", "dir"), E("abs/x/./y", data=b"y")]],
        {"abs": d(), "abs/x": d(), "abs/x/y": f(b"y")}),
    "'..' is refused": Case([[E("a/../../x", data=b"x")]], refused="escape the root"),
    "the archive's end-marker name is refused": Case([[E("TRAILER!!!", data=b"x")]], refused="end marker"),
    "a name component over 255 bytes is refused": Case([[E("n" * 256, data=b"x")]], refused="over 255"),
    # metadata
    "owners, setuid, setgid, sticky and devices are kept": Case(
        [[E("s", data=b"s", mode=0o6755, uid=7, gid=8), E("t", "dir", mode=0o1777),
          E("blk", "block", major=8, minor=1, mode=0o660, gid=6), E("p", "fifo", mode=0o600)]],
        {"s": f(b"s", 0o6755, 7, 8), "t": d(0o1777), "blk": ("block", 0o660, 0, 6, T, (8, 1)),
         "p": ("fifo", 0o600, 0, 0, T, None)}),
}


@pytest.mark.parametrize("name", CASES)
def test_layer_rule(tmp_path, name):
    case = CASES[name]
    lay = Layout(tmp_path / "layout")
    lay.tag(lay.image(case.layers), "t")
    init = tmp_path / "init"
    init.write_bytes(b"#!/bin/sh\n")
    out = tmp_path / "initrd.cpio"
    options = build.BuildOptions(compression="none", init=str(init))
    if case.refused:
        with pytest.raises(InvalidImageError, match=case.refused):
            build.build_file(layout.load(f"{lay.root}:t"), str(out), options)
        assert not out.exists()
        return
    result = build.build_file(layout.load(f"{lay.root}:t"), str(out), options)
    entries = read_archive(out.read_bytes())
    view, links = kernel_view(entries)
    assert {p: v for p, v in view.items() if p not in BOOT} == case.expect
    assert links == case.links
    assert result.entries == len(entries) and result.init == "file"
