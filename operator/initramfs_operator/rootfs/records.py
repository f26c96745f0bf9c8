"""The flattened tree as cpio records, in archive order."""

import stat
from collections import Counter
from typing import Iterator

from ..archive.cpio import Record
from .scratch import Scratch
from .tree import Tree


def tree_records(tree: Tree, scratch: Scratch) -> Iterator[Record]:
    """The tree as records. Hardlinked names share an inode number and the data is stored
    once, on the last name (where GNU cpio puts it; the kernel links earlier names to it)."""
    names = Counter(id(node) for _, node in tree.walk(ordered=False) if not node.is_dir)
    inodes: dict[int, int] = {}
    seen: Counter = Counter()
    for path, node in tree.walk():
        key = id(node)
        ino = inodes.setdefault(key, len(inodes) + 1)
        r = Record(path, node.mode, node.uid, node.gid, node.mtime, names[key] or 1, ino, node.rdev)
        kind = stat.S_IFMT(node.mode)
        if kind == stat.S_IFDIR:
            r.nlink = 2 + sum(1 for c in node.children.values() if c.is_dir)
        elif kind == stat.S_IFLNK:
            r.size, r.data = node.size, (node.target.encode("utf-8", "surrogateescape"),)
        elif kind == stat.S_IFREG:
            seen[key] += 1
            if seen[key] == names[key]:
                r.size, r.data = node.size, scratch.chunks(node.offset, node.size)
        yield r
