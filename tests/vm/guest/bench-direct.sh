# Benchmark in the guest (not a test): CreateVolume and DeleteVolume of the direct backend, timed
# by bench/csi's csi_bench over gRPC, against `ndctl create-namespace` / `destroy-namespace` doing
# the same to a namespace of the same size. Volumes of 1 GiB, not erased (the raw commands do not
# erase either). Run: tests/vm/run --backend bench-direct
. /host/lib.sh
N=30
SIZE=1073741824
RAW=$((1056 * 1024 * 1024))  # the namespace the driver makes for 1 GiB (RawSizeFor, 16 MiB units)

start_driver --backend=direct || { fail "driver did not start"; tail /tmp/driver.log; finish; exit 1; }
mkdir -p /tmp/bench
csi_bench unix://$SOCK /tmp/bench $N $SIZE false 1 controller || fail "csi_bench"
stop_driver

raw_create() {  # sets ns, the namespace made
  out=$(ndctl create-namespace -r region0 -m fsdax -a 2M -s $RAW -n raw-$1) || { fail "ndctl create-namespace: $out"; return 1; }
  ns=$(echo "$out" | sed -n 's/.*"dev":"\(namespace[^"]*\)".*/\1/p' | head -1)
}
raw_delete() {
  ndctl destroy-namespace -f "$ns" > /dev/null 2>&1 || { fail "ndctl destroy-namespace $ns"; return 1; }
}
bench_raw $N
bench_report "ndctl create-namespace" 1
bench_report "ndctl destroy-namespace" 2
left=$(ndctl list -N 2>/dev/null)
[ -z "$left" ] || fail "namespaces left: $left"
finish
