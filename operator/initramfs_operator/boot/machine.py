"""The microVM that boots an initramfs: qemu for the initramfs's platform (TCG, or KVM when asked),
guest memory from what the archive unpacks to, and the run, judged by console.Console."""

import lzma
import math
import os
import selectors
import shutil
import struct
import subprocess
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, BinaryIO

import zstandard
from isal import igzip

from ..archive import blocklz4
from ..errors import LimitExceeded, UsageError
from ..oci.image import Platform
from ..oci.layer import Limits
from .console import Console, Verdict

MIB = 1 << 20
MIN_MEMORY = 256 * MIB
MEMORY_FACTOR = 4         # guest memory per byte the archive unpacks to: cpio, page cache, tmpfs and the kernel
# What an archive may unpack to when its size is taken for the guest's memory: a build never writes more
# (max-uncompressed-size), and a pulled artifact may be a decompression bomb.
MAX_UNPACKED = Limits.max_uncompressed_size
CHUNK = 1 << 20


@dataclass(frozen=True)
class Machine:
    qemu: str          # the qemu-system binary
    args: tuple[str, ...]
    console: str       # the serial console's device name for the kernel


MACHINES = {
    "amd64": Machine("qemu-system-x86_64", ("-M", "microvm"), "ttyS0"),
    "arm64": Machine("qemu-system-aarch64", ("-M", "virt", "-cpu", "cortex-a57"), "ttyAMA0"),
}
# Under TCG on a loaded host the x86 kernel may fail to calibrate the TSC against the PIT and hang; telling
# it the frequency skips the calibration.
TCG_ARGS = {"amd64": "tsc_early_khz=2000000"}


def machine_for(platform: Platform) -> Machine:
    found = MACHINES.get(platform.architecture)
    if found is None:
        raise UsageError(f"cannot boot {platform}: verification boots {', '.join(f'linux/{a}' for a in MACHINES)}")
    return found


def command(platform: Platform, kernel: str, initramfs: str, memory: int, cpus: int, kvm: bool,
            cmdline: str = "") -> list[str]:
    """The qemu command line: serial console on stdout, no reboot (a panic stops the VM), no network,
    no disks; `cmdline` is added after what the verification needs."""
    m = machine_for(platform)
    binary = shutil.which(m.qemu)
    if binary is None:
        raise UsageError(f"{m.qemu} is not installed: verification boots the initramfs with it")
    append = f"console={m.console} rdinit=/init panic=-1"
    if not kvm and platform.architecture in TCG_ARGS:
        append += f" {TCG_ARGS[platform.architecture]}"
    return [binary, *m.args, "-accel", "kvm" if kvm else "tcg", "-smp", str(cpus), "-m", f"{memory // MIB}M",
            "-nographic", "-no-reboot", "-nodefaults", "-no-user-config", "-serial", "stdio", "-net", "none",
            "-kernel", kernel, "-initrd", initramfs, "-append", f"{append} {cmdline}".strip()]


def memory_for(initramfs: str) -> int:
    """Guest memory for an initramfs: MEMORY_FACTOR times what it unpacks to, rounded up to MiB, at least
    MIN_MEMORY. An archive that does not decode is given as much as if it unpacked to four times its size:
    the kernel says what is wrong with it. One that unpacks to more than MAX_UNPACKED is refused (give the
    memory instead)."""
    try:
        with open(initramfs, "rb") as f:
            unpacked = unpacked_size(f)
    except (OSError, EOFError, ValueError, lzma.LZMAError, zstandard.ZstdError):
        unpacked = os.path.getsize(initramfs) * 4
    if unpacked > MAX_UNPACKED:
        raise LimitExceeded(f"{initramfs} unpacks to more than {MAX_UNPACKED >> 30} GiB: give the guest's memory "
                            "(--memory, spec.verify.memory)")
    return max(MIN_MEMORY, math.ceil(unpacked * MEMORY_FACTOR / MIB) * MIB)


def unpacked_size(f: BinaryIO) -> int:
    """The archive's size once decompressed, counted up to just past MAX_UNPACKED; LZ4 legacy blocks are
    counted at their largest, undecoded."""
    head = f.read(6)
    f.seek(0)
    if head.startswith(blocklz4.MAGIC):
        f.seek(len(blocklz4.MAGIC))
        blocks = 0
        while blocks * blocklz4.BLOCK <= MAX_UNPACKED and len(size := f.read(4)) == 4:
            f.seek(struct.unpack("<I", size)[0], os.SEEK_CUR)
            blocks += 1
        return blocks * blocklz4.BLOCK
    with _decompressed(f, head) as stream:
        total = 0
        while total <= MAX_UNPACKED and (chunk := stream.read(CHUNK)):
            total += len(chunk)
        return total


def _decompressed(f: BinaryIO, head: bytes) -> AbstractContextManager[Any]:
    if head.startswith(b"\x1f\x8b"):
        return igzip.open(f, "rb")  # type: ignore[no-untyped-call,no-any-return]  # isal leaves open() unannotated
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(f)
    return nullcontext(f)


def run(argv: list[str], console: Console) -> Verdict:
    """Runs the VM until the console has a verdict (the timeout is the console's), then stops it."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while True:
                now = time.monotonic() - started
                verdict = console.verdict(now)
                if verdict:
                    return verdict
                if selector.select(timeout=0.1):
                    data = os.read(proc.stdout.fileno(), CHUNK)
                    if not data:  # the VM exited: what it printed is all in
                        proc.wait()
                        return console.verdict(time.monotonic() - started, stopped=True)  # type: ignore[return-value]
                    console.feed(data, time.monotonic() - started)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
