#!/usr/bin/env bash
# Adds one real Kubernetes node to a local cluster that hack/cluster-up.sh started, as separate
# from the other nodes as another machine would be:
#   1. its own network namespace, with an address on the cluster's bridge (the node IP);
#   2. its own mount namespace, where /run (libvirt's and containerd's sockets, the agent's
#      admin socket, PID files), /var/lib/libvirt, /etc/libvirt, /var/log/libvirt,
#      /var/lib/nodevirt, /var/lib/kubelet, /var/log/pods, containerd's state and CNI's config
#      are folders of this node (the rest of the machine's files are shared, as a node's OS
#      image would be);
#   3. its own cgroup (/nodevirt/<cluster>/<node>), which kubelet also takes as its cgroupRoot;
#   4. daemons started in all three: virtlogd, libvirtd (its own host UUID, and its own guest
#      network nodevirt 10.213.<index>.0/24), containerd (CNI bridge for pods, a static pause
#      image), kubelet (client certificate system:node:<node>) and kube-proxy.
# The node registers itself; this script waits until it is Ready.
# Usage: hack/node-up.sh CLUSTER_DIR NODE INDEX
set -euo pipefail
source "$(dirname "$0")/lib.sh"

[ $# -eq 3 ] || die "usage: $0 CLUSTER_DIR NODE INDEX"
dir=$1 node=$2 index=$3
nd=$dir/nodes/$node
subnet=$(cat "$dir/subnet")          # e.g. 10.215.3: the cluster's bridge network
node_ip=$subnet.$((10 + index))
netns=$(cat "$dir/netns-prefix")-$node
cgroup=/nodevirt/$(basename "$dir")/$node
mkdir -p "$nd"/{pki,logs,pids,cmd}
echo "$netns" >"$nd/netns"
echo "$cgroup" >"$nd/cgroup"
echo "$node_ip" >"$nd/ip"
export KUBECONFIG=$dir/kubeconfig

# --- 1. network: a veth from the cluster's bridge into the node's namespace ---
ip netns add "$netns"
veth=$(cat "$dir/netns-prefix")n$index
ip link add "$veth" type veth peer name eth0 netns "$netns"
ip link set "$veth" master "$(cat "$dir/bridge")" up
ip -n "$netns" link set lo up
ip -n "$netns" addr add "$node_ip/24" dev eth0
ip -n "$netns" link set eth0 up
ip -n "$netns" route add default via "$subnet.1"
ip netns exec "$netns" sysctl -qw net.ipv4.ip_forward=1
# The host (where the API server runs) reaches this node's pods through it: the API server
# dials aggregated API servers' Pod IPs (--enable-aggregator-routing). Replaced, not added: a
# route left by a cluster that is gone must not stop this one.
ip route replace "10.244.$index.0/24" via "$node_ip"

# --- 2. mount namespace: the node's own folders over the machine's ---
private_dirs=(
  /run /var/lib/libvirt /etc/libvirt /var/log/libvirt /var/cache/libvirt /var/lib/nodevirt
  /var/lib/kubelet /var/log/pods /var/log/containers
  /var/lib/containerd /etc/cni/net.d /var/lib/cni
)
binds=""
for d in "${private_dirs[@]}"; do
  src=$nd/root$d
  mkdir -p "$src" "$d"
  binds+="mount --bind '$src' '$d'; "
done
# Nested KVM is not dependable on this machine's kind (guests hang in real-mode code), so the
# nodes offer libvirt no /dev/kvm unless NODEVIRT_NODE_KVM=1: libvirt then reports TCG only, as
# it would on a machine without KVM, and the agent's --hypervisor auto picks qemu.
if [ -e /dev/kvm ] && [ "${NODEVIRT_NODE_KVM:-0}" != 1 ]; then
  : >"$nd/no-kvm"
  binds+="mount --bind '$nd/no-kvm' /dev/kvm; "
fi
mkdir -p -m 1777 "$nd/root/run/lock"
# libvirt's folders start as the packages made them (owners matter: QEMU runs as libvirt-qemu).
for d in /var/lib/libvirt /etc/libvirt; do cp -a "$d/." "$nd/root$d/"; done
# ... without any domain, network or pool defined on the machine (the package's NAT network
# "default", a plain cluster's "nodevirt"): the node defines its own network below.
find "$nd/root/etc/libvirt/qemu" -maxdepth 1 -name '*.xml' -delete
rm -rf "$nd/root/etc/libvirt/qemu/networks" "$nd/root/etc/libvirt/qemu/autostart" \
  "$nd/root/etc/libvirt/storage" "$nd/root/var/lib/libvirt/dnsmasq"
mkdir -p "$nd/root/etc/libvirt/qemu/networks/autostart"
chmod 755 "$nd" "$nd/root" "$nd/root/var" "$nd/root/var/lib" "$nd/root/var/lib/nodevirt"
# The namespace is kept by a bind mount of its nsfs file, which must sit on a private mount.
if ! mountpoint -q "$dir/ns"; then
  mkdir -p "$dir/ns"
  mount --bind "$dir/ns" "$dir/ns"
  mount --make-private "$dir/ns"
fi
touch "$dir/ns/$node.mnt"
# Private from the machine, then shared within the node: kubelet needs shared mounts for
# mountPropagation (the agent's state folder is HostToContainer).
unshare --mount="$dir/ns/$node.mnt" --propagation private \
  sh -c "mount --make-rshared /; $binds"

# --- 3. cgroup ---
node_cgroup_create "$cgroup"

# --- 4. configuration ---
# The Node authorizer knows the kubelet by its client certificate: system:node:<node> in
# group system:nodes, signed by the cluster's CA.
sign_client_cert "$dir" "system:node:$node" system:nodes "$nd/pki/kubelet"
server=$(kubectl config view -o jsonpath='{.clusters[0].cluster.server}')
write_kubeconfig "$nd/kubelet.kubeconfig" "$server" "$dir/pki/ca.crt" kubelet \
  "$nd/pki/kubelet.crt" "$nd/pki/kubelet.key"

uuid=$(cat /proc/sys/kernel/random/uuid)
echo "host_uuid = \"$uuid\"" >>"$nd/root/etc/libvirt/libvirtd.conf"
echo "$uuid" >"$nd/host-uuid"

pod_cidr=10.244.$index.0/24
cat >"$nd/root/etc/cni/net.d/10-bridge.conflist" <<JSON
{
  "cniVersion": "0.4.0",
  "name": "pods",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$pod_cidr"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON

cat >"$nd/containerd.toml" <<TOML
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # This machine may not lower a process's oom_score_adj (no CAP_SYS_RESOURCE).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"
TOML

cat >"$nd/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
address: $node_ip
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $dir/pki/ca.crt}
authorization: {mode: Webhook}
# cgroup v1 and no systemd on this machine; every node its own cgroup root.
cgroupDriver: cgroupfs
failCgroupV1: false
cgroupRoot: $cgroup
cgroupsPerQOS: true
failSwapOn: false
podCIDR: $pod_cidr
maxPods: 110
# The disk is shared with every other node and the machine: evict on no disk signal, and never
# collect the images imported into this node (there is no registry to pull them again from).
evictionHard: {memory.available: 100Mi, nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
nodeStatusUpdateFrequency: 10s
serializeImagePulls: false
YAML

cat >"$nd/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $dir/kube-proxy.kubeconfig}
hostnameOverride: $node
bindAddress: $node_ip
mode: iptables
clusterCIDR: 10.244.0.0/16
# Inside a network namespace the conntrack table size is the machine's: leave it alone.
conntrack: {maxPerCore: 0}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
YAML

# --- 5. the node's daemons ---
in_node() { "$REPO_ROOT/hack/node-exec.sh" "$dir" "$node" "$@"; }

if [ -e /dev/kvm ]; then chgrp kvm /dev/kvm && chmod 660 /dev/kvm; fi
start_component "$nd" virtlogd --node "$dir" "$node" virtlogd
start_component "$nd" libvirtd --node "$dir" "$node" libvirtd
wait_component "$nd" libvirtd 90 in_node virsh -c qemu:///system version
# The guests' network is libvirt's "default", as on a node where libvirt was just installed
# (the agent's default --network), on a subnet of this node's own.
sed -e "s/10\.213\.0\./10.213.$index./g" -e "s|<name>nodevirt</name>|<name>default</name>|" \
  "$REPO_ROOT/hack/libvirt-network.xml" >"$nd/libvirt-network.xml"
in_node virsh -q net-define "$nd/libvirt-network.xml" >/dev/null
in_node virsh -q net-start default >/dev/null

start_component "$nd" containerd --node "$dir" "$node" containerd --config "$nd/containerd.toml"
wait_component "$nd" containerd 90 in_node ctr -a /run/containerd/containerd.sock version
in_node ctr -a /run/containerd/containerd.sock -n k8s.io image import "$PAUSE_ARCHIVE" >/dev/null

start_component "$nd" kubelet --node "$dir" "$node" kubelet --config "$nd/kubelet.yaml" --kubeconfig "$nd/kubelet.kubeconfig" \
  --hostname-override "$node" --node-ip "$node_ip" \
  --node-labels "nodevirt.io/local-cluster=$(basename "$dir")"
start_component "$nd" kube-proxy --node "$dir" "$node" kube-proxy --config "$nd/kube-proxy.yaml"
wait_component "$nd" kubelet 120 kubectl wait --for condition=Ready --timeout=2s "node/$node"
log "node $node is Ready: IP $node_ip, libvirt host UUID $uuid, cgroup $cgroup"
