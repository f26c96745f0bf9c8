"""Boot verification on the real node: the chart's operator with the Dockerfile's `verifier` image boots
each new output in qemu (TCG) in a restricted pod before it becomes status.output. A good build verifies and
is Ready (`kubectl wait --for=condition=Verified` returns); a new digest whose /init cannot run is
BootFailed, not Ready, and status.output keeps the good output."""

import json
import logging
import time

from fixtures.images import E, Layout, busybox_entries
from fixtures.kube import wait_until
from fixtures.registry import unique_repo

log = logging.getLogger(__name__)

GOOD_INIT = "#!/bin/sh\nmount -t proc proc /proc\necho verify-ready\nexec sleep 600\n"


def test_a_good_build_verifies_and_a_bad_digest_is_boot_failed_and_never_output(
        builds, kube, node_registry, busybox_static, kernel_image, verifier_image, start_operator, tmp_path):
    layout_dir, _, tag = kernel_image.removeprefix("oci:").rpartition(":")
    kernel = node_registry.push(layout_dir, "6.1", unique_repo("kernel"), src_tag=tag)
    repo = unique_repo("verified")

    def push(init: str, name: str) -> str:
        lay = Layout(tmp_path / name)
        lay.tag(lay.image([busybox_entries(busybox_static, init, [E("etc/release", data=name.encode())])]), "v1")
        return node_registry.push(lay.root, "v1", repo)

    ref = push(GOOD_INIT, "good")
    start_operator(verify={"image": verifier_image})
    builds.create("vm", {"image": ref, "registry": {"insecure": True}, "refreshInterval": "5s",
                         "output": {"oci": {"repository": f"{node_registry.host}/{unique_repo('out')}", "tag": "v"}},
                         "verify": {"kernel": {"image": kernel}, "successRegex": "^verify-ready$"}})
    waited = kube.kubectl("wait", "-n", builds.namespace, "--for=condition=Verified", "initramfsbuild/vm",
                          "--timeout=300s", check=False)
    assert waited.returncode == 0, (waited.stderr, json.dumps(builds.get("vm").get("status"), indent=1))
    good = builds.get("vm")["status"]
    ready, verified = builds.condition("vm"), builds.condition("vm", "Verified")
    assert (ready["status"], ready["reason"]) == ("True", "Succeeded")
    assert verified["reason"] == "Booted" and "matching '^verify-ready$'" in verified["message"]
    assert good["output"] == good["verification"]["output"] and good["verification"]["result"] == "Booted"
    log.info("verified in %s", verified["message"])
    [job] = [j for j in builds.jobs("vm") if j.metadata.name == good["verification"]["jobName"]]
    pod = job.spec.template.spec
    assert pod.security_context.run_as_non_root and pod.containers[0].security_context.read_only_root_filesystem

    push("#!/nonexistent/sh\necho never\n", "bad")  # the tag moves: the refresh builds it
    started = time.monotonic()
    failed = wait_until(lambda: builds.condition("vm", "Verified").get("reason") == "BootFailed"
                        and builds.get("vm"), timeout=300, what="the bad digest's verdict")["status"]
    log.info("bad digest built and judged in %.0f s", time.monotonic() - started)
    ready, stalled = builds.condition("vm"), builds.condition("vm", "Stalled")
    assert (ready["status"], ready["reason"], stalled.get("reason")) == ("False", "BootFailed", "BootFailed")
    assert "could not execute /init (error -2)" in builds.condition("vm", "Verified")["message"]
    assert failed["output"] == good["output"]  # the good one stays: it is what hosts get
    assert failed["verification"]["output"]["sha256"] != good["output"]["sha256"]
    assert failed["imageDigest"] != good["imageDigest"]
