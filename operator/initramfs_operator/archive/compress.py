"""Compressed writers for every format the Linux initramfs unpacker accepts that we offer.

gzip uses zlib-ng's threaded writer (pigz-style blocks, one gzip member, no
timestamp), several times faster than zlib at the same level and ratio.
"""

import os
from typing import BinaryIO

import zstandard
from zlib_ng import gzip_ng_threaded

from ..errors import UsageError

FORMATS = {"gzip": (1, 9, 6), "zstd": (1, 19, 3), "none": (0, 0, 0)}  # (min level, max level, default)
MEDIA_SUFFIX = {"gzip": "+gzip", "zstd": "+zstd", "none": ""}


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def check(format: str, level: int | None) -> int:
    if format not in FORMATS:
        raise UsageError(f"unknown compression {format!r}: choose one of {', '.join(FORMATS)}")
    low, high, default = FORMATS[format]
    if level is None:
        return default
    if not low <= level <= high:
        raise UsageError(f"{format} level {level} is out of range {low}..{high}")
    return level


class _Passthrough:
    def __init__(self, out: BinaryIO):
        self._out = out

    def write(self, data: bytes) -> int:
        return self._out.write(data)

    def close(self) -> None:
        pass


def writer(out: BinaryIO, format: str, level: int | None = None, threads: int | None = None):
    """A file-like writer compressing into `out`; closing it finishes the stream, not `out`."""
    level = check(format, level)
    threads = threads or default_threads()
    if format == "gzip":
        # The output does not depend on the thread count: blocks are cut at fixed sizes.
        return gzip_ng_threaded.open(out, "wb", compresslevel=level, threads=threads)
    if format == "zstd":
        # The kernel needs the checksum-capable single frame zstd writes by default; worker
        # count does not change the bytes for a given level (zstd's multithreading is deterministic).
        cctx = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)
        return cctx.stream_writer(out, closefd=False)
    return _Passthrough(out)
