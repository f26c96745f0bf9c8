"""Turn any Docker/OCI image into a bootable initramfs."""

__version__ = "0.1.0"
