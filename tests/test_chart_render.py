"""The Helm chart (charts/initramfs-operator) without a cluster: `helm lint`, `helm package`, `helm
template` rendered and read, the values schema against values.yaml and the README, and the CRDs the
chart templates from crds/ (byte for byte). Installs, the RBAC proof and the operator running from the
chart are in test_chart_install.py. Every helm command a test runs must print nothing on stderr
(fixtures/helm.py).
"""

import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import prometheus_client
import pytest
import yaml

from fixtures.helm import (
    CHART,
    CLUSTER_WIDE,
    CRD_TEMPLATE,
    NAMESPACED,
    NO_IDS,
    UPDATE_CRDS,
    Helm,
    container_env,
    find,
    hooks,
    load_update_crds,
    one,
    port_number,
)
from fixtures.operator import CRD
from fixtures.tools import REPO
from initramfs_operator.delivery.metrics import Metrics as DeliveryMetrics
from initramfs_operator.kube import buildjob, command

DELIVERY_TENANCY = {"delivery": {"enabled": True, "pullSecret": "agent-pull", "namespaces": ["team-a"],
                                 "namespaceSelector": "initramfs.dev/delivery=allowed",
                                 "readableSecrets": {"team-a": ["registry-push"], "ops": ["mirror"]},
                                 "readableConfigMaps": {"team-b": ["registry-ca"]}}}


# What platform teams turn on: policies, alerts, a private builder image, sized build pods, a build cache.
PLATFORM = {"networkPolicy": {"enabled": True, "apiServer": {"cidrs": ["10.0.0.10/32"], "ports": [6443]},
                              "registries": {"cidrs": ["192.0.2.0/24"], "ports": [443, 5000]}},
            "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
            "builder": {"imagePullSecrets": [{"name": "regcred"}, {"name": "mirror"}],
                        "resources": {"requests": {"cpu": "1"}, "limits": {"memory": "2Gi"}},
                        "cache": {"claimName": "layer-cache", "maxSize": "20Gi"}},
            "delivery": {"enabled": True}, "watchNamespaces": ["team-a", "team-b"]}


@pytest.fixture
def static_helm(k8s_bin: Path, tmp_path: Path) -> Helm:
    """helm without a cluster."""
    return Helm(k8s_bin, tmp_path / "helm")


def release_objects(docs: list[dict]) -> list[dict]:
    """What `helm install` creates, without the hooks (the test objects exist only during `helm test`)."""
    return [d for d in docs if "helm.sh/hook" not in (d["metadata"].get("annotations") or {})]


# --- the chart without a cluster -----------------------------------------------------------------

@pytest.mark.parametrize("values", [CLUSTER_WIDE, NAMESPACED,
                                    {"rbac": {"registrySecrets": False, "aggregateClusterRoles": False}},
                                    {"serviceMonitor": {"enabled": True}}, {"crds": {"enabled": False}}, NO_IDS,
                                    {"delivery": {"enabled": True}}, DELIVERY_TENANCY, PLATFORM],
                         ids=["cluster", "namespaced", "no-secrets", "servicemonitor", "no-crds", "no-ids", "delivery",
                              "delivery-tenancy", "platform"])
def test_lint_is_clean(static_helm: Helm, values: dict):
    done = static_helm.run("lint", "--strict", str(CHART), "-f", static_helm.values_file(values))
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout and "[WARNING]" not in done.stdout, done.stdout


def test_chart_packages_without_symlinks_or_noise(static_helm: Helm, tmp_path: Path):
    """A symlink in the chart made every helm command warn (`found symbolic link in path`)."""
    assert not [p for p in CHART.rglob("*") if p.is_symlink()]
    static_helm.run("package", str(CHART), "--destination", str(tmp_path))
    [package] = tmp_path.glob("initramfs-operator-*.tgz")
    with tarfile.open(package) as tar:
        assert tar.extractfile(f"initramfs-operator/{CRD_TEMPLATE}").read() == (CHART / CRD_TEMPLATE).read_bytes()
    # The package renders exactly what the chart directory does.
    assert static_helm.run("template", "r", str(package)).stdout == static_helm.run("template", "r", str(CHART)).stdout


