# One image for the operator (`initramfs-operator`, the default command) and for the build
# pods it starts (`initramfs-builder`). Build: docker build -t initramfs-operator .
# The `verifier` target adds qemu for the pods that boot outputs (spec.verify):
# docker build --target verifier -t initramfs-operator:verifier . (about 125 MB more: kept out of the default).
# BASE: any Python 3.11+ Debian image whose `pip` installs for its `python` (the tests build a Debian stand-in).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE} AS wheels
# The per-entry path compiled by mypyc (setup.py): the C compiler is needed in this stage only.
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY operator/ operator/
RUN INITRAMFS_MYPYC=1 pip wheel --no-cache-dir --wheel-dir /wheels '.[operator]'

FROM ${BASE} AS operator
COPY --from=wheels /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'initramfs-operator[operator]' \
    && rm -rf /wheels \
    && groupadd --gid 65532 builder \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin builder
# Build pods run with a read-only root filesystem: scratch space is an emptyDir at /scratch.
ENV TMPDIR=/scratch PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["initramfs-operator"]

# Verification pods: the same, with qemu to boot outputs in (TCG: no device or privilege needed).
FROM operator AS verifier
USER 0:0
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends qemu-system-x86 \
    && rm -rf /var/lib/apt/lists/*
USER 65532:65532

# The default target: the operator and build pods' image, without qemu.
FROM operator
