#!/usr/bin/env python3
"""initramfs-builder beside the inflate+compress floor and the original Rust tool, on two images.

Not a test: run it by hand, `python3 benchmarks/benchmark.py` (about 5 minutes; `--help` for options).

- Images: a `debootstrap --variant=minbase bookworm` root filesystem as one gzip layer, and a
  synthetic image of over 1 GB uncompressed in 9 layers with over 50k entries (the minbase layer,
  seven copies of its /usr under /opt with whiteouts and an opaque directory, and 20k small files),
  built once and cached under ~/.cache/initramfs-operator/bench.
- Sources: the OCI layout, and a TLS registry on 127.0.0.1 (Debian's docker-registry with a
  throwaway CA) serving both images to both tools. The Rust tool speaks HTTPS only and trusts
  OpenSSL's default locations, which its openssl-probe takes from SSL_CERT_FILE: that variable,
  set for its process alone, makes it trust the test CA and nothing is installed on the host.
- The same registry behind a relay that sends at most 50 MB/s (a registry across a network): our
  build beside downloading the layer alone, to show how much of the build overlaps the download.
- Our tool runs from the checkout's pure-Python sources, or with `--compiled` from the mypyc build
  (setup.py with INITRAMFS_MYPYC=1, built once into the cache as the tests build it).
- The Rust `initramfs-builder` 0.2.1 is installed with `cargo install` into the cache, once.
- Every pipeline runs `--runs` times (default 3), interleaved; the table shows the median wall
  time and peak RSS (GNU time's %M: the largest process of the pipeline) and the output size.
- The floor is what inflating the layers and compressing the result costs with the fastest tools
  at hand: `igzip -dc LAYERS | zstd -3 -T0`, and the same with sha256 and sha512 of the output
  (which every build computes), measured in the same run.

The issue's goals are printed as PASS/FAIL lines at the end; the exit code is 1 if any failed.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import _paths  # first: tests/ and operator/ on sys.path
from fixtures.compiled import compiled_engine
from fixtures.registry import Registry, start_registry

CACHE = Path(os.environ.get("INITRAMFS_TOOLS_CACHE", Path.home() / ".cache/initramfs-operator"))
BENCH = CACHE / "bench"
RUST_VERSION = "0.2.1"
RUST_ROOT = CACHE / f"rust-initramfs-builder-{RUST_VERSION}"
RUST_TOOL = RUST_ROOT / "bin/initramfs-builder"
# Debian package of each program the benchmark runs (cargo comes with rustup, not apt).
PREREQUISITES = {"debootstrap": "debootstrap", "igzip": "isal", "zstd": "zstd", "docker-registry": "docker-registry",
                 "skopeo": "skopeo", "openssl": "openssl", "sha256sum": "coreutils", "sha512sum": "coreutils",
                 "/usr/bin/time": "time", "cargo": "cargo"}
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MIB = 1 << 20

# The goals.
FLOOR_FACTOR = 1.5       # layout -> zstd within this factor of the inflate+compress floor
REGISTRY_EXTRA = 0.4     # seconds the loopback registry may add
SPEEDUP = {"zstd": 3.0, "gzip": 4.0}  # over the Rust tool, same image, same registry
RSS_LIMIT_MIB = 80       # for the minbase image
RSS_GROWTH = 1.2         # the large image's peak: within +20% of the minbase limit
LINEAR_SLACK = 1.2       # seconds per GB of the large image over the minbase image's
THROTTLE_MB_S = 50       # a registry this fast shows the download overlapping with the build (not a goal)
IN_MEMORY = "in memory"  # the variant whose file contents stay in memory (--memory-budget 4GiB)


# -- images

def minbase_rootfs() -> Path:
    root = BENCH / "rootfs"
    if not (root / "usr/bin").is_dir():
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(root)], check=True,
                       stdout=subprocess.DEVNULL)
    return root


@dataclass
class Layout:
    """An OCI layout written once into the cache: its layer blobs and uncompressed size."""

    path: Path
    layers: list[Path]
    uncompressed: int

    @property
    def compressed(self) -> int:
        return sum(p.stat().st_size for p in self.layers)


class LayoutWriter:
    def __init__(self, path: Path):
        self.path = path
        self.blobs = path / "blobs/sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.layers: list[tuple[dict[str, object], str, int]] = []  # descriptor, diff_id, uncompressed size

    def add_layer(self, fill: Callable[[tarfile.TarFile], None]) -> None:
        """A gzip -6 layer of what `fill` adds to a pax tar."""
        tmp = self.blobs / "layer.tmp"
        diff = hashlib.sha256()
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as gz:
            counted = _Tee(gz, diff)
            with tarfile.open(fileobj=counted, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                fill(tar)
        with open(tmp, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        size = tmp.stat().st_size
        tmp.rename(self.blobs / digest)
        self.layers.append(({"mediaType": LAYER_GZIP, "digest": f"sha256:{digest}", "size": size},
                            "sha256:" + diff.hexdigest(), counted.size))

    def finish(self, tag: str) -> Layout:
        config = self._blob(json.dumps({
            "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/bash"]},
            "rootfs": {"type": "layers", "diff_ids": [d for _, d, _ in self.layers]}}).encode(),
            "application/vnd.oci.image.config.v1+json")
        manifest = self._blob(json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config, "layers": [d for d, _, _ in self.layers]}).encode(),
            "application/vnd.oci.image.manifest.v1+json")
        manifest["annotations"] = {"org.opencontainers.image.ref.name": tag}
        (self.path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        info = {"layers": [d["digest"] for d, _, _ in self.layers], "uncompressed": sum(n for _, _, n in self.layers)}
        (self.path / "bench.json").write_text(json.dumps(info))
        (self.path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest]}))
        return load_layout(self.path)

    def _blob(self, data: bytes, media_type: str) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (self.blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


class _Tee:
    """The tar stream on its way to gzip: hashed for the diff_id, and counted."""

    def __init__(self, out: gzip.GzipFile, digest: "hashlib._Hash"):
        self._out, self._digest, self.size = out, digest, 0

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        self.size += len(data)
        return self._out.write(data)


def load_layout(path: Path) -> Layout:
    info = json.loads((path / "bench.json").read_text())
    return Layout(path, [path / "blobs/sha256" / d.split(":", 1)[1] for d in info["layers"]], info["uncompressed"])


def cached_layout(name: str, build: Callable[[LayoutWriter], None]) -> Layout:
    path = BENCH / name
    if (path / "index.json").exists():
        return load_layout(path)
    shutil.rmtree(path, ignore_errors=True)
    print(f"building the {name} image (once, cached in {path})", flush=True)
    writer = LayoutWriter(path)
    build(writer)
    return writer.finish("bench")


def minbase_image(root: Path) -> Layout:
    return cached_layout("minbase", lambda w: w.add_layer(lambda tar: tar.add(root, arcname=".")))


def large_image(root: Path) -> Layout:
    """Over 1 GB and 50k entries in 9 layers, with the layer rules at work: the minbase layer; seven
    copies of /usr under /opt/copyN, each later copy removing part of the one before it (a whiteout,
    an opaque directory); 20k small text files."""
    def build(w: LayoutWriter) -> None:
        w.add_layer(lambda tar: tar.add(root, arcname="."))
        for n in range(1, 8):
            def copy(tar: tarfile.TarFile, n: int = n) -> None:
                tar.add(root / "usr", arcname=f"opt/copy{n}/usr")
                if n > 1:
                    _whiteout(tar, f"opt/copy{n - 1}/usr/share/doc/.wh.{_first_child(root / 'usr/share/doc')}")
                    _whiteout(tar, f"opt/copy{n - 1}/usr/share/locale/.wh..wh..opq")
            w.add_layer(copy)
        w.add_layer(_small_files)
    return cached_layout("large", build)


def _first_child(directory: Path) -> str:
    return sorted(p.name for p in directory.iterdir())[0]


def _whiteout(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    tar.addfile(info, io.BytesIO())


def _small_files(tar: tarfile.TarFile, count: int = 20_000) -> None:
    words = [f"{w}{i}" for i, w in enumerate(("alpha", "beta", "gamma", "delta", "kernel", "init", "mount"))] * 40
    rng = random.Random(1)
    for i in range(count):
        body = " ".join(rng.choices(words, k=rng.randrange(10, 600))).encode() + b"\n"
        info = tarfile.TarInfo(f"srv/data/d{i // 500:03d}/f{i:05d}.txt")
        info.size, info.mode, info.mtime = len(body), 0o644, 1_700_000_000 + i
        tar.addfile(info, io.BytesIO(body))


# -- running things

@dataclass
class Sample:
    wall: float
    rss_mib: float
    output: int = 0
    sha256: str = ""


@dataclass
class Pipeline:
    image: str
    name: str
    command: list[str] | str
    output: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    same_as: str = ""  # pipelines with the same key must write the same bytes
    samples: list[Sample] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return statistics.median(s.wall for s in self.samples)

    @property
    def rss(self) -> float:
        return statistics.median(s.rss_mib for s in self.samples)

    @property
    def size(self) -> int:
        return self.samples[-1].output

    @property
    def digests(self) -> set[str]:
        return {s.sha256 for s in self.samples}


def run(p: Pipeline, work: Path) -> None:
    """Once, under GNU time: the wall clock here, the peak RSS of its largest process from time's %M
    (time forks the command from its own small process, so this script's memory is not counted)."""
    report = work / "time.out"
    shell = isinstance(p.command, str)
    command = ["bash", "-o", "pipefail", "-c", p.command] if shell else p.command
    if p.output:
        p.output.unlink(missing_ok=True)
    start = time.monotonic()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(report), *command], cwd=work,
                          env={**os.environ, "TMPDIR": str(work), **p.env}, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {p.command}\n{proc.stderr[-3000:]}")
    sample = Sample(wall, int(report.read_text().split()[-1]) / 1024)
    if p.output:
        sample.output = p.output.stat().st_size
        with open(p.output, "rb") as f:
            sample.sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    p.samples.append(sample)


