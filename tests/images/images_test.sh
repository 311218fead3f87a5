#!/usr/bin/env bash
# The container images, for real: `scripts/images build` (the repository's Dockerfile on a
# debootstrapped Debian base, the sidecars, the pause image), then `scripts/images load` into a
# throwaway containerd of this test's own, the way a node of `scripts/cluster --real-nodes` gets
# them, and runc runs them from there:
#   - ephemera:dev: both programs start (`--help`, exit 0); the tools the driver runs are there and
#     start (mkfs.ext4, mkfs.xfs, lvcreate, ndctl, losetup, mount); the image's user is 65532,
#     its containers run as that uid, and its entrypoint is the controller-manager;
#   - each sidecar image prints its version, the one in its tag;
#   - the pause image keeps running, then exits 0 on SIGTERM; as PID 1 it reaps orphans.
# Exit 77 (skipped) without root or when dockerd cannot run on this machine (but a flag or
# configuration of ours that dockerd refuses fails the test).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
source "$ROOT/scripts/lib/common.sh"
EPHEMERA_LOG_NAME=images-test

[ "$(id -u)" = 0 ] || { echo "SKIP: needs root (dockerd, containerd)"; exit 77; }
for b in /usr/sbin/dockerd /usr/bin/docker containerd ctr runc containerd-shim-runc-v2; do
  command -v "$b" >/dev/null || { echo "SKIP: $b is not installed (scripts/setup installs it)"; exit 77; }
done
fail() { log "FAIL: $*"; exit 1; }

# A machine where dockerd cannot run is a skip; a flag or configuration of ours that dockerd
# refuses is a failure.
if ! "$ROOT/scripts/images" with-dockerd true; then
  dlog=$EPHEMERA_CACHE/images/dockerd.log
  if grep -qiE 'unknown (flag|shorthand)|flag provided but not defined|unable to configure the Docker daemon|invalid' "$dlog" 2>/dev/null; then
    fail "dockerd refused our flags or configuration: $(tail -5 "$dlog")"
  fi
  echo "SKIP: our dockerd cannot start on this machine: $(tail -3 "$dlog" 2>/dev/null)"
  exit 77
fi

log "scripts/images build"
"$ROOT/scripts/images" build

