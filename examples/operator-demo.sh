#!/usr/bin/env bash
# The operator as a user meets it, on a throwaway local cluster made of the test tooling
# (tests/tools/local-cluster.py): a real control plane and node (kubelet, containerd, runc), the
# project's image built from the Dockerfile, the chart installed with helm, examples/initramfsbuild-pvc.yaml
# applied against an example image in the local registry, and the result booted in qemu.
# Needs root and the Debian packages .ci/run installs. The first run builds the Kubernetes binaries
# from source (10-20 minutes on 2 cores); later runs take a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e ".[operator,test]"
PATH="$(tests/tools/build-tools.sh):$PATH"
state=$(mktemp -d /tmp/operator-demo.XXXXXX)

echo "starting the local cluster and building the image (log: $state/cluster.log) ..."
python3 tests/tools/local-cluster.py "$state" >"$state/cluster.log" 2>&1 &
cluster=$!
# On exit the cluster stops (and puts the host back), then its files go.
trap 'kill $cluster 2>/dev/null; wait $cluster || true; rm -rf "$state"' EXIT
until [[ -e $state/env ]]; do
  kill -0 $cluster 2>/dev/null || { tail -40 "$state/cluster.log"; exit 1; }
  sleep 1
done
source "$state/env"  # KUBECONFIG REGISTRY OPERATOR_IMAGE NODE_NAME
export KUBECONFIG

# The example image (busybox and a greeting, examples/hello-image.py), pushed to the local registry.
image="$REGISTRY/examples/hello:1"
skopeo copy --quiet --dest-tls-verify=false "$(python3 examples/hello-image.py "$state/hello-image")" "docker://$image"

kubectl create namespace demo
kubectl label namespace demo pod-security.kubernetes.io/enforce=restricted
# The local cluster has the CRD already (tests/fixtures/kube.py applies crds/ at its start).
helm install initramfs-operator charts/initramfs-operator --namespace demo --wait --set crds.enabled=false \
  --set image.repository="${OPERATOR_IMAGE%@*}" --set image.digest="${OPERATOR_IMAGE#*@}"

# The claim's storage: a directory of the node, as a `local` PersistentVolume reserved for it.
mkdir -p "$state/volume"
kubectl apply -f - <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: demo-images}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  storageClassName: local
  claimRef: {namespace: demo, name: initramfs-images}
  local: {path: $state/volume}
  nodeAffinity:
    required:
      nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [$NODE_NAME]}]}]
EOF
# The example as it is, but for its image: the local one (a plain-HTTP registry).
sed "s|image: docker.io/library/busybox:1.36|image: $image\n  registry: {insecure: true}|" \
  examples/initramfsbuild-pvc.yaml | kubectl apply --namespace demo -f -
kubectl wait --namespace demo --for=condition=Ready irb/busybox --timeout=300s
kubectl get irb --namespace demo

echo "the file the build pod wrote:"
examples/boot.sh "$state/volume/busybox.cpio.gz"
