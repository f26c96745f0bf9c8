"""`initramfs-builder`: build, verify, inspect, list-layers and remove.

Exit codes: 0 success, 1 unexpected failure, 2 usage, 3 registry or authentication,
4 invalid image, 5 output, 6 boot failed, 7 boot timed out.
"""

import argparse
import dataclasses
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from . import __version__, build, progress
from .archive import compress, output
from .archive.cpio import Writer
from .boot import console, kernel, machine
from .errors import BootFailed, BootTimeout, BuildError, LimitExceeded, OutputError, UsageError
from .oci import reference, registry, source
from .oci.image import DEFAULT_PLATFORM, Descriptor, Image, Layer, Platform
from .oci.layer import Limits
from .rootfs.edit import Injection
from .rootfs.scratch import MEMORY_BUDGET
from .rootfs.tree import Tree

BASE_NAME = "org.opencontainers.image.base.name"
BASE_DIGEST = "org.opencontainers.image.base.digest"
CREATED = "org.opencontainers.image.created"

IMAGE_HELP = ("registry reference (alpine, ghcr.io/org/app:1.0, host:5000/app@sha256:...), "
              "oci:DIR[:TAG|@DIGEST] (OCI image layout) or docker-archive:FILE[:REPO:TAG] (docker save)")


def _registry_options(args: argparse.Namespace) -> registry.RegistryOptions:
    password = None
    if getattr(args, "password_stdin", False):
        if not args.username:
            raise UsageError("--password-stdin needs --username")
        password = sys.stdin.readline().rstrip("\r\n")
    elif args.username:
        raise UsageError("--username needs --password-stdin (passwords are never taken on the command line)")
    # Credential and CA files are read only when a registry is involved: a local build ignores them.
    uses_registry = any(source.is_registry(spec) for spec in _images(args)) or bool(getattr(args, "push", None))
    return registry.RegistryOptions(
        insecure=tuple(args.insecure_registry),
        ca_certs=registry.read_ca_file(args.ca_file) if args.ca_file and uses_registry else None,
        keychain=_keychain(args.username, password, args.registry_config) if uses_registry else registry.Keychain(),
        cache_dir=getattr(args, "cache_dir", None), scratch_dir=getattr(args, "scratch_dir", None),
        cache_max_bytes=_cache_max_bytes(args))


def _images(args: argparse.Namespace) -> list[str]:
    """The images the command reads."""
    if args.command == "verify":
        return [spec for spec in (args.kernel, None if os.path.exists(args.initramfs) else args.initramfs) if spec]
    return [args.image]


def _cache_max_bytes(args: argparse.Namespace) -> int | None:
    if not getattr(args, "cache_max_size", None):
        return None
    if not args.cache_dir:
        raise UsageError("--cache-max-size needs --cache-dir")
    return _size(args.cache_max_size, "--cache-max-size")


def _keychain(username: str | None, password: str | None, config_files: list[str]) -> registry.Keychain:
    """--username/--password-stdin for every registry, else the --registry-config files' entries (for each
    registry, the first file that has it wins), else the user's docker config with its credential helpers."""
    if username:
        return registry.Keychain(fallback=registry.Credentials(username, password or ""))
    if config_files:
        return registry.Keychain.first_match([registry.Keychain.from_file(p) for p in config_files])
    default = _default_docker_config()
    return registry.Keychain.from_file(default, helpers=True) if default else registry.Keychain()


