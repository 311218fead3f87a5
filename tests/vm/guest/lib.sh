# Helpers of the guest test scripts (busybox sh). The driver suites (lvm.sh, direct.sh) define
# `resources` (the backend's volumes as the system lists them, one per line, sorted) and call the
# checks below; every check reports PASS/FAIL lines and never stops the script.
FAILED=0
PASSED=0
pass() { PASSED=$((PASSED + 1)); echo "PASS: $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL: $*"; }
finish() {
  echo "guest tests: $PASSED passed, $FAILED failed"
  [ "$FAILED" = 0 ]
}

SOCK=/tmp/csi.sock
CLIENT=ephemera-csi-client
DRIVER=
DRIVER_ARGS=
mkdir -p /tmp/state /tmp/mnt /tmp/staging /tmp/s1 /tmp/e1
uptime_s() { cut -d. -f1 /proc/uptime; }

# start_driver ARGS...: the driver on $SOCK with the state in /tmp/state, its log appended to
# /tmp/driver.log; remembers ARGS for restart_driver. Returns 1 when the socket does not appear.
# The suites set LVM_SUPPRESS_FD_WARNINGS for their own lvm commands; the driver runs without it,
# as in its container, so that a descriptor it leaks into LVM shows.
start_driver() {
  [ $# -gt 0 ] && DRIVER_ARGS="$*"
  rm -f $SOCK
  # shellcheck disable=SC2086 # the arguments are words
  env -u LVM_SUPPRESS_FD_WARNINGS ephemera-pmem-csi --endpoint=unix://$SOCK --node-id=vm --state-dir=/tmp/state $DRIVER_ARGS \
    >> /tmp/driver.log 2>&1 &
  DRIVER=$!
  i=0
  while [ ! -S $SOCK ] && [ $i -lt 150 ]; do
    kill -0 $DRIVER 2>/dev/null || break
    sleep 0.2
    i=$((i + 1))
  done
  [ -S $SOCK ]
}
stop_driver() {  # SIGTERM and wait
  [ -n "$DRIVER" ] && kill $DRIVER 2>/dev/null && wait $DRIVER 2>/dev/null
  DRIVER=
}
kill_driver() {  # SIGKILL: a crash
  [ -n "$DRIVER" ] && kill -9 $DRIVER 2>/dev/null && wait $DRIVER 2>/dev/null
  DRIVER=
}
driver_log_on_failure() {
  if [ $FAILED != 0 ]; then echo "---- driver log (last 60 lines) ----"; tail -60 /tmp/driver.log; fi
}
# The ID the driver derives from a volume name (volume_id.h): "eph-" + 40 hex digits of SHA-256.
volume_id() { printf 'eph-%s' "$(printf '%s' "$1" | sha256sum | cut -c1-40)"; }

# run_sanity SIZE [EXPAND_SIZE]: csi-sanity in full against the driver; then every filesystem it
# had the driver stage must have been mounted with DAX. The driver logs one line per mount with the
# options the kernel reports for it, read right after mount(2) while the mount surely exists
# (node_service.cc, LogMount); sampling /proc/mounts from here instead misses mounts that live
# shorter than the sampling period on a busy host.
run_sanity() {
  log_lines=$(wc -l < /tmp/driver.log)
  t=$(uptime_s)
  expand=
  [ -n "${2:-}" ] && expand="-csi.testvolumeexpandsize=$2"
  # SANITY_VOLUME_PARAMETERS: a YAML file of the parameters of csi-sanity's volumes.
  [ -n "${SANITY_VOLUME_PARAMETERS:-}" ] && expand="$expand -csi.testvolumeparameters=$SANITY_VOLUME_PARAMETERS"
  # shellcheck disable=SC2086
  /host/csi-sanity -csi.endpoint=unix://$SOCK -csi.mountdir=/tmp/mnt/target \
    -csi.stagingdir=/tmp/staging/target -csi.testvolumesize="$1" $expand \
    -ginkgo.no-color > /tmp/sanity.log 2>&1
  rc=$?
  grep -E "^(Ran |PASS|FAIL|SUCCESS|FAIL!)" /tmp/sanity.log | tail -3
  echo "csi-sanity took $(( $(uptime_s) - t )) s; the driver's calls meanwhile, by method:"
  tail -n +$((log_lines + 1)) /tmp/driver.log | grep -o 'method="[^"]*" code="[^"]*" us="[0-9]*"' |
    awk -F'"' '{ n[$2]++; s[$2] += $6 } END { for (m in n) printf "  %-45s %3d calls %6.1f s\n", m, n[m], s[m] / 1e6 }' |
    sort -k4 -rn
  if [ $rc = 0 ]; then pass "csi-sanity"; else fail "csi-sanity (exit $rc)"; grep -B2 -A20 "\[FAIL\]" /tmp/sanity.log | head -120; fi
  tail -n +$((log_lines + 1)) /tmp/driver.log | grep '"mounted" volume="[^"]*" target="/tmp/staging/' > /tmp/sanity.mounts
  mounts=$(wc -l < /tmp/sanity.mounts)
  no_dax=$(grep -vc 'dax="on"$' /tmp/sanity.mounts)
  if [ "$mounts" -gt 0 ] && [ "$no_dax" = 0 ]; then
    pass "csi-sanity's $mounts filesystem mounts all had DAX"
    head -1 /tmp/sanity.mounts
  else
    fail "csi-sanity's filesystem mounts: $mounts, $no_dax of them without DAX"
    grep -v 'dax="on"$' /tmp/sanity.mounts | head
  fi
}

# check_big_volume [KEY=VALUE...]: 1 GiB asked -> capacity and device >= 1 GiB, mounted with DAX;
# DeleteVolume while staged -> FAILED_PRECONDITION; then unstaged and deleted.
check_big_volume() {
  out=$($CLIENT $SOCK create big 1073741824 "$@")
  if [ $? != 0 ]; then fail "create 1 GiB: $out"; return; fi
  id=${out%% *}; cap=${out##* }
  [ "$cap" -ge 1073741824 ] && pass "1 GiB asked: capacity $cap" || fail "capacity $cap < 1 GiB"
  if $CLIENT $SOCK stage "$id" /tmp/s1 ext4; then
    dev=$(awk '$2 == "/tmp/s1" {print $1}' /proc/mounts)
    size=$(blockdev --getsize64 "$dev")
    [ "$size" -ge 1073741824 ] && pass "device $dev has $size bytes" || fail "device $dev: $size bytes"
    grep ' /tmp/s1 ' /proc/mounts | grep -q dax && pass "mounted with dax" || { fail "not dax"; grep ' /tmp/s1 ' /proc/mounts; }
    # the driver's mount line (what run_sanity checks) agrees with /proc/mounts
    grep -q "\"mounted\" volume=\"$id\" target=\"/tmp/s1\" .*dax=\"on\"$" /tmp/driver.log &&
      pass "the driver logged the mount with DAX on" || fail "no driver log line of $id with DAX on"
    df -k /tmp/s1
    out2=$($CLIENT $SOCK delete "$id")
    case $out2 in FAILED_PRECONDITION*) pass "delete while staged: FAILED_PRECONDITION" ;; *) fail "delete while staged: $out2" ;; esac
    $CLIENT $SOCK unstage "$id" /tmp/s1 && pass "unstaged" || fail "unstage"
  else
    fail "stage $id"
  fi
  $CLIENT $SOCK delete "$id" && pass "deleted" || fail "delete $id"
}

