"""The test control plane is a real one: the Job controller and the garbage collector do the work."""

import kubernetes
import pytest

from fixtures.kube import wait_until


@pytest.fixture
def apis(kube):
    client = kube.api_client()
    return kubernetes.client.CoreV1Api(client), kubernetes.client.BatchV1Api(client)


def job(name: str, script: str, **container) -> dict:
    return {"metadata": {"name": name}, "spec": {"backoffLimit": 0, "template": {"spec": {
        "restartPolicy": "Never",
        "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", script], **container}],
    }}}}


def condition(batch, namespace: str, name: str) -> str | None:
    for c in batch.read_namespaced_job(name, namespace).status.conditions or []:
        if c.type in ("Complete", "Failed") and c.status == "True":
            return c.type
    return None


def only_pod(core, namespace: str, job_name: str):
    pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}").items
    assert len(pods) == 1, [p.metadata.name for p in pods]
    return pods[0]


def test_job_completes_with_env_volumes_and_termination_message(apis, node_agent, namespace, tmp_path):
    core, batch = apis
    core.create_namespaced_secret(namespace, {"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "settings"}, "data": {"greeting": "hello"}})
    node_agent.add_claim(namespace, "results", tmp_path / "pv")
    script = ('echo "$GREETING $TOKEN" > /out/env.txt && cp /creds/file /out/secret.txt && '
              'stat -c %a /creds/file > /out/mode.txt && touch /work/ok && ls /work > /out/work.txt && '
              'printf \'{"ok": true}\' > /dev/termination-log')
    body = job("hello", script,
               env=[{"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}},
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}}],
               volumeMounts=[{"name": "out", "mountPath": "/out"}, {"name": "work", "mountPath": "/work"},
                             {"name": "creds", "mountPath": "/creds", "readOnly": True}])
    body["spec"]["template"]["spec"]["volumes"] = [
        {"name": "out", "persistentVolumeClaim": {"claimName": "results"}},
        {"name": "work", "emptyDir": {}},
        {"name": "creds", "secret": {"secretName": "creds",
                                     "items": [{"key": "token", "path": "file", "mode": 0o600}]}},
    ]
    batch.create_namespaced_job(namespace, body)

    assert wait_until(lambda: condition(batch, namespace, "hello"), what="job to finish") == "Complete"
    pod = only_pod(core, namespace, "hello")
    assert pod.status.phase == "Succeeded"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason, terminated.message) == (0, "Completed", '{"ok": true}')
    assert (tmp_path / "pv/env.txt").read_text() == "hello s3cret\n"
    assert (tmp_path / "pv/secret.txt").read_text() == "s3cret"
    assert (tmp_path / "pv/mode.txt").read_text() == "600\n"
    assert (tmp_path / "pv/work.txt").read_text() == "ok\n"


def test_failure_falls_back_to_the_log_tail(apis, node_agent, namespace):
    core, batch = apis
    script = "for i in $(seq 1 200); do echo line $i; done; exit 3"
    batch.create_namespaced_job(namespace, job("fails", script, terminationMessagePolicy="FallbackToLogsOnError"))

    assert wait_until(lambda: condition(batch, namespace, "fails"), what="job to finish") == "Failed"
    pod = wait_until(lambda: only_pod(core, namespace, "fails").status.container_statuses and
                     only_pod(core, namespace, "fails"))
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (3, "Error")
    assert terminated.message.splitlines() == [f"line {i}" for i in range(121, 201)]
    assert node_agent.output(namespace, pod.metadata.name).splitlines() == [f"line {i}" for i in range(1, 201)]


def test_background_deletion_garbage_collects_running_pods(apis, node_agent, namespace):
    core, batch = apis
    batch.create_namespaced_job(namespace, job("sleeper", "sleep 300"))
    wait_until(lambda: only_pod(core, namespace, "sleeper").status.phase == "Running", what="pod to run")
    assert node_agent.running >= 1

    batch.delete_namespaced_job("sleeper", namespace, propagation_policy="Background")
    wait_until(lambda: not core.list_namespaced_pod(namespace).items, what="pods to be garbage-collected")
    wait_until(lambda: not batch.list_namespaced_job(namespace).items, what="job to be deleted")


def test_active_deadline_kills_the_pod(apis, node_agent, namespace):
    core, batch = apis
    body = job("slow", "sleep 300")
    body["spec"]["template"]["spec"]["activeDeadlineSeconds"] = 1
    batch.create_namespaced_job(namespace, body)

    assert wait_until(lambda: condition(batch, namespace, "slow"), what="job to fail") == "Failed"
    pod = only_pod(core, namespace, "slow")
    assert (pod.status.phase, pod.status.reason) == ("Failed", "DeadlineExceeded")


def test_serviceaccount_kubeconfig_is_subject_to_rbac(kube, apis, namespace, tmp_path):
    core, _ = apis
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    rbac = kubernetes.client.RbacAuthorizationV1Api(kube.api_client())
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "reader-view"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}]})
    config = kube.serviceaccount_kubeconfig(namespace, "reader", tmp_path / "reader.kubeconfig")

    whoami = kube.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", kubeconfig=config)
    assert whoami.stdout == f"system:serviceaccount:{namespace}:reader"
    assert kube.kubectl("get", "pods", "-n", namespace, kubeconfig=config).returncode == 0
    denied = kube.kubectl("get", "secrets", "-n", namespace, kubeconfig=config, check=False)
    assert denied.returncode != 0 and "Forbidden" in denied.stderr
