# Shared helpers for ephemera's scripts. Sourced, not run.

EPHEMERA_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
EPHEMERA_TOOLS_BIN=${EPHEMERA_TOOLS_BIN:-$EPHEMERA_ROOT/.tools/bin}
# Files that scripts/setup takes out of pinned Go modules (files.list), one directory per tools
# module: e.g. $EPHEMERA_TOOLS_FILES/external-snapshotter/*.yaml, the VolumeSnapshot CRDs.
EPHEMERA_TOOLS_FILES=${EPHEMERA_TOOLS_FILES:-$EPHEMERA_ROOT/.tools/files}
# Built tools are cached outside the work tree, keyed by the content of their pin files, so that a
# fresh clone (as CI makes) reuses them instead of compiling Kubernetes again.
EPHEMERA_CACHE=${EPHEMERA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ephemera}

# Progress lines go to stderr, with the script's name and the time since it started.
_ephemera_t0=$SECONDS
log() { printf '[%s %4ss] %s\n' "${EPHEMERA_LOG_NAME:-$(basename "$0")}" "$((SECONDS - _ephemera_t0))" "$*" >&2; }
die() { log "error: $*"; exit 1; }
