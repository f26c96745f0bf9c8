"""Pulling from a real registry: manifest kinds, platforms, digests, streaming, the layer cache."""

import hashlib
import json
import os
import tracemalloc

import pytest

from fixtures.images import E, Layout, compress, tar
from fixtures.registry import unique_repo
from initramfs_operator.errors import InvalidImageError, RegistryError
from initramfs_operator.oci import image
from initramfs_operator.oci import registry as reg

AMD64 = image.Platform("linux", "amd64")
ARM64 = image.Platform("linux", "arm64")


def blob(layout: Layout, desc: dict) -> bytes:
    return (layout.root / "blobs/sha256" / desc["digest"].split(":")[1]).read_bytes()


def layer_bytes(img: image.Image) -> list[bytes]:
    out = []
    for layer in img.layers:
        stream = layer.open()
        out.append(stream.read())
        stream.close()
    return out


def pull(ref: str, platform: image.Platform, options: reg.RegistryOptions) -> tuple[image.Image, list[bytes]]:
    """The image and its layer blobs, read in order (the image is closed again: only its layers go)."""
    with reg.load(ref, platform, options) as img:
        return img, layer_bytes(img)


def manifest_of(layout: Layout, desc: dict) -> dict:
    return json.loads(blob(layout, desc))


@pytest.fixture
def multiarch(tmp_path, registry):
    """An OCI index with amd64 and arm64/v8 images, each with its own two layers, pushed as-is."""
    layout = Layout(tmp_path / "multi")
    amd = layout.image([[E("arch", data=b"amd64")], [E("extra-amd", data=b"x" * 5000)]])
    arm = layout.image([[E("arch", data=b"arm64")], [E("extra-arm", data=b"y" * 7000)]],
                       platform=("linux", "arm64", "v8"), compression="zstd")
    index = layout.index([amd, arm])
    layout.tag(index, "v1")
    repo = unique_repo()
    ref = registry.push(layout.root, "v1", repo)
    return layout, ref, repo, index, {AMD64: amd, ARM64: arm}


def test_multiarch_index_selects_each_platforms_layers(registry, multiarch):
    layout, ref, _, index, images = multiarch
    for platform, spelled in ((AMD64, "linux/x86_64"), (ARM64, "linux/aarch64")):
        img, layers = pull(ref, image.Platform.parse(spelled), registry.options())
        want = images[platform]
        assert img.digest == want["digest"]
        assert img.index_digest == index["digest"]
        assert img.config.platform == platform
        assert sorted(img.platforms, key=str) == [AMD64, image.Platform("linux", "arm64")]
        assert layers == [blob(layout, layer) for layer in manifest_of(layout, want)["layers"]]


def test_unknown_platform_lists_the_available_ones(registry, multiarch):
    with pytest.raises(InvalidImageError,
                       match="no manifest for platform linux/s390x; available: linux/amd64, linux/arm64"):
        pull(multiarch[1], image.Platform("linux", "s390x"), registry.options())


def test_digest_pinned_reference_and_current_digest(registry, multiarch, tmp_path):
    layout, ref, repo, index, images = multiarch
    assert reg.current_digest(ref, registry.options()) == index["digest"]
    pinned, _ = pull(registry.ref(repo, images[ARM64]["digest"]), ARM64, registry.options())
    assert pinned.digest == images[ARM64]["digest"] and pinned.index_digest is None
    tagged_and_pinned = f"{ref}@{index['digest']}"
    assert pull(tagged_and_pinned, AMD64, registry.options())[0].digest == images[AMD64]["digest"]
    assert reg.current_digest(tagged_and_pinned, registry.options()) == index["digest"]

    # Moving the tag moves the digest (what the operator watches for).
    other = Layout(tmp_path / "other")
    moved = other.tag(other.image([[E("new", data=b"new")]]), "v1")
    registry.push(other.root, "v1", repo)
    assert reg.current_digest(ref, registry.options()) == moved["digest"]


def test_missing_tag_and_repository_are_registry_errors(registry, multiarch):
    with pytest.raises(RegistryError, match=r"/test/.*:nope: not found \(HTTP 404, MANIFEST_UNKNOWN"):
        pull(registry.ref(multiarch[2], "nope"), AMD64, registry.options())
    with pytest.raises(RegistryError, match="not found"):
        reg.current_digest(registry.ref("no/such-repo", "v1"), registry.options())


