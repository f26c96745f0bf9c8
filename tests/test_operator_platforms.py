"""One InitramfsBuild, two platforms, on the real node: a build Job per platform, each in a build slot of
its own, builds its platform; the operator pushes their index, and status says each platform's file;
each boots on its own architecture."""

import hashlib
import os

from fixtures.boot import boot
from fixtures.images import E, Layout, busybox_entries
from fixtures.registry import unique_repo
from initramfs_operator.kube import buildjob
from initramfs_operator.oci import image
from initramfs_operator.oci.registry import artifact

MARKER = "operator-platform-booted"


def push_two_platforms(node_registry, busybox_static, busybox_arm64, tmp_path) -> tuple[str, dict]:
    """A busybox image for linux/amd64 and linux/arm64, each /init printing its arch and `uname -m`, pushed to
    the node's registry; returns its reference and each arch's manifest descriptor."""
    layout = Layout(tmp_path / "layout")
    per_arch = {}
    for arch, busybox in (("amd64", busybox_static), ("arm64", busybox_arm64)):
        init = f'#!/bin/sh\nmount -t proc proc /proc\necho "{MARKER[:9]}""{MARKER[9:]} {arch} $(uname -m)"\n' \
               "poweroff -f\n"
        per_arch[arch] = layout.image([busybox_entries(busybox, init, [E("bin/uname", "symlink", link="busybox")])],
                                      platform=("linux", arch, ""))
    layout.tag(layout.index(list(per_arch.values())), "v1")
    return node_registry.push(layout.root, "v1", unique_repo("platforms")), per_arch


def platform_jobs(builds, name: str) -> dict:
    """The build's Jobs by the platform each builds; each is the one its name says (buildjob.job_names)."""
    build = builds.get(name)
    jobs = {j.metadata.annotations[buildjob.PLATFORM]: j for j in builds.jobs(name)}
    wanted = buildjob.job_names(build, build["status"]["imageDigest"])
    assert {p: j.metadata.name for p, j in jobs.items()} == wanted
    for platform, job in jobs.items():
        args = job.spec.template.spec.containers[0].args
        assert args[args.index("--platform") + 1] == platform and "," not in platform
    return jobs


def test_two_platforms_are_ready_with_two_outputs_and_one_index(builds, node_registry, busybox_static, busybox_arm64,
                                                                start_operator, kernel, arm64_kernel, tmp_path):
    start_operator(max_concurrent=1)  # one slot: the platforms' Jobs take turns
    source, per_arch = push_two_platforms(node_registry, busybox_static, busybox_arm64, tmp_path)
    target = unique_repo("platform-artifacts")
    builds.create("both", {"image": source, "platforms": ["linux/amd64", "linux/arm64"],
                           "registry": {"insecure": True}, "compression": {"format": "zstd"},
                           "output": {"oci": {"repository": f"{node_registry.host}/{target}", "tag": "boot"}}})
    status = builds.wait_reason("both", "Succeeded", timeout=240)["status"]
    assert builds.condition("both")["status"] == "True"
    jobs = platform_jobs(builds, "both")
    assert sorted(jobs) == ["linux/amd64", "linux/arm64"]  # one Job each, and nothing else
    assert all("--push-by-digest" in j.spec.template.spec.containers[0].args for j in jobs.values())
    # The second waited for the first's slot: created once the first had ended.
    first, second = jobs["linux/amd64"], jobs["linux/arm64"]
    assert second.metadata.creation_timestamp >= first.status.completion_time
    assert status["jobName"] == f"{first.metadata.name}, {second.metadata.name}"
    output, outputs = status["output"], status["outputs"]
    assert [(o["os"], o["architecture"]) for o in outputs] == [("linux", "amd64"), ("linux", "arm64")]
    assert [o["imageDigest"] for o in outputs] == [per_arch["amd64"]["digest"], per_arch["arm64"]["digest"]]
    with node_registry.client() as c:
        index = c.get(f"/v2/{target}/manifests/boot", headers={"Accept": image.OCI_INDEX})
        # status.output is the index at the tag, which the output check (and refreshInterval's) follows
        assert f"sha256:{hashlib.sha256(index.content).hexdigest()}" == output["digest"]
        assert output["reference"] == f"{node_registry.host}/{target}@{output['digest']}"
        assert output["platforms"] == "linux/amd64,linux/arm64" and "sha256" not in output
        assert [(m["platform"], m["digest"]) for m in index.json()["manifests"]] == [
            ({"os": o["os"], "architecture": o["architecture"]}, o["digest"]) for o in outputs]
        for o, kernel_of in zip(outputs, (kernel, arm64_kernel), strict=True):
            assert o["reference"] == f"{node_registry.host}/{target}@{o['digest']}"
            layer = c.get(f"/v2/{target}/manifests/{o['digest']}",
                          headers={"Accept": image.OCI_MANIFEST}).json()["layers"][0]
            blob = c.get(f"/v2/{target}/blobs/{layer['digest']}").content
            assert hashlib.sha256(blob).hexdigest() == o["sha256"] and len(blob) == o["size"]
            assert hashlib.sha512(blob).hexdigest() == o["sha512"]
            # as a delivery agent finds it: through the index, by its platform
            found = artifact.layer_of(output["reference"], node_registry.options(),
                                      image.Platform("linux", o["architecture"]))
            assert (found.digest, found.size) == (layer["digest"], o["size"])
            initrd = tmp_path / f"{o['architecture']}.cpio.zst"
            initrd.write_bytes(blob)
            machine = {"amd64": "x86_64", "arm64": "aarch64"}[o["architecture"]]
            console = boot(kernel_of, initrd, f"{MARKER} {o['architecture']}", arch=o["architecture"])
            assert f"{MARKER} {o['architecture']} {machine}" in console


def test_two_platforms_to_a_pvc_write_one_file_each(builds, node_registry, busybox_static, busybox_arm64, volume,
                                                    start_operator, tmp_path):
    start_operator()
    source, per_arch = push_two_platforms(node_registry, busybox_static, busybox_arm64, tmp_path)
    pv = volume("images")
    builds.create("files", {"image": source, "platforms": ["linux/arm64", "linux/amd64"],
                            "registry": {"insecure": True},
                            "output": {"pvc": {"claimName": "images", "path": "boot/app-{arch}.cpio.gz"}}})
    status = builds.wait_reason("files", "Succeeded", timeout=180)["status"]
    jobs = platform_jobs(builds, "files")
    assert sorted(jobs) == ["linux/amd64", "linux/arm64"]  # one Job each, and nothing else
    assert status["jobName"] == ", ".join(jobs[p].metadata.name for p in ("linux/arm64", "linux/amd64"))  # spec order
    assert status["output"]["path"] == "boot/app-{arch}.cpio.gz" and "sha256" not in status["output"]
    assert sorted(os.listdir(pv / "boot")) == ["app-amd64.cpio.gz", "app-arm64.cpio.gz"]  # nothing staged is left
    for o, arch in zip(status["outputs"], ("arm64", "amd64"), strict=True):  # in the spec's order
        data = (pv / f"boot/app-{arch}.cpio.gz").read_bytes()
        assert (o["architecture"], o["path"], o["imageDigest"]) == (arch, f"boot/app-{arch}.cpio.gz",
                                                                    per_arch[arch]["digest"])
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (o["sha256"], o["size"])
