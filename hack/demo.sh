#!/usr/bin/env bash
# From a fresh machine: a local control plane and libvirtd (hack/cluster-up.sh demo), the
# node agent for node "node1" and the controller, the tiny guest on a PersistentVolumeClaim,
# and examples/ applied: the preset m1.small, testvm booted to Running with its IP, the
# OfflineVirtualMachine mongodb (stopped), the ReplicaSet replica of 2 VMs.
# Stop it all with: hack/cluster-down.sh demo
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

"$REPO_ROOT/hack/install-deps.sh"
log "building nodevirt"
cargo build --locked --release -q
export NODEVIRT_BIN=$REPO_ROOT/target/release/nodevirt
export NODEVIRT_CLUSTER_DIR=/tmp/nodevirt-cluster/demo
"$REPO_ROOT/hack/cluster-up.sh" demo >/dev/null
source "$NODEVIRT_CLUSTER_DIR/env"
dir=$NODEVIRT_CLUSTER_DIR

log "installing the agent's RBAC (daemonset.yaml) and a Node, as a kubelet would register it"
kubectl apply -f daemonset.yaml >/dev/null
kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Node
metadata: {name: node1, labels: {kubernetes.io/hostname: node1}}
status:
  capacity: {cpu: "2", memory: 8Gi, pods: "110"}
  allocatable: {cpu: "2", memory: 8Gi, pods: "110"}
YAML

log "the tiny guest on the PersistentVolumeClaim tiny-guest"
image=$("$REPO_ROOT/hack/guest-image.sh" | tail -n1)
mkdir -p "$dir/volumes/tiny-guest" "$dir/state"
chmod 755 "$dir" "$dir/volumes" "$dir/volumes/tiny-guest" "$dir/state"
cp --sparse=always "$image" "$dir/volumes/tiny-guest/disk.img"
kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolume
metadata: {name: tiny-guest}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  storageClassName: ""
  hostPath: {path: $dir/volumes/tiny-guest}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: tiny-guest, namespace: default}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: ""
  volumeName: tiny-guest
  resources: {requests: {storage: 1Gi}}
YAML

# Bound to the Node, as a DaemonSet Pod's token is: the admission policy in daemonset.yaml
# lets the agent change only its own node's VMs, and refuses tokens bound to no node.
log "starting the agent for node1, with its ServiceAccount's token bound to node1"
kubectl config view --raw --minify > "$dir/agent.kubeconfig"
KUBECONFIG=$dir/agent.kubeconfig kubectl config set-credentials admin \
  --token="$(kubectl -n nodevirt create token nodevirt-agent --duration=24h \
    --bound-object-kind Node --bound-object-name node1)" >/dev/null
"$NODEVIRT_BIN" agent --node-name node1 --kubeconfig "$dir/agent.kubeconfig" \
  --metrics-addr 127.0.0.1:9186 \
  --hypervisor "${NODEVIRT_HYPERVISOR:-qemu}" --network nodevirt --state-dir "$dir/state" \
  >"$dir/logs/agent.log" 2>&1 &
echo $! > "$dir/pids/nodevirt.agent"

log "starting the controller, with its ServiceAccount's token"
kubectl config view --raw --minify > "$dir/controller.kubeconfig"
KUBECONFIG=$dir/controller.kubeconfig kubectl config set-credentials admin \
  --token="$(kubectl -n nodevirt create token nodevirt-controller --duration=24h)" >/dev/null
"$NODEVIRT_BIN" controller --kubeconfig "$dir/controller.kubeconfig" \
  >"$dir/logs/controller.log" 2>&1 &
echo $! > "$dir/pids/nodevirt.controller"

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
[ -n "$ip" ] || die "testvm has no IP after 5 minutes; see $dir/logs/agent.log"
echo
kubectl get vms -o wide
echo
kubectl get ovms,vmrs,vmpreset
echo
uid=$(kubectl get vm testvm -o jsonpath='{.metadata.uid}')
echo "The guest's serial console ($dir/state/vms/$uid/console.log):"
grep '^nodevirt-guest\|^hello' "$dir/state/vms/$uid/console.log" | sed 's/^/  /'
echo
echo "The agent's view through its admin socket (nodevirt admin vms):"
"$NODEVIRT_BIN" admin vms | sed 's/^/  /' || true
echo
echo "A few lines of the agent's metrics (curl -s 127.0.0.1:9186/metrics):"
metrics=$(curl -s 127.0.0.1:9186/metrics || true)
grep -E '^kubevirt_vmi_(vcpu_seconds_total|memory_resident_bytes|network_receive_bytes_total)\{.*name="testvm"' \
  <<<"$metrics" | sed 's/^/  /' || true
cat <<MSG

Use it:   source $dir/env
          kubectl describe vm testvm; virsh list; virsh console default_testvm
          $NODEVIRT_BIN start mongodb; kubectl get vms -w
Stop it:  hack/cluster-down.sh demo
MSG
