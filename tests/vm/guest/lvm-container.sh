# The lvm backend as the shipped DaemonSet runs it: the image's own ephemera-pmem-csi (its rootfs,
# exported from ephemera:dev) under runc with the OCI config that tests/vm/oci-bundle made from
# the manifests (read-only root, privileged, the hostPath and other volumes with their mount
# propagation, the same arguments), shared as /bundle (writable for runc's mount points). The guest plays the node and its
# kubelet: it makes the volumes' directories (/bundle/volumes.sh) and makes the CSI calls a kubelet
# and external-provisioner would make through the socket in the kubelet's plugin directory.
# Checks: create, stage, publish (the mount reaches the node through Bidirectional propagation,
# DAX), data written on the node, a SIGKILL of the container and a new one while published, the
# data again after a new stage and publish, unpublish, unstage, delete; an inline ephemeral volume;
# a graceful stop (SIGTERM to PID 1 of the container); no LV, record or mount left.
#
# runc's pivot_root cannot leave the initramfs (the rootfs mount has no parent), so the node's
# root is a recursive bind mount of / made shared (as / is on a systemd host) and moved onto /, as
# switch_root does (so that `runc exec`, entering the container's mount namespace, finds the
# container's root on top of it), and this script runs again chrooted into it.
if [ "${1:-}" != --node ]; then
  mount -t cgroup2 cgroup2 /sys/fs/cgroup || echo "cannot mount cgroup2"
  ip link set lo up
  mkdir -p /node
  mount --rbind / /node
  mount --make-rshared /node
  cd /node && mount --move . / && exec chroot . /bin/sh /host/test.sh --node
  echo "FAIL: cannot make the node's root"; exit 1
fi

. /host/lib.sh
# every line with the guest's uptime: where the time goes
T0=$(cut -d' ' -f1 /proc/uptime)
pass() { PASSED=$((PASSED + 1)); echo "PASS: [$(cut -d' ' -f1 /proc/uptime) s] $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL: [$(cut -d' ' -f1 /proc/uptime) s] $*"; }
echo "guest uptime at the start of the checks: $T0 s"
export LVM_SUPPRESS_FD_WARNINGS=1
mkdir -p /bundle
mount -t 9p -o trans=virtio,version=9p2000.L,cache=loose bundle /bundle || { fail "mount the bundle"; finish; exit 1; }
resources() { lvs --noheadings -o vg_name,lv_name 2>/dev/null | sort; }
lvm_mounts() { grep -c ' /var/lib/kubelet/' /proc/mounts; }

# The kubelet's side: the plugin registration directory (a Directory hostPath) exists on a node.
mkdir -p /var/lib/kubelet/plugins_registry
SECRETS=/bundle/secrets sh -e /bundle/volumes.sh || { fail "the kubelet's volumes (volumes.sh)"; finish; exit 1; }
SOCK=/var/lib/kubelet/plugins/pmem-csi.ephemera.io/csi.sock
CTR=ephemera-pmem-csi-driver

# start_container: runc runs the bundle detached, its output appended to /tmp/driver.log; 0 when
# the CSI socket appears within 60 s.
start_container() {
  rm -f $SOCK
  runc run -d --bundle /bundle $CTR >> /tmp/driver.log 2>&1 < /dev/null || return 1
  i=0
  while [ ! -S $SOCK ] && [ $i -lt 300 ]; do
    [ "$(runc state $CTR 2>/dev/null | grep -o '"status": "[a-z]*"')" = '"status": "running"' ] || break
    sleep 0.2
    i=$((i + 1))
  done
  [ -S $SOCK ]
}
# stop_container SIGNAL: the signal to the container's PID 1, wait up to 30 s, delete it.
stop_container() {
  runc kill $CTR "$1" 2>/dev/null
  i=0
  while [ $i -lt 150 ] && runc state $CTR 2>/dev/null | grep -q '"status": "running"'; do
    sleep 0.2
    i=$((i + 1))
  done
  status=$(runc state $CTR 2>/dev/null | grep -o '"status": "[a-z]*"')
  runc delete --force $CTR 2>/dev/null
  [ "$status" = '"status": "stopped"' ]
}

before=$(resources)
if start_container; then
  pass "the image's driver started under runc with the DaemonSet's spec"
else
  fail "the container did not start"; echo "---- driver log ----"; cat /tmp/driver.log; finish; exit 1
