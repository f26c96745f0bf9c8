"""How a build reaches its registries, from its spec, the Secrets it names and its CA ConfigMap: one
behaviour for the operator (its own lookups, and the Secrets its build pods mount) and the delivery
agent (its pulls).

The Secrets and the ConfigMap are read through a `Reader` (`ObjectReader` over the API for both
programs): a missing object is the spec's error (UsageError), an unreadable one the reader's RBAC
(AccessDenied, naming who may not read it and the setting that decides it). A registry Secret without
a docker config, or a CA ConfigMap without its key, is the spec's error too. Credentials and the CA
stay in memory; no message quotes a Secret's contents.
"""

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import AccessDenied, UsageError
from ..oci import reference
from ..oci.registry import Keychain, RegistryOptions
from . import api

DOCKER_CONFIG_KEYS = (".dockerconfigjson", ".dockercfg")  # of kubernetes.io/dockerconfigjson and legacy Secrets
DEFAULT_CA_KEY = "ca.crt"
KINDS = {"secrets": "secret", "configmaps": "configmap"}  # as messages name them

# (plural, namespace, name) -> the core/v1 object as the API returns it (a Secret's data base64-encoded).
Reader = Callable[[str, str, str], dict[str, Any]]


class ObjectReader:
    """Reads the objects a spec names with `get` (an `api.Kube`'s), as `who` ("the operator") may;
    `hints` says, per plural, which setting decides whether it may."""

    def __init__(self, get: Callable[[str], dict[str, Any]], who: str, hints: Mapping[str, str] | None = None):
        self.get, self.who, self.hints = get, who, dict(hints or {})

    def __call__(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        kind = KINDS[plural]
        try:
            return self.get(api.path("v1", plural, namespace, name))
        except api.ApiError as e:
            if e.status == 404:
                raise UsageError(f"{kind} {name} not found") from None
            if e.status == 403:
                raise AccessDenied(f"{self.who} may not read {kind} {name}{self.hints.get(plural, '')}") from None
            raise


def registry_hosts(spec: dict[str, Any]) -> list[str]:
    """The registries a build talks to: the image's, and the push destination's."""
    hosts = [reference.parse(spec["image"]).registry]
    if "oci" in spec["output"]:
        hosts.append(reference.parse(spec["output"]["oci"]["repository"]).registry)
    return list(dict.fromkeys(hosts))


def registry_secret_names(spec: dict[str, Any]) -> list[str]:
    """Docker config Secrets the build needs, the push secret first: its entry wins for the push registry."""
    push = (spec["output"].get("oci") or {}).get("pushSecret")
    names = ([push["name"]] if push else []) + [s["name"] for s in spec.get("imagePullSecrets") or []]
    return list(dict.fromkeys(names))


def secret_keys(read: Reader, namespace: str, spec: dict[str, Any]) -> list[tuple[str, str]]:
    """The build's registry Secrets and the key of each holding its docker config, push secret first:
    what the build pod mounts."""
    return [(name, _docker_config_key(read("secrets", namespace, name), name))
            for name in registry_secret_names(spec)]


def registry_options(read: Reader, namespace: str, spec: dict[str, Any]) -> RegistryOptions:
    """Client options for the build's registries: the credentials of its Secrets (for each registry, the
    first Secret naming it answers, as in the build pod), its CA and its plain-HTTP hosts."""
    return access_options(read, namespace, spec.get("registry") or {}, registry_hosts(spec),
                          [(namespace, name) for name in registry_secret_names(spec)])


def access_options(read: Reader, namespace: str, registry: dict[str, Any], hosts: Sequence[str],
                   secrets: Sequence[tuple[str, str]]) -> RegistryOptions:
    """Client options for `hosts` (plain HTTP if `registry.insecure`), trusting `registry.caConfigMap` (in
    `namespace`), with the credentials of the docker config Secrets `secrets` ((namespace, name), the first
    naming a registry answers for it)."""
    keychains = [_keychain(read("secrets", ns, name), name) for ns, name in secrets]
    insecure = tuple(hosts) if registry.get("insecure") else ()
    ca = registry.get("caConfigMap")
    ca_pem = _ca_pem(read("configmaps", namespace, ca["name"]), ca["name"], ca.get("key", DEFAULT_CA_KEY)) \
        if ca else None
    return RegistryOptions(insecure=insecure, ca_certs=ca_pem, keychain=Keychain.first_match(keychains))


def _docker_config_key(secret: dict[str, Any], name: str) -> str:
    key = next((k for k in DOCKER_CONFIG_KEYS if k in (secret.get("data") or {})), None)
    if key is None:
        raise UsageError(f"secret {name} (type {secret.get('type', '')}) has no .dockerconfigjson key")
    return key


def _keychain(secret: dict[str, Any], name: str) -> Keychain:
    key = _docker_config_key(secret, name)
    try:
        doc = json.loads(base64.b64decode(secret["data"][key]))
    except ValueError:
        # The decoder's message would quote the document, which holds secrets.
        raise UsageError(f"secret {name}: its docker config is not valid JSON") from None
    return Keychain.from_docker_config(doc if key == ".dockerconfigjson" else {"auths": doc}, f"secret {name}")


def _ca_pem(config_map: dict[str, Any], name: str, key: str) -> bytes:
    texts = config_map.get("data") or {}
    if key not in texts:
        raise UsageError(f"configmap {name} has no key {key}")
    return str(texts[key]).encode()
