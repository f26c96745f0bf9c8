"""image -> flattened tree -> cpio records -> compressed bytes -> output: the whole engine."""

import stat
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator

from .archive import compress, cpio, output
from .oci.image import Image
from .rootfs import edit, initscript
from .rootfs.flatten import apply
from .rootfs.tree import Node, Tree
from .rootfs.records import tree_records
from .rootfs.scratch import Scratch


@dataclass
class BuildOptions:
    compression: str = "gzip"
    level: int | None = None
    threads: int | None = None
    init: str | None = None  # host file to install as /init
    inject: list[edit.Injection] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    source_date_epoch: int | None = None
    scratch_dir: str | None = None


@dataclass
class Result:
    size: int
    sha256: str
    sha512: str
    entries: int
    image: str
    image_digest: str
    platform: str
    compression: str
    init: str  # "image", "file" or "generated"


Report = Callable[[str], None]


def build(image: Image, out: BinaryIO, options: BuildOptions, report: Report = lambda _: None) -> tuple[int, str]:
    """Writes the compressed initramfs of `image` to `out`; returns (entries, init source)."""
    level = compress.check(options.compression, options.level)
    with Scratch(options.scratch_dir) as scratch:
        tree = Tree()
        for i, layer in enumerate(image.layers, 1):
            report(f"layer {i}/{len(image.layers)} {layer.descriptor.digest[:19]}")
            apply(tree, layer, scratch)
        edit.exclude(tree, options.exclude)
        for item in options.inject:
            edit.inject(tree, scratch, item)
        init_source = _install_init(tree, scratch, image, options)
        edit.essentials(tree, options.source_date_epoch or 0)
        sink = compress.writer(out, options.compression, level, options.threads)
        records = cpio.clamp_mtime(tree_records(tree, scratch), options.source_date_epoch)
        entries = cpio.write(_counted(records, f"writing {options.compression} archive", report), sink)
        sink.close()
        return entries, init_source


def _counted(records: Iterator[cpio.Record], phase: str, report: Report) -> Iterator[cpio.Record]:
    for n, record in enumerate(records):
        if n % 1000 == 0:
            report(f"{phase}: {n} entries")
        yield record


def _install_init(tree, scratch: Scratch, image: Image, options: BuildOptions) -> str:
    if options.init:
        edit.inject(tree, scratch, edit.Injection(options.init, "init", 0o755))
        return "file"
    existing = tree.lookup("init")
    if existing is not None and not existing.is_dir:
        return "image"
    script = initscript.generate(image.config, tree, scratch, image.pinned)
    tree.put("init", Node(stat.S_IFREG | 0o755, size=len(script), offset=scratch.add_bytes(script),
                          mtime=options.source_date_epoch or 0))
    return "generated"


def build_file(image: Image, path: str, options: BuildOptions, report: Report = lambda _: None,
               create_dirs: bool = False) -> Result:
    """Builds into `path` atomically: on any failure no file (and no partial file) is left."""
    with output.atomic(path, create_dirs) as out:
        entries, init_source = build(image, out, options, report)
    d = out.digests
    return Result(d.size, d.sha256.hexdigest(), d.sha512.hexdigest(), entries, image.name, image.digest,
                  str(image.config.platform), options.compression, init_source)
