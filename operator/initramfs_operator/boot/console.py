"""The serial console of a booting microVM -> Booted, BootFailed or BootTimeout.

The rule: the kernel must hand over to the initramfs's init (`Run /init as init process`), and then
neither panic, nor fail to execute init, nor report that it could not unpack the archive for
`settle` seconds; when a success pattern is given, a line must match it within `timeout`. The guest
is hostile: lines are bounded (a longer one is cut into pieces), only the last few are kept, and
what is kept is printable text only.
"""

import re
from collections import deque
from dataclasses import dataclass

BOOTED, BOOT_FAILED, BOOT_TIMEOUT = "Booted", "BootFailed", "BootTimeout"
MAX_LINE = 512          # bytes: a longer line is judged in pieces of this size
TAIL_LINES = 10         # console lines kept for the verdict's message
TAIL_WIDTH = 120        # characters of each kept line (the whole fits a 4 KiB termination message)

RAN_INIT = re.compile(r"Run (\S+) as init process")
# What the kernel prints when the initramfs does not boot, in the order they are looked for on a line.
FAILURES = (
    (re.compile(r"Initramfs unpacking failed: (.*)"), "the kernel could not unpack the initramfs: {0}"),
    (re.compile(r"Failed to execute (\S+) \(error (-?\d+)\)"), "the kernel could not execute {0} (error {1})"),
    (re.compile(r"Kernel panic - not syncing: (.*)"), "the kernel panicked: {0}"),
)
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


@dataclass(frozen=True)
class Verdict:
    reason: str       # BOOTED, BOOT_FAILED or BOOT_TIMEOUT
    message: str
    console: tuple[str, ...]  # the last lines of the console, printable

    @property
    def booted(self) -> bool:
        return self.reason == BOOTED


class Console:
    """Fed the console's bytes as they come (`feed`), says the verdict once there is one (`verdict`).
    Times are seconds since the VM started."""

    def __init__(self, settle: float, timeout: float, success: re.Pattern[str] | None = None):
        self.settle, self.timeout, self.success = settle, timeout, success
        self.partial = b""
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.init: str | None = None
        self.init_at: float | None = None
        self.succeeded = success is None
        self.failure: str | None = None

    def feed(self, data: bytes, now: float) -> None:
        self.partial += data
        while self.failure is None:
            cut = self.partial.find(b"\n")
            if cut < 0 and len(self.partial) < MAX_LINE:
                return
            end = cut if 0 <= cut < MAX_LINE else MAX_LINE
            line, self.partial = self.partial[:end], self.partial[end + (end == cut):]
            self.line(line.decode("utf-8", "replace").rstrip("\r"), now)

    def line(self, text: str, now: float) -> None:
        shown = _UNPRINTABLE.sub("?", text)[:TAIL_WIDTH]
        if shown.strip():
            self.tail.append(shown)
        for pattern, message in FAILURES:
            found = pattern.search(text)
            if found:
                self.failure = message.format(*(_UNPRINTABLE.sub("?", g)[:TAIL_WIDTH] for g in found.groups()))
                return
        ran = RAN_INIT.search(text)
        if ran and self.init is None:
            self.init, self.init_at = _UNPRINTABLE.sub("?", ran.group(1))[:TAIL_WIDTH], now
        if self.success is not None and not self.succeeded and self.success.search(text):
            self.succeeded = True

    def verdict(self, now: float, stopped: bool = False) -> Verdict | None:
        """The verdict at `now`, None while it is open; `stopped`: the VM has exited (its output is all in)."""
        if stopped and self.partial and self.failure is None:
            self.line(self.partial.decode("utf-8", "replace"), now)
            self.partial = b""
        if self.failure:
            return self.said(BOOT_FAILED, self.failure)
        settled = self.init_at is not None and now - self.init_at >= self.settle
        if self.init is not None and self.succeeded and (settled or stopped):
            return self.said(BOOTED, f"ran {self.init}" + (f" and printed a line matching {self.success.pattern!r}"
                                                            if self.success else f" for {self.settle:g}s"))
        if stopped:
            missing = "before the kernel ran init" if self.init is None else \
                f"after running {self.init}, before a line matched {self.success.pattern!r}" if self.success else ""
            return self.said(BOOT_FAILED, f"the VM stopped {missing}".rstrip())
        if now >= self.timeout:
            waited = "the kernel running init" if self.init is None else f"a line matching {self.success.pattern!r}" \
                if self.success and not self.succeeded else f"{self.init} to run for {self.settle:g}s"
            return self.said(BOOT_TIMEOUT, f"no verdict within {self.timeout:g}s: waited for {waited}")
        return None

    def said(self, reason: str, message: str) -> Verdict:
        return Verdict(reason, message, tuple(self.tail))
