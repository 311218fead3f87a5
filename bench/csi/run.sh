#!/usr/bin/env bash
# Benchmark: ephemera-pmem-csi (CreateVolume + NodeStage + NodePublish, and the reverse) against a
# shell script doing the same by hand (truncate, losetup, mkfs.ext4, mount, bind mount, and the
# reverse). Needs root. Usage: bench/csi/run.sh [ITERATIONS] [SIZE_MIB] [CALLERS]; run from a built
# tree (build/bin/ephemera-pmem-csi and build/bin/csi_bench). CALLERS callers work at once, on
# both sides.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
N=${1:-20}
SIZE_MIB=${2:-64}
CALLERS=${3:-1}
DRIVER=$ROOT/build/bin/ephemera-pmem-csi
source "$ROOT/tests/csi/lib.sh"
driver_setup
POOL=$((SIZE_MIB * 2 * CALLERS))Mi driver_start
mkdir -p "$WORK/mnt"
for erase in false true; do
  "$ROOT/build/bin/csi_bench" "unix://$SOCK" "$WORK/mnt" "$N" $((SIZE_MIB * 1024 * 1024)) "$erase" "$CALLERS"
done
driver_stop TERM

# The same steps by hand.
now_ms() { date +%s%3N; }
mkdir -p "$WORK/shell"
# One caller: iterations C, C+CALLERS, ... each writing "up down" lines to its own file.
shell_caller() {
  local c=$1 i f s t dev t0 t1 t2
  for ((i = c; i < N; i += CALLERS)); do
    f=$WORK/shell/vol-$i.img s=$WORK/shell/staging-$i t=$WORK/shell/target-$i
    t0=$(now_ms)
    truncate -s "${SIZE_MIB}M" "$f"
    dev=$(losetup --find --show "$f")
    mkfs.ext4 -q -F -b 4096 "$dev"
    mkdir -p "$s" "$t"
    mount "$dev" "$s"
    mount --bind "$s" "$t"
    t1=$(now_ms)
    umount "$t"
    umount "$s"
    losetup -d "$dev"
    rm -f "$f"
    rmdir "$t"
    t2=$(now_ms)
    echo "$((t1 - t0)) $((t2 - t1))" >> "$WORK/shell/times-$c"
  done
}
pids=()
for ((c = 0; c < CALLERS; c++)); do shell_caller "$c" & pids+=($!); done
for p in "${pids[@]}"; do wait "$p"; done
mapfile -t up < <(cat "$WORK"/shell/times-* | awk '{print $1}')
mapfile -t down < <(cat "$WORK"/shell/times-* | awk '{print $2}')
report() {  # name values...
  local name=$1; shift
  printf '%s\n' "$@" | sort -n | awk -v n="$name" '{ a[NR] = $1; s += $1 }
    END { p = int(NR * 99 / 100) + 1; if (p > NR) p = NR
          printf "%-28s n=%d median=%.1f ms p99=%.1f ms mean=%.1f ms\n", n, NR, a[int(NR / 2) + 1], a[p], s / NR }'
}
report "shell up ($CALLERS callers)" "${up[@]}"
report "shell down ($CALLERS callers)" "${down[@]}"
