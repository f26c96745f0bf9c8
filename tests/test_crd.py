"""The CRD as the real API server enforces it: defaults, validation messages, status, printer columns."""

import json

import pytest

from fixtures.operator import api_error

VALID = {"image": "registry.example.com/app:1.0", "output": {"pvc": {"claimName": "images", "path": "app.cpio.gz"}}}
CM = {"name": "files", "key": "k"}


def test_defaults_are_applied(builds):
    spec = builds.create("defaults", VALID)["spec"]
    assert spec["compression"] == {"format": "gzip"} and spec["backoffLimit"] == 2


def test_every_field_is_accepted(builds):
    spec = {
        "image": "registry.example.com:5000/team/app:1.0", "platform": "linux/arm/v7",
        "imagePullSecrets": [{"name": "pull"}],
        "registry": {"insecure": True, "caConfigMap": {"name": "cas"}},
        "compression": {"format": "zstd", "level": 19},
        "init": {"configMapKeyRef": CM},
        "inject": [{"path": "/etc/app.conf", "mode": 0o644, "secretKeyRef": CM},
                   {"path": "/etc/a=b", "configMapKeyRef": CM}],
        "exclude": ["/usr/share/doc"],
        "output": {"oci": {"repository": "registry.example.com:5000/boot/app", "tag": "v1.0_rc-1",
                           "pushSecret": {"name": "push"}}},
        "refreshInterval": "1h30m",
        "resources": {"requests": {"cpu": "500m", "memory": 1073741824}, "limits": {"memory": "2Gi"}},
        "nodeSelector": {"kubernetes.io/arch": "amd64"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "build", "effect": "NoSchedule"}],
        "activeDeadlineSeconds": 3600, "backoffLimit": 0,
    }
    assert builds.create("full", spec)["spec"] == {**spec, "registry": {"insecure": True, "caConfigMap": {
        "name": "cas", "key": "ca.crt"}}}


@pytest.mark.parametrize("change, message", [
    ({"output": None}, "spec.output: Required value"),
    ({"output": {}}, "output needs exactly one of pvc and oci"),
    ({"output": {**VALID["output"], "oci": {"repository": "r.example.com/x", "tag": "t"}}},
     "output needs exactly one of pvc and oci"),
    ({"output": {"pvc": {"claimName": "x", "path": "/abs/file"}}}, "must be a relative file path"),
    ({"output": {"pvc": {"claimName": "x", "path": "a/../../etc/passwd"}}}, "must not contain '.', '..'"),
    ({"output": {"pvc": {"claimName": "x", "path": "dir/"}}}, "must be a relative file path"),
    ({"output": {"oci": {"repository": "r.example.com/x:latest", "tag": "t"}}}, "without tag or digest"),
    ({"output": {"oci": {"repository": "r.example.com/x", "tag": ".hidden"}}}, "output.oci.tag must be"),
    ({"compression": {"format": "brotli"}}, 'Unsupported value: "brotli"'),
    ({"compression": {"format": "gzip", "level": 12}}, "gzip compression.level must be 1-9"),
    ({"compression": {"format": "zstd", "level": 20}}, "should be less than or equal to 19"),
    ({"compression": {"format": "none", "level": 1}}, "compression.level does not apply to format none"),
    ({"inject": [{"path": "etc/x", "configMapKeyRef": CM}]}, "inject path must be an absolute file path"),
    ({"inject": [{"path": "/etc/../x", "configMapKeyRef": CM}]}, "must not contain '.', '..'"),
    ({"inject": [{"path": "/etc/x:y", "configMapKeyRef": CM}]}, "inject path must not contain ':'"),
    ({"inject": [{"path": "/etc/x", "configMapKeyRef": CM, "secretKeyRef": CM}]},
     "exactly one of configMapKeyRef and secretKeyRef"),
    ({"inject": [{"path": "/etc/x"}]}, "exactly one of configMapKeyRef and secretKeyRef"),
    ({"inject": [{"path": "/etc/x", "mode": 0o10000, "configMapKeyRef": CM}]}, "less than or equal to 4095"),
    ({"inject": [{"path": "/x", "configMapKeyRef": CM}, {"path": "/x", "secretKeyRef": CM}]}, "Duplicate value"),
    ({"refreshInterval": "1s"}, "refreshInterval must be a duration of at least 5s"),
    ({"refreshInterval": "soon"}, "refreshInterval must be a duration of at least 5s"),
    ({"image": "registry.example.com/app@sha256:" + "0" * 64, "refreshInterval": "10m"}, "pinned by digest"),
    ({"image": "oci:/tmp/layout"}, "must be a registry reference"),
    ({"image": "registry.example.com/my app"}, "without spaces"),
    ({"image": ""}, "without spaces"),
    ({"platform": "amd64"}, "platform must be os/arch[/variant]"),
    ({"backoffLimit": -1}, "should be greater than or equal to 0"),
    ({"activeDeadlineSeconds": 0}, "should be greater than or equal to 1"),
    ({"tolerations": [{"operator": "Maybe"}]}, 'Unsupported value: "Maybe"'),
    ({"unknownField": 1}, 'unknown field "spec.unknownField"'),
])
def test_invalid_specs_are_rejected_with_a_clear_message(builds, change, message):
    spec = {k: v for k, v in {**VALID, **change}.items() if v is not None}
    e = api_error(lambda: builds.create("bad", spec))
    assert e.status in (400, 422), e.body
    assert message in json.loads(e.body)["message"], json.loads(e.body)["message"]


def test_status_is_a_subresource_with_condition_rules(builds, kube):
    builds.create("st", VALID)
    status = {"observedGeneration": 1, "imageDigest": "sha256:" + "ab" * 32, "shortDigest": "abababababab",
              "output": {"size": 4096, "sha256": "cd" * 32},
              "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded", "message": "built",
                              "lastTransitionTime": "2024-01-01T00:00:00Z", "observedGeneration": 1}]}
    builds.patch_spec("st", {"exclude": ["/tmp"]})
    assert "status" not in builds.get("st")
    patch = lambda s: builds.custom.patch_namespaced_custom_object_status(
        "initramfs.dev", "v1alpha1", builds.namespace, "initramfsbuilds", "st", {"status": s})
    patch(status)
    bad = {**status, "conditions": [{**status["conditions"][0], "reason": "not a reason!"}]}
    assert "conditions[0].reason" in json.loads(api_error(lambda: patch(bad)).body)["message"]

    out = kube.kubectl("get", "irb", "st", "-n", builds.namespace).stdout.splitlines()
    assert out[0].split() == ["NAME", "IMAGE", "READY", "REASON", "DIGEST", "SIZE", "AGE"]
    assert out[1].split()[:6] == ["st", "registry.example.com/app:1.0", "True", "Succeeded", "abababababab", "4096"]
