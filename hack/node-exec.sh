#!/usr/bin/env bash
# Runs a command on a node of a local cluster, as a process of that node would run: in the
# node's cgroup, network namespace and mount namespace (its own /run/libvirt, /var/lib/kubelet,
# containerd state, ...). hack/node-up.sh starts every node daemon through it; tests and people
# use it to look at a node (e.g. `hack/node-exec.sh demo node1 virsh list`).
# Usage: hack/node-exec.sh CLUSTER NODE COMMAND [ARG...]
# CLUSTER is a name (state in /tmp/nodevirt-cluster/NAME) or, if it holds a '/', its folder.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

[ $# -ge 3 ] || die "usage: $0 CLUSTER NODE COMMAND [ARG...]"
dir=$(cluster_dir "$1") node=$2
shift 2
[ -f "$dir/nodes/$node/netns" ] || die "no node $node in the cluster at $dir"
# Join the cgroups first: the command inherits them, and cluster-down finds every process of
# the node (containerd shims, pods, QEMU) there.
node_cgroup_join "$(cat "$dir/nodes/$node/cgroup")" $$
# A node's daemons get the umask a service manager gives them, whatever the caller's: under
# 077, containerd would unpack image layers into folders only root can enter.
umask 022
exec nsenter --net="/run/netns/$(cat "$dir/nodes/$node/netns")" \
  --mount="$dir/ns/$node.mnt" -- "$@"
