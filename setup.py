"""The package's build (pyproject.toml has the rest): with INITRAMFS_MYPYC=1, the per-entry path is
compiled by mypyc from the same source; without it, the package is pure Python.

    INITRAMFS_MYPYC=1 pip wheel --no-deps --wheel-dir dist .    # the compiled wheel: needs a C compiler
    pip install .                                                # pure Python, anywhere

The pure-Python modules are the reference and the fallback: both builds write the same bytes
(tests/test_compiled.py builds the corpus with each and compares).
"""

import os
import sys

from setuptools import setup

# What runs once per tar header, tree node or cpio record. oci/layer.py stays interpreted: it runs once per
# chunk, and its tarfile.TarInfo subclass has __slots__, which mypyc refuses.
COMPILED = ["oci/tarstream.py", "rootfs/flatten.py", "rootfs/tree.py", "rootfs/records.py", "rootfs/scratch.py",
            "rootfs/pathmatch.py", "archive/cpio.py"]
MYPY = "mypy>=2.4,<3"  # mypyc comes with mypy: the same range the type check uses


def compiling() -> bool:
    choice = os.environ.get("INITRAMFS_MYPYC", "0")
    if choice not in ("0", "1"):
        sys.exit(f"INITRAMFS_MYPYC={choice!r}: 1 compiles the per-entry path with mypyc, 0 (the default) does not")
    return choice == "1"


def extensions() -> list[object]:
    if not compiling():
        return []
    if {"egg_info", "dist_info"} & set(sys.argv):
        return []  # pip asking for the requirements or the metadata, before mypy is installed: nothing to compile
    if "editable_wheel" in sys.argv:
        sys.exit("INITRAMFS_MYPYC=1 cannot be editable: the compiled modules would shadow the sources "
                 "you edit. `pip install -e .` is pure Python; build the compiled wheel with `pip wheel`.")
    from mypyc.build import mypycify

    # The modules they import are read for their types only: the type check (mypy, in .ci/run) judges them, with
    # the runtime dependencies installed, which an isolated build's environment lacks (no compiled module uses them).
    return mypycify(["--follow-imports=silent", *(f"operator/initramfs_operator/{path}" for path in COMPILED)],
                    opt_level="3", group_name="initramfs_operator")


if __name__ == "__main__":  # as setuptools runs it; the tests read COMPILED
    setup(ext_modules=extensions(), setup_requires=[MYPY] if compiling() else [])
