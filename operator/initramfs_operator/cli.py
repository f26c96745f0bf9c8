"""`initramfs-builder`: build, inspect and list-layers.

Exit codes: 0 success, 1 unexpected failure, 2 usage, 3 registry or authentication,
4 invalid image, 5 output.
"""

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import threading
from contextlib import suppress
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any

from . import __version__, build, progress
from .archive import compress, output
from .errors import BuildError, OutputError, UsageError
from .oci import reference, registry, source
from .oci.image import DEFAULT_PLATFORM, Descriptor, Image, Platform
from .oci.layer import Limits
from .rootfs.edit import Injection
from .rootfs.scratch import MEMORY_BUDGET

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
    uses_registry = source.is_registry(args.image) or bool(getattr(args, "push", None))
    return registry.RegistryOptions(
        insecure=tuple(args.insecure_registry),
        ca_certs=registry.read_ca_file(args.ca_file) if args.ca_file and uses_registry else None,
        keychain=_keychain(args.username, password, args.registry_config) if uses_registry else registry.Keychain(),
        cache_dir=getattr(args, "cache_dir", None), scratch_dir=getattr(args, "scratch_dir", None))


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


def _platform(args: argparse.Namespace) -> Platform:
    if args.platform:
        if args.platform_os or args.platform_arch:
            raise UsageError("use either --platform or --platform-os/--platform-arch")
        try:
            return Platform.parse(args.platform)
        except ValueError as e:
            raise UsageError(str(e)) from None
    return Platform(args.platform_os or DEFAULT_PLATFORM.os, args.platform_arch or DEFAULT_PLATFORM.architecture
                    ).normalized()


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


def _check_paths(args: argparse.Namespace) -> None:
    """Output and scratch paths that cannot work are usage errors, found before any download."""
    if args.output is not None:
        output.check_target(args.output)
    if args.scratch_dir is not None and not os.path.isdir(args.scratch_dir):
        raise UsageError(f"--scratch-dir {args.scratch_dir}: no such directory")


def cmd_build(args: argparse.Namespace) -> dict[str, Any]:
    if args.output is not None and args.push:
        raise UsageError("choose one of -o/--output and --push")
    epoch = _source_date_epoch(args)
    options = build.BuildOptions(
        compression=args.compression, level=args.level, threads=args.threads, init=args.init,
        inject=[Injection.parse(s) for s in args.inject], exclude=args.exclude, source_date_epoch=epoch,
        scratch_dir=args.scratch_dir, memory_budget=_size(args.memory_budget, "--memory-budget"),
        limits=Limits(_size(args.max_uncompressed_size, "--max-uncompressed-size"), args.max_entries))
    _check_paths(args)
    shown = progress.for_stream(sys.stderr, args.quiet)

    def warn(message: str) -> None:
        shown.print(f"initramfs-builder: warning: {message}")

    reg = _registry_options(args)
    # parsed here, once: a bad destination (or one that is not a tag) fails before any download
    target = registry.push_target(args.push) if args.push else None
    with source.load(args.image, _platform(args), reg) as image:
        try:
            if target is None:
                out = args.output or "initramfs" + compress.EXTENSIONS[args.compression]
                result = build.build_file(image, out, options, shown, args.create_dirs, warn)
                return {"output": os.path.abspath(out), **_result(result)}
            with tempfile.TemporaryDirectory(dir=args.scratch_dir, prefix="initramfs-push-") as tmp:
                path = os.path.join(tmp, "initramfs" + compress.EXTENSIONS[args.compression])
                result = build.build_file(image, path, options, shown, warn=warn)
                media_type = registry.ARTIFACT_TYPE + ".cpio" + compress.MEDIA_SUFFIX[args.compression]
                with shown.upload(result.size) as sent:
                    digest = registry.push_artifact(
                        path, target, media_type=media_type, annotations=_base_annotations(image, args.image, epoch),
                        subject=_subject(image, args.image, target), options=replace(reg, on_bytes=sent))
            return {"reference": f"{target.name}@{digest}", "tag": target.tag, "digest": digest, **_result(result)}
        finally:
            shown.close()


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


def cmd_inspect(args: argparse.Namespace) -> dict[str, Any]:
    with source.load(args.image, _platform(args), _registry_options(args)) as image:
        return _description(image)


def _description(image: Image) -> dict[str, Any]:
    """What `inspect` shows: the manifest, config and layer descriptors (no layer is downloaded)."""
    c = image.config
    return {"image": image.name, "digest": image.digest, "indexDigest": image.index_digest,
            "platform": str(c.platform), "platforms": sorted({str(p) for p in image.platforms}),
            "config": {"Entrypoint": c.entrypoint, "Cmd": c.cmd, "Env": c.env, "WorkingDir": c.working_dir,
                       "User": c.user},
            "layers": [{"mediaType": layer.descriptor.media_type, "digest": layer.descriptor.digest,
                        "size": layer.descriptor.size} for layer in image.layers]}


def cmd_list_layers(args: argparse.Namespace) -> dict[str, Any]:
    return {"layers": cmd_inspect(args)["layers"]}


def _print_human(command: str, out: dict[str, Any]) -> None:
    if command == "build":
        where = out.get("output") or out["reference"]
        print(f"wrote {where}: {out['size']} bytes, {out['entries']} entries, {out['compression']}, "
              f"init: {out['init']}\nsha256:{out['sha256']}\nsource: {out['image']}@{out['imageDigest']} "
              f"({out['platform']})")
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="initramfs-builder", description="Turn a container image into a bootable "
                                "initramfs (cpio newc, compressed) for microVMs.",
                                epilog="Exit codes: 0 ok, 2 usage, 3 registry/auth, 4 invalid image, 5 output.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("image", metavar="IMAGE", help=IMAGE_HELP)
        g = sp.add_argument_group("image selection and registry access")
        g.add_argument("--platform", help="os/arch[/variant] to select from a multi-platform image "
                                          "(default linux/amd64)")
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
                                                           ".cpio.zst, .cpio.lz4, .cpio.xz or .cpio by compression)")
    o.add_argument("--create-dirs", action="store_true", help="create the output file's missing parent directories")
    o.add_argument("--push", metavar="REF", help="push the initramfs to REF as an OCI artifact instead")
    o.add_argument("-c", "--compression", choices=list(compress.FORMATS), default="gzip",
                   help="compression (default gzip)")
    o.add_argument("--level", type=int, help="compression level (gzip 1-9, default 6; zstd 1-19, default 3; "
                                             "lz4 1-12, default 1, 3 and up is LZ4 HC; xz 0-9, default 6)")
    o.add_argument("--threads", type=int, help="compression threads (default: CPUs, at most 8); "
                                               "the output does not depend on it")
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
    c.add_argument("--cache-dir", metavar="DIR", help="content-addressed cache of downloaded layers")
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
