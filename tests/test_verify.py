"""`initramfs-builder verify`: the console judge, one table; and the real thing, Debian's kernel in qemu
(TCG) booting a good build and three that must not pass."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.images import Layout, busybox_entries
from initramfs_operator import build
from initramfs_operator.boot import machine
from initramfs_operator.boot.console import BOOT_FAILED, BOOT_TIMEOUT, BOOTED, MAX_LINE, TAIL_LINES, Console
from initramfs_operator.oci import layout

CLI = [sys.executable, "-m", "initramfs_operator.cli"]
RUN = b"[    2.0] Run /init as init process\n"

# (console bytes with the time each arrives, success pattern, seconds judged at, stopped) -> (reason, message)
JUDGED = [
    ("init ran and settled", [(RUN, 1)], None, 6, False, (BOOTED, "ran /init for 5s")),
    ("init ran, not settled yet", [(RUN, 1)], None, 5.5, False, None),
    ("init ran, then the kernel panicked", [(RUN, 1), (b"Kernel panic - not syncing: Attempted to kill init!\n", 2)],
     None, 2, False, (BOOT_FAILED, "the kernel panicked: Attempted to kill init!")),
    ("init not executable", [(b"Run /init as init process\nFailed to execute /init (error -8)\n", 1)], None, 1,
     False, (BOOT_FAILED, "could not execute /init (error -8)")),
    ("archive cut", [(b"Initramfs unpacking failed: read error\n", 1), (RUN, 2)], None, 9, False,
     (BOOT_FAILED, "could not unpack the initramfs: read error")),
    ("nothing in time", [(b"booting\n", 1)], None, 120, False, (BOOT_TIMEOUT, "waited for the kernel running init")),
    ("VM stopped before init", [(b"qemu: could not load kernel\n", 0)], None, 1, True,
     (BOOT_FAILED, "stopped before the kernel ran init")),
    ("init powered off after running: booted", [(RUN, 1), (b"reboot: Power down\n", 2)], None, 2, True,
     (BOOTED, "ran /init")),
    ("success pattern seen and settled", [(RUN, 1), (b"app: ready\n", 3)], r"ready$", 6, False,
     (BOOTED, "matching 'ready$'")),
    ("success pattern not yet", [(RUN, 1)], r"ready$", 60, False, None),
    ("success pattern never", [(RUN, 1)], r"ready$", 120, False, (BOOT_TIMEOUT, "waited for a line matching")),
    ("a panic line split across reads", [(RUN, 1), (b"Kernel pa", 2), (b"nic - not syncing: x\n", 2)], None, 2,
     False, (BOOT_FAILED, "panicked: x")),
    ("control characters never reach the message", [(b"Initramfs unpacking failed: \x1b[31mbad\x07\n", 1)], None, 1,
     False, (BOOT_FAILED, "unpack the initramfs: ?[31mbad?")),
]


@pytest.mark.parametrize(("chunks", "success", "at", "stopped", "expected"), [row[1:] for row in JUDGED],
                         ids=[row[0] for row in JUDGED])
def test_the_console_judge(chunks, success, at, stopped, expected) -> None:
    console = Console(5, 120, re.compile(success) if success else None)
    for data, when in chunks:
        console.feed(data, when)
    verdict = console.verdict(at, stopped)
    if expected is None:
        assert verdict is None
    else:
        assert (verdict.reason, expected[1] in verdict.message) == (expected[0], True), verdict


def test_a_flood_of_console_output_is_bounded() -> None:
    console = Console(5, 120)
    for i in range(2000):
        console.feed(b"x" * 100_000 + b"\n", i / 1000)
    assert len(console.partial) < MAX_LINE and len(console.tail) == TAIL_LINES
    assert all(len(line) <= 120 for line in console.tail)


@pytest.mark.parametrize("unpacked, memory", [
    (1 << 20, machine.MIN_MEMORY),                        # small: the floor
    ((100 << 20) + 1, 401 << 20),                         # 4x, rounded up to MiB
    ((256 << 20) + 1, None),                              # beyond MAX_UNPACKED (here 256 MiB): refused
])
def test_guest_memory_comes_from_a_bounded_count_of_what_the_archive_unpacks_to(unpacked, memory, tmp_path,
                                                                                 monkeypatch) -> None:
    import gzip

    from initramfs_operator.errors import LimitExceeded

    monkeypatch.setattr(machine, "MAX_UNPACKED", 256 << 20)  # the real bound is 16 GiB: as costly to test
    archive = tmp_path / "initramfs.cpio.gz"
    with gzip.open(archive, "wb", compresslevel=1) as f:  # a bomb in small: zeros compress a thousandfold
        for _ in range(unpacked >> 20):
            f.write(bytes(1 << 20))
        f.write(bytes(unpacked & ((1 << 20) - 1)))
    if memory is None:
        with pytest.raises(LimitExceeded, match="unpacks to more than"):
            machine.memory_for(str(archive))
    else:
        assert machine.memory_for(str(archive)) == memory


@pytest.mark.parametrize(("args", "said"), [
    (["/nonexistent.cpio", "--kernel-file", "k"], "no such file"),
    ([__file__], "--kernel IMAGE (with --kernel-path) or as --kernel-file FILE"),
    ([__file__, "--kernel-file", "k", "--kernel", "oci:x"], "or as --kernel-file FILE"),
    ([__file__, "--kernel-file", "k", "--success-regex", "("], "--success-regex: missing )"),
    ([__file__, "--kernel-file", "k", "--platform", "linux/s390x"], "verification boots linux/amd64, linux/arm64"),
])
def test_a_verification_that_cannot_work_is_a_usage_error(args, said) -> None:
    done = subprocess.run([*CLI, "verify", *args], capture_output=True, text=True)
    assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr, done.stderr


# --- booted for real ------------------------------------------------------------------------------------------

GOOD_INIT = "#!/bin/sh\nmount -t proc proc /proc\necho verify-me-ready\nexec sleep 600\n"


def verify(initramfs: Path, kernel_image: str, *args: str) -> tuple[int, dict]:
    done = subprocess.run([*CLI, "verify", str(initramfs), "--kernel", kernel_image, "--json", "--result-file",
                           str(initramfs) + ".json", *args], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stderr
    return done.returncode, json.loads(Path(str(initramfs) + ".json").read_text())


def built(tmp_path: Path, root: list, name: str) -> Path:
    lay = Layout(tmp_path / f"layout-{name}")
    lay.tag(lay.image([root]), name)
    out = tmp_path / f"{name}.cpio.gz"
    build.build_file(layout.load(f"{lay.root}:{name}"), str(out), build.BuildOptions())
    return out


def test_a_busybox_build_boots_and_is_verified(kernel_image, busybox_static, tmp_path) -> None:
    good = built(tmp_path, busybox_entries(busybox_static, GOOD_INIT), "good")
    code, result = verify(good, kernel_image, "--success-regex", "^verify-me-ready$")
    assert code == 0 and result["reason"] == "Booted", result
    assert "verify-me-ready" in result["console"] and result["kernelImage"].startswith(kernel_image + "@sha256:")
    assert result["memory"] == 256 << 20  # 4x a 2 MiB archive is under the floor


@pytest.mark.parametrize("bad", ["wrong-architecture", "missing-interpreter", "cut-tail"])
def test_a_build_that_cannot_boot_fails_verification(bad, kernel_image, busybox_static, busybox_arm64,
                                                    tmp_path) -> None:
    if bad == "wrong-architecture":  # every binary, /bin/sh included, is arm64's: no fallback either
        image = built(tmp_path, busybox_entries(busybox_arm64, GOOD_INIT), bad)
        said = "could not execute /init (error -8)"
    elif bad == "missing-interpreter":
        image = built(tmp_path, busybox_entries(busybox_static, "#!/nonexistent/sh\necho never\n"), bad)
        said = "could not execute /init (error -2)"
    else:
        whole = built(tmp_path, busybox_entries(busybox_static, GOOD_INIT), bad).read_bytes()
        image = tmp_path / "cut.cpio.gz"
        image.write_bytes(whole[: len(whole) * 2 // 3])
        said = "could not unpack the initramfs"
    code, result = verify(image, kernel_image)
    assert (code, result["reason"]) == (6, "BootFailed"), result
    assert said in result["error"] and "last console lines:" in result["error"]
