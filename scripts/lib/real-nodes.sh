# Real nodes for scripts/cluster (`up --real-nodes N`). Sourced by scripts/cluster, not run.
#
# Each node is a kubelet, a kube-proxy and a containerd (with runc and the CNI bridge plugin) that
# see the machine as a node of their own:
#   - a network namespace (ephK-nI) with one address on a bridge of the host (ephbK, 10.(100+K).0.1/24;
#     node I is 10.(100+K).0.(10+I)), where kube-apiserver listens; pods of node I get addresses from
#     10.(100+K).I.0/24 on a bridge inside the namespace, routed between the nodes and to the host;
#   - a mount namespace in which /var/lib/kubelet (shared, so that Bidirectional mount propagation
#     works), /var/lib/containerd, /run/containerd, /var/log/pods, /var/log/containers, /var/lib/cni,
#     /etc/cni/net.d and /var/lib/ephemera-pmem-csi are bind mounts of the node's directory
#     DIR/nodes/node-I, so that the paths the manifests name are the node's own;
#   - a cgroup (/ephK-node-I in every v1 hierarchy): containerd and its shims run in its `system`
#     child, the kubelet puts the pods under it (cgroupRoot), and teardown kills what is left in it.
# The images come from `scripts/images load` into each node's containerd: nothing is pulled.
# Nothing leaves loopback and these namespaces. K, the network index, is the lowest free one,
# claimed under /run/ephemera-real-nodes/K, so that two clusters on one machine do not collide.
#
# Uses from scripts/cluster: dir, issue_cert, log, die, kubectl_admin.

RN_LOCKS=/run/ephemera-real-nodes
RN_CNI_BIN=/usr/lib/cni

rn_load_env() { [ -f "$dir/real-nodes.env" ] && source "$dir/real-nodes.env"; }

rn_node_ip() { echo "$RN_NET.0.$((10 + $1))"; }

# Claims a network index and writes DIR/real-nodes.env.
rn_allocate() {  # N
  local n=$1 k owner
  mkdir -p "$RN_LOCKS"
  for k in $(seq 1 50); do
    if [ -d "$RN_LOCKS/$k" ]; then
      owner=$(cat "$RN_LOCKS/$k/dir" 2>/dev/null || true)
      # A claim whose cluster directory is gone is stale (its `down` never ran).
      if [ -n "$owner" ] && [ ! -e "$owner/real-nodes.env" ] && ! ip link show "ephb$k" >/dev/null 2>&1; then
        rm -rf "${RN_LOCKS:?}/$k"
      else
        continue
      fi
    fi
    mkdir "$RN_LOCKS/$k" 2>/dev/null || continue
    echo "$dir" > "$RN_LOCKS/$k/dir"
    cat > "$dir/real-nodes.env" <<ENV
RN_K=$k
RN_N=$n
RN_NET=10.$((100 + k))
RN_BRIDGE=ephb$k
ENV
    rn_load_env
    return 0
  done
  die "no free network index for real nodes (50 clusters with real nodes on this machine?)"
}

rn_check_prerequisites() {
  local t
  [ "$(id -u)" = 0 ] || die "--real-nodes needs root (network namespaces, mounts, cgroups)"
  for t in kubelet kube-proxy; do
    [ -x "$EPHEMERA_TOOLS_BIN/$t" ] || die "$EPHEMERA_TOOLS_BIN/$t is missing: run scripts/setup first"
  done
  for t in containerd containerd-shim-runc-v2 runc ctr ip unshare nsenter iptables conntrack losetup; do
    command -v "$t" >/dev/null || die "'$t' is not installed: run scripts/setup first"
  done
  [ -x "$RN_CNI_BIN/bridge" ] && [ -x "$RN_CNI_BIN/host-local" ] && [ -x "$RN_CNI_BIN/loopback" ] \
    || die "the CNI plugins are missing from $RN_CNI_BIN: run scripts/setup first"
  [ -d /sys/fs/cgroup/memory ] || die "real nodes need cgroup v1 hierarchies under /sys/fs/cgroup (cgroupfs)"
}

rn_pki() {
  local i ip
  issue_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" client ""
  issue_cert kube-proxy "/CN=system:kube-proxy" client ""
  for i in $(seq 1 "$RN_N"); do
    ip=$(rn_node_ip "$i")
    issue_cert "kubelet-node-$i" "/O=system:nodes/CN=system:node:node-$i" client ""
    issue_cert "kubelet-serving-node-$i" "/CN=node-$i" server "IP:$ip,DNS:node-$i"
  done
}

