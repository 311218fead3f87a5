#!/usr/bin/env bash
# external-provisioner (pinned csi-provisioner, --node-deployment) beside ephemera-pmem-csi on
# node-1 of the fixture's cluster: a PVC of a WaitForFirstConsumer class whose claim the scheduler
# placed on node-1 gets a PV with node affinity to node-1 and a file in the pool; deleting the PVC
# deletes the volume. Usage: provisioner_test.sh DRIVER_BINARY (run through ctest).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
DRIVER=$1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLUSTER=${EPHEMERA_TEST_CLUSTER:?run through ctest}
k() { "$ROOT/.tools/bin/kubectl" --kubeconfig "$CLUSTER/kubeconfig" "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

NODE_ID=node-1
driver_setup
SUFFIX=$$
SC=ephemera-pmem-it-$SUFFIX
PVC=pvc-it-$SUFFIX
PROVISIONER_PID=
CREATED_CSINODE=0
cleanup_cluster() {
  local rc=$?
  # No errexit here: the (exit "$rc") below must hand the status on, not end the trap before
  # driver_cleanup (which would leave the driver, its loop devices and mounts behind).
  set +e
  k delete pvc "$PVC" --wait=false >/dev/null 2>&1 || true
  k delete storageclass "$SC" >/dev/null 2>&1 || true
  if [ "$CREATED_CSINODE" = 1 ]; then
    k delete csinode node-1 >/dev/null 2>&1 || true
    k label node node-1 pmem-csi.ephemera.io/node- >/dev/null 2>&1 || true
  fi
  if [ -n "$PROVISIONER_PID" ]; then
    kill "$PROVISIONER_PID" 2>/dev/null || true
    wait "$PROVISIONER_PID" 2>/dev/null || true
  fi
  [ "$rc" = 0 ] || { echo "---- provisioner log (last 20 lines) ----" >&2; tail -20 "$WORK/provisioner.log" >&2; }
  (exit "$rc")  # driver_cleanup takes the test's status from $?
  driver_cleanup
}
trap cleanup_cluster EXIT
driver_start

# What kubelet's plugin registration would do: the node's topology label and its CSINode entry
# (removed again afterwards if this test made them).
k get csinode node-1 >/dev/null 2>&1 || CREATED_CSINODE=1
k label node node-1 --overwrite pmem-csi.ephemera.io/node=node-1 >/dev/null
k apply -f - >/dev/null <<YAML
apiVersion: storage.k8s.io/v1
kind: CSINode
metadata: {name: node-1}
spec:
  drivers:
  - name: pmem-csi.ephemera.io
    nodeID: node-1
    topologyKeys: [pmem-csi.ephemera.io/node]
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: $SC}
provisioner: pmem-csi.ephemera.io
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
parameters: {eraseafter: "true"}
YAML

NODE_NAME=node-1 "$ROOT/.tools/bin/csi-provisioner" --csi-address="$SOCK" \
  --kubeconfig="$CLUSTER/kubeconfig" --node-deployment --extra-create-metadata --v=3 \
  >"$WORK/provisioner.log" 2>&1 &
PROVISIONER_PID=$!

# The claim as the scheduler leaves it once it picked node-1 for the pod.
k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: $PVC
  annotations: {volume.kubernetes.io/selected-node: node-1}
spec:
  storageClassName: $SC
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 30Mi}}
YAML

phase=
for _ in $(seq 1 300); do
  phase=$(k get pvc "$PVC" -o jsonpath='{.status.phase}')
  [ "$phase" = Bound ] && break
  sleep 0.2
done
[ "$phase" = Bound ] || { tail -30 "$WORK/provisioner.log" >&2; fail "PVC not bound (phase '$phase')"; }
PV=$(k get pvc "$PVC" -o jsonpath='{.spec.volumeName}')
capacity=$(k get pv "$PV" -o jsonpath='{.spec.capacity.storage}')
affinity=$(k get pv "$PV" -o jsonpath='{.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].key}={.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]}')
handle=$(k get pv "$PV" -o jsonpath='{.spec.csi.volumeHandle}')
echo "PV $PV: capacity $capacity, affinity $affinity, handle $handle"
[ "$capacity" = 32Mi ] || fail "capacity $capacity, expected 32Mi (30Mi rounded up to 4 MiB)"
[ "$affinity" = pmem-csi.ephemera.io/node=node-1 ] || fail "node affinity $affinity"
[ -f "$FILE_DIR/$handle.img" ] || fail "no pool file for $handle"

k delete pvc "$PVC" --wait=false >/dev/null
for _ in $(seq 1 300); do
  k get pv "$PV" >/dev/null 2>&1 || break
  sleep 0.2
done
k get pv "$PV" >/dev/null 2>&1 && { tail -30 "$WORK/provisioner.log" >&2; fail "PV $PV not deleted"; }
[ -z "$(ls "$FILE_DIR")" ] || fail "pool not empty after delete: $(ls "$FILE_DIR")"
[ -z "$(state_records)" ] || fail "records left after delete: $(state_records)"
echo "1 passed, 0 failed"