def _default_docker_config() -> str | None:
    """Where docker login leaves credentials, as the docker CLI looks for them."""
    path = os.path.join(os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker"), "config.json")
    return path if os.path.isfile(path) else None


ALL_PLATFORMS = "all"
PLACEHOLDERS = ("{platform}", "{arch}")
MAX_PLATFORMS = 32  # one build each: an index that offers more is refused rather than built


def _platforms(args: argparse.Namespace) -> list[Platform] | None:
    """The platforms asked for, in order; None for `all` (every platform the image has)."""
    if not args.platform:
        return [Platform(args.platform_os or DEFAULT_PLATFORM.os, args.platform_arch or DEFAULT_PLATFORM.architecture
                         ).normalized()]
    if args.platform_os or args.platform_arch:
        raise UsageError("use either --platform or --platform-os/--platform-arch")
    if args.platform.strip() == ALL_PLATFORMS:
        return None
    try:
        wanted = [Platform.parse(text.strip()) for text in args.platform.split(",")]
    except ValueError as e:
        raise UsageError(str(e)) from None
    if len(set(wanted)) != len(wanted):
        raise UsageError(f"--platform {args.platform}: a platform is named twice")
    if len(wanted) > MAX_PLATFORMS:
        raise UsageError(f"--platform: {len(wanted)} platforms, at most {MAX_PLATFORMS} in one build")
    return wanted


def _all_platforms(args: argparse.Namespace, reg: registry.RegistryOptions) -> list[Platform]:
    platforms = source.platforms(args.image, reg)
    if len(platforms) > MAX_PLATFORMS:
        raise LimitExceeded(f"{args.image}: the index offers {len(platforms)} platforms, more than the "
                            f"{MAX_PLATFORMS} one build takes: name the ones to build with --platform")
    return platforms


def _output_paths(args: argparse.Namespace, platforms: list[Platform], several: bool) -> dict[Platform, str]:
    """The file each platform is written to, each checked: one name per platform."""
    extension = compress.EXTENSIONS[args.compression]
    template = args.output if args.output is not None else ("initramfs-{arch}" if several else "initramfs") + extension
    if not template:
        output.check_target(template)  # refused, as every path that cannot be a file
    if several and not any(p in template for p in PLACEHOLDERS):
        raise UsageError(f"-o {template}: several platforms need one file each: put {{arch}} or {{platform}} "
                         f"in the name, e.g. initramfs-{{arch}}{extension}")
    paths = {p: p.expand(template) for p in platforms}
    if len(set(paths.values())) != len(paths):
        raise UsageError(f"-o {template}: platforms {', '.join(map(str, platforms))} would share a file name; "
                         f"use {{platform}}")
    for path in paths.values():
        output.check_target(path)
    return paths


def _source_date_epoch(args: argparse.Namespace) -> int | None:
    value = args.source_date_epoch if args.source_date_epoch is not None else os.environ.get("SOURCE_DATE_EPOCH")
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"source date epoch {value!r} is not an integer number of seconds") from None


SIZE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
              "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40}


