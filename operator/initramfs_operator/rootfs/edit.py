"""Changes to a flattened tree before it is archived: boot essentials, injected files, excludes."""

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from ..archive import cpio
from ..errors import InvalidImageError, UsageError
from .pathmatch import Globs
from .scratch import Scratch
from .tree import Node, PathConflict, Tree, clean_path, new_dir

# What the kernel and a minimal init need before anything is mounted. Entries the image
# already has are left alone.
ESSENTIAL_DIRS = (("dev", 0o755), ("proc", 0o555), ("sys", 0o555), ("tmp", 0o1777), ("run", 0o755),
                  ("root", 0o700))
CONSOLE = ("dev/console", stat.S_IFCHR | 0o600, (5, 1))


def essentials(tree: Tree, mtime: int = 0) -> None:
    top = tree.root.children
    assert top is not None
    for name, mode in ESSENTIAL_DIRS:
        if name not in top:
            top[name] = new_dir(mode, mtime=mtime)
    dev = top["dev"]
    _, mode, rdev = CONSOLE
    if dev.children is not None and "console" not in dev.children:
        dev.children["console"] = Node(mode, mtime=mtime, rdev=rdev)


@dataclass(frozen=True)
class Injection:
    source: str
    dest: str
    mode: int | None = None

    @classmethod
    def parse(cls, spec: str) -> "Injection":
        """`SRC:DEST[:MODE]`, or `SRC=DEST[:MODE]` when SRC itself contains ':' (use '\\:' for a
        literal ':' in the colon form)."""
        if "=" in spec:
            source, _, rest = spec.partition("=")
            parts = [source] + rest.split(":")
        else:
            parts = [p.replace("\0", ":") for p in spec.replace("\\:", "\0").split(":")]
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise UsageError(f"--inject {spec!r}: expected SRC:DEST[:MODE] or SRC=DEST[:MODE]")
        mode = None
        if len(parts) == 3:
            try:
                mode = int(parts[2], 8)
            except ValueError:
                raise UsageError(f"--inject {spec!r}: mode {parts[2]!r} is not octal (e.g. 0755)") from None
            if not 0 <= mode <= 0o7777:
                raise UsageError(f"--inject {spec!r}: mode {parts[2]} is out of range")
        return cls(parts[0], parts[1], mode)


def inject(tree: Tree, scratch: Scratch, item: Injection) -> None:
    """Puts a host file into the tree. The destination's parents are never followed if they are
    symlinks: the file cannot land outside the root or anywhere but where it was asked to go."""
    try:
        dest = clean_path(item.dest, "--inject")
    except InvalidImageError as e:
        raise UsageError(str(e)) from None
    if not dest:
        raise UsageError(f"--inject {item.source}:{item.dest}: destination is the root directory")
    problem = cpio.kernel_name_problem(dest)
    if problem:
        raise UsageError(f"--inject {item.source}:{item.dest}: the kernel cannot create /{dest}: {problem}")
    try:
        st = os.stat(item.source)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"--inject: {item.source} is not a regular file")
        with open(item.source, "rb") as f:
            offset = scratch.add(f, st.st_size)
    except OSError as e:
        raise UsageError(f"--inject: cannot read {item.source}: {e.strerror}") from None
    except EOFError:
        raise UsageError(f"--inject: {item.source} shrank while it was read") from None
    existing = tree.lookup(dest)
    if existing is not None and existing.is_dir:
        raise UsageError(f"--inject: /{dest} is a directory in the image")
    mode = item.mode if item.mode is not None else st.st_mode & 0o7777
    try:
        tree.put(dest, Node(stat.S_IFREG | mode, 0, 0, int(st.st_mtime), st.st_size, offset))
    except PathConflict as e:
        raise UsageError(f"--inject: cannot write /{dest}: /{e} is not a directory in the image "
                         f"(symlinks are not followed; name the real path)") from None


def exclude(tree: Tree, patterns: Sequence[str]) -> int:
    """Removes every entry matching one of the globs; a matched directory goes with its contents.
    Returns how many entries were removed directly."""
    globs = Globs(patterns)
    if not globs:
        return 0
    removed = 0
    pending = [(tree.root, globs.start)]  # directories to look into, with the matcher's state at their path + '/'
    while pending:
        directory, state = pending.pop()
        assert directory.children is not None
        for name in list(directory.children):
            here = globs.step(state, name)
            child = directory.children[name]
            if globs.accepts(here):
                del directory.children[name]
                removed += 1
            elif child.children is not None and (below := globs.step(here, "/")) != globs.dead:
                pending.append((child, below))
    return removed
