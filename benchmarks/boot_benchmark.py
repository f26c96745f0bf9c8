#!/usr/bin/env python3
"""What each compression costs a microVM at every start: the kernel's time to unpack the initramfs.

Not a test: run it by hand, `python3 benchmarks/boot_benchmark.py` (about 20 minutes on 2 cores;
`--help` for options).

- Images: a busybox root (Debian's busybox-static with its applets) and the `debootstrap
  --variant=minbase bookworm` root that benchmarks/benchmark.py builds and caches (one gzip layer).
- Each codec and level is built by the CLI from the OCI layout, with an /init that prints a marker:
  wall time and CPU time (median of `--builds`, default 3, interleaved; a build over 15 s runs once)
  and output size.
- Each output boots `--boots` times (default 3) in qemu's microvm with TCG and one vCPU, Debian's
  kernel (examples/kernel.sh). The unpack time is read from the guest's own clock: the printk
  timestamps of `Trying to unpack rootfs image as initramfs` and `Freeing initrd memory` (written
  once the archive is unpacked and the initrd freed). `initramfs_async=0` makes the boot wait for
  the unpacking, so no other initcall runs beside it. A boot counts only if /init printed the marker.
- The guest's clock counts instructions (`-icount shift=0`: one nanosecond each): the host's load,
  which other work on a shared machine changes from one second to the next, does not reach it, and
  every boot of one output measures the same. `--real-time` gives the guest the host's clock
  instead (what a TCG guest has by default): as loaded as the host is.
- TCG translates every guest instruction: absolute times are several times what a KVM guest takes.
  Only the ratios between codecs may carry over to Firecracker, Cloud Hypervisor or Kata. As a check
  on them, each output is also decompressed natively on the host by the codec's own tool (`gzip -dc`,
  `zstd -dc`, `lz4 -dc`, `xz -dc`; `cat` for none), median of `--boots`: where the two columns of
  ratios disagree, the emulator's cost model is showing.

The issue's goal is printed as PASS/FAIL lines at the end; the exit code is 1 if one failed.
"""

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import _paths
from benchmark import minbase_image, minbase_rootfs
from fixtures.boot import APPEND
from fixtures.images import Layout, busybox_entries

MARKER = "initramfs-boot-benchmark-init"
INIT = f"#!/bin/sh\necho {MARKER}\nexec sleep 60\n"
UNPACK_START = re.compile(r"^\[\s*(\d+\.\d+)\] Trying to unpack rootfs image as initramfs", re.M)
UNPACK_END = re.compile(r"^\[\s*(\d+\.\d+)\] Freeing initrd memory", re.M)
# What the boots ask of the kernel besides fixtures.boot's console and TSC settings.
KERNEL_ARGS = f"{APPEND} printk.time=1 initramfs_async=0"
ONCE = 15.0  # seconds: a build slower than this is not repeated
PREREQUISITES = {"qemu-system-x86_64": "qemu-system-x86", "busybox": "busybox-static", "debootstrap": "debootstrap",
                 "dpkg-deb": "dpkg", "lz4": "lz4", "xz": "xz-utils", "zstd": "zstd"}
DECOMPRESS = {"none": ["cat"], "gzip": ["gzip", "-dc"], "zstd": ["zstd", "-dcq"], "lz4": ["lz4", "-dcq"],
              "xz": ["xz", "-dc"]}

# (compression, level): the kernel's codecs, each at its default level and one that trades build time for size.
CODECS = [("none", None), ("gzip", 6), ("gzip", 9), ("zstd", 3), ("zstd", 19), ("lz4", 1), ("lz4", 9), ("xz", 6)]
BASELINE = ("gzip", 6)

# The issue's goal: minbase -> lz4 unpacks in at most a third of gzip -6's time, and builds no slower than zstd -3.
GOAL_IMAGE, GOAL_CODEC, GOAL_UNPACK_SHARE, GOAL_BUILD_PEER = "minbase", ("lz4", 1), 1 / 3, ("zstd", 3)