# The host bridge, one namespace per node with its veth, and the routes between them.
rn_network_up() {
  local i j ns ip
  ip link add "$RN_BRIDGE" type bridge
  ip addr add "$RN_NET.0.1/24" dev "$RN_BRIDGE"
  ip link set "$RN_BRIDGE" up
  for i in $(seq 1 "$RN_N"); do
    ns=eph$RN_K-n$i ip=$(rn_node_ip "$i")
    ip netns add "$ns"
    ip link add "eph$RN_K-v$i" type veth peer name eth0 netns "$ns"
    ip link set "eph$RN_K-v$i" master "$RN_BRIDGE" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$ip/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via "$RN_NET.0.1"
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
    for j in $(seq 1 "$RN_N"); do
      [ "$j" = "$i" ] || ip -n "$ns" route add "$RN_NET.$j.0/24" via "$(rn_node_ip "$j")"
    done
    ip route add "$RN_NET.$i.0/24" via "$ip" dev "$RN_BRIDGE"
  done
}

rn_write_node_files() {  # I
  local i=$1 nd=$dir/nodes/node-$1 ip p=$dir/pki
  ip=$(rn_node_ip "$i")
  mkdir -p "$nd"/{kubelet,containerd,run-containerd,log-pods,log-containers,cni,cni-net.d,ephemera-state,logs}
  write_kubeconfig "$nd/kubelet.kubeconfig" "system:node:node-$i" "$p/kubelet-node-$i.crt" "$p/kubelet-node-$i.key"
  write_kubeconfig "$nd/kube-proxy.kubeconfig" system:kube-proxy "$p/kube-proxy.crt" "$p/kube-proxy.key"
  cat > "$nd/containerd.toml" <<TOML
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
oom_score = 0
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "ephemera.local/pause:1"
  # This machine's root lacks CAP_SYS_RESOURCE: runc could not give the sandbox a lower
  # oom_score_adj than containerd's own.
  restrict_oom_score_adj = true
  enable_selinux = false
  # Pod network namespaces are pinned under /run/containerd (the node's own), not /run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$RN_CNI_BIN"
    conf_dir = "/etc/cni/net.d"
TOML
  cat > "$nd/cni-net.d/10-ephemera.conflist" <<CNI
{
  "cniVersion": "0.4.0",
  "name": "ephemera-node-$i",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$RN_NET.$i.0/24", "gateway": "$RN_NET.$i.1"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "/var/lib/cni/networks"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
CNI
  cat > "$nd/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $p/kubelet-serving-node-$i.crt
tlsPrivateKeyFile: $p/kubelet-serving-node-$i.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $p/ca.crt}
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
cgroupDriver: cgroupfs
cgroupRoot: /eph$RN_K-node-$i
failCgroupV1: false
failSwapOn: false
# The images were loaded, not pulled: nothing may collect them, and disk pressure on the shared
# machine is not this node's to act on.
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
serializeImagePulls: false
maxPods: 110
podPidsLimit: 4096
YAML
}

# Creates /ephK-node-I/system in every cgroup v1 hierarchy and moves the calling process there.
rn_enter_cgroup() {  # I
  local h root=eph$RN_K-node-$1 d
  for h in /sys/fs/cgroup/*/; do
    h=${h%/}
    [ -f "$h/cgroup.procs" ] || continue
    [ "$(stat -f -c %T "$h")" = cgroup2fs ] && continue
    for d in "$h/$root" "$h/$root/system"; do
      mkdir -p "$d"
      if [ -f "$d/cpuset.cpus" ] && [ -z "$(cat "$d/cpuset.cpus")" ]; then
        cat "$(dirname "$d")/cpuset.cpus" > "$d/cpuset.cpus"
        cat "$(dirname "$d")/cpuset.mems" > "$d/cpuset.mems"
      fi
    done
    echo $$ > "$h/$root/system/cgroup.procs"
  done
}

# Every process in the node's cgroups, in any hierarchy.
rn_cgroup_pids() {  # I
  local root=eph$RN_K-node-$1
  find /sys/fs/cgroup/*/"$root" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u || true
}

