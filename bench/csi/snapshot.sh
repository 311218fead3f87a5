#!/usr/bin/env bash
# Benchmark: the file backend's snapshot and restore (CreateSnapshot; CreateVolume from the
# snapshot) against `cp --sparse=always` (+ sync, + losetup for the restore), through
# build/bin/csi_snapshot_bench (see its header). Needs root. Usage:
#   bench/csi/snapshot.sh [ITERATIONS] [SIZE_MIB] [DATA_MIB] [ext4-dir|xfs]
# ext4-dir (default): the pool directory is on the work directory's filesystem (/tmp);
# xfs: on an xfs with reflink made in a sparse file below the work directory, where both the
# driver (FICLONE) and cp (coreutils 9: --reflink=auto) share extents instead of copying.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
N=${1:-10}
SIZE_MIB=${2:-1024}
DATA_MIB=${3:-512}
FS=${4:-ext4-dir}
DRIVER=$ROOT/build/bin/ephemera-pmem-csi
source "$ROOT/tests/csi/lib.sh"
driver_setup
if [ "$FS" = xfs ]; then
  truncate -s $((SIZE_MIB * 6))M "$WORK/pool-fs.img"
  mkfs.xfs -q -m reflink=1 "$WORK/pool-fs.img"
  mkdir -p "$FILE_DIR"
  mount -o loop "$WORK/pool-fs.img" "$FILE_DIR"
fi
POOL=$((SIZE_MIB * 4))Mi driver_start
echo "pool directory: $(stat -f -c %T "$FILE_DIR"), $N iterations, ${SIZE_MIB} MiB volume," \
  "${DATA_MIB} MiB of data"
"$ROOT/build/bin/csi_snapshot_bench" "unix://$SOCK" "$FILE_DIR" "$N" \
  $((SIZE_MIB * 1024 * 1024)) $((DATA_MIB * 1024 * 1024))
grep -o '"snapshot taken".*method="[^"]*"' "$LOG" | sed 's/.*method=/copy method: /' | sort | uniq -c
driver_stop TERM
