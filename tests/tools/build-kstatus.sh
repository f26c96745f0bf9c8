#!/usr/bin/env bash
# Builds tests/tools/kstatus (sigs.k8s.io/cli-utils' kstatus, from the Go module proxy) into the
# same cache as build-tools.sh, keyed by the cli-utils version and a hash of the module's
# sources, so only the first run compiles. Prints the path of the binary.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/kstatus" && pwd)
CACHE=${INITRAMFS_TOOLS_CACHE:-$HOME/.cache/initramfs-operator}
version=$(awk '$1 == "sigs.k8s.io/cli-utils" {print $2}' "$SRC/go.mod")
sources=$(cat "$SRC/go.mod" "$SRC/go.sum" "$SRC"/*.go | sha256sum | cut -c1-12)
BIN="$CACHE/bin-kstatus-$version-$sources/kstatus"

if [[ ! -x "$BIN" ]]; then
  export GOMODCACHE="$CACHE/gomod" GOCACHE="$CACHE/gocache" CGO_ENABLED=0 GOTOOLCHAIN=local
  (cd "$SRC" && go build -trimpath -ldflags=-s -o "$BIN" . >&2)
fi
echo "$BIN"
