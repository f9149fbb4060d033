#!/usr/bin/env bash
# Starts a local control plane and node for tests and the demo:
#   etcd, kube-apiserver (Node and RBAC authorization, tokens and client certificates),
#   kube-controller-manager and kube-scheduler, on free ports of the cluster's own bridge
#   address (10.215.<n>.1, a bridge this script makes), so two clusters never collide; the
#   CRDs applied and Established;
#   with --nodes N (default 0): N real nodes, node1..nodeN, each with its kubelet, kube-proxy,
#   containerd and libvirtd in namespaces of its own (hack/node-up.sh);
#   with --nodes 0: libvirtd + virtlogd inside the network namespace "nodevirt" (unless a
#   libvirtd already answers on qemu:///system), with the isolated libvirt network "nodevirt"
#   (DHCP), for agents run as plain processes.
# State: $NODEVIRT_CLUSTER_DIR (default /tmp/nodevirt-cluster/<name>). Stop: hack/cluster-down.sh.
# Usage: hack/cluster-up.sh [NAME] [--nodes N]
set -euo pipefail
source "$(dirname "$0")/lib.sh"

name=default nodes=0
while [ $# -gt 0 ]; do
  case $1 in
    --nodes) nodes=${2:?--nodes needs a number}; shift 2 ;;
    -*) die "unknown option $1; usage: $0 [NAME] [--nodes N]" ;;
    *) name=$1; shift ;;
  esac
done
dir=$(cluster_dir "$name")
if [ -f "$dir/env" ] && kubectl --kubeconfig "$dir/kubeconfig" get --raw /readyz >/dev/null 2>&1; then
  log "cluster $name already up"
  cat "$dir/env"
  exit 0
fi
"$REPO_ROOT/hack/cluster-down.sh" "$name" >/dev/null 2>&1 || true
mkdir -p "$dir"/{pki,logs,pids,cmd,etcd,nodes}
# QEMU runs as its own user and opens the disks under $dir by path: with a umask such as 077
# the folders would be closed to it. Open them for traversal (the parent only if it is ours).
chmod 755 "$dir"
if [ "$(dirname "$dir")" = /tmp/nodevirt-cluster ]; then chmod 755 /tmp/nodevirt-cluster; fi
cd "$dir"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- the cluster's network: a bridge the nodes' namespaces hang on, with the control plane's
# address. The first free 10.215.<n>.0/24 is this cluster's.
for n in $(seq 1 250); do
  [ -e "/sys/class/net/nv${n}br" ] || break
done
subnet=10.215.$n api_host=$subnet.1
echo "$subnet" >subnet
echo "nv${n}br" >bridge
echo "nv$n" >netns-prefix
ip link add "nv${n}br" type bridge
ip addr add "$api_host/24" dev "nv${n}br"
ip link set "nv${n}br" up

# --- certificates, service-account keys, tokens ---
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=nodevirt-test-ca" \
  -keyout pki/ca.key -out pki/ca.crt 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
  -keyout pki/apiserver.key -out pki/apiserver.csr 2>/dev/null
printf 'subjectAltName=IP:%s,IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n' "$api_host" > pki/san.ext
openssl x509 -req -in pki/apiserver.csr -CA pki/ca.crt -CAkey pki/ca.key -CAcreateserial \
  -days 30 -extfile pki/san.ext -out pki/apiserver.crt 2>/dev/null
