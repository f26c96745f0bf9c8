"""A build's registry access from its spec, Secrets and CA ConfigMap, as the operator and the delivery agent
both get it (one case a row). The objects are documents as the API server returns them (a Secret's data
base64-encoded), read through the real `ObjectReader`; only the HTTP round trip is a dict."""

import base64
import json
import re

import pytest

from initramfs_operator.errors import AccessDenied, UsageError
from initramfs_operator.kube import api, registry_access
from initramfs_operator.oci.registry import Credentials

NAMESPACE = "team"
HINT = " (installed with the Helm value rbac.registrySecrets=false?)"
CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
FORBIDDEN = object()  # an object the reader's RBAC does not let it read


def auth(user: str, password: str) -> dict:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def secret(name: str, data: dict[str, bytes], type_: str = "kubernetes.io/dockerconfigjson") -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NAMESPACE},
            "type": type_, "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


def docker_config(name: str, auths: dict) -> dict:
    return secret(name, {".dockerconfigjson": json.dumps({"auths": auths}).encode()})


def dockercfg(name: str, auths: dict) -> dict:
    """A legacy kubernetes.io/dockercfg Secret: the entries without "auths"."""
    return secret(name, {".dockercfg": json.dumps(auths).encode()}, "kubernetes.io/dockercfg")


def config_map(name: str, data: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": NAMESPACE},
            "data": data}


def reader(objects: list) -> registry_access.ObjectReader:
    """The operator's reader over objects by path; a name missing is a 404, FORBIDDEN a 403."""
    by_path = {}
    for obj in objects:
        if isinstance(obj, tuple):  # (plural, name, FORBIDDEN)
            plural, name, doc = obj
        else:
            plural, name, doc = obj["kind"].lower() + "s", obj["metadata"]["name"], obj
        by_path[api.path("v1", plural, NAMESPACE, name)] = doc

    def get(url: str) -> dict:
        doc = by_path.get(url)
        if doc is None:
            raise api.ApiError(404, "Not Found")
        if doc is FORBIDDEN:
            raise api.ApiError(403, "Forbidden")
        return doc
    return registry_access.ObjectReader(get, "the operator", {"secrets": HINT})


def spec(**changes) -> dict:
    """Pulls from a.example.com and pushes to b.example.com with Secret "push"; pulls with Secret "pull"."""
    base = {"image": "a.example.com/src/app:1", "imagePullSecrets": [{"name": "pull"}],
            "output": {"oci": {"repository": "b.example.com/out/app", "tag": "v", "pushSecret": {"name": "push"}}}}
    return {**base, **changes}


PUSH = docker_config("push", {"a.example.com": auth("pusher", "p1"), "b.example.com": auth("pusher", "p2")})
PULL = dockercfg("pull", {"a.example.com": auth("puller", "q1"), "c.example.com": auth("puller", "q3")})


ACCESS = {
    # name: (spec, objects, Secret keys for the pod, credentials by registry, CA, insecure hosts)
    "no secrets": (spec(imagePullSecrets=[], output={"oci": {"repository": "b.example.com/o", "tag": "v"}}), [],
                   [], {"a.example.com": None}, None, ()),
    "push secret first wins, dockerconfigjson and legacy dockercfg": (
        spec(imagePullSecrets=[{"name": "pull"}, {"name": "push"}]), [PUSH, PULL],
        [("push", ".dockerconfigjson"), ("pull", ".dockercfg")],
        {"a.example.com": Credentials("pusher", "p1"), "b.example.com": Credentials("pusher", "p2"),
         "c.example.com": Credentials("puller", "q3"), "d.example.com": None}, None, ()),
    "CA under the default key": (spec(registry={"caConfigMap": {"name": "ca"}}),
                                 [PUSH, PULL, config_map("ca", {"ca.crt": CA})],
                                 [("push", ".dockerconfigjson"), ("pull", ".dockercfg")], {}, CA.encode(), ()),
    "CA under its own key": (spec(registry={"caConfigMap": {"name": "ca", "key": "root.pem"}}),
                             [PUSH, PULL, config_map("ca", {"root.pem": CA, "ca.crt": "other"})],
                             [("push", ".dockerconfigjson"), ("pull", ".dockercfg")], {}, CA.encode(), ()),
    "insecure: the image's and the push registry": (spec(registry={"insecure": True}), [PUSH, PULL],
                                                     [("push", ".dockerconfigjson"), ("pull", ".dockercfg")], {},
                                                     None, ("a.example.com", "b.example.com")),
}


