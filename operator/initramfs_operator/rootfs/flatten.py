"""Layers -> one root filesystem tree, by the OCI image-spec layer rules.

Only metadata lives in memory; file contents go to `Scratch`. Every entry is checked at its
tar header, before its data is read, against what the initramfs can hold: a name the kernel
can create, owners, device numbers and sizes that fit the cpio newc header. A value that does
not fit is refused (naming the entry and the field) rather than silently turned into another
one; only mtimes are clamped, later, when the archive is written.
"""

import stat

from ..archive import cpio
from ..errors import InvalidImageError, shown
from ..oci import layer as layers
from ..oci import tarstream
from ..oci.image import Layer
from .scratch import Scratch
from .tree import Node, PathConflict, Tree, clean_path, new_dir

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"

_TAR_TYPES = {
    tarstream.SYMTYPE: stat.S_IFLNK,
    tarstream.CHRTYPE: stat.S_IFCHR,
    tarstream.BLKTYPE: stat.S_IFBLK,
    tarstream.FIFOTYPE: stat.S_IFIFO,
    tarstream.DIRTYPE: stat.S_IFDIR,
}


def apply(tree: Tree, layer: Layer, scratch: Scratch, budget: layers.Budget) -> None:
    where = f"layer {layer.descriptor.digest}"
    # Whiteouts hide what lower layers put there, never what this layer adds, whatever
    # the order inside the tar: remember this layer's own paths.
    added: set[str] = set()
    for member, data in layers.entries(layer, budget):
        implicit_before = tree.implicit_dirs
        path = clean_path(member.name, where)
        if not path:
            budget.charge_entries(1, where)
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
                entry = f"{where}: entry {_shown(member.name)}"
                problem = cpio.kernel_name_problem(path)
                if problem:
                    raise InvalidImageError(f"{entry} cannot be in an initramfs: {problem}")
                added.add(path)
                tree.put(path, _node(tree, member, data, scratch, budget, entry))
        except PathConflict as e:
            raise InvalidImageError(f"{where}: entry {_shown(path)} lies under {str(e)!r}, which is not a "
                                    f"directory (symlinks in lower layers are never followed)") from None
        budget.charge_entries(1 + tree.implicit_dirs - implicit_before, where)


def _shown(name: str) -> str:
    return repr(shown(name))


def _opaque(directory: Node | None, dirname: str, added: set[str]) -> None:
    """Empties a directory of everything lower layers put in it (iteratively: an image decides the depth)."""
    pending = [(directory, dirname)]
    while pending:
        node, path = pending.pop()
        if node is None or node.children is None:
            continue
        prefix = path + "/" if path else ""
        for name in list(node.children):
            if prefix + name not in added:
                del node.children[name]
            elif node.children[name].is_dir:
                pending.append((node.children[name], prefix + name))


def _check_owner_and_device(m: tarstream.Member, where: str) -> None:
    for field, value in (("uid", m.uid), ("gid", m.gid)):
        limit, why = cpio.FIELD_LIMITS[field]
        if not 0 <= value <= limit:
            raise InvalidImageError(f"{where}: {field} {value} does not fit an initramfs (0..{limit}: {why})")
    if m.ischr() or m.isblk():
        for field, value in (("rdevmajor", m.devmajor), ("rdevminor", m.devminor)):
            limit, why = cpio.FIELD_LIMITS[field]
            if not 0 <= value <= limit:
                raise InvalidImageError(f"{where}: device {field.removeprefix('rdev')} {value} does not fit an "
                                        f"initramfs (0..{limit}: {why})")


def _node(tree: Tree, m: tarstream.Member, data: tarstream.TarReader | None, scratch: Scratch, budget: layers.Budget,
          where: str) -> Node:
    if m.islnk():
        target = clean_path(m.linkname, where)
        node = tree.lookup(target)
        if node is None or node.is_dir:
            raise InvalidImageError(f"{where}: hardlink to {_shown(m.linkname)}, "
                                    f"which is {'a directory' if node else 'missing'}")
        return node
    _check_owner_and_device(m, where)
    mode, mtime = m.mode & 0o7777, int(m.mtime)  # an mtime out of the archive's range is clamped when written
    if m.isreg():
        if not 0 <= m.size <= cpio.MAX_FILE_SIZE:
            raise InvalidImageError(f"{where}: {m.size} bytes is over the 4 GiB - 1 limit of the cpio newc format")
        assert data is not None
        budget.charge_stored(m.size, where)
        return Node(stat.S_IFREG | mode, m.uid, m.gid, mtime, m.size, scratch.add(data, m.size))
    kind = _TAR_TYPES.get(m.type)
    if kind is None:
        raise InvalidImageError(f"{where}: unsupported tar type {m.type!r}")
    if kind == stat.S_IFDIR:
        return new_dir(mode, m.uid, m.gid, mtime)
    node = Node(kind | mode, m.uid, m.gid, mtime)
    if kind == stat.S_IFLNK:
        link = m.linkname.encode("utf-8", "surrogateescape")
        if not 0 < len(link) < cpio.PATH_MAX or b"\0" in link:
            raise InvalidImageError(f"{where}: symlink target {_shown(m.linkname)} cannot be created by the kernel "
                                    f"(1..{cpio.PATH_MAX - 1} bytes, no NUL)")
        node.target, node.size = m.linkname, len(link)
    elif kind in (stat.S_IFCHR, stat.S_IFBLK):
        node.rdev = (m.devmajor, m.devminor)
    return node
