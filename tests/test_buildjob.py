"""The pure parts of the operator: Job manifests, results, conditions and timing decisions."""

import json

import pytest
import yaml

from fixtures.tools import REPO
from initramfs_operator import cli
from initramfs_operator.archive import compress
from initramfs_operator.kube import buildjob, conditions

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


def build(spec: dict | None = None, name: str = "app", generation: int = 1) -> dict:
    return {"metadata": {"name": name, "namespace": "ns", "uid": "0e6f5a0c-1111-2222-3333-444455556666",
                         "generation": generation},
            "spec": spec or {"image": "registry.example.com/team/app:1.0",
                             "output": {"pvc": {"claimName": "images", "path": "boot/app.cpio.gz"}}}}


def container(manifest: dict) -> dict:
    return manifest["spec"]["template"]["spec"]["containers"][0]


def test_job_name_is_deterministic_per_generation_and_digest():
    b = build()
    assert buildjob.job_name(b, DIGEST) == buildjob.job_name(build(), DIGEST)
    names = {buildjob.job_name(b, DIGEST), buildjob.job_name(b, OTHER), buildjob.job_name(build(generation=2), DIGEST)}
    assert len(names) == 3
    long = buildjob.job_name(build(name="x" * 250), DIGEST)
    assert len(long) <= 63 and long[-1].isalnum()


