"""Booting an initramfs to prove it works: the kernel (from an OCI image), the microVM that boots it
(qemu, TCG unless KVM is asked for), and the judge of its serial console.

- console: the serial console's lines -> a verdict (pure: fed bytes and times);
- kernel: a kernel file out of an OCI image, flattened by the layer rules like any build image;
- machine: the qemu command line for a platform, guest memory from the archive's size, and the run.
"""