# check_exhaustion: a volume of the maximum size, then one more -> RESOURCE_EXHAUSTED; 64 GiB ->
# RESOURCE_EXHAUSTED. The filling volume is not erased (zeroing GiBs under TCG takes minutes).
check_exhaustion() {
  cap=$($CLIENT $SOCK capacity)
  echo "capacity (available, maximum volume size): $cap"
  max=${cap##* }
  out=$($CLIENT $SOCK create fill "$max" eraseafter=false)
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
}

# check_ephemeral: an inline ephemeral volume is made and mounted (with DAX) by NodePublishVolume
# and gone after NodeUnpublishVolume.
check_ephemeral() {
  before_e=$(resources)
  if $CLIENT $SOCK publish-ephemeral csi-inline-1 /tmp/e1 64Mi; then
    pass "inline ephemeral volume published"
    grep ' /tmp/e1 ' /proc/mounts | grep -q dax && pass "inline volume mounted with dax" || { fail "inline volume not dax"; grep ' /tmp/e1 ' /proc/mounts; }
    [ "$(resources)" != "$before_e" ] && pass "inline volume has a device" || fail "no device for the inline volume"
    echo data > /tmp/e1/file || fail "write to the inline volume"
    $CLIENT $SOCK unpublish csi-inline-1 /tmp/e1 && pass "inline volume unpublished" || fail "unpublish"
    grep -q ' /tmp/e1 ' /proc/mounts && fail "still mounted after unpublish"
    [ "$(resources)" = "$before_e" ] && pass "inline volume's device removed" || fail "inline device left: $(resources)"
  else
    fail "publish inline ephemeral volume"
  fi
}

# check_restart_recovery: KILL_CYCLES create/delete cycles (default 5; tests/vm/run --kill-cycles
# sets it through /host/settings); in each the driver is killed (SIGKILL) at a delay into
# CreateVolume, restarted (recovery runs at start) and the volume deleted, then killed as late into
# a DeleteVolume, restarted and the volume deleted. The delays go round 0, 0.1, 0.25, 0.5, 1 s and
# seven points between (from the 6th cycle on). At the end the devices and the records are as before.
KILL_CYCLES=5
# check_snapshot_kills' cycles: 2 by default (6 SIGKILLs into snapshot, delete and restore copies;
# each cycle copies volumes for real, 27 s under TCG; the unit test kills at every step of each
# call), or --kill-cycles N as the others.
SNAPSHOT_KILL_CYCLES=2
[ -f /host/settings ] && . /host/settings
check_restart_recovery() {
  before_r=$(resources)
  cycle=0
  while [ $cycle -lt "$KILL_CYCLES" ]; do
    case $((cycle % 12)) in
      0) delay=0 ;; 1) delay=0.1 ;; 2) delay=0.25 ;; 3) delay=0.5 ;; 4) delay=1 ;;
      5) delay=0.05 ;; 6) delay=0.15 ;; 7) delay=0.2 ;; 8) delay=0.3 ;; 9) delay=0.4 ;;
      10) delay=0.7 ;; *) delay=0.85 ;;
    esac
    cycle=$((cycle + 1))
    name=crash-$cycle
    $CLIENT $SOCK create "$name" 33554432 > /dev/null 2>&1 &
    client=$!
    sleep $delay
    kill_driver
    wait $client 2>/dev/null
    start_driver || { fail "restart after a kill in create (cycle $cycle, $delay s)"; return; }
    $CLIENT $SOCK delete "$(volume_id "$name")" > /dev/null || fail "delete after a kill in create (cycle $cycle, $delay s)"
    # now a kill inside DeleteVolume
    $CLIENT $SOCK create "$name" 33554432 > /dev/null || fail "create $name again"
    $CLIENT $SOCK delete "$(volume_id "$name")" > /dev/null 2>&1 &
    client=$!
    sleep $delay
    kill_driver
    wait $client 2>/dev/null
    start_driver || { fail "restart after a kill in delete (cycle $cycle, $delay s)"; return; }
    $CLIENT $SOCK delete "$(volume_id "$name")" > /dev/null || fail "delete after a kill in delete (cycle $cycle, $delay s)"
    [ $((cycle % 10)) = 0 ] && echo "kill cycles: $cycle of $KILL_CYCLES done"
  done
  echo "kill cycles: $KILL_CYCLES ($((KILL_CYCLES * 2)) SIGKILLs)"
  after_r=$(resources)
  if [ "$before_r" = "$after_r" ]; then pass "kills in create and delete: nothing leaked"; else fail "devices before: [$before_r] after: [$after_r]"; fi
  left=$(ls /tmp/state | grep -v -e '^\.' -e '^snapshots$' || true)
  [ -z "$left" ] && pass "no volume record left" || fail "records left: $left"
  grep -c "\"recovery\" action=" /tmp/driver.log | sed 's/^/recovery actions logged: /'
}

