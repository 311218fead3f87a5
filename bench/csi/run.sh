#!/usr/bin/env bash
# Benchmark: ephemera-pmem-csi (CreateVolume + NodeStage + NodePublish, and the reverse) against a
# shell script doing the same by hand (truncate, losetup, mkfs.ext4, mount, bind mount, and the
# reverse). Needs root. Usage: bench/csi/run.sh [ITERATIONS] [SIZE_MIB]; run from a built tree
# (build/bin/ephemera-pmem-csi and build/bin/csi_bench).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
N=${1:-20}
SIZE_MIB=${2:-64}
DRIVER=$ROOT/build/bin/ephemera-pmem-csi
source "$ROOT/tests/csi/lib.sh"
driver_setup
POOL=$((SIZE_MIB * 2))Mi driver_start
mkdir -p "$WORK/mnt"
for erase in false true; do
  "$ROOT/build/bin/csi_bench" "unix://$SOCK" "$WORK/mnt" "$N" $((SIZE_MIB * 1024 * 1024)) "$erase"
done
driver_stop TERM

# The same steps by hand.
now_ms() { date +%s%3N; }
up=() down=()
mkdir -p "$WORK/shell"
for i in $(seq "$N"); do
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
  up+=($((t1 - t0))) down+=($((t2 - t1)))
done
report() {  # name values...
  local name=$1; shift
  printf '%s\n' "$@" | sort -n | awk -v n="$name" '{ a[NR] = $1; s += $1 }
    END { printf "%-28s n=%d median=%.1f ms mean=%.1f ms\n", n, NR, a[int(NR / 2) + 1], s / NR }'
}
report "shell up" "${up[@]}"
report "shell down" "${down[@]}"
