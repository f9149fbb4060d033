# Shared settings for the hack/ scripts. Sourced, not run.
# Pinned versions: change one here and every cached artefact is rebuilt under a new key.
K8S_VERSION=v1.34.4
ETCD_VERSION=v3.6.16

NODEVIRT_CACHE=${NODEVIRT_CACHE:-$HOME/.cache/nodevirt}
K8S_BIN=$NODEVIRT_CACHE/bin/k8s-$K8S_VERSION
ETCD_BIN=$NODEVIRT_CACHE/bin/etcd-$ETCD_VERSION
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The checksum database is not reachable from here; the module proxy is.
export GOSUMDB=${GOSUMDB:-off}
export GOFLAGS=${GOFLAGS:--mod=mod}
export PATH=$K8S_BIN:$ETCD_BIN:$PATH

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