def rust_tool() -> Path:
    if not RUST_TOOL.exists():
        print(f"installing the Rust initramfs-builder {RUST_VERSION} into {RUST_ROOT} (once)", flush=True)
        subprocess.run(["cargo", "install", "--quiet", "--locked", "initramfs-builder", "--version", RUST_VERSION,
                        "--root", str(RUST_ROOT)], check=True)
    return RUST_TOOL


def floor(image: str, layout: Layout) -> list[Pipeline]:
    layers = " ".join(str(p) for p in layout.layers)
    inflate_compress = f"igzip -dc {layers} | zstd -3 -T0 -q -c"
    return [Pipeline(image, "floor: igzip -dc | zstd -3 -T0", f"{inflate_compress} > /dev/null"),
            Pipeline(image, "floor + sha256, sha512", f"{inflate_compress} | tee >(sha256sum > /dev/null) "
                                                      f"| sha512sum > /dev/null")]


def ours(image: str, source: str, compression: str, work: Path, engine: Path, *extra: str,
         registry: Registry | None = None, variant: str = "") -> Pipeline:
    where = "registry" if registry else "layout"
    name = f"ours {where} -> {compression}" + (f", {variant}" if variant else "")
    out = work / ("".join(c if c.isalnum() or c in "-." else "_" for c in name) + f".{image}.img")
    tls = ["--ca-file", str(registry.ca_file)] if registry else []
    command = [sys.executable, "-m", "initramfs_operator.cli", "build", source, "-o", str(out), "-c", compression,
               "-q", "--scratch-dir", str(work), *tls, *extra]
    return Pipeline(image, name, command, out, {"PYTHONPATH": str(engine)},
                    same_as=f"{image} {where} {compression}")


