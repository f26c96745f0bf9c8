"""Every architecture in one build: a two-platform image (Debian's busybox for amd64 and for arm64, each
with an /init of its own) becomes one file per platform or one pushed index, and each output boots on its
own architecture's kernel and machine."""

import hashlib
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from fixtures.boot import boot
from fixtures.images import E, Layout, busybox_entries
from fixtures.registry import unique_repo
from fixtures.tools import REPO, need
from initramfs_operator import cli
from initramfs_operator.errors import InvalidImageError
from initramfs_operator.oci import image
from initramfs_operator.oci import registry as reg
from initramfs_operator.oci.registry import artifact, push

MARKER = "two-platform-booted"
ARCHES = {"amd64": "x86_64", "arm64": "aarch64"}  # Debian's name -> what `uname -m` prints


def init_script(arch: str) -> str:
    # The marker split in two: the kernel echoes its command line, never this file, but a shell trace would.
    return f"""#!/bin/sh
mount -t proc proc /proc
echo "{MARKER[:9]}""{MARKER[9:]} image={arch} machine=$(uname -m)"
poweroff -f
"""


@pytest.fixture(scope="module")
def two_platforms(tmp_path_factory, busybox_static, busybox_arm64) -> Path:
    """oci:DIR:multi, an index of linux/amd64 and linux/arm64 images, and an attestation entry
    (unknown/unknown, as buildx writes them) that `all` must leave out."""
    lay = Layout(tmp_path_factory.mktemp("two-platforms") / "layout")
    uname = [E("bin/uname", "symlink", link="busybox")]
    amd64 = lay.image([busybox_entries(busybox_static, init_script("amd64"), uname)], platform=("linux", "amd64", ""))
    arm64 = lay.image([busybox_entries(busybox_arm64, init_script("arm64"), uname)], platform=("linux", "arm64", ""))
    attestation = {**lay.image([[E("statement.json", data=b"{}")]]), "platform": {"os": "unknown",
                                                                                  "architecture": "unknown"}}
    lay.tag(lay.index([amd64, arm64, attestation]), "multi")
    return lay.root


def run(*argv: str) -> tuple[int, dict]:
    with tempfile.NamedTemporaryFile("r", suffix=".json") as result:
        code = cli.main([*argv, "--result-file", result.name, "--quiet"])
        return code, json.loads(result.read() or "{}")


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256(path: Path | str) -> str:
    return sha256_of(Path(path).read_bytes())


def test_one_call_writes_a_file_per_platform_and_each_boots_its_own(two_platforms, kernel, arm64_kernel, tmp_path):
    code, out = run("build", f"oci:{two_platforms}:multi", "--platform", "linux/amd64,linux/arm64",
                    "-o", str(tmp_path / "initrd-{arch}.cpio.gz"), "--source-date-epoch", "0")
    assert code == 0, out
    assert [p["platform"] for p in out["platforms"]] == ["linux/amd64", "linux/arm64"]
    kernels = {"amd64": kernel, "arm64": arm64_kernel}
    for arch, machine in ARCHES.items():
        path = tmp_path / f"initrd-{arch}.cpio.gz"
        entry = next(p for p in out["platforms"] if p["platform"] == f"linux/{arch}")
        assert entry["output"] == str(path) and entry["sha256"] == sha256(path)
        console = boot(kernels[arch], path, f"{MARKER} image={arch}", arch=arch)
        assert f"{MARKER} image={arch} machine={machine}" in console
        # Reproducible per platform: the same bytes as that platform built alone.
        code, alone = run("build", f"oci:{two_platforms}:multi", "--platform", f"linux/{arch}",
                          "-o", str(tmp_path / f"alone-{arch}.cpio.gz"), "--source-date-epoch", "0")
        assert code == 0 and alone["sha256"] == entry["sha256"], alone
    assert sorted(os.listdir(tmp_path)) == ["alone-amd64.cpio.gz", "alone-arm64.cpio.gz", "initrd-amd64.cpio.gz",
                                            "initrd-arm64.cpio.gz"]