def test_crd_templates_are_generated_from_crds():
    done = subprocess.run([sys.executable, str(UPDATE_CRDS), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (CHART / "templates/crds").iterdir()) == \
        sorted(p.name for p in (REPO / "crds").glob("*.yaml"))


def rendered_source(docs_text: str, template: str) -> str:
    """The text `helm template` rendered from one template file."""
    [doc] = [d for d in docs_text.split("---\n") if d.startswith(f"# Source: initramfs-operator/{template}\n")]
    return doc


def spec_text(text: str) -> str:
    return text[text.index("\nspec:\n") + 1:]


@pytest.mark.parametrize("source", sorted((REPO / "crds").glob("*.yaml")), ids=lambda p: p.name)
def test_templated_crd_is_the_source_byte_for_byte(static_helm: Helm, source: Path):
    rendered = rendered_source(static_helm.template("r", "ops").stdout, f"templates/crds/{source.name}")
    assert spec_text(rendered) == spec_text(source.read_text())
    crd, original = yaml.safe_load(rendered), yaml.safe_load(source.read_text())
    assert crd["metadata"]["name"] == original["metadata"]["name"] and crd["apiVersion"] == original["apiVersion"]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["metadata"]["labels"]["app.kubernetes.io/component"] == "crds"

    name = original["metadata"]["name"]
    not_kept = one(static_helm.render("r", "ops", {"crds": {"keep": False}}), "CustomResourceDefinition", name=name)
    assert "annotations" not in not_kept["metadata"] and not_kept["spec"] == original["spec"]
    assert not find(static_helm.render("r", "ops", {"crds": {"enabled": False}}), "CustomResourceDefinition")


def test_update_crds_keeps_template_syntax_literal_and_refuses_foreign_metadata(static_helm: Helm, tmp_path: Path):
    update_crds = load_update_crds()
    literal = "Go templates leave {{ .Values.crds }} and {{- end }} alone here."
    crd = yaml.safe_load(CRD.read_text())
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"] = literal
    source = tmp_path / "initramfsbuilds.yaml"
    source.write_text(yaml.safe_dump(crd, sort_keys=False))
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    (chart / CRD_TEMPLATE).write_text(update_crds.template(source))
    rendered = one(static_helm.render("r", "ops", chart=chart), "CustomResourceDefinition",
                   name="initramfsbuilds.initramfs.dev")
    assert rendered["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"] == literal

    crd["metadata"]["labels"] = {"team": "a"}
    source.write_text(yaml.safe_dump(crd, sort_keys=False))
    with pytest.raises(update_crds.SourceError, match="metadata may hold only the name"):
        update_crds.template(source)


@pytest.mark.parametrize("values, message", [
    ({"replicaCount": 4}, "replicaCount"),
    ({"maxConcurrentBuilds": 0}, "maxConcurrentBuilds"),
    ({"watchNamespaces": ["Not_A_Namespace"]}, "watchNamespaces"),
    ({"watchNamespaces": "team-a"}, "watchNamespaces"),
    # Misspelt keys, at every level: additionalProperties is false everywhere.
    ({"replicaCont": 1}, "additional properties 'replicaCont' not allowed"),
    ({"image": {"tagg": "1.0"}}, "additional properties 'tagg' not allowed"),
    ({"crds": {"keeep": False}}, "additional properties 'keeep' not allowed"),
    ({"rbac": {"registrySecret": False}}, "additional properties 'registrySecret' not allowed"),
    ({"resources": {"limit": {"memory": "1Gi"}}}, "additional properties 'limit' not allowed"),
    ({"tolerations": [{"key": "a", "efect": "NoSchedule"}]}, "additional properties 'efect' not allowed"),
    ({"affinity": {"nodeAfinity": {}}}, "additional properties 'nodeAfinity' not allowed"),
    # Types and bounds.
    ({"runAsUser": 0}, "/runAsUser"),
    ({"runAsGroup": "65532"}, "/runAsGroup"),
    ({"fsGroup": 4294967296}, "/fsGroup"),
    ({"healthPort": 70000}, "/healthPort"),
    ({"delivery": {"port": 0}}, "/delivery/port"),
    ({"delivery": {"namespace": "Not_A_Namespace"}}, "/delivery/namespace"),
    ({"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory"),
    ({"serviceMonitor": {"interval": "often"}}, "/serviceMonitor/interval"),
    ({"podLabels": {"team": 1}}, "/podLabels/team"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"imagePullSecrets": ["regcred"]}, "/imagePullSecrets/0"),
    ({"fullnameOverride": "Not A Name"}, "/fullnameOverride"),
    ({"builder": {"cache": {"maxSize": "lots"}}}, "/builder/cache/maxSize"),
    ({"builder": {"imagePullSecrets": ["regcred"]}}, "/builder/imagePullSecrets/0"),
    ({"networkPolicy": {"registries": {"cidrs": ["registry.example.com"]}}}, "/networkPolicy/registries/cidrs/0"),
    ({"networkPolicy": {"apiServer": {"ports": []}}}, "/networkPolicy/apiServer/ports"),
    ({"prometheusRule": {"stalledWindow": "a while"}}, "/prometheusRule/stalledWindow"),
])
def test_schema_refuses_bad_values(static_helm: Helm, values: dict, message: str):
    done = static_helm.template("r", "ops", values, check=False)
    assert done.returncode != 0 and "values don't meet the specifications of the schema" in done.stderr
    assert message in done.stderr, done.stderr


def resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["definitions"][node["$ref"].removeprefix("#/definitions/")]
    return node


def schema_nodes(schema: dict, node: dict, path: str) -> Iterator[tuple[str, dict]]:
    node = resolve(schema, node)
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from schema_nodes(schema, child, f"{path}.{name}".lstrip("."))
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from schema_nodes(schema, node[key], f"{path}[{key}]")


def value_paths(values: dict, prefix: str = "") -> Iterator[tuple[str, bool]]:
    """Every key of values.yaml as a dotted path, and whether it is a leaf (not an object holding keys)."""
    for key, value in values.items():
        nested = isinstance(value, dict) and bool(value)
        yield prefix + key, not nested
        if nested:
            yield from value_paths(value, f"{prefix}{key}.")


def schema_for(schema: dict, path: str) -> dict | None:
    """The schema of a values.yaml key (dotted path), through properties or typed additionalProperties."""
    node = resolve(schema, schema)
    for key in path.split("."):
        if key in (node.get("properties") or {}):
            node = resolve(schema, node["properties"][key])
        elif isinstance(node.get("additionalProperties"), dict):
            node = resolve(schema, node["additionalProperties"])
        else:
            return None
    return node


def readme_values_table() -> set[str]:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Install with Helm\n"):]
    section = section[:section.index("\n## ", 1)]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([^`]+)`", row.split("|")[1])}


def test_every_value_is_in_the_schema_and_the_readme():
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    paths = [path for path, _ in value_paths(values)]
    leaves = [path for path, leaf in value_paths(values) if leaf]
    assert len(leaves) > 30
    # The schema types every key, and a key it does not name is an error, at every level.
    assert [p for p in paths if schema_for(schema, p) is None] == []
    for where, node in schema_nodes(schema, schema, ""):
        assert "type" in node or "enum" in node, f"{where or 'root'} has no type"
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{where or 'root'} allows unknown keys"
    # The README's table has a row for every key (or for the object holding it), and no row for a
    # key that does not exist.
    documented = readme_values_table()
    assert documented <= set(paths), f"README rows without a value: {documented - set(paths)}"
    undocumented = [p for p in leaves if not any(p == d or p.startswith(d + ".") for d in documented)]
    assert undocumented == []


def test_deployment_is_restricted_and_wired_to_the_values(static_helm: Helm):
    docs = static_helm.render("r", "ops", {"maxConcurrentBuilds": 7, "healthPort": 9001, "metrics": {"port": 9002},
                                           **NAMESPACED})
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = container_env(deployment)
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    # Replicas elect a leader on a Lease: the default rolling update is safe.
    assert deployment["spec"]["replicas"] == 1 and "strategy" not in deployment["spec"]
    assert (env["INITRAMFS_LEASE_NAME"], env["INITRAMFS_LEASE_NAMESPACE"]) == ("r-initramfs-operator", "ops")
    # The probes hit kopf's endpoint where the operator serves it.
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz" and port_number(container, get["port"]) == int(env["INITRAMFS_HEALTH_PORT"])
    assert env["INITRAMFS_HEALTH_PORT"] == "9001" and env["INITRAMFS_METRICS_PORT"] == "9002"
    assert env["INITRAMFS_MAX_CONCURRENT_BUILDS"] == "7" and env["INITRAMFS_WATCH_NAMESPACES"] == "team-a,team-b"
    # The build pods run with the same IDs (the operator puts them in each Job).
    assert env["INITRAMFS_BUILD_RUN_AS_USER"] == env["INITRAMFS_BUILD_RUN_AS_GROUP"] == \
        env["INITRAMFS_BUILD_FS_GROUP"] == "65532"
    # The build pods use the operator's own image unless told otherwise; the tag defaults to appVersion.
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert container["image"] == env["INITRAMFS_BUILDER_IMAGE"] == \
        f"ghcr.io/initramfs-operator/initramfs-operator:{app_version}"
    # A read-only root: /tmp is the writable place.
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == mount["name"]) and env["TMPDIR"] == "/tmp"
    # The metrics Service reaches the metrics port of the operator's pods.
    service = one(docs, "Service")
    [port] = service["spec"]["ports"]
    assert port_number(container, port["targetPort"]) == int(env["INITRAMFS_METRICS_PORT"])
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert not find(docs, "ServiceMonitor")

    other = static_helm.render("r", "ops", {"builderImage": "registry.example.com/builder:2", "image": {"tag": "9"}})
    env = container_env(one(other, "Deployment"))
    assert env["INITRAMFS_BUILDER_IMAGE"] == "registry.example.com/builder:2"
    assert one(other, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":9")
    assert "INITRAMFS_WATCH_NAMESPACES" not in env

    # A digest pins the operator, the build pods and the helm test to one image.
    digest = "sha256:" + "a" * 64
    pinned = static_helm.render("r", "ops", {"image": {"repository": "registry.example.com/op", "tag": "9",
                                                       "digest": digest}})
    pods = [one(pinned, "Deployment")["spec"]["template"], one(hooks(pinned, "test"), "Pod")]
    images = {c["image"] for pod in pods for c in pod["spec"]["containers"]}
    assert images == {container_env(one(pinned, "Deployment"))["INITRAMFS_BUILDER_IMAGE"]} == \
        {f"registry.example.com/op@{digest}"}


def pod_security_contexts(docs: list[dict]) -> list[dict]:
    """The pod-level securityContext of the operator's pod and of the helm test's."""
    pods = [one(docs, "Deployment")["spec"]["template"], one(hooks(docs, "test"), "Pod")]
    return [pod["spec"]["securityContext"] for pod in pods]


def test_ids_are_values_and_null_leaves_them_to_the_platform(static_helm: Helm):
    unset = static_helm.render("r", "ops", NO_IDS)
    for context in pod_security_contexts(unset):
        assert context == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    env = container_env(one(unset, "Deployment"))
    assert env["INITRAMFS_BUILD_RUN_AS_USER"] == env["INITRAMFS_BUILD_RUN_AS_GROUP"] == \
        env["INITRAMFS_BUILD_FS_GROUP"] == ""

    # IDs as OpenShift assigns them: ten digits, which Helm reads from a values file as a float.
    assigned = static_helm.render("r", "ops", {"runAsUser": 1000680000, "runAsGroup": 1000680001,
                                               "fsGroup": 1000680002})
    for context in pod_security_contexts(assigned):
        assert context["runAsUser"] == 1000680000 and context["runAsGroup"] == 1000680001
    env = container_env(one(assigned, "Deployment"))
    assert (env["INITRAMFS_BUILD_RUN_AS_USER"], env["INITRAMFS_BUILD_RUN_AS_GROUP"],
            env["INITRAMFS_BUILD_FS_GROUP"]) == ("1000680000", "1000680001", "1000680002")


def test_service_monitor_selects_the_metrics_service(static_helm: Helm):
    docs = static_helm.render("r", "ops", {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}})
    monitor, service = one(docs, "ServiceMonitor"), one(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [service["metadata"]["namespace"]]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] and endpoint["path"] == "/metrics"


def test_rbac_modes_render_cluster_or_namespaced_objects(static_helm: Helm):
    cluster = release_objects(static_helm.render("r", "ops", CLUSTER_WIDE))
    assert {d["kind"] for d in cluster} >= {"ClusterRole", "ClusterRoleBinding"}
    # Either way, one Role in the release's namespace: the leader election Lease, by name.
    for docs in (cluster, release_objects(static_helm.render("r", "ops", NAMESPACED))):
        lease = one(docs, "Role", name="r-initramfs-operator-leader-election")
        assert lease["metadata"]["namespace"] == "ops" and {g for r in lease["rules"] for g in r["apiGroups"]} == \
            {"coordination.k8s.io"}
        assert [r.get("resourceNames") for r in lease["rules"]] == [None, ["r-initramfs-operator"]]  # create: any
    assert [r["metadata"]["name"] for r in find(cluster, "Role")] == ["r-initramfs-operator-leader-election"]
    namespaced = release_objects(static_helm.render("r", "ops", {**NAMESPACED,
                                                                  "rbac": {"aggregateClusterRoles": False}}))
    assert not find(namespaced, "ClusterRole") and not find(namespaced, "ClusterRoleBinding")
    for ns in NAMESPACED["watchNamespaces"]:
        role, binding = one(namespaced, "Role", namespace=ns), one(namespaced, "RoleBinding", namespace=ns)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": role["metadata"]["name"]}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "namespace": "ops",
                                        "name": one(namespaced, "ServiceAccount")["metadata"]["name"]}]
    # No rule, in any mode, lets the operator list, watch or create Secrets: build pods mount them.
    for docs in (cluster, namespaced):
        for role in find(docs, "ClusterRole") + find(docs, "Role"):
            for rule in role["rules"]:
                if "secrets" in rule["resources"]:
                    assert set(rule["verbs"]) == {"get"}


