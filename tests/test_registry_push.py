"""Pushing the initramfs as an OCI artifact, and reading it back with our client and with skopeo."""

import json
import os
import subprocess

import pytest

from fixtures.images import E, Layout
from fixtures.registry import unique_repo
from fixtures.tools import need
from initramfs_operator.errors import UsageError
from initramfs_operator.oci import image
from initramfs_operator.oci import registry as reg
from initramfs_operator.oci.registry import push
from test_registry import AMD64, pull

CPIO_GZ = "application/vnd.initramfs.v1.cpio+gzip"


def skopeo_raw(registry, ref: str) -> dict:
    cmd = [need("skopeo"), "inspect", "--raw", *registry.skopeo_args(), f"docker://{ref}"]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout)


def pull_back(registry, repo: str, digest: str, **options) -> bytes:
    return pull(registry.ref(repo, digest), AMD64, registry.options(**options))[1][0]


@pytest.fixture
def source(tmp_path, registry):
    """A source image in its own repository: (repo, descriptor of its manifest)."""
    layout = Layout(tmp_path / "src")
    layout.tag(layout.image([[E("etc", "dir")]]), "src")
    repo = unique_repo("push")
    ref = registry.push(layout.root, "src", repo)
    subject = reg.head(ref, registry.options())
    assert pull(ref, AMD64, registry.options())[0].descriptor == subject  # what the CLI passes
    return repo, subject


