#!/usr/bin/env bash
# Stops what hack/cluster-up.sh started, by recorded PIDs, and removes its state.
# Domains left running in libvirtd are destroyed first, so QEMU does not outlive it.
# Usage: hack/cluster-down.sh [NAME]
set -uo pipefail
source "$(dirname "$0")/lib.sh"

name=${1:-default}
dir=${NODEVIRT_CLUSTER_DIR:-/tmp/nodevirt-cluster/$name}
[ -d "$dir" ] || exit 0

# Stops the process whose PID was recorded in $file, if it is still the one we started: its
# command line names the program ($file's name up to the first '.'); a stale PID may belong
# to someone else by now.
stop_pid() {
  local file=$1 pid program
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  program=$(basename "$file"); program=${program%%.*}
  if kill -0 "$pid" 2>/dev/null && [[ $(tr '\0' ' ' < "/proc/$pid/cmdline") == *"$program"* ]]; then
    kill "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
  fi
  rm -f "$file"
}

if [ -f "$dir/pids/libvirtd" ]; then
  for d in $(virsh -c qemu:///system list --name 2>/dev/null); do
    virsh -c qemu:///system destroy "$d" >/dev/null 2>&1
  done
  virsh -c qemu:///system net-destroy nodevirt >/dev/null 2>&1
fi
# nodevirt agents and controllers first (hack/demo.sh records them), then the control plane.
for f in "$dir"/pids/nodevirt.*; do stop_pid "$f"; done
for p in kube-controller-manager kube-apiserver etcd libvirtd virtlogd; do
  stop_pid "$dir/pids/$p"
done
if [ -f "$dir/netns" ]; then
  ip netns delete "$(cat "$dir/netns")" 2>/dev/null
fi
rm -rf "$dir"
log "cluster $name stopped"