def rust(image: str, reference: str, compression: str, registry: Registry, work: Path) -> Pipeline:
    out = work / f"rust-{image}-{compression}.img"
    return Pipeline(image, f"rust registry -> {compression}", [str(rust_tool()), "build", reference, "-o", str(out),
                                                                 "-c", compression], out,
                    {"SSL_CERT_FILE": str(registry.ca_file), "RUST_LOG": "warn"})


class Relay:
    """A TCP relay to the registry that counts the bytes it sends to clients, and sends at most `rate`
    bytes/s if given: a registry across a network, for the TLS connection passes through unchanged."""

    def __init__(self, upstream: str, rate: float | None = None):
        host, port = upstream.rsplit(":", 1)
        self.upstream, self.rate = (host, int(port)), rate
        self.sent = 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self.pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self.pipe, args=(server, client, True), daemon=True).start()

    def pipe(self, source: socket.socket, sink: socket.socket, to_client: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
                if to_client:
                    with self.lock:
                        self.sent += len(data)
                    if self.rate:
                        time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def take(self) -> int:
        """The bytes sent to clients since the last call."""
        with self.lock:
            sent, self.sent = self.sent, 0
        return sent


def throttled(image: str, layout: Layout, reference: str, registry: Registry, throttle: Relay,
              work: Path, engine: Path) -> list[Pipeline]:
    """Downloading the layers alone, and our build, through the throttle."""
    slow = reference.replace(registry.host, throttle.host, 1)
    repository = slow.rsplit(":", 1)[0]
    urls = " ".join(f"https://{throttle.host}/v2/{repository.split('/', 1)[1]}/blobs/sha256:{p.name}"
                    for p in layout.layers)
    variant = f"at {THROTTLE_MB_S} MB/s"
    build = ours(image, slow, "zstd", work, engine, registry=registry, variant=variant)
    build.same_as += " throttled"  # its own group: the generated /init names the reference, the relay's port
    return [Pipeline(image, f"download {variant}: curl", f"curl -sf --cacert {registry.ca_file} {urls} > /dev/null"),
            build]


# -- the goals

@dataclass
class Goals:
    lines: list[tuple[bool, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # measured, with no goal to meet

    def check(self, ok: bool, text: str) -> None:
        self.lines.append((ok, text))

    def print(self) -> bool:
        print()
        for ok, text in self.lines:
            print(f"{'PASS' if ok else 'FAIL'}  {text}")
        for text in self.notes:
            print(f"INFO  {text}")
        return all(ok for ok, _ in self.lines)


def judge(pipelines: dict[str, Pipeline], images: dict[str, Layout]) -> Goals:
    goals = Goals()

    def p(image: str, name: str) -> Pipeline:
        return pipelines[f"{image}/{name}"]

    floor_, layout_zstd = p("minbase", "floor: igzip -dc | zstd -3 -T0"), p("minbase", "ours layout -> zstd")
    goals.check(layout_zstd.wall <= FLOOR_FACTOR * floor_.wall,
                f"minbase, layout -> zstd: {layout_zstd.wall:.2f} s is {layout_zstd.wall / floor_.wall:.2f}x the floor "
                f"({floor_.wall:.2f} s; goal <= {FLOOR_FACTOR}x)")
    registry_zstd = p("minbase", "ours registry -> zstd")
    download = p("minbase", f"download at {THROTTLE_MB_S} MB/s: curl")
    slow = p("minbase", f"ours registry -> zstd, at {THROTTLE_MB_S} MB/s")
    overlap, extra = download.wall + registry_zstd.wall - slow.wall, slow.wall - download.wall
    goals.notes.append(f"minbase at {THROTTLE_MB_S} MB/s: the build takes {slow.wall:.2f} s, "
                       f"{extra:.2f} s more than downloading its layer alone ({download.wall:.2f} s); "
                       f"from the local registry it takes {registry_zstd.wall:.2f} s: {overlap:.2f} s of it overlap "
                       f"with the download")
    goals.check(registry_zstd.wall <= layout_zstd.wall + REGISTRY_EXTRA,
                f"minbase, registry -> zstd: {registry_zstd.wall:.2f} s, "
                f"{registry_zstd.wall - layout_zstd.wall:+.2f} s over the layout (goal <= +{REGISTRY_EXTRA} s)")
    for compression, factor in SPEEDUP.items():
        theirs, mine = p("minbase", f"rust registry -> {compression}"), p("minbase", f"ours registry -> {compression}")
        goals.check(theirs.wall >= factor * mine.wall,
                    f"minbase, registry -> {compression}: {theirs.wall / mine.wall:.1f}x faster than the Rust tool "
                    f"({mine.wall:.2f} s vs {theirs.wall:.2f} s; goal >= {factor}x)")
    def peak(image: str) -> float:
        """Our largest peak on `image` with the default memory budget."""
        return max(x.rss for x in pipelines.values() if x.image == image and x.name.startswith("ours")
                   and not x.name.endswith(IN_MEMORY))

    minbase_rss = peak("minbase")
    goals.check(minbase_rss <= RSS_LIMIT_MIB, f"minbase: peak RSS {minbase_rss:.0f} MiB, largest of our pipelines "
                                              f"with the default --memory-budget (goal <= {RSS_LIMIT_MIB} MiB)")
    if "large" in images:
        large_rss, limit = peak("large"), RSS_GROWTH * RSS_LIMIT_MIB
        goals.check(large_rss <= limit,
                    f"large: peak RSS {large_rss:.0f} MiB, {large_rss / minbase_rss - 1:+.0%} over minbase's "
                    f"(goal <= {limit:.0f} MiB: the minbase limit {RSS_GROWTH - 1:+.0%})")
        per_gb = {name: p(name, "ours layout -> zstd").wall / (images[name].uncompressed / 1e9) for name in images}
        goals.check(per_gb["large"] <= LINEAR_SLACK * per_gb["minbase"],
                    f"time linear in size: {per_gb['large']:.2f} s/GB for the large image, {per_gb['minbase']:.2f} "
                    f"s/GB for minbase (goal <= {LINEAR_SLACK}x)")
    for image in images:
        groups: dict[str, set[str]] = {}
        for x in pipelines.values():
            if x.image == image and x.same_as:
                groups.setdefault(x.same_as, set()).update(x.digests)
        builds = sum(len(x.samples) for x in pipelines.values() if x.image == image and x.same_as)
        goals.check(all(len(d) == 1 for d in groups.values()),
                    f"{image}: output bytes identical across runs, --threads 1 and the in-memory path "
                    f"({builds} builds, {len(groups)} source/format pairs, "
                    f"{sum(len(d) for d in groups.values())} distinct outputs)")
    return goals


# -- main

def missing_prerequisites() -> list[str]:
    return sorted({package for program, package in PREREQUISITES.items() if not shutil.which(program)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each pipeline, interleaved (default 3)")
    parser.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--skip-large", action="store_true", help="only the minbase image")
    parser.add_argument("--rust-large", action="store_true", help="run the Rust tool on the large image too (slow)")
    parser.add_argument("--compiled", action="store_true",
                        help="run our tool compiled by mypyc (setup.py, INITRAMFS_MYPYC=1; built once into the cache), "
                             "not the checkout's pure-Python sources")
    args = parser.parse_args()
    missing = missing_prerequisites()
    if missing:
        sys.exit(f"missing: apt-get install {' '.join(missing)}")
    rust_tool()
    engine = compiled_engine() if args.compiled else _paths.REPO / "operator"
    print(f"our tool: {'compiled by mypyc' if args.compiled else 'pure Python'}, from {engine}", flush=True)
    root = minbase_rootfs()
    images = {"minbase": minbase_image(root)}
    if not args.skip_large:
        images["large"] = large_image(root)
    with tempfile.TemporaryDirectory(dir=args.work, prefix="initramfs-bench-") as tmp:
        work = Path(tmp)
        registry, server = start_registry(work / "registry", tls=True)
        try:
            throttle = Relay(registry.host, THROTTLE_MB_S * 1e6)
            pipelines = plan(images, registry, throttle, work, engine, args.rust_large)
            for i in range(args.runs):
                print(f"run {i + 1}/{args.runs}", flush=True)
                for p in pipelines.values():
                    run(p, work)
        finally:
            server.terminate()
            server.wait(10)
    print_table(pipelines, images)
    sys.exit(0 if judge(pipelines, images).print() else 1)


def plan(images: dict[str, Layout], registry: Registry, throttle: Relay, work: Path, engine: Path,
         rust_large: bool) -> dict[str, Pipeline]:
    pipelines: list[Pipeline] = []
    for image, layout in images.items():
        reference = registry.push(layout.path, "bench", repo=f"bench/{image}")
        local = f"oci:{layout.path}:bench"
        pipelines += floor(image, layout)
        pipelines += [ours(image, local, "zstd", work, engine),
                      ours(image, local, "zstd", work, engine, "--threads", "1", variant="--threads 1"),
                      ours(image, local, "zstd", work, engine, "--memory-budget", "4GiB", variant=IN_MEMORY),
                      ours(image, reference, "zstd", work, engine, registry=registry),
                      ours(image, reference, "gzip", work, engine, registry=registry),
                      ours(image, reference, "gzip", work, engine, "--threads", "1", registry=registry,
                           variant="--threads 1")]
        if image == "minbase":
            pipelines += throttled(image, layout, reference, registry, throttle, work, engine)
        if image == "minbase" or rust_large:
            pipelines += [rust(image, reference, compression, registry, work) for compression in ("zstd", "gzip")]
    return {f"{p.image}/{p.name}": p for p in pipelines}


def print_table(pipelines: dict[str, Pipeline], images: dict[str, Layout]) -> None:
    print()
    for name, layout in images.items():
        print(f"{name}: {len(layout.layers)} layers, {layout.compressed / 1e6:.0f} MB compressed, "
              f"{layout.uncompressed / 1e6:.0f} MB of tar")
    print(f"\n{'image':<9}{'pipeline':<38}{'wall s':>8}{'peak MiB':>10}{'output MB':>11}   runs: wall s")
    for p in pipelines.values():
        output = f"{p.size / 1e6:11.1f}" if p.output else f"{'':11}"
        runs = " ".join(f"{s.wall:.2f}" for s in p.samples)
        print(f"{p.image:<9}{p.name:<38}{p.wall:8.2f}{p.rss:10.0f}{output}   {runs}")


if __name__ == "__main__":
    main()
