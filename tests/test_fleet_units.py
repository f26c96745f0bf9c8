"""The operator's fleet logic that needs no cluster: the work queue, backoff, fair admission order,
why a stuck pod is stuck, the kstatus shape of each state, the overlay of written status, and
registry lookups shared between builds."""

import threading
import time
from collections import deque
from functools import partial

import pytest

from fixtures.fake_kube import FakeClock, Registry
from fixtures.kube import wait_until
from initramfs_operator.errors import RegistryError
from initramfs_operator.kube import conditions, diagnosis
from initramfs_operator.kube.admission import Candidate, take_turns
from initramfs_operator.kube.cache import Overlay
from initramfs_operator.kube.lookup import PENDING, SHARED_SECONDS, Answer, Lookups
from initramfs_operator.kube.workqueue import Backoff, Retries, WorkQueue

# --- work queue ------------------------------------------------------------------------------


def test_a_key_waits_once_and_is_handed_to_one_worker_at_a_time():
    q = WorkQueue()
    for key in ("a", "b", "a"):
        q.add(key)
    assert len(q) == 2
    assert q.get(0) == "a"
    q.add("a")  # an event while a worker has it: it comes back once the worker is done, not before
    assert q.get(0) == "b" and q.get(0) is None
    q.done("a")
    assert q.get(0) == "a"


def test_delays_keep_only_the_earliest_and_wake_a_waiting_worker():
    q = WorkQueue()
    q.add_after("later", 30)
    q.add_after("later", 0.2)
    q.add_after("later", 60)
    started = time.monotonic()
    got: list = []
    worker = threading.Thread(target=lambda: got.append(q.get(timeout=5)))
    worker.start()
    worker.join(6)
    assert got == ["later"] and 0.15 < time.monotonic() - started < 2


def test_backoff_doubles_up_to_its_cap_with_jitter_below():
    backoff = Backoff(base=5, cap=60, jitter=0.2)
    for failures, exact in ((1, 5), (2, 10), (3, 20), (4, 40), (5, 60), (9, 60)):
        delays = [backoff.delay(failures) for _ in range(200)]
        assert all(exact * 0.8 <= d <= exact for d in delays)
        assert len(set(delays)) > 1  # builds failing together spread out


def test_retries_count_failures_in_a_row_from_the_end_of_each_attempt():
    retries = Retries(Backoff(base=10, cap=100, jitter=0))
    first = retries.failed("b")
    second = retries.failed("b")
    assert (first.failures, first.delay, second.failures, second.delay) == (1, 10, 2, 20)
    assert second.at - time.monotonic() == pytest.approx(20, abs=1)
    retries.reset("b")
    assert retries.get("b") is None and retries.failed("b").failures == 1


# --- admission order -------------------------------------------------------------------------

def candidate(namespace: str, name: str, created: str) -> Candidate:
    return Candidate(namespace, name, f"uid-{namespace}-{name}", 1, created, f"{name}-job", dict)


def test_namespaces_take_turns_and_each_is_first_in_first_out():
    busy = [candidate("busy", f"b{i}", f"2024-01-01T00:00:0{i}Z") for i in range(5)]
    quiet = [candidate("quiet", "q0", "2024-01-01T00:00:09Z")]
    picked, turns = take_turns(list(reversed(busy)) + quiet, deque(), 3)
    # One namespace with a long queue does not hold back another's build created later.
    assert [c.name for c in picked] == ["b0", "q0", "b1"]
    assert list(turns) == ["busy"]  # quiet has nobody left; busy continues
    picked, turns = take_turns([c for c in busy if c.name not in ("b0", "b1")], turns, 10)
    assert [c.name for c in picked] == ["b2", "b3", "b4"]


def test_a_namespace_served_last_waits_for_the_others():
    a = [candidate("a", f"a{i}", f"2024-01-01T00:00:0{i}Z") for i in range(3)]
    b = [candidate("b", f"b{i}", f"2024-01-01T00:01:0{i}Z") for i in range(3)]
    picked, turns = take_turns(a + b, deque(), 1)
    assert [c.name for c in picked] == ["a0"] and list(turns) == ["b", "a"]
    picked, turns = take_turns(a[1:] + b, turns, 1)
    assert [c.name for c in picked] == ["b0"] and list(turns) == ["a", "b"]


# --- why a pod is stuck ----------------------------------------------------------------------

def pod(status: dict, created: str = "2024-01-01T00:00:00Z") -> dict:
    return {"metadata": {"name": "p", "uid": "u", "creationTimestamp": created}, "status": status}


