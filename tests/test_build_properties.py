"""Property: for any stack of layers with any tar metadata, a build either refuses cleanly (exit 2 or 4, the
message naming the entry) or writes an archive whose strict parse (the newc Reader, reading as the kernel
does) is exactly the flattened image, computed here by an independent model of the OCI layer rules, with
/init being what the result reports.

CI runs a bounded number of examples (INITRAMFS_PROPERTY_EXAMPLES, default 300, under a minute on 2 cores).
A long campaign, keeping what it finds in .hypothesis/ to replay first next time:

    INITRAMFS_PROPERTY_EXAMPLES=20000 python3 -m pytest tests/test_build_properties.py -q --timeout 0
"""

import contextlib
import io
import json
import math
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from fixtures.images import E, Layout, gnu_sparse, kernel_view, pax_sparse, read_archive
from initramfs_operator import cli
from initramfs_operator.errors import shown

EXAMPLES = int(os.environ.get("INITRAMFS_PROPERTY_EXAMPLES", "300"))
CAMPAIGN = EXAMPLES > 1000
U32 = 0xFFFFFFFF
MAX_PATH, MAX_COMPONENT = 4095, 255
ESSENTIAL_DIRS = (("dev", 0o755), ("proc", 0o555), ("sys", 0o555), ("tmp", 0o1777), ("run", 0o755), ("root", 0o700))
INIT = b"#!/bin/sh\nexec /app\n"

# -- what the generator draws from: few names, so that layers collide; every odd value a tar can carry ----------

@dataclass(frozen=True)
class Values:
    """Usual values, and odd ones that each stack may allow: a stack allowing none gets archived and compared."""

    usual: list
    odd: list

    def draw(self, draw, hazards: frozenset["Values"]) -> object:
        if self in hazards and draw(st.integers(0, 3)) == 0:
            return draw(st.sampled_from(self.odd))
        return draw(st.sampled_from(self.usual))

    def __hash__(self) -> int:
        return id(self)


def mostly(usual: list, odd: list) -> Values:
    return Values(usual, odd)


NAMES = mostly(["a", "b", "a/b", "a/c", "b/a", "a/b/c", "c/d", "./a", "/b", "a//c", "a/./b", "a/", "init", "dev",
                "tmp", "dev/console", "x" * 120, "deep/" * 30 + "leaf", "caf\u00e9", "bad\udcff", "new\nline"],
               ["TRAILER!!!", "n" * 256, "p/" + "q" * 250, "../up", "a/../b", ".", "./"])
TARGETS = mostly(["a", "/a", "../x", "a/b", "t" * 300, "a\udcfe"], ["", "t" * 4096, "nul\0byte"])
IDS = mostly([0, 0, 0, 1, 1000, 65534, 2**31, U32 - 1], [U32, 2**32, 2**40, -1])
PAX_NUMBERS = ["12", "0", "1600000000.5", "-3", " 7 ", "1_000", "", "abc", "1e3", "nan", "inf", "0x10"]
MTIMES = st.one_of(st.integers(-2**40, 2**40), st.sampled_from([0, U32, U32 + 1, -1, 2**70]),
                   st.floats(-1e15, 1e15, allow_nan=False, allow_infinity=False))
MAJORS = mostly([0, 1, 5, 4095], [4096, 2**20 - 1, 2**21 - 1])
MINORS = mostly([0, 1, 5, 2**20 - 1], [2**20, 2**21 - 1])
LINKED = mostly(["a", "b", "a/b", "c/d", "/b", "./a"], ["missing", "a/../b", "nul\0"])  # hardlink targets
KINDS = mostly(["file"] * 6 + ["dir"] * 4 + ["symlink", "symlink", "hardlink", "hardlink", "char", "block", "fifo",
                                            "whiteout", "whiteout", "opaque"],
               ["gnu-sparse", "pax-sparse", "pax-sparse-0.1"])


@dataclass
class Member:
    kind: str  # file dir symlink hardlink char block fifo whiteout opaque gnu-sparse pax-sparse pax-sparse-0.1
    name: str
    data: bytes = b""
    blocks: list[tuple[int, bytes]] = field(default_factory=list)
    realsize: int = 0
    link: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: float = 1_600_000_000
    major: int = 0
    minor: int = 0
    pax: dict[str, str] = field(default_factory=dict)
    gnu: bool = False  # GNU format (long names as ././@LongLink, base-256 numbers) instead of pax


