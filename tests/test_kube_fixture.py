"""The test cluster is a real one: a real kubelet runs the pods (containerd, runc, CNI), the Job
controller and the garbage collector do the work, Pod Security admission enforces `restricted`."""

import logging
import time

import kubernetes
import pytest
from kubernetes.client.rest import ApiException

from fixtures.kube import wait_until

log = logging.getLogger(__name__)

UID = 65532


@pytest.fixture
def apis(kube):
    client = kube.api_client()
    return kubernetes.client.CoreV1Api(client), kubernetes.client.BatchV1Api(client)


def restricted_pod(node, script: str, **container) -> dict:
    """A pod spec that passes the `restricted` Pod Security profile, running `script` in busybox."""
    return {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        # `sh` as PID 1 ignores SIGTERM: without this every deletion waits the default 30 s for SIGKILL.
        "terminationGracePeriodSeconds": 1,
        "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "main", "image": node.busybox, "command": ["sh", "-c", script],
                        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}},
                        **container}],
    }


def job(node, name: str, script: str, **container) -> dict:
    return {"metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": {"spec": restricted_pod(node, script, **container)}}}


def condition(batch, namespace: str, name: str) -> str | None:
    for c in batch.read_namespaced_job(name, namespace).status.conditions or []:
        if c.type in ("Complete", "Failed") and c.status == "True":
            return c.type
    return None


def pods_of(core, namespace: str, job_name: str) -> list:
    return core.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}").items


def only_pod(core, namespace: str, job_name: str):
    pods = pods_of(core, namespace, job_name)
    assert len(pods) == 1, [p.metadata.name for p in pods]
    return pods[0]


def test_pod_runs_confined_and_answers_logs_and_exec(kube, apis, node, namespace):
    core, _ = apis
    started = time.monotonic()
    spec = restricted_pod(node, "grep -E '^(Uid|Groups|CapEff|Seccomp|NoNewPrivs):' /proc/self/status; "
                                "touch /probe 2>&1; sleep 300",
                          readinessProbe={"exec": {"command": ["true"]}, "periodSeconds": 1})
    core.create_namespaced_pod(namespace, {"metadata": {"name": "confined"}, "spec": spec})
    wait_until(lambda: any(c.type == "Ready" and c.status == "True"
                           for c in core.read_namespaced_pod("confined", namespace).status.conditions or []),
               what="the pod to be Ready", interval=0.1)
    log.info("pod create to Ready: %.2f s", time.monotonic() - started)

    logs = wait_until(lambda: "Seccomp" in (out := kube.kubectl("logs", "-n", namespace, "confined").stdout) and out,
                      what="the pod's log")
    status = dict(line.split(":", 1) for line in logs.splitlines() if ":" in line and not line.startswith("touch"))
    assert status["Uid"].split() == [str(UID)] * 4
    assert status["CapEff"].strip() == "0" * 16
    assert status["Seccomp"].strip() == "2" and status["NoNewPrivs"].strip() == "1"
    assert "Read-only file system" in logs
    whoami = kube.kubectl("exec", "-n", namespace, "confined", "--", "id", "-u").stdout
    assert whoami.strip() == str(UID)
    pod = core.read_namespaced_pod("confined", namespace)
    assert pod.spec.node_name == node.name and pod.status.pod_ip.startswith(node.network.node_ip.rsplit(".", 1)[0])


def test_pod_security_admission_refuses_a_root_pod(node, apis, namespace):
    core, _ = apis
    spec = restricted_pod(node, "true")
    del spec["securityContext"]["runAsNonRoot"]
    spec["securityContext"]["runAsUser"] = 0
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(namespace, {"metadata": {"name": "root"}, "spec": spec})
    assert refused.value.status == 403 and "restricted" in refused.value.body


def test_job_completes_with_env_volumes_and_termination_message(apis, node, namespace, volume):
    core, batch = apis
    core.create_namespaced_secret(namespace, {"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "settings"}, "data": {"greeting": "hello"}})
    pv = volume("results")
    script = ('echo "$GREETING $TOKEN" > /out/env.txt && cp /creds/file /out/secret.txt && '
              'stat -L -c %a /creds/file > /out/mode.txt && touch /work/ok && ls /work > /out/work.txt && '
              'printf \'{"ok": true}\' > /dev/termination-log')
    body = job(node, "hello", script,
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
    assert (pv / "env.txt").read_text() == "hello s3cret\n"
    assert (pv / "secret.txt").read_text() == "s3cret"
    assert (pv / "mode.txt").read_text() == "640\n"  # 0600, plus group read for the pod's fsGroup
    assert (pv / "work.txt").read_text() == "ok\n"
    # The kubelet gave the volume to the pod's fsGroup; the files are the pod user's.
    assert (pv.stat().st_gid, pv.stat().st_mode & 0o7777) == (UID, 0o2775)
    assert {(f.stat().st_uid, f.stat().st_gid) for f in pv.iterdir()} == {(UID, UID)}


def test_failure_falls_back_to_the_log_tail(kube, apis, node, namespace):
    core, batch = apis
    script = "for i in $(seq 1 200); do echo line $i; done; exit 3"
    batch.create_namespaced_job(namespace, job(node, "fails", script,
                                               terminationMessagePolicy="FallbackToLogsOnError"))

    assert wait_until(lambda: condition(batch, namespace, "fails"), what="job to finish") == "Failed"
    pod = wait_until(lambda: only_pod(core, namespace, "fails").status.container_statuses and
                     only_pod(core, namespace, "fails"))
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (3, "Error")
    assert terminated.message.splitlines() == [f"line {i}" for i in range(121, 201)]  # the kubelet's last 80 lines
    logs = kube.kubectl("logs", "-n", namespace, pod.metadata.name).stdout
    assert logs.splitlines() == [f"line {i}" for i in range(1, 201)]


def test_background_deletion_garbage_collects_running_pods(apis, node, namespace):
    core, batch = apis
    batch.create_namespaced_job(namespace, job(node, "sleeper", "sleep 300"))
    wait_until(lambda: [p for p in pods_of(core, namespace, "sleeper") if p.status.phase == "Running"],
               what="pod to run")

    batch.delete_namespaced_job("sleeper", namespace, propagation_policy="Background")
    wait_until(lambda: not core.list_namespaced_pod(namespace).items, what="pods to be garbage-collected")
    wait_until(lambda: not batch.list_namespaced_job(namespace).items, what="job to be deleted")


def test_active_deadline_kills_the_pod(apis, node, namespace):
    core, batch = apis
    body = job(node, "slow", "sleep 300")
    body["spec"]["template"]["spec"]["activeDeadlineSeconds"] = 2
    batch.create_namespaced_job(namespace, body)

    assert wait_until(lambda: condition(batch, namespace, "slow"), what="job to fail") == "Failed"
    pod = wait_until(lambda: (p := only_pod(core, namespace, "slow")).status.phase == "Failed" and p,
                     what="the kubelet to fail the pod")
    assert pod.status.reason == "DeadlineExceeded"


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