@pytest.mark.parametrize("status, reason, words", [
    ({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                          "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node "
                                                     "affinity/selector."}]},
     "Unschedulable", "didn't match Pod's node affinity"),
    ({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                          "message": '0/1 nodes are available: persistentvolumeclaim "out" '
                                                     'not found.'}]},
     "VolumeFailed", 'persistentvolumeclaim "out" not found'),
    ({"phase": "Pending", "containerStatuses": [{"name": "build", "image": "reg/builder:1", "state": {
        "waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "reg/builder:1"'}}}]},
     "BuilderImagePullFailed", "ImagePullBackOff: Back-off pulling image"),
    ({"phase": "Pending", "containerStatuses": [{"name": "build", "image": "b", "state": {"waiting": {
        "reason": "CreateContainerConfigError",
        "message": "container has runAsNonRoot and image will run as root"}}}]},
     "CreateContainerConfigError", "image will run as root"),
])
def test_a_stuck_pod_says_why_in_kubernetes_words(status, reason, words):
    found = diagnosis.of_pod(pod(status))
    assert found is not None and found.reason == reason and words in found.message


def test_a_running_or_creating_pod_is_not_stuck():
    assert diagnosis.of_pod(pod({"phase": "Running", "containerStatuses": [
        {"name": "build", "state": {"running": {"startedAt": "x"}}}]})) is None
    assert diagnosis.of_pod(pod({"phase": "Pending", "containerStatuses": [
        {"name": "build", "state": {"waiting": {"reason": "ContainerCreating"}}}]})) is None


def test_events_explain_volumes_and_pods_the_job_could_not_create():
    events = [{"type": "Normal", "reason": "Scheduled", "lastTimestamp": "2024-01-01T00:00:01Z"},
              {"type": "Warning", "reason": "FailedMount", "lastTimestamp": "2024-01-01T00:00:05Z",
               "message": 'MountVolume.SetUp failed for volume "registry": secret "push" not found'}]
    assert diagnosis.of_events(events) == diagnosis.Diagnosis(
        "VolumeFailed", 'FailedMount: MountVolume.SetUp failed for volume "registry": secret "push" not found')
    quota = [{"type": "Warning", "reason": "FailedCreate", "lastTimestamp": "2024-01-01T00:00:02Z",
              "message": 'pods "x" is forbidden: exceeded quota: q, requested: pods=1, used: pods=1, limited: pods=1'}]
    found = diagnosis.of_events(quota)
    assert found is not None and found.reason == "JobRejected" and "exceeded quota" in found.message
    assert diagnosis.of_events(events[:1]) is None


def test_events_are_read_only_for_a_job_without_pods_or_a_pod_never_created():
    job = {"metadata": {"name": "j", "uid": "j"}}
    assert diagnosis.stuck_object(job, []) is job
    scheduled = {"type": "PodScheduled", "status": "True"}
    creating = pod({"phase": "Pending", "conditions": [scheduled], "containerStatuses": [
        {"name": "build", "state": {"waiting": {"reason": "ContainerCreating"}}}]})
    assert diagnosis.stuck_object(job, [creating]) is creating
    running = pod({"phase": "Running", "conditions": [scheduled]})
    assert diagnosis.stuck_object(job, [running]) is None


# --- the kstatus shape of every state --------------------------------------------------------

def shape(state: conditions.State) -> dict:
    return {c["type"]: (c["status"], c["reason"]) for c in conditions.conditions(None, state, 3, "t")}


def test_conditions_follow_kstatus():
    # In progress: Reconciling True (kstatus InProgress).
    assert shape(conditions.in_flight("Queued", "wait")) == {"Ready": ("False", "Queued"),
                                                            "Reconciling": ("True", "Queued")}
    # A retried failure: not Ready, still Reconciling, never Stalled at the same time.
    assert shape(conditions.retrying("ImagePullFailed", "x", "Resolving")) == {
        "Ready": ("False", "ImagePullFailed"), "Reconciling": ("True", "Resolving")}
    # Done: Ready alone (kstatus Current); failed: Stalled with the reason (kstatus Failed).
    assert shape(conditions.succeeded("ok")) == {"Ready": ("True", "Succeeded")}
    assert shape(conditions.failed("OOMKilled", "x")) == {"Ready": ("False", "OOMKilled"),
                                                         "Stalled": ("True", "OOMKilled")}


def test_conditions_of_other_types_are_left_as_they_were():
    delivered = {"type": "Delivered", "status": "True", "reason": "Delivered", "message": "all 2 nodes",
                 "lastTransitionTime": "t0"}
    old = conditions.conditions(None, conditions.in_flight("Building", "b"), 1, "t1") + [delivered]
    new = conditions.conditions(old, conditions.succeeded("ok"), 1, "t2")
    assert [c["type"] for c in new] == ["Ready", "Delivered"] and new[1] == delivered


def test_a_refresh_keeps_the_previous_output_ready():
    building = conditions.over_previous_output(conditions.in_flight("Building", "job j"), "built v1")
    assert shape(building) == {"Ready": ("True", "Succeeded"), "Reconciling": ("True", "Refreshing")}
    stuck = conditions.over_previous_output(conditions.retrying("Unschedulable", "0/1 nodes", "Building"), "v1")
    assert stuck.reconciling and stuck.reconciling.message == "Unschedulable: 0/1 nodes"
    assert stuck.headline.reason == "Unschedulable"  # what its Event says
    failed = conditions.over_previous_output(conditions.failed("BuildFailed", "x"), "built v1")
    assert shape(failed) == {"Ready": ("True", "Succeeded"), "Stalled": ("True", "BuildFailed")}


# --- status written before the watch shows it ------------------------------------------------

def obj(version: str, reason: str) -> dict:
    return {"metadata": {"resourceVersion": version}, "status": {"reason": reason}}


def test_the_overlay_shows_writes_until_the_index_catches_up():
    overlay = Overlay()
    key = ("ns", "b")
    overlay.written(key, obj("1", "old"), obj("2", "Queued"))
    overlay.written(key, obj("2", "Queued"), obj("3", "Building"))  # a second write on top of the first
    for stale in ("1", "2"):
        assert overlay.view(key, obj(stale, "old"))["status"]["reason"] == "Building"
    newer = obj("7", "edited")  # the index moved past our writes: it is the truth again
    assert overlay.view(key, newer) is newer
    assert overlay.view(key, obj("1", "old"))["status"]["reason"] == "old"


# --- registry lookups ------------------------------------------------------------------------

def test_builds_asking_the_same_share_one_lookup_and_its_answer():
    answered: list = []
    calls: list = []
    release = threading.Event()

    def lookup() -> str:
        calls.append(1)
        release.wait(5)
        return "sha256:" + "a" * 64

    lookups = Lookups(workers=2, on_answer=answered.append)
    same = ("image", "registry.example/app:1", "ns", (), "{}")
    for build in ("a", "b"):
        lookups.ask(build, ("image", 1), same, lookup)
    release.set()
    wait_until(lambda: sorted(answered) == ["a", "b"], timeout=5)
    assert len(calls) == 1  # one request to the registry for both
    lookups.ask("c", ("image", 1), same, lookup)  # moments later: the same answer, no request
    assert answered[-1] == "c" and len(calls) == 1
    answer = lookups.answer("c", ("image", 1))
    assert isinstance(answer, Answer) and answer.value == "sha256:" + "a" * 64
    lookups.take("c", ("image", 1))
    assert lookups.answer("c", ("image", 1)) is None
    lookups.shutdown()


def test_a_failed_lookup_is_an_answer_too():
    answered: list = []

    def lookup() -> str:
        raise RegistryError("registry.example: not found")

    lookups = Lookups(workers=1, on_answer=answered.append)
    lookups.ask("a", "q", "same", lookup)
    wait_until(lambda: answered == ["a"], timeout=5)
    answer = lookups.answer("a", "q")
    assert isinstance(answer, Answer) and answer.value is None and answer.error.reason == "ImagePullFailed"
    lookups.shutdown()


def test_a_retry_asks_the_registry_again_instead_of_counting_the_shared_failure_twice():
    """The answer a build was given serves other builds for a while, never the same build again: a retry
    whose backoff ends within SHARED_SECONDS would otherwise count one refusal as two failures."""
    clock, registry = FakeClock(), Registry(digests={"r/app:1": RegistryError("r: not found")})
    answered: list = []
    lookups = Lookups(workers=1, on_answer=answered.append, clock=clock, pool=registry)
    ask = partial(lookups.ask, question="q", same="same", lookup=lambda: registry.current_digest("r/app:1", None))
    ask("a")
    registry.run()
    lookups.take("a", "q")
    clock.advance(SHARED_SECONDS / 2)
    ask("b")  # another build, moments later: the same answer, no request
    assert registry.asked == ["r/app:1"] and answered == ["a", "b"]
    ask("a")  # the first build's retry: a new request
    assert lookups.answer("a", "q") is PENDING
    registry.digests["r/app:1"] = "sha256:" + "b" * 64
    registry.run()
    assert registry.asked == ["r/app:1", "r/app:1"] and lookups.answer("a", "q").value == "sha256:" + "b" * 64
    lookups.shutdown()


def test_a_build_whose_job_changed_goes_before_builds_waiting_to_be_told_they_are_queued():
    q = WorkQueue()
    for i in range(3):
        q.add(f"new-{i}")
    q.add("running", urgent=True)
    q.add("new-1", urgent=True)  # an urgent add moves a waiting key up
    assert [q.get(0) for _ in range(4)] == ["running", "new-1", "new-0", "new-2"]
