# Shared by the driver's integration scripts: start ephemera-pmem-csi on a temporary socket with a
# temporary file pool, and clean up every mount, loop device and file afterwards, pass or fail.
# Source it, set DRIVER (the binary), call driver_setup, then driver_start [extra flags].
set -euo pipefail

# 77: ctest's SKIP_RETURN_CODE for these scripts: without root there are no loop devices and
# mounts, so the test did not run (and did not pass).
if [ "$(id -u)" != 0 ]; then echo "SKIP: needs root (loop devices and mounts)" >&2; exit 77; fi

# The args of one container of the shipped DaemonSet (manifests/driver.yaml), one per line, so that
# a test runs a sidecar as the manifests do.
manifest_args() {  # CONTAINER
  awk -v c="$1" '
    $0 ~ "- name: " c "$" { inside = 1; next }
    inside && /^ *args:/ { args = 1; next }
    inside && args && /^ *#/ { next }
    inside && args && /^ *- --/ { sub(/^ *- /, ""); print; next }
    inside && args { exit }' "$(dirname "${BASH_SOURCE[0]}")/../../manifests/driver.yaml"
}

driver_setup() {
  WORK=$(mktemp -d /tmp/ephemera-csi-test.XXXXXX)
  SOCK=$WORK/csi.sock
  FILE_DIR=$WORK/files
  STATE_DIR=$WORK/state
  LOG=$WORK/driver.log
  DRIVER_PID=
  trap driver_cleanup EXIT
}

driver_start() {  # extra flags...
  "$DRIVER" --endpoint="unix://$SOCK" --node-id="${NODE_ID:-test-node}" --backend=file \
    --file-dir="$FILE_DIR" --state-dir="$STATE_DIR" --file-capacity="${POOL:-2Gi}" \
    --default-volume-size="${DEFAULT_SIZE:-16Mi}" "$@" >>"$LOG" 2>&1 &
  DRIVER_PID=$!
  local i
  for i in $(seq 100); do
    [ -S "$SOCK" ] && return 0
    kill -0 "$DRIVER_PID" 2>/dev/null || { cat "$LOG" >&2; echo "driver exited" >&2; return 1; }
    sleep 0.1
  done
  echo "driver did not create $SOCK" >&2
  return 1
}

driver_stop() {  # [signal]
  if [ -n "${DRIVER_PID:-}" ] && kill -0 "$DRIVER_PID" 2>/dev/null; then
    kill "-${1:-TERM}" "$DRIVER_PID" 2>/dev/null || true
    wait "$DRIVER_PID" 2>/dev/null || true
  fi
  DRIVER_PID=
}

# The record files in the state directory: volumes' and (file backend) snapshots' in snapshots/.
state_records() {
  [ -d "$STATE_DIR" ] || return 0
  (cd "$STATE_DIR" && find . -type f | sed 's|^\./||' | sort)
}

# Everything below $WORK that is mounted, deepest first.
work_mounts() {
  awk -v w="$WORK" '$5 == w || index($5, w "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

# Loop devices backed by files below $WORK.
work_loops() {
  local f
  for f in /sys/block/loop*/loop/backing_file; do
    [ -e "$f" ] || continue
    case "$(cat "$f")" in "$WORK"/*) echo "/dev/$(basename "$(dirname "$(dirname "$f")")")" ;; esac
  done
}

driver_cleanup() {
  local rc=$?
  driver_stop KILL
  local m l
  for m in $(work_mounts); do umount -l "$m" 2>/dev/null || true; done
  for l in $(work_loops); do losetup -d "$l" 2>/dev/null || true; done
  if [ "$rc" != 0 ] && [ -f "$LOG" ]; then
    echo "---- driver log (last 40 lines) ----" >&2
    tail -40 "$LOG" >&2
  fi
  rm -rf "$WORK"
  exit "$rc"
}
