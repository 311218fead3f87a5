# The whole of ephemera on a local control plane with fake nodes, for tests/e2e/run (sourced).
#
#   stack_up DIR       cluster with 3 fake nodes, manifests/ applied, capacity certificates, and per
#                      node: ephemera-pmem-csi (file backend), external-provisioner, and the kubelet
#                      stand-in; then 2 replicas of ephemera-controller-manager. The programs act as
#                      the pods of the manifests' DaemonSet and Deployment: same service accounts
#                      (tokens, not admin), same configuration (the ConfigMap), same flags.
#   stack_down         stops all of it, unmounts and detaches what the drivers left, removes DIR.
#
# Needs: ROOT (the repository), BIN (build/bin), TOOLS (.tools/bin). Sets K (kubectl as admin).
# Pool sizes per node: STACK_POOLS (default "512Mi 1Gi 2Gi").

STACK_PIDS=()
STACK_DIR=""
STACK_NODES=(node-1 node-2 node-3)
STACK_NS=ephemera-system

stack_log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# stack_start NAME CMD... : runs CMD in the background with its output in $STACK_DIR/logs/NAME.log.
stack_start() {
  local name=$1; shift
  "$@" >"$STACK_DIR/logs/$name.log" 2>&1 &
  STACK_PIDS+=($!)
  eval "STACK_PID_${name//-/_}=$!"
}

# stack_wait SECONDS WHAT CMD... : polls CMD every 0.5 s until it succeeds; fails after SECONDS.
stack_wait() {
  local seconds=$1 what=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      stack_log "timed out after ${seconds}s waiting for: $what"
      return 1
    fi
    sleep 0.5
  done
}

# A kubeconfig that authenticates with a service account's token (the API server's CA verified).
stack_sa_kubeconfig() {  # NAME -> prints the path
  local sa=$1 out="$STACK_DIR/sa-$1.kubeconfig" token server ca
  token=$($K -n "$STACK_NS" create token "$sa" --duration=6h)
  server=$($K config view --raw -o jsonpath='{.clusters[0].cluster.server}')
  ca=$($K config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
  umask 077
  cat >"$out" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "$server", certificate-authority-data: "$ca"}}]
users: [{name: $sa, user: {token: "$token"}}]
contexts: [{name: $sa, context: {cluster: local, user: $sa}}]
current-context: $sa
EOF
  echo "$out"
}

# The args of one container of the manifests' DaemonSet (manifests/driver.yaml), one per line.
stack_manifest_args() {  # CONTAINER
  awk -v c="$1" '
    $0 ~ "- name: " c "$" { inside = 1; next }
    inside && /^ *args:/ { args = 1; next }
    inside && args && /^ *#/ { next }
    inside && args && /^ *- --/ { sub(/^ *- /, ""); print; next }
    inside && args { exit }' "$ROOT/manifests/driver.yaml"
}

