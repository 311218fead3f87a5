#!/usr/bin/env bash
# The cluster harness leaves nothing running, whichever way a run ends:
#   1. `cluster up` killed midway (kube-apiserver starting)      -> everything stops;
#   2. two clusters up at once, on distinct ports                 -> both work;
#   3. the supervisor of one SIGKILLed                            -> its components die with it;
#   4. the owner process of the other exits                       -> it is torn down;
#   5. `cluster up` then `cluster down`                           -> no process, DIR removed.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cluster=$root/scripts/cluster
work=$(mktemp -d /tmp/ephemera-kill-test.XXXXXX)
passed=0 failed=0
bg_pids=()
cleanup() {
  local p d
  for p in "${bg_pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for d in "$work"/*/; do [ -d "$d" ] && "$cluster" down --dir "${d%/}" >/dev/null 2>&1; done
  rm -rf "$work"
}
trap cleanup EXIT

ok() { echo "PASS: $*"; passed=$((passed + 1)); }
bad() { echo "FAIL: $*"; failed=$((failed + 1)); }

# Waits up to $2 seconds until no process mentions directory $1.
none_left() {
  local d=$1 t=$2 i
  for i in $(seq 1 $((t * 10))); do
    pgrep -f -- "$d/" >/dev/null || return 0
    sleep 0.1
  done
  echo "still running:"; pgrep -af -- "$d/"
  return 1
}

wait_file() {  # file seconds
  local i
  for i in $(seq 1 $(($2 * 10))); do [ -s "$1" ] && return 0; sleep 0.1; done
  return 1
}

echo "== 1. up killed midway"
d1=$work/midway
"$cluster" up --dir "$d1" > "$work/midway.log" 2>&1 &
up_pid=$!
if wait_file "$d1/pids/kube-apiserver" 60; then
  kill -KILL "$up_pid"
  if none_left "$d1" 15; then ok "nothing left after 'up' was killed while kube-apiserver started"
  else bad "processes left after 'up' was killed"; fi
else
  cat "$work/midway.log"; bad "kube-apiserver never started"
fi

echo "== 2. two clusters at once"
sleep 1000 & owner=$!; bg_pids+=("$owner")
d2=$work/a d3=$work/b
"$cluster" up --dir "$d2" --nodes 1 > "$work/a.log" 2>&1 & a=$!
"$cluster" up --dir "$d3" --nodes 1 --owner-pid "$owner" > "$work/b.log" 2>&1 & b=$!
if wait "$a" && wait "$b"; then
  pa=$(cat "$d2/ports/apiserver") pb=$(cat "$d3/ports/apiserver")
  if [ "$pa" != "$pb" ] && "$root/.tools/bin/kubectl" --kubeconfig "$d2/kubeconfig" get nodes node-1 -o name >/dev/null \
     && "$root/.tools/bin/kubectl" --kubeconfig "$d3/kubeconfig" get nodes node-1 -o name >/dev/null; then
    ok "two clusters run at once (ports $pa and $pb)"
  else bad "the two clusters do not both answer"; fi
else
  tail -20 "$work/a.log" "$work/b.log"; bad "two clusters could not start at once"
fi

echo "== 3. supervisor SIGKILLed"
if [ -s "$d2/supervisor.pid" ]; then
  kill -KILL "$(cat "$d2/supervisor.pid")"
  if none_left "$d2" 15; then ok "components died with their supervisor"
  else bad "components outlived their SIGKILLed supervisor"; fi
else bad "no supervisor for cluster a"; fi

echo "== 4. owner exits"
if [ -s "$d3/supervisor.pid" ]; then
  kill -KILL "$owner"
  if none_left "$d3" 20; then ok "cluster torn down when its owner process went away"
  else bad "cluster outlived its owner process"; fi
else bad "no supervisor for cluster b"; fi

echo "== 5. up then down"
d4=$work/updown
if "$cluster" up --dir "$d4" > "$work/updown.log" 2>&1; then
  "$cluster" down --dir "$d4" >/dev/null 2>&1
  if none_left "$d4" 5 && [ ! -e "$d4" ]; then ok "'down' stops every process and removes the directory"
  else bad "'down' left processes or the directory"; fi
else
  tail -20 "$work/updown.log"; bad "cluster up failed"
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
