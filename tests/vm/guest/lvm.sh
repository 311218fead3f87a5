# The lvm backend in the guest: the driver on a real PMEM region, csi-sanity in full, then checks
# of size, DAX, exhaustion and leaks with ephemera-csi-client.
. /host/lib.sh
SOCK=/tmp/csi.sock
CLIENT=ephemera-csi-client
export LVM_SUPPRESS_FD_WARNINGS=1
mkdir -p /tmp/state /tmp/mnt /tmp/staging /tmp/s1
lvs_now() { lvs --noheadings -o vg_name,lv_name 2>/dev/null | sort; }

ephemera-pmem-csi --endpoint=unix://$SOCK --node-id=vm --backend=lvm --pmem-percentage=50 \
  --state-dir=/tmp/state --default-volume-size=32Mi > /tmp/driver.log 2>&1 &
DRIVER=$!
i=0
while [ ! -S $SOCK ] && [ $i -lt 100 ]; do sleep 0.2; i=$((i + 1)); done
if [ ! -S $SOCK ]; then
  fail "driver did not start"; cat /tmp/driver.log; finish; exit 1
fi
pass "driver started (lvm, 50% of region0)"
vgs; pvs
before=$(lvs_now)

# DAX: watch /proc/mounts while csi-sanity mounts its volumes.
( while :; do grep ' /tmp/' /proc/mounts; sleep 0.3; done ) > /tmp/mounts.seen 2>/dev/null &
WATCH=$!
t=$(cut -d. -f1 /proc/uptime)
/host/csi-sanity -csi.endpoint=unix://$SOCK -csi.mountdir=/tmp/mnt/target \
  -csi.stagingdir=/tmp/staging/target -csi.testvolumesize=$((32 * 1024 * 1024)) \
  -csi.testvolumeexpandsize=$((64 * 1024 * 1024)) -ginkgo.no-color > /tmp/sanity.log 2>&1
rc=$?
kill $WATCH
grep -E "^(Ran |PASS|FAIL|SUCCESS|FAIL!)" /tmp/sanity.log | tail -3
echo "csi-sanity took $(( $(cut -d. -f1 /proc/uptime) - t )) s"
if [ $rc = 0 ]; then pass "csi-sanity"; else fail "csi-sanity (exit $rc)"; grep -B2 -A20 "\[FAIL\]" /tmp/sanity.log | head -120; fi
if grep -q dax /tmp/mounts.seen; then pass "csi-sanity's mounts had dax"; else fail "no dax mount seen"; sort -u /tmp/mounts.seen | head; fi

# 1 GiB asked -> at least 1 GiB usable, mounted with DAX.
out=$($CLIENT $SOCK create big 1073741824)
if [ $? = 0 ]; then
  id=${out%% *}; cap=${out##* }
  [ "$cap" -ge 1073741824 ] && pass "1 GiB asked: capacity $cap" || fail "capacity $cap < 1 GiB"
  if $CLIENT $SOCK stage "$id" /tmp/s1 ext4; then
    dev=$(awk '$2 == "/tmp/s1" {print $1}' /proc/mounts)
    size=$(blockdev --getsize64 "$dev")
    [ "$size" -ge 1073741824 ] && pass "device $dev has $size bytes" || fail "device $dev: $size bytes"
    grep ' /tmp/s1 ' /proc/mounts | grep -q dax && pass "mounted with dax" || { fail "not dax"; grep ' /tmp/s1 ' /proc/mounts; }
    df -k /tmp/s1
    out2=$($CLIENT $SOCK delete "$id")
    case $out2 in FAILED_PRECONDITION*) pass "delete while staged: FAILED_PRECONDITION" ;; *) fail "delete while staged: $out2" ;; esac
    $CLIENT $SOCK unstage "$id" /tmp/s1 && pass "unstaged" || fail "unstage"
  else
    fail "stage $id"
  fi
  $CLIENT $SOCK delete "$id" && pass "deleted" || fail "delete $id"
else
  fail "create 1 GiB: $out"
fi

# Full: a volume of the largest free size, then one more -> RESOURCE_EXHAUSTED.
cap=$($CLIENT $SOCK capacity)
echo "capacity (available, maximum volume size): $cap"
t=$(cut -d. -f1 /proc/uptime)
max=${cap##* }
out=$($CLIENT $SOCK create fill "$max" eraseafter=false)  # zeroing 2 GiB under TCG: minutes
if [ $? = 0 ]; then
  fid=${out%% *}
  out=$($CLIENT $SOCK create more 33554432)
  case $out in RESOURCE_EXHAUSTED*) pass "full: RESOURCE_EXHAUSTED" ;; *) fail "full: $out" ;; esac
  $CLIENT $SOCK delete "$fid" || fail "delete fill"
else
  fail "create $max: $out"
fi
out=$($CLIENT $SOCK create huge $((64 * 1024 * 1024 * 1024)))
case $out in RESOURCE_EXHAUSTED*) pass "64 GiB: RESOURCE_EXHAUSTED" ;; *) fail "64 GiB: $out" ;; esac

echo "fill and exhaustion checks took $(( $(cut -d. -f1 /proc/uptime) - t )) s"
after=$(lvs_now)
if [ "$before" = "$after" ]; then pass "no logical volume leaked"; else fail "LVs before: [$before] after: [$after]"; fi
kill $DRIVER; wait $DRIVER
if [ $FAILED != 0 ]; then echo "---- driver log (last 40 lines) ----"; tail -40 /tmp/driver.log; fi
finish
