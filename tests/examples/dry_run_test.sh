#!/usr/bin/env bash
# Every file in examples/ passes `kubectl apply --dry-run=server` against the test cluster
# ($EPHEMERA_TEST_CLUSTER), after the StorageClasses the examples name and the VolumeSnapshot CRDs
# (those of the release scripts/setup pins) are created. A broken copy
# of one example must fail, so that the check is known to check something. Every example is listed
# in examples/README.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
kubectl=$root/.tools/bin/kubectl
export KUBECONFIG=$EPHEMERA_TEST_CLUSTER/kubeconfig
ns=examples-$RANDOM$RANDOM
work=$(mktemp -d)
cleanup() {
  "$kubectl" delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# The StorageClasses of manifests/ (late binding, one per filesystem), made here so that this test
# does not depend on the install manifests.
"$kubectl" apply -f - >/dev/null <<YAML
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: ephemera-pmem-ext4}
provisioner: pmem-csi.ephemera.io
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
parameters: {csi.storage.k8s.io/fstype: ext4}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: ephemera-pmem-xfs}
provisioner: pmem-csi.ephemera.io
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
parameters: {csi.storage.k8s.io/fstype: xfs}
YAML
# The VolumeSnapshot CRDs, for examples/volume-snapshot.yaml: the cluster's API must know the kind.
crds=$root/.tools/files/external-snapshotter
[[ -f $crds/snapshot.storage.k8s.io_volumesnapshots.yaml ]] || fail "$crds has no VolumeSnapshot CRDs (run scripts/setup)"
for f in "$crds"/*.yaml; do "$kubectl" apply -f "$f" >/dev/null; done
"$kubectl" wait --for condition=established --timeout=60s crd/volumesnapshots.snapshot.storage.k8s.io >/dev/null
"$kubectl" create namespace "$ns" >/dev/null

count=0
for file in "$root"/examples/*.yaml; do
  name=$(basename "$file")
  grep -q "($name)" "$root/examples/README.md" || fail "$name is not described in examples/README.md"
  out=$("$kubectl" apply --dry-run=server -n "$ns" -f "$file" 2>&1) || fail "$name: $out"
  objects=$(grep -c '^---$' "$file" || true)
  created=$(grep -c '(server dry run)' <<<"$out" || true)
  [[ $created -eq $((objects + 1)) ]] || fail "$name: $((objects + 1)) objects, dry run said: $out"
  echo "ok   $name: $out" | tr '\n' ' '; echo
  count=$((count + 1))
done
[[ $count -ge 11 ]] || fail "only $count examples found"

# Nothing was created for real.
left=$("$kubectl" get pods,deployments,statefulsets,daemonsets,jobs,services -n "$ns" -o name)
[[ -z $left ]] || fail "dry run created objects: $left"

# A broken copy is refused: a size that is not a quantity.
sed 's/storage: 1Gi/storage: one-gigabyte/' "$root/examples/pod-generic-ephemeral.yaml" \
  > "$work/broken.yaml"
if out=$("$kubectl" apply --dry-run=server -n "$ns" -f "$work/broken.yaml" 2>&1); then
  fail "a broken example passed: $out"
fi
grep -q 'quantities must match' <<<"$out" || grep -qi 'invalid' <<<"$out" \
  || fail "unexpected error for the broken example: $out"
echo "ok   broken example refused"
echo "PASS: $count examples"
