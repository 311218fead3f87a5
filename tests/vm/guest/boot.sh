# The first milestone: the guest boots, sees the NVDIMM region, and its exit code comes back.
. /host/lib.sh
echo "kernel $(uname -r), up $(cut -d' ' -f1 /proc/uptime) s"
regions=$(ndctl list -R)
echo "$regions"
if echo "$regions" | grep -q '"dev":"region0"'; then pass "ndctl list -R shows region0"; else fail "no region0"; fi
if ndctl create-namespace -r region0 -m fsdax -s 256M > /tmp/ns.json; then
  pass "fsdax namespace created"
  dev=$(sed -n 's/.*"blockdev":"\([^"]*\)".*/\1/p' /tmp/ns.json)
  ns=$(sed -n 's/.*"dev":"\(namespace[^"]*\)".*/\1/p' /tmp/ns.json | head -1)
  if mkfs.ext4 -q -F -b 4096 "/dev/$dev" && mount -o dax "/dev/$dev" /mnt; then
    if grep " /mnt " /proc/mounts | grep -q dax; then pass "ext4 mounted with dax"; else fail "no dax"; fi
    umount /mnt
  else
    fail "mkfs/mount on /dev/$dev"
  fi
  ndctl destroy-namespace -f "$ns" && pass "namespace destroyed" || fail "destroy $ns"
else
  fail "create-namespace"
fi
finish