def _size(text: str, flag: str) -> int:
    """Bytes, with an optional unit as Kubernetes quantities write them, B optional: 16GiB, 16Gi, 500M, 1048576."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgt]i?)?b?\s*", text, re.IGNORECASE)
    if not match:
        raise UsageError(f"{flag} {text!r}: expected a size such as 16GiB, 500M or 1048576")
    return int(match.group(1)) * SIZE_UNITS[(match.group(2) or "").lower()]


def _check_scratch(args: argparse.Namespace) -> None:
    """A scratch path that cannot work is a usage error, found before any download."""
    if args.scratch_dir is not None and not os.path.isdir(args.scratch_dir):
        raise UsageError(f"--scratch-dir {args.scratch_dir}: no such directory")


def cmd_build(args: argparse.Namespace) -> dict[str, Any]:
    if args.output is not None and args.push:
        raise UsageError("choose one of -o/--output and --push")
    if args.push_by_digest and not args.push:
        raise UsageError("--push-by-digest goes with --push")
    epoch = _source_date_epoch(args)
    options = build.BuildOptions(
        compression=args.compression, level=args.level, threads=args.threads, init=args.init,
        inject=[Injection.parse(s) for s in args.inject], exclude=args.exclude, source_date_epoch=epoch,
        scratch_dir=args.scratch_dir, memory_budget=_size(args.memory_budget, "--memory-budget"),
        limits=Limits(_size(args.max_uncompressed_size, "--max-uncompressed-size"), args.max_entries))
    _check_scratch(args)
    wanted = _platforms(args)
    reg = _registry_options(args)
    # parsed here, once: a bad destination (or one that is not a tag) fails before any download
    target = registry.push_target(args.push) if args.push else None
    several = wanted is None or len(wanted) > 1
    # Checked before the registry is asked anything; `all`'s names once its platforms are known.
    paths = _output_paths(args, wanted or [], several) if target is None else {}
    platforms = wanted if wanted is not None else _all_platforms(args, reg)
    if target is None and wanted is None:
        paths = _output_paths(args, platforms, several)
    for path in paths.values():
        output.check_target(path)
    if several and args.push_by_digest:
        raise UsageError("--push-by-digest pushes one platform's artifact: name one --platform")
    shown = progress.for_stream(sys.stderr, args.quiet)
    try:
        if not several:
            return _build_one(args, platforms[0], options, reg, target, paths, shown)
        return _build_several(args, platforms, options, reg, target, paths, shown)
    finally:
        shown.close()


@dataclass
class Built:
    """One platform's build: what build_file says, the index its image was chosen from, and the manifest
    pushed (None for a file)."""
    result: build.Result
    index_digest: str | None
    pushed: Descriptor | None = None


def _build_platform(args: argparse.Namespace, platform: Platform, options: build.BuildOptions,
                    reg: registry.RegistryOptions, target: reference.Reference | None, path: str,
                    shown: progress.Progress, tag: str | None) -> Built:
    """Builds one platform into `path`, or (with a target) pushes it, to `tag` or by digest only."""
    def warn(message: str) -> None:
        shown.print(f"initramfs-builder: warning: {message}")

    with source.load(args.image, platform, reg) as image:
        if target is None:
            result = build.build_file(image, path, options, shown, args.create_dirs, warn)
            return Built(result, image.index_digest)
        with tempfile.TemporaryDirectory(dir=args.scratch_dir, prefix="initramfs-push-") as tmp:
            local = os.path.join(tmp, path)
            result = build.build_file(image, local, options, shown, warn=warn)
            media_type = registry.ARTIFACT_TYPE + ".cpio" + compress.MEDIA_SUFFIX[args.compression]
            with shown.upload(result.size) as sent:
                pushed = registry.push_manifest(
                    local, target, media_type=media_type,
                    annotations=_base_annotations(image, args.image, options.source_date_epoch),
                    subject=_subject(image, args.image, target), options=dataclasses.replace(reg, on_bytes=sent),
                    tag=tag)
        return Built(result, image.index_digest, pushed)


def _build_one(args: argparse.Namespace, platform: Platform, options: build.BuildOptions,
               reg: registry.RegistryOptions, target: reference.Reference | None, paths: dict[Platform, str],
               shown: progress.Progress) -> dict[str, Any]:
    if target is None:
        built = _build_platform(args, platform, options, reg, None, paths[platform], shown, None)
        return {"output": os.path.abspath(paths[platform]), **_result(built.result)}
    tag = None if args.push_by_digest else target.tag
    built = _build_platform(args, platform, options, reg, target, "initramfs" + compress.EXTENSIONS[args.compression],
                            shown, tag)
    assert built.pushed is not None
    digest = built.pushed.digest
    return {"reference": f"{target.name}@{digest}", **({"tag": tag} if tag else {}), "digest": digest,
            **_result(built.result)}


def _build_several(args: argparse.Namespace, platforms: list[Platform], options: build.BuildOptions,
                   reg: registry.RegistryOptions, target: reference.Reference | None, paths: dict[Platform, str],
                   shown: progress.Progress) -> dict[str, Any]:
    """Every platform, side by side; files appear only once all are built, an index only once every platform's
    artifact is pushed."""
    extension = compress.EXTENSIONS[args.compression]
    staged = {p: _staged(path) for p, path in paths.items()}
    try:
        built = _each_platform(platforms, options, shown, lambda p, opts, beside: _build_platform(
            args, p, opts, reg, target, staged.get(p) or p.expand("initramfs-{arch}" + extension), beside, None))
        for p, path in paths.items():
            try:
                os.replace(staged[p], path)
            except OSError as e:
                raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        for path in staged.values():
            with suppress(FileNotFoundError):
                os.unlink(path)
    first = built[0].result
    entries = []
    for p, b in zip(platforms, built, strict=True):
        entry = {k: v for k, v in _result(b.result).items() if k not in ("image", "compression")}
        if b.pushed is None:
            entry["output"] = os.path.abspath(paths[p])
        else:
            # Its reference is the index's repository @ this digest; not repeated, so that the result of a
            # few platforms fits a Kubernetes termination message (4 KiB), how the operator reads it.
            entry["digest"] = b.pushed.digest
        entries.append(entry)
    out: dict[str, Any] = {"image": first.image, "imageDigest": built[0].index_digest, "compression": first.compression,
                           "platforms": entries}
    if target is None:
        return out
    index = registry.push_index(target, [_index_entry(p, b) for p, b in zip(platforms, built, strict=True)],
                                {BASE_NAME: args.image, BASE_DIGEST: built[0].index_digest or first.image_digest},
                                reg)
    return {"reference": f"{target.name}@{index}", "tag": target.tag, "digest": index, **out}


def _staged(path: str) -> str:
    """Where a platform's file waits, beside its final name, until every platform is built."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.{os.getpid()}.staged")