@st.composite
def sparse_blocks(draw) -> tuple[int, list[tuple[int, bytes]]]:
    realsize = draw(st.integers(1, 1 << 16))
    offsets = sorted(draw(st.sets(st.integers(0, realsize - 1), min_size=1, max_size=5)))
    blocks = []
    for i, offset in enumerate(offsets):
        room = (offsets[i + 1] if i + 1 < len(offsets) else realsize) - offset
        blocks.append((offset, draw(st.binary(min_size=1, max_size=min(room, 64)))))
    return realsize, blocks


HAZARDS = (NAMES, TARGETS, LINKED, IDS, MAJORS, MINORS, KINDS)


@st.composite
def members(draw, hazards: frozenset[Values]) -> Member:
    def pick(values: Values):
        return values.draw(draw, hazards)

    kind = pick(KINDS)
    m = Member(kind, pick(NAMES), mode=draw(st.integers(0, 0o7777)), mtime=draw(MTIMES), uid=pick(IDS),
               gid=pick(IDS), gnu=draw(st.booleans()))
    if kind in ("whiteout", "opaque"):
        parent = draw(st.sampled_from(["", "a", "b", "a/b", "c", "nowhere"]))
        base = ".wh..wh..opq" if kind == "opaque" else ".wh." + draw(st.sampled_from(["a", "b", "c", "", "x" * 252]))
        m.name = f"{parent}/{base}".lstrip("/")
    elif kind == "file":
        m.data = draw(st.binary(max_size=300))
    elif "sparse" in kind:
        m.realsize, m.blocks = draw(sparse_blocks())
        m.mode, m.uid, m.gid, m.gnu = 0o644, 0, 0, False
        m.mtime = 1_600_000_000 if kind == "gnu-sparse" else 0
    elif kind in ("symlink", "hardlink"):
        m.link = pick(LINKED if kind == "hardlink" else TARGETS)
    elif kind in ("char", "block"):
        m.major, m.minor = pick(MAJORS), pick(MINORS)
    if m.gnu:
        m.mtime = int(m.mtime)  # tarfile writes a float mtime in a pax record only
        m.uid, m.gid = max(m.uid, -2**60), max(m.gid, -2**60)
    elif "sparse" not in kind and draw(st.integers(0, 19)) == 0:
        # (a pax size on a regular entry that disagrees with the data behind it would desynchronise the
        # stream, which is not what this test is about: sizes go on entries that have no data)
        keys = ["uid", "gid", "mtime"] + (["size"] if kind not in ("file", "whiteout", "opaque") else [])
        m.pax = {draw(st.sampled_from(keys)): draw(st.sampled_from(PAX_NUMBERS))}
    return m


def entry(m: Member) -> E:
    if m.kind == "gnu-sparse":
        return gnu_sparse(m.name, m.realsize, m.blocks)
    if m.kind.startswith("pax-sparse"):
        return pax_sparse(m.name, m.realsize, m.blocks, "0.1" if m.kind.endswith("0.1") else "1.0")
    kind = "file" if m.kind in ("whiteout", "opaque") else m.kind
    pax = dict(m.pax)
    if "\0" in m.link:
        pax["linkpath"] = m.link
    return E(m.name, kind, m.data, m.mode, m.uid, m.gid, "" if "\0" in m.link else m.link, m.major, m.minor,
             m.mtime, pax or None, tarfile.GNU_FORMAT if m.gnu else tarfile.PAX_FORMAT)


# -- the model: the OCI layer rules and the archive's limits, written from the spec, sharing no code ------------


class Refused(Exception):
    def __init__(self, code: int, names: list[str]):
        self.code, self.names = code, names


@dataclass(eq=False)
class Ino:
    kind: str
    perm: int
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    content: object = None
    children: dict[str, "Ino"] | None = None


def new_dir(perm: int = 0o755, uid: int = 0, gid: int = 0, mtime: int = 0) -> Ino:
    return Ino("dir", perm, uid, gid, mtime, None, {})


def clean(name: str) -> str | None:
    """The path the entry names, or None if it must be refused."""
    if "\0" in name or ".." in name.split("/"):
        return None
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def creatable(path: str) -> bool:
    raw = path.encode("utf-8", "surrogateescape")
    return path != "TRAILER!!!" and len(raw) <= MAX_PATH and all(len(p) <= MAX_COMPONENT for p in raw.split(b"/"))