def test_user_roles_aggregate_into_the_built_in_ones(static_helm: Helm):
    docs = static_helm.render("r", "ops")
    view, edit = one(docs, "ClusterRole", name="r-initramfs-operator-view"), \
        one(docs, "ClusterRole", name="r-initramfs-operator-edit")
    aggregate = "rbac.authorization.k8s.io/aggregate-to-"
    assert {k for k in view["metadata"]["labels"] if k.startswith(aggregate)} == \
        {aggregate + r for r in ("view", "edit", "admin")}
    assert {k for k in edit["metadata"]["labels"] if k.startswith(aggregate)} == \
        {aggregate + r for r in ("edit", "admin")}
    # Neither reaches the status, which is the operator's, nor writes the delivery agents' reports or the
    # operator's releases (what every host places on its disk).
    assert [r["resources"] for r in view["rules"]] == [["initramfsbuilds", "initramfsdeliveries", "initramfsreleases"]]
    assert [r["resources"] for r in edit["rules"]] == [["initramfsbuilds"]]
    assert not find(static_helm.render("r", "ops", {"rbac": {"aggregateClusterRoles": False}}), "ClusterRole",
                    name="r-initramfs-operator-view")


AGENT = "r-initramfs-operator-delivery-agent"


def test_delivery_agent_runs_in_its_own_privileged_namespace_with_probes(static_helm: Helm):
    """The agent's hostPath and root user need `privileged`: its namespace, not the operator's, has it."""
    docs = release_objects(static_helm.render("r", "ops", {"delivery": {"enabled": True, "port": 9100},
                                                           "imagePullSecrets": [{"name": "regcred"}], **NAMESPACED}))
    namespace = one(docs, "Namespace")
    assert namespace["metadata"]["name"] == "ops-delivery"
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    # The agent and all that names it are there; the operator's objects stay in the release namespace.
    one(docs, "ServiceAccount", name=AGENT, namespace="ops-delivery")
    daemonset = one(docs, "DaemonSet", name=AGENT, namespace="ops-delivery")
    bindings = find(docs, "ClusterRoleBinding", name=AGENT) + find(docs, "RoleBinding", name=AGENT)
    assert sorted(b["metadata"].get("namespace", "") for b in bindings) == ["", "team-a", "team-b"]
    assert {(s["name"], s["namespace"]) for b in bindings for s in b["subjects"]} == {(AGENT, "ops-delivery")}
    one(docs, "Deployment", namespace="ops")
    assert [d["kind"] for d in docs if d["metadata"].get("namespace") == "ops-delivery"] == [
        "ServiceAccount", "DaemonSet"]
    pod = daemonset["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    # Probes on the port the agent is told to serve.
    assert container_env(daemonset)["INITRAMFS_DELIVERY_PORT"] == "9100"
    assert [(p, container[p]["httpGet"]["path"], port_number(container, container[p]["httpGet"]["port"]))
            for p in ("livenessProbe", "readinessProbe")] == [("livenessProbe", "/healthz", 9100),
                                                             ("readinessProbe", "/readyz", 9100)]


def test_delivery_namespace_may_be_named_and_left_to_the_user(static_helm: Helm):
    docs = release_objects(static_helm.render("r", "ops", {"delivery": {
        "enabled": True, "namespace": "vm-hosts", "createNamespace": False}}))
    assert find(docs, "Namespace") == []
    one(docs, "DaemonSet", name=AGENT, namespace="vm-hosts")
    one(docs, "ServiceAccount", name=AGENT, namespace="vm-hosts")
    [subject] = one(docs, "ClusterRoleBinding", name=AGENT)["subjects"]
    assert subject["namespace"] == "vm-hosts"
    # The release namespace exists already: the chart cannot create it.
    refused = static_helm.template("r", "ops", {"delivery": {"enabled": True, "namespace": "ops"}}, check=False)
    assert refused.returncode != 0 and "delivery.createNamespace=false" in refused.stderr


def test_helm_test_hook_checks_the_release_operator(static_helm: Helm):
    docs = static_helm.render("r", "ops", {"healthPort": 9001})
    test_objects = hooks(docs, "test")
    assert sorted(d["kind"] for d in test_objects) == ["Pod", "Role", "RoleBinding", "ServiceAccount"]
    pod, role = one(test_objects, "Pod"), one(test_objects, "Role")
    deployment = one(docs, "Deployment")
    # Its ServiceAccount may list pods in the release's namespace, nothing more.
    assert role["metadata"]["namespace"] == "ops" and role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]
    assert one(test_objects, "RoleBinding")["subjects"] == [
        {"kind": "ServiceAccount", "name": pod["spec"]["serviceAccountName"], "namespace": "ops"}]
    # The RBAC exists before the pod runs.
    weights = {d["kind"]: int(d["metadata"]["annotations"].get("helm.sh/hook-weight", "0")) for d in test_objects}
    assert weights["Pod"] > max(weights["Role"], weights["RoleBinding"], weights["ServiceAccount"])
    [container] = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    # It runs the chart's script, in the operator's image, and looks for the pods the Deployment selects.
    assert container["command"] == ["python3", "-c", (CHART / "files/helm-test.py").read_text()]
    assert container["image"] == deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert dict(pair.split("=") for pair in env["OPERATOR_SELECTOR"].split(",")) == selector
    assert env["OPERATOR_HEALTH_PORT"] == "9001" and env["OPERATOR_NAMESPACE"] == "ops"
    assert (env["API_GROUP_VERSION"], env["API_PLURAL"]) == ("initramfs.dev/v1alpha1", "initramfsbuilds")
    # Not one of the operator's pods itself (the Deployment would adopt it, the Service route to it).
    assert not selector.items() <= pod["metadata"]["labels"].items()
    assert container["securityContext"] == one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0][
        "securityContext"]
    script = compile(container["command"][2], "helm-test.py", "exec")
    assert "check_operator_healthy" in script.co_names