def _index_entry(platform: Platform, built: Built) -> Descriptor:
    assert built.pushed is not None
    fields = {"os": platform.os, "architecture": platform.architecture}
    if platform.variant:
        fields["variant"] = platform.variant
    return Descriptor(built.pushed.media_type, built.pushed.digest, built.pushed.size, platform=fields,
                      artifact_type=built.pushed.artifact_type)


class Cancelled(Exception):
    """Another platform failed: this one stops at its next phase."""


class _Beside(progress.Progress):
    """The progress of one platform built beside others: none on the screen (one redrawn line cannot follow
    several builds at once), warnings through the command's, and a stop at the next phase once another
    platform failed."""

    def __init__(self, platform: Platform, shown: progress.Progress, stop: threading.Event):
        self.platform, self.shown, self.stop = platform, shown, stop

    def _going_on(self) -> None:
        if self.stop.is_set():
            raise Cancelled(str(self.platform))

    def layer(self, layer: Layer, number: int, count: int) -> AbstractContextManager[Layer]:
        self._going_on()
        return super().layer(layer, number, count)

    def archive(self, compression: str, tree: Tree, writer: Writer) -> AbstractContextManager[None]:
        self._going_on()
        return super().archive(compression, tree, writer)

    def upload(self, size: int) -> AbstractContextManager[Callable[[int], None]]:
        self._going_on()
        return super().upload(size)

    def print(self, message: str) -> None:
        self.shown.print(message)


T = TypeVar("T")