# The build stopped its dockerd and everything under it (unless another build has started since:
# then the lock is taken and this check is left out).
exec 8> "$EPHEMERA_CACHE/images/.dockerd.lock"
if flock -n 8; then
  left=$(pgrep -af -- "--data-root $EPHEMERA_CACHE/images/docker" || true)
  [ -z "$left" ] || fail "scripts/images build left its dockerd running: $left"
  left=$(cat /sys/fs/cgroup/pids/ephemera-images.*/buildkit/*/cgroup.procs 2>/dev/null || true)
  [ -z "$left" ] || fail "scripts/images build left build-step processes: $left"
  log "ok: nothing of the build's dockerd is left"
fi
exec 8>&-

# --- a containerd of our own, everything under one directory ----------------------------------
tmp=$(mktemp -d /tmp/ephemera-images-test.XXXXXX)
sock=$tmp/containerd.sock
ctrd_pid=""
ctr() { command ctr --address "$sock" --namespace k8s.io "$@"; }
# The containers' cgroups (cgroupfs) go under one parent of this test, removed at the end.
cgroup_parent=ephemera-images-test.$$

unshare_pid="" pause_pid=""
cleanup() {
  local t m p
  [ -z "$pause_pid" ] || kill -KILL "$pause_pid" 2>/dev/null || true
  [ -z "$unshare_pid" ] || kill -KILL "$unshare_pid" 2>/dev/null || true
  if [ -n "$ctrd_pid" ] && kill -0 "$ctrd_pid" 2>/dev/null; then
    for t in $(ctr tasks ls -q 2>/dev/null); do
      ctr tasks kill --signal SIGKILL "$t" >/dev/null 2>&1 || true
      sleep 0.2
      ctr tasks delete --force "$t" >/dev/null 2>&1 || true
    done
    for t in $(ctr containers ls -q 2>/dev/null); do ctr containers delete "$t" >/dev/null 2>&1 || true; done
    kill -TERM "$ctrd_pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$ctrd_pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$ctrd_pid" 2>/dev/null || true
  fi
  # Shims outlive containerd by design: stop those that serve ours.
  for p in $(pgrep -f "containerd-shim-runc-v2 .*-address $sock" || true); do
    kill -KILL "$p" 2>/dev/null || true
  done
  for m in $(awk -v d="$tmp" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  rm -rf "$tmp"
  for m in /sys/fs/cgroup/*/"$cgroup_parent"; do
    [ ! -d "$m" ] || rmdir "$m"/* "$m" 2>/dev/null || true
  done
}
trap cleanup EXIT

cat > "$tmp/config.toml" <<TOML
version = 2
root = "$tmp/root"
state = "$tmp/state"
disabled_plugins = ["io.containerd.internal.v1.opt"]
[grpc]
  address = "$sock"
[plugins."io.containerd.grpc.v1.cri"]
  # root here lacks CAP_SYS_RESOURCE: a sandbox's oom_score_adj may not go below containerd's own
  restrict_oom_score_adj = true
  sandbox_image = "ephemera.local/pause:1"
TOML
setpriv --pdeathsig KILL containerd --config "$tmp/config.toml" > "$tmp/containerd.log" 2>&1 &
ctrd_pid=$!
for i in $(seq 1 60); do
  [ -S "$sock" ] && ctr version >/dev/null 2>&1 && break
  kill -0 "$ctrd_pid" 2>/dev/null || { tail -20 "$tmp/containerd.log"; fail "containerd exited at start"; }
  [ "$i" -lt 60 ] || fail "containerd did not answer within 30 s"
  sleep 0.5
done
log "containerd up (pid $ctrd_pid, $sock)"

"$ROOT/scripts/images" load --containerd-address "$sock" --namespace k8s.io

# Every image of the index is in the node's image store: under its own name when that has a
# domain (ephemera.local/...), else under containerd's full form of the name (DOMAIN/library/NAME),
# which is also what a pod's `image: ephemera:dev` resolves to.
index=$("$ROOT/scripts/images" index)
names=$(ctr images ls -q)
while IFS=$'\t' read -r tag _ _; do
  case $tag in
    */*) grep -qxF "$tag" <<< "$names" ;;
    *) grep -qE "^[a-z0-9.-]+\.[a-z]+/library/${tag//./\\.}\$" <<< "$names" ;;
  esac || fail "$tag is not in containerd after load (it has: $names)"
done < "$index"
APP=$(grep -E '^[a-z0-9.-]+\.[a-z]+/library/ephemera:dev$' <<< "$names") || fail "ephemera:dev is not in containerd after load"

# --- ephemera:dev ------------------------------------------------------------------------------
# `ctr run IMAGE ID CMD...` replaces the entrypoint with CMD, as a pod's `command:` does; the user
# and the environment are the image's.
run() {  # id command...
  local id=$1; shift
  ctr run --rm --cgroup "/$cgroup_parent/$id" "$APP" "$id" "$@" 2>&1 < /dev/null
}
manifest=$(ctr images ls | awk -v r="$APP" '$1 == r { print $3 }')
config=$(ctr content get "$(ctr content get "$manifest" | jq -r .config.digest)")
user=$(jq -r .config.User <<< "$config")
[ "$user" = 65532:65532 ] || fail "the image's user is '$user', not 65532:65532"
entrypoint=$(jq -c .config.Entrypoint <<< "$config")
[ "$entrypoint" = '["/usr/local/bin/ephemera-controller-manager"]' ] || fail "the image's entrypoint is $entrypoint"
out=$(run ids id -u) || fail "id -u in the image failed: $out"
[ "$out" = 65532 ] || fail "a container of the image runs as uid '$out', not 65532"
log "ok: the image's user is $user and its containers run as uid $out; entrypoint $entrypoint"

out=$(run cm-help /usr/local/bin/ephemera-controller-manager --help) || fail "ephemera-controller-manager --help failed: $out"
grep -q -- '--kubeconfig' <<< "$out" || fail "ephemera-controller-manager --help says no --kubeconfig: $out"
log "ok: ephemera-controller-manager --help"
out=$(run csi-help /usr/local/bin/ephemera-pmem-csi --help) || fail "ephemera-pmem-csi --help failed: $out"
grep -q -- '--backend' <<< "$out" || fail "ephemera-pmem-csi --help says no --backend: $out"
log "ok: ephemera-pmem-csi --help"

