"""Images: references, digests, manifests and layers, from OCI layouts, `docker save` archives and registries."""
