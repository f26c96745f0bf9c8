"""OCI distribution registries: pulling images, pushing initramfs artifacts.

- options: RegistryOptions, how to reach registries; keychain: Credentials by registry, in memory;
- transport: one repository's HTTP channel (authorization via auth's challenge handling, retries,
  redirects, error mapping), which carries
- pull: images by reference (manifests and configs) and what a reference points at now;
  downloads: their layer blobs, fetched only when prefetched or opened;
- push: the initramfs as an OCI artifact; artifact: reading one back; removal: deleting one.
"""

import importlib
from typing import TYPE_CHECKING, Any

from .keychain import Credentials, Keychain
from .options import RegistryOptions, read_ca_file

if TYPE_CHECKING:
    from .pull import current_digest, head, load, platforms
    from .push import ARTIFACT_TYPE, push_artifact, push_index, push_index_of, push_manifest, push_target
    from .removal import Removal, remove_artifact

# pull and push bring httpx (~50 ms to import): they load on first use, so a build from an OCI layout
# or a docker archive, which only needs RegistryOptions, starts without them.
_LAZY = {"current_digest": "pull", "head": "pull", "load": "pull", "platforms": "pull", "ARTIFACT_TYPE": "push",
         "push_artifact": "push", "push_index": "push", "push_index_of": "push", "push_manifest": "push",
         "push_target": "push", "Removal": "removal", "remove_artifact": "removal"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)


__all__ = ["ARTIFACT_TYPE", "Credentials", "Keychain", "RegistryOptions", "current_digest", "head", "load",
           "platforms", "push_artifact", "push_index", "push_index_of", "push_manifest", "push_target", "read_ca_file",
           "Removal", "remove_artifact"]
