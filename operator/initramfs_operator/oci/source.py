"""IMAGE arguments -> `Image`: `oci:DIR[:TAG|@DIGEST]`, `docker-archive:FILE[:REPO:TAG]`, or a registry reference."""

from contextlib import AbstractContextManager, nullcontext

from . import dockerarchive, layout, registry
from .image import Image, Platform

OCI = "oci:"
DOCKER_ARCHIVE = "docker-archive:"


def load(spec: str, platform: Platform, options: registry.RegistryOptions) -> AbstractContextManager[Image]:
    """The image, for a `with` block: leaving it releases what the source holds (a registry's downloads)."""
    if spec.startswith(OCI):
        return nullcontext(layout.load(spec[len(OCI):], platform))
    if spec.startswith(DOCKER_ARCHIVE):
        return nullcontext(dockerarchive.load(spec[len(DOCKER_ARCHIVE):]))
    return registry.load(spec.removeprefix("docker://"), platform, options)


def platforms(spec: str, options: registry.RegistryOptions) -> list[Platform]:
    """The platforms the image at `spec` has (a `docker save` archive: its one image's)."""
    if spec.startswith(OCI):
        return layout.platforms(spec[len(OCI):])
    if spec.startswith(DOCKER_ARCHIVE):
        return [dockerarchive.load(spec[len(DOCKER_ARCHIVE):]).config.platform]
    return registry.platforms(spec.removeprefix("docker://"), options)


def is_registry(spec: str) -> bool:
    return not spec.startswith((OCI, DOCKER_ARCHIVE))