def test_oci_manifest_without_media_type(registry, tmp_path):
    layout = Layout(tmp_path / "bare", media_type_field=False)  # as umoci writes them
    desc = layout.tag(layout.image([[E("hello", data=b"world")]], compression="none"), "bare")
    repo = unique_repo()
    img, layers = pull(registry.push(layout.root, "bare", repo), AMD64, registry.options())
    assert "mediaType" not in img.manifest
    assert img.digest == desc["digest"]
    assert layers == [blob(layout, layer) for layer in manifest_of(layout, desc)["layers"]]


def _docker_image(registry, repo: str, arch: str, content: bytes) -> tuple[dict, bytes]:
    layer_data = compress(tar([E("f", data=content)]), "gzip")
    layer = registry.put_blob(repo, layer_data, "application/vnd.docker.image.rootfs.diff.tar.gzip")
    config = registry.put_blob(repo, json.dumps({"architecture": arch, "os": "linux", "config": {"Cmd": ["/f"]},
                                                 "rootfs": {"type": "layers", "diff_ids": []}}).encode(),
                               image.DOCKER_CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": image.DOCKER_MANIFEST, "config": config, "layers": [layer]}
    return registry.put_manifest(repo, hashlib.sha256(content).hexdigest()[:20], manifest, image.DOCKER_MANIFEST), \
        layer_data


def test_docker_schema2_and_manifest_list(registry):
    repo = unique_repo()
    amd, amd_layer = _docker_image(registry, repo, "amd64", b"docker amd64")
    arm, arm_layer = _docker_image(registry, repo, "arm", b"docker arm v7")
    listing = {"schemaVersion": 2, "mediaType": image.DOCKER_LIST, "manifests": [
        {**amd, "platform": {"os": "linux", "architecture": "amd64"}},
        {**arm, "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}}]}
    top = registry.put_manifest(repo, "list", listing, image.DOCKER_LIST)

    single, layers = pull(registry.ref(repo, amd["digest"]), AMD64, registry.options())
    assert single.manifest["mediaType"] == image.DOCKER_MANIFEST and single.config.cmd == ["/f"]
    assert layers == [amd_layer]

    arm_img, layers = pull(registry.ref(repo, "list"), image.Platform.parse("linux/arm"), registry.options())
    assert (arm_img.digest, arm_img.index_digest) == (arm["digest"], top["digest"])
    assert layers == [arm_layer]


def test_nested_index(registry, tmp_path):
    layout = Layout(tmp_path / "nested")
    amd = layout.image([[E("deep", data=b"inside")]])
    inner = layout.index([amd])
    inner["platform"] = {"os": "linux", "architecture": "amd64"}
    outer = layout.tag(layout.index([inner]), "nested")
    repo = unique_repo()
    for layer in manifest_of(layout, amd)["layers"] + [manifest_of(layout, amd)["config"]]:
        registry.put_blob(repo, blob(layout, layer))
    for desc in (amd, inner, outer):  # children first: the registry checks that they exist
        registry.put_manifest(repo, desc["digest"] if desc is not outer else "nested", blob(layout, desc),
                              desc["mediaType"])
    img, layers = pull(registry.ref(repo, "nested"), AMD64, registry.options())
    assert (img.digest, img.index_digest) == (amd["digest"], outer["digest"])
    assert layers == [blob(layout, layer) for layer in manifest_of(layout, amd)["layers"]]


def test_layers_stream_to_disk_with_bounded_memory_and_progress(registry, tmp_path):
    big = os.urandom(24 << 20)  # incompressible, and bigger than anything the client may hold in memory
    layout = Layout(tmp_path / "big")
    desc = layout.tag(layout.image([[E("big", data=big)], [E("small", data=b"s")]], compression="none"), "big")
    layers = manifest_of(layout, desc)["layers"]
    del big
    repo = unique_repo()
    ref = registry.push(layout.root, "big", repo)
    seen = []
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    tracemalloc.start()
    try:
        with reg.load(ref, AMD64, registry.options(jobs=2, scratch_dir=str(scratch), on_bytes=seen.append)) as img:
            for layer in img.layers:
                layer.prefetch()
            hashes = []
            for layer in img.layers:
                h, stream = hashlib.sha256(), layer.open()
                while chunk := stream.read(1 << 20):
                    h.update(chunk)
                stream.close()
                hashes.append("sha256:" + h.hexdigest())
            peak = tracemalloc.get_traced_memory()[1]
            assert len(list(scratch.glob("initramfs-layers-*/*"))) == 2  # the layers wait in a scratch directory...
    finally:
        tracemalloc.stop()
    assert hashes == [layer["digest"] for layer in layers]
    assert peak < 12 << 20, f"peak Python memory {peak >> 20} MiB while pulling a 24 MiB layer"
    assert sum(seen) == sum(layer["size"] for layer in layers)
    assert not os.listdir(scratch)  # ...which goes when the image is closed
    with pytest.raises(ValueError, match="the image was closed"):
        img.layers[0].open()


def test_layer_cache_hit_skips_the_download_and_a_corrupt_entry_is_refetched(
        registry, fault_proxy, tmp_path):
    layout = Layout(tmp_path / "cached")
    desc = layout.tag(layout.image([[E("a", data=b"a" * 3000)], [E("b", data=b"b" * 3000)]]), "c")
    layers = manifest_of(layout, desc)["layers"]
    repo = unique_repo()
    registry.push(layout.root, "c", repo)
    cache = tmp_path / "cache"
    want = [blob(layout, layer) for layer in layers]

    assert pull(registry.ref(repo, "c"), AMD64, registry.options(cache_dir=str(cache)))[1] == want
    entries = [cache / "blobs/sha256" / layer["digest"].split(":")[1] for layer in layers]
    assert [p.read_bytes() for p in entries] == want
    assert not [p for p in (cache / "blobs/sha256").iterdir() if p.name.startswith(".")]  # no temp files left

    # Through a proxy that breaks every blob download: only the cache can serve the layers.
    fault_proxy.inject("GET", "/blobs/sha256:(" + "|".join(layer["digest"][7:] for layer in layers) + ")",
                       "status", status=500, times=None, headers={"Retry-After": "0"})
    seen = []
    assert pull(fault_proxy.ref(repo, "c"), AMD64, fault_proxy.options(cache_dir=str(cache), on_bytes=seen.append)
                )[1] == want
    assert sum(seen) == sum(layer["size"] for layer in layers)

    # A corrupt entry is noticed and downloaded again (here, the proxy refuses: a clear error)...
    corrupt = bytearray(entries[0].read_bytes())
    corrupt[10] ^= 0xFF
    entries[0].write_bytes(corrupt)
    with pytest.raises(RegistryError, match=f"layer {layers[0]['digest']}: HTTP 500"):
        pull(fault_proxy.ref(repo, "c"), AMD64, fault_proxy.options(cache_dir=str(cache)))
    # ...and repaired from the registry.
    assert pull(registry.ref(repo, "c"), AMD64, registry.options(cache_dir=str(cache)))[1] == want
    assert entries[0].read_bytes() == want[0]


def test_layers_are_fetched_only_when_prefetched_or_opened_and_each_once(registry, fault_proxy, tmp_path):
    layout = Layout(tmp_path / "lazy")
    desc = layout.tag(layout.image([[E("a", data=b"a" * 3000)], [E("b", data=b"b" * 3000)],
                                    [E("a", data=b"a" * 3000)]]), "lazy")  # the first layer, listed again
    manifest = manifest_of(layout, desc)
    config, layers = manifest["config"]["digest"], [layer["digest"] for layer in manifest["layers"]]
    assert layers[0] == layers[2]
    repo = unique_repo()
    registry.push(layout.root, "lazy", repo)
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    with reg.load(fault_proxy.ref(repo, "lazy"), AMD64, fault_proxy.options(scratch_dir=str(scratch))) as img:
        assert fault_proxy.blob_gets() == [config]
        img.layers[1].prefetch()
        assert img.layers[1].open().read() == blob(layout, manifest["layers"][1])
        assert fault_proxy.blob_gets() == [config, layers[1]]
        for layer in img.layers + img.layers:
            layer.prefetch()
        assert layer_bytes(img) == [blob(layout, layer) for layer in manifest["layers"]]
    assert sorted(fault_proxy.blob_gets()) == sorted([config, *set(layers)])
    assert not os.listdir(scratch)
