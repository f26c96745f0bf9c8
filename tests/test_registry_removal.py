"""Removing pushed initramfs artifacts from Debian's docker-registry, with deletion enabled and as Debian ships
it (refused): what is gone, what is left, and the referrers tag either way."""

import hashlib
import json

import httpx
import pytest

from fixtures.images import E, Layout
from fixtures.registry import unique_repo
from initramfs_operator.errors import RegistryError
from initramfs_operator.oci import image, reference
from initramfs_operator.oci import registry as reg

CPIO = "application/vnd.initramfs.v1.cpio"


def push_two(registry, tmp_path, tag: str = "out") -> tuple[str, str, str, str]:
    """A source image and two artifacts of it pushed to one tag in turn: (repo, subject, older, newer)."""
    layout = Layout(tmp_path / "src")
    layout.tag(layout.image([[E("etc", "dir")]]), "src")
    repo = unique_repo("removal")
    subject = reg.head(registry.push(layout.root, "src", repo), registry.options())
    pushed = []
    for n in range(2):
        path = tmp_path / f"initramfs-{n}.cpio"
        path.write_bytes(b"070701" + bytes([n]) * 200)
        pushed.append(reg.push_artifact(str(path), registry.ref(repo, tag), media_type=CPIO, annotations={},
                                        subject=subject, options=registry.options()))
    return repo, subject.digest, pushed[0], pushed[1]


def status(registry, repo: str, identifier: str) -> int:
    with registry.client() as c:
        return c.head(f"/v2/{repo}/manifests/{identifier}", headers={"Accept": image.ACCEPT}).status_code


def referrers(registry, repo: str, subject: str) -> list[str] | None:
    with registry.client() as c:
        resp = c.get(f"/v2/{repo}/manifests/{subject.replace(':', '-')}", headers={"Accept": image.OCI_INDEX})
    return None if resp.status_code == 404 else [m["digest"] for m in resp.json()["manifests"]]


def where(registry, repo: str) -> reference.Reference:
    return reference.parse(registry.ref(repo, "out"))


def test_previous_output_deleted_and_dropped_from_referrers(registry, tmp_path):
    repo, subject, older, newer = push_two(registry, tmp_path)
    assert referrers(registry, repo, subject) == [older, newer]
    removal = reg.remove_artifact(where(registry, repo), older, registry.options())
    assert removal.removed and not removal.left
    assert status(registry, repo, older) == 404
    assert status(registry, repo, "out") == status(registry, repo, newer) == 200
    assert referrers(registry, repo, subject) == [newer]
    again = reg.remove_artifact(where(registry, repo), older, registry.options())
    assert again.removed and "already gone" in again.done[0]


def test_current_output_and_last_referrer_deleted(registry, tmp_path):
    repo, subject, older, newer = push_two(registry, tmp_path)
    reg.remove_artifact(where(registry, repo), older, registry.options())
    removal = reg.remove_artifact(where(registry, repo), newer, registry.options(), tag="out")
    assert removal.removed
    assert status(registry, repo, newer) == status(registry, repo, "out") == 404
    assert referrers(registry, repo, subject) is None  # the referrers tag went with its last entry
    assert status(registry, repo, subject) == 200      # the source image is not ours: untouched


def test_refused_deletion_is_reported_and_referrers_still_cleaned(no_delete_registry, tmp_path):
    registry = no_delete_registry
    repo, subject, older, newer = push_two(registry, tmp_path)
    removal = reg.remove_artifact(where(registry, repo), older, registry.options())
    assert not removal.removed
    assert "405" in removal.left[0] and "UNSUPPORTED" in removal.left[0] and older in removal.left[0]
    assert status(registry, repo, older) == 200
    assert referrers(registry, repo, subject) == [newer]
    # The last entry: its index cannot be deleted either, so it is left empty (no referrers), which is true.
    current = reg.remove_artifact(where(registry, repo), newer, registry.options(), tag="out")
    assert not current.removed and "out" in current.left[0]
    assert referrers(registry, repo, subject) == []


def test_a_tag_pushed_over_is_not_deleted(registry, tmp_path):
    repo, _, older, newer = push_two(registry, tmp_path)
    removal = reg.remove_artifact(where(registry, repo), older, registry.options(), tag="out")
    assert removal.removed and status(registry, repo, "out") == 200  # "out" names newer, not older


def test_what_is_not_an_initramfs_artifact_is_never_deleted(registry, tmp_path):
    layout = Layout(tmp_path / "src")
    layout.tag(layout.image([[E("etc", "dir")]]), "src")
    repo = unique_repo("removal")
    digest = reg.head(registry.push(layout.root, "src", repo), registry.options()).digest
    removal = reg.remove_artifact(where(registry, repo), digest, registry.options(), tag="src")
    assert not removal.removed and "not an initramfs artifact" in removal.left[0]
    assert status(registry, repo, digest) == status(registry, repo, "src") == 200


def test_unreachable_registry_raises_for_the_caller_to_retry():
    dead = reference.parse("127.0.0.1:9/nothing/here:out")
    options = reg.RegistryOptions(insecure=("127.0.0.1:9",), retries=0, timeout=httpx.Timeout(2.0))
    with pytest.raises(RegistryError, match="gave up after 1 attempts"):
        reg.remove_artifact(dead, "sha256:" + "0" * 64, options)


def test_where_only_tags_can_be_deleted_the_tag_goes():
    """An OCI distribution 1.1 registry that refuses deleting manifests but allows deleting a tag (none such
    is packaged here: httpx.MockTransport plays it)."""
    doc = {"schemaVersion": 2, "mediaType": image.OCI_MANIFEST, "artifactType": reg.ARTIFACT_TYPE,
           "config": {"mediaType": image.OCI_EMPTY, "digest": "sha256:" + "4" * 64, "size": 2}, "layers": []}
    body = json.dumps(doc).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    deleted: list[str] = []

    def registry(request: httpx.Request) -> httpx.Response:
        identifier = request.url.path.rsplit("/", 1)[1]
        if request.method == "GET" and identifier in (digest, "out") and "out" not in deleted:
            return httpx.Response(200, content=body, headers={"Content-Type": image.OCI_MANIFEST})
        if request.method == "DELETE" and identifier == "out":
            deleted.append(identifier)
            return httpx.Response(202)
        if request.method == "DELETE":
            return httpx.Response(405, json={"errors": [{"code": "UNSUPPORTED"}]})
        return httpx.Response(404)

    options = reg.RegistryOptions(transport=httpx.MockTransport(registry))
    removal = reg.remove_artifact(reference.parse("reg.example/app:out"), digest, options, tag="out")
    assert removal.removed and deleted == ["out"]
    assert "untagged reg.example/app:out" in removal.done[0] and "HTTP 405: UNSUPPORTED" in removal.done[0]
