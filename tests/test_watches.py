"""What the operator asks the real API server for, at fleet scale: Nodes as metadata only (PartialObjectMetadata),
listed in pages, and only the Warning Events that may be about a build's Job or pod (a field selector)."""

import uuid

import pytest

from fixtures.kube import Cluster, wait_until
from initramfs_operator.kube import api, delivery_status, handlers
from initramfs_operator.kube.informer import Informer
from initramfs_operator.kube.kubernetes_transport import KubernetesTransport

pytestmark = pytest.mark.cluster


def node(name: str, labels: dict) -> dict:
    """A Node as a kubelet reports one, with the status that makes Node objects large."""
    images = [{"names": [f"registry.example.com/team/image-{i}@sha256:{'a' * 64}"], "sizeBytes": 10 << 20}
              for i in range(20)]
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "status": {"images": images, "capacity": {"cpu": "64", "memory": "256Gi"}}}


@pytest.fixture
def kube_api(kube: Cluster) -> api.Kube:
    return api.Kube(KubernetesTransport(kube.api_client()))


def test_nodes_travel_as_metadata_and_the_operator_keeps_their_labels(kube: Cluster, kube_api: api.Kube):
    prefix = f"meta-{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}-{i}" for i in range(3)]
    nodes = api.path("v1", "nodes")
    for i, name in enumerate(names):
        kube_api.create(nodes, node(name, {"initramfs.dev/test": prefix, "slot": str(i)}))
    try:
        listed = kube_api.get(nodes, {"labelSelector": f"initramfs.dev/test={prefix}", "limit": "2"},
                              accept=api.METADATA_LIST)
        assert listed["kind"] == "PartialObjectMetadataList" and listed["metadata"]["continue"]
        assert [item["metadata"]["name"] for item in listed["items"]] == names[:2]
        assert all(set(item) == {"kind", "apiVersion", "metadata"} for item in listed["items"])  # no status

        changes: list[tuple[str, dict | None]] = []
        informer = Informer("nodes", kube_api, nodes, lambda key, old, new: changes.append((key[1], new)),
                            {"labelSelector": f"initramfs.dev/test={prefix}"}, page_size=2, metadata_only=True,
                            keep=delivery_status.labels_only).start()
        try:
            wait_until(informer.synced.is_set, timeout=30, what="the node listing")
            assert sorted(n for _, n in informer.objects) == names  # two pages
            kube_api.merge_patch(api.path("v1", "nodes", name=names[0]), {"metadata": {"labels": {"slot": "x"}}})
            wait_until(lambda: informer.objects[("", names[0])]["metadata"]["labels"]["slot"] == "x", timeout=30,
                       what="the relabelled node through the metadata-only watch")
            assert set(informer.objects[("", names[0])]["metadata"]) == {"name", "resourceVersion", "labels"}
        finally:
            informer.stop()
    finally:
        for name in names:
            kube_api.delete(api.path("v1", "nodes", name=name))


def test_only_warnings_that_may_be_about_a_build_s_job_or_pod_are_selected(kube_api: api.Kube, namespace: str):
    events = api.path("v1", "events", namespace)

    def event(kind: str, type_: str) -> None:
        kube_api.create(events, {
            "metadata": {"generateName": "e-"}, "type": type_, "reason": "FailedMount", "message": kind,
            "involvedObject": {"kind": kind, "name": "x", "namespace": namespace, "uid": str(uuid.uuid4())}})

    for kind in ("Pod", "Job", "Node", "ReplicaSet", "PersistentVolumeClaim"):
        event(kind, "Warning")
    event("Pod", "Normal")
    selected = kube_api.get(events, {"fieldSelector": handlers.WARNINGS_SELECTOR})["items"]
    assert sorted((e["involvedObject"]["kind"], e["type"]) for e in selected) == [("Job", "Warning"),
                                                                                  ("Pod", "Warning")]
