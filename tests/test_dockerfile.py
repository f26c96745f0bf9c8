"""The project's image, built for real from the Dockerfile (buildah, fixtures/image_build.py) and run
by the real kubelet the way the operator runs its build pods: uid 65532, read-only root, no
capabilities, seccomp RuntimeDefault, no ServiceAccount token."""

import re

import kubernetes

from fixtures.image_build import IMAGE_REPO
from fixtures.kube import wait_until
from fixtures.tools import REPO

UID = 65532


def test_default_base_is_the_public_python_image():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=python:3\.11-slim-bookworm$", dockerfile, re.M)
    # the default target (the last stage) is the operator's image; the verifier is a target of its own
    assert re.findall(r"^FROM (\S+)", dockerfile, re.M) == ["${BASE}", "${BASE}", "operator", "operator"]


def test_image_config(node_registry, project_image):
    digest = project_image.split("@")[1]
    with node_registry.client() as c:
        manifest = c.get(f"/v2/{IMAGE_REPO}/manifests/{digest}",
                         headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).json()
        config = c.get(f"/v2/{IMAGE_REPO}/blobs/{manifest['config']['digest']}").json()["config"]
    assert config["User"] == f"{UID}:{UID}" and config["Entrypoint"] == ["initramfs-operator"]
    assert "TMPDIR=/scratch" in config["Env"]


def test_builder_runs_in_a_locked_down_pod(kube, node, project_image, namespace):
    """The build pods' constraints, on the image as built: every entry point starts, nothing is writable
    but the scratch emptyDir, and the wheel holds the package (no top-level `operator` shadowing the stdlib)."""
    core = kubernetes.client.CoreV1Api(kube.api_client())
    script = """
        initramfs-builder --help >/dev/null && initramfs-operator --help >/dev/null && echo entrypoints=ok
        python3 -c 'import operator, initramfs_operator; print("stdlib-operator=" + operator.__file__); \
print("package=" + initramfs_operator.__file__)'
        python3 -c 'import initramfs_operator.oci.tarstream as m; print("tarstream=" + m.__file__)'
        grep -E '^(Uid|CapEff|Seccomp):' /proc/self/status
        touch /usr/x 2>/dev/null || echo root=read-only
        touch /scratch/x && echo scratch=writable
        test -e /var/run/secrets/kubernetes.io/serviceaccount/token || echo token=absent
    """
    pod = {"metadata": {"name": "builder"}, "spec": {
        "restartPolicy": "Never", "automountServiceAccountToken": False, "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "main", "image": project_image, "command": ["sh", "-c", script],
                        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}}],
        "volumes": [{"name": "scratch", "emptyDir": {}}]}}
    core.create_namespaced_pod(namespace, pod)
    done = wait_until(lambda: (p := core.read_namespaced_pod("builder", namespace)).status.phase
                      in ("Succeeded", "Failed") and p, timeout=120, what="the pod to finish")
    logs = kube.kubectl("logs", "-n", namespace, "builder").stdout
    assert done.status.phase == "Succeeded", logs
    out = dict(re.split(r"[=:]\s*", line.strip(), maxsplit=1) for line in logs.splitlines() if line.strip())
    assert out["entrypoints"] == "ok"
    assert "site-packages" not in out["stdlib-operator"]
    assert "/site-packages/initramfs_operator/" in out["package"]
    assert out["tarstream"].endswith(".so"), out["tarstream"]  # the engine compiled by mypyc
    assert out["Uid"].split() == [str(UID)] * 4 and out["CapEff"] == "0" * 16 and out["Seccomp"] == "2"
    assert (out["root"], out["scratch"], out["token"]) == ("read-only", "writable", "absent")
