# Benchmark in the guest (not a test): CreateVolume and DeleteVolume of the lvm backend, timed by
# bench/csi's csi_bench over gRPC, against `lvcreate` / `lvremove` doing what the driver does for a
# volume: the same flags (-Zy -Wy), the same size in bytes, the same volume group, no udev
# (DM_DISABLE_UDEV=1 in the guest, for both). Volumes of 1 GiB, not erased (eraseafter=false: the
# raw commands do not erase either). Run: tests/vm/run --backend bench-lvm
. /host/lib.sh
export LVM_SUPPRESS_FD_WARNINGS=1
N=30
SIZE=1073741824

start_driver --backend=lvm --pmem-percentage=50 || { fail "driver did not start"; tail /tmp/driver.log; finish; exit 1; }
# The volume group and the LV size the driver uses for SIZE, read from a probe volume (it is also
# the driver's warm-up, as the raw side runs after the driver's with the programs in the cache).
out=$($CLIENT $SOCK create probe $SIZE eraseafter=false) || { fail "probe: $out"; finish; exit 1; }
set -- $(lvs --noheadings --units b --nosuffix -o vg_name,lv_size)
VG=$1 RAW=$2
$CLIENT $SOCK delete "${out%% *}" || fail "delete probe"
echo "driver: volume group $VG, $RAW bytes for $SIZE asked"
mkdir -p /tmp/bench
csi_bench unix://$SOCK /tmp/bench $N $SIZE false 1 controller || fail "csi_bench"
stop_driver

raw_create() {
  out=$(lvcreate -y -Zy -Wy -n raw-$1 -L "${RAW}B" "$VG" 2>&1) || { fail "lvcreate: $out"; return 1; }
}
raw_delete() {
  out=$(lvremove -y "$VG/raw-$1" 2>&1) || { fail "lvremove: $out"; return 1; }
}
bench_raw $N
bench_report "lvcreate" 1
bench_report "lvremove" 2
# The cost of one LVM report, for reading the figures: the driver runs these only where it must
# (several groups, an inactive or missing volume), not on the paths timed above. As it runs them:
raw_create() {
  out=$(lvs --reportformat json --units b --nosuffix -o lv_name,vg_name,lv_size,lv_path,lv_attr "$VG" 2>&1) || { fail "lvs: $out"; return 1; }
}
raw_delete() {
  out=$(vgs --reportformat json --units b --nosuffix -o vg_name,vg_size,vg_free,vg_extent_size "$VG" 2>&1) || { fail "vgs: $out"; return 1; }
}
bench_raw $N
bench_report "lvs (report)" 1
bench_report "vgs (report)" 2
left=$(lvs --noheadings -o lv_name 2>/dev/null)
[ -z "$left" ] || fail "logical volumes left: $left"
finish
