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

# busybox sh runs its own applets before PATH: name the coreutils date the harness copied in.
now_ns() { /sbin/date +%s%N; }
: > /tmp/raw.times
i=0
while [ $i -lt $N ]; do
  t0=$(now_ns)
  out=$(ndctl create-namespace -r region0 -m fsdax -a 2M -s $RAW -n raw-$i) || { fail "ndctl create-namespace: $out"; break; }
  t1=$(now_ns)
  ns=$(echo "$out" | sed -n 's/.*"dev":"\(namespace[^"]*\)".*/\1/p' | head -1)
  ndctl destroy-namespace -f "$ns" > /dev/null 2>&1 || { fail "ndctl destroy-namespace $ns"; break; }
  t2=$(now_ns)
  echo "$(( (t1 - t0) / 1000 )) $(( (t2 - t1) / 1000 ))" >> /tmp/raw.times
  i=$((i + 1))
done
report() {  # name column
  awk -v c="$2" '{print $c / 1000}' /tmp/raw.times | sort -n | awk -v n="$1" '{ a[NR] = $1; s += $1 }
    END { p = int(NR * 99 / 100) + 1; if (p > NR) p = NR
          printf "%-28s n=%d median=%.1f ms p99=%.1f ms mean=%.1f ms\n", n, NR, a[int(NR / 2) + 1], a[p], s / NR }'
}
report "ndctl create-namespace" 1
report "ndctl destroy-namespace" 2
left=$(ndctl list -N 2>/dev/null)
[ -z "$left" ] || fail "namespaces left: $left"
finish
