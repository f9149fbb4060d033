#!/usr/bin/env bash
# Stops what hack/cluster-up.sh started, by recorded PIDs and by the nodes' cgroups, and
# removes its state: processes, mounts, network namespaces, cgroups, the bridge, the folder.
# Domains left in a libvirtd are destroyed and undefined first, so QEMU does not outlive it.
# Usage: hack/cluster-down.sh [NAME]
set -uo pipefail
source "$(dirname "$0")/lib.sh"

dir=$(cluster_dir "${1:-default}")
name=$(basename "$dir")
[ -d "$dir" ] || exit 0

# Real nodes: every process of a node is in its cgroup (kubelet, containerd and its pods,
# libvirtd and its QEMU), so stopping the cgroup stops the node, whatever it had started.
for nd in "$dir"/nodes/*/; do
  [ -f "$nd/cgroup" ] || continue
  node=$(basename "$nd")
  # kubelet, then the pods (the agent among them), then the domains: while an agent runs, a
  # replica set would replace the domains destroyed below.
  stop_pid "$nd/pids/kubelet"
  node_cgroup_remove "$(cat "$nd/cgroup")/kubepods"
  for d in $("$REPO_ROOT/hack/node-exec.sh" "$dir" "$node" virsh -c qemu:///system list --all --name 2>/dev/null); do
    "$REPO_ROOT/hack/node-exec.sh" "$dir" "$node" virsh -c qemu:///system destroy "$d" >/dev/null 2>&1
    "$REPO_ROOT/hack/node-exec.sh" "$dir" "$node" virsh -c qemu:///system undefine "$d" >/dev/null 2>&1
  done
  node_cgroup_remove "$(cat "$nd/cgroup")"
  umount "$dir/ns/$node.mnt" 2>/dev/null
  ip netns delete "$(cat "$nd/netns")" 2>/dev/null
done
if mountpoint -q "$dir/ns"; then umount "$dir/ns"; fi
for h in $(node_cgroup_hierarchies); do rmdir "$h/nodevirt/$name" "$h/nodevirt" 2>/dev/null; done

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
  virsh -c qemu:///system net-undefine nodevirt >/dev/null 2>&1
fi
# Then the control plane and libvirtd.
for p in kube-scheduler kube-controller-manager kube-apiserver etcd libvirtd virtlogd; do
  stop_pid "$dir/pids/$p"
done
if [ -f "$dir/netns" ]; then
  ip netns delete "$(cat "$dir/netns")" 2>/dev/null
fi
[ -f "$dir/bridge" ] && ip link delete "$(cat "$dir/bridge")" 2>/dev/null
rm -rf "$dir"
log "cluster $name stopped"
