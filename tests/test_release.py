"""The InitramfsRelease the operator derives from a build (what every selected agent watches), and when it
is written: one case a row."""

import asyncio

import pytest

from fixtures.fake_kube import FakeKube
from initramfs_operator.kube import api, crd, handlers
from initramfs_operator.kube.release import Releases, release_spec

OUTPUT = {"reference": "r/out@sha256:" + "1" * 64, "digest": "sha256:" + "1" * 64, "sha256": "a" * 64,
          "sha512": "b" * 128, "size": 9, "compression": "gzip", "entries": 12, "imageDigest": "sha256:" + "2" * 64}
BUILD = {"metadata": {"namespace": "team", "name": "vm", "uid": "u", "generation": 3,
                      "creationTimestamp": "2026-01-01T00:00:00Z", "resourceVersion": "7"},
         "spec": {"image": "r/app:1", "output": {"oci": {"repository": "r/out", "tag": "v",
                                                        "pushSecret": {"name": "push"}}},
                  "delivery": {"nodeSelector": {"matchLabels": {"vm": "yes"}}, "keep": 3}},
         "status": {"output": OUTPUT}}
URL = api.path(crd.API_VERSION, crd.RELEASE_PLURAL, "team", "vm")


def edited(edit: dict) -> dict:
    return {part: {**BUILD[part], **edit.get(part, {})} for part in BUILD}


def test_a_release_says_what_hosts_act_on():
    assert release_spec(BUILD) == {
        "buildUID": "u", "buildCreationTimestamp": "2026-01-01T00:00:00Z",
        "delivery": {"nodeSelector": {"matchLabels": {"vm": "yes"}}, "directory": "vm", "keep": 3,
                     "reclaimPolicy": "Retain"},
        "registry": {"insecure": False, "pullSecret": "push"},
        "output": {k: OUTPUT[k] for k in ("reference", "digest", "sha256", "sha512", "size", "compression")}}


@pytest.mark.parametrize(("edit", "changes"), [
    # Nothing a host holds: no write, so no event for any agent, whatever the generation says.
    ({"metadata": {"generation": 4, "resourceVersion": "8"}, "spec": {"suspend": True}}, False),
    ({"spec": {"refreshInterval": "1h", "resources": {"limits": {"cpu": "1"}}}}, False),
    ({"spec": {"image": "r/app:2", "imagePullSecrets": [{"name": "source"}]}}, False),
    ({"metadata": {"annotations": {"initramfs.dev/requested-at": "now"}}}, False),
    ({"status": {"output": OUTPUT, "delivery": {"nodes": "1/2"}, "conditions": [{"type": "Delivered"}]}}, False),
    ({"status": {"output": {**OUTPUT, "entries": 13, "platform": "linux/amd64"}}}, False),
    # What a host holds, where, or how it pulls it.
    ({"spec": {"delivery": {"nodeSelector": {}, "keep": 2}}}, True),
    ({"spec": {"delivery": {"nodeSelector": {}, "directory": "other"}}}, True),
    ({"spec": {"registry": {"insecure": True}}}, True),
    ({"spec": {"registry": {"caConfigMap": {"name": "ca", "key": "ca.crt"}}}}, True),
    ({"spec": {"output": {"oci": {"repository": "r/out", "tag": "v"}}}}, True),  # the push Secret removed
    ({"status": {"output": {**OUTPUT, "reference": "r/out@sha256:" + "3" * 64, "sha256": "c" * 64}}}, True),
    ({"status": {"output": None}}, True),  # no output (yet): the release names none
    ({"metadata": {"uid": "v"}}, True),  # a new build of the same name
])
def test_a_release_changes_only_with_what_hosts_hold(edit: dict, changes: bool):
    assert (release_spec(edited(edit)) != release_spec(BUILD)) is changes


def releases_holding(*specs: dict) -> Releases:
    """Releases writing through a FakeKube, its index holding releases with these specs (as kopf's would)."""
    kube = FakeKube()
    kube.route("PATCH", URL, lambda request: request.body or {})  # the applied object, as the API server answers
    releases = Releases(kube)
    stores = [asyncio.run(handlers.releases(body={"spec": spec}, namespace="team", name="vm")) for spec in specs]
    releases.bind({key: (value,) for store in stores for key, value in store.items()})
    return releases


