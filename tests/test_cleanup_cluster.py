"""Cleanup on a real node (issue 24 item 2): previous outputs beyond spec.output.retention and, with
deletionPolicy Delete, every output on deletion, removed from a `local` PersistentVolume by a cleanup Job and
from Debian's docker-registry (deletion enabled) by the operator; a registry that cannot be reached holds the
deletion only for a bounded number of attempts. The operator runs as the chart installs it."""



from fixtures.kube import wait_until
from fixtures.registry import unique_repo
from initramfs_operator.kube import cleanup, crd
from test_operator import image  # noqa: F401  (a fixture)


def gone(builds, name: str) -> bool:
    return not any(b["metadata"]["name"] == name for b in builds.custom.list_namespaced_custom_object(
        crd.GROUP, crd.VERSION, builds.namespace, crd.PLURAL)["items"])


def events(builds, name: str) -> dict[str, str]:
    return {e.reason: e.message for e in builds.events(name)}


def manifest_status(registry_host: str, client, repo: str, identifier: str) -> int:
    return client.head(f"/v2/{repo}/manifests/{identifier}",
                       headers={"Accept": "application/vnd.oci.image.manifest.v1+json, "
                                          "application/vnd.oci.image.index.v1+json"}).status_code


def request_rebuild(builds, name: str, value: str) -> None:
    builds.custom.patch_namespaced_custom_object(crd.GROUP, crd.VERSION, builds.namespace, crd.PLURAL, name, {
        "metadata": {"annotations": {crd.REQUESTED_AT: value}}})


def test_pvc_retention_and_delete(builds, image, volume, start_operator):  # noqa: F811
    start_operator()
    ref, _ = image()
    pv = volume("images")
    builds.create("files", {"image": ref, "registry": {"insecure": True}, "deletionPolicy": "Delete",
                            "output": {"pvc": {"claimName": "images", "path": "a/one.cpio.gz"}, "retention": 0}})
    builds.wait_reason("files", "Succeeded")
    assert (pv / "a/one.cpio.gz").exists()
    assert cleanup.FINALIZER in builds.get("files")["metadata"]["finalizers"]

    builds.patch_spec("files", {"output": {"pvc": {"path": "b/two.cpio.gz"}}})
    wait_until(lambda: (builds.get("files")["status"].get("output") or {}).get("path") == "b/two.cpio.gz",
               what="the second output")
    # Retention 0: the first file goes (by a cleanup Job), and status forgets it.
    wait_until(lambda: not (pv / "a/one.cpio.gz").exists() and
               not builds.get("files")["status"].get("previousOutputs"), what="the previous file removed")
    assert (pv / "b/two.cpio.gz").exists()
    assert "a/one.cpio.gz" in events(builds, "files")["PrunedOutputs"]

    builds.delete("files")
    wait_until(lambda: gone(builds, "files"), timeout=120, what="the build deleted")
    assert not (pv / "b/two.cpio.gz").exists()
    assert "images:b/two.cpio.gz" in events(builds, "files")["CleanedUp"]


def test_registry_retention_and_delete(builds, node_registry, image, start_operator):  # noqa: F811
    """The artifact goes to the source image's own repository, so it is also listed in the referrers tag of
    the source image (Debian's registry has no referrers API)."""
    start_operator()
    ref, source_digest = image()
    repo = ref.split("/", 1)[1].rsplit(":", 1)[0]
    referrers_tag = source_digest.replace(":", "-")
    builds.create("pushed", {"image": ref, "registry": {"insecure": True}, "deletionPolicy": "Delete",
                             "output": {"oci": {"repository": f"{node_registry.host}/{repo}", "tag": "boot"},
                                        "retention": 0}})
    first = builds.wait_reason("pushed", "Succeeded")["status"]["output"]["digest"]

    # A new image under the same tag, built at once (requested-at): the first artifact is a previous output.
    image(content=b"second\n")
    request_rebuild(builds, "pushed", "1")
    second = wait_until(lambda: (d := builds.get("pushed")["status"]["output"]["digest"]) != first and d,
                        timeout=120, what="the second artifact")
    with node_registry.client() as c:
        wait_until(lambda: manifest_status(node_registry.host, c, repo, first) == 404, what="the first deleted")
        assert manifest_status(node_registry.host, c, repo, "boot") == 200
        assert manifest_status(node_registry.host, c, repo, second) == 200
        # The first artifact's entry left the referrers tag of its subject (the first source image).
        assert manifest_status(node_registry.host, c, repo, referrers_tag) == 404
    wait_until(lambda: not builds.get("pushed")["status"].get("previousOutputs"), what="status forgets it")
    assert first in events(builds, "pushed")["PrunedOutputs"]

    builds.delete("pushed")
    wait_until(lambda: gone(builds, "pushed"), timeout=120, what="the build deleted")
    with node_registry.client() as c:
        assert manifest_status(node_registry.host, c, repo, second) == 404
        assert manifest_status(node_registry.host, c, repo, "boot") == 404
        second_source = c.head(f"/v2/{repo}/manifests/v1", headers={
            "Accept": "application/vnd.oci.image.manifest.v1+json"}).headers["docker-content-digest"]
        assert manifest_status(node_registry.host, c, repo, second_source.replace(":", "-")) == 404
        assert manifest_status(node_registry.host, c, repo, "v1") == 200  # the source image is not ours
    assert second in events(builds, "pushed")["CleanedUp"]


def test_unreachable_registry_gives_up_and_says_what_was_left(builds, slow_registry, image,  # noqa: F811
                                                              start_operator):
    start_operator()
    ref, _ = image()
    repo = unique_repo("unreachable")
    builds.create("lost", {"image": ref, "registry": {"insecure": True}, "deletionPolicy": "Delete",
                           "output": {"oci": {"repository": f"{slow_registry.host}/{repo}", "tag": "boot"}}})
    digest = builds.wait_reason("lost", "Succeeded")["status"]["output"]["digest"]
    slow_registry.close()  # nothing answers there any more

    builds.delete("lost")
    # CLEANUP_ATTEMPTS attempts, 5 s + 10 s + 20 s of backoff between them (the chart's retry settings).
    wait_until(lambda: gone(builds, "lost"), timeout=150, what="the finalizer given up")
    warning = events(builds, "lost")["CleanupIncomplete"]
    assert digest in warning and f"gave up after {cleanup.CLEANUP_ATTEMPTS} attempts" in warning
    assert "Traceback" not in warning
