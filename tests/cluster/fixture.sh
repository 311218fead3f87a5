#!/usr/bin/env bash
# ctest fixture: `fixture.sh up DIR` starts a fresh 3-node cluster in DIR for one test suite,
# `fixture.sh down DIR` removes it. The cluster is tied to the ctest process (our parent): should
# ctest be killed, the cluster's supervisor stops it within a second.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
case ${1:-} in
  up)
    "$root/scripts/cluster" down --dir "$2" 2>/dev/null || true  # leftovers of a killed run
    exec "$root/scripts/cluster" up --dir "$2" --nodes 3 --owner-pid "$PPID" ;;
  down) exec "$root/scripts/cluster" down --dir "$2" ;;
  *) echo "usage: fixture.sh up|down DIR" >&2; exit 2 ;;
esac
