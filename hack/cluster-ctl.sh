#!/usr/bin/env bash
# Stops or starts again one component of a cluster that hack/cluster-up.sh started, for the
# fault tests (API server outage, libvirtd restart).
# Usage: hack/cluster-ctl.sh NAME stop|start etcd|kube-apiserver|libvirtd|virtlogd
#        hack/cluster-ctl.sh NAME stop|start NODE/kubelet|NODE/kube-proxy|NODE/containerd|...
# `start` reruns the command line cluster-up (or node-up, on NODE) recorded in cmd/ and waits
# until it answers.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

[ $# -eq 3 ] || die "usage: $0 NAME stop|start COMPONENT"
name=$1 action=$2 what=$3
dir=$(cluster_dir "$name")
# A node's component runs on the node: in its namespaces and cgroup.
run=()
if [[ $what == */* ]]; then
  node=${what%%/*}
  run=("$REPO_ROOT/hack/node-exec.sh" "$dir" "$node")
  dir=$dir/nodes/$node what=${what#*/}
fi
[ -f "$dir/cmd/$what" ] || die "$what was not started by cluster $name ($dir/cmd/$what is missing)"
cd "$dir"

answers() {
  case $what in
    kube-apiserver) kubectl --kubeconfig "$dir/kubeconfig" get --raw /readyz ;;
    libvirtd) "${run[@]}" virsh -c qemu:///system version ;;
    etcd) pgrep -F pids/etcd ;;
    *) kill -0 "$(cat "pids/$what")" ;;
  esac
}

case $action in
  stop) stop_pid "pids/$what" ;;
  start)
    eval "set -- $(cat "cmd/$what")"
    "${run[@]}" "$@" >>"logs/$what.log" 2>&1 &
    echo $! >"pids/$what"
    for _ in $(seq 300); do
      answers >/dev/null 2>&1 && exit 0
      sleep 0.2
    done
    die "$what did not answer within 60 s; see $dir/logs/$what.log" ;;
  *) die "unknown action $action; expected stop or start" ;;
esac