stack_up() {
  STACK_DIR=$1
  local pools=(${STACK_POOLS:-512Mi 1Gi 2Gi})
  mkdir -p "$STACK_DIR/logs"
  stack_log "starting the control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) with 3 nodes"
  "$ROOT/scripts/cluster" up --dir "$STACK_DIR/cluster" --nodes 3 --owner-pid $$ >"$STACK_DIR/logs/cluster.log" 2>&1 ||
    { cat "$STACK_DIR/logs/cluster.log" >&2; return 1; }
  K="$TOOLS/kubectl --kubeconfig $STACK_DIR/cluster/kubeconfig"

  stack_log "kubectl apply --dry-run=server -k manifests/, then for real"
  # A server-side dry run of namespaced objects needs their namespace to exist.
  $K apply -f "$ROOT/manifests/namespace.yaml" >/dev/null
  $K apply --dry-run=server -k "$ROOT/manifests" >"$STACK_DIR/logs/dry-run.log" 2>&1 ||
    { cat "$STACK_DIR/logs/dry-run.log" >&2; return 1; }
  $K apply -k "$ROOT/manifests" >"$STACK_DIR/logs/apply.log" 2>&1 ||
    { cat "$STACK_DIR/logs/apply.log" >&2; return 1; }
  "$ROOT/scripts/capacity-certs" --dir "$STACK_DIR/certs" --apply \
    --kubeconfig "$STACK_DIR/cluster/kubeconfig" 2>>"$STACK_DIR/logs/certs.log"
  # An admin marks the nodes that have persistent memory: the DaemonSet's pods go there.
  $K label nodes "${STACK_NODES[@]}" storage.ephemera.io/pmem=true --overwrite >/dev/null

  local provisioner_kc controller_kc
  provisioner_kc=$(stack_sa_kubeconfig ephemera-pmem-csi)
  controller_kc=$(stack_sa_kubeconfig ephemera-controller-manager)
  mapfile -t provisioner_args < <(stack_manifest_args external-provisioner)

  local i node dir
  for i in 0 1 2; do
    node=${STACK_NODES[$i]} dir="$STACK_DIR/$node"
    mkdir -p "$dir/pool" "$dir/state" "$dir/kubelet"
    stack_log "$node: ephemera-pmem-csi (file backend, pool ${pools[$i]}), external-provisioner, kubelet stand-in"
    # The DaemonSet pod's IP is a loopback address of its own, so that every node's capacity
    # listener has its own address as in a real cluster.
    stack_start "driver-$node" "$BIN/ephemera-pmem-csi" --endpoint="unix://$dir/csi.sock" \
      --node-id="$node" --backend=file --file-dir="$dir/pool" --file-capacity="${pools[$i]}" \
      --state-dir="$dir/state" --capacity-listen="127.0.0.$((i + 2)):10000" \
      --tls-ca="$STACK_DIR/certs/ca.crt" --tls-cert="$STACK_DIR/certs/server.crt" \
      --tls-key="$STACK_DIR/certs/server.key"
    stack_wait 20 "$node's driver socket" test -S "$dir/csi.sock" || return 1
    stack_start "provisioner-$node" env NODE_NAME="$node" "$TOOLS/csi-provisioner" \
      --kubeconfig="$provisioner_kc" "${provisioner_args[@]/--csi-address=*/--csi-address=unix://$dir/csi.sock}" -v=2
    stack_start "kubelet-$node" "$BIN/ephemera-kubelet-standin" \
      --kubeconfig="$STACK_DIR/cluster/kubeconfig" --node="$node" \
      --csi-address="unix://$dir/csi.sock" --root="$dir/kubelet" --pod-ip="127.0.0.$((i + 2))"
  done
  stack_wait 60 "3 CSINode objects" bash -c "[ \$($K get csinodes -o name | wc -l) -eq 3 ]" || return 1

  # The Deployment's two pods (scheduled by kube-scheduler, reported Running by the stand-in):
  # each ephemera-controller-manager process plays one of them.
  stack_wait 60 "the controller-manager's 2 pods Running" bash -c \
    "[ \$($K -n $STACK_NS get pods -l app.kubernetes.io/name=ephemera-controller-manager \
          --field-selector=status.phase=Running -o name | wc -l) -eq 2 ]" || return 1
  $K -n "$STACK_NS" get configmap ephemera-controller-manager -o jsonpath='{.data.config\.yaml}' \
    >"$STACK_DIR/controller-config.yaml"
  local endpoints=()
  if ! "$BIN/ephemera-controller-manager" --help 2>&1 | grep -q -- --csi-node-endpoints-selector; then
    # This build cannot find the drivers from their pods: name them.
    sed -i '/csiNodeEndpoints/d' "$STACK_DIR/controller-config.yaml"
    for i in 0 1 2; do endpoints+=(--csi-node-endpoint="${STACK_NODES[$i]}=127.0.0.$((i + 2)):10000"); done
  fi
  local pods replica=0
  mapfile -t pods < <($K -n "$STACK_NS" get pods -l app.kubernetes.io/name=ephemera-controller-manager -o name)
  for pod in "${pods[@]}"; do
    stack_log "ephemera-controller-manager replica $replica as ${pod#pod/} (service account token, ConfigMap config)"
    # Only paths and the listen address differ from the Deployment: certificates are files
    # here, not a mounted Secret.
    stack_start "controller-$replica" env POD_NAME="${pod#pod/}" POD_NAMESPACE="$STACK_NS" \
      "$BIN/ephemera-controller-manager" --config="$STACK_DIR/controller-config.yaml" \
      --kubeconfig="$controller_kc" --http-endpoint="127.0.0.1:$((18080 + replica))" \
      --capacity-tls-ca="$STACK_DIR/certs/ca.crt" --capacity-tls-cert="$STACK_DIR/certs/client.crt" \
      --capacity-tls-key="$STACK_DIR/certs/client.key" "${endpoints[@]}" ${STACK_CONTROLLER_FLAGS:-}
    replica=$((replica + 1))
  done
  stack_wait 60 "a leader" bash -c \
    "$K -n $STACK_NS get lease ephemera-controller-manager -o jsonpath='{.spec.holderIdentity}' | grep -q ." || return 1
  stack_wait 90 "6 CSIStorageCapacity objects (3 nodes x 2 classes)" bash -c \
    "[ \$($K -n $STACK_NS get csistoragecapacities -o name | wc -l) -eq 6 ]" || return 1
  stack_log "ephemera is up"
}

stack_down() {
  local pid
  for pid in "${STACK_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${STACK_PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  STACK_PIDS=()
  [ -n "$STACK_DIR" ] || return 0
  # What the drivers mounted and attached below the directory, deepest first.
  local target file
  { findmnt -rn -o TARGET | grep "^$STACK_DIR/" || true; } | sort -r | while read -r target; do
    umount -l "$target" 2>/dev/null || true
  done
  for file in "$STACK_DIR"/node-*/pool/*; do
    [ -e "$file" ] || continue
    { losetup -j "$file" -O NAME -n 2>/dev/null || true; } | while read -r dev; do losetup -d "$dev" || true; done
  done
  "$ROOT/scripts/cluster" down --dir "$STACK_DIR/cluster" >/dev/null 2>&1 || true
}