# check_snapshots: a snapshot of a mounted ext4 volume with data (not synced by the test), data
# written after it, a restore into a larger volume (the data, not the later file; the filesystem
# grown at stage; DAX; the topology names this node), a clone of the volume (both files), a restore
# smaller than the snapshot -> OUT_OF_RANGE, an unknown snapshot -> NOT_FOUND; the capacity goes
# down by the snapshot's size (lvm: exactly 64 MiB; up to SNAPSHOT_COST_MAX bytes where the
# snapshot's device carries metadata, as a direct namespace does) and back; everything deleted ->
# the devices as before. The backend's script may define snapshot_device ID (whether the snapshot
# has its own device; below: an LV) and resources.
snapshot_device() { lvs --noheadings -o lv_name 2>/dev/null | grep -q "$1"; }
check_snapshots() {
  before_s=$(resources)
  cap0=$($CLIENT $SOCK capacity)
  mkdir -p /tmp/snap-src /tmp/snap-r /tmp/snap-c
  out=$($CLIENT $SOCK create snap-src 67108864) || { fail "create the snapshot's volume: $out"; return; }
  src=${out%% *}
  $CLIENT $SOCK stage "$src" /tmp/snap-src ext4 || { fail "stage $src"; return; }
  dd if=/dev/urandom of=/tmp/snap-src/data bs=1M count=8 2>/dev/null
  sum=$(md5sum < /tmp/snap-src/data)
  cap1=$($CLIENT $SOCK capacity)
  t=$(uptime_s)
  out=$($CLIENT $SOCK snapshot snap-1 "$src")
  if [ $? = 0 ]; then pass "snapshot of a mounted volume: $out ($(( $(uptime_s) - t )) s)"; else fail "snapshot: $out"; return; fi
  snap=${out%% *}
  case $out in *" 67108864 ready") pass "snapshot size 64 MiB, ready" ;; *) fail "snapshot answer: $out" ;; esac
  cap2=$($CLIENT $SOCK capacity)
  drop=$(( ${cap1%% *} - ${cap2%% *} ))
  [ "$drop" -ge 67108864 ] && [ "$drop" -le "${SNAPSHOT_COST_MAX:-67108864}" ] &&
    pass "the snapshot takes $drop bytes of the capacity" ||
    fail "capacity before the snapshot $cap1, after $cap2"
  snapshot_device "$snap" && pass "the snapshot has a device of its own" || fail "no device of $snap"
  $CLIENT $SOCK list-snapshots | grep -q "^$snap $src\$" && pass "ListSnapshots names it and its volume" || fail "ListSnapshots: $($CLIENT $SOCK list-snapshots)"
  echo later > /tmp/snap-src/later
  out=$($CLIENT $SOCK create-from snap-r1 134217728 snapshot "$snap")
  if [ $? = 0 ]; then pass "restored into 128 MiB: $out"; else fail "restore: $out"; fi
  rid=${out%% *}
  case $out in *" vm") pass "the restore's topology is this node" ;; *) fail "restore topology: $out" ;; esac
  if $CLIENT $SOCK stage "$rid" /tmp/snap-r ext4; then
    [ "$(md5sum < /tmp/snap-r/data)" = "$sum" ] && pass "restored data equal" || fail "restored data differs"
    [ ! -e /tmp/snap-r/later ] && pass "the file written after the snapshot is not in the restore" || fail "later file in the restore"
    kb=$(df -kP /tmp/snap-r | awk 'NR == 2 {print $2}')
    [ "$kb" -gt 100000 ] && pass "restore's filesystem grown to the device: $kb KiB" || fail "restore's filesystem: $kb KiB"
    grep ' /tmp/snap-r ' /proc/mounts | grep -q dax && pass "restore mounted with dax" || fail "restore not dax: $(grep ' /tmp/snap-r ' /proc/mounts)"
    $CLIENT $SOCK unstage "$rid" /tmp/snap-r || fail "unstage the restore"
  else
    fail "stage the restore"
  fi
  out=$($CLIENT $SOCK create-from snap-c1 0 volume "$src")
  if [ $? = 0 ]; then pass "clone of the mounted volume: $out"; else fail "clone: $out"; fi
  cid=${out%% *}
  if $CLIENT $SOCK stage "$cid" /tmp/snap-c ext4; then
    [ "$(md5sum < /tmp/snap-c/data)" = "$sum" ] && [ "$(cat /tmp/snap-c/later)" = later ] &&
      pass "the clone has the data and the later file" || fail "clone's data"
    $CLIENT $SOCK unstage "$cid" /tmp/snap-c || fail "unstage the clone"
  else
    fail "stage the clone"
  fi
  out=$($CLIENT $SOCK create-from snap-small 33554432 snapshot "$snap" 2>&1)
  case $out in OUT_OF_RANGE*) pass "restore smaller than the snapshot: OUT_OF_RANGE" ;; *) fail "smaller restore: $out" ;; esac
  out=$($CLIENT $SOCK create-from snap-none 0 snapshot "snap-0000000000000000000000000000000000000000" 2>&1)
  case $out in NOT_FOUND*) pass "unknown snapshot: NOT_FOUND" ;; *) fail "unknown snapshot: $out" ;; esac
  $CLIENT $SOCK unstage "$src" /tmp/snap-src || fail "unstage the source"
  # The snapshot outlives its volume.
  $CLIENT $SOCK delete "$src" || fail "delete the source"
  $CLIENT $SOCK create-from snap-r2 0 snapshot "$snap" > /dev/null && pass "restore after the volume was deleted" || fail "restore after the volume's deletion"
  $CLIENT $SOCK delete "$(volume_id snap-r2)" || fail "delete snap-r2"
  for v in "$rid" "$cid"; do $CLIENT $SOCK delete "$v" || fail "delete $v"; done
  $CLIENT $SOCK delete-snapshot "$snap" && pass "snapshot deleted" || fail "delete the snapshot"
  $CLIENT $SOCK delete-snapshot "$snap" && pass "snapshot deleted again: OK" || fail "second delete of the snapshot"
  [ "$(resources)" = "$before_s" ] && pass "snapshots, restores, clones: nothing left" || fail "devices before: [$before_s] after: [$(resources)]"
  [ "$($CLIENT $SOCK capacity)" = "$cap0" ] && pass "capacity back to $cap0" || fail "capacity $cap0 before, $($CLIENT $SOCK capacity) after"
}

