#!/usr/bin/env bash
# The fixture's cluster is what it claims: 3 Ready, schedulable nodes, an admin who can list its
# permissions, and a scheduler that places a pod on one of the nodes.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dir=${EPHEMERA_TEST_CLUSTER:?run through ctest}
k() { "$root/.tools/bin/kubectl" --kubeconfig "$dir/kubeconfig" "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

nodes=$(k get nodes -o jsonpath='{range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status} {.spec.taints}{"\n"}{end}')
echo "$nodes"
[ "$(grep -c . <<<"$nodes")" = 3 ] || fail "expected 3 nodes"
grep -qv ' True $' <<<"$nodes" && fail "every node must be Ready and untainted"

k auth can-i --list > /tmp/can-i.$$ || fail "kubectl auth can-i --list failed"
grep -q '^\*\.\*  *\[\]  *\[\]  *\[\*\]' /tmp/can-i.$$ || { cat /tmp/can-i.$$; rm -f /tmp/can-i.$$; fail "admin should be allowed everything"; }
rm -f /tmp/can-i.$$

pod=smoke-$$
k run "$pod" --image=registry.invalid/none --restart=Never >/dev/null
trap 'k delete pod "$pod" --wait=false >/dev/null 2>&1 || true' EXIT
for _ in $(seq 1 100); do
  node=$(k get pod "$pod" -o jsonpath='{.spec.nodeName}')
  [ -n "$node" ] && break
  sleep 0.1
done
[[ ${node:-} =~ ^node-[123]$ ]] || fail "kube-scheduler did not place the pod (nodeName='${node:-}')"
echo "pod $pod scheduled on $node"
echo "1 passed, 0 failed"