@dataclass
class Result:
    image: str
    codec: tuple[str, int | None]
    output: Path
    builds: list[float] = field(default_factory=list)  # wall seconds
    cpu: list[float] = field(default_factory=list)  # user + system seconds
    size: int = 0
    unpacks: list[float] = field(default_factory=list)  # guest seconds
    host: list[float] = field(default_factory=list)  # wall seconds of the native decompressor

    @property
    def name(self) -> str:
        compression, level = self.codec
        return compression if level is None else f"{compression} -{level}"

    @property
    def build(self) -> float:
        return statistics.median(self.builds)

    @property
    def build_cpu(self) -> float:
        return statistics.median(self.cpu)

    @property
    def unpack(self) -> float:
        return statistics.median(self.unpacks)

    @property
    def host_decompress(self) -> float:
        return statistics.median(self.host)


def busybox_image(work: Path) -> str:
    lay = Layout(work / "busybox")
    lay.tag(lay.image([busybox_entries(Path(shutil.which("busybox") or "busybox").resolve(), None)],
                      config={"Cmd": ["/bin/sh"]}), "bench")
    return f"oci:{lay.root}:bench"


def build(source: str, codec: tuple[str, int | None], init: Path, out: Path, work: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one build by the CLI."""
    compression, level = codec
    command = [sys.executable, "-m", "initramfs_operator.cli", "build", source, "-o", str(out), "-c", compression,
               "-q", "--init", str(init), "--scratch-dir", str(work)]
    if level is not None:
        command += ["--level", str(level)]
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(_paths.REPO / "operator")})
    wall, after = time.monotonic() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def unpack_time(kernel: Path, initrd: Path, memory_mb: int, real_time: bool, timeout: float = 900) -> float:
    """Boots once; the guest's seconds from the start of the unpacking to the initrd's release."""
    clock = [] if real_time else ["-icount", "shift=0,sleep=off"]
    command = ["qemu-system-x86_64", "-M", "microvm", "-accel", "tcg", *clock, "-smp", "1", "-m", str(memory_mb),
               "-nographic", "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd), "-append", KERNEL_ARGS]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    console = b""
    deadline = time.monotonic() + timeout
    try:
        os.set_blocking(proc.stdout.fileno(), False)
        while MARKER.encode() not in console:
            chunk = proc.stdout.read(1 << 16)
            if chunk:
                console += chunk
            elif proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"{initrd.name}: /init never printed its marker; the console ended with:\n"
                         + console.decode(errors="replace")[-3000:])
            else:
                time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    text = console.decode(errors="replace")
    start, end = UNPACK_START.search(text), UNPACK_END.search(text)
    if not (start and end):
        sys.exit(f"{initrd.name}: no unpack timestamps on the console:\n{text[-3000:]}")
    return float(end.group(1)) - float(start.group(1))


def host_decompress(compression: str, path: Path) -> float:
    with open(path, "rb") as f:
        start = time.monotonic()
        subprocess.run(DECOMPRESS[compression], stdin=f, stdout=subprocess.DEVNULL, check=True)
    return time.monotonic() - start


def kernel() -> Path:
    fetched = subprocess.run([str(_paths.REPO / "examples/kernel.sh")], check=True, capture_output=True, text=True)
    return Path(fetched.stdout.strip())


def measure(image: str, source: str, builds: int, boots: int, vmlinuz: Path, init: Path, work: Path,
            real_time: bool) -> list[Result]:
    results = [Result(image, codec, work / f"{image}.{codec[0]}{codec[1] or ''}.img") for codec in CODECS]
    for _ in range(builds):  # interleaved, builds and boots: a spell of load on the host spreads over every codec
        for r in results:
            if not r.builds or r.builds[0] < ONCE:
                wall, cpu = build(source, r.codec, init, r.output, work)
                r.builds.append(wall)
                r.cpu.append(cpu)
    for r in results:
        r.size = r.output.stat().st_size
        print(f"{image}: built {r.name} in {r.build:.2f} s, {r.size / 1e6:.1f} MB", flush=True)
    # The guest holds the initrd and what it unpacks to: 4x the archive is room enough.
    memory = max(256, 4 * next(r.size for r in results if r.codec == ("none", None)) >> 20)
    for _ in range(boots):
        for r in results:
            r.unpacks.append(unpack_time(vmlinuz, r.output, memory, real_time))
            r.host.append(host_decompress(r.codec[0], r.output))
    for r in results:
        r.output.unlink()
    return results


def print_table(results: list[Result], real_time: bool) -> None:
    clock = "the host's clock" if real_time else "one nanosecond per instruction, -icount"
    print(f"\nunpack: the kernel's own clock ({clock}; printk timestamps), median of the boots. qemu TCG")
    print("inflates absolute times several-fold: compare the ratios to gzip -6, not the milliseconds.")
    print("host: the codec's own tool decompressing on the host, natively, for comparison.\n")
    print(f"{'image':<9}{'codec':<9}{'build s':>9}{'cpu s':>7}{'output MB':>11}{'unpack ms':>11}{'x gzip -6':>11}"
          f"{'host ms':>9}{'x gzip -6':>11}   boots: unpack ms")
    for r in results:
        baseline = next(b for b in results if b.image == r.image and b.codec == BASELINE)
        boots = " ".join(f"{u * 1e3:.0f}" for u in r.unpacks)
        print(f"{r.image:<9}{r.name:<9}{r.build:9.2f}{r.build_cpu:7.2f}{r.size / 1e6:11.1f}{r.unpack * 1e3:11.0f}"
              f"{r.unpack / baseline.unpack:11.2f}{r.host_decompress * 1e3:9.0f}"
              f"{r.host_decompress / baseline.host_decompress:11.2f}   {boots}")


def judge(results: list[Result]) -> bool:
    def of(codec: tuple[str, int | None]) -> Result:
        return next(r for r in results if r.image == GOAL_IMAGE and r.codec == codec)

    lz4, gzip, zstd = of(GOAL_CODEC), of(BASELINE), of(GOAL_BUILD_PEER)
    unpack_ok, build_ok = lz4.unpack <= GOAL_UNPACK_SHARE * gzip.unpack, lz4.build <= zstd.build
    goal = f"{GOAL_IMAGE} -> {lz4.name}"
    print(f"\n{'PASS' if unpack_ok else 'FAIL'}  {goal}: kernel unpack {lz4.unpack * 1e3:.0f} ms, "
          f"{lz4.unpack / gzip.unpack:.3f}x {gzip.name}'s {gzip.unpack * 1e3:.0f} ms "
          f"(goal <= {GOAL_UNPACK_SHARE:.3f}x)")
    print(f"{'PASS' if build_ok else 'FAIL'}  {goal}: build {lz4.build:.2f} s ({lz4.build_cpu:.2f} s CPU), "
          f"{zstd.name}'s {zstd.build:.2f} s ({zstd.build_cpu:.2f} s CPU) (goal: no slower)")
    return unpack_ok and build_ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builds", type=int, default=3, help="builds of each output, interleaved (default 3)")
    parser.add_argument("--boots", type=int, default=3, help="boots of each output, interleaved (default 3)")
    parser.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--skip-minbase", action="store_true", help="only the busybox image (a few minutes)")
    parser.add_argument("--real-time", action="store_true", help="the guest's clock follows the host's, not its "
                                                                 "instruction count (load on the host shows)")
    args = parser.parse_args()
    missing = sorted({package for program, package in PREREQUISITES.items() if not shutil.which(program)})
    if missing:
        sys.exit(f"missing: apt-get install {' '.join(missing)}")
    vmlinuz = kernel()
    clock = "the host's clock" if args.real_time else "-icount shift=0"
    print(f"kernel {vmlinuz.name}, qemu microvm TCG 1 vCPU, {clock}, append: {KERNEL_ARGS}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory(dir=args.work, prefix="initramfs-boot-bench-") as tmp:
        work = Path(tmp)
        init = work / "init"
        init.write_text(INIT)
        init.chmod(0o755)
        images = {"busybox": busybox_image(work)}
        if not args.skip_minbase:
            images["minbase"] = f"oci:{minbase_image(minbase_rootfs()).path}:bench"
        results = [r for image, source in images.items()
                   for r in measure(image, source, args.builds, args.boots, vmlinuz, init, work, args.real_time)]
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print_table(results, args.real_time)
    if args.skip_minbase:
        return
    sys.exit(0 if judge(results) else 1)


if __name__ == "__main__":
    main()
