# Benchmark in the guest (not a test): the lvm backend's snapshot and restore of a 1 GiB volume
# holding 512 MiB of data, against the raw commands that do the same work: `lvcreate -Zn -Wn` of
# a linear LV of the volume's size + coreutils `dd bs=4M iflag=direct oflag=direct conv=fsync`
# (the driver's copy: the whole device, O_DIRECT, synced). A driver snapshot is also an lvrename
# (the commit point) and two fsynced records; a restore a CreateVolume with a content source. Each
# iteration runs the driver's side, then the raw side, and removes both. For reference only, LVM's
# own (thick, copy-on-write) snapshot `lvcreate -s` of the same volume is tried once: what a
# snapshot that ties up its origin would cost, and whether LVM takes one of a DAX volume at all.
# Run: tests/vm/run --backend bench-lvm-snapshot --timeout 1800 [--kill-cycles N: iterations]
. /host/lib.sh
export LVM_SUPPRESS_FD_WARNINGS=1
N=${KILL_CYCLES:-5}
SIZE=1073741824
DATA_MIB=512

start_driver --backend=lvm --pmem-percentage=100 || { fail "driver did not start"; tail /tmp/driver.log; finish; exit 1; }
out=$($CLIENT $SOCK create bench-src $SIZE eraseafter=false) || { fail "create: $out"; finish; exit 1; }
src=${out%% *}
set -- $(lvs --noheadings --units b --nosuffix -o vg_name,lv_size,lv_path -S "lv_name=$src")
VG=$1 LVSIZE=$2 SRCDEV=$3
$CLIENT $SOCK stage "$src" /tmp/s1 ext4 || { fail "stage"; finish; exit 1; }
t=$(uptime_s)
/sbin/dd if=/dev/urandom of=/tmp/s1/data bs=1M count=$DATA_MIB status=none || fail "write data"
sync
echo "volume $src: $LVSIZE bytes in $VG, $DATA_MIB MiB of data written in $(( $(uptime_s) - t )) s"
df -k /tmp/s1
: > /tmp/times
log_lines=$(wc -l < /tmp/driver.log)
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
  lvcreate -q -y -Zn -Wn -n raw-snap -L "${LVSIZE}B" "$VG" > /dev/null 2>&1 || { fail "lvcreate raw-snap"; break; }
  /sbin/dd if="$SRCDEV" of="/dev/$VG/raw-snap" bs=4M iflag=direct oflag=direct conv=fsync status=none || { fail "dd snapshot"; break; }
  t4=$(now_ns)
  lvcreate -q -y -Zn -Wn -n raw-restore -L "${LVSIZE}B" "$VG" > /dev/null 2>&1 || { fail "lvcreate raw-restore"; break; }
  /sbin/dd if="/dev/$VG/raw-snap" of="/dev/$VG/raw-restore" bs=4M iflag=direct oflag=direct conv=fsync status=none || { fail "dd restore"; break; }
  t5=$(now_ns)
  lvremove -q -y "$VG/raw-restore" "$VG/raw-snap" > /dev/null 2>&1 || fail "lvremove raw"
  echo "$(( (t1 - t0) / 1000 )) $(( (t2 - t1) / 1000 )) $(( (t4 - t3) / 1000 )) $(( (t5 - t4) / 1000 ))" >> /tmp/times
  echo "iteration $i: driver snapshot $(( (t1 - t0) / 1000000 )) ms, restore $(( (t2 - t1) / 1000000 )) ms; raw snapshot $(( (t4 - t3) / 1000000 )) ms, restore $(( (t5 - t4) / 1000000 )) ms"
  i=$((i + 1))
done
snapshot_bench_report "lvcreate + dd" "$log_lines"
# LVM's own snapshot, for reference.
t0=$(now_ns)
out=$(lvcreate -y -s -L "${LVSIZE}B" -n cow-snap "$VG/$src" 2>&1)
rc=$?
t1=$(now_ns)
echo "lvcreate -s of the mounted DAX volume: exit $rc in $(( (t1 - t0) / 1000000 )) ms: $out"
[ $rc = 0 ] && lvs -o lv_name,lv_attr,origin "$VG"
dmesg | grep -i -E 'device-mapper|dm-|dax' | tail -5
# A failed lvcreate -s may leave its LV behind.
lvs --noheadings -o lv_name "$VG" 2>/dev/null | grep -q cow-snap && lvremove -q -y "$VG/cow-snap" > /dev/null 2>&1
$CLIENT $SOCK unstage "$src" /tmp/s1 || fail "unstage"
$CLIENT $SOCK delete "$src" || fail "delete the volume"
stop_driver
left=$(lvs --noheadings -o lv_name 2>/dev/null)
[ -z "$left" ] || fail "logical volumes left: $left"
driver_log_on_failure
finish