def pax_ok(m: Member) -> bool:
    """pax numbers are decimal (POSIX); an mtime may have a fraction (read as Python's float() reads it)."""
    for key, value in m.pax.items():
        if key != "mtime":
            if not re.fullmatch(r"-?[0-9]+", value, re.ASCII) or (key == "size" and int(value) < 0):
                return False
            continue
        try:
            number = float(value)
        except ValueError:
            return False
        if not math.isfinite(number):
            return False
    return True


class Model:
    def __init__(self) -> None:
        self.root = new_dir()

    def lookup(self, path: str) -> Ino | None:
        node = self.root
        for part in path.split("/") if path else []:
            if node.children is None or part not in node.children:
                return None
            node = node.children[part]
        return node

    def parent(self, path: str, create: bool) -> tuple[Ino | None, str]:
        *dirs, base = path.split("/")
        node = self.root
        for part in dirs:
            child = node.children.get(part)
            if child is None:
                if not create:
                    return None, base
                child = node.children[part] = new_dir()
            elif child.children is None:
                if not create:
                    return None, base
                raise ValueError("under a non-directory")
            node = child
        return node, base

    def apply(self, layer: list[Member]) -> None:
        added: set[str] = set()
        for m in layer:
            names = [m.name, m.name.rstrip("/")]
            if not pax_ok(m):
                raise Refused(4, names)
            path = clean(m.name)
            if path is None:
                raise Refused(4, names)
            names.append(path)
            if not path:
                continue
            dirname, _, base = path.rpartition("/")
            if base == ".wh..wh..opq":
                self.opaque(self.lookup(dirname), dirname, added)
            elif base.startswith(".wh."):
                hidden = f"{dirname}/{base[4:]}".lstrip("/")
                if hidden not in added:
                    parent, name = self.parent(hidden, create=False)
                    if parent is not None:
                        parent.children.pop(name, None)
            else:
                if not creatable(path):
                    raise Refused(4, names)
                added.add(path)
                node = self.node(m, names)
                try:
                    parent, name = self.parent(path, create=True)
                except ValueError:
                    raise Refused(4, names) from None
                old = parent.children.get(name)
                if old is not None and old.children is not None and node.children is not None:
                    old.perm, old.uid, old.gid, old.mtime = node.perm, node.uid, node.gid, node.mtime
                else:
                    parent.children[name] = node

    def opaque(self, directory: Ino | None, dirname: str, added: set[str]) -> None:
        if directory is None or directory.children is None:
            return
        for name in list(directory.children):
            path = f"{dirname}/{name}".lstrip("/")
            if path not in added:
                del directory.children[name]
            elif directory.children[name].children is not None:
                self.opaque(directory.children[name], path, added)

    def node(self, m: Member, names: list[str]) -> Ino:
        if m.kind == "hardlink":
            target = clean(m.link)
            found = self.lookup(target) if target is not None else None
            if found is None or found.children is not None:
                raise Refused(4, names)
            return found
        uid, gid = (int(m.pax.get(k, v)) for k, v in (("uid", m.uid), ("gid", m.gid)))
        if not (0 <= uid < U32 and 0 <= gid < U32):
            raise Refused(4, names)
        mtime = int(float(m.pax.get("mtime", m.mtime)))
        perm = m.mode & 0o7777
        if m.kind in ("file", "whiteout", "opaque"):
            return Ino("file", perm, uid, gid, mtime, m.data)
        if "sparse" in m.kind:
            content = bytearray(m.realsize)
            for offset, data in m.blocks:
                content[offset:offset + len(data)] = data
            return Ino("file", perm, uid, gid, mtime, bytes(content))
        if m.kind == "dir":
            return new_dir(perm, uid, gid, mtime)
        if m.kind == "symlink":
            raw = m.link.encode("utf-8", "surrogateescape")
            if not 0 < len(raw) < 4096 or b"\0" in raw:
                raise Refused(4, names)
            return Ino("symlink", 0o777, uid, gid, mtime, m.link)
        if m.kind in ("char", "block"):
            if m.major > 0xFFF or m.minor > 0xFFFFF:
                raise Refused(4, names)
            return Ino(m.kind, perm, uid, gid, mtime, (m.major, m.minor))
        return Ino("fifo", perm, uid, gid, mtime)

    def finish(self, init_mtime: int) -> tuple[dict[str, tuple], set[frozenset[str]]]:
        """--init, the boot essentials, then the view the archive must give."""
        existing = self.root.children.get("init")
        if existing is not None and existing.children is not None:
            raise Refused(2, ["init"])
        self.root.children["init"] = Ino("file", 0o755, 0, 0, init_mtime, INIT)
        for name, perm in ESSENTIAL_DIRS:
            self.root.children.setdefault(name, new_dir(perm))
        dev = self.root.children["dev"]
        if dev.children is not None:
            dev.children.setdefault("console", Ino("char", 0o600, content=(5, 1)))
        view, inodes = {}, {}
        pending = [("", self.root)]
        while pending:
            prefix, directory = pending.pop()
            for name, node in directory.children.items():
                path = prefix + name
                view[path] = (node.kind, node.perm, node.uid, node.gid, min(max(node.mtime, 0), U32), node.content)
                if node.children is not None:
                    pending.append((path + "/", node))
                elif node.kind != "symlink":
                    inodes.setdefault(id(node), set()).add(path)
        return view, {frozenset(g) for g in inodes.values() if len(g) > 1}