# Each tool the driver runs is on PATH and starts (its shared libraries are in the image).
for t in "mkfs.ext4 -V" "mkfs.xfs -V" "lvcreate --version" "ndctl --version" "losetup --version" "mount --version"; do
  tool=${t%% *}
  path=$(run "which-$tool" /bin/sh -c "command -v $tool") || fail "$tool is not in the image: $path"
  out=$(run "run-$tool" $t) || fail "'$t' in the image failed: $out"
  log "ok: $path ($(grep -m1 -E '[0-9]+\.[0-9]+' <<< "$out" | sed 's/^ *//'))"
done

# --- the sidecars ------------------------------------------------------------------------------
while IFS=$'\t' read -r tag _ _; do
  case $tag in ephemera.local/csi-*|ephemera.local/livenessprobe:*) ;; *) continue ;; esac
  version=${tag##*:} name=${tag#ephemera.local/}
  name=${name%%:*}
  out=$(ctr run --rm --cgroup "/$cgroup_parent/sidecar" "$tag" sidecar "/$name" --version 2>&1 < /dev/null) || fail "$tag: $name --version failed: $out"
  grep -qF -- "$version" <<< "$out" || fail "$tag --version says '$out', not $version"
  log "ok: $tag --version: $out"
done < "$index"

# --- the pause image ---------------------------------------------------------------------------
ctr run --rm --cgroup "/$cgroup_parent/pause" ephemera.local/pause:1 pause > "$tmp/pause.out" 2>&1 < /dev/null &
pause_ctr=$!
for i in $(seq 1 40); do
  [ "$(ctr tasks ls | awk '$1 == "pause" { print $3 }')" = RUNNING ] && break
  kill -0 "$pause_ctr" 2>/dev/null || fail "the pause container ended at once: $(cat "$tmp/pause.out")"
  [ "$i" -lt 40 ] || fail "the pause container is not running after 10 s"
  sleep 0.25
done
sleep 1
[ "$(ctr tasks ls | awk '$1 == "pause" { print $3 }')" = RUNNING ] || fail "the pause container did not stay running"
ctr tasks kill --signal SIGTERM pause
for i in $(seq 1 40); do
  kill -0 "$pause_ctr" 2>/dev/null || break
  [ "$i" -lt 40 ] || fail "the pause container still runs 10 s after SIGTERM"
  sleep 0.25
done
rc=0; wait "$pause_ctr" || rc=$?
[ "$rc" = 0 ] || fail "the pause container exited $rc on SIGTERM, not 0: $(cat "$tmp/pause.out")"
log "ok: pause ran and exited 0 on SIGTERM"

# As PID 1 of a PID namespace it reaps the orphans re-parented to it: the same binary as in the
# image, under unshare; a process started in its namespace by a shell that exits becomes its child,
# and once that exits it must not stay a zombie.
pause_bin=$(ls "$EPHEMERA_CACHE"/images/pause-*/pause | head -1)
unshare --pid --fork "$pause_bin" 2> "$tmp/pause-ns.err" &
unshare_pid=$!
for i in $(seq 1 40); do
  pause_pid=$(pgrep -P "$unshare_pid" || true)
  [ -z "$pause_pid" ] || break
  [ "$i" -lt 40 ] || fail "pause did not start under unshare: $(cat "$tmp/pause-ns.err")"
  sleep 0.25
done
# nsenter returns once the shell has exited: its `sleep` is an orphan from then on.
nsenter --target "$pause_pid" --pid -- /bin/sh -c 'sleep 3 & exit 0'
[ "$(ps -o comm= --ppid "$pause_pid")" = sleep ] || fail "the orphan did not become pause's child: $(ps -o pid=,stat=,comm= --ppid "$pause_pid")"
for i in $(seq 1 60); do
  left=$(ps -o pid=,stat=,comm= --ppid "$pause_pid" || true)
  [ -n "$left" ] || break
  [ "$i" -lt 60 ] || fail "pause did not reap its child (12 s after it was started for 3 s): $left"
  sleep 0.2
done
kill -TERM "$pause_pid"
rc=0; wait "$unshare_pid" || rc=$?
[ "$rc" = 0 ] || fail "pause as PID 1 of its namespace exited $rc on SIGTERM: $(cat "$tmp/pause-ns.err")"
log "ok: pause as PID 1 reaped an orphan and exited 0 on SIGTERM"

log "all checks passed"
