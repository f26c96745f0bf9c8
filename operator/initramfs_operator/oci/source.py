"""IMAGE arguments -> `Image`: `oci:DIR[:TAG|@DIGEST]`, `docker-archive:FILE[:REPO:TAG]`, or a registry reference."""

from . import dockerarchive, layout
from .registry import client as registry
from .image import Image, Platform

OCI = "oci:"
DOCKER_ARCHIVE = "docker-archive:"


def load(spec: str, platform: Platform, options: registry.RegistryOptions) -> Image:
    if spec.startswith(OCI):
        return layout.load(spec[len(OCI):], platform)
    if spec.startswith(DOCKER_ARCHIVE):
        return dockerarchive.load(spec[len(DOCKER_ARCHIVE):])
    return registry.load(spec.removeprefix("docker://"), platform, options)


def is_registry(spec: str) -> bool:
    return not spec.startswith((OCI, DOCKER_ARCHIVE))
