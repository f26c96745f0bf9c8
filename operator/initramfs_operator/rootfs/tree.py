"""The flattened root filesystem: a tree of inodes, metadata only (contents live in `Scratch`).

Nothing here touches the host filesystem, so ownership, device nodes and setuid bits come
straight from the image and no privilege is needed.
"""

import stat
from dataclasses import dataclass, field
from typing import Iterator

from ..errors import InvalidImageError


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

    def follow(self, path: str, hops: int = 40) -> Node | None:
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
