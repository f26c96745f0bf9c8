#!/usr/bin/env python3
"""Wall time and peak memory of initramfs-builder beside the reference pipeline
(`umoci unpack` + `find | sort | cpio -o -H newc` + `gzip -6` / `zstd -3 -T0`), for two image sizes.

Not a test: run it by hand, `python3 tests/benchmark.py`. The root filesystem is a
`debootstrap --variant=minbase bookworm` tree (cached); the larger image adds a second
layer holding another copy of /usr, so the image roughly doubles while entries do too.
"""

import argparse
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

CACHE = Path(os.environ.get("INITRAMFS_TOOLS_CACHE", Path.home() / ".cache/initramfs-operator")) / "bench"


def rootfs() -> Path:
    root = CACHE / "rootfs"
    if not (root / "usr/bin").is_dir():
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(root)], check=True,
                       stdout=subprocess.DEVNULL)
    return root


def write_layer(blobs: Path, source: Path, arcname_prefix: str = "", subdir: str = "") -> tuple[dict, str]:
    tmp = blobs / "layer.tmp"
    diff = hashlib.sha256()
    with open(tmp, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as gz:
            class Tee:
                def write(self, b):
                    diff.update(b)
                    return gz.write(b)
            with tarfile.open(fileobj=Tee(), mode="w|", format=tarfile.PAX_FORMAT) as t:
                start = source / subdir if subdir else source
                t.add(start, arcname=arcname_prefix or ".", recursive=True)
    with open(tmp, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    size = tmp.stat().st_size
    tmp.rename(blobs / digest)
    return ({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": f"sha256:{digest}",
             "size": size}, "sha256:" + diff.hexdigest())


def make_image(root: Path, layout: Path, doubled: bool) -> None:
    if (layout / "index.json").exists():
        return
    blobs = layout / "blobs/sha256"
    blobs.mkdir(parents=True)
    layers = [write_layer(blobs, root)]
    if doubled:
        layers.append(write_layer(blobs, root, "opt/usr-copy", "usr"))

    def blob(data: bytes, media_type: str) -> dict:
        d = hashlib.sha256(data).hexdigest()
        (blobs / d).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{d}", "size": len(data)}

    config = blob(json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/bash"]},
                              "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]}}).encode(),
                  "application/vnd.oci.image.config.v1+json")
    manifest = blob(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                "config": config, "layers": [l for l, _ in layers]}).encode(),
                    "application/vnd.oci.image.manifest.v1+json")
    manifest["annotations"] = {"org.opencontainers.image.ref.name": "bench"}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest]}))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


def measure(cmd: list[str] | str, cwd: str | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS in MiB of the command and everything it ran (the largest process;
    this script stays small so the forked child's pre-exec copy of it does not dominate)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, shell=isinstance(cmd, str), cwd=cwd, stdout=subprocess.DEVNULL,
                            executable="/bin/bash" if isinstance(cmd, str) else None)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {cmd}")
    return wall, usage.ru_maxrss / 1024


def reference(layout: Path, work: Path, compressor: str) -> tuple[float, float, int]:
    bundle = work / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    out = work / "reference.img"
    t1, m1 = measure(["umoci", "unpack", "--image", f"{layout}:bench", str(bundle)])
    t2, m2 = measure(f"cd {bundle}/rootfs && find . | LC_ALL=C sort | cpio -o -H newc --quiet | {compressor} > {out}")
    size = out.stat().st_size
    shutil.rmtree(bundle)
    return t1 + t2, max(m1, m2), size


def ours(layout: Path, work: Path, compression: str) -> tuple[float, float, int]:
    out = work / "ours.img"
    wall, rss = measure([sys.executable, "-m", "initramfs_operator.cli", "build", f"oci:{layout}:bench", "-o",
                         str(out), "-c", compression, "-q", "--scratch-dir", str(work)])
    return wall, rss, out.stat().st_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    args = p.parse_args()
    root = rootfs()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        print(f"{'image':<30}{'pipeline':<26}{'wall s':>8}{'peak MiB':>10}{'output MB':>11}")
        for label, doubled in (("minbase", False), ("minbase + /usr copy", True)):
            layout = CACHE / ("layout-doubled" if doubled else "layout")
            make_image(root, layout, doubled)
            blobs = sum(f.stat().st_size for f in (layout / "blobs/sha256").iterdir())
            label = f"{label} ({blobs / 1e6:.0f} MB)"
            for compression, compressor in (("gzip", "gzip -6"), ("zstd", "zstd -3 -T0 -q")):
                for name, fn in ((f"reference {compression}", lambda: reference(layout, work, compressor)),
                                 (f"initramfs-builder {compression}", lambda: ours(layout, work, compression))):
                    wall, rss, size = fn()
                    print(f"{label:<30}{name:<26}{wall:8.2f}{rss:10.0f}{size / 1e6:11.1f}", flush=True)


if __name__ == "__main__":
    main()
