"""The build cache on the real node (issue 24, item 3): build pods of the operator share one layer-cache PVC,
concurrently; a corrupt cached layer is checked, pulled again and repaired, and the builds still produce the
right bytes; a good cached layer is used as it is."""

import hashlib
import json
import os

import pytest

from fixtures.images import E, Layout, busybox_entries
from fixtures.registry import unique_repo

pytestmark = pytest.mark.cluster


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def image(node_registry, busybox_static, tmp_path) -> tuple[str, str]:
    """A busybox image of one layer in the node's registry: (reference, the layer's digest)."""
    layout = Layout(tmp_path / "layout")
    desc = layout.image([busybox_entries(busybox_static, "#!/bin/sh\necho cached\n",
                                         [E("etc/hello", data=b"from the cache\n")])])
    layout.tag(desc, "v1")
    manifest = json.loads((layout.root / "blobs/sha256" / desc["digest"].split(":")[1]).read_bytes())
    [layer] = manifest["layers"]
    return node_registry.push(layout.root, "v1", unique_repo("cache")), layer["digest"]


def test_builds_share_the_cache_and_a_corrupt_layer_is_pulled_again(builds, image, volume, start_operator):
    ref, layer = image
    # The chart's default cache for every build; build "own" names the same claim itself.
    start_operator(builder={"cache": {"claimName": "layers", "maxSize": "1Gi"}})
    cache, images = volume("layers"), volume("images")

    def build(name: str, **extra) -> None:
        builds.create(name, {"image": ref, "registry": {"insecure": True}, "compression": {"format": "gzip"},
                             "output": {"pvc": {"claimName": "images", "path": f"{name}.cpio.gz"}}, **extra})

    build("first")
    first = builds.wait_reason("first", "Succeeded")["status"]["output"]["sha256"]
    assert sha256(images / "first.cpio.gz") == first
    blob = cache / "blobs" / layer.replace(":", "/")
    assert "sha256:" + sha256(blob) == layer  # stored under its digest
    assert not [p.name for p in blob.parent.iterdir() if p.name.startswith(".")]  # no temp file left
    pod = builds.jobs("first")[0].spec.template.spec
    volumes = {v.name: v for v in pod.volumes}
    assert volumes["cache"].persistent_volume_claim.claim_name == "layers"
    assert volumes["scratch"].empty_dir.size_limit == "16Gi"  # the contents: the layers are in the cache
    args = pod.containers[0].args
    assert args[args.index("--cache-dir"):][:4] == ["--cache-dir", "/cache", "--cache-max-size", "1Gi"]

    # A corrupt layer in the cache: two builds at once, both check it, pull it again and build right.
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(data)
    build("second")
    build("own", cache={"claimName": "layers"})
    for name in ("second", "own"):
        assert builds.wait_reason(name, "Succeeded")["status"]["output"]["sha256"] == first
        assert sha256(images / f"{name}.cpio.gz") == first
    assert "sha256:" + sha256(blob) == layer  # repaired
    repaired = os.stat(blob)

    # A good layer is used as it is: not downloaded again (a download is renamed over it: a new inode).
    build("third")
    assert builds.wait_reason("third", "Succeeded")["status"]["output"]["sha256"] == first
    assert os.stat(blob).st_ino == repaired.st_ino and "sha256:" + sha256(blob) == layer
    assert os.stat(blob).st_mtime >= repaired.st_mtime  # touched: most recently used
