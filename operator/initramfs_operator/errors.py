"""Expected failures, each with the exit code the CLI returns and the reason the operator reports.

Anything else that escapes is a bug and is allowed to show a traceback.
"""


def shown(name: str, limit: int = 120) -> str:
    """A name from an image, fit for a message: hostile names can be a megabyte long."""
    return name if len(name) <= limit else f"{name[:limit]}...({len(name)} characters)"


class BuildError(Exception):
    exit_code = 1
    reason = "BuildFailed"


class UsageError(BuildError):
    """The request itself is wrong: bad flags, bad reference syntax, bad spec."""

    exit_code = 2
    reason = "InvalidSpec"


class RegistryError(BuildError):
    """The registry could not be reached or refused to serve the image."""

    exit_code = 3
    reason = "ImagePullFailed"


class AuthError(RegistryError):
    reason = "Unauthorized"


class AccessDenied(BuildError):
    """The operator's own RBAC does not let it read what a build refers to."""

    reason = "Forbidden"


class InvalidImageError(BuildError):
    """The image's bytes are wrong: corrupt layer, digest mismatch, unsafe path, unknown media type."""

    exit_code = 4
    reason = "InvalidImage"


class LimitExceeded(InvalidImageError):
    """The image needs more than the build allows (--max-uncompressed-size, --max-entries, metadata caps)."""

    reason = "LimitExceeded"


class OutputError(BuildError):
    """The result could not be written or pushed."""

    exit_code = 5
    reason = "OutputFailed"


class BootFailed(BuildError):
    """The initramfs did not boot: the kernel could not unpack it, could not run its init, or panicked."""

    exit_code = 6
    reason = "BootFailed"


class BootTimeout(BootFailed):
    """The boot reached no verdict in time: no init ran, or no line matched the success pattern."""

    exit_code = 7
    reason = "BootTimeout"