openssl genrsa -out pki/sa.key 2048 2>/dev/null
openssl rsa -in pki/sa.key -pubout -out pki/sa.pub 2>/dev/null
admin_token=$(openssl rand -hex 24)
printf '%s,admin,admin-uid,"system:masters"\n' "$admin_token" > pki/tokens.csv
chmod 600 pki/*.key pki/tokens.csv
# Client certificates of the components that have a well-known identity in RBAC's bootstrap
# roles; the API server's own one lets it reach kubelets (logs, exec).
sign_client_cert "$dir" system:kube-scheduler "" pki/scheduler
sign_client_cert "$dir" system:kube-proxy "" pki/kube-proxy
sign_client_cert "$dir" kube-apiserver-kubelet-client system:masters pki/apiserver-kubelet-client
# The front proxy (API aggregation): a CA of its own, and the API server's client certificate
# for aggregated API servers (nodevirt's subresources.kubevirt.io). v3 with clientAuth: rustls
# (the controller) accepts no v1 certificate.
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=nodevirt-test-front-proxy-ca" \
  -keyout pki/front-proxy-ca.key -out pki/front-proxy-ca.crt 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=front-proxy-client" \
  -keyout pki/front-proxy-client.key -out pki/front-proxy-client.csr 2>/dev/null
printf 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n' > pki/client.ext
openssl x509 -req -in pki/front-proxy-client.csr -CA pki/front-proxy-ca.crt \
  -CAkey pki/front-proxy-ca.key -CAcreateserial -days 30 -extfile pki/client.ext \
  -out pki/front-proxy-client.crt 2>/dev/null
rm -f pki/front-proxy-client.csr

etcd_port=$(free_port); etcd_peer_port=$(free_port); api_port=$(free_port); kcm_port=$(free_port)
sched_port=$(free_port)
echo "$api_port" > api-port

# --- etcd ---
start_component "$dir" etcd etcd --name default --data-dir "$dir/etcd" --unsafe-no-fsync \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
  --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
  --initial-cluster "default=http://127.0.0.1:$etcd_peer_port"
wait_component "$dir" etcd 30 curl -sf "http://127.0.0.1:$etcd_port/health"

# --- kube-apiserver ---
start_component "$dir" kube-apiserver kube-apiserver --etcd-servers "http://127.0.0.1:$etcd_port" \
  --bind-address "$api_host" --advertise-address "$api_host" --secure-port "$api_port" \
  --cert-dir "$dir/pki" --tls-cert-file pki/apiserver.crt --tls-private-key-file pki/apiserver.key \
  --client-ca-file pki/ca.crt --token-auth-file pki/tokens.csv \
  --authorization-mode Node,RBAC --allow-privileged=true --enable-admission-plugins NodeRestriction \
  --kubelet-client-certificate pki/apiserver-kubelet-client.crt \
  --kubelet-client-key pki/apiserver-kubelet-client.key \
  --kubelet-preferred-address-types InternalIP \
  --service-cluster-ip-range 10.0.0.0/24 \
  --service-account-issuer "https://$api_host:$api_port" \
  --service-account-key-file pki/sa.pub --service-account-signing-key-file pki/sa.key \
  --requestheader-client-ca-file pki/front-proxy-ca.crt \
  --requestheader-allowed-names front-proxy-client \
  --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
  --requestheader-extra-headers-prefix X-Remote-Extra- \
  --proxy-client-cert-file pki/front-proxy-client.crt --proxy-client-key-file pki/front-proxy-client.key \
  --enable-aggregator-routing=true \
  --profiling=false
server=https://$api_host:$api_port
write_kubeconfig kubeconfig "$server" pki/ca.crt admin --token "$admin_token"
write_kubeconfig scheduler.kubeconfig "$server" pki/ca.crt kube-scheduler pki/scheduler.crt pki/scheduler.key
write_kubeconfig kube-proxy.kubeconfig "$server" pki/ca.crt kube-proxy pki/kube-proxy.crt pki/kube-proxy.key
export KUBECONFIG=$dir/kubeconfig
wait_component "$dir" kube-apiserver 60 kubectl get --raw /readyz

# --- kube-controller-manager: garbage collection, PV binding, namespace deletion, SA tokens ---
# Without real nodes, the tests' Node objects have no kubelet to renew them: the node
# lifecycle controller would mark them NotReady and taint them, and kube-scheduler would bind
# no holder pod there. Real nodes keep it.
controllers='*'
[ "$nodes" -gt 0 ] || controllers='*,-node-lifecycle-controller'
start_component "$dir" kube-controller-manager kube-controller-manager --kubeconfig "$dir/kubeconfig" \
  --controllers "$controllers" \
  --bind-address 127.0.0.1 --secure-port "$kcm_port" --leader-elect=false \
  --service-account-private-key-file pki/sa.key --root-ca-file pki/ca.crt \
  --use-service-account-credentials=false --profiling=false
wait_component "$dir" kube-controller-manager 60 curl -skf "https://127.0.0.1:$kcm_port/healthz"

# --- kube-scheduler: places Pods (the nodevirt agents' and controller's, later VMs' holders) ---
start_component "$dir" kube-scheduler kube-scheduler --kubeconfig "$dir/scheduler.kubeconfig" \
  --authentication-kubeconfig "$dir/scheduler.kubeconfig" \
  --authorization-kubeconfig "$dir/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$sched_port" --leader-elect=false --profiling=false
wait_component "$dir" kube-scheduler 60 curl -skf "https://127.0.0.1:$sched_port/healthz"

# --- the CRDs, from the code ---
nodevirt_bin=${NODEVIRT_BIN:-$REPO_ROOT/target/debug/nodevirt}
[ -x "$nodevirt_bin" ] || (cd "$REPO_ROOT" && cargo build -q)
"$nodevirt_bin" crds | kubectl apply -f - >/dev/null
kubectl wait --for condition=Established --timeout=60s \
  crd/virtualmachines.kubevirt.io crd/offlinevirtualmachines.kubevirt.io \
  crd/virtualmachinereplicasets.kubevirt.io crd/virtualmachinepresets.kubevirt.io >/dev/null

if [ "$nodes" -gt 0 ]; then
  # --- real nodes, each with its own libvirtd ---
  build_pause_image "$dir"
  export PAUSE_ARCHIVE=$dir/pause.tar
  for i in $(seq 1 "$nodes"); do
    log "starting node$i (containerd, kubelet, kube-proxy, libvirtd)"
    "$REPO_ROOT/hack/node-up.sh" "$dir" "node$i" "$i"
  done
else
  # --- libvirtd + virtlogd in a network namespace of their own ---
  export LIBVIRT_DEFAULT_URI=qemu:///system
  if virsh -c qemu:///system version >/dev/null 2>&1; then
    log "using the libvirtd that already answers on qemu:///system"
  else
    if [ -e /dev/kvm ]; then chgrp kvm /dev/kvm && chmod 660 /dev/kvm; fi
    ip netns add nodevirt 2>/dev/null || true
    ip -n nodevirt link set lo up
    echo nodevirt > netns
    start_component "$dir" virtlogd ip netns exec nodevirt virtlogd
    start_component "$dir" libvirtd ip netns exec nodevirt libvirtd
    wait_component "$dir" libvirtd 30 virsh -c qemu:///system version
  fi
  if ! virsh net-info nodevirt >/dev/null 2>&1; then
    virsh net-define "$REPO_ROOT/hack/libvirt-network.xml" >/dev/null
  fi
  # Read the output whole: with pipefail, `virsh | grep -q` fails when grep exits first.
  net_info=$(virsh net-info nodevirt)
  grep -q 'Active:.*yes' <<<"$net_info" || virsh net-start nodevirt >/dev/null
fi

cat > env <<ENV
export KUBECONFIG=$dir/kubeconfig
export LIBVIRT_DEFAULT_URI=qemu:///system
export NODEVIRT_CLUSTER_DIR=$dir
export PATH=$K8S_BIN:\$PATH
ENV
log "cluster $name is up: kube-apiserver $server, state in $dir"
log "stop it with: hack/cluster-down.sh $name"
cat env