# check_snapshot_kills [CYCLES [FIRST]]: CYCLES (default SNAPSHOT_KILL_CYCLES) cycles of SIGKILLs
# of the driver at the delays of check_restart_recovery, from the FIRST (default 2: 0.25 s, then
# 0.5, 1 s, ...: inside the call rather than before it), into a CreateSnapshot, a DeleteSnapshot
# and a CreateVolume from the snapshot, each followed by a restart and the deletion of what the
# call was making; at the end the devices and the records (volumes' and snapshots') are as before.
check_snapshot_kills() {
  cycles=${1:-$SNAPSHOT_KILL_CYCLES}
  first=${2:-2}
  before_k=$(resources)
  out=$($CLIENT $SOCK create kill-src 33554432 eraseafter=false) || { fail "create kill-src: $out"; return; }
  ksrc=${out%% *}
  cycle=0
  while [ $cycle -lt "$cycles" ]; do
    case $(((cycle + first) % 12)) in
      0) delay=0 ;; 1) delay=0.1 ;; 2) delay=0.25 ;; 3) delay=0.5 ;; 4) delay=1 ;;
      5) delay=0.05 ;; 6) delay=0.15 ;; 7) delay=0.2 ;; 8) delay=0.3 ;; 9) delay=0.4 ;;
      10) delay=0.7 ;; *) delay=0.85 ;;
    esac
    cycle=$((cycle + 1))
    snap=$(printf 'snap-%s' "$(printf '%s' "ks-$cycle" | sha256sum | cut -c1-40)")
    # a kill inside CreateSnapshot
    $CLIENT $SOCK snapshot "ks-$cycle" "$ksrc" > /dev/null 2>&1 &
    client=$!; sleep $delay; kill_driver; wait $client 2>/dev/null
    start_driver || { fail "restart after a kill in CreateSnapshot (cycle $cycle, $delay s)"; return; }
    $CLIENT $SOCK delete-snapshot "$snap" > /dev/null || fail "delete-snapshot after a kill in CreateSnapshot (cycle $cycle)"
    # a kill inside DeleteSnapshot
    $CLIENT $SOCK snapshot "ks-$cycle" "$ksrc" > /dev/null || fail "snapshot ks-$cycle"
    $CLIENT $SOCK delete-snapshot "$snap" > /dev/null 2>&1 &
    client=$!; sleep $delay; kill_driver; wait $client 2>/dev/null
    start_driver || { fail "restart after a kill in DeleteSnapshot (cycle $cycle, $delay s)"; return; }
    # a kill inside a restore (the snapshot is taken again if the delete got through)
    $CLIENT $SOCK snapshot "ks-$cycle" "$ksrc" > /dev/null || fail "snapshot ks-$cycle again"
    $CLIENT $SOCK create-from "kr-$cycle" 0 snapshot "$snap" > /dev/null 2>&1 &
    client=$!; sleep $delay; kill_driver; wait $client 2>/dev/null
    start_driver || { fail "restart after a kill in a restore (cycle $cycle, $delay s)"; return; }
    $CLIENT $SOCK delete "$(volume_id "kr-$cycle")" > /dev/null || fail "delete after a kill in a restore (cycle $cycle)"
    $CLIENT $SOCK delete-snapshot "$snap" > /dev/null || fail "delete-snapshot ks-$cycle"
  done
  echo "snapshot kill cycles: $cycles ($((cycles * 3)) SIGKILLs)"
  $CLIENT $SOCK delete "$ksrc" > /dev/null || fail "delete kill-src"
  after_k=$(resources)
  if [ "$before_k" = "$after_k" ]; then pass "kills in snapshot create, delete and restore: nothing leaked"; else fail "devices before: [$before_k] after: [$after_k]"; fi
  left=$(ls /tmp/state | grep -v -e '^\.' -e '^snapshots$' || true)
  [ -z "$left" ] && pass "no volume record left" || fail "volume records left: $left"
  left=$(ls /tmp/state/snapshots 2>/dev/null | grep -v '^\.' || true)
  [ -z "$left" ] && pass "no snapshot record left" || fail "snapshot records left: $left"
  [ -z "$($CLIENT $SOCK list-snapshots)" ] && pass "ListSnapshots empty" || fail "ListSnapshots: $($CLIENT $SOCK list-snapshots)"
  echo "recovery actions logged so far, by kind:"
  grep -o '"recovery" action="[^"]*"' /tmp/driver.log | sort | uniq -c
  grep -q ORPHANED /tmp/driver.log && fail "an orphan was reported" || pass "no orphan was ever reported"
}

