"""Changes to a flattened tree before it is archived: boot essentials, injected files, excludes."""

import os
import re
import stat
from dataclasses import dataclass
from functools import lru_cache

from ..errors import InvalidImageError, UsageError
from .tree import Node, PathConflict, Tree, clean_path, new_dir
from .scratch import Scratch

# What the kernel and a minimal init need before anything is mounted. Entries the image
# already has are left alone.
ESSENTIAL_DIRS = (("dev", 0o755), ("proc", 0o555), ("sys", 0o555), ("tmp", 0o1777), ("run", 0o755),
                  ("root", 0o700))
CONSOLE = ("dev/console", stat.S_IFCHR | 0o600, (5, 1))


def essentials(tree: Tree, mtime: int = 0) -> None:
    for name, mode in ESSENTIAL_DIRS:
        if name not in tree.root.children:
            tree.root.children[name] = new_dir(mode, mtime=mtime)
    dev = tree.root.children["dev"]
    _, mode, rdev = CONSOLE
    if dev.is_dir and "console" not in dev.children:
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
    try:
        st = os.stat(item.source)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"--inject: {item.source} is not a regular file")
        with open(item.source, "rb") as f:
            offset = scratch.add(f, st.st_size)
    except OSError as e:
        raise UsageError(f"--inject: cannot read {item.source}: {e.strerror}") from None
    existing = tree.lookup(dest)
    if existing is not None and existing.is_dir:
        raise UsageError(f"--inject: /{dest} is a directory in the image")
    mode = item.mode if item.mode is not None else st.st_mode & 0o7777
    try:
        tree.put(dest, Node(stat.S_IFREG | mode, 0, 0, int(st.st_mtime), st.st_size, offset))
    except PathConflict as e:
        raise UsageError(f"--inject: cannot write /{dest}: /{e} is not a directory in the image "
                         f"(symlinks are not followed; name the real path)") from None


@lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern:
    """`*` and `?` stay within one path component, `**` crosses directories, `[...]` is a class;
    a leading '/' is optional since every path is relative to the image root."""
    p = pattern.strip("/")
    out, i = [], 0
    while i < len(p):
        c = p[i]
        if p.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if p.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and "]" in p[i + 2:]:
            end = p.index("]", i + 2)
            body = p[i + 1:end].replace("\\", "\\\\")
            out.append("[" + ("^/" + body[1:] if body[0] in "!^" else body) + "]")
            i = end + 1
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


def exclude(tree: Tree, patterns: list[str]) -> int:
    """Removes every entry matching one of the globs; a matched directory goes with its contents.
    Returns how many entries were removed directly."""
    regexes = [glob_regex(p) for p in patterns if p.strip("/")]
    if not regexes:
        return 0
    return _exclude(tree.root, "", regexes)


def _exclude(directory: Node, prefix: str, regexes: list[re.Pattern]) -> int:
    removed = 0
    for name in list(directory.children):
        path = prefix + name
        child = directory.children[name]
        if any(r.fullmatch(path) for r in regexes):
            del directory.children[name]
            removed += 1
        elif child.is_dir:
            removed += _exclude(child, path + "/", regexes)
    return removed
