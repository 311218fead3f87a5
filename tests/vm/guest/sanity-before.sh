# TEMPORARY (not committed): csi-sanity alone against the lvm backend, for a before/after count.
. /host/lib.sh
export LVM_SUPPRESS_FD_WARNINGS=1
start_driver --backend=lvm --pmem-percentage=50 --default-volume-size=32Mi || { fail "driver"; finish; exit 1; }
run_sanity $((32 * 1024 * 1024)) $((64 * 1024 * 1024))
stop_driver
finish
