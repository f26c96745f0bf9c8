"""How far a build is, for a person at a terminal.

The engine marks its phases: each layer as it is applied, then the archive as it is written, and
the CLI the push. `Progress` itself shows nothing (a build under --quiet, without a terminal, in
the operator); `Terminal` gives each phase one line on stderr, redrawn in place about ten times a
second by a thread of its own and left with the phase's totals when it ends:

    layer 2/3 sha256:3f4ca0ba0a43  45.2/95.1 MB  38.1 MB/s  eta 0:01
    writing zstd archive  3000/6768 entries  44%  eta 0:02

A layer's bytes are those of its blob read so far: a remote layer is read as it downloads, so they
advance with the download, and the rate is how fast the build takes the layer in, whichever of the
network, the disk or the inflater holds it up. The thread reads counters the build keeps anyway
(bytes read, records written): the build's own loops pay nothing for being watched.

Hand-written rather than `rich`: rich.progress takes 22 ms to import on top of the CLI's 82 ms
(`python3 -X importtime`, rich 15) for what is a hundred lines here.
"""

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TextIO, TypeVar

from .archive.cpio import Writer
from .oci.digests import VerifyingReader
from .oci.image import Layer
from .rootfs.tree import Tree

REFRESH = 0.1      # seconds between redraws
RATE_WINDOW = 3.0  # seconds of history a rate is measured over

T = TypeVar("T")


class Progress:
    """The engine's hooks; this one shows nothing."""

    def layer(self, layer: Layer, number: int, count: int) -> AbstractContextManager[Layer]:
        """While layer `number` of `count` is applied: the layer to read it from."""
        return nullcontext(layer)

    def archive(self, compression: str, tree: Tree, writer: Writer) -> AbstractContextManager[None]:
        """While `tree` is written to `writer`."""
        return nullcontext()

    def upload(self, size: int) -> AbstractContextManager[Callable[[int], None]]:
        """While `size` bytes are pushed: the callback that counts them as they go."""
        return nullcontext(lambda n: None)

    def print(self, message: str) -> None:
        """A line for the user (a warning) in the middle of it all."""
        print(message, file=sys.stderr)

    def close(self) -> None:
        """When the program is done with it, succeeding or not."""


SILENT = Progress()


class _Phase:
    """One line: `done` of `total` units so far, as `count()` says."""

    def __init__(self, label: str, total: int, count: Callable[[], int], unit: str):
        self.label, self.total, self.count, self.unit = label, total, count, unit
        self.start = time.monotonic()
        self.samples: deque[tuple[float, int]] = deque([(self.start, 0)])

    def line(self, final: bool) -> str:
        now, done = time.monotonic(), min(self.count(), self.total)
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW:
            self.samples.popleft()
        if final:
            then, before = self.start, 0
        else:
            then, before = self.samples[0]
        # a rate needs time to mean something; a finished phase is judged over all of it
        rate = (done - before) / (now - then) if now - then >= (0.01 if final else 0.5) else None
        if self.unit == "B":
            parts = [f"{self.label}  {_bytes(done, self.total)}"]
            if rate is not None:
                parts.append(_bytes(rate) + "/s")
        else:
            parts = [f"{self.label}  {done}/{self.total} {self.unit}",
                     f"{100 * done // self.total if self.total else 100}%"]
        if final:
            parts.append(_duration(now - self.start))
        elif rate:
            parts.append("eta " + _clock((self.total - done) / rate))
        return "  ".join(parts)


class Terminal(Progress):
    """Each phase one line on `stream`, a terminal: rewritten in place while the phase runs, then left
    with its totals (or, if the phase failed, where it stopped) for the next line to follow."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._lock = threading.Lock()  # the stream and `_phase`, between the build and the redrawing thread
        self._phase: _Phase | None = None
        self._shown = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def layer(self, layer: Layer, number: int, count: int) -> AbstractContextManager[Layer]:
        watched = _WatchedLayer(layer)
        return self._running(f"layer {number}/{count} {layer.descriptor.digest[:19]}", layer.descriptor.size,
                             lambda: watched.reader.position if watched.reader else 0, "B", watched)

    def archive(self, compression: str, tree: Tree, writer: Writer) -> AbstractContextManager[None]:
        total = sum(1 for _ in tree.walk(ordered=False))  # one record each
        return self._running(f"writing {compression} archive", total, lambda: writer.records, "entries", None)

    def upload(self, size: int) -> AbstractContextManager[Callable[[int], None]]:
        sent = [0]

        def count(n: int) -> None:
            sent[0] += n

        return self._running("pushing", size, lambda: sent[0], "B", count)

    @contextmanager
    def _running(self, label: str, total: int, count: Callable[[], int], unit: str, value: T) -> Iterator[T]:
        with self._lock:
            self._phase = _Phase(label, total, count, unit)
            self._draw(final=False)
        if self._thread is None:
            self._thread = threading.Thread(target=self._redraw, daemon=True, name="progress")
            self._thread.start()
        failed = True
        try:
            yield value
            failed = False
        finally:
            with self._lock:
                self._draw(final=not failed)
                self._end_line()
                self._phase = None

    def print(self, message: str) -> None:
        with self._lock:
            if self._shown:
                self._stream.write("\r\033[K")
            self._stream.write(message + "\n")
            self._shown = ""
            if self._phase:
                self._draw(final=False)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _redraw(self) -> None:
        while not self._stop.wait(REFRESH):
            with self._lock:
                if self._phase:
                    self._draw(final=False)

    def _draw(self, final: bool) -> None:
        assert self._phase is not None
        line = self._phase.line(final)[: _width(self._stream) - 1]  # a wrapped line could not be redrawn
        if line != self._shown:
            self._stream.write(f"\r{line}\033[K")
            self._stream.flush()
            self._shown = line

    def _end_line(self) -> None:
        self._stream.write("\n")
        self._stream.flush()
        self._shown = ""


class _WatchedLayer:
    """A layer whose reader, once opened, the terminal reads the position of."""

    def __init__(self, layer: Layer):
        self.descriptor = layer.descriptor
        self._layer = layer
        self.reader: VerifyingReader | None = None

    def open(self) -> VerifyingReader:
        self.reader = self._layer.open()
        return self.reader

    def prefetch(self) -> None:
        self._layer.prefetch()


def for_stream(stream: TextIO, quiet: bool) -> Progress:
    """A terminal's progress lines on `stream` when it is one (and can redraw a line), else none."""
    if quiet or not stream.isatty() or os.environ.get("TERM") == "dumb":
        return Progress()
    return Terminal(stream)


def _width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except OSError:
        return 80


def _bytes(n: float, total: int | None = None) -> str:
    """`n` in decimal units, or `n/total` in the unit of `total`."""
    scale = total if total is not None else n
    for factor, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if scale >= factor:
            shown = f"{n / factor:.1f}" if total is None else f"{n / factor:.1f}/{total / factor:.1f}"
            return f"{shown} {unit}"
    return f"{n:.0f} B" if total is None else f"{n}/{total} B"


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else _clock(seconds)
