#!/usr/bin/env bash
# PVC expansion with the real csi-resizer (pinned, tests/cluster/tools/external-resizer) on the
# fixture's cluster: ephemera-pmem-csi (file backend) for node-1, csi-provisioner and csi-resizer
# with the arguments of manifests/driver.yaml and the grants of manifests/driver-rbac.yaml (a
# service account token, so missing RBAC fails here), and the kubelet stand-in playing node-1's
# kubelet, NodeExpandVolume included (tests/e2e/kubelet_standin.cc follows kubelet's NodeExpander).
#  1. a bound xfs PVC (320Mi) mounted by a pod on node-1;
#  2. request 400Mi: csi-resizer records it on the PV and hands it to the node (no
#     ControllerExpandVolume: the driver does not offer it), the stand-in calls NodeExpandVolume,
#     the filesystem in the pod's mount grows, the PVC reports 400Mi;
#  3. request 2Gi (the pool is 1Gi): the PVC gets a NodeResizeError condition carrying the driver's
#     message and the mount keeps its size;
#  4. request 480Mi instead: recovers, the PVC reports 480Mi and the mount grows;
#  5. pod and PVC deleted: no volume, file, record, mount or loop device is left.
# Usage: resizer_test.sh DRIVER_BINARY STANDIN_BINARY (run through ctest).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
DRIVER=$1
STANDIN=$2
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLUSTER=${EPHEMERA_TEST_CLUSTER:?run through ctest}
TOOLS=$ROOT/.tools/bin
for tool in kubectl csi-provisioner csi-resizer; do
  [ -x "$TOOLS/$tool" ] || { echo "FAIL: $TOOLS/$tool missing (run scripts/setup)" >&2; exit 1; }
done
k() { "$TOOLS/kubectl" --kubeconfig "$CLUSTER/kubeconfig" "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

NODE_ID=node-1
POOL=1Gi
driver_setup
SUFFIX=$$
NS=eph-resize-$SUFFIX
SA=ephemera-pmem-csi-$SUFFIX
SC=ephemera-pmem-resize-$SUFFIX
PVC=data
POD=app
PIDS=()
CREATED_CSINODE=0
cleanup_cluster() {
  local rc=$?
  # No errexit here: the (exit "$rc") below must hand the status on, not end the trap before
  # driver_cleanup (which would leave the driver, its loop devices and mounts behind).
  set +e
  k -n "$NS" delete pod "$POD" --grace-period=0 --force >/dev/null 2>&1 || true
  k -n "$NS" delete pvc "$PVC" --wait=false >/dev/null 2>&1 || true
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  k delete -k "$WORK/rbac" --wait=false >/dev/null 2>&1 || true
  k delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  k delete storageclass "$SC" >/dev/null 2>&1 || true
  if [ "$CREATED_CSINODE" = 1 ]; then
    k delete csinode node-1 >/dev/null 2>&1 || true
    k label node node-1 pmem-csi.ephemera.io/node- >/dev/null 2>&1 || true
  fi
  if [ "$rc" != 0 ]; then
    local log
    for log in resizer provisioner standin; do
      echo "---- $log log (last 25 lines) ----" >&2
      tail -25 "$WORK/$log.log" >&2 || true
    done
    k -n "$NS" get pvc "$PVC" -o yaml >&2 2>/dev/null || true
  fi
  (exit "$rc")  # driver_cleanup takes the test's status from $?
  driver_cleanup
}
trap cleanup_cluster EXIT
driver_start
k get csinode node-1 >/dev/null 2>&1 || CREATED_CSINODE=1

# The driver's RBAC as shipped, in a namespace of this test (names suffixed so that nothing of
# another run or suite is touched), and a token of its service account.
k create namespace "$NS" >/dev/null
mkdir -p "$WORK/rbac"
cp "$ROOT/manifests/driver-rbac.yaml" "$WORK/rbac/"
cat >"$WORK/rbac/kustomization.yaml" <<YAML
namespace: $NS
nameSuffix: "-$SUFFIX"
resources: [driver-rbac.yaml]
YAML
k apply -k "$WORK/rbac" >/dev/null
token=$(k -n "$NS" create token "$SA" --duration=1h)
server=$(k config view --raw -o jsonpath='{.clusters[0].cluster.server}')
ca=$(k config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
SA_KC=$WORK/sa.kubeconfig
(umask 077 && cat >"$SA_KC" <<YAML
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "$server", certificate-authority-data: "$ca"}}]
users: [{name: sa, user: {token: "$token"}}]
contexts: [{name: sa, context: {cluster: local, user: sa, namespace: $NS}}]
current-context: sa
YAML
)