@pytest.mark.parametrize(("held", "build", "sent"), [
    (None, BUILD, [("PATCH", URL)]),                          # a new delivering build
    (release_spec(BUILD), BUILD, []),                         # nothing changed: no request
    (release_spec(BUILD), edited({"spec": {"suspend": True}}), []),
    (release_spec(BUILD), edited({"status": {"output": None}}), [("PATCH", URL)]),
    (release_spec(BUILD), edited({"spec": {"delivery": None}}), [("DELETE", URL)]),  # stopped delivering
    (None, edited({"spec": {"delivery": None}}), []),
    (release_spec(BUILD), None, []),                          # build deleted: the garbage collector's
])
def test_a_release_is_written_only_when_it_changes(held, build, sent):
    releases = releases_holding(*([held] if held else []))
    releases.sync("team", "vm", build)
    requests = releases.kube.sent()  # type: ignore[attr-defined]
    assert [(r.method, r.path) for r in requests] == sent
    if sent and sent[0][0] == "PATCH":
        body = requests[0].body
        assert requests[0].query == {"fieldManager": "initramfs-operator", "force": "true"}
        assert body["spec"] == release_spec(build, held=held) and body["kind"] == crd.RELEASE_KIND
        assert body["metadata"]["ownerReferences"] == [{"apiVersion": crd.API_VERSION, "kind": crd.KIND, "name": "vm",
                                                        "uid": "u", "controller": True, "blockOwnerDeletion": True}]


def test_a_release_already_gone_is_not_an_error():
    releases = releases_holding(release_spec(BUILD))
    releases.sync("team", "vm", edited({"spec": {"delivery": None}}))  # the FakeKube answers 404
    assert [r.method for r in releases.kube.sent()] == ["DELETE"]  # type: ignore[attr-defined]


# --- several platforms -------------------------------------------------------------------------------------

INDEX = {"reference": "r/out@sha256:" + "5" * 64, "digest": "sha256:" + "5" * 64, "tag": "v", "compression": "gzip",
         "imageDigest": "sha256:" + "6" * 64, "platforms": "linux/amd64,linux/arm/v7"}
FILES = [{"platform": "linux/amd64", "os": "linux", "architecture": "amd64", "reference": "r/out@sha256:" + "7" * 64,
          "digest": "sha256:" + "7" * 64, "sha256": "c" * 64, "sha512": "d" * 128, "size": 5, "entries": 3,
          "compression": "gzip", "imageDigest": "sha256:" + "8" * 64},
         {"platform": "linux/arm/v7", "os": "linux", "architecture": "arm", "variant": "v7",
          "reference": "r/out@sha256:" + "9" * 64, "digest": "sha256:" + "9" * 64, "sha256": "e" * 64,
          "sha512": "f" * 128, "size": 6, "entries": 3, "compression": "gzip", "imageDigest": "sha256:" + "a" * 64}]
MULTI = edited({"status": {"output": INDEX, "outputs": FILES}})
SENT = ("os", "architecture", "variant", "reference", "digest", "sha256", "sha512", "size", "compression")


def test_a_release_of_several_platforms_names_the_index_and_each_file():
    assert release_spec(MULTI)["output"] == {"reference": INDEX["reference"], "digest": INDEX["digest"],
                                             "platforms": [{k: f[k] for k in SENT if k in f} for f in FILES]}
    # Status fields no host uses change nothing; any platform's file does.
    busy = [{**f, "entries": 4, "imageDigest": "sha256:" + "b" * 64, "platform": "x"} for f in FILES]
    assert release_spec(edited({"status": {"output": {**INDEX, "tag": "w"}, "outputs": busy}})) == \
        release_spec(MULTI)
    rebuilt = [FILES[0], {**FILES[1], "sha256": "1" * 64}]
    assert release_spec(edited({"status": {"output": INDEX, "outputs": rebuilt}})) != release_spec(MULTI)
    # Half a result (a platform without its file) is no output: the release names none.
    assert "output" not in release_spec(edited({"status": {"output": INDEX, "outputs": [FILES[0], {"os": "linux"}]}}))


def test_a_release_of_several_platforms_is_one_write_per_output():
    """Written when the output changes, not per node nor per platform: the agents pick their file from it."""
    releases = releases_holding()
    releases.sync("team", "vm", MULTI)
    written = releases.kube.sent()[0].body["spec"]  # type: ignore[attr-defined]
    again = releases_holding(written)
    for build in (MULTI, edited({"status": {"output": INDEX, "outputs": FILES, "delivery": {"nodes": "1/2"}}})):
        again.sync("team", "vm", build)
    assert again.kube.sent() == []  # type: ignore[attr-defined]
