"""OCI distribution registries: pulling images, pushing initramfs artifacts.

- options: RegistryOptions, how to reach registries; keychain: Credentials by registry, in memory;
- transport: one repository's HTTP channel (authorization via auth's challenge handling, retries,
  redirects, error mapping), which carries
- pull: images by reference (manifests and configs) and what a reference points at now;
  downloads: their layer blobs, fetched only when prefetched or opened;
- push: the initramfs as an OCI artifact; artifact: reading one back.
"""

from .keychain import Credentials, Keychain
from .options import RegistryOptions, read_ca_file
from .pull import current_digest, head, load
from .push import ARTIFACT_TYPE, push_artifact

__all__ = ["ARTIFACT_TYPE", "Credentials", "Keychain", "RegistryOptions", "current_digest", "head", "load",
           "push_artifact", "read_ca_file"]
