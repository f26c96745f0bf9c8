"""The flattened tree as cpio records, in archive order."""

import stat
from collections import Counter
from collections.abc import Iterator

from ..archive.cpio import Record
from .scratch import Scratch
from .tree import Tree


def tree_records(tree: Tree, scratch: Scratch) -> Iterator[Record]:
    """The tree as records, inodes numbered in archive order. Hardlinked names share an inode number
    and the data is stored once, on the last name (where GNU cpio puts it; the kernel links earlier
    names to it). Only hardlinked inodes are remembered on the way: memory stays small for big trees."""
    names = _hardlinked(tree)
    inodes: dict[int, int] = {}  # of hardlinked nodes
    seen: Counter[int] = Counter()
    last_ino = 0
    for path, node in tree.walk():
        key = id(node)
        ino = inodes.get(key)
        if ino is None:
            last_ino = ino = last_ino + 1
            if key in names:
                inodes[key] = ino
        links = names.get(key, 1)
        r = Record(path, node.mode, node.uid, node.gid, node.mtime, links, ino, node.rdev)
        kind = stat.S_IFMT(node.mode)
        if kind == stat.S_IFDIR:
            r.nlink = 2 + sum(1 for c in (node.children or {}).values() if c.is_dir)
        elif kind == stat.S_IFLNK:
            r.size, r.data = node.size, (node.target.encode("utf-8", "surrogateescape"),)
        elif kind == stat.S_IFREG:
            if links > 1:
                seen[key] += 1
            if links == 1 or seen[key] == links:
                r.size, r.data = node.size, scratch.chunks(node.offset, node.size)
        yield r


def _hardlinked(tree: Tree) -> dict[int, int]:
    """The number of names of each node that has more than one."""
    names = Counter([id(node) for _, node in tree.walk(ordered=False) if not node.is_dir])
    return {key: n for key, n in names.items() if n > 1}