# -- the property ---------------------------------------------------------------------------------------------


def build(tmp: Path, layers: list[list[Member]], compressions: list[str]) -> tuple[int, str, Path]:
    lay = Layout(tmp / "layout")
    descs, diff_ids = [], []
    for layer, compression in zip(layers, compressions, strict=True):
        desc, diff_id = lay.layer([entry(m) for m in layer], compression)
        descs.append(desc)
        diff_ids.append(diff_id)
    config = lay.blob(json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/app"]},
                                  "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode(),
                      "application/vnd.oci.image.config.v1+json")
    lay.tag(lay.blob(json.dumps({"schemaVersion": 2, "config": config, "layers": descs}).encode(),
                     "application/vnd.oci.image.manifest.v1+json"), "t")
    init, out = tmp / "init", tmp / "out.cpio"
    init.write_bytes(INIT)
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()) as stdout, contextlib.redirect_stderr(err):
        code = cli.main(["build", "--json", f"oci:{lay.root}:t", "--init", str(init), "-c", "none", "-o", str(out)])
    return code, err.getvalue() + stdout.getvalue(), out


def named(name: str, message: str) -> bool:
    """Whether the message names the entry, as the tar gives its name or as a path in the image."""
    return repr(shown(name)) in message or f"/{name}" in message


@st.composite
def stacks(draw) -> list[list[Member]]:
    hazards = frozenset(draw(st.sets(st.sampled_from(HAZARDS))))
    return draw(st.lists(st.lists(members(hazards), max_size=10), min_size=1, max_size=3))


@settings(max_examples=EXAMPLES, deadline=None, database=None if not CAMPAIGN else settings.default.database,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(stacks(), st.data())
def test_any_layer_stack_is_refused_cleanly_or_archived_exactly(layers, data):
    compressions = [data.draw(st.sampled_from(["none", "gzip", "zstd"])) for _ in layers]
    model = Model()
    try:
        for layer in layers:
            model.apply(layer)
        expected = model.finish(0)
    except Refused as e:
        expected = e
    with tempfile.TemporaryDirectory() as tmp:
        code, output, out = build(Path(tmp), layers, compressions)
        note(f"exit {code}: {output}")
        event(f"exit {code}")  # pytest --hypothesis-show-statistics shows how often each outcome was tried
        init_mtime = int(os.stat(Path(tmp) / "init").st_mtime)
        # A reader may refuse sparse members outright (no image builder writes them): it must say which.
        allowed = [(4, [m.name for layer in layers for m in layer if "sparse" in m.kind])]
        if isinstance(expected, Refused):
            allowed.append((expected.code, expected.names))
        if code != 0 and any(names for _, names in allowed):
            assert output.startswith("initramfs-builder: error: ") and "Traceback" not in output
            assert any(code == allowed_code and any(named(n, output) for n in names)
                       for allowed_code, names in allowed), (allowed, output)
            assert not out.exists()
            return
        assert not isinstance(expected, Refused), (expected.code, expected.names, output)
        assert code == 0, output
        view, links = kernel_view(read_archive(out.read_bytes()))
        model_view, model_links = expected
        model_view["init"] = ("file", 0o755, 0, 0, init_mtime, INIT)
        assert view == model_view
        assert links == model_links
        result = json.loads(output[output.index("{"):])
        assert result["init"] == "file" and result["entries"] == len(view)
