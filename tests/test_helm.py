"""The Helm chart (charts/initramfs-operator), for real: `helm lint`, `helm template` checked by the real
API server (server-side dry run), and the RBAC proof: the chart's ServiceAccount and (Cluster)Roles
installed with `helm install`, a token minted for that ServiceAccount, and the operator run with it
through real builds (node agent, real registries), then what that token must not be able to do.
The Deployment is installed with replicaCount 0 (there is no kubelet to run the operator's own pod);
the operator runs as a host process with the Deployment's environment and the ServiceAccount's token.
"""

import copy
import hashlib
import re
import tarfile
import uuid
from pathlib import Path

import kubernetes
import pytest
import yaml

from fixtures.helm import CHART, Helm, container_env, documents, find, one, port_number
from fixtures.images import E, Layout
from fixtures.kube import Cluster, wait_until
from fixtures.operator import Builds, Operator
from fixtures.registry import PASSWORD, USER, unique_repo
from fixtures.tools import REPO
from test_operator import builder_cli, docker_secret, event_reasons  # noqa: F401  (a fixture)

EXAMPLES = REPO / "examples"
CLUSTER_WIDE = {}
NAMESPACED = {"watchNamespaces": ["team-a", "team-b"]}


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
def chart_operator(kube: Cluster, crd, release, tmp_path: Path):
    """chart_operator(namespace, values) -> the operator, run as the chart's ServiceAccount with the chart's
    Deployment environment (its health and metrics ports set to free ones)."""
    started: list[Operator] = []

    def start(namespace: str, values: dict) -> Operator:
        # The environment the fixture gives it is overridden below by the Deployment's.
        op = Operator(kube, tmp_path / f"operator-{len(started)}.log", 1, {})
        values = merged(values, {"healthPort": op.health_port, "metrics": {"port": op.metrics_port}})
        _, manifest = release(namespace, values)
        deployment = one(manifest, "Deployment")
        account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        kubeconfig = kube.serviceaccount_kubeconfig(namespace, account, tmp_path / f"{account}.kubeconfig")
        op.env.update(container_env(deployment), KUBECONFIG=str(kubeconfig))
        started.append(op)
        return op.start()

    yield start
    for op in started:
        op.stop()


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

@pytest.mark.parametrize("values", [CLUSTER_WIDE, NAMESPACED, {"rbac": {"registrySecrets": False}},
                                    {"serviceMonitor": {"enabled": True}}],
                         ids=["cluster", "namespaced", "no-secrets", "servicemonitor"])
def test_lint(static_helm: Helm, values: dict):
    done = static_helm.run("lint", "--strict", str(CHART), "-f", static_helm.values_file(values))
    assert "0 chart(s) failed" in done.stdout


def test_chart_ships_the_projects_crd(static_helm: Helm, tmp_path: Path):
    link = CHART / "crds/initramfsbuilds.yaml"
    assert link.is_symlink() and link.resolve() == (REPO / "crds/initramfsbuilds.yaml").resolve()
    static_helm.run("package", str(CHART), "--destination", str(tmp_path))
    [package] = tmp_path.glob("initramfs-operator-*.tgz")
    with tarfile.open(package) as tar:
        packaged = tar.extractfile("initramfs-operator/crds/initramfsbuilds.yaml").read()
    assert packaged == (REPO / "crds/initramfsbuilds.yaml").read_bytes()


@pytest.mark.parametrize("values, message", [
    ({"replicaCount": 2}, "replicaCount"),
    ({"maxConcurrentBuilds": 0}, "maxConcurrentBuilds"),
    ({"watchNamespaces": ["Not_A_Namespace"]}, "watchNamespaces"),
    ({"watchNamespaces": "team-a"}, "watchNamespaces"),
])
def test_schema_refuses_bad_values(static_helm: Helm, values: dict, message: str):
    done = static_helm.template("r", "ops", values, check=False)
    assert done.returncode != 0 and message in done.stderr, done.stderr


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
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    # The probes hit kopf's endpoint where the operator serves it.
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz" and port_number(container, get["port"]) == int(env["INITRAMFS_HEALTH_PORT"])
    assert env["INITRAMFS_HEALTH_PORT"] == "9001" and env["INITRAMFS_METRICS_PORT"] == "9002"
    assert env["INITRAMFS_MAX_CONCURRENT_BUILDS"] == "7" and env["INITRAMFS_WATCH_NAMESPACES"] == "team-a,team-b"
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


def test_service_monitor_selects_the_metrics_service(static_helm: Helm):
    docs = static_helm.render("r", "ops", {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}})
    monitor, service = one(docs, "ServiceMonitor"), one(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [service["metadata"]["namespace"]]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] and endpoint["path"] == "/metrics"