# The sidecars with the DaemonSet's arguments; only the socket and the pod's namespace differ.
mapfile -t provisioner_args < <(manifest_args external-provisioner)
mapfile -t resizer_args < <(manifest_args csi-resizer)
[ "${#resizer_args[@]}" -gt 0 ] || fail "no csi-resizer container in manifests/driver.yaml"
provisioner_args=("${provisioner_args[@]/--csi-address=*/--csi-address=$SOCK}")
resizer_args=("${resizer_args[@]/--csi-address=*/--csi-address=$SOCK}")
resizer_args=("${resizer_args[@]//\$(POD_NAMESPACE)/$NS}")
echo "csi-resizer ${resizer_args[*]}"
NODE_NAME=node-1 "$TOOLS/csi-provisioner" --kubeconfig="$SA_KC" "${provisioner_args[@]}" --v=3 \
  >"$WORK/provisioner.log" 2>&1 &
PIDS+=($!)
"$TOOLS/csi-resizer" --kubeconfig="$SA_KC" "${resizer_args[@]}" --v=3 >"$WORK/resizer.log" 2>&1 &
PIDS+=($!)
"$STANDIN" --kubeconfig="$CLUSTER/kubeconfig" --node=node-1 --csi-address="unix://$SOCK" \
  --root="$WORK/kubelet" --namespace="$NS" >"$WORK/standin.log" 2>&1 &
PIDS+=($!)

# wait_for SECONDS WHAT CMD...: polls every 0.2 s.
wait_for() {
  local seconds=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "timed out after ${seconds}s waiting for $what"
    sleep 0.2
  done
}
pvc_field() { k -n "$NS" get pvc "$PVC" -o jsonpath="$1"; }
pvc_is() { [ "$(pvc_field "$1")" = "$2" ]; }
mount_bytes() { df -B1 --output=size "$MOUNT" | tail -1 | tr -d ' '; }

k apply -f - >/dev/null <<YAML
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: $SC}
provisioner: pmem-csi.ephemera.io
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
allowVolumeExpansion: true
parameters: {csi.storage.k8s.io/fstype: xfs, eraseafter: "false"}
YAML
wait_for 30 "the namespace's default service account" k -n "$NS" get serviceaccount default
# The claim as the scheduler leaves it once it picked node-1 (xfs needs at least 300 MB).
k -n "$NS" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: $PVC
  annotations: {volume.kubernetes.io/selected-node: node-1}
spec:
  storageClassName: $SC
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 320Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: $POD}
spec:
  nodeName: node-1
  automountServiceAccountToken: false
  containers: [{name: app, image: busybox}]
  volumes: [{name: data, persistentVolumeClaim: {claimName: $PVC}}]
YAML
wait_for 60 "the PVC Bound" pvc_is '{.status.phase}' Bound
wait_for 30 "the pod Running" bash -c \
  "[ \"\$($TOOLS/kubectl --kubeconfig $CLUSTER/kubeconfig -n $NS get pod $POD -o jsonpath='{.status.phase}')\" = Running ]"
PV=$(pvc_field '{.spec.volumeName}')
HANDLE=$(k get pv "$PV" -o jsonpath='{.spec.csi.volumeHandle}')
UID_=$(k -n "$NS" get pod "$POD" -o jsonpath='{.metadata.uid}')
MOUNT=$WORK/kubelet/pods/$UID_/volumes/data
mountpoint -q "$MOUNT" || fail "$MOUNT is not mounted"
size0=$(mount_bytes)
echo "PVC $PVC bound to $PV ($HANDLE), mounted at $MOUNT: $size0 bytes"

# 2. Online expansion.
start=$(now)
k -n "$NS" patch pvc "$PVC" --type=merge -p '{"spec":{"resources":{"requests":{"storage":"400Mi"}}}}' >/dev/null
wait_for 60 "the PVC's status.capacity 400Mi" pvc_is '{.status.capacity.storage}' 400Mi
echo "400Mi requested -> PVC status 400Mi in $(elapsed "$start") s"
[ "$(k get pv "$PV" -o jsonpath='{.spec.capacity.storage}')" = 400Mi ] || fail "PV capacity not 400Mi"
[ -z "$(pvc_field '{.status.allocatedResourceStatuses}')" ] || fail "resize status left: $(pvc_field '{.status.allocatedResourceStatuses}')"
types=$(pvc_field '{.status.conditions[*].type}')
case " $types " in
  *" FileSystemResizePending "* | *" Resizing "* | *" NodeResizeError "* | *" ControllerResizeError "*)
    fail "resize conditions left: $types" ;;
