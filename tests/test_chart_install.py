"""The Helm chart (charts/initramfs-operator), for real: `helm lint`, `helm template` checked by the real
API server (server-side dry run), the values schema against values.yaml and the README, the CRDs the
chart templates from crds/ (byte for byte, upgraded by `helm upgrade`, kept by `helm uninstall`), the
roles it adds for the cluster's users, and the RBAC proof: the chart's ServiceAccount and
(Cluster)Roles installed with `helm install` (replicaCount 0 where only the API objects matter), a
token minted for that ServiceAccount and what it must not be able to do. On the real node
(fixtures/node.py) the operator runs as the chart's Deployment pod, from the image built from the
Dockerfile: real builds with nothing but the chart's RBAC, `helm test`, and the user and group IDs
the pods run as. Every helm command a test runs must print nothing on stderr (fixtures/helm.py).
"""

import copy
import hashlib
import importlib.util
import re
import shutil
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
import yaml

from fixtures.helm import CHART, Helm, container_env, documents, find, hooks, one, port_number
from fixtures.images import E, Layout
from fixtures.kube import RESTRICTED, Cluster, wait_until
from fixtures.node import Node
from fixtures.operator import CRD, RELEASE, Builds, Operator
from fixtures.registry import PASSWORD, USER, unique_repo
from fixtures.tools import REPO
from test_operator import docker_secret, event_reasons, pvc

EXAMPLES = REPO / "examples"
CLUSTER_WIDE: dict = {}
NAMESPACED = {"watchNamespaces": ["team-a", "team-b"]}
NO_IDS = {"runAsUser": None, "runAsGroup": None, "fsGroup": None}  # left to the platform
UPDATE_CRDS = REPO / "charts/update-crds.py"
CRD_TEMPLATE = "templates/crds/initramfsbuilds.yaml"
SPEC = {"image": "registry.example.com/app:1.0", "output": {"pvc": {"claimName": "images", "path": "app.cpio.gz"}}}


