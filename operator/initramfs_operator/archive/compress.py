"""Compressed writers for every format the Linux initramfs unpacker accepts that we offer.

All compress on several threads, and the bytes they write depend on the input and the level
only, never on the thread count: gzip, lz4 and xz in blocks of a fixed size (`blocks`), zstd in
jobs of a fixed size.
"""

import os
from typing import IO, Protocol, cast

import zstandard

from ..errors import UsageError
from . import blockgzip, blocklz4, blockxz

# (min level, max level, default): each tool's own default level
FORMATS = {"gzip": (1, 9, 6), "zstd": (1, 19, 3), "lz4": (1, 12, 1), "xz": (0, 9, 6), "none": (0, 0, 0)}
MEDIA_SUFFIX = {"gzip": "+gzip", "zstd": "+zstd", "lz4": "+lz4", "xz": "+xz", "none": ""}
EXTENSIONS = {"gzip": ".cpio.gz", "zstd": ".cpio.zst", "lz4": ".cpio.lz4", "xz": ".cpio.xz",
              "none": ".cpio"}  # of an initramfs file


def default_threads() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), 8))  # the CPUs this process may use (a cpuset, say)


def check(format: str, level: int | None) -> int:
    if format not in FORMATS:
        raise UsageError(f"unknown compression {format!r}: choose one of {', '.join(FORMATS)}")
    low, high, default = FORMATS[format]
    if level is None:
        return default
    if not low <= level <= high:
        raise UsageError(f"{format} level {level} is out of range {low}..{high}")
    return level


class Sink(Protocol):
    """Where compressed bytes go: a file, or something counting and hashing them on the way."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


class Writer(Protocol):
    def write(self, data: bytes, /) -> int: ...

    def close(self) -> None: ...


class _Passthrough:
    def __init__(self, out: Sink):
        self._out = out

    def write(self, data: bytes) -> int:
        return self._out.write(data)

    def close(self) -> None:
        pass


def writer(out: Sink, format: str, level: int | None = None, threads: int | None = None) -> Writer:
    """A file-like writer compressing into `out`; closing it finishes the stream, not `out`."""
    level = check(format, level)
    threads = threads or default_threads()
    if format == "gzip":
        return blockgzip.Writer(out, level, threads)
    if format == "zstd":
        # One frame with a checksum, as the kernel reads it. Multithreaded zstd cuts the input into jobs
        # whose size, not the worker count, decides the bytes. zstd's own choice is four windows per job
        # (8 MiB at level 3), which takes 65 MiB of buffers with 2 workers; one window per job takes
        # 22 MiB, for 1.2% more output.
        window = zstandard.ZstdCompressionParameters.from_level(level).window_log
        params = zstandard.ZstdCompressionParameters.from_level(
            level, threads=threads, job_size=1 << window, write_checksum=True)
        cctx = zstandard.ZstdCompressor(compression_params=params)
        return cctx.stream_writer(cast(IO[bytes], out), closefd=False)
    if format == "lz4":
        return blocklz4.Writer(out, level, threads)
    if format == "xz":
        return blockxz.Writer(out, level, threads)
    return _Passthrough(out)