def test_rbac_modes_render_cluster_or_namespaced_objects(static_helm: Helm):
    cluster = static_helm.render("r", "ops", CLUSTER_WIDE)
    assert {d["kind"] for d in cluster} >= {"ClusterRole", "ClusterRoleBinding"}
    assert not find(cluster, "Role") and not find(cluster, "RoleBinding")
    namespaced = static_helm.render("r", "ops", NAMESPACED)
    assert not find(namespaced, "ClusterRole") and not find(namespaced, "ClusterRoleBinding")
    for ns in NAMESPACED["watchNamespaces"]:
        role, binding = one(namespaced, "Role", namespace=ns), one(namespaced, "RoleBinding", namespace=ns)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": role["metadata"]["name"]}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "namespace": "ops",
                                        "name": one(namespaced, "ServiceAccount")["metadata"]["name"]}]
    # No rule, in any mode, lets the operator list or watch Secrets.
    for docs in (cluster, namespaced):
        for role in find(docs, "ClusterRole") + find(docs, "Role"):
            for rule in role["rules"]:
                if "secrets" in rule["resources"]:
                    assert set(rule["verbs"]) == {"get", "create"}


# --- against the real API server -----------------------------------------------------------------

@pytest.mark.parametrize("values", [CLUSTER_WIDE, NAMESPACED, {"rbac": {"registrySecrets": False}}],
                         ids=["cluster", "namespaced", "no-secrets"])
def test_server_side_dry_run(kube: Cluster, crd, helm: Helm, make_namespace, values: dict):
    # The operator's pod must pass the "restricted" Pod Security Standard: the API server warns about any
    # violation in the pod template when a Deployment is created.
    release_ns = make_namespace("ops", {"pod-security.kubernetes.io/enforce": "restricted",
                                        "pod-security.kubernetes.io/warn": "restricted"})
    if values.get("watchNamespaces"):
        values = {"watchNamespaces": [make_namespace(n) for n in values["watchNamespaces"]]}
    rendered = helm.template("r", release_ns, values).stdout
    done = kube.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)
    assert done.stdout.count("(server dry run)") == len(documents(rendered))
    assert "PodSecurity" not in done.stderr, done.stderr


def test_examples_are_valid_initramfs_builds(kube: Cluster, crd, namespace: str):
    for name in ("initramfsbuild-pvc.yaml", "initramfsbuild-oci.yaml"):
        docs = example(name)
        assert any(d["kind"] == "InitramfsBuild" for d in docs)
        # Strict: a misspelt field fails instead of being pruned silently.
        apply(kube, docs, namespace, "--dry-run=server", "--validate=strict")


# --- RBAC: what the ServiceAccount can do, exactly --------------------------------------------------

# Effective permissions of the operator's ServiceAccount in a watched namespace (`kubectl auth can-i --list`).
OPERATOR_RULES = {
    "initramfsbuilds.initramfs.dev": {"get", "list", "watch"},
    "initramfsbuilds.initramfs.dev/status": {"patch"},
    "initramfsbuilds.initramfs.dev/finalizers": {"update"},
    "jobs.batch": {"get", "list", "watch", "create", "delete"},
    "pods": {"list"},
    "persistentvolumeclaims": {"get"},
    "configmaps": {"get"},
    "events": {"create"},
}
REGISTRY_SECRET_RULES = {"secrets": {"get", "create"}}
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
        assert urls == names == "[]", f"unexpected rule: {line}"
        rules.setdefault(resource, set()).update(verbs.strip("[]").split())
    return rules


def forbidden(kube: Cluster, kubeconfig: Path, *args: str, input: str | None = None) -> bool:
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
        assert effective_rules(kube, sa, ns) == OPERATOR_RULES | REGISTRY_SECRET_RULES
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
    # Nothing at all outside the watched namespaces, its own included.
    for ns in (ops, other):
        assert effective_rules(kube, sa, ns) == {}
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


