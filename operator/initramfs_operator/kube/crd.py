"""The identity of the InitramfsBuild API: one place for what the CRD, the Jobs and the handlers name."""

GROUP, VERSION, KIND, PLURAL = "initramfs.dev", "v1alpha1", "InitramfsBuild", "initramfsbuilds"
API_VERSION = f"{GROUP}/{VERSION}"