def test_one_push_of_all_platforms_is_one_index_that_skopeo_reads_per_arch(two_platforms, registry, tmp_path):
    repo = unique_repo("platforms")
    target = registry.ref(repo, "v1")
    code, out = run("build", f"oci:{two_platforms}:multi", "--platform", "all", "--push", target,
                    "--insecure-registry", registry.host, "--threads", "2")
    assert code == 0, out
    assert [p["platform"] for p in out["platforms"]] == ["linux/amd64", "linux/arm64"]  # not the attestation
    with registry.client() as client:
        resp = client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": image.OCI_INDEX})
    index = resp.json()
    assert resp.headers["docker-content-digest"] == out["digest"] == f"sha256:{sha256_of(resp.content)}"
    assert index["mediaType"] == image.OCI_INDEX and index["artifactType"] == "application/vnd.initramfs.v1"
    assert [(m["platform"], m["digest"], m["artifactType"]) for m in index["manifests"]] == [
        ({"os": "linux", "architecture": arch}, p["digest"], "application/vnd.initramfs.v1")
        for arch, p in zip(ARCHES, out["platforms"], strict=True)]
    policy = tmp_path / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    for arch, p in zip(ARCHES, out["platforms"], strict=True):
        copy = tmp_path / arch
        subprocess.run([need("skopeo"), "--policy", str(policy), "--override-arch", arch, "--override-os", "linux",
                        "copy", "--quiet", *registry.skopeo_args("src"), f"docker://{target}", f"dir:{copy}"],
                       check=True, capture_output=True, text=True, timeout=120)
        manifest = json.loads((copy / "manifest.json").read_bytes())
        layer = manifest["layers"][0]
        assert layer["digest"] == f"sha256:{p['sha256']}" and sha256(copy / p["sha256"]) == p["sha256"]
        # and the project's own reader, as the delivery agent reads an artifact, finds the same layer, by the
        # platform's digest or through the index by platform
        for where, platform in [(p["digest"], None), (out["digest"], image.Platform("linux", arch))]:
            found = artifact.layer_of(registry.ref(repo, where), registry.options(), platform)
            assert (found.digest, found.size) == (layer["digest"], p["size"])
    with pytest.raises(InvalidImageError, match="name the platform"):
        artifact.layer_of(registry.ref(repo, out["digest"]), registry.options())
    with pytest.raises(InvalidImageError, match="no manifest for platform linux/s390x; available: linux/amd64, "):
        artifact.layer_of(registry.ref(repo, out["digest"]), registry.options(), image.Platform("linux", "s390x"))


def test_platforms_pushed_by_digest_then_indexed_as_the_operator_does(two_platforms, registry, tmp_path):
    """The operator's way: a Job per platform pushes its artifact by digest (the tag does not move), then the
    operator pushes their index, which is the same bytes however often it is pushed."""
    repo = unique_repo("by-digest")
    target = registry.ref(repo, "v1")
    pushed = {}
    for i, arch in enumerate(ARCHES):
        code, out = run("build", f"oci:{two_platforms}:multi", "--platform", f"linux/{arch}", "--push", target,
                        "--push-by-digest", "--insecure-registry", registry.host,
                        "--source-date-epoch", str(1700000000 + 100 * i))
        assert code == 0 and "tag" not in out and out["reference"] == f"{registry.host}/{repo}@{out['digest']}", out
        pushed[arch] = out
    with registry.client() as client:
        assert client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": image.OCI_INDEX}).status_code == 404
    entries = [({"os": "linux", "architecture": arch}, out["digest"]) for arch, out in pushed.items()]
    base = {"org.opencontainers.image.base.name": "app"}
    digest = push.push_index_of(target, entries, base, registry.options())
    assert push.push_index_of(target, entries, base, registry.options()) == digest  # again: the same index
    with registry.client() as client:
        resp = client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": image.OCI_INDEX})
        sizes = [len(client.get(f"/v2/{repo}/manifests/{out['digest']}",
                                headers={"Accept": image.OCI_MANIFEST}).content) for out in pushed.values()]
    index = resp.json()
    assert f"sha256:{sha256_of(resp.content)}" == digest and index["artifactType"] == "application/vnd.initramfs.v1"
    assert [(m["platform"], m["digest"], m["size"], m["artifactType"]) for m in index["manifests"]] == [
        (platform, d, size, "application/vnd.initramfs.v1") for (platform, d), size in zip(entries, sizes, strict=True)]
    # dated as the newest artifact (arm64's, built as of 1700000100)
    assert index["annotations"] == {**base, "org.opencontainers.image.created": "2023-11-14T22:15:00Z"}
    for arch, out in pushed.items():
        found = artifact.layer_of(registry.ref(repo, digest), registry.options(), image.Platform("linux", arch))
        assert (found.digest, found.size) == (f"sha256:{out['sha256']}", out["size"])
    source = reg.head(registry.push(two_platforms, "src", repo, "multi"), registry.options())
    with pytest.raises(InvalidImageError, match="not an initramfs artifact"):
        push.push_index_of(target, [({"os": "linux", "architecture": "amd64"}, source.digest)], {}, registry.options())
    code, out = run("build", f"oci:{two_platforms}:multi", "--platform", "linux/amd64,linux/arm64", "--push", target,
                    "--push-by-digest")
    assert code == 2 and "name one --platform" in out["error"]


