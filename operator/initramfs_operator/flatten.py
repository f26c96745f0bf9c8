"""Layers -> one root filesystem tree, by the OCI image-spec layer rules.

Only metadata lives in memory; file contents go to `Scratch`. Nothing here touches
the host filesystem, so ownership, device nodes and setuid bits come straight from
the tar headers and no privilege is needed.
"""

import stat
import tarfile
from dataclasses import dataclass, field
from typing import Iterator

from . import layer as layers
from .errors import InvalidImageError
from .image import Layer
from .scratch import Scratch

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"

_TAR_TYPES = {
    tarfile.SYMTYPE: stat.S_IFLNK,
    tarfile.CHRTYPE: stat.S_IFCHR,
    tarfile.BLKTYPE: stat.S_IFBLK,
    tarfile.FIFOTYPE: stat.S_IFIFO,
    tarfile.DIRTYPE: stat.S_IFDIR,
}


@dataclass(eq=False, slots=True)
class Node:
    """An inode: several names may share one (hardlinks). Directories carry their children."""

    mode: int  # full st_mode: type bits and permissions including setuid/setgid/sticky
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    size: int = 0
    offset: int = 0  # where a regular file's contents start in the scratch file
    target: str = ""  # symlink target, stored as-is and never followed
    rdev: tuple[int, int] = (0, 0)
    children: dict[str, "Node"] | None = None

    @property
    def is_dir(self) -> bool:
        return self.children is not None


def new_dir(mode: int = 0o755, uid: int = 0, gid: int = 0, mtime: int = 0) -> Node:
    return Node(stat.S_IFDIR | mode, uid, gid, mtime, children={})


def clean_path(name: str, where: str) -> str:
    """Relative, normalised path; '' is the root. Absolute paths are made relative; '..' is refused."""
    if "\x00" in name:
        raise InvalidImageError(f"{where}: entry {name!r} contains a NUL byte")
    parts = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise InvalidImageError(f"{where}: entry {name!r} contains '..' and would escape the root")
        parts.append(part)
    return "/".join(parts)


class PathConflict(Exception):
    """A parent of the path exists but is not a directory (a symlink, say), which is never followed."""


@dataclass
class Tree:
    root: Node = field(default_factory=new_dir)

    def lookup(self, path: str) -> Node | None:
        node = self.root
        for part in path.split("/") if path else ():
            if node.children is None:
                return None
            node = node.children.get(part)
            if node is None:
                return None
        return node

    def resolve(self, path: str, hops: int = 40) -> Node | None:
        """Looks a path up as the booted system would, following symlinks, but never above the root."""
        node, parts = self.root, [p for p in path.split("/") if p not in ("", ".")]
        stack: list[Node] = []
        while parts:
            part = parts.pop(0)
            if part == "..":
                node = stack.pop() if stack else self.root
                continue
            child = node.children.get(part) if node.is_dir else None
            if child is None:
                return None
            if stat.S_ISLNK(child.mode):
                hops -= 1
                if hops < 0:
                    return None
                if child.target.startswith("/"):
                    node, stack = self.root, []
                parts = [p for p in child.target.split("/") if p not in ("", ".")] + parts
                continue
            stack.append(node)
            node = child
        return node

    def parent(self, path: str, create: bool = True) -> tuple[Node | None, str]:
        """The directory holding `path`, and its base name. Missing parents are created 0755 root."""
        *dirs, base = path.split("/")
        node = self.root
        for i, part in enumerate(dirs):
            child = node.children.get(part)
            if child is None:
                if not create:
                    return None, base
                child = node.children[part] = new_dir()
            elif not child.is_dir:
                if not create:
                    return None, base
                raise PathConflict("/".join(dirs[: i + 1]))
            node = child
        return node, base

    def put(self, path: str, node: Node) -> None:
        parent, base = self.parent(path)
        old = parent.children.get(base)
        if old is not None and old.is_dir and node.is_dir:
            # A directory over a directory changes its metadata and merges the contents.
            old.mode, old.uid, old.gid, old.mtime = node.mode, node.uid, node.gid, node.mtime
        else:
            parent.children[base] = node

    def remove(self, path: str) -> None:
        parent, base = self.parent(path, create=False)
        if parent is not None:
            parent.children.pop(base, None)

    def walk(self, ordered: bool = True, node: Node | None = None, prefix: str = "") -> Iterator[tuple[str, Node]]:
        """Every entry, parents before children; `ordered`, siblings sorted by name bytes (the archive order)."""
        node = node or self.root
        for name in sorted(node.children, key=_name_key) if ordered else node.children:
            child = node.children[name]
            yield prefix + name, child
            if child.is_dir:
                yield from self.walk(ordered, child, prefix + name + "/")


def _name_key(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def apply(tree: Tree, layer: Layer, scratch: Scratch) -> None:
    where = f"layer {layer.descriptor.digest}"
    # Whiteouts hide what lower layers put there, never what this layer adds, whatever
    # the order inside the tar: remember this layer's own paths.
    added: set[str] = set()
    with layers.entries(layer) as (tar, members):
        for member in members:
            path = clean_path(member.name, where)
            if not path:
                continue  # the root itself: its metadata belongs to the host that boots it
            dirname, _, base = path.rpartition("/")
            try:
                if base == OPAQUE:
                    _opaque(tree.lookup(dirname), dirname, added)
                elif base.startswith(WHITEOUT):
                    hidden = f"{dirname}/{base[len(WHITEOUT):]}".lstrip("/")
                    if hidden not in added:
                        tree.remove(hidden)
                else:
                    added.add(path)
                    tree.put(path, _node(tree, tar, member, scratch, where))
            except PathConflict as e:
                raise InvalidImageError(f"{where}: entry {path!r} lies under {str(e)!r}, which is not a "
                                        f"directory (symlinks in lower layers are never followed)") from None


def _opaque(directory: Node | None, dirname: str, added: set[str]) -> None:
    """Empties a directory of everything lower layers put in it."""
    if directory is None or not directory.is_dir:
        return
    prefix = dirname + "/" if dirname else ""
    for name in list(directory.children):
        path = prefix + name
        child = directory.children[name]
        if path not in added:
            del directory.children[name]
        elif child.is_dir:
            _opaque(child, path, added)


def _node(tree: Tree, tar: tarfile.TarFile, m: tarfile.TarInfo, scratch: Scratch, where: str) -> Node:
    if m.islnk():
        target = clean_path(m.linkname, where)
        node = tree.lookup(target)
        if node is None or node.is_dir:
            raise InvalidImageError(f"{where}: hardlink {m.name!r} points to {m.linkname!r}, "
                                    f"which is {'a directory' if node else 'missing'}")
        return node
    mode, mtime = m.mode & 0o7777, int(m.mtime)
    if m.isreg():
        offset = scratch.add(tar.extractfile(m), m.size)
        return Node(stat.S_IFREG | mode, m.uid, m.gid, mtime, m.size, offset)
    kind = _TAR_TYPES.get(m.type)
    if kind is None:
        raise InvalidImageError(f"{where}: entry {m.name!r} has unsupported tar type {m.type!r}")
    if kind == stat.S_IFDIR:
        return new_dir(mode, m.uid, m.gid, mtime)
    node = Node(kind | mode, m.uid, m.gid, mtime)
    if kind == stat.S_IFLNK:
        node.target, node.size = m.linkname, len(m.linkname.encode("utf-8", "surrogateescape"))
    elif kind in (stat.S_IFCHR, stat.S_IFBLK):
        node.rdev = (m.devmajor, m.devminor)
    return node