esac
size1=$(mount_bytes)
echo "mount: $size0 -> $size1 bytes"
[ "$size1" -gt $((size0 + 70 * 1024 * 1024)) ] || fail "the filesystem did not grow by 80Mi (less 10%)"
# The work was csi-resizer's (its Events on the claim) and the node's (NodeExpandVolume), not a
# ControllerExpandVolume (which the driver does not offer).
events=$(k -n "$NS" get events --field-selector involvedObject.name="$PVC" -o jsonpath='{range .items[*]}{.reason} {.source.component}{"\n"}{end}')
echo "$events" | grep -q "^FileSystemResizeRequired external-resizer pmem-csi.ephemera.io" ||
  fail "no FileSystemResizeRequired event of csi-resizer: $events"
grep -q 'method="/csi.v1.Node/NodeExpandVolume" code="OK"' "$LOG" || fail "no successful NodeExpandVolume in the driver's log"
if grep -q "ControllerExpandVolume" "$LOG"; then fail "ControllerExpandVolume was called"; fi

# 3. More than node-1's pool holds.
k -n "$NS" patch pvc "$PVC" --type=merge -p '{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}' >/dev/null
node_error() { pvc_field '{.status.conditions[?(@.type=="NodeResizeError")].message}'; }
wait_for 60 "a NodeResizeError condition" bash -c "[ -n \"\$($TOOLS/kubectl --kubeconfig $CLUSTER/kubeconfig -n $NS get pvc $PVC -o jsonpath='{.status.conditions[?(@.type==\"NodeResizeError\")].message}')\" ]"
message=$(node_error)
echo "2Gi requested -> NodeResizeError: $message"
case "$message" in
  *"code = OutOfRange"*"volume $HANDLE cannot grow to 2147483648 bytes on node node-1"*"bytes free"*) ;;
  *) fail "unexpected NodeResizeError message: $message" ;;
esac
[ "$(pvc_field '{.status.capacity.storage}')" = 400Mi ] || fail "PVC capacity changed"
[ "$(mount_bytes)" = "$size1" ] || fail "the mount changed size"

# 4. A smaller request recovers (csi-resizer's trivial resizer takes the new request, since the
# controller side never allocated anything).
start=$(now)
k -n "$NS" patch pvc "$PVC" --type=merge -p '{"spec":{"resources":{"requests":{"storage":"480Mi"}}}}' >/dev/null
wait_for 90 "the PVC's status.capacity 480Mi" pvc_is '{.status.capacity.storage}' 480Mi
echo "480Mi requested instead -> PVC status 480Mi in $(elapsed "$start") s"
[ -z "$(node_error)" ] || fail "NodeResizeError left after the recovery"
size2=$(mount_bytes)
echo "mount: $size1 -> $size2 bytes"
[ "$size2" -gt $((size1 + 70 * 1024 * 1024)) ] || fail "the filesystem did not grow by 80Mi (less 10%)"

# The grants were enough, and no more than that: what csi-resizer does not need is refused.
if grep -i forbidden "$WORK/resizer.log" "$WORK/provisioner.log"; then fail "'forbidden' in a sidecar's log"; fi
can() { k auth can-i --as="system:serviceaccount:$NS:$SA" "$@" >/dev/null 2>&1; }
can patch persistentvolumeclaims --subresource=status -n default || fail "cannot patch PVC status"
can update leases -n "$NS" || fail "cannot update its Lease"
for denied in "list pods" "get secrets" "update leases -n kube-system" "list volumeattributesclasses"; do
  # shellcheck disable=SC2086
  if can $denied; then fail "the driver's service account may $denied"; fi
done

# 5. Teardown through the stand-in and the provisioner.
k -n "$NS" delete pod "$POD" --wait=false >/dev/null
wait_for 30 "the pod gone" bash -c "! $TOOLS/kubectl --kubeconfig $CLUSTER/kubeconfig -n $NS get pod $POD"
k -n "$NS" delete pvc "$PVC" --wait=false >/dev/null
wait_for 60 "the PV gone" bash -c "! $TOOLS/kubectl --kubeconfig $CLUSTER/kubeconfig get pv $PV"
[ -z "$(ls "$FILE_DIR")" ] || fail "pool not empty: $(ls "$FILE_DIR")"
[ -z "$(state_records)" ] || fail "records left: $(state_records)"
[ -z "$(work_mounts)" ] || fail "mounts left: $(work_mounts)"
[ -z "$(work_loops)" ] || fail "loop devices left: $(work_loops)"
echo "1 passed, 0 failed"
