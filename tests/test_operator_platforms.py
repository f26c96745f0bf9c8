"""One InitramfsBuild, two platforms, on the real node: the operator's build Job builds both, pushes one
index, and status says each platform's file; each boots on its own architecture."""

import hashlib

from fixtures.boot import boot
from fixtures.images import E, Layout, busybox_entries
from fixtures.registry import unique_repo
from initramfs_operator.oci import image

MARKER = "operator-platform-booted"


def test_two_platforms_are_ready_with_two_outputs_and_one_index(builds, node_registry, busybox_static, busybox_arm64,
                                                                start_operator, kernel, arm64_kernel, tmp_path):
    start_operator()
    layout = Layout(tmp_path / "layout")
    per_arch = {}
    for arch, busybox in (("amd64", busybox_static), ("arm64", busybox_arm64)):
        init = f'#!/bin/sh\nmount -t proc proc /proc\necho "{MARKER[:9]}""{MARKER[9:]} {arch} $(uname -m)"\n' \
               "poweroff -f\n"
        per_arch[arch] = layout.image([busybox_entries(busybox, init, [E("bin/uname", "symlink", link="busybox")])],
                                      platform=("linux", arch, ""))
    layout.tag(layout.index(list(per_arch.values())), "v1")
    source = node_registry.push(layout.root, "v1", unique_repo("platforms"))
    target = unique_repo("platform-artifacts")
    builds.create("both", {"image": source, "platforms": ["linux/amd64", "linux/arm64"],
                           "registry": {"insecure": True}, "compression": {"format": "zstd"},
                           "output": {"oci": {"repository": f"{node_registry.host}/{target}", "tag": "boot"}}})
    status = builds.wait_reason("both", "Succeeded", timeout=180)["status"]
    assert builds.condition("both")["status"] == "True"
    output, outputs = status["output"], status["outputs"]
    assert [(o["os"], o["architecture"]) for o in outputs] == [("linux", "amd64"), ("linux", "arm64")]
    assert [o["imageDigest"] for o in outputs] == [per_arch["amd64"]["digest"], per_arch["arm64"]["digest"]]
    with node_registry.client() as c:
        index = c.get(f"/v2/{target}/manifests/boot", headers={"Accept": image.OCI_INDEX})
        # status.output is the index at the tag, which the output check (and refreshInterval's) follows
        assert f"sha256:{hashlib.sha256(index.content).hexdigest()}" == output["digest"]
        assert output["reference"] == f"{node_registry.host}/{target}@{output['digest']}"
        assert output["platforms"] == "linux/amd64,linux/arm64" and "sha256" not in output
        assert [m["digest"] for m in index.json()["manifests"]] == [o["digest"] for o in outputs]
        for o, kernel_of in zip(outputs, (kernel, arm64_kernel), strict=True):
            assert o["reference"] == f"{node_registry.host}/{target}@{o['digest']}"
            layer = c.get(f"/v2/{target}/manifests/{o['digest']}",
                          headers={"Accept": image.OCI_MANIFEST}).json()["layers"][0]
            blob = c.get(f"/v2/{target}/blobs/{layer['digest']}").content
            assert hashlib.sha256(blob).hexdigest() == o["sha256"] and len(blob) == o["size"]
            assert hashlib.sha512(blob).hexdigest() == o["sha512"]
            initrd = tmp_path / f"{o['architecture']}.cpio.zst"
            initrd.write_bytes(blob)
            machine = {"amd64": "x86_64", "arm64": "aarch64"}[o["architecture"]]
            console = boot(kernel_of, initrd, f"{MARKER} {o['architecture']}", arch=o["architecture"])
            assert f"{MARKER} {o['architecture']} {machine}" in console
    assert len(builds.jobs("both")) == 1
