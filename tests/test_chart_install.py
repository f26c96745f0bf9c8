"""The Helm chart (charts/initramfs-operator) on the test cluster: `helm template` checked by the real
API server (server-side dry run), the CRDs the chart templates from crds/ (upgraded by `helm upgrade`,
kept by `helm uninstall`), the roles it adds for the cluster's users, and the RBAC proof: the chart's
ServiceAccount and (Cluster)Roles installed with `helm install` (replicaCount 0 where only the API
objects matter), a token minted for that ServiceAccount and what it must not be able to do. On the
real node (fixtures/node.py) the operator runs as the chart's Deployment pod, from the image built
from the Dockerfile: real builds with nothing but the chart's RBAC, `helm test`, and the user and
group IDs the pods run as. Every helm command a test runs must print nothing on stderr
(fixtures/helm.py). What needs no cluster is in test_chart_render.py.
"""

import copy
import hashlib
import re
import shutil
import uuid
from pathlib import Path

import kubernetes
import pytest
import yaml

from fixtures.helm import (
    CHART,
    CLUSTER_WIDE,
    CRD_TEMPLATE,
    NAMESPACED,
    NO_IDS,
    Helm,
    documents,
    example,
    find,
    load_update_crds,
    one,
)
from fixtures.images import E, Layout
from fixtures.kube import RESTRICTED, Cluster, wait_until
from fixtures.node import Node
from fixtures.operator import CRD, RELEASE, Builds, Operator
from fixtures.registry import PASSWORD, USER, unique_repo
from fixtures.tools import REPO
from test_operator import docker_secret, event_reasons, pvc

SPEC = {"image": "registry.example.com/app:1.0", "output": {"pvc": {"claimName": "images", "path": "app.cpio.gz"}}}


def merged(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# --- fixtures --------------------------------------------------------------------------------------

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
def release(helm: Helm, make_namespace):
    """release(namespace, values) -> (name, manifest): `helm install`ed, uninstalled after the test, and
    before the test's namespaces are deleted (it depends on make_namespace for that order): deleting the
    release's namespace first deletes helm's record of the release, and the uninstall fails."""
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


# --- against the real API server -----------------------------------------------------------------

# Network policies for the operator and the build pods of two namespaces, a builder pulled with a Secret and a cache.
POLICIES = {"networkPolicy": {"enabled": True, "apiServer": {"cidrs": ["10.0.0.10/32"]},
                              "registries": {"cidrs": ["192.0.2.0/24", "2001:db8::/32"], "ports": [443, 5000]}},
            "builder": {"imagePullSecrets": [{"name": "regcred"}], "cache": {"claimName": "layers", "maxSize": "20Gi"}},
            "watchNamespaces": ["team-a", "team-b"]}


@pytest.mark.parametrize("values", [CLUSTER_WIDE, NAMESPACED, {"rbac": {"registrySecrets": False}}, NO_IDS, POLICIES],
                         ids=["cluster", "namespaced", "no-secrets", "no-ids", "policies"])
def test_server_side_dry_run(kube: Cluster, crd, helm: Helm, make_namespace, values: dict):
    # The operator's pod and the helm test's must pass the "restricted" Pod Security Standard, with or
    # without IDs: the API server refuses such a Pod and warns about a Deployment's pod template.
    release_ns = make_namespace("ops", {"pod-security.kubernetes.io/enforce": "restricted",
                                        "pod-security.kubernetes.io/warn": "restricted"})
    if values.get("watchNamespaces"):
        values = {**values, "watchNamespaces": [make_namespace(n) for n in values["watchNamespaces"]]}
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
    # The operator's releases (what every delivering host places on its disk): read, never written, even by admins.
    releases = "initramfsreleases.initramfs.dev"
    assert can_i(kube, "bob", "list", team, releases)
    assert not [verb for user in ("alice", "carol") for verb in ("create", "patch", "delete")
                if can_i(kube, user, verb, team, releases)]
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
    "initramfsbuilds.initramfs.dev": {"get", "list", "watch", "patch"},  # patch: the cleanup finalizer
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


def test_delivery_agent_reads_only_the_secrets_the_values_name(kube: Cluster, service_account, release,
                                                               make_namespace, tmp_path: Path):
    """All namespaces served (watchNamespaces: []): the agent's token still reads only the pull Secret and the
    Secrets listed for a namespace, by name."""
    ops, team, elsewhere = make_namespace("ops"), make_namespace("team"), make_namespace("elsewhere")
    for namespace, name in ((ops, "agent-pull"), (ops, "operator-only"), (team, "registry-push"),
                            (team, "team-other"), (elsewhere, "registry-push")):
        kube.kubectl("create", "secret", "generic", name, "-n", namespace, "--from-literal=k=v")
    kube.kubectl("create", "configmap", "registry-ca", "-n", team, "--from-literal=ca.crt=x")
    _, manifest = release(ops, {"delivery": {"enabled": True, "pullSecret": "agent-pull",
                                             "readableSecrets": {team: ["registry-push"]},
                                             # No node runs it here: only its RBAC matters.
                                             "nodeSelector": {"initramfs.dev/test": "no-such-node"}}})
    daemonset = one(manifest, "DaemonSet")  # in the agents' own namespace, which the chart creates
    agent = daemonset["spec"]["template"]["spec"]["serviceAccountName"]
    sa = kube.serviceaccount_kubeconfig(daemonset["metadata"]["namespace"], agent, tmp_path / "agent.kubeconfig")
    kube.kubectl("get", "secret", "agent-pull", "-n", ops, kubeconfig=sa)
    kube.kubectl("get", "secret", "registry-push", "-n", team, kubeconfig=sa)
    for namespace, name in ((ops, "operator-only"), (team, "team-other"), (elsewhere, "registry-push")):
        assert forbidden(kube, sa, "get", "secret", name, "-n", namespace), (namespace, name)
    assert forbidden(kube, sa, "get", "configmap", "registry-ca", "-n", team)
    for namespace in (ops, team):
        assert forbidden(kube, sa, "get", "secrets", "-n", namespace)  # never listed
    # What it is for does work: releases; the builds themselves it may not read.
    kube.kubectl("get", "initramfsreleases", "--all-namespaces", kubeconfig=sa)
    assert forbidden(kube, sa, "get", "initramfsbuilds", "--all-namespaces")


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
