#!/usr/bin/env bash
# Builds the real control plane (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, etcd), the node (kubelet, kube-proxy, and the pod sandbox's `pause` from the same
# Kubernetes source) and helm from the Go module proxy into a cache outside the checkout, keyed by version,
# so only the first run pays for the compile. Prints the bin directory.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.34.4}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
HELM_VERSION=${HELM_VERSION:-v3.19.5}
CACHE=${INITRAMFS_TOOLS_CACHE:-$HOME/.cache/initramfs-operator}
BIN="$CACHE/bin-k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION"

export GOMODCACHE="$CACHE/gomod" GOCACHE="$CACHE/gocache" GOFLAGS=-mod=mod CGO_ENABLED=0
k8s_tools=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
tools=("${k8s_tools[@]}" pause etcd helm)
missing=0
for t in "${tools[@]}"; do [[ -x "$BIN/$t" ]] || missing=1; done
if ((missing == 0)); then echo "$BIN"; exit 0; fi
mkdir -p "$BIN"

# k8s.io/kubernetes redirects its staging modules to ./staging; each is published as
# v0.Y.Z for v1.Y.Z, so a wrapper module replaces them all with that version.
work="$CACHE/src-k8s-$K8S_VERSION"
mkdir -p "$work"
minor=${K8S_VERSION#v1.}
module=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION")
gomod=$(sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' <<<"$module")
k8s_src=$(sed -n 's/.*"Dir": "\(.*\)".*/\1/p' <<<"$module")
{
  echo "module initramfs-operator/k8s-tools"
  echo "go 1.24.0"
  echo "require k8s.io/kubernetes $K8S_VERSION"
  grep -E '=> \./staging/src/' "$gomod" | awk -v v="v0.$minor" '{print "replace " $1 " => " $1 " " v}'
} > "$work/go.mod"
cat > "$work/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
(cd "$work" && go mod tidy >&2)
for t in "${k8s_tools[@]}"; do
  [[ -x "$BIN/$t" ]] || (cd "$work" && go build -trimpath -ldflags=-s -o "$BIN/$t" "k8s.io/kubernetes/cmd/$t" >&2)
done
# Static: the pause image holds this one file.
[[ -x "$BIN/pause" ]] || gcc -Os -static -DVERSION="$K8S_VERSION" -o "$BIN/pause" "$k8s_src/build/pause/linux/pause.c"

etcd_work="$CACHE/src-etcd-$ETCD_VERSION"
mkdir -p "$etcd_work"
cat > "$etcd_work/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
if [[ ! -x "$BIN/etcd" ]]; then
  (cd "$etcd_work" && { [[ -f go.mod ]] || go mod init initramfs-operator/etcd >&2; } \
    && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2 && go mod tidy >&2 \
    && go build -trimpath -ldflags=-s -o "$BIN/etcd" . >&2)
fi

if [[ ! -x "$BIN/helm" ]]; then
  GOBIN="$BIN" go install -trimpath -ldflags=-s "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
fi
echo "$BIN"
