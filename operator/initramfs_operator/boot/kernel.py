"""A kernel out of an OCI image: the image is pulled and flattened like any build image (same registry
access, layer rules and limits), and the one file is copied out."""

import stat
from dataclasses import dataclass

from ..errors import InvalidImageError, LimitExceeded, shown
from ..oci import registry, source
from ..oci.image import Platform
from ..oci.layer import Budget, Limits
from ..rootfs.flatten import apply
from ..rootfs.scratch import Scratch
from ..rootfs.tree import Tree

MAX_KERNEL = 256 << 20   # bytes: a kernel image is tens of MiB; more is not a kernel
DEFAULT_PATH = "/boot/vmlinuz"


@dataclass(frozen=True)
class Kernel:
    path: str        # the kernel file on this machine
    image: str       # the image it came from, by digest


def extract(image_spec: str, path: str, platform: Platform, options: registry.RegistryOptions, dest: str
            ) -> Kernel:
    """Writes the file at `path` in the image (symlinks followed inside the image) to `dest`."""
    with source.load(image_spec, platform, options) as image, Scratch(options.scratch_dir) as scratch:
        tree, budget = Tree(), Budget(Limits())
        for layer in image.layers:
            layer.prefetch()
        for layer in image.layers:
            apply(tree, layer, scratch, budget)
        where = f"kernel image {shown(image_spec)}"
        node = tree.follow(path)
        if node is None or not stat.S_ISREG(node.mode):
            raise InvalidImageError(f"{where}: no regular file at {shown(path)}")
        if node.size > MAX_KERNEL:
            raise LimitExceeded(f"{where}: {shown(path)} is {node.size} bytes, more than a kernel "
                                f"({MAX_KERNEL >> 20} MiB)")
        with open(dest, "wb") as out:
            for chunk in scratch.chunks(node.offset, node.size):
                out.write(chunk)
        return Kernel(dest, image.pinned)