def test_delivery_agents_read_only_the_named_secrets_and_write_only_their_nodes_reports(static_helm: Helm):
    docs = release_objects(static_helm.render("r", "ops", DELIVERY_TENANCY))
    agent = "r-initramfs-operator-delivery-agent"
    account = {"kind": "ServiceAccount", "name": agent, "namespace": "ops-delivery"}  # the agent's own namespace
    # Secrets and ConfigMaps: by name, only where the values say; the pull Secret in the release's namespace.
    readable = {}
    for role in find(docs, "Role") + find(docs, "ClusterRole"):
        for rule in role["rules"]:
            for resource in set(rule["resources"]) & {"secrets", "configmaps"}:
                if role["metadata"]["name"].startswith(agent):
                    assert rule["verbs"] == ["get"] and rule["resourceNames"], role
                    readable[(role["metadata"].get("namespace"), resource)] = set(rule["resourceNames"])
    assert readable == {("ops", "secrets"): {"mirror", "agent-pull"}, ("team-a", "secrets"): {"registry-push"},
                        ("team-b", "configmaps"): {"registry-ca"}}
    for namespace, resource in readable:
        binding = one(docs, "RoleBinding", name=f"{agent}-read-{resource}", namespace=namespace)
        assert binding["subjects"] == [account]
    # The namespaces the selector picks are watched; the rules reach the agent as its environment.
    cluster_role = one(docs, "ClusterRole", name=agent)
    assert {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]} in cluster_role["rules"]
    env = container_env(one(docs, "DaemonSet"))
    assert (env["INITRAMFS_DELIVERY_NAMESPACES"], env["INITRAMFS_DELIVERY_NAMESPACE_SELECTOR"],
            env["INITRAMFS_DELIVERY_PULL_SECRET"], env["INITRAMFS_DELIVERY_NAMESPACE_QUOTA_BYTES"]) == \
        ("team-a", "initramfs.dev/delivery=allowed", "ops/agent-pull", str(10 << 30))

    # Reports: the policy matches the agent's ServiceAccount alone, and compares the report's node (the old
    # object on DELETE) with the node its token was issued for.
    policy = one(docs, "ValidatingAdmissionPolicy", name=f"{agent}-own-node-reports")["spec"]
    [rule] = policy["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["initramfsdeliveries"] and set(rule["operations"]) == {"CREATE", "UPDATE", "DELETE"}
    assert [c["expression"] for c in policy["matchConditions"]] == [
        f"request.userInfo.username == 'system:serviceaccount:ops-delivery:{agent}'"]
    variables = {v["name"]: v["expression"] for v in policy["variables"]}
    assert "request.userInfo.extra[?'authentication.kubernetes.io/node-name']" in variables["tokenNode"]
    assert variables["report"] == "request.operation == 'DELETE' ? oldObject : object"
    checks = " ".join(v["expression"] for v in policy["validations"])
    assert "variables.report.spec.nodeName == variables.tokenNode" in checks and "'initramfs.dev/node'" in checks
    assert policy["failurePolicy"] == "Fail"
    binding = one(docs, "ValidatingAdmissionPolicyBinding")["spec"]
    assert binding == {"policyName": f"{agent}-own-node-reports", "validationActions": ["Deny"]}

    # Without the values: no Secret or ConfigMap at all, and no namespace watch.
    plain = release_objects(static_helm.render("r", "ops", {"delivery": {"enabled": True}}))
    agent_rules = [r for role in find(plain, "Role") + find(plain, "ClusterRole")
                   if role["metadata"]["name"].startswith(agent) for r in role["rules"]]
    assert not [r for r in agent_rules if {"secrets", "configmaps", "namespaces"} & set(r["resources"])]
    # What to hold: the operator's releases, read; the builds, not at all.
    assert {"apiGroups": ["initramfs.dev"], "resources": ["initramfsreleases"], "verbs": ["get", "list", "watch"]} \
        in agent_rules
    assert not [r for r in agent_rules if "initramfsbuilds" in r["resources"]]
    assert "INITRAMFS_DELIVERY_PULL_SECRET" not in container_env(one(plain, "DaemonSet"))


# --- what platform teams add: builder values, network policies, alerts --------------------------------

def test_builder_values_reach_the_operator_as_its_pod_defaults(static_helm: Helm, monkeypatch):
    env = container_env(one(static_helm.render("r", "ops", PLATFORM), "Deployment"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = command.parser().parse_args([])
    assert command.pod_defaults(args) == buildjob.PodDefaults(
        buildjob.BuildCache("layer-cache", "20Gi"), ("regcred", "mirror"),
        {"requests": {"cpu": "1"}, "limits": {"memory": "2Gi"}})
    none = container_env(one(static_helm.render("r", "ops"), "Deployment"))
    assert not [name for name in none if name.startswith(("INITRAMFS_BUILD_CACHE", "INITRAMFS_BUILD_IMAGE_PULL",
                                                           "INITRAMFS_BUILD_RESOURCES"))]


def egress_peers(policy: dict) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
    """Each egress rule as (its CIDRs, or none for any address; its ports)."""
    return [(tuple(peer["ipBlock"]["cidr"] for peer in rule.get("to") or []),
             tuple(port["port"] for port in rule["ports"])) for rule in policy["spec"]["egress"]]


def test_network_policies_let_each_pod_reach_only_what_it_needs(static_helm: Helm):
    assert not find(static_helm.render("r", "ops", {"delivery": {"enabled": True}}), "NetworkPolicy")
    docs = static_helm.render("r", "ops", PLATFORM)
    dns, api_server, registries = ((), (53, 53)), (("10.0.0.10/32",), (6443,)), (("192.0.2.0/24",), (443, 5000))
    operator, agent = one(docs, "NetworkPolicy", namespace="ops"), one(docs, "NetworkPolicy", namespace="ops-delivery")
    for policy, pods in ((operator, one(docs, "Deployment")), (agent, one(docs, "DaemonSet"))):
        assert policy["spec"]["policyTypes"] == ["Egress"]
        assert egress_peers(policy) == [dns, api_server, registries]
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= \
            pods["spec"]["template"]["metadata"]["labels"].items()
    # Build pods, in the served namespaces: registries only (no ServiceAccount token, no API server).
    job = buildjob.build_job({"metadata": {"name": "b", "namespace": "team-a", "uid": "u", "generation": 1},
                              "spec": {"image": "r.example.com/a:1", "output": {"oci": {"repository": "r.example.com/b",
                                                                                      "tag": "1"}}}},
                             "sha256:" + "a" * 64, "builder:1")
    for namespace in ("team-a", "team-b"):
        builds = one(docs, "NetworkPolicy", namespace=namespace)
        assert egress_peers(builds) == [dns, registries]
        assert builds["spec"]["podSelector"]["matchLabels"].items() <= \
            job["spec"]["template"]["metadata"]["labels"].items()
    # Without the API server's addresses, the policy could only lock the operator out: a clear refusal.
    done = static_helm.template("r", "ops", {"networkPolicy": {"enabled": True}}, check=False)
    assert done.returncode != 0 and "networkPolicy.apiServer.cidrs" in done.stderr


def exposed_metrics() -> set[str]:
    """Every series name the operator and a delivery agent expose (counters with _total, histograms' parts)."""
    registries = [prometheus_client.REGISTRY, DeliveryMetrics().registry]
    return {sample.name for registry in registries for family in registry.collect() for sample in family.samples} | \
        {f"{family.name}_total" for registry in registries for family in registry.collect() if family.type == "counter"}


def test_alerts_are_off_by_default_and_read_only_metrics_that_exist(static_helm: Helm):
    assert not find(static_helm.render("r", "ops"), "PrometheusRule")
    rule = one(static_helm.render("r", "ops", PLATFORM), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(alerts) == {"InitramfsBuildsStalled", "InitramfsBuildQueueStuck", "InitramfsDeliveryFailing",
                           "InitramfsOperatorNoLeader"}
    known = exposed_metrics()
    for name, alert in alerts.items():
        used = set(re.findall(r"\binitramfs_[a-z_]+", alert["expr"]))
        assert used and used <= known, f"{name} reads {used - known}"
        assert alert["expr"].count("(") == alert["expr"].count(")") and "{{" not in alert["expr"]
    assert '{result!="Succeeded"}[30m]' in alerts["InitramfsBuildsStalled"]["expr"]
    assert alerts["InitramfsBuildQueueStuck"]["expr"].endswith("> 1800")