# Benchmarks (bench-*.sh): the raw side of a comparison. The suite defines raw_create I and
# raw_delete I (the commands that make and remove volume I as the driver does); bench_raw N times N
# pairs with coreutils date (busybox's has no %N, and busybox sh runs its applets before PATH, so
# the harness's copy is named by path) and writes "create-us delete-us" lines to /tmp/raw.times.
# Returns 1 at the first failing command.
now_ns() { /sbin/date +%s%N; }
bench_raw() {  # N
  : > /tmp/raw.times
  i=0
  while [ $i -lt "$1" ]; do
    t0=$(now_ns)
    raw_create $i || return 1
    t1=$(now_ns)
    raw_delete $i || return 1
    t2=$(now_ns)
    echo "$(( (t1 - t0) / 1000 )) $(( (t2 - t1) / 1000 ))" >> /tmp/raw.times
    i=$((i + 1))
  done
}
# bench_report NAME COLUMN: median, p99 and mean of a column of /tmp/raw.times in the format of
# csi_bench's lines (same percentile indices: the element at n/2 and at n*99/100, from 0).
bench_report() {
  awk -v c="$2" '{print $c / 1000}' /tmp/raw.times | sort -n | awk -v n="$1" '{ a[NR] = $1; s += $1 }
    END { p = int(NR * 99 / 100) + 1; if (p > NR) p = NR
          printf "%-28s n=%d median=%.1f ms p99=%.1f ms mean=%.1f ms\n", n, NR, a[int(NR / 2) + 1], a[p], s / NR }'
}

