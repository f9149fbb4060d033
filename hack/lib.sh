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

# A cluster's state folder from its name, or the folder itself when given a path.
cluster_dir() {
  case $1 in
    */*) printf '%s\n' "$1" ;;
    *) printf '%s\n' "${NODEVIRT_CLUSTER_DIR:-/tmp/nodevirt-cluster/$1}" ;;
  esac
}

# --- a node's cgroup, the same path under every cgroup v1 hierarchy ---
# Every process of a node (its daemons, containerd's shims and pods, libvirtd's QEMU) lives
# below it, so two nodes on one machine never share a cgroup and cluster-down can find and
# stop all of a node's processes.
node_cgroup_hierarchies() {
  local h
  for h in /sys/fs/cgroup/*/; do
    h=${h%/}
    [ -f "$h/cgroup.procs" ] && [ "$(basename "$h")" != unified ] && printf '%s\n' "$h"
  done
}

# Creates the cgroup $1 (e.g. /nodevirt/demo/node1) in every hierarchy. A cpuset cgroup takes
# no process until it has CPUs and memory nodes, so each new level copies its parent's.
node_cgroup_create() {
  local path=$1 h sub part
  for h in $(node_cgroup_hierarchies); do
    sub=$h
    for part in ${path//\// }; do
      sub=$sub/$part
      [ -d "$sub" ] && continue
      mkdir "$sub"
      if [ -f "$sub/cpuset.cpus" ]; then
        cat "$(dirname "$sub")/cpuset.cpus" >"$sub/cpuset.cpus"
        cat "$(dirname "$sub")/cpuset.mems" >"$sub/cpuset.mems"
      fi
    done
  done
}

node_cgroup_join() {
  local path=$1 pid=$2 h
  for h in $(node_cgroup_hierarchies); do echo "$pid" >"$h$path/cgroup.procs"; done
}

# Every PID in the cgroup $1 or below it (pods' cgroups are nested under the node's).
node_cgroup_pids() {
  find /sys/fs/cgroup/pids"$1" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u
}

# Stops every process of the cgroup, TERM then KILL, and removes the cgroup (leaves first).
node_cgroup_remove() {
  local path=$1 h pids
  pids=$(node_cgroup_pids "$path")
  [ -n "$pids" ] && kill $pids 2>/dev/null
  for _ in $(seq 50); do
    pids=$(node_cgroup_pids "$path")
    [ -z "$pids" ] && break
    sleep 0.1
  done
  [ -n "$pids" ] && kill -9 $pids 2>/dev/null
  for _ in $(seq 50); do [ -z "$(node_cgroup_pids "$path")" ] && break; sleep 0.1; done
  for h in $(node_cgroup_hierarchies); do
    [ -d "$h$path" ] && find "$h$path" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  return 0
}

# Writes a kubeconfig for $server trusting $ca, for the user named $4, authenticated by a
# client certificate (write_kubeconfig FILE SERVER CA USER CERT KEY) or a bearer token
# (... USER --token TOKEN).
write_kubeconfig() {
  local file=$1 server=$2 ca=$3 name=$4 user
  if [ "$5" = --token ]; then
    user="token: $6"
  else
    user="client-certificate-data: $(base64 -w0 <"$5")
    client-key-data: $(base64 -w0 <"$6")"
  fi
  cat >"$file" <<KC
apiVersion: v1
kind: Config
clusters:
- name: nodevirt
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 <"$ca")
users:
- name: $name
  user:
    $user
contexts:
- name: nodevirt
  context: {cluster: nodevirt, user: $name, namespace: default}
current-context: nodevirt
KC
  chmod 600 "$file"
}

# Signs a client certificate for CN $2 (and organization $3, if not empty) with the CA of the
# cluster in $1, into $4.crt and $4.key.
sign_client_cert() {
  local dir=$1 cn=$2 org=$3 out=$4 subj
  subj="/CN=$cn"
  [ -n "$org" ] && subj="/O=$org$subj"
  openssl req -newkey rsa:2048 -nodes -subj "$subj" -keyout "$out.key" -out "$out.csr" 2>/dev/null
  openssl x509 -req -in "$out.csr" -CA "$dir/pki/ca.crt" -CAkey "$dir/pki/ca.key" \
    -CAcreateserial -days 30 -out "$out.crt" 2>/dev/null
  chmod 600 "$out.key"
  rm -f "$out.csr"
}

# The pods' sandbox image of the local nodes (containerd's sandbox_image), imported into each.
PAUSE_IMAGE=localhost/nodevirt-pause:1

# Builds hack/image/pause.c into a docker-archive at $1/pause.tar (PAUSE_ARCHIVE), which
# `ctr image import` reads. Fixed mtimes and owners: the same source gives the same image.
build_pause_image() {
  local out=$1 work diff
  work=$(mktemp -d)
  mkdir "$work/root"
  gcc -static -Os -s -o "$work/root/pause" "$REPO_ROOT/hack/image/pause.c"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work/root" \
    -cf "$work/layer.tar" pause
  diff=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
  printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/pause"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$diff" >"$work/config.json"
  printf '[{"Config":"config.json","RepoTags":["%s"],"Layers":["layer.tar"]}]' \
    "$PAUSE_IMAGE" >"$work/manifest.json"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work" \
    -cf "$out/pause.tar" manifest.json config.json layer.tar
  rm -rf "$work"
}

# Starts a component in the background with its log in $1/logs/$2.log and PID in $1/pids/$2;
# its command line is kept in $1/cmd/$2 so that hack/cluster-ctl.sh can start it again. With
# `--node CLUSTER_DIR NODE` before the command, it runs on that node (hack/node-exec.sh). Each
# step execs the next, so the PID recorded is the component's own.
start_component() {
  local state=$1 what=$2 run=()
  shift 2
  if [ "$1" = --node ]; then
    run=("$REPO_ROOT/hack/node-exec.sh" "$2" "$3")
    shift 3
  fi
  printf '%q ' "$@" >"$state/cmd/$what"
  (exec "${run[@]}" "$@" >"$state/logs/$what.log" 2>&1) &
  echo $! >"$state/pids/$what"
}

# (Locals are named so as not to shadow the callers' $dir, which their commands may use.)
# Polls the command after $3 every 0.2 s until it succeeds; after $3 seconds, fails with the
# last lines of $1/logs/$2.log.
wait_component() {
  local state=$1 what=$2 seconds=$3
  shift 3
  for _ in $(seq $((seconds * 5))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  log "$what did not come up in ${seconds}s ($state); last lines of its log:"
  tail -n 20 "$state/logs/$what.log" >&2 || true
  exit 1
}
