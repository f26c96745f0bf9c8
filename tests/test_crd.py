"""The CRD as the real API server enforces it: defaults, validation messages, status, printer columns,
and what `kubectl explain` tells about each field."""

import json
from collections.abc import Iterator

import pytest
import yaml

from fixtures.operator import CRD, api_error

VALID = {"image": "registry.example.com/app:1.0", "output": {"pvc": {"claimName": "images", "path": "app.cpio.gz"}}}
CM = {"name": "files", "key": "k"}


def test_defaults_are_applied(builds):
    spec = builds.create("defaults", VALID)["spec"]
    assert spec["compression"] == {"format": "gzip"} and spec["backoffLimit"] == 2


@pytest.mark.parametrize("format, level", [("lz4", 1), ("lz4", 12), ("xz", 0), ("xz", 9), ("gzip", 1), ("zstd", 19)])
def test_each_format_takes_its_levels(builds, format, level):
    spec = builds.create(f"{format}-{level}", {**VALID, "compression": {"format": format, "level": level}})["spec"]
    assert spec["compression"] == {"format": format, "level": level}


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
    ({"compression": {"format": "gzip", "level": 0}}, "gzip compression.level must be 1-9"),
    ({"compression": {"format": "zstd", "level": 0}}, "zstd compression.level must be 1-19"),
    ({"compression": {"format": "lz4", "level": 13}}, "lz4 compression.level must be 1-12"),
    ({"compression": {"format": "lz4", "level": 0}}, "lz4 compression.level must be 1-12"),
    ({"compression": {"format": "xz", "level": 10}}, "xz compression.level must be 0-9"),
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
    ({"platform": "linux/amd64", "platforms": ["linux/arm64"]}, "set platforms, or platform"),
    ({"platforms": ["linux/amd64", "arm64"]}, "each platform must be os/arch[/variant]"),
    ({"platforms": []}, "should have at least 1 items"),
    ({"platforms": ["linux/amd64", "linux/amd64"]}, "Duplicate value"),
    ({"platforms": ["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/riscv64", "linux/s390x"]},
     "must have at most 4 items"),
    ({"platforms": ["linux/amd64", "linux/arm64"]}, "output.pvc.path needs {arch} or {platform}"),
    ({"platforms": ["linux/amd64", "linux/arm64"], "output": {"pvc": {"claimName": "x", "path": "a" * 251 + "{arch}"}}},
     "output.pvc.path is at most 256 characters"),
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


def test_several_platforms_and_their_files(builds):
    spec = {**VALID, "platforms": ["linux/amd64", "linux/arm64"],
            "output": {"pvc": {"claimName": "images", "path": "boot/app-{arch}.cpio.gz"}}}
    assert builds.create("two", spec)["spec"]["platforms"] == ["linux/amd64", "linux/arm64"]
    one = {**VALID, "platforms": ["linux/arm64"]}  # one platform needs no placeholder
    assert builds.create("one", one)["spec"]["platforms"] == ["linux/arm64"]


def test_status_is_a_subresource_with_condition_rules(builds, kube):
    builds.create("st", VALID)
    status = {"observedGeneration": 1, "imageDigest": "sha256:" + "ab" * 32, "shortDigest": "abababababab",
              "output": {"size": 4096, "sha256": "cd" * 32},
              "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded",
                              "message": "built app.cpio.gz, 4096 bytes",
                              "lastTransitionTime": "2024-01-01T00:00:00Z", "observedGeneration": 1}]}
    # The main resource ignores status (only its default, for kstatus, is there): it is a subresource.
    builds.custom.patch_namespaced_custom_object("initramfs.dev", "v1alpha1", builds.namespace, "initramfsbuilds",
                                                 "st", {"spec": {"exclude": ["/tmp"]}, "status": status})
    assert builds.get("st")["status"] == {"observedGeneration": 0} and builds.get("st")["spec"]["exclude"] == ["/tmp"]
    def patch(s):
        return builds.custom.patch_namespaced_custom_object_status(
            "initramfs.dev", "v1alpha1", builds.namespace, "initramfsbuilds", "st", {"status": s})
    patch(status)
    bad = {**status, "conditions": [{**status["conditions"][0], "reason": "not a reason!"}]}
    assert "conditions[0].reason" in json.loads(api_error(lambda: patch(bad)).body)["message"]

    [version] = yaml.safe_load(CRD.read_text())["spec"]["versions"]
    columns = version["additionalPrinterColumns"]
    default = ["NAME"] + [c["name"].upper() for c in columns if not c.get("priority")]
    assert default[:6] == ["NAME", "IMAGE", "READY", "REASON", "DIGEST", "SIZE"] and "MESSAGE" not in default
    out = kube.kubectl("get", "irb", "st", "-n", builds.namespace).stdout.splitlines()
    assert out[0].split() == default
    assert out[1].split()[:6] == ["st", "registry.example.com/app:1.0", "True", "Succeeded", "abababababab", "4096"]
    # The Ready condition's message only with -o wide (priority 1), after every other column.
    assert columns[-1] == {"name": "Message", "type": "string", "priority": 1,
                           "jsonPath": '.status.conditions[?(@.type=="Ready")].message'}
    wide = kube.kubectl("get", "irb", "st", "-n", builds.namespace, "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME"] + [c["name"].upper() for c in columns]
    assert wide[1].split()[:6] == out[1].split()[:6] and wide[1].rstrip().endswith("  built app.cpio.gz, 4096 bytes")


# --- descriptions ----------------------------------------------------------------------------------

def schema_fields(node: dict, path: str) -> Iterator[tuple[str, dict]]:
    """Every field below `node` with its dotted path ([] for list items, {} for map values)."""
    for name, child in (node.get("properties") or {}).items():
        yield f"{path}.{name}", child
        yield from schema_fields(child, f"{path}.{name}")
    if "items" in node:
        yield from schema_fields(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from schema_fields(node["additionalProperties"], f"{path}{{}}")


def test_every_field_has_a_description():
    crd = yaml.safe_load(CRD.read_text())
    for version in crd["spec"]["versions"]:
        fields = dict(schema_fields(version["schema"]["openAPIV3Schema"], ""))
        assert len(fields) > 80  # the walk reached the leaves
        # The API server refuses anything but the type on metadata.
        undescribed = [path for path, node in fields.items() if not node.get("description") and path != ".metadata"]
        assert not undescribed, f"{version['name']}: fields without a description: {undescribed}"


def test_kubectl_explain_shows_the_descriptions(kube, crd):
    claim = kube.kubectl("explain", "initramfsbuilds.spec.output.pvc.claimName").stdout
    assert "Name of a PersistentVolumeClaim in the build's namespace." in claim
    tolerations = kube.kubectl("explain", "irb.spec.tolerations", "--recursive").stdout
    assert "Taints the build pod tolerates" in tolerations and "tolerationSeconds" in tolerations