@pytest.mark.usefixtures("builder_cli")
def test_operator_builds_with_the_cluster_wide_rbac(kube: Cluster, chart_operator, make_namespace, node_agent,
                                                    tls_registry, auth_registry, tmp_path: Path):
    """Both examples, adapted to the test registries: the PVC one pulls from a TLS registry whose CA is in a
    ConfigMap; the OCI one pulls and pushes with Secrets (read, then merged into one for the pod)."""
    ops, ns = make_namespace("ops"), make_namespace("builds")
    op = chart_operator(ops, CLUSTER_WIDE)
    builds = Builds(kube, ns)

    claim, to_pvc = example("initramfsbuild-pvc.yaml")
    to_pvc["spec"]["image"] = push_image(tls_registry, tmp_path, b"to a volume\n")
    to_pvc["spec"]["registry"] = {"caConfigMap": {"name": "registry-ca"}}
    builds.core.create_namespaced_config_map(ns, {"metadata": {"name": "registry-ca"},
                                                  "data": {"ca.crt": Path(tls_registry.ca_file).read_text()}})
    node_agent.add_claim(ns, claim["metadata"]["name"], tmp_path / "pv")

    [to_oci] = example("initramfsbuild-oci.yaml")
    target = f"{auth_registry.host}/{unique_repo('helm-out')}"
    to_oci["spec"].update(image=push_image(auth_registry, tmp_path, b"to a registry\n"),
                          imagePullSecrets=[{"name": "registry-pull"}], registry={"insecure": True})
    to_oci["spec"]["output"]["oci"]["repository"] = target
    docker_secret(builds, "registry-pull", auth_registry.host, USER, PASSWORD)
    docker_secret(builds, to_oci["spec"]["output"]["oci"]["pushSecret"]["name"], auth_registry.host, USER, PASSWORD)

    apply(kube, [claim, to_pvc, to_oci], ns)
    on_pvc = wait_built(op, builds, to_pvc["metadata"]["name"], {ops, ns})
    written = tmp_path / "pv" / to_pvc["spec"]["output"]["pvc"]["path"]
    assert on_pvc["output"]["sha256"] == hashlib.sha256(written.read_bytes()).hexdigest()
    pushed = wait_built(op, builds, to_oci["metadata"]["name"], {ops, ns})
    assert pushed["output"]["reference"].startswith(f"{target}@sha256:")
    assert event_reasons(builds, to_oci["metadata"]["name"]) == ["Building", "Succeeded"]
    # The chart's metrics port is where the operator serves them.
    assert 'initramfs_builds_total{result="Succeeded"} 2.0' in op.metrics()
    assert not refused_requests(op, {ops, ns})


@pytest.mark.usefixtures("builder_cli")
def test_operator_serves_only_the_watched_namespaces(kube: Cluster, chart_operator, make_namespace, node_agent,
                                                    registry, tmp_path: Path):
    ops, team_a, team_b, other = (make_namespace(n) for n in ("ops", "team-a", "team-b", "other"))
    mine = {ops, team_a, team_b, other}
    # No Secret access at all: these builds name none.
    op = chart_operator(ops, {"watchNamespaces": [team_a, team_b], "rbac": {"registrySecrets": False}})
    image = push_image(registry, tmp_path, b"namespaced\n")
    for ns in (team_a, team_b, other):
        claim, build = example("initramfsbuild-pvc.yaml")
        build["spec"].update(image=image, registry={"insecure": True})
        node_agent.add_claim(ns, claim["metadata"]["name"], tmp_path / ns)
        apply(kube, [claim, build], ns)
    for ns in (team_a, team_b):
        wait_built(op, Builds(kube, ns), build["metadata"]["name"], mine)
    unwatched = Builds(kube, other)
    assert "status" not in unwatched.get(build["metadata"]["name"]) and not unwatched.jobs()
    assert not refused_requests(op, mine)
    # A build naming a Secret this installation may not read says so, instead of never getting a status.
    private = Builds(kube, team_a)
    private.create("private", {**build["spec"], "imagePullSecrets": [{"name": "pull-creds"}]})
    private.wait_reason("private", "Forbidden")
    assert "rbac.registrySecrets=false" in private.condition("private")["message"]


def test_install_notes(helm: Helm, crd, release, make_namespace):
    ops, team_a = make_namespace("ops"), make_namespace("team-a")
    name, _ = release(ops, {"watchNamespaces": [team_a], "rbac": {"registrySecrets": False}})
    notes = helm.run("get", "notes", name, "--namespace", ops).stdout
    assert f"serves InitramfsBuilds in: {team_a}." in notes and "rbac.registrySecrets=false" in notes
    assert f"kubectl -n {ops} rollout status deployment/{name}-initramfs-operator" in notes
    assert f"kubectl -n {team_a} get irb --watch" in notes and f"kubectl -n {team_a} apply -f -" in notes
    # The InitramfsBuild the notes show is one the API server accepts as written.
    manifest = notes[notes.index("<<'YAML'\n") + 9:notes.index("\nYAML\n")]
    [build] = documents(manifest)
    apply(helm.kube, [build], team_a, "--dry-run=server", "--validate=strict")