@pytest.mark.parametrize("case", ACCESS.values(), ids=ACCESS.keys())
def test_registry_access(case):
    build_spec, objects, keys, credentials, ca, insecure = case
    read = reader(objects)
    assert registry_access.secret_keys(read, NAMESPACE, build_spec) == keys
    options = registry_access.registry_options(read, NAMESPACE, build_spec)
    for host, expected in credentials.items():
        assert options.keychain.resolve(host) == expected, host
    assert options.ca_certs == ca and options.insecure == insecure


FAILURES = {
    # name: (spec, objects, error type, message, whether the pod's Secret keys fail too)
    "Secret absent": (spec(), [PUSH], UsageError, "secret pull not found", True),
    "Secret forbidden": (spec(), [PUSH, ("secrets", "pull", FORBIDDEN)], AccessDenied,
                         f"the operator may not read secret pull{HINT}", True),
    "Secret without a docker config": (spec(), [PUSH, secret("pull", {"token": b"x"}, "Opaque")], UsageError,
                                       "secret pull (type Opaque) has no .dockerconfigjson key", True),
    "docker config not JSON": (spec(), [PUSH, secret("pull", {".dockerconfigjson": b'{"auths": hunter2'})],
                               UsageError, "secret pull: its docker config is not valid JSON", False),
    "docker config not one": (spec(), [PUSH, secret("pull", {".dockerconfigjson": b'{"auths": ["hunter2"]}'})],
                              UsageError, "secret pull is not a docker config.json", False),
    "CA ConfigMap absent": (spec(registry={"caConfigMap": {"name": "ca"}}), [PUSH, PULL], UsageError,
                            "configmap ca not found", False),
    "CA ConfigMap forbidden: no hint": (spec(registry={"caConfigMap": {"name": "ca"}}),
                                        [PUSH, PULL, ("configmaps", "ca", FORBIDDEN)], AccessDenied,
                                        "the operator may not read configmap ca", False),
    "CA ConfigMap without its key": (spec(registry={"caConfigMap": {"name": "ca", "key": "root.pem"}}),
                                     [PUSH, PULL, config_map("ca", {"ca.crt": CA})], UsageError,
                                     "configmap ca has no key root.pem", False),
}


@pytest.mark.parametrize("case", FAILURES.values(), ids=FAILURES.keys())
def test_registry_access_refused(case):
    build_spec, objects, error, message, keys_fail = case
    read = reader(objects)
    with pytest.raises(error) as info:
        registry_access.registry_options(read, NAMESPACE, build_spec)
    assert str(info.value) == message or str(info.value).startswith(message + " ")
    assert "hunter2" not in str(info.value)  # a Secret's contents are never quoted
    if keys_fail:
        with pytest.raises(error, match=re.escape(message)):
            registry_access.secret_keys(read, NAMESPACE, build_spec)
    else:
        registry_access.secret_keys(read, NAMESPACE, build_spec)


def test_an_api_error_other_than_missing_or_forbidden_is_not_the_specs():
    def get(url: str) -> dict:
        raise api.ApiError(500, "Internal Server Error")
    with pytest.raises(api.ApiError):
        registry_access.registry_options(registry_access.ObjectReader(get, "the operator"), NAMESPACE, spec())
