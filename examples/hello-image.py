#!/usr/bin/env python3
"""Writes the example image, an OCI image layout, from Debian's busybox-static: no network.

    python3 examples/hello-image.py DIR [ARM64_BUSYBOX]    ->    oci:DIR:hello

Two layers (busybox, then the app), and a config whose Entrypoint, Env, WorkingDir and
User the generated /init honours. With ARM64_BUSYBOX (busybox-static:arm64's bin/busybox) the
image has two platforms, linux/amd64 and linux/arm64, in an index.
"""

import gzip
import hashlib
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

APPLETS = ("sh", "echo", "cat", "id", "ls", "mount", "mkdir", "poweroff", "sleep", "su", "uname")
APP = """#!/bin/sh
echo "hello from $(uname -sr) as $(id -un) in $(pwd): $GREETING"
poweroff -f
"""


def layer(entries) -> tuple[bytes, str]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, data, mode in entries:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = mode, 1_700_000_000
            info.type = {"dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE, "link": tarfile.SYMTYPE}[kind]
            if kind == "link":
                info.linkname = data
                t.addfile(info)
            else:
                info.size = len(data) if kind == "file" else 0
                t.addfile(info, io.BytesIO(data) if kind == "file" else None)
    tar = raw.getvalue()
    return gzip.compress(tar, mtime=0), "sha256:" + hashlib.sha256(tar).hexdigest()


def main(root: Path, arm64_busybox: Path | None) -> None:
    busybox = shutil.which("busybox")
    if not busybox:
        sys.exit("busybox is missing: apt-get install busybox-static")
    blobs = root / "blobs/sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def blob(data: bytes, media_type: str) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    def image(arch: str, busybox: Path) -> dict:
        base = [("bin", "dir", b"", 0o755), ("etc", "dir", b"", 0o755),
                ("bin/busybox", "file", busybox.read_bytes(), 0o755),
                ("etc/passwd", "file", b"root:x:0:0:root:/root:/bin/sh\nhello:x:1000:1000::/home/hello:/bin/sh\n",
                 0o644)]
        base += [(f"bin/{a}", "link", "busybox", 0o777) for a in APPLETS]
        app = [("srv", "dir", b"", 0o755), ("srv/hello", "dir", b"", 0o755),
               ("srv/hello/app", "file", APP.encode(), 0o755)]
        layers = [layer(base), layer(app)]
        config = {"architecture": arch, "os": "linux",
                  "config": {"Entrypoint": ["/srv/hello/app"], "Env": ["PATH=/bin", "GREETING=it boots"],
                             "WorkingDir": "/srv/hello", "User": "hello"},
                  "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]}}
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"),
                    "layers": [blob(data, "application/vnd.oci.image.layer.v1.tar+gzip") for data, _ in layers]}
        return blob(json.dumps(manifest).encode(), manifest["mediaType"])

    desc = image("amd64", Path(busybox).resolve())
    if arm64_busybox:
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
            {**desc, "platform": {"os": "linux", "architecture": "amd64"}},
            {**image("arm64", arm64_busybox), "platform": {"os": "linux", "architecture": "arm64"}}]}
        desc = blob(json.dumps(index).encode(), index["mediaType"])
    desc["annotations"] = {"org.opencontainers.image.ref.name": "hello"}
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    print(f"oci:{root}:hello")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "out/hello-image"),
         Path(sys.argv[2]) if len(sys.argv) > 2 else None)
