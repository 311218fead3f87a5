# The shipped manifests installed on real nodes, the same way for tests/e2e/real-nodes/run and
# scripts/demo (sourced, not run). Root only.
#
#   install_images LOG               scripts/images build (the Dockerfile, sidecars, pause,
#                                    busybox; cached when nothing changed)
#   install_cluster DIR LOG [ARGS]   scripts/cluster up --dir DIR --real-nodes 2 --snapshots ARGS
#                                    (e.g. --owner-pid PID); sets K (kubectl as cluster admin on
#                                    it) and INSTALL_KUBECONFIG
#   install_manifests WORK LOG [KUSTOMIZATION]
#                                    labels the nodes for the driver, the namespace, capacity
#                                    certificates (in WORK/certs), then `kubectl apply -k` of
#                                    manifests/ through overlay/ beside this file (or through
#                                    KUSTOMIZATION, a directory that builds on it)
#   install_rolled_out KIND/NAME S   waits up to S seconds until it is rolled out
#   install_registered NODE          the node's kubelet registered the driver (CSINode)
#   install_leader                   prints the controller-manager pod holding the Lease
#   install_node_clean DIR I         node I of the cluster in DIR has no volume file, record, CSI
#                                    mount or loop device of the driver (says what is left)
#
# A step that fails shows its log and returns non-zero. Needs ROOT (the repository).

INSTALL_NS=ephemera-system
INSTALL_NODES=(node-1 node-2)
INSTALL_DRIVER=pmem-csi.ephemera.io

install_log_on_failure() {  # LOG CMD...
  local log=$1; shift
  "$@" >"$log" 2>&1 || { tail -40 "$log" >&2; return 1; }
}

install_images() {
  install_log_on_failure "$1" "$ROOT/scripts/images" build
}

install_cluster() {
  local dir=$1 log=$2; shift 2
  install_log_on_failure "$log" "$ROOT/scripts/cluster" up --dir "$dir" --real-nodes "${#INSTALL_NODES[@]}" \
    --snapshots "$@" || return 1
  INSTALL_KUBECONFIG=$dir/kubeconfig
  K="$ROOT/.tools/bin/kubectl --kubeconfig $INSTALL_KUBECONFIG"
}

install_manifests() {
  local work=$1 log=$2 kustomization=${3:-$ROOT/tests/e2e/real-nodes/overlay}
  {
    $K label nodes "${INSTALL_NODES[@]}" storage.ephemera.io/pmem=true &&
      $K apply -f "$ROOT/manifests/namespace.yaml" &&
      "$ROOT/scripts/capacity-certs" --dir "$work/certs" --apply --kubeconfig "$INSTALL_KUBECONFIG" &&
      $K apply -k "$kustomization"
  } >"$log" 2>&1 || { tail -40 "$log" >&2; return 1; }
}

install_rolled_out() {  # KIND/NAME SECONDS
  $K -n "$INSTALL_NS" rollout status "$1" --timeout="$2s"
}

install_registered() {  # NODE
  [ "$($K get csinode "$1" -o jsonpath='{.spec.drivers[*].name}' 2>/dev/null)" = "$INSTALL_DRIVER" ]
}

install_leader() {
  local holder
  holder=$($K -n "$INSTALL_NS" get lease ephemera-controller-manager -o jsonpath='{.spec.holderIdentity}' 2>/dev/null)
  [ -n "$holder" ] || return 1
  # The identity is "<pod name>_<unique suffix>": only a pod that still exists counts.
  $K -n "$INSTALL_NS" get pods -l app.kubernetes.io/name=ephemera-controller-manager \
    -o jsonpath='{.items[*].metadata.name}' | tr ' ' '\n' | grep -x "${holder%%_*}"
}

install_node_clean() {  # DIR I
  local nd=$1/nodes/node-$2 pid
  [ -z "$(ls -A "$nd/ephemera-state/files" 2>/dev/null)" ] || { echo "node-$2: files left: $(ls "$nd/ephemera-state/files")"; return 1; }
  [ -z "$(find "$nd/ephemera-state/state" -type f 2>/dev/null)" ] || { echo "node-$2: records left"; return 1; }
  pid=$(cat "$1/pids/node-$2")
  if nsenter -t "$pid" -m findmnt -rn -o TARGET | grep -q 'kubernetes.io~csi'; then
    echo "node-$2: CSI mounts left"; return 1
  fi
  # By inode: a loop device names its file by the path inside the node's mount namespace.
  local inodes
  inodes=$(find "$nd" -xdev -type f -printf '%i\n' | sort -u)
  if [ -n "$inodes" ] && losetup -l -n -O BACK-INO | tr -d ' ' | grep -qxF "$inodes"; then
    echo "node-$2: loop devices left"; return 1
  fi
}