fi
vgs; pvs
# The emulation holds: the container's root is read-only but LVM's places from the node are not,
# and its IPC namespace (where LVM's udev semaphores would live) is not the node's.
PID1=$(runc state $CTR | sed -n 's/.*"pid": *\([0-9]*\).*/\1/p')
o=$(runc exec $CTR touch /etc/lvm/ephemera-probe 2>&1) && fail "the container's root is writable" ||
  { case $o in *Read-only*) pass "the container's root is read-only: $o" ;; *) fail "touch in the root: $o" ;; esac; }
o=$(runc exec $CTR sh -c 'for d in /run/lock/lvm /run/lvm /etc/lvm/archive /etc/lvm/backup; do touch $d/probe && rm $d/probe || exit 1; done' 2>&1) &&
  pass "LVM's lock, run, archive and backup directories are writable" || fail "LVM's directories: $o"
if [ -n "$PID1" ] && [ -e /proc/$PID1/ns/ipc ]; then
  [ "$(readlink /proc/$PID1/ns/ipc)" != "$(readlink /proc/self/ns/ipc)" ] &&
    pass "the container has its own IPC namespace ($(readlink /proc/$PID1/ns/ipc), PID $PID1 on the node)" ||
    fail "the container shares the node's IPC namespace"
else
  fail "no PID of the container from runc state: [$PID1]"
