"""Layers -> one root filesystem tree, by the OCI image-spec layer rules.

Only metadata lives in memory; file contents go to `Scratch`.
"""

import stat
import tarfile

from ..errors import InvalidImageError
from ..oci import layer as layers
from ..oci.image import Layer
from .scratch import Scratch
from .tree import Node, PathConflict, Tree, clean_path, new_dir

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"

_TAR_TYPES = {
    tarfile.SYMTYPE: stat.S_IFLNK,
    tarfile.CHRTYPE: stat.S_IFCHR,
    tarfile.BLKTYPE: stat.S_IFBLK,
    tarfile.FIFOTYPE: stat.S_IFIFO,
    tarfile.DIRTYPE: stat.S_IFDIR,
}


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
