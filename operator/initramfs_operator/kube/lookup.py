"""What an image reference points at right now, asked by the operator itself.

The digest names the build Job and is what refreshInterval compares; the build pod is
then given the image pinned to it. The engine's registry client does the talking, with
the same options the build pod gets (credentials, CA, plain HTTP).
"""

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from ..oci import reference
from ..oci.registry import client as registry
from . import buildjob


@contextmanager
def registry_options(spec: dict, docker_config: dict | None, ca_pem: bytes | None) -> Iterator[registry.RegistryOptions]:
    """Client options for the build's registries; credentials live in a private temp file meanwhile."""
    with tempfile.TemporaryDirectory(prefix="initramfs-operator-") as tmp:
        auth_file = ca_file = None
        if docker_config:
            auth_file = os.path.join(tmp, "config.json")
            with open(os.open(auth_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                json.dump(docker_config, f)
        if ca_pem:
            ca_file = os.path.join(tmp, "ca.crt")
            with open(ca_file, "wb") as f:
                f.write(ca_pem)
        insecure = tuple(buildjob.registry_hosts(spec)) if (spec.get("registry") or {}).get("insecure") else ()
        yield registry.RegistryOptions(insecure=insecure, ca_file=ca_file, auth_file=auth_file)


def image_digest(spec: dict, options: registry.RegistryOptions) -> str:
    """The digest to build: the image's pinned digest, else what its tag points at now.

    Raises an errors.BuildError subclass whose `.reason` goes into the status.
    """
    ref = reference.parse(spec["image"])
    if ref.digest:
        return ref.digest  # immutable: nothing to ask the registry
    return registry.current_digest(spec["image"], options)


def pushed_digest(spec: dict, options: registry.RegistryOptions) -> str:
    """The digest the OCI output's tag points at now."""
    oci = spec["output"]["oci"]
    return registry.current_digest(f"{oci['repository']}:{oci['tag']}", options)
