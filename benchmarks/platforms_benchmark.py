#!/usr/bin/env python3
"""Two platforms in one build against each platform alone, in the same run.

Not a test: run it by hand, `python3 benchmarks/platforms_benchmark.py [--minbase]`.

Images (OCI layouts, built here; nothing installed):
- busybox: Debian's busybox-static for amd64 (the host's) and arm64 (`apt-get download`, as the tests do);
- minbase (--minbase): `debootstrap --foreign --variant=minbase bookworm` for amd64 and for arm64, each one
  gzip layer. --foreign runs only the first stage (unpacking), which needs no arm64 emulator: the tree is
  the packages' files, unconfigured, within a few percent of a configured minbase in bytes and entries.

Each build is `initramfs-builder build oci:LAYOUT:multi` with gzip, `--platform linux/amd64`,
`--platform linux/arm64`, then `--platform linux/amd64,linux/arm64`, best of --repeat wall times.
"""

import argparse
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _paths  # noqa: F401  (sys.path: the tests' fixtures, this checkout's package)
from fixtures.images import Layout, busybox_entries

CACHE = Path(os.environ.get("INITRAMFS_TOOLS_CACHE", Path.home() / ".cache/initramfs-operator"))
INIT = "#!/bin/sh\necho hello\n"


def busybox_arm64() -> Path:
    directory = CACHE / "busybox-arm64"
    if not (directory / "bin/busybox").exists():
        directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "busybox-static:arm64"], cwd=directory, check=True)
        subprocess.run(["dpkg-deb", "-x", str(sorted(directory.glob("*.deb"))[-1]), str(directory)], check=True)
    return directory / "bin/busybox"


def busybox_layout(root: Path) -> Path:
    layout = Layout(root)
    host = Path(shutil.which("busybox") or "/bin/busybox").resolve()
    images = [layout.image([busybox_entries(path, INIT)], platform=("linux", arch, ""))
              for arch, path in (("amd64", host), ("arm64", busybox_arm64()))]
    layout.tag(layout.index(images), "multi")
    return root


def minbase_layout(root: Path, scratch: Path) -> Path:
    layout = Layout(root)
    images = []
    for arch in ("amd64", "arm64"):
        tree = scratch / f"minbase-{arch}"
        subprocess.run(["debootstrap", "--foreign", "--variant=minbase", f"--arch={arch}", "bookworm", str(tree)],
                       check=True, stdout=subprocess.DEVNULL)
        raw = subprocess.run(["tar", "-C", str(tree), "--numeric-owner", "-c", "."], check=True,
                             stdout=subprocess.PIPE).stdout
        layer = layout.blob(gzip.compress(raw, 6, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip")
        config = {"architecture": arch, "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                  "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(raw).hexdigest()}"]}}
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": layout.blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"),
                    "layers": [layer]}
        desc = layout.blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
        images.append({**desc, "platform": {"os": "linux", "architecture": arch}})
        print(f"minbase {arch}: {len(raw) / 1e6:.0f} MB tar, {layer['size'] / 1e6:.0f} MB gzip layer", file=sys.stderr)
    layout.tag(layout.index(images), "multi")
    return root


def timed(layout: Path, platforms: str, out: Path, repeat: int) -> tuple[float, list[int]]:
    best, sizes = float("inf"), []
    for _ in range(repeat):
        for f in out.glob("*"):
            f.unlink()
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "initramfs_operator.cli", "build", f"oci:{layout}:multi",
                               "--platform", platforms, "-o", str(out / "initramfs-{arch}.cpio.gz"), "--json",
                               "--quiet", "--source-date-epoch", "0"], check=True, capture_output=True, text=True)
        best = min(best, time.monotonic() - start)
        result = json.loads(done.stdout)
        sizes = [p["size"] for p in result.get("platforms") or [result]]
    return best, sizes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minbase", action="store_true", help="also Debian minbase (about 2 minutes more)")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    os.environ["PYTHONPATH"] = str(_paths.REPO / "operator")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images = {"busybox": busybox_layout(work / "busybox")}
        if args.minbase:
            images["minbase"] = minbase_layout(work / "minbase", work)
        out = work / "out"
        out.mkdir()
        print(f"{'image':<8} {'platforms':<24} {'wall s':>7}  sizes (bytes)")
        for name, layout in images.items():
            for platforms in ("linux/amd64", "linux/arm64", "linux/amd64,linux/arm64"):
                seconds, sizes = timed(layout, platforms, out, args.repeat)
                print(f"{name:<8} {platforms:<24} {seconds:>7.2f}  {sizes}")


if __name__ == "__main__":
    main()
