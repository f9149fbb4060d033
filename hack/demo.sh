#!/usr/bin/env bash
# From a fresh machine: a local cluster with two real nodes (hack/cluster-up.sh demo --nodes 2:
# control plane, and per node kubelet, kube-proxy, containerd and libvirtd in namespaces of its
# own), nodevirt deployed from its image with the real manifests (hack/deploy.sh: the agent
# DaemonSet and the controller Deployment, `kubectl apply -k`), the tiny guest on a
# PersistentVolumeClaim, and examples/ applied: the preset m1.small, testvm booted to Running
# with its IP, the OfflineVirtualMachine mongodb (stopped), the ReplicaSet replica of 2 VMs;
# each VM placed by kube-scheduler through its holder pod, which it shows.
# Stop it all with: hack/cluster-down.sh demo
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

"$REPO_ROOT/hack/install-deps.sh"
log "building nodevirt (release: a cold build takes several minutes on 2 cores)"
cargo build --locked --release --bin nodevirt
export NODEVIRT_BIN=$REPO_ROOT/target/release/nodevirt
export NODEVIRT_CLUSTER_DIR=/tmp/nodevirt-cluster/demo
log "starting the cluster: control plane and two nodes"
"$REPO_ROOT/hack/cluster-up.sh" demo --nodes 2 >/dev/null
source "$NODEVIRT_CLUSTER_DIR/env"
dir=$NODEVIRT_CLUSTER_DIR
kubectl get nodes -o wide

log "deploying nodevirt from its image (hack/deploy.sh: image, import, kubectl apply -k)"
"$REPO_ROOT/hack/deploy.sh" demo "$NODEVIRT_BIN" >/dev/null

# /tmp is shared by the local nodes, so a hostPath volume there is what shared storage would
# be on real nodes: the claim's image is the same on both.
log "the tiny guest on the PersistentVolumeClaim tiny-guest"
image=$("$REPO_ROOT/hack/guest-image.sh" | tail -n1)
mkdir -p "$dir/volumes/tiny-guest"
chmod 755 "$dir" "$dir/volumes" "$dir/volumes/tiny-guest"
cp --sparse=always "$image" "$dir/volumes/tiny-guest/disk.img"
kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolume
metadata: {name: tiny-guest}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteMany]
  storageClassName: ""
  hostPath: {path: $dir/volumes/tiny-guest}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: tiny-guest, namespace: default}
spec:
  accessModes: [ReadWriteMany]
  storageClassName: ""
  volumeName: tiny-guest
  resources: {requests: {storage: 1Gi}}
YAML

log "applying examples/ (a preset, a VM, an OfflineVirtualMachine, a ReplicaSet of 2)"
kubectl apply -f examples/

log "waiting for testvm to be Running with an IP (the guest boots under TCG: ~20-30 s)"
for _ in $(seq 300); do
  ip=$(kubectl get vm testvm -o jsonpath='{.status.interfaces[0].ipAddress}')
  phase=$(kubectl get vm testvm -o jsonpath='{.status.phase}')
  [ -n "$ip" ] && break
  [ "$phase" = Failed ] && { kubectl describe vm testvm; die "testvm failed"; }
  sleep 1
done
[ -n "$ip" ] || die "testvm has no IP after 5 minutes; see kubectl -n nodevirt logs daemonset/nodevirt-agent"
log "waiting for the ReplicaSet's 2 VMs to be Running"
kubectl wait vmrs/replica --for=jsonpath='{.status.readyReplicas}'=2 --timeout=300s >/dev/null
echo
kubectl get vms -o wide
echo
kubectl get ovms,vmrs,vmpreset
echo
echo "Each VM's holder pod, placed by kube-scheduler (kubectl get pods -l kubevirt.io=virt-launcher -o wide):"
kubectl get pods -l kubevirt.io=virt-launcher -o wide
echo
echo "testvm's placement, as its events tell it:"
kubectl get events --field-selector involvedObject.name=testvm,involvedObject.kind=VirtualMachine \
  -o custom-columns=REASON:.reason,MESSAGE:.message | grep -E 'REASON|SuccessfulCreate|SuccessfulHandOver|Started' | sed 's/^/  /' || true
echo
echo "nodevirt itself, one agent per node and the controller (kubectl get pods -n nodevirt -o wide):"
kubectl get pods -n nodevirt -o wide
echo
node=$(kubectl get vm testvm -o jsonpath='{.status.nodeName}')
uid=$(kubectl get vm testvm -o jsonpath='{.metadata.uid}')
echo "The guest's serial console on $node (/var/lib/nodevirt/vms/$uid/console.log):"
"$REPO_ROOT/hack/node-exec.sh" demo "$node" cat "/var/lib/nodevirt/vms/$uid/console.log" |
  grep '^nodevirt-guest\|^hello' | sed 's/^/  /' || true
echo
echo "The agent on $node through its admin socket (hack/node-exec.sh demo $node nodevirt admin vms):"
"$REPO_ROOT/hack/node-exec.sh" demo "$node" "$NODEVIRT_BIN" admin vms | sed 's/^/  /' || true
echo
node_ip=$(cat "$dir/nodes/$node/ip")
# The metrics port is HTTPS (a self-signed certificate: -k) and /metrics wants a token allowed
# by the ClusterRole nodevirt-metrics-reader, as a Prometheus's would be.
kubectl -n nodevirt create serviceaccount demo-scraper --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl create clusterrolebinding demo-scraper --clusterrole=nodevirt-metrics-reader \
  --serviceaccount=nodevirt:demo-scraper --dry-run=client -o yaml | kubectl apply -f - >/dev/null
token=$(kubectl -n nodevirt create token demo-scraper --duration=10m)
echo "A few lines of its metrics (curl -sk -H 'Authorization: Bearer <token of demo-scraper>' https://$node_ip:9186/metrics):"
metrics=$(curl -sk -H "Authorization: Bearer $token" "https://$node_ip:9186/metrics" || true)
grep -E '^kubevirt_vmi_(vcpu_seconds_total|memory_resident_bytes|network_receive_bytes_total)\{.*name="testvm"' \
  <<<"$metrics" | sed 's/^/  /' || true
cat <<MSG

Use it:   source $dir/env
          kubectl describe vm testvm; kubectl -n nodevirt logs daemonset/nodevirt-agent
          hack/node-exec.sh demo $node virsh list     (a command on a node)
          $NODEVIRT_BIN start mongodb; kubectl get vms -o wide -w
Stop it:  hack/cluster-down.sh demo
MSG