def test_inspect_lists_every_platform(two_platforms, capsys):
    assert cli.main(["inspect", f"oci:{two_platforms}:multi", "--platform", "all", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["platforms"] == ["linux/amd64", "linux/arm64", "unknown/unknown"]  # what the index says
    assert [i["platform"] for i in out["images"]] == ["linux/amd64", "linux/arm64"]  # what a build builds


@pytest.mark.parametrize("argv, code, message", [
    (["--platform", "linux/amd64,linux/arm64", "-o", "{out}/initrd.cpio.gz"], 2, "put {arch} or {platform}"),
    (["--platform", "linux/amd64,linux/amd64", "-o", "{out}/{arch}"], 2, "named twice"),
    (["--platform", "linux/amd64,linux/s390x", "-o", "{out}/{arch}"], 4, "no manifest for platform linux/s390x"),
])
def test_a_platform_that_cannot_be_built_leaves_no_file_of_any(two_platforms, tmp_path, capsys, argv, code, message):
    out = tmp_path / "out"
    out.mkdir()
    argv = [a.replace("{out}", str(out)) for a in argv]
    assert cli.main(["build", f"oci:{two_platforms}:multi", *argv, "--quiet"]) == code
    assert message in capsys.readouterr().err
    assert os.listdir(out) == []


def test_one_platform_keeps_the_single_result_and_expands_the_name(two_platforms, tmp_path):
    """A one-platform --platform keeps today's result shape (what the operator's single-platform builds read)."""
    code, out = run("build", f"oci:{two_platforms}:multi", "--platform", "linux/arm64",
                    "-o", str(tmp_path / "initrd-{arch}.cpio.gz"))
    assert code == 0 and "platforms" not in out and out["platform"] == "linux/arm64"
    assert out["output"] == str(tmp_path / "initrd-arm64.cpio.gz")


def test_an_index_of_too_many_platforms_is_refused_before_any_build(tmp_path, capsys):
    """`all` builds one initramfs per platform: an index offering more than a build takes costs nothing."""
    lay = Layout(tmp_path / "layout")
    one = lay.image([[E("init", data=b"#!/bin/sh\n", mode=0o755)]])
    lay.tag(lay.index([{**one, "platform": {"os": "linux", "architecture": f"arch{i}"}}
                       for i in range(cli.MAX_PLATFORMS + 1)]), "many")
    out = tmp_path / "out"
    out.mkdir()
    assert cli.main(["build", f"oci:{lay.root}:many", "--platform", "all", "-o", f"{out}/{{arch}}", "--quiet"]) == 4
    assert f"offers {cli.MAX_PLATFORMS + 1} platforms" in capsys.readouterr().err and os.listdir(out) == []


def test_the_readme_quick_start_with_arm64_builds_both_and_boots_both(kernel, arm64_kernel, busybox_arm64):
    """`examples/run.sh --arm64`, the README's arm64 line: the example image with an arm64 half, one build call,
    and each file booted on its own architecture by examples/boot.sh."""
    need("qemu-system-aarch64")
    done = subprocess.run([str(REPO / "examples/run.sh"), "--arm64"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for arch in ARCHES:
        assert re.search(rf"^hello from Linux \S+-{arch} as hello in /srv/hello: it boots$", done.stdout, re.M), \
            done.stdout[-2000:]


def test_a_failed_platform_names_itself_and_no_platform_s_file_appears(tmp_path, capsys):
    lay = Layout(tmp_path / "layout")
    init = [E("init", data=b"#!/bin/sh\n", mode=0o755)]
    amd64 = lay.image([init], platform=("linux", "amd64", ""))
    arm64 = lay.image([init + [E("etc/arm64", data=b"only here\n")]], platform=("linux", "arm64", ""))
    lay.tag(lay.index([amd64, arm64]), "multi")
    manifest = json.loads((lay.root / "blobs/sha256" / arm64["digest"][7:]).read_bytes())
    (lay.root / "blobs/sha256" / manifest["layers"][0]["digest"][7:]).write_bytes(b"not the layer")  # arm64's only
    out = tmp_path / "out"
    out.mkdir()
    code = cli.main(["build", f"oci:{lay.root}:multi", "--platform", "linux/amd64,linux/arm64",
                     "-o", f"{out}/{{arch}}.cpio.gz", "--quiet"])
    assert code == 4
    assert capsys.readouterr().err.startswith("initramfs-builder: error: linux/arm64: ")
    assert os.listdir(out) == []
