"""The flattened root filesystem: a tree of inodes, metadata only (contents live in `Scratch`).

Nothing here touches the host filesystem, so ownership, device nodes and setuid bits come
straight from the image and no privilege is needed.
"""

import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import InvalidImageError, shown


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
        raise InvalidImageError(f"{where}: entry {shown(name)!r} contains a NUL byte")
    parts = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise InvalidImageError(f"{where}: entry {shown(name)!r} contains '..' and would escape the root")
        parts.append(part)
    return "/".join(parts)


class PathConflict(Exception):
    """A parent of the path exists but is not a directory (a symlink, say), which is never followed."""


@dataclass
class Tree:
    root: Node = field(default_factory=new_dir)
    implicit_dirs: int = 0  # directories created because an entry named them as parents

    def lookup(self, path: str) -> Node | None:
        node = self.root
        for part in path.split("/") if path else ():
            child = node.children.get(part) if node.children is not None else None
            if child is None:
                return None
            node = child
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
            child = node.children.get(part) if node.children is not None else None
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
            assert node.children is not None
            child = node.children.get(part)
            if child is None:
                if not create:
                    return None, base
                child = node.children[part] = new_dir()
                self.implicit_dirs += 1
            elif not child.is_dir:
                if not create:
                    return None, base
                raise PathConflict("/".join(dirs[: i + 1]))
            node = child
        return node, base

    def put(self, path: str, node: Node) -> None:
        parent, base = self.parent(path)
        assert parent is not None and parent.children is not None
        old = parent.children.get(base)
        if old is not None and old.is_dir and node.is_dir:
            # A directory over a directory changes its metadata and merges the contents.
            old.mode, old.uid, old.gid, old.mtime = node.mode, node.uid, node.gid, node.mtime
        else:
            parent.children[base] = node

    def remove(self, path: str) -> None:
        parent, base = self.parent(path, create=False)
        if parent is not None and parent.children is not None:
            parent.children.pop(base, None)

    def walk(self, ordered: bool = True) -> Iterator[tuple[str, Node]]:
        """Every entry, parents before children; `ordered`, siblings sorted by name bytes (the archive order).
        Iterative: an image decides how deep the tree is."""
        pending = [("", self.root)]  # entries still to yield, the next one last
        while pending:
            path, node = pending.pop()
            if path:
                yield path, node
            if node.children is not None:
                prefix = path + "/" if path else ""
                names = sorted(node.children, key=_name_key, reverse=True) if ordered else list(node.children)
                pending.extend((prefix + name, node.children[name]) for name in names)


def _name_key(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")