def merged(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# --- fixtures --------------------------------------------------------------------------------------

@pytest.fixture
def static_helm(k8s_bin: Path, tmp_path: Path) -> Helm:
    """helm without a cluster."""
    return Helm(k8s_bin, tmp_path / "helm")


@pytest.fixture
def helm(k8s_bin: Path, kube: Cluster, tmp_path: Path) -> Helm:
    return Helm(k8s_bin, tmp_path / "helm", kube)


@pytest.fixture
def make_namespace(kube: Cluster):
    """make_namespace(prefix) -> a fresh namespace, deleted after the test."""
    core = kubernetes.client.CoreV1Api(kube.api_client())
    made: list[str] = []

    def make(prefix: str = "helm", labels: dict | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        core.create_namespace({"metadata": {"name": name, "labels": labels or {}}})
        made.append(name)
        return name

    yield make
    for name in made:
        core.delete_namespace(name)


@pytest.fixture
def release(helm: Helm):
    """release(namespace, values) -> (name, manifest): `helm install`ed, uninstalled after the test."""
    installed: list[tuple[str, str]] = []

    def install(namespace: str, values: dict) -> tuple[str, list[dict]]:
        name = f"irb-{uuid.uuid4().hex[:6]}"
        manifest = helm.install(name, namespace, merged({"replicaCount": 0}, values))
        installed.append((name, namespace))
        return name, manifest

    yield install
    for name, namespace in installed:
        helm.uninstall(name, namespace)


@pytest.fixture
def node_release(kube: Cluster, crd, helm: Helm, node: Node, project_image: str, make_namespace):
    """node_release(values, namespace=None) -> the Operator: the chart installed for real with the project's
    image (in a fresh namespace enforcing `restricted` unless one is given), the operator running as the
    Deployment's pod on the node with the chart's ServiceAccount and RBAC. Uninstalled after the test."""
    installed: list[Operator] = []
    repository, digest = project_image.split("@")

    def install(values: dict, namespace: str | None = None) -> Operator:
        namespace = namespace or make_namespace("ops", RESTRICTED)
        op = Operator(kube, helm, namespace, merged({"image": {"repository": repository, "digest": digest},
                                                     "verbose": True}, values))
        installed.append(op)
        return op.install()

    yield install
    for op in installed:  # also after a failed install, which may have left a release
        helm.run("uninstall", RELEASE, "--namespace", op.namespace, "--wait", check=False)
        # Its pod outlives the Deployment by its grace period, and a cluster-wide one would act on the
        # next test's builds meanwhile.
        wait_until(lambda op=op: not op.pods(), timeout=60, what=f"the operator pod in {op.namespace} to go")


def release_objects(docs: list[dict]) -> list[dict]:
    """What `helm install` creates, without the hooks (the test objects exist only during `helm test`)."""
    return [d for d in docs if "helm.sh/hook" not in (d["metadata"].get("annotations") or {})]


def example(name: str) -> list[dict]:
    return documents((EXAMPLES / name).read_text())


def push_image(registry, tmp_path: Path, content: bytes) -> str:
    layout = Layout(tmp_path / f"layout-{uuid.uuid4().hex[:6]}")
    # The generated /init needs a /bin/sh in the image (it is never run here).
    desc = layout.image([[E("etc", "dir"), E("etc/hello", data=content), E("bin", "dir"),
                          E("bin/sh", data=b"#!/bin/sh\n", mode=0o755)]],
                        config={"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]})
    layout.tag(desc, "v1")
    return registry.push(layout.root, "v1", unique_repo("helm"))


def apply(kube: Cluster, docs: list[dict], namespace: str, *args: str):
    """`kubectl apply` as the cluster admin (a user of the operator, not the operator)."""
    return kube.kubectl("apply", "--namespace", namespace, "-f", "-", *args, input=yaml.safe_dump_all(docs))


# --- the chart without a cluster -----------------------------------------------------------------

@pytest.mark.parametrize("values", [CLUSTER_WIDE, NAMESPACED,
                                    {"rbac": {"registrySecrets": False, "aggregateClusterRoles": False}},
                                    {"serviceMonitor": {"enabled": True}}, {"crds": {"enabled": False}}, NO_IDS,
                                    {"delivery": {"enabled": True}}],
                         ids=["cluster", "namespaced", "no-secrets", "servicemonitor", "no-crds", "no-ids", "delivery"])
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


def load_update_crds():
    spec = importlib.util.spec_from_file_location("update_crds", UPDATE_CRDS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    ({"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory"),
    ({"serviceMonitor": {"interval": "often"}}, "/serviceMonitor/interval"),
    ({"podLabels": {"team": 1}}, "/podLabels/team"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"imagePullSecrets": ["regcred"]}, "/imagePullSecrets/0"),
    ({"fullnameOverride": "Not A Name"}, "/fullnameOverride"),
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
    # Neither reaches the status, which is the operator's, nor writes the delivery agents' reports.
    assert [r["resources"] for r in view["rules"]] == [["initramfsbuilds", "initramfsdeliveries"]]
    assert [r["resources"] for r in edit["rules"]] == [["initramfsbuilds"]]
    assert not find(static_helm.render("r", "ops", {"rbac": {"aggregateClusterRoles": False}}), "ClusterRole",
                    name="r-initramfs-operator-view")


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


# --- against the real API server -----------------------------------------------------------------

@pytest.mark.parametrize("values", [CLUSTER_WIDE, NAMESPACED, {"rbac": {"registrySecrets": False}}, NO_IDS],
                         ids=["cluster", "namespaced", "no-secrets", "no-ids"])
def test_server_side_dry_run(kube: Cluster, crd, helm: Helm, make_namespace, values: dict):
    # The operator's pod and the helm test's must pass the "restricted" Pod Security Standard, with or
    # without IDs: the API server refuses such a Pod and warns about a Deployment's pod template.
    release_ns = make_namespace("ops", {"pod-security.kubernetes.io/enforce": "restricted",
                                        "pod-security.kubernetes.io/warn": "restricted"})
    if values.get("watchNamespaces"):
        values = {"watchNamespaces": [make_namespace(n) for n in values["watchNamespaces"]]}
    rendered = helm.template("r", release_ns, values).stdout
    # A Pod is admitted only if its ServiceAccount exists, which a dry run does not create.
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(find(documents(rendered), "ServiceAccount")))
    done = kube.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)
    assert done.stdout.count("(server dry run)") == len(documents(rendered))
    assert "PodSecurity" not in done.stderr, done.stderr


def test_examples_are_valid_initramfs_builds(kube: Cluster, crd, namespace: str):
    for name in ("initramfsbuild-pvc.yaml", "initramfsbuild-oci.yaml"):
        docs = example(name)
        assert any(d["kind"] == "InitramfsBuild" for d in docs)
        # Strict: a misspelt field fails instead of being pruned silently.
        apply(kube, docs, namespace, "--dry-run=server", "--validate=strict")


# --- install, upgrade, uninstall --------------------------------------------------------------------

def test_install_and_upgrade_are_quiet_and_a_misspelt_value_fails(helm: Helm, release, make_namespace):
    """Helm.run fails on any stderr output: the install, upgrade and template here print none."""
    ops = make_namespace("ops")
    name, _ = release(ops, {})
    helm.upgrade(name, ops, {"replicaCount": 0, "maxConcurrentBuilds": 2})
    helm.template(name, ops, {})
    assert "STATUS: deployed" in helm.run("status", name, "--namespace", ops).stdout

    typo = helm.run("install", "typo", str(CHART), "--namespace", ops, "-f",
                    helm.values_file({"replicaCont": 0}), check=False)
    assert typo.returncode != 0 and "additional properties 'replicaCont' not allowed" in typo.stderr
    assert helm.run("list", "--namespace", ops, "--short").stdout.split() == [name]


def remove_spec_field(crd_text: str, name: str) -> str:
    """The CRD source without one spec property (its line at spec.properties' indentation and the block
    under it)."""
    lines = crd_text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line == f"{' ' * 16}{name}:\n")
    end = next(i for i in range(start + 1, len(lines)) if len(lines[i]) - len(lines[i].lstrip()) <= 16)
    return "".join(lines[:start] + lines[end:])


def chart_with_own_group(tmp_path: Path, group: str, without: str | None = None) -> tuple[Path, Path]:
    """A copy of the chart whose CRD serves `group` instead (the session's CRD stays as it is), optionally
    without one spec field: the chart of an older version. Its CRD template comes from update-crds.py,
    from the CRD source returned alongside."""
    source_text = CRD.read_text().replace("name: initramfsbuilds.initramfs.dev", f"name: initramfsbuilds.{group}")
    source_text = source_text.replace("group: initramfs.dev", f"group: {group}")
    # One short name and category per kind across groups, or kubectl cannot tell which one `irb` means.
    source_text = re.sub(r"\n +(shortNames|categories): .*", "", source_text)
    if without:
        source_text = remove_spec_field(source_text, without)
    chart = tmp_path / f"chart-{uuid.uuid4().hex[:6]}"
    # Only this CRD: the session's cluster has the others, which this release could not take over.
    shutil.copytree(CHART, chart, ignore=lambda d, names: [n for n in names if Path(d).name == "crds"
                                                            and n != Path(CRD_TEMPLATE).name])
    source = chart.with_suffix(".crd.yaml")
    source.write_text(source_text)
    (chart / CRD_TEMPLATE).write_text(load_update_crds().template(source))
    return chart, source


def crd_exists(kube: Cluster, name: str) -> bool:
    done = kube.kubectl("get", "crd", name, "--ignore-not-found", "-o", "name")
    return bool(done.stdout.strip())


def test_upgrade_upgrades_the_crd_and_uninstall_keeps_it(kube: Cluster, helm: Helm, make_namespace,
                                                           tmp_path: Path):
    group = f"t{uuid.uuid4().hex[:8]}.initramfs.test"
    crd_name = f"initramfsbuilds.{group}"
    old_chart, _ = chart_with_own_group(tmp_path, group, without="exclude")
    new_chart, _ = chart_with_own_group(tmp_path, group)
    ops, ns = make_namespace("ops"), make_namespace("builds")
    with_crd = {"crds": {"enabled": True}, "replicaCount": 0}
    build = {"apiVersion": f"{group}/v1alpha1", "kind": "InitramfsBuild", "metadata": {"name": "docs-excluded"},
             "spec": {**SPEC, "exclude": ["/usr/share/doc/**"]}}
    try:
        helm.install("irb", ops, with_crd, chart=old_chart)
        refused = kube.kubectl("apply", "-n", ns, "--validate=strict", "-f", "-", input=yaml.safe_dump(build),
                               check=False)
        assert refused.returncode != 0 and 'unknown field "spec.exclude"' in refused.stderr, refused.stderr

        helm.upgrade("irb", ops, with_crd, chart=new_chart)
        # The API server validates with the new schema as soon as it has rebuilt its handler for the CRD.
        wait_until(lambda: kube.kubectl("apply", "-n", ns, "--validate=strict", "-f", "-",
                                        input=yaml.safe_dump(build), check=False).returncode == 0,
                   timeout=30, what="the upgraded CRD to accept spec.exclude")
        stored = yaml.safe_load(kube.kubectl("get", crd_name, "docs-excluded", "-n", ns, "-o", "yaml").stdout)
        assert stored["spec"]["exclude"] == ["/usr/share/doc/**"]

        uninstalled = helm.uninstall("irb", ops)
        assert f"[CustomResourceDefinition] {crd_name}" in uninstalled, uninstalled  # "These resources were kept"
        assert crd_exists(kube, crd_name)
        kube.kubectl("get", crd_name, "docs-excluded", "-n", ns)

        # Installed again under the same name, the release takes the kept CRD over; told not to keep it,
        # uninstall deletes it, and every build with it.
        helm.install("irb", ops, {**with_crd, "crds": {"enabled": True, "keep": False}}, chart=new_chart)
        helm.uninstall("irb", ops)
        wait_until(lambda: not crd_exists(kube, crd_name), timeout=60, what=f"{crd_name} to be deleted")
    finally:
        helm.run("uninstall", "irb", "--namespace", ops, "--wait", check=False)
        kube.kubectl("delete", "crd", crd_name, "--ignore-not-found", "--wait=false")


def test_a_crd_applied_by_hand_is_adopted_as_the_readme_says(kube: Cluster, helm: Helm, make_namespace,
                                                               tmp_path: Path):
    """Installed with crds.enabled=false and the CRD applied with kubectl (or by the first chart, which
    shipped it in crds/): the README's commands hand it to the release, which then upgrades it."""
    group = f"t{uuid.uuid4().hex[:8]}.initramfs.test"
    crd_name = f"initramfsbuilds.{group}"
    chart, source = chart_with_own_group(tmp_path, group)
    ops = make_namespace("ops")
    try:
        kube.kubectl("apply", "--server-side", "-f", str(source))
        helm.install("irb", ops, {"replicaCount": 0}, chart=chart)
        refused = helm.run("upgrade", "irb", str(chart), "--namespace", ops, "-f",
                           helm.values_file({"replicaCount": 0}), check=False)
        assert refused.returncode != 0 and "invalid ownership metadata" in refused.stderr
        readme = (REPO / "README.md").read_text()
        for command in re.findall(r"^kubectl (?:label|annotate) crd .*$", readme, re.M):
            args = command.replace("initramfsbuilds.initramfs.dev", crd_name).replace(
                "release-name=initramfs-operator", "release-name=irb").replace("initramfs-system", ops).split()[1:]
            kube.kubectl(*args)
        helm.upgrade("irb", ops, {"replicaCount": 0, "crds": {"enabled": True, "keep": False}}, chart=chart)
        helm.uninstall("irb", ops)
        wait_until(lambda: not crd_exists(kube, crd_name), timeout=60, what=f"{crd_name} to be deleted")
    finally:
        helm.run("uninstall", "irb", "--namespace", ops, "--wait", check=False)
        kube.kubectl("delete", "crd", crd_name, "--ignore-not-found", "--wait=false")


# --- the cluster's users ----------------------------------------------------------------------------

def can_i(kube: Cluster, user: str, verb: str, namespace: str, resource: str = "initramfsbuilds.initramfs.dev") -> bool:
    done = kube.kubectl("auth", "can-i", verb, resource, "-n", namespace, "--as", user, check=False)
    return done.stdout.strip() == "yes"


def test_users_bound_to_edit_create_builds_and_viewers_only_read(kube: Cluster, crd, release, make_namespace):
    ops, team = make_namespace("ops"), make_namespace("team")
    for user, role in (("alice", "edit"), ("bob", "view"), ("carol", "admin")):
        kube.kubectl("create", "rolebinding", f"{user}-{role}", f"--clusterrole={role}", f"--user={user}", "-n", team)
    # The built-in roles know nothing of InitramfsBuilds by themselves.
    assert not can_i(kube, "alice", "create", team) and not can_i(kube, "bob", "list", team)

    release(ops, {})
    wait_until(lambda: can_i(kube, "alice", "create", team) and can_i(kube, "bob", "list", team)
               and can_i(kube, "carol", "delete", team), timeout=30, what="the aggregated roles")
    build = {"apiVersion": "initramfs.dev/v1alpha1", "kind": "InitramfsBuild", "metadata": {"name": "mine"},
             "spec": SPEC}
    kube.kubectl("create", "-n", team, "--as", "alice", "-f", "-", input=yaml.safe_dump(build))
    assert "mine" in kube.kubectl("get", "irb", "-n", team, "--as", "bob").stdout
    assert can_i(kube, "bob", "watch", team)
    assert forbidden(kube, None, "delete", "irb", "mine", "-n", team, "--as", "bob")
    assert forbidden(kube, None, "create", "-n", team, "--as", "bob", "-f", "-",
                     input=yaml.safe_dump({**build, "metadata": {"name": "bobs"}}))
    # Status is the operator's to write, even for editors.
    assert forbidden(kube, None, "patch", "irb", "mine", "-n", team, "--as", "alice", "--subresource=status",
                     "--type=merge", "-p", '{"status": {"observedGeneration": 1}}')
    # Only where they are bound.
    assert not can_i(kube, "alice", "create", ops) and not can_i(kube, "bob", "list", ops)
    kube.kubectl("delete", "irb", "mine", "-n", team, "--as", "alice")


# --- RBAC: what the ServiceAccount can do, exactly --------------------------------------------------

# Effective permissions of the operator's ServiceAccount in a watched namespace (`kubectl auth can-i --list`).
OPERATOR_RULES = {
    "initramfsbuilds.initramfs.dev": {"get", "list", "watch"},
    "initramfsbuilds.initramfs.dev/status": {"patch"},
    "initramfsbuilds.initramfs.dev/finalizers": {"update"},
    "jobs.batch": {"get", "list", "watch", "create", "delete"},
    "pods": {"list", "watch"},
    "persistentvolumeclaims": {"get"},
    "configmaps": {"get"},
    "events": {"create", "list", "watch"},
}
REGISTRY_SECRET_RULES = {"secrets": {"get"}}
# In the release's namespace: the leader election Lease (get and update only the one named after the release).
LEASE_RULES = {"leases.coordination.k8s.io": {"create"}, "leases.coordination.k8s.io (its own)": {"get", "update"}}
# Every authenticated user may ask what it may do; not the chart's doing.
EVERYONE = {"selfsubjectreviews.authentication.k8s.io", "selfsubjectaccessreviews.authorization.k8s.io",
            "selfsubjectrulesreviews.authorization.k8s.io"}


def effective_rules(kube: Cluster, kubeconfig: Path, namespace: str) -> dict[str, set[str]]:
    """Resource rules of the kubeconfig's user in `namespace`, as the API server evaluates them."""
    lines = kube.kubectl("auth", "can-i", "--list", "--namespace", namespace, kubeconfig=kubeconfig).stdout
    rules: dict[str, set[str]] = {}
    for line in lines.splitlines()[1:]:
        if line.startswith(" "):
            continue  # non-resource URLs (discovery, health, version), granted to every authenticated user
        resource, urls, names, verbs = line.split(maxsplit=3)
        if resource in EVERYONE:
            continue
        if resource == "leases.coordination.k8s.io" and names != "[]":
            resource += " (its own)"
            names = "[]"
        assert urls == names == "[]", f"unexpected rule: {line}"
        rules.setdefault(resource, set()).update(verbs.strip("[]").split())
    return rules


def forbidden(kube: Cluster, kubeconfig: Path | None, *args: str, input: str | None = None) -> bool:
    """The request is refused by authorization (not failing for any other reason)."""
    done = kube.kubectl(*args, kubeconfig=kubeconfig, input=input, check=False)
    return done.returncode != 0 and "(Forbidden)" in done.stderr


@pytest.fixture
def service_account(kube: Cluster, crd, release, tmp_path: Path):
    """service_account(namespace, values) -> a kubeconfig with a token of the chart's ServiceAccount."""
    def install(namespace: str, values: dict) -> Path:
        _, manifest = release(namespace, values)
        name = one(manifest, "ServiceAccount")["metadata"]["name"]
        return kube.serviceaccount_kubeconfig(namespace, name, tmp_path / f"{name}.kubeconfig")
    return install


def test_cluster_wide_permissions(kube: Cluster, service_account, make_namespace):
    ops, elsewhere = make_namespace("ops"), make_namespace("elsewhere")
    sa = service_account(ops, CLUSTER_WIDE)
    for ns in (ops, elsewhere):
        assert effective_rules(kube, sa, ns) == OPERATOR_RULES | REGISTRY_SECRET_RULES | \
            (LEASE_RULES if ns == ops else {})
    # The Secrets the builds name, by name: never listed or watched.
    assert forbidden(kube, sa, "get", "secrets", "-n", elsewhere)
    assert forbidden(kube, sa, "get", "secrets", "--all-namespaces", "--watch", "--request-timeout=5s")
    # No pods of its own making, no workloads, no cluster-scoped objects.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": elsewhere},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    assert forbidden(kube, sa, "create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(pod))
    for args in (["get", "deployments", "-n", ops], ["get", "nodes"], ["get", "namespaces"],
                 ["get", "customresourcedefinitions"], ["get", "clusterroles"]):
        assert forbidden(kube, sa, *args), args
    kube.kubectl("get", "initramfsbuilds,jobs", "--all-namespaces", kubeconfig=sa)  # what it is for does work


def test_namespaced_permissions_without_secrets(kube: Cluster, service_account, make_namespace):
    ops, team_a, team_b, other = (make_namespace(n) for n in ("ops", "team-a", "team-b", "other"))
    sa = service_account(ops, {"watchNamespaces": [team_a, team_b], "rbac": {"registrySecrets": False}})
    for ns in (team_a, team_b):
        assert effective_rules(kube, sa, ns) == OPERATOR_RULES
    # Nothing at all outside the watched namespaces, but its Lease in its own.
    assert effective_rules(kube, sa, ops) == LEASE_RULES
    assert effective_rules(kube, sa, other) == {}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pull", "namespace": team_a},
              "stringData": {"k": "v"}}
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(secret))
    assert forbidden(kube, sa, "get", "secret", "pull", "-n", team_a)
    assert forbidden(kube, sa, "get", "secrets", "-n", team_a)
    assert forbidden(kube, sa, "create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(secret))
    for args in (["get", "initramfsbuilds", "-n", other], ["get", "jobs", "-n", other],
                 ["get", "initramfsbuilds", "--all-namespaces"], ["get", "nodes"], ["get", "namespaces"]):
        assert forbidden(kube, sa, *args), args
    # Sanity: the same token does get through where it should (so "Forbidden" above is RBAC, not a broken token).
    kube.kubectl("get", "initramfsbuilds", "-n", team_a, kubeconfig=sa)


# --- the operator, run with nothing but the chart's RBAC -----------------------------------------

# A refused request as urllib3 (the reconciler's client, logged with --verbose) or kopf logs it.
REFUSED = re.compile(r'\b(?:GET|POST|PUT|PATCH|DELETE) (?:https?://[^/\s]+)?(/[^\s?"]*)\S*'
                     r'(?: HTTP/1\.1" 403 | -> APIForbiddenError)')


def refused_requests(op: Operator, namespaces: set[str]) -> list[str]:
    """Requests of the operator the API server refused, cluster-wide ones or in the test's namespaces.
    (Other tests' namespaces may still be terminating, and creating in those is refused too.)"""
    refused = []
    for match in REFUSED.finditer(op.log()):
        path = match.group(1)
        namespace = re.search(r"/namespaces/([^/]+)/", path)
        if namespace and namespace.group(1) not in namespaces:
            continue
        refused.append(match.group(0))
    return refused


def wait_built(op: Operator, builds: Builds, name: str, namespaces: set[str]) -> dict:
    """The build's status once it Succeeded; fails at the operator's first refused request (a refused pass
    writes no status, so waiting would only time out)."""
    def built():
        refused = refused_requests(op, namespaces)
        assert not refused, "the API server refused the operator:\n" + "\n".join(refused[:5])
        ready = builds.condition(name)
        if ready.get("reason") == "Succeeded":
            return builds.get(name)["status"]
        assert ready.get("reason") in (None, "Queued", "Building"), f"{name}: {ready['reason']}: {ready['message']}"
        return None
    return wait_until(built, timeout=120, what=f"{name} in {builds.namespace} to succeed", interval=0.5)


def test_operator_builds_with_the_cluster_wide_rbac(kube: Cluster, node: Node, node_release, make_namespace,
                                                    node_registry, node_auth_registry, tmp_path: Path):
    """Both examples, adapted to the node's registries: the PVC one pulls from a plain registry into a
    `local` volume; the OCI one pulls and pushes with Secrets (read, then merged into one for the pod)."""
    op = node_release(CLUSTER_WIDE)
    ns = make_namespace("builds", RESTRICTED)
    builds = Builds(kube, ns)

    claim, to_pvc = example("initramfsbuild-pvc.yaml")
    to_pvc["spec"].update(image=push_image(node_registry, tmp_path, b"to a volume\n"), registry={"insecure": True})
    volume = tmp_path / "pv"
    node.local_volume(ns, claim["metadata"]["name"], volume)
    claim["spec"]["storageClassName"] = "local"

    [to_oci] = example("initramfsbuild-oci.yaml")
    target = f"{node_auth_registry.host}/{unique_repo('helm-out')}"
    to_oci["spec"].update(image=push_image(node_auth_registry, tmp_path, b"to a registry\n"),
                          imagePullSecrets=[{"name": "registry-pull"}], registry={"insecure": True})
    to_oci["spec"]["output"]["oci"]["repository"] = target
    docker_secret(builds, "registry-pull", node_auth_registry.host, USER, PASSWORD)
    docker_secret(builds, to_oci["spec"]["output"]["oci"]["pushSecret"]["name"], node_auth_registry.host, USER,
                  PASSWORD)

    apply(kube, [claim, to_pvc, to_oci], ns)
    on_pvc = wait_built(op, builds, to_pvc["metadata"]["name"], {op.namespace, ns})
    written = volume / to_pvc["spec"]["output"]["pvc"]["path"]
    assert on_pvc["output"]["sha256"] == hashlib.sha256(written.read_bytes()).hexdigest()
    pushed = wait_built(op, builds, to_oci["metadata"]["name"], {op.namespace, ns})
    assert pushed["output"]["reference"].startswith(f"{target}@sha256:")
    # The Event and the metric follow the status write.
    wait_until(lambda: event_reasons(builds, to_oci["metadata"]["name"])[-2:] == ["Building", "Succeeded"],
               timeout=10, what="the Succeeded event")
    # The chart's metrics port is where the operator serves them.
    wait_until(lambda: 'initramfs_builds_total{result="Succeeded"} 2.0' in op.metrics(), timeout=10,
               what="initramfs_builds_total to count both builds")
    assert not refused_requests(op, {op.namespace, ns})


def test_operator_serves_only_the_watched_namespaces(kube: Cluster, node_release, make_namespace, node_registry,
                                                    tmp_path: Path):
    team_a, team_b, other = (make_namespace(n, RESTRICTED) for n in ("team-a", "team-b", "other"))
    # No Secret access at all: these builds name none.
    op = node_release({"watchNamespaces": [team_a, team_b], "rbac": {"registrySecrets": False}})
    mine = {op.namespace, team_a, team_b, other}
    image = push_image(node_registry, tmp_path, b"namespaced\n")
    # Unschedulable (no node has the label): what matters is whose builds the operator takes up.
    spec = {"image": image, "registry": {"insecure": True}, "nodeSelector": {"initramfs.dev/test": "no-such-node"},
            "output": {"oci": {"repository": f"{node_registry.host}/{unique_repo('never')}", "tag": "t"}}}
    for ns in (team_a, team_b, other):
        Builds(kube, ns).create("b", spec)
    for ns in (team_a, team_b):
        Builds(kube, ns).wait_reason("b", "Unschedulable")
    unwatched = Builds(kube, other)
    # Untouched: no conditions (only the CRD's default status) and no Job.
    assert (unwatched.get("b").get("status") or {}) == {"observedGeneration": 0} and not unwatched.jobs()
    assert not refused_requests(op, mine)
    # A build naming a Secret this installation may not read says so, instead of never getting a status.
    private = Builds(kube, team_a)
    private.create("private", {**spec, "imagePullSecrets": [{"name": "pull-creds"}]})
    private.wait_reason("private", "Forbidden")
    assert "rbac.registrySecrets=false" in private.condition("private")["message"]


def test_install_notes(helm: Helm, crd, release, make_namespace):
    ops, team_a = make_namespace("ops"), make_namespace("team-a")
    name, _ = release(ops, {"watchNamespaces": [team_a], "rbac": {"registrySecrets": False}})
    notes = helm.run("get", "notes", name, "--namespace", ops).stdout
    assert f"serves InitramfsBuilds in: {team_a}." in notes and "rbac.registrySecrets=false" in notes
    # The release fixture installs without the CRD (the cluster has it): the notes say who must apply it.
    assert "crds.enabled=false" in notes
    assert f"kubectl -n {ops} rollout status deployment/{name}-initramfs-operator" in notes
    assert f"helm test {name} -n {ops}" in notes
    assert f"kubectl -n {team_a} get irb --watch" in notes and f"kubectl -n {team_a} apply -f -" in notes
    # What the notes apply is the PVC example, claim name included, and the API server accepts it as written.
    manifest = notes[notes.index("<<'YAML'\n") + 9:notes.index("\nYAML\n")]
    assert documents(manifest) == example("initramfsbuild-pvc.yaml")
    apply(helm.kube, documents(manifest), team_a, "--dry-run=server", "--validate=strict")


# --- on a real node: `helm test`, and the IDs pods run as -----------------------------------------

def test_helm_test_checks_the_operator_pod_on_a_real_node(kube: Cluster, helm: Helm, node_release):
    op = node_release({})
    test_pod = f"{op.deployment}-test"
    passed = helm.run("test", RELEASE, "--namespace", op.namespace, "--timeout", "120s")
    assert re.search(rf"^TEST SUITE:\s+{test_pod}$", passed.stdout, re.M), passed.stdout
    assert re.search(r"^Phase:\s+Succeeded$", passed.stdout, re.M), passed.stdout
    # hook-succeeded: nothing of the test is left behind.
    assert kube.kubectl("get", "pods,serviceaccounts,roles,rolebindings", "-n", op.namespace, "-o", "name",
                        "-l", "app.kubernetes.io/component=test").stdout == ""

    # Without an operator to answer, it fails, and its pod stays for its log.
    op.scale(0)
    failed = helm.run("test", RELEASE, "--namespace", op.namespace, "--timeout", "120s", check=False)
    assert failed.returncode != 0 and re.search(r"^Phase:\s+Failed$", failed.stdout, re.M), failed.stdout
    log = kube.kubectl("logs", "-n", op.namespace, test_pod).stdout
    assert "ok: initramfsbuilds.initramfs.dev/v1alpha1 is served" in log
    assert "FAIL: no running operator pod" in log


@pytest.mark.parametrize("ids, expected", [
    # What a platform that assigns IDs per namespace (OpenShift's restricted SCCs) puts in the pods: ten
    # digits, and no passwd entry in the image for them.
    ({"runAsUser": 1000680000, "runAsGroup": 1000680001, "fsGroup": 1000680002}, (1000680000, 1000680002)),
    # None assigned: the image's user and group.
    (NO_IDS, (65532, 65532)),
], ids=["assigned", "unset"])
def test_a_build_runs_with_the_ids_given_or_none_on_a_real_node(kube: Cluster, node: Node, node_release,
                                                                 node_registry, make_namespace, tmp_path: Path,
                                                                 ids: dict, expected: tuple[int, int]):
    op = node_release(ids)
    operator_ids = kube.kubectl("exec", "-n", op.namespace, op.ready_pod().metadata.name, "--", "python3", "-c",
                                "import os; print(os.getuid(), os.getgid())").stdout.split()
    assert operator_ids == [str(ids["runAsUser"] or 65532), str(ids["runAsGroup"] or 65532)]

    ns = make_namespace("builds", RESTRICTED)
    volume = tmp_path / "pv"
    node.local_volume(ns, "images", volume)
    if not ids["fsGroup"]:
        volume.chmod(0o1777)  # without an fsGroup, the volume must be writable to whichever user builds
    builds = Builds(kube, ns)
    pvc(builds, "images")
    builds.create("ids", {"image": push_image(node_registry, tmp_path, b"any uid\n"), "registry": {"insecure": True},
                          "output": {"pvc": {"claimName": "images", "path": "boot/app.cpio.gz"}}})
    status = builds.wait_reason("ids", "Succeeded", timeout=180)["status"]
    [job] = builds.jobs("ids")
    pod = kube.api_client().sanitize_for_serialization(job)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert {k: v for k, v in pod["securityContext"].items() if k in ids} == {k: v for k, v in ids.items() if v}
    written = volume / "boot/app.cpio.gz"
    assert status["output"]["sha256"] == hashlib.sha256(written.read_bytes()).hexdigest()
    # The build pod wrote it as that user, and (with an fsGroup) the volume's group.
    assert (written.stat().st_uid, written.stat().st_gid) == expected