def _each_platform(platforms: list[Platform], options: build.BuildOptions, shown: progress.Progress,
                   work: Callable[[Platform, build.BuildOptions, progress.Progress], T]) -> list[T]:
    """`work` for every platform, as many at once as there are --threads (each with its share of the threads and
    of the memory budget, which changes no output byte); the first failure stops the others and is raised."""
    threads = options.threads or compress.default_threads()
    workers = max(1, min(len(platforms), threads))
    share = dataclasses.replace(options, threads=max(1, threads // workers),
                                memory_budget=options.memory_budget // workers)
    stop = threading.Event()

    def run(platform: Platform) -> T:
        try:
            return work(platform, share, _Beside(platform, shown, stop))
        except BuildError as e:
            if not str(e).startswith(f"{platform}: "):  # a failed platform names itself
                e.args = (f"{platform}: {e}", *e.args[1:])
            raise

    with ThreadPoolExecutor(workers, thread_name_prefix="platform") as pool:
        futures = [pool.submit(run, p) for p in platforms]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
        finally:
            stop.set()  # a no-op once all are done; else a failure or a signal: the others stop
        errors = [e for e in (f.exception() for f in futures) if e is not None and not isinstance(e, Cancelled)]
        if errors:
            raise errors[0]
        return [f.result() for f in futures]


def _result(r: build.Result) -> dict[str, Any]:
    out = asdict(r)
    out["imageDigest"] = out.pop("image_digest")
    return out


def _base_annotations(image: Image, spec: str, epoch: int | None) -> dict[str, str]:
    annotations = {BASE_NAME: spec, BASE_DIGEST: image.index_digest or image.digest}
    if epoch is not None:
        annotations[CREATED] = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return annotations


def _subject(image: Image, spec: str, target: reference.Reference) -> Descriptor | None:
    """The artifact refers to its source image when both live in the same repository."""
    if not source.is_registry(spec):
        return None
    src = reference.parse(spec.removeprefix("docker://"))
    return image.descriptor if (src.registry, src.repository) == (target.registry, target.repository) else None


def cmd_verify(args: argparse.Namespace) -> dict[str, Any]:
    """Boots the initramfs in a microVM and judges its serial console (boot/console.py)."""
    if bool(args.kernel) == bool(args.kernel_file):
        raise UsageError("give the kernel as --kernel IMAGE (with --kernel-path) or as --kernel-file FILE")
    try:
        success = re.compile(args.success_regex) if args.success_regex is not None else None
    except re.error as e:
        raise UsageError(f"--success-regex: {e}") from None
    if args.settle_seconds < 0 or args.timeout_seconds <= 0 or args.cpus < 1:
        raise UsageError("--settle-seconds must be >= 0, --timeout-seconds and --cpus > 0")
    if not os.path.exists(args.initramfs) and "@" not in args.initramfs:
        raise UsageError(f"{args.initramfs}: no such file (an artifact in a registry is named by digest: "
                         "host/repository@sha256:...)")
    platform = _one_platform(args, "verify boots one platform")
    machine.machine_for(platform)  # a platform that cannot boot fails before any download
    reg = _registry_options(args)
    with tempfile.TemporaryDirectory(dir=args.scratch_dir, prefix="initramfs-verify-") as tmp:
        initramfs = args.initramfs if os.path.exists(args.initramfs) else \
            _artifact(args.initramfs, reg, os.path.join(tmp, "initramfs"))
        if args.kernel:
            found = kernel.extract(args.kernel, args.kernel_path, platform, reg, os.path.join(tmp, "kernel"))
            kernel_file, kernel_image = found.path, found.image
        else:
            kernel_file, kernel_image = args.kernel_file, None
        memory = _size(args.memory, "--memory") if args.memory else machine.memory_for(initramfs)
        argv = machine.command(platform, kernel_file, initramfs, memory, args.cpus, args.kvm, args.cmdline or "")
        started = time.monotonic()
        verdict = machine.run(argv, console.Console(args.settle_seconds, args.timeout_seconds, success))
    lines = "".join(f"\n  {line}" for line in verdict.console)
    if not verdict.booted:
        error = BootTimeout if verdict.reason == console.BOOT_TIMEOUT else BootFailed
        raise error(f"{verdict.message}; last console lines:{lines}")
    return {"reason": verdict.reason, "message": verdict.message, "seconds": round(time.monotonic() - started, 1),
            "memory": memory, "accelerator": "kvm" if args.kvm else "tcg", "platform": str(platform),
            **({"kernelImage": kernel_image} if kernel_image else {}), "console": list(verdict.console)}


def _artifact(spec: str, reg: registry.RegistryOptions, dest: str) -> str:
    """An initramfs artifact pushed by `build --push`, by digest, into `dest`."""
    from .oci.registry import artifact

    layer = artifact.layer_of(spec, reg)

    def save(reader: Any) -> None:
        with open(dest, "wb") as out:
            while chunk := reader.read(1 << 20):
                out.write(chunk)

    artifact.read_layer(spec, layer, reg, save)
    return dest


def cmd_remove(args: argparse.Namespace) -> dict[str, Any]:
    removed = output.remove(args.root, args.paths)
    return {"removed": removed, "missing": [p for p in args.paths if p not in removed]}


def cmd_inspect(args: argparse.Namespace) -> dict[str, Any]:
    """One platform's description; with several (or `all`), the image and each platform's."""
    reg = _registry_options(args)
    wanted = _platforms(args)
    platforms = wanted if wanted is not None else _all_platforms(args, reg)
    described = []
    for platform in platforms:
        with source.load(args.image, platform, reg) as image:
            described.append(_description(image))
    if wanted is not None and len(wanted) == 1:
        return described[0]
    first = described[0]
    return {"image": first["image"], "indexDigest": first["indexDigest"], "platforms": first["platforms"],
            "images": described}


def _description(image: Image) -> dict[str, Any]:
    """What `inspect` shows: the manifest, config and layer descriptors (no layer is downloaded)."""
    c = image.config
    return {"image": image.name, "digest": image.digest, "indexDigest": image.index_digest,
            "platform": str(c.platform), "platforms": sorted({str(p) for p in image.platforms}),
            "config": {"Entrypoint": c.entrypoint, "Cmd": c.cmd, "Env": c.env, "WorkingDir": c.working_dir,
                       "User": c.user},
            "layers": [{"mediaType": layer.descriptor.media_type, "digest": layer.descriptor.digest,
                        "size": layer.descriptor.size} for layer in image.layers]}


def _one_platform(args: argparse.Namespace, why: str) -> Platform:
    wanted = _platforms(args)
    if wanted is None or len(wanted) > 1:
        raise UsageError(f"{why}: name one with --platform")
    return wanted[0]


def cmd_list_layers(args: argparse.Namespace) -> dict[str, Any]:
    _one_platform(args, "list-layers lists one platform's layers (inspect shows several)")
    return {"layers": cmd_inspect(args)["layers"]}


def _print_human(command: str, out: dict[str, Any]) -> None:
    if command == "remove":
        print("\n".join([f"removed {p}" for p in out["removed"]] + [f"not there: {p}" for p in out["missing"]]))
        return
    if command == "build":
        _print_build(out)
        return
    if command == "inspect" and "images" in out:
        for i, image in enumerate(out["images"]):
            if i:
                print()
            _print_human(command, image)
        return
    if command == "verify":
        print(f"{out['reason']}: {out['message']} ({out['seconds']}s, {out['accelerator']}, "
              f"{out['memory'] >> 20} MiB)")
        return
    layers = out["layers"]
    if command == "inspect":
        print(f"Image:      {out['image']}\nDigest:     {out['digest']}")
        if out["indexDigest"]:
            print(f"Index:      {out['indexDigest']}")
        print(f"Platform:   {out['platform']}\nPlatforms:  {', '.join(out['platforms'])}")
        for key, value in out["config"].items():
            print(f"{key + ':':<11} {json.dumps(value) if isinstance(value, list) else value}")
        print("Layers:")
    for layer in layers:
        print(f"  {layer['digest']}  {layer['size']:>12}  {layer['mediaType'] or '(unspecified)'}")


def _print_build(out: dict[str, Any]) -> None:
    if "platforms" not in out:
        where = out.get("output") or out["reference"]
        print(f"wrote {where}: {out['size']} bytes, {out['entries']} entries, {out['compression']}, "
              f"init: {out['init']}\nsha256:{out['sha256']}\nsource: {out['image']}@{out['imageDigest']} "
              f"({out['platform']})")
        return
    if "reference" in out:
        print(f"pushed {out['reference']} (tag {out['tag']}): an index of {len(out['platforms'])} platforms")
    for p in out["platforms"]:
        where = p.get("output") or f"{out['reference'].rpartition('@')[0]}@{p['digest']}"
        print(f"{p['platform']}: wrote {where}: {p['size']} bytes, {p['entries']} "
              f"entries, {out['compression']}, init: {p['init']}\n  sha256:{p['sha256']}")
    print(f"source: {out['image']}" + (f"@{out['imageDigest']}" if out["imageDigest"] else ""))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="initramfs-builder", description="Turn a container image into a bootable "
                                "initramfs (cpio newc, compressed) for microVMs.",
                                epilog="Exit codes: 0 ok, 2 usage, 3 registry/auth, 4 invalid image, 5 output, "
                                       "6 boot failed, 7 boot timeout.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser, image: bool = True) -> None:
        if image:
            sp.add_argument("image", metavar="IMAGE", help=IMAGE_HELP)
        g = sp.add_argument_group("image selection and registry access")
        g.add_argument("--platform", help="os/arch[/variant] to select from a multi-platform image "
                                          "(default linux/amd64); several, comma-separated, or 'all' for every "
                                          "platform of the image: build writes one file each (-o with {arch} "
                                          "or {platform}) or pushes one index of them")
        g.add_argument("--platform-os", help=argparse.SUPPRESS)
        g.add_argument("--platform-arch", help=argparse.SUPPRESS)
        g.add_argument("--username", "-u", help="registry user name (with --password-stdin)")
        g.add_argument("--password-stdin", action="store_true", help="read the registry password from stdin")
        g.add_argument("--registry-config", "--authfile", action="append", default=[], metavar="FILE",
                       help="docker config.json or Kubernetes .dockerconfigjson with registry credentials "
                            "(its auths only, as the kubelet reads it); repeatable, the first file with an entry "
                            "for a registry wins (default: $DOCKER_CONFIG/config.json or ~/.docker/config.json, "
                            "with its credential helpers, as docker runs them)")
        g.add_argument("--insecure-registry", action="append", default=[], metavar="HOST[:PORT]",
                       help="talk plain HTTP to this registry (repeatable)")
        g.add_argument("--ca-file", metavar="FILE", help="extra CA certificates (PEM) to trust for registries")
        sp.add_argument("--json", action="store_true", help="print one JSON object instead of text")

    b = sub.add_parser("build", help="build an initramfs from an image",
                       description="Pull IMAGE, flatten its layers as a container runtime would, add /init and "
                                   "the boot essentials (/dev/console, /proc, /sys, ...), and write a reproducible "
                                   "compressed cpio newc archive, or push it as an OCI artifact.")
    common(b)
    o = b.add_argument_group("output")
    o.add_argument("-o", "--output", metavar="FILE", help="file to write, atomically (default initramfs.cpio.gz, "
                                                           ".cpio.zst, .cpio.lz4, .cpio.xz or .cpio by compression); "
                                                           "{arch} (amd64, arm64, armv7) or {platform} (linux-arm64) "
                                                           "in the name are the platform's, one file each "
                                                           "(default initramfs-{arch}.cpio.gz for several)")
    o.add_argument("--create-dirs", action="store_true", help="create the output file's missing parent directories")
    o.add_argument("--push", metavar="REF", help="push the initramfs to REF as an OCI artifact instead (several "
                                                 "platforms: an OCI image index of one artifact each)")
    o.add_argument("--push-by-digest", action="store_true", help="with --push: push one platform's artifact by "
                                                                 "digest only, leaving REF's tag as it is (the "
                                                                 "operator pushes the index of several itself)")
    o.add_argument("-c", "--compression", choices=list(compress.FORMATS), default="gzip",
                   help="compression (default gzip)")
    o.add_argument("--level", type=int, help="compression level (gzip 1-9, default 6; zstd 1-19, default 3; "
                                             "lz4 1-12, default 1, 3 and up is LZ4 HC; xz 0-9, default 6)")
    o.add_argument("--threads", type=int, help="compression threads (default: CPUs, at most 8), shared by the "
                                               "platforms built at once (at most this many); the output does not "
                                               "depend on it")
    o.add_argument("--source-date-epoch", metavar="SECONDS",
                   help="clamp every mtime to this time (default: $SOURCE_DATE_EPOCH)")
    o.add_argument("--result-file", metavar="FILE", help="also write the JSON result (or error) to FILE, "
                                                          "e.g. a Kubernetes termination log")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    c = b.add_argument_group("content")
    c.add_argument("--init", metavar="FILE", help="install FILE as /init (default: keep the image's /init, "
                                                  "or generate one from Entrypoint, Cmd, Env, WorkingDir, User)")
    c.add_argument("--inject", action="append", default=[], metavar="SRC:DEST[:MODE]",
                   help="add a host file at DEST (octal MODE, default the file's); write SRC=DEST[:MODE] or "
                        "escape ':' as '\\:' when SRC contains ':' (repeatable)")
    c.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="drop matching paths; leading / optional, * within a directory, ** across "
                        "directories, a matched directory goes with its contents (repeatable)")
    c.add_argument("--cache-dir", metavar="DIR", help="content-addressed cache of downloaded layers, safe to share "
                                                     "between builds running at the same time")
    c.add_argument("--cache-max-size", metavar="SIZE", help="after the build, evict the least recently used layers "
                                                           "until --cache-dir holds at most SIZE (layers another "
                                                           "build is using stay)")
    c.add_argument("--scratch-dir", metavar="DIR", help="where file contents wait while the archive is "
                                                        "written (default $TMPDIR)")
    c.add_argument("--memory-budget", metavar="SIZE", default=f"{MEMORY_BUDGET >> 20}MiB",
                   help="keep file contents in memory instead while they add up to at most SIZE "
                        f"(default {MEMORY_BUDGET >> 20}MiB; 0: always in --scratch-dir)")
    limits = b.add_argument_group("limits", "what one image may cost; a build over a limit fails (exit 4)")
    limits.add_argument("--max-uncompressed-size", metavar="SIZE", default="16GiB",
                        help="decompressed layers, and file contents kept for the archive, each at most SIZE "
                             "(default 16GiB; units K, M, G, T decimal, Ki, Mi, Gi, Ti or KiB... binary)")
    limits.add_argument("--max-entries", metavar="N", type=int, default=Limits.max_entries,
                        help=f"tar entries in all layers together (default {Limits.max_entries})")
    b.set_defaults(func=cmd_build)

    v = sub.add_parser("verify", help="boot an initramfs in a microVM and judge its serial console",
                       description="Boot INITRAMFS with a kernel in qemu (TCG unless --kvm) and judge the serial "
                                   "console: the kernel must run init and then neither panic, nor fail to execute "
                                   "init, nor report an unpacking error for --settle-seconds; with "
                                   "--success-regex a console line must match it within --timeout-seconds. "
                                   "Exit 0: booted, 6: boot failed, 7: no verdict in time.")
    v.add_argument("initramfs", metavar="INITRAMFS", help="the initramfs file, or a registry reference by digest "
                                                          "to an artifact written by build --push")
    common(v, image=False)
    k = v.add_argument_group("kernel and machine")
    k.add_argument("--kernel", metavar="IMAGE", help=f"the image holding the kernel ({IMAGE_HELP}), for --platform")
    k.add_argument("--kernel-path", default=kernel.DEFAULT_PATH, metavar="PATH",
                   help=f"the kernel's path in --kernel (default {kernel.DEFAULT_PATH}; symlinks are followed)")
    k.add_argument("--kernel-file", metavar="FILE", help="a kernel file on this machine instead of --kernel")
    k.add_argument("--cmdline", metavar="ARGS", help="kernel arguments added after console=, rdinit=/init and "
                                                     "panic=-1")
    k.add_argument("--memory", metavar="SIZE", help=f"guest memory (default {machine.MEMORY_FACTOR}x what the "
                                                    f"archive unpacks to, at least {machine.MIN_MEMORY >> 20}MiB)")
    k.add_argument("--cpus", type=int, default=2, help="guest CPUs (default 2)")
    k.add_argument("--kvm", action="store_true", help="use /dev/kvm instead of TCG emulation")
    k.add_argument("--scratch-dir", metavar="DIR", help="where the kernel and a pulled initramfs wait "
                                                        "(default $TMPDIR)")
    j = v.add_argument_group("verdict")
    j.add_argument("--settle-seconds", type=float, default=5.0,
                   help="how long init must run without a panic (default 5)")
    j.add_argument("--timeout-seconds", type=float, default=120.0,
                   help="how long the whole boot may take to a verdict (default 120)")
    j.add_argument("--success-regex", metavar="RE", help="a console line must match this (Python re) as well")
    v.add_argument("--result-file", metavar="FILE", help="also write the JSON result (or error) to FILE")
    v.set_defaults(func=cmd_verify)

    rm = sub.add_parser("remove", help="remove built files from a directory (the operator's cleanup Jobs)",
                        description="Remove each PATH, relative to --root, never following symlinks out of it; "
                                    "a PATH already gone is not an error.")
    rm.add_argument("paths", nargs="+", metavar="PATH")
    rm.add_argument("--root", required=True, metavar="DIR", help="the directory PATHs are relative to")
    rm.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    rm.set_defaults(func=cmd_remove)

    inspect = sub.add_parser("inspect", help="show an image's digest, platforms, config and layers")
    common(inspect)
    inspect.set_defaults(func=cmd_inspect)
    list_layers = sub.add_parser("list-layers", help="list an image's layers")
    common(list_layers)
    list_layers.set_defaults(func=cmd_list_layers)
    return p


class Interrupted(BaseException):
    """A termination signal, raised where the program was, so that every cleanup on the way out runs
    (the temp output file, scratch, downloads)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


TERMINATING = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def _interrupt(signum: int, frame: object) -> None:
    for s in TERMINATING:  # a second signal must not cut the cleanup short
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        # a signal that was ignored when we started (nohup) stays ignored
        previous = {s: signal.signal(s, _interrupt) for s in TERMINATING if signal.getsignal(s) != signal.SIG_IGN}
    try:
        return _run(args)
    except Interrupted as e:
        print(f"initramfs-builder: interrupted by {e}; temporary files removed", file=sys.stderr)
        return 128 + e.signum
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _run(args: argparse.Namespace) -> int:
    result_file = getattr(args, "result_file", None)
    try:
        out = args.func(args)
        _write_result(result_file, out)
    except BuildError as e:
        print(f"initramfs-builder: error: {e}", file=sys.stderr)
        with suppress(OutputError):  # the error is on stderr and in the exit code whatever happens to the file
            _write_result(result_file, {"error": str(e), "reason": e.reason})
        return e.exit_code
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        _print_human(args.command, out)
    return 0


def _write_result(path: str | None, result: dict[str, Any]) -> None:
    if path:
        try:
            with open(path, "w") as f:
                json.dump(result, f, separators=(",", ":"))
        except OSError as e:
            raise OutputError(f"cannot write the result file {path}: {e.strerror or e}") from None


if __name__ == "__main__":
    sys.exit(main())
