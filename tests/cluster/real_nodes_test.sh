#!/usr/bin/env bash
# scripts/cluster up --real-nodes 2: two kubelets with containerd become Ready; a pod on each node
# writes to an emptyDir and reads it back; `kubectl logs` and `kubectl exec` reach the kubelets;
# a pod reaches kube-apiserver through the `kubernetes` Service (kube-proxy) and a pod on the other
# node; then `down` leaves no process, mount, network namespace, bridge, cgroup or claim behind.
# Exits 77 (SKIPPED) when not root.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
if [ "$(id -u)" != 0 ]; then echo "SKIP: needs root (namespaces, mounts, cgroups)"; exit 77; fi
kubectl=$root/.tools/bin/kubectl
dir=$(mktemp -d /tmp/ephemera-rn-test.XXXXXX)
cluster=$dir/cluster
fail() { echo "FAIL: $*" >&2; exit 1; }
cleanup() {
  local rc=$?
  [ $rc = 0 ] || { tail -20 "$cluster"/logs/supervisor.log "$cluster"/nodes/*/logs/kubelet.log 2>/dev/null || true; }
  "$root/scripts/cluster" down --dir "$cluster" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

"$root/scripts/images" build > "$dir/images.log" 2>&1 || { tail -20 "$dir/images.log"; fail "scripts/images build"; }
start=$SECONDS
"$root/scripts/cluster" up --dir "$cluster" --real-nodes 2 --owner-pid $$ > "$dir/up.log" 2>&1 ||
  { cat "$dir/up.log"; fail "cluster up --real-nodes 2"; }
echo "two nodes Ready $((SECONDS - start)) s after 'up'"
k() { "$kubectl" --kubeconfig "$cluster/kubeconfig" "$@"; }
source "$cluster/real-nodes.env"

for n in 1 2; do
  k apply -f - > /dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: p$n}
spec:
  nodeName: node-$n
  terminationGracePeriodSeconds: 1
  containers:
    - name: c
      image: ephemera.local/busybox:1
      command: [sh, -c, 'echo "written on node-$n" > /data/f && cat /data/f && nc -l -p 8000 -e echo pong & sleep 3600']
      volumeMounts: [{name: d, mountPath: /data}]
  volumes: [{name: d, emptyDir: {}}]
YAML
done
k wait --for=condition=Ready pod/p1 pod/p2 --timeout=120s > /dev/null || fail "the pods did not become Ready"
for n in 1 2; do
  k logs "p$n" | grep -qx "written on node-$n" || fail "p$n: kubectl logs does not show the data read back"
  [ "$(k exec "p$n" -- cat /data/f)" = "written on node-$n" ] || fail "p$n: kubectl exec"
  ip=$(k get pod "p$n" -o jsonpath='{.status.podIP}')
  case $ip in "$RN_NET.$n."*) ;; *) fail "p$n: pod IP $ip is not in node-$n's range $RN_NET.$n.0/24" ;; esac
done
echo | k exec p1 -- nc -w 5 10.0.0.1 443 < /dev/null > /dev/null ||
  fail "p1 cannot reach kube-apiserver through the kubernetes Service (10.0.0.1:443)"
p2_ip=$(k get pod p2 -o jsonpath='{.status.podIP}')
[ "$(k exec p1 -- sh -c "echo ping | nc -w 5 $p2_ip 8000")" = pong ] || fail "p1 (node-1) cannot reach p2 (node-2) at $p2_ip"
echo "pods on both nodes: emptyDir, logs, exec, Service and pod-to-pod traffic work"

k delete pod p1 p2 --wait=false > /dev/null
"$root/scripts/cluster" down --dir "$cluster" > /dev/null 2>&1 || fail "cluster down"
leftovers=$(
  ip netns list | grep -E "^eph$RN_K-n[0-9]" || true
  ip link show "$RN_BRIDGE" 2>/dev/null | head -1 || true
  ls -d /sys/fs/cgroup/*/eph"$RN_K"-node-* 2>/dev/null || true
  grep -F "$dir" /proc/mounts || true
  pgrep -af -- "$dir" || true
  ls -d "/run/ephemera-real-nodes/$RN_K" 2>/dev/null || true
)
[ -z "$leftovers" ] || fail "left behind after down: $leftovers"
echo "down left nothing behind"
