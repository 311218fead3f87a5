# Benchmark in the guest (not a test): the direct backend's snapshot and restore of a 1 GiB volume
# holding 512 MiB of data, against the raw commands that do the same work: `ndctl
# create-namespace` of a fsdax namespace of the volume's raw size + coreutils `dd bs=4M
# iflag=direct oflag=direct conv=fsync` of the whole device (the driver's copy: O_DIRECT, synced).
# On top of that, a driver snapshot is a rename of the copy's namespace (the commit point: disable,
# label name, enable) and two fsynced records; a restore is a CreateVolume with a content source
# (its copy, then the rest of the new namespace zeroed). Each iteration runs the driver's side,
# then the raw side, and removes both. The same shape as bench-lvm-snapshot.sh.
# Run: tests/vm/run --backend bench-direct-snapshot --timeout 1800 [--kill-cycles N: iterations]
. /host/lib.sh
N=${KILL_CYCLES:-5}
SIZE=1073741824
RAW=$((1056 * 1024 * 1024))  # the namespace the driver makes for 1 GiB (RawSizeFor, 16 MiB units)
DATA_MIB=512

start_driver --backend=direct || { fail "driver did not start"; tail /tmp/driver.log; finish; exit 1; }
out=$($CLIENT $SOCK create bench-src $SIZE eraseafter=false) || { fail "create: $out"; finish; exit 1; }
src=${out%% *}
$CLIENT $SOCK stage "$src" /tmp/s1 ext4 || { fail "stage"; finish; exit 1; }
SRCDEV=$(awk '$2 == "/tmp/s1" { print $1 }' /proc/mounts)
[ -b "$SRCDEV" ] || { fail "no block device mounted at /tmp/s1 ($SRCDEV)"; finish; exit 1; }
t=$(uptime_s)
/sbin/dd if=/dev/urandom of=/tmp/s1/data bs=1M count=$DATA_MIB status=none || fail "write data"
sync
echo "volume $src on $SRCDEV ($(blockdev --getsize64 "$SRCDEV") bytes), $DATA_MIB MiB of data written in $(( $(uptime_s) - t )) s"
df -k /tmp/s1
: > /tmp/times
log_lines=$(wc -l < /tmp/driver.log)
# raw_namespace NAME: a fsdax namespace of the driver's raw size; prints its block device.
raw_namespace() {
  out=$(ndctl create-namespace -r region0 -m fsdax -a 2M -s $RAW -n "$1" 2>&1) || { echo "ndctl create-namespace $1: $out" >&2; return 1; }
  echo "/dev/$(echo "$out" | sed -n 's/.*"blockdev":"\([^"]*\)".*/\1/p' | head -1)"
}
raw_destroy() {  # NAME...: the namespaces of these names
  for n in "$@"; do
    ns=$(ndctl list -N | tr -d ' \n' | sed 's/},{/}\n{/g' | grep "\"name\":\"$n\"" | sed -n 's/.*"dev":"\([^"]*\)".*/\1/p')
    [ -n "$ns" ] && { ndctl destroy-namespace -f "$ns" > /dev/null 2>&1 || fail "ndctl destroy-namespace $ns ($n)"; }
  done
}
i=0
while [ $i -lt "$N" ]; do
  t0=$(now_ns)
  out=$($CLIENT $SOCK snapshot "bench-$i" "$src") || { fail "snapshot: $out"; break; }
  t1=$(now_ns)
  snap=${out%% *}
  out=$($CLIENT $SOCK create-from "bench-r$i" 0 snapshot "$snap" eraseafter=false) || { fail "restore: $out"; break; }
  t2=$(now_ns)
  rid=${out%% *}
  $CLIENT $SOCK delete "$rid" || fail "delete the restore"
  # The snapshot of an eraseafter=false volume is not erased either.
  $CLIENT $SOCK delete-snapshot "$snap" || fail "delete the snapshot"
  t3=$(now_ns)
  snapdev=$(raw_namespace raw-snap) || { fail "raw snapshot namespace"; break; }
  /sbin/dd if="$SRCDEV" of="$snapdev" bs=4M iflag=direct oflag=direct conv=fsync status=none || { fail "dd snapshot"; break; }
  t4=$(now_ns)
  restdev=$(raw_namespace raw-restore) || { fail "raw restore namespace"; break; }
  /sbin/dd if="$snapdev" of="$restdev" bs=4M iflag=direct oflag=direct conv=fsync status=none || { fail "dd restore"; break; }
  t5=$(now_ns)
  raw_destroy raw-restore raw-snap
  echo "$(( (t1 - t0) / 1000 )) $(( (t2 - t1) / 1000 )) $(( (t4 - t3) / 1000 )) $(( (t5 - t4) / 1000 ))" >> /tmp/times
  echo "iteration $i: driver snapshot $(( (t1 - t0) / 1000000 )) ms, restore $(( (t2 - t1) / 1000000 )) ms; raw snapshot $(( (t4 - t3) / 1000000 )) ms, restore $(( (t5 - t4) / 1000000 )) ms"
  i=$((i + 1))
done
raw_destroy raw-restore raw-snap
snapshot_bench_report "ndctl + dd" "$log_lines"
$CLIENT $SOCK unstage "$src" /tmp/s1 || fail "unstage"
$CLIENT $SOCK delete "$src" || fail "delete the volume"
stop_driver
left=$(ndctl list -N 2>/dev/null)
[ -z "$left" ] || fail "namespaces left: $left"
driver_log_on_failure
finish
