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

# Fails early, with the numbers, when the filesystem holding $path has less than $need_mib
# free: a build or a guest's disk copy that runs out halfway fails far less readably.
require_free_space() {
  local path=$1 need_mib=$2 what=$3 free_mib
  mkdir -p "$path"
  free_mib=$(df --output=avail -m "$path" | tail -n 1 | tr -d ' ')
  [ "$free_mib" -ge "$need_mib" ] ||
    die "$what needs ${need_mib} MiB free under $path; $(df -h --output=target "$path" | tail -n 1) has ${free_mib} MiB"
}

# Stops the process whose PID was recorded in $file, if it is still the one we started: its
# command line names the program ($file's name up to the first '.'); a stale PID may belong
# to someone else by now. TERM first, KILL after 5 s.
stop_pid() {
  local file=$1 pid program
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  program=$(basename "$file"); program=${program%%.*}
  if kill -0 "$pid" 2>/dev/null && [[ $(tr '\0' ' ' < "/proc/$pid/cmdline") == *"$program"* ]]; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}