fi
# The liveness probe's endpoint (the listener starts shortly after the socket).
i=0
until health=$(wget -q -O - http://127.0.0.1:8081/healthz 2>&1) || [ $i -ge 150 ]; do sleep 0.2; i=$((i + 1)); done
[ $i -lt 150 ] && pass "/healthz answers: $(echo $health)" || fail "/healthz: $health"
mounts_before=$(lvm_mounts)

# A PVC's volume as external-provisioner and the kubelet use it.
STAGE=/var/lib/kubelet/plugins/kubernetes.io/csi/pmem-csi.ephemera.io/0123456789abcdef/globalmount
POD=/var/lib/kubelet/pods/aaaaaaaa-0000-0000-0000-000000000001
TARGET=$POD/volumes/kubernetes.io~csi/pvc-lvm-container/mount
mkdir -p "$STAGE" "$(dirname $TARGET)"
out=$($CLIENT $SOCK create pvc-lvm-container 67108864)
if [ $? = 0 ]; then
  id=${out%% *}
  pass "CreateVolume: $out"
else
  fail "CreateVolume: $out"; id=
fi
# stage_publish: NodeStageVolume then NodePublishVolume; the node must see the mount (propagation)
stage_publish() {
  o=$($CLIENT $SOCK stage "$id" $STAGE ext4) || { fail "NodeStageVolume: $o"; return 1; }
  o=$($CLIENT $SOCK publish "$id" $STAGE $TARGET ext4) || { fail "NodePublishVolume: $o"; return 1; }
  if grep -q " $TARGET " /proc/mounts; then
    pass "published; the node sees the mount: $(grep " $TARGET " /proc/mounts | cut -d' ' -f1,3,4)"
  else
    fail "the node does not see $TARGET mounted (mount propagation)"; return 1
  fi
  grep " $TARGET " /proc/mounts | grep -q dax && pass "mounted with DAX" || fail "not DAX"
}
unpublish_unstage() {
  o=$($CLIENT $SOCK unpublish "$id" $TARGET) && pass "NodeUnpublishVolume" || fail "NodeUnpublishVolume: $o"
  o=$($CLIENT $SOCK unstage "$id" $STAGE) && pass "NodeUnstageVolume" || fail "NodeUnstageVolume: $o"
  grep -q -e " $TARGET " -e " $STAGE " /proc/mounts && fail "still mounted: $(grep -e " $TARGET " -e " $STAGE " /proc/mounts)"
}
if [ -n "$id" ] && stage_publish; then
  echo "written in the container's volume" > $TARGET/data && sync && pass "the node wrote data into the volume" ||
    fail "write into $TARGET"
  # Online expansion as the kubelet asks for it after csi-resizer: lvextend in the container, then
  # resize2fs of the mounted ext4 (CAP_SYS_RESOURCE: the container is privileged).
  size0=$(df -kP $TARGET | awk 'NR == 2 {print $2}')
  if o=$($CLIENT $SOCK expand "$id" $TARGET 134217728); then
    size1=$(df -kP $TARGET | awk 'NR == 2 {print $2}')
    [ "$o" -ge 134217728 ] && [ "$size1" -gt $((size0 + 50000)) ] &&
      pass "NodeExpandVolume to 128 MiB: capacity $o, the filesystem $size0 -> $size1 KiB" ||
      fail "NodeExpandVolume: capacity $o, the filesystem $size0 -> $size1 KiB"
  else
    fail "NodeExpandVolume: $o"
  fi
  # A crash of the container (SIGKILL) while the volume is published, and a new one.
  stop_container KILL && pass "the container was killed (SIGKILL)" || fail "the container did not stop on SIGKILL"
  grep -q " $TARGET " /proc/mounts && pass "the volume stays mounted on the node while no driver runs" ||
    fail "the mount went with the driver"
  if start_container; then
    pass "a new container started (restart after SIGKILL)"
  else
    fail "no new container after SIGKILL"; tail -40 /tmp/driver.log
  fi
  [ "$(cat $TARGET/data 2>/dev/null)" = "written in the container's volume" ] && pass "data read back" || fail "data lost"
  unpublish_unstage
  # staged and published again by the new container: the data is still there
  if stage_publish; then
    [ "$(cat $TARGET/data 2>/dev/null)" = "written in the container's volume" ] &&
      pass "data read back after a new stage and publish" || fail "data lost after a new stage and publish"
    unpublish_unstage
  fi
fi
if [ -n "$id" ]; then
  o=$($CLIENT $SOCK delete "$id") && pass "DeleteVolume" || fail "DeleteVolume: $o"
fi

# An inline ephemeral volume (NodePublishVolume makes the LV, NodeUnpublishVolume removes it).
EPH=$POD/volumes/kubernetes.io~csi/inline-1/mount
mkdir -p "$(dirname $EPH)"
before_e=$(resources)
if o=$($CLIENT $SOCK publish-ephemeral csi-inline-lvm-container $EPH 64Mi); then
  grep " $EPH " /proc/mounts | grep -q dax && pass "inline ephemeral volume published, the node sees it with DAX" ||
    fail "inline volume: $(grep " $EPH " /proc/mounts)"
  echo data > $EPH/file || fail "write into the inline volume"
  o=$($CLIENT $SOCK unpublish csi-inline-lvm-container $EPH) && pass "inline volume unpublished" || fail "unpublish inline: $o"
  [ "$(resources)" = "$before_e" ] && pass "inline volume's LV removed" || fail "inline LV left: $(resources)"
else
  fail "publish inline ephemeral volume: $o"
fi

# The container's LVM kept the volume group's metadata backup and archive on the node (the node's
# own lvs also writes them, but describes them as made by lvs).
grep -q "^description = \"Created \*after\* executing 'lvremove" /etc/lvm/backup/ephemera-region0 &&
  pass "the node has the metadata backup of the container's last lvremove" ||
  fail "no metadata backup from the container on the node: $(grep -s '^description' /etc/lvm/backup/ephemera-region0)"
grep -ql "^description = \"Created \*before\* executing 'lvcreate" /etc/lvm/archive/ephemera-region0_* &&
  pass "the node has the container's metadata archive" || fail "no metadata archive of an lvcreate on the node"

# The driver is the container's PID 1: whatever its commands left behind is its to reap.
PID1=$(runc state $CTR | sed -n 's/.*"pid": *\([0-9]*\).*/\1/p')
if [ -n "$PID1" ] && [ -e /proc/$PID1/status ]; then
  zombies=$(grep -l "^PPid:[[:space:]]*$PID1\$" /proc/[0-9]*/status 2>/dev/null | xargs grep -l '^State:[[:space:]]*Z' 2>/dev/null)
  [ -z "$zombies" ] && pass "no zombie under the driver (PID 1 of the container)" || fail "zombies under the driver: $zombies"
else
  fail "no PID of the container from runc state: [$PID1]"
fi

# A graceful stop, as the kubelet does on a rolling update (SIGTERM to the container's PID 1).
stop_container TERM && pass "the container stopped on SIGTERM" || fail "the container did not stop on SIGTERM within 30 s"

after=$(resources)
[ "$before" = "$after" ] && pass "no logical volume leaked" || fail "LVs before: [$before] after: [$after]"
# The lvm backend keeps snapshot records in the state directory's snapshots/ (there since it takes
# snapshots): the directory may stay, empty.
left=$(ls /var/lib/ephemera-pmem-csi/state 2>/dev/null | grep -v -e '^\.' -e '^snapshots$' || true)
[ -z "$left" ] && pass "no volume record left" || fail "records left: $left"
left=$(ls /var/lib/ephemera-pmem-csi/state/snapshots 2>/dev/null | grep -v '^\.' || true)
[ -z "$left" ] && pass "no snapshot record left" || fail "snapshot records left: $left"
[ "$(lvm_mounts)" = "$mounts_before" ] && pass "no mount left under /var/lib/kubelet" ||
  fail "mounts left: $(grep ' /var/lib/kubelet/' /proc/mounts)"
if [ $FAILED != 0 ]; then echo "---- driver log (last 80 lines) ----"; tail -80 /tmp/driver.log; fi
finish