# Kills what is left of node I (pods, shims, containerd) and removes its cgroups.
rn_node_cleanup() {  # I
  local i=$1 n pids root=eph$RN_K-node-$1
  for n in $(seq 1 50); do
    pids=$(rn_cgroup_pids "$i")
    [ -z "$pids" ] && break
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.1
  done
  [ -z "$(rn_cgroup_pids "$i")" ] || log "warning: processes of node-$i would not die: $(rn_cgroup_pids "$i" | tr '\n' ' ')"
  # Depth first: a v1 cgroup is removed once its children are.
  find /sys/fs/cgroup/*/"$root" -depth -type d -exec rmdir {} \; 2>/dev/null || true
}

# Detaches the loop devices whose backing file is a file below DIR/nodes (the drivers' file pools).
# By inode: the kernel names a backing file by its path inside the node's mount namespace, which
# says nothing on the host.
rn_detach_loops() {
  local fsdev inodes dev mm ino
  fsdev=$(stat -c '%Hd:%Ld' "$dir")
  inodes=$(find "$dir/nodes" -xdev -type f -printf '%i\n' 2>/dev/null | sort -u)
  [ -n "$inodes" ] || return 0
  while read -r dev mm ino; do
    [ "$mm" = "$fsdev" ] && grep -qx "$ino" <<<"$inodes" && losetup -d "$dev"
  done < <(losetup -l -n -O NAME,BACK-MAJ:MIN,BACK-INO 2>/dev/null)
}

# Removes everything of the real nodes; safe to call twice, and after a supervisor was killed. Best
# effort: one step that fails does not keep the others from running.
rn_teardown() { (set +e; rn_teardown_steps); }
rn_teardown_steps() {
  rn_load_env || return 0
  local i
  for i in $(seq 1 "$RN_N"); do rn_node_cleanup "$i"; done
  rn_detach_loops
  for i in $(seq 1 "$RN_N"); do ip netns del "eph$RN_K-n$i" 2>/dev/null || true; done
  ip link del "$RN_BRIDGE" 2>/dev/null || true
  if [ "$(cat "$RN_LOCKS/$RN_K/dir" 2>/dev/null)" = "$dir" ]; then rm -rf "${RN_LOCKS:?}/$RN_K"; fi
  rm -f "$dir/real-nodes.env"
}

# Runs inside node I's network namespace and a new mount namespace (see rn_start_node): mounts the
# node's directories, starts containerd, loads the images, then kube-proxy and the kubelet, and
# stays until one of them exits or it is told to stop.
rn_node_main() {  # I
  local i=$1 nd=$dir/nodes/node-$1 ip pids=() p
  rn_load_env
  ip=$(rn_node_ip "$i")
  rn_enter_cgroup "$i"
  mount --make-rslave /
  local m src target
  for m in kubelet:/var/lib/kubelet containerd:/var/lib/containerd run-containerd:/run/containerd \
    log-pods:/var/log/pods log-containers:/var/log/containers cni:/var/lib/cni cni-net.d:/etc/cni/net.d \
    ephemera-state:/var/lib/ephemera-pmem-csi; do
    src=$nd/${m%%:*} target=${m#*:}
    mkdir -p "$target"
    mount --bind "$src" "$target"
  done
  mount --make-rshared /var/lib/kubelet
  stop_node() {
    trap - TERM INT HUP
    local p
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 1
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    exit 0
  }
  trap stop_node TERM INT HUP
  setpriv --pdeathsig KILL -- containerd --config "$nd/containerd.toml" >> "$nd/logs/containerd.log" 2>&1 < /dev/null &
  pids+=($!)
  for p in $(seq 1 300); do
    ctr -a /run/containerd/containerd.sock version >/dev/null 2>&1 && break
    kill -0 "${pids[0]}" 2>/dev/null || { echo "node-$i: containerd exited; see $nd/logs/containerd.log"; exit 1; }
    sleep 0.1
  done
  "$EPHEMERA_ROOT/scripts/images" load --containerd-address /run/containerd/containerd.sock \
    >> "$nd/logs/images.log" 2>&1 || { echo "node-$i: loading the images failed; see $nd/logs/images.log"; exit 1; }
  echo "node-$i: images loaded"
  setpriv --pdeathsig KILL -- "$EPHEMERA_TOOLS_BIN/kube-proxy" --kubeconfig "$nd/kube-proxy.kubeconfig" \
    --hostname-override "node-$i" --proxy-mode iptables --cluster-cidr "$RN_NET.0.0/16" \
    --conntrack-max-per-core 0 --healthz-bind-address 127.0.0.1:10256 \
    --metrics-bind-address 127.0.0.1:10249 --v=1 >> "$nd/logs/kube-proxy.log" 2>&1 < /dev/null &
  pids+=($!)
  setpriv --pdeathsig KILL -- "$EPHEMERA_TOOLS_BIN/kubelet" --config "$nd/kubelet.yaml" \
    --kubeconfig "$nd/kubelet.kubeconfig" --hostname-override "node-$i" --node-ip "$ip" \
    --root-dir /var/lib/kubelet --v=1 >> "$nd/logs/kubelet.log" 2>&1 < /dev/null &
  pids+=($!)
  echo "node-$i: containerd, kube-proxy and kubelet started"
  while :; do
    for p in "${pids[@]}"; do
      kill -0 "$p" 2>/dev/null || { echo "node-$i: a component (pid $p) exited; see $nd/logs/"; exit 1; }
    done
    sleep 1 & wait $! || true
  done
}

# Ready: the kubelet says so, and kube-proxy is healthy and has written the rule of the
# `kubernetes` Service (10.0.0.1), so that a pod started now reaches the API through it (seen
# without this check: a pod right after `up` could not).
rn_node_ready() {  # I
  [ "$(kubectl_admin get node "node-$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ] &&
    nsenter --net="/run/netns/eph$RN_K-n$1" curl -sf --max-time 2 -o /dev/null http://127.0.0.1:10256/healthz &&
    nsenter --net="/run/netns/eph$RN_K-n$1" iptables -w 5 -t nat -S KUBE-SERVICES 2>/dev/null | grep -q -- '-d 10.0.0.1/32'
}