def test_pvc_job_runs_the_builder_locked_down():
    manifest = buildjob.build_job(build(), DIGEST, "builder:1")
    pod = manifest["spec"]["template"]["spec"]
    c = container(manifest)
    assert c["image"] == "builder:1" and c["command"] == ["initramfs-builder"]
    assert c["args"][:2] == ["build", f"registry.example.com/team/app:1.0@{DIGEST}"]
    args = " ".join(c["args"])
    assert "-o /output/boot/app.cpio.gz" in args and "-c gzip" in args
    assert "--result-file /dev/termination-log" in args and "--scratch-dir /scratch" in args
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert {"name": "TMPDIR", "value": "/scratch"} in c["env"]
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and sc["runAsUser"] == 65532 and sc["readOnlyRootFilesystem"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    pod_security = pod["securityContext"]
    assert pod_security["runAsNonRoot"] and pod_security["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/scratch"]] == {"name": "scratch", "emptyDir": {"sizeLimit": "32Gi"}}
    assert "/cache" not in mounts and "imagePullSecrets" not in pod and "resources" not in c
    assert volumes[mounts["/output"]]["persistentVolumeClaim"] == {"claimName": "images"}
    owner = manifest["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("InitramfsBuild", "app", True)
    assert manifest["metadata"]["annotations"][buildjob.IMAGE_DIGEST] == DIGEST
    assert manifest["spec"]["template"]["metadata"]["labels"][buildjob.MANAGED_BY] == buildjob.OPERATOR
    assert manifest["spec"]["backoffLimit"] == 2
    # The operator's default deadline and cleanup apply to a build that sets none.
    assert manifest["spec"]["activeDeadlineSeconds"] == 3600 and manifest["spec"]["ttlSecondsAfterFinished"] == 3600
    assert manifest["spec"]["template"]["metadata"]["annotations"] == {buildjob.BUILD_NAME: "app"}
    fail_job = manifest["spec"]["podFailurePolicy"]["rules"][1]
    assert fail_job["action"] == "FailJob" and fail_job["onExitCodes"]["values"] == [2, 3, 4]  # not 5: retried


PVC_OUTPUT = {"pvc": {"claimName": "images", "path": "app.cpio.gz"}}
OCI_OUTPUT = {"oci": {"repository": "dst.example.com/boot/app", "tag": "v2"}}
CACHE = buildjob.BuildCache("layers", "20Gi")


@pytest.mark.parametrize(("limits", "output", "cache", "size_limit"), [
    ({}, PVC_OUTPUT, None, "32Gi"),                        # layers, and the file contents kept
    ({}, OCI_OUTPUT, None, "48Gi"),                        # and the archive until it is pushed
    ({}, PVC_OUTPUT, CACHE, "16Gi"),                       # the layers are in the cache
    ({"maxUncompressedSize": "1Gi"}, OCI_OUTPUT, CACHE, "2Gi"),
    ({"maxUncompressedSize": 1000}, PVC_OUTPUT, None, "2000"),
    ({"maxUncompressedSize": "500M"}, PVC_OUTPUT, None, "1000000000"),
    ({"maxUncompressedSize": "1Gi", "platforms": 2}, PVC_OUTPUT, None, "2Gi"),  # a Job builds one platform
])
def test_the_scratch_volume_is_bounded_by_what_the_build_may_keep_there(limits, output, cache, size_limit):
    limits = dict(limits)
    count = limits.pop("platforms", 1)
    spec = {"image": "src.example.com/app:1", "output": output, "limits": limits,
            **({"platforms": ["linux/amd64", "linux/arm64"][:count]} if count > 1 else {})}
    pod = buildjob.build_job(build(spec), DIGEST, "builder:1", defaults=buildjob.PodDefaults(cache),
                             platform="linux/arm64" if count > 1 else None)["spec"]["template"]["spec"]
    assert pod["volumes"][0] == {"name": "scratch", "emptyDir": {"sizeLimit": size_limit}}


@pytest.mark.parametrize(("spec_cache", "default", "claim", "max_size"), [
    (None, None, None, None),
    (None, CACHE, "layers", "20Gi"),
    ({"claimName": "own"}, CACHE, "own", None),  # the build's own, unbounded
    ({"claimName": "own", "maxSize": 1 << 30}, None, "own", "1073741824"),
])
def test_the_layer_cache_is_the_build_s_own_or_the_operator_s(spec_cache, default, claim, max_size):
    spec = {**build()["spec"], **({"cache": spec_cache} if spec_cache else {})}
    manifest = buildjob.build_job(build(spec), DIGEST, "builder:1", defaults=buildjob.PodDefaults(default))
    c, pod = container(manifest), manifest["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    parsed = cli.parser().parse_args(c["args"])
    assert (parsed.cache_dir, parsed.cache_max_size) == ("/cache" if claim else None, max_size)
    if claim:
        assert volumes["cache"]["persistentVolumeClaim"] == {"claimName": claim}
        assert {"name": "cache", "mountPath": "/cache"} in c["volumeMounts"]
    else:
        assert "cache" not in volumes


def test_operator_defaults_pull_the_builder_and_size_builds_that_set_nothing():
    defaults = buildjob.PodDefaults(image_pull_secrets=("regcred", "mirror"), resources={"limits": {"memory": "1Gi"}})
    manifest = buildjob.build_job(build(), DIGEST, "private.example.com/builder:1", defaults=defaults)
    pod = manifest["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]
    assert container(manifest)["resources"] == {"limits": {"memory": "1Gi"}}
    own = {**build()["spec"], "resources": {"limits": {"memory": "3Gi"}}}
    assert container(buildjob.build_job(build(own), DIGEST, "b:1", defaults=defaults))["resources"] == own["resources"]


def crd_compression() -> dict:
    crd = yaml.safe_load((REPO / "crds/initramfsbuilds.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["compression"]


def test_the_crd_offers_the_builder_s_formats():
    assert crd_compression()["properties"]["format"]["enum"] == list(compress.FORMATS)


@pytest.mark.parametrize("format", [f for f, (low, high, _) in compress.FORMATS.items() if high])
def test_each_format_and_level_range_reaches_the_builder(format):
    low, high, _ = compress.FORMATS[format]
    for level in (low, high):
        spec = {**build()["spec"], "compression": {"format": format, "level": level}}
        parsed = cli.parser().parse_args(container(buildjob.build_job(build(spec), DIGEST, "builder:1", []))["args"])
        assert (parsed.compression, compress.check(parsed.compression, parsed.level)) == (format, level)


def test_every_option_reaches_the_builder_and_the_cli_accepts_it():
    spec = {
        "image": "src.example.com:5000/app:2", "platform": "linux/arm64",
        "imagePullSecrets": [{"name": "pull"}], "registry": {"insecure": True, "caConfigMap": {"name": "cas"}},
        "compression": {"format": "zstd", "level": 12},
        "init": {"configMapKeyRef": {"name": "boot", "key": "init.sh"}},
        "inject": [{"path": "/etc/app.conf", "mode": 0o600, "secretKeyRef": {"name": "conf", "key": "app"}},
                   {"path": "/etc/motd", "configMapKeyRef": {"name": "texts", "key": "motd"}}],
        "exclude": ["/usr/share/doc", "**/*.pyc"],
        "output": {"oci": {"repository": "dst.example.com/boot/app", "tag": "v2", "pushSecret": {"name": "push"}}},
        "resources": {"limits": {"memory": "1Gi"}}, "nodeSelector": {"disk": "ssd"},
        "tolerations": [{"key": "build", "operator": "Exists"}], "activeDeadlineSeconds": 600, "backoffLimit": 0,
    }
    manifest = buildjob.build_job(build(spec), DIGEST, "builder:1", [("push", ".dockerconfigjson"),
                                                                     ("pull", ".dockercfg")],
                                  limits=buildjob.Limits(deadline_seconds=60, ttl_seconds=None))
    c = container(manifest)
    args = c["args"]
    parsed = cli.parser().parse_args(args)
    assert parsed.image == f"src.example.com:5000/app:2@{DIGEST}"
    assert parsed.push == "dst.example.com/boot/app:v2" and parsed.output is None
    assert (parsed.compression, parsed.level, parsed.platform) == ("zstd", 12, "linux/arm64")
    assert parsed.insecure_registry == ["src.example.com:5000", "dst.example.com"]
    # The Secrets as they are, push first: the builder reads them in this order, first entry wins.
    assert parsed.registry_config == ["/var/run/initramfs/registry/push/.dockerconfigjson",
                                      "/var/run/initramfs/registry/pull/.dockercfg"]
    assert parsed.ca_file == "/var/run/initramfs/ca/ca.crt" and parsed.init == "/var/run/initramfs/init/init"
    assert parsed.inject == ["/var/run/initramfs/inject/0/file=/etc/app.conf:0600",
                             "/var/run/initramfs/inject/1/file=/etc/motd"]
    assert parsed.exclude == ["/usr/share/doc", "**/*.pyc"]
    assert parsed.result_file == "/dev/termination-log" and parsed.scratch_dir == "/scratch"

    pod = manifest["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    registry = mounts["/var/run/initramfs/registry"]
    assert registry["readOnly"] and volumes[registry["name"]]["projected"] == {"sources": [
        {"secret": {"name": "push", "items": [{"key": ".dockerconfigjson", "path": "push/.dockerconfigjson"}]}},
        {"secret": {"name": "pull", "items": [{"key": ".dockercfg", "path": "pull/.dockercfg"}]}}]}
    assert volumes[mounts["/var/run/initramfs/inject/0"]["name"]]["secret"]["items"] == [{"key": "app", "path": "file"}]
    assert volumes[mounts["/var/run/initramfs/inject/1"]["name"]]["configMap"]["name"] == "texts"
    ca = volumes[mounts["/var/run/initramfs/ca"]["name"]]["configMap"]
    assert ca["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    assert all(m["readOnly"] for p, m in mounts.items() if p.startswith("/var/run/initramfs"))
    assert "/output" not in mounts
    assert c["resources"] == {"limits": {"memory": "1Gi"}}
    assert pod["nodeSelector"] == {"disk": "ssd"} and pod["tolerations"] == [{"key": "build", "operator": "Exists"}]
    # The build's own deadline wins over the operator's; no TTL when the operator sets none.
    assert manifest["spec"]["activeDeadlineSeconds"] == 600 and manifest["spec"]["backoffLimit"] == 0
    assert "ttlSecondsAfterFinished" not in manifest["spec"]


PVC_SPEC = build()["spec"]


def test_success_result_becomes_status_output():
    result = {"output": "/output/boot/app.cpio.gz", "size": 1234, "sha256": "aa" * 32, "sha512": "bb" * 64,
              "entries": 42, "image": "x", "imageDigest": OTHER, "platform": "linux/amd64", "compression": "gzip",
              "init": "generated"}
    o = buildjob.outcome({"exitCode": 0, "reason": "Completed", "message": json.dumps(result)}, PVC_SPEC)
    assert o.reason == "Succeeded" and "1234 bytes" in o.message
    assert o.output == {"claimName": "images", "path": "boot/app.cpio.gz", "size": 1234, "sha256": "aa" * 32,
                        "sha512": "bb" * 64, "entries": 42, "imageDigest": OTHER, "platform": "linux/amd64",
                        "compression": "gzip"}


@pytest.mark.parametrize("terminated, reason, words", [
    ({"exitCode": 3, "message": '{"error": "registry: access denied (HTTP 401)", "reason": "Unauthorized"}'},
     "Unauthorized", "access denied"),
    ({"exitCode": 4, "message": '{"error": "layer digest mismatch", "reason": "InvalidImage"}'},
     "InvalidImage", "digest mismatch"),
    ({"exitCode": 1, "message": '{"error": "odd", "reason": "NotAReason"}'}, "BuildFailed", "odd"),
    ({"exitCode": 5, "message": "Traceback (most recent call last):\nOSError: No space left"}, "OutputFailed",
     "No space left"),
    ({"exitCode": 1, "message": ""}, "BuildFailed", "exited with code 1"),
    ({"exitCode": 137, "reason": "OOMKilled", "message": "last log line"}, "OOMKilled", "memory"),
    (None, "BuildFailed", "without a container status"),
])
def test_failures_map_to_reasons(terminated, reason, words):
    o = buildjob.outcome(terminated, PVC_SPEC)
    assert (o.reason, o.output) == (reason, None) and words in o.message


def job(*conditions_: tuple[str, str]) -> dict:
    return {"status": {"conditions": [{"type": t, "status": s, "reason": f"{t}Reason"} for t, s in conditions_]}}


@pytest.mark.parametrize(("state", "finishing", "finished", "failed"), [
    (job(), False, None, None),
    (job(("Suspended", "False")), False, None, None),
    # Decided, pods still stopping: Complete or Failed follows.
    (job(("SuccessCriteriaMet", "True")), True, None, None),
    (job(("FailureTarget", "True")), True, None, None),
    (job(("SuccessCriteriaMet", "True"), ("Complete", "True")), True, "Complete", None),
    (job(("FailureTarget", "True"), ("Failed", "True")), True, "Failed", "FailedReason"),
    (job(("Failed", "False")), False, None, None),
])
def test_job_state_is_read_from_its_true_conditions(state, finishing, finished, failed):
    assert buildjob.finishing(state) is finishing
    assert buildjob.finished(state) == finished
    assert (buildjob.failed_condition(state) or {}).get("reason") == failed


def test_conditions_keep_transition_time_until_status_flips():
    first = conditions.conditions(None, conditions.in_flight("Queued", "wait"), 1, "2024-01-01T00:00:00Z")
    assert [(c["type"], c["status"], c["reason"]) for c in first] == [("Ready", "False", "Queued"),
                                                                     ("Reconciling", "True", "Queued")]
    second = conditions.conditions(first, conditions.in_flight("Building", "go"), 1, "2024-01-01T00:01:00Z")
    assert all(c["lastTransitionTime"] == "2024-01-01T00:00:00Z" for c in second)
    third = conditions.conditions(second, conditions.succeeded("done"), 2, "2024-01-01T00:02:00Z")
    assert [(c["type"], c["status"], c["observedGeneration"], c["lastTransitionTime"]) for c in third] == \
        [("Ready", "True", 2, "2024-01-01T00:02:00Z")]  # Reconciling removed: kstatus reads absent as False


@pytest.mark.parametrize(("before", "status", "key", "expected"), [
    (None, "True", "status", "now"),
    ({"status": "True", "lastTransitionTime": "then"}, "True", "status", "then"),
    ({"status": "False", "lastTransitionTime": "then"}, "True", "status", "now"),
    ({"status": "True"}, "True", "status", "now"),  # none recorded
    ({"phase": "Ready", "lastTransitionTime": "then"}, "Ready", "phase", "then"),  # an agent's report
])
def test_transition_time_moves_only_when_the_status_does(before, status, key, expected):
    assert conditions.transition_time(before, status, "now", key=key) == expected


def test_duration_parsing_matches_the_crd_grammar():
    assert conditions.parse_duration("1h30m5s") == 5405 and conditions.parse_duration("10s") == 10


SEVERAL_PVC = {**PVC_SPEC, "platforms": ["linux/amd64", "linux/arm/v7"],
               "output": {"pvc": {"claimName": "images", "path": "boot/app-{arch}.cpio.gz"}}}
SEVERAL_OCI = {**SEVERAL_PVC, "output": {"oci": {"repository": "dst.example.com/boot/app", "tag": "v1"}}}


def test_several_platforms_get_a_job_each_building_only_its_own():
    names = buildjob.job_names(build(SEVERAL_PVC), DIGEST)
    assert list(names) == ["linux/amd64", "linux/arm/v7"]
    assert [n.rsplit("-", 1)[0] for n in names.values()] == ["app-1-amd64", "app-1-arm-v7"]
    again = {buildjob.platform_job_name(build(SEVERAL_PVC, generation=g), d, p)
             for g, d, p in [(1, DIGEST, "linux/amd64"), (2, DIGEST, "linux/amd64"), (1, OTHER, "linux/amd64"),
                             (1, DIGEST, "linux/arm/v7"), (1, DIGEST, "windows/amd64")]}
    assert len(again) == 5 and names["linux/amd64"] in again
    longest = buildjob.platform_job_name(build(SEVERAL_PVC, name="x" * 250, generation=2**62), DIGEST,
                                         "linux/" + "a" * 60 + "/v8")
    assert len(longest) <= 63 and longest[-1].isalnum()
    for spec, output in [(SEVERAL_PVC, "/output/boot/app-{arch}.cpio.gz"), (SEVERAL_OCI, None)]:
        for platform, name in buildjob.job_names(build(spec), DIGEST).items():
            manifest = buildjob.build_job(build(spec), DIGEST, "builder:1", platform=platform)
            assert manifest["metadata"]["name"] == name
            assert manifest["metadata"]["annotations"][buildjob.PLATFORM] == platform
            parsed = cli.parser().parse_args(container(manifest)["args"])
            assert (parsed.platform, parsed.output) == (platform, output)
            # an artifact by digest: the tag moves once, to the index of them all
            assert (parsed.push, parsed.push_by_digest) == ((None, False) if output else
                                                            ("dst.example.com/boot/app:v1", True))


@pytest.mark.parametrize("spec", [{**PVC_SPEC, "platform": "linux/arm64"}, {**PVC_SPEC, "platforms": ["linux/arm64"]},
                                  PVC_SPEC])
def test_a_build_of_one_platform_keeps_its_one_job_and_its_name(spec):
    """No Job of an existing build is renamed (and so built again) by platforms having Jobs of their own."""
    assert buildjob.job_names(build(spec), DIGEST) == {None: buildjob.job_name(build(spec), DIGEST)}
    manifest = buildjob.build_job(build(spec), DIGEST, "builder:1")
    assert buildjob.PLATFORM not in manifest["metadata"]["annotations"]
    parsed = cli.parser().parse_args(container(manifest)["args"])
    assert parsed.platform == (None if spec is PVC_SPEC else "linux/arm64") and not parsed.push_by_digest


def test_one_platform_keeps_status_output_and_adds_its_outputs_entry():
    """Existing users read status.output as before; status.outputs has the same file, with os and architecture."""
    spec = {**PVC_SPEC, "platform": "linux/arm/v7"}
    result = {"output": "/output/boot/app.cpio.gz", "size": 1234, "sha256": "aa" * 32, "sha512": "bb" * 64,
              "entries": 42, "image": "x", "imageDigest": OTHER, "platform": "linux/arm/v7", "compression": "gzip",
              "init": "generated"}
    o = buildjob.outcome({"exitCode": 0, "reason": "Completed", "message": json.dumps(result)}, spec)
    assert o.outputs == [{**o.output, "os": "linux", "architecture": "arm", "variant": "v7"}]


def platform_result(arch: str, size: int, c: str, d: str | None) -> dict:
    """What a platform's Job reports: its file, and (pushed by digest) its artifact, no tag."""
    where = {"reference": f"dst.example.com/boot/app@sha256:{d * 64}", "digest": f"sha256:{d * 64}"} if d else \
        {"output": f"/output/boot/app-{arch}.cpio.gz"}
    return {**where, "size": size, "sha256": c * 64, "sha512": c * 128, "entries": 7, "image": "x",
            "imageDigest": f"sha256:{c * 64}", "platform": f"linux/{arch}", "compression": "zstd", "init": "image"}


def test_the_platforms_results_become_an_entry_each_and_one_output():
    index = "sha256:" + "9" * 64
    outputs = []
    for platform, arch, size, c, d in [("linux/amd64", "amd64", 10, "1", "3"), ("linux/arm/v7", "arm", 20, "2", "4")]:
        o = buildjob.outcome({"exitCode": 0, "message": json.dumps(platform_result(arch, size, c, d))}, SEVERAL_OCI,
                             platform)
        assert o.reason == "Succeeded" and len(o.outputs or []) == 1
        outputs += o.outputs or []
    assert [(e["architecture"], e.get("variant"), e["reference"], e["size"], e["sha512"]) for e in outputs] == [
        ("amd64", None, "dst.example.com/boot/app@sha256:" + "3" * 64, 10, "1" * 128),
        ("arm", "v7", "dst.example.com/boot/app@sha256:" + "4" * 64, 20, "2" * 128)]
    # status.output is the index: refreshInterval's output check and `kubectl get` follow its digest
    output = buildjob.combined_output(SEVERAL_OCI, outputs, DIGEST, index)
    assert output == {"reference": "dst.example.com/boot/app@" + index, "digest": index, "compression": "zstd",
                      "imageDigest": DIGEST, "platforms": "linux/amd64,linux/arm", "tag": "v1"}
    assert buildjob.combined_message(output, outputs) == \
        f"built 2 platforms as dst.example.com/boot/app@{index}: linux/amd64 10 bytes, linux/arm 20 bytes"
    files = [(buildjob.outcome({"exitCode": 0, "message": json.dumps(platform_result(arch, 5, "1", None))},
                               SEVERAL_PVC, platform).outputs or [])[0]
             for platform, arch in [("linux/amd64", "amd64"), ("linux/arm/v7", "arm")]]
    assert [e["path"] for e in files] == ["boot/app-amd64.cpio.gz", "boot/app-armv7.cpio.gz"]
    output = buildjob.combined_output(SEVERAL_PVC, files, DIGEST, None)
    assert output == {"claimName": "images", "path": "boot/app-{arch}.cpio.gz", "compression": "zstd",
                      "imageDigest": DIGEST, "platforms": "linux/amd64,linux/arm"}


@pytest.mark.parametrize("output", ["oci", "pvc"])
def test_the_largest_result_the_crd_allows_fits_a_termination_message(output):
    """One platform's result (a Job builds one), the longest names the CRD allows: under the kubelet's 4096
    bytes."""
    result = {**platform_result("arm64", 10**12, "1", "3" if output == "oci" else None),
              "platform": "linux/arm64/v8", "entries": 10**7, "init": "generated", "image": "r" * 512 + "@" + DIGEST}
    if output == "oci":
        result.update(reference="r" * 255 + "@" + OTHER, tag="t" * 128)
    else:
        result.update(output="/output/" + "p" * 1024)
    assert len(json.dumps(result, separators=(",", ":"))) < 4096