# snapshot_bench_report RAW LOG_LINES: the report of bench-*-snapshot.sh. /tmp/times holds a line
# per iteration, "driver-snapshot driver-restore raw-snapshot raw-restore" in microseconds (the
# driver's side timed around its client call); RAW names the raw side; the driver's log lines after
# LOG_LINES give the driver's own time per call.
snapshot_bench_report() {  # RAW LOG_LINES
  cp /tmp/times /tmp/raw.times
  bench_report "driver snapshot" 1
  bench_report "driver restore" 2
  bench_report "$1 (snapshot)" 3
  bench_report "$1 (restore)" 4
  awk '{ print $1 }' /tmp/times | sort -n > /tmp/a; awk '{ print $3 }' /tmp/times | sort -n > /tmp/b
  awk '{ print $2 }' /tmp/times | sort -n > /tmp/c; awk '{ print $4 }' /tmp/times | sort -n > /tmp/d
  m() { sed -n "$(( $(wc -l < "$1") / 2 + 1 ))p" "$1"; }
  echo "median ratio driver/raw: snapshot $(awk -v a="$(m /tmp/a)" -v b="$(m /tmp/b)" 'BEGIN { printf "%.2f", a / b }')," \
    "restore $(awk -v a="$(m /tmp/c)" -v b="$(m /tmp/d)" 'BEGIN { printf "%.2f", a / b }')"
  # The driver's own time for the same calls, from its log (the server's duration of each call:
  # without the client process, which the lines above include).
  tail -n +$(($2 + 1)) /tmp/driver.log > /tmp/bench.log
  grep -o '"/csi.v1.Controller/CreateSnapshot" code="OK" us="[0-9]*"' /tmp/bench.log | sed 's/.*us="\([0-9]*\)"/\1/' > /tmp/raw.times
  bench_report "driver snapshot (server)" 1
  grep -o '"/csi.v1.Controller/CreateVolume" code="OK" us="[0-9]*"' /tmp/bench.log | sed 's/.*us="\([0-9]*\)"/\1/' > /tmp/raw.times
  bench_report "driver restore (server)" 1
  # What the driver's side carries beyond the driver: each call is a new ephemera-csi-client
  # process (gRPC's libraries loaded under TCG), timed here on a call that does almost nothing.
  : > /tmp/raw.times
  for j in 1 2 3 4 5; do
    t0=$(now_ns); $CLIENT $SOCK capacity > /dev/null; t1=$(now_ns)
    echo "$(( (t1 - t0) / 1000 ))" >> /tmp/raw.times
  done
  bench_report "csi client start + GetCapacity" 1
}
