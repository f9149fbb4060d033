#!/usr/bin/env bash
# Stops what hack/cluster-up.sh started, by recorded PIDs, and removes its state.
# Domains left in libvirtd are destroyed and undefined first, so QEMU does not outlive it.
# Usage: hack/cluster-down.sh [NAME]
set -uo pipefail
source "$(dirname "$0")/lib.sh"

name=${1:-default}
dir=${NODEVIRT_CLUSTER_DIR:-/tmp/nodevirt-cluster/$name}
[ -d "$dir" ] || exit 0

# nodevirt agents and controllers first (hack/demo.sh records them): while they run, a replica
# set would replace the domains destroyed below and leave QEMU running without libvirtd.
for f in "$dir"/pids/nodevirt.*; do stop_pid "$f"; done
if [ -f "$dir/pids/libvirtd" ]; then
  # Every domain on it was made by this cluster's agents; a test that fails may leave some.
  for d in $(virsh -c qemu:///system list --all --name 2>/dev/null); do
    virsh -c qemu:///system destroy "$d" >/dev/null 2>&1
    virsh -c qemu:///system undefine "$d" >/dev/null 2>&1
  done
  virsh -c qemu:///system net-destroy nodevirt >/dev/null 2>&1
fi
# Then the control plane and libvirtd.
for p in kube-controller-manager kube-apiserver etcd libvirtd virtlogd; do
  stop_pid "$dir/pids/$p"
done
if [ -f "$dir/netns" ]; then
  ip netns delete "$(cat "$dir/netns")" 2>/dev/null
fi
rm -rf "$dir"
log "cluster $name stopped"