def test_push_artifact_with_subject_and_referrers_tag(registry, source, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    repo, subject = source
    path = tmp_path / "initramfs.cpio.gz"
    path.write_bytes(os.urandom(100_000))
    annotations = {"org.opencontainers.image.base.name": registry.ref(repo, "src"),
                   "org.opencontainers.image.base.digest": subject.digest}
    digest = reg.push_artifact(str(path), registry.ref(repo, "src-initramfs"), media_type=CPIO_GZ,
                               annotations=annotations, subject=subject, options=registry.options())

    assert pull_back(registry, repo, digest) == path.read_bytes()
    manifest = skopeo_raw(registry, registry.ref(repo, digest))
    assert manifest["artifactType"] == "application/vnd.initramfs.v1"
    assert manifest["config"] == {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                                  "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}
    assert [layer["mediaType"] for layer in manifest["layers"]] == [CPIO_GZ]
    assert manifest["layers"][0]["annotations"] == {"org.opencontainers.image.title": "initramfs.cpio.gz"}
    assert manifest["annotations"] == {**annotations, "org.opencontainers.image.title": "initramfs.cpio.gz",
                                       "org.opencontainers.image.created": "2023-11-14T22:13:20Z"}
    assert manifest["subject"] == {"mediaType": image.OCI_MANIFEST, "digest": subject.digest, "size": subject.size}
    assert reg.current_digest(registry.ref(repo, "src-initramfs"), registry.options()) == digest

    referrers_tag = registry.ref(repo, subject.digest.replace(":", "-"))
    referrers = skopeo_raw(registry, referrers_tag)
    assert referrers["mediaType"] == image.OCI_INDEX
    size = len(subprocess.run([need("skopeo"), "inspect", "--raw", *registry.skopeo_args(),
                               f"docker://{registry.ref(repo, digest)}"], check=True, capture_output=True).stdout)
    assert referrers["manifests"] == [{"mediaType": image.OCI_MANIFEST, "digest": digest, "size": size,
                                       "artifactType": "application/vnd.initramfs.v1",
                                       "annotations": manifest["annotations"]}]

    # Another artifact for the same subject joins the list; pushing one again does not duplicate it.
    other = tmp_path / "initramfs.cpio.zst"
    other.write_bytes(b"zstd initramfs")
    second = reg.push_artifact(str(other), registry.ref(repo, "src-initramfs-zstd"),
                               media_type="application/vnd.initramfs.v1.cpio+zstd", annotations={},
                               subject=subject, options=registry.options())
    reg.push_artifact(str(path), registry.ref(repo, "src-initramfs"), media_type=CPIO_GZ, annotations=annotations,
                      subject=subject, options=registry.options())
    assert [m["digest"] for m in skopeo_raw(registry, referrers_tag)["manifests"]] == [digest, second]


def test_large_file_goes_in_chunks_survives_a_503_and_existing_blobs_are_skipped(
        registry, fault_proxy, tmp_path):
    path = tmp_path / "big.cpio"
    with open(path, "wb") as f:
        for _ in range(push.CHUNK * 2 // (1 << 20) + 3):
            f.write(os.urandom(1 << 20))
    repo = unique_repo("push")
    patch_fault = fault_proxy.inject("PATCH", "/blobs/uploads/", "status", status=503)
    sent = []
    digest = reg.push_artifact(str(path), fault_proxy.ref(repo, "big"), media_type="application/vnd.initramfs.v1.cpio",
                               annotations={}, subject=None, options=fault_proxy.options(on_bytes=sent.append))
    assert patch_fault.times == 0  # the 503 did happen, and the upload recovered
    assert sum(sent) == path.stat().st_size + push.CHUNK  # progress counts the refused chunk twice
    assert [m for m, p in fault_proxy.seen if "/blobs/uploads/" in p].count("PATCH") == 4  # 3 chunks + 1 retry
    assert pull_back(registry, repo, digest) == path.read_bytes()
    assert "subject" not in skopeo_raw(registry, registry.ref(repo, digest))

    # The blobs are there now: a push that could not upload anything still succeeds.
    fault_proxy.inject("POST", "/blobs/uploads/", "status", status=500, times=None, headers={"Retry-After": "0"})
    again = reg.push_artifact(str(path), fault_proxy.ref(repo, "big-again"),
                              media_type="application/vnd.initramfs.v1.cpio",
                              annotations={"org.opencontainers.image.created": "fixed"}, subject=None,
                              options=fault_proxy.options())
    assert again != digest
    assert skopeo_raw(registry, registry.ref(repo, again))["layers"] == \
        skopeo_raw(registry, registry.ref(repo, digest))["layers"]


def test_push_with_token_auth(token_registry, tmp_path):
    path = tmp_path / "initramfs.cpio.gz"
    path.write_bytes(b"initramfs over token auth")
    repo = unique_repo("push")
    digest = reg.push_artifact(str(path), token_registry.ref(repo, "v1"), media_type=CPIO_GZ, annotations={},
                               subject=None, options=token_registry.options())
    assert pull_back(token_registry, repo, digest) == path.read_bytes()


def test_push_over_tls(tls_registry, tmp_path):
    path = tmp_path / "initramfs.cpio.gz"
    path.write_bytes(b"initramfs over TLS")
    repo = unique_repo("push")
    digest = reg.push_artifact(str(path), tls_registry.ref(repo, "v1"), media_type=CPIO_GZ, annotations={},
                               subject=None, options=tls_registry.options())
    assert skopeo_raw(tls_registry, tls_registry.ref(repo, digest))["artifactType"] == "application/vnd.initramfs.v1"


def test_push_needs_a_tag(registry, tmp_path):
    with pytest.raises(UsageError, match="push to a tag"):
        reg.push_artifact(str(tmp_path / "x"), registry.ref("a/b", "sha256:" + "0" * 64), media_type=CPIO_GZ,
                          annotations={}, subject=None, options=registry.options())


@pytest.mark.parametrize(("annotations", "taken"), [
    ({push.CREATED: "2026-01-01T00:00:00Z"}, "2026-01-01T00:00:00Z"),
    ({push.CREATED: "9" * 4096}, ""),  # a registry's answer reaches the index only as a timestamp
    ({push.CREATED: "2026-01-01T00:00:00Z; rm -rf /"}, ""),
    ({push.CREATED: 12}, ""),
    (None, ""),
])
def test_the_index_of_artifacts_is_dated_only_by_a_timestamp_a_manifest_gives(annotations, taken):
    assert push._created_of({"annotations": annotations}) == taken
