"""OCI distribution registries: pulling images, pushing initramfs artifacts."""
