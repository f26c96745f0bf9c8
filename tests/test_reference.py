import json

import pytest

from initramfs_operator.errors import InvalidImageError, UsageError
from initramfs_operator.oci.image import OCI_INDEX, OCI_MANIFEST, Descriptor, Platform, at_digest, for_platform
from initramfs_operator.oci.reference import parse

D = "sha256:" + "a" * 64


@pytest.mark.parametrize("text, registry, repository, tag, digest, host", [
    ("alpine", "docker.io", "library/alpine", "latest", None, "registry-1.docker.io"),
    ("alpine:3.20", "docker.io", "library/alpine", "3.20", None, "registry-1.docker.io"),
    ("library/alpine", "docker.io", "library/alpine", "latest", None, "registry-1.docker.io"),
    ("bitnami/redis:7", "docker.io", "bitnami/redis", "7", None, "registry-1.docker.io"),
    ("docker.io/alpine", "docker.io", "library/alpine", "latest", None, "registry-1.docker.io"),
    ("index.docker.io/library/alpine", "docker.io", "library/alpine", "latest", None, "registry-1.docker.io"),
    ("quay.io/org/app:v1.2_rc-3", "quay.io", "org/app", "v1.2_rc-3", None, "quay.io"),
    ("127.0.0.1:5000/a/b/c", "127.0.0.1:5000", "a/b/c", "latest", None, "127.0.0.1:5000"),
    ("localhost/app", "localhost", "app", "latest", None, "localhost"),
    ("localhost:5000/app:dev", "localhost:5000", "app", "dev", None, "localhost:5000"),
    ("[::1]:5000/app", "[::1]:5000", "app", "latest", None, "[::1]:5000"),
    (f"alpine@{D}", "docker.io", "library/alpine", None, D, "registry-1.docker.io"),
    (f"ghcr.io/o/app:v1@{D}", "ghcr.io", "o/app", "v1", D, "ghcr.io"),
    ("registry:5000", "docker.io", "library/registry", "5000", None, "registry-1.docker.io"),
    ("my-reg.example.com/a__b/c.d/e-f", "my-reg.example.com", "a__b/c.d/e-f", "latest", None, "my-reg.example.com"),
])
def test_parse(text, registry, repository, tag, digest, host):
    ref = parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest, ref.host) == (registry, repository, tag, digest, host)


def test_identifier_prefers_the_digest_and_str_is_fully_qualified():
    ref = parse(f"alpine:3@{D}")
    assert ref.identifier == D
    assert str(ref) == f"docker.io/library/alpine:3@{D}"
    assert str(parse("alpine")) == "docker.io/library/alpine:latest"
    assert parse("quay.io/a/b").identifier == "latest"


@pytest.mark.parametrize("text, why", [
    ("", "empty"),
    ("Alpine", "lowercase"),
    ("quay.io/Org/app", "lowercase"),
    ("alpine:", "tag"),
    ("alpine:-x", "tag"),
    ("alpine:" + "x" * 129, "tag"),
    ("alpine@sha256:abc", "digest"),
    ("alpine@md5:" + "a" * 32, "digest"),
    ("a//b", "component"),
    ("foo/-bar", "component"),
    ("foo/bar_", "component"),
    ("foo bar", "component"),
    ("-bad.host/app", "registry host"),
    ("quay.io/" + "a" * 250, "longer than 255"),
    (f"alpine@{D}@{D}", "digest"),
])
def test_invalid_references_are_usage_errors(text, why):
    with pytest.raises(UsageError, match="invalid image reference") as e:
        parse(text)
    assert why in str(e.value)


DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(("name", "shown"), [
    ("reg.example/app:1", f"reg.example/app:1@{DIGEST}"),
    (f"reg.example/app:1@{DIGEST}", f"reg.example/app:1@{DIGEST}"),  # pinned already: not twice
    ("reg.example/app@sha256:" + "b" * 64, f"reg.example/app@{DIGEST}"),  # an index's digest: the child's shown
    ("oci:/home/me@work/layout:t", f"oci:/home/me@work/layout:t@{DIGEST}"),  # an @ that pins nothing stays
])
def test_a_name_at_a_digest_shows_one_digest(name, shown):
    assert at_digest(name, DIGEST) == shown


def test_a_platform_missing_from_a_pinned_index_is_named_with_one_digest():
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "c" * 64, "size": 2,
         "platform": {"os": "linux", "architecture": "arm64"}}]}).encode()
    top = Descriptor(OCI_INDEX, DIGEST, len(index))
    with pytest.raises(InvalidImageError) as refused:
        for_platform(f"reg.example/app:1@{DIGEST}", top, index, fetch=lambda d: b"",
                     platform=Platform("linux", "amd64"), layer=lambda d: None)
    assert str(refused.value) == (f"reg.example/app:1@{DIGEST}: no manifest for platform linux/amd64; "
                                  f"available: linux/arm64")
