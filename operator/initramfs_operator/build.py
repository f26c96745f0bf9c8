"""image -> flattened tree -> cpio records -> compressed bytes -> output: the whole engine."""

import hashlib
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from .archive import compress, cpio, output
from .errors import InvalidImageError, UsageError
from .oci.image import Image
from .oci.layer import Budget, Limits
from .progress import SILENT, Progress
from .rootfs import edit, initscript
from .rootfs.flatten import apply
from .rootfs.pathmatch import Globs
from .rootfs.records import tree_records
from .rootfs.scratch import MEMORY_BUDGET, Scratch
from .rootfs.tree import Node, Tree


@dataclass(frozen=True)
class BuildOptions:
    """What to build; checked once, on construction: options that cannot work are refused (UsageError)
    before anything is downloaded, and a BuildOptions that exists is one the build can use."""

    compression: str = "gzip"
    level: int | None = None  # None: the compression's default
    threads: int | None = None
    init: str | None = None  # host file to install as /init
    inject: list[edit.Injection] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    source_date_epoch: int | None = None
    scratch_dir: str | None = None
    memory_budget: int = MEMORY_BUDGET  # file contents stay in memory while they fit, else go to scratch_dir
    limits: Limits = field(default_factory=Limits)
    compress_level: int = field(init=False)  # `level`, or the compression's default

    def __post_init__(self) -> None:
        epoch = self.source_date_epoch
        if epoch is not None and not 0 <= epoch <= cpio.MAX_MTIME:
            raise UsageError(f"source date epoch {epoch} is outside what cpio newc can hold (0..{cpio.MAX_MTIME})")
        if self.limits.max_uncompressed_size <= 0 or self.limits.max_entries <= 0:
            raise UsageError("limits must be positive")
        Globs(self.exclude)
        object.__setattr__(self, "compress_level", compress.check(self.compression, self.level))


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


Warn = Callable[[str], None]


def build(image: Image, out: compress.Sink, options: BuildOptions, progress: Progress = SILENT,
          warn: Warn = lambda _: None) -> tuple[int, str]:
    """Writes the compressed initramfs of `image` to `out`; returns (entries, init source), both read
    from what the archive writer wrote."""
    budget = Budget(options.limits)
    with Scratch(options.scratch_dir, options.memory_budget) as scratch:
        tree = Tree()
        for layer in image.layers:
            layer.prefetch()  # remote layers download in parallel while the first ones are applied
        for i, layer in enumerate(image.layers, 1):
            with progress.layer(layer, i, len(image.layers)) as watched:
                apply(tree, watched, scratch, budget)
        edit.exclude(tree, options.exclude)
        for item in options.inject:
            edit.inject(tree, scratch, item)
        installed = _install_init(tree, scratch, image, options)
        edit.essentials(tree, options.source_date_epoch or 0)
        sink = compress.writer(out, options.compression, options.compress_level, options.threads)
        writer = cpio.Writer(sink, watch={"init"})
        records = cpio.clamp_mtime(tree_records(tree, scratch), options.source_date_epoch, warn)
        with progress.archive(options.compression, tree, writer):
            for record in records:
                writer.write(record)
            writer.close()
            sink.close()
        return writer.records, _init_source(writer.watched.get("init"), installed)


def _install_init(tree: Tree, scratch: Scratch, image: Image, options: BuildOptions) -> tuple[str, str | None]:
    """Which /init goes in ("file", "image" or "generated") and the sha256 of what was installed."""
    if options.init:
        edit.inject(tree, scratch, edit.Injection(options.init, "init", 0o755))
        node = tree.lookup("init")
        assert node is not None
        digest = hashlib.sha256()
        for chunk in scratch.chunks(node.offset, node.size):
            digest.update(chunk)
        return "file", digest.hexdigest()
    existing = tree.lookup("init")
    if existing is not None and not existing.is_dir:
        return "image", None
    script = initscript.generate(image.config, tree, scratch, image.pinned)
    tree.put("init", Node(stat.S_IFREG | 0o755, size=len(script), offset=scratch.add_bytes(script),
                          mtime=options.source_date_epoch or 0))
    return "generated", hashlib.sha256(script).hexdigest()


def _init_source(written: cpio.Written | None, installed: tuple[str, str | None]) -> str:
    """The kind of /init the archive holds, judged by the bytes written under that name."""
    if written is None:
        raise InvalidImageError("the archive has no /init")
    kind, digest = installed
    if kind != "image" and stat.S_ISREG(written.mode) and written.sha256 == digest:
        return kind
    return "image"


def build_file(image: Image, path: str, options: BuildOptions, progress: Progress = SILENT,
               create_dirs: bool = False, warn: Warn = lambda _: None) -> Result:
    """Builds into `path` atomically: on any failure no file (and no partial file) is left."""
    with output.atomic(path, create_dirs) as out:
        entries, init_source = build(image, out, options, progress, warn)
    d = out.digests
    return Result(d.size, d.sha256.hexdigest(), d.sha512.hexdigest(), entries, image.name, image.digest,
                  str(image.config.platform), options.compression, init_source)
