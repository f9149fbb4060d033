#!/usr/bin/env bash
# Deploys nodevirt on a local cluster with real nodes (hack/cluster-up.sh NAME --nodes N) the
# way an operator deploys it on any cluster:
#   1. builds the image (hack/image.sh, from BINARY or the release build);
#   2. makes it available to every node: there is no registry the nodes pull from here, so
#      the archive is imported into each node's containerd (`ctr -n k8s.io image import`),
#      as `docker.io/library/nodevirt:<tag>`; on a real cluster, push it to your registry
#      instead (hack/image.sh --push REGISTRY) and set newName in kustomization.yaml;
#   3. `kubectl apply -k` of a kustomization whose only resource is this repository's own
#      (kustomization.yaml + daemonset.yaml, unchanged) and which sets the image's tag to the
#      commit's, so every new build rolls out;
#   4. waits for the rollouts: an agent Ready on every node, the controller's two replicas.
# Prints how long step 3 -> 4 took.
# Usage: hack/deploy.sh NAME [BINARY]
set -euo pipefail
source "$(dirname "$0")/lib.sh"

[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 NAME [BINARY]"
dir=$(cluster_dir "$1")
[ -d "$dir/nodes" ] && [ -n "$(ls "$dir/nodes")" ] ||
  die "cluster $1 has no nodes; start it with hack/cluster-up.sh $1 --nodes 2"
export KUBECONFIG=$dir/kubeconfig

log "building the image (hack/image.sh ${2:-})"
built=$("$REPO_ROOT/hack/image.sh" ${2:+"$2"})
archive=$(tail -n 1 <<<"$built")
# The commit tag: the second ref image.sh prints (the first is the version's).
refs=$(sed -n 's/^ref=//p' <<<"$built")
tag=$(tail -n 1 <<<"$refs"); tag=${tag#*:}
log "image $(sed -n 's/^manifest=//p' <<<"$built") with tags $(tr '\n' ' ' <<<"$refs")"

for nd in "$dir"/nodes/*/; do
  node=$(basename "$nd")
  log "importing it into $node's containerd"
  "$REPO_ROOT/hack/node-exec.sh" "$dir" "$node" \
    ctr -a /run/containerd/containerd.sock -n k8s.io image import "$archive" >/dev/null
done

overlay=$dir/deploy
mkdir -p "$overlay"
cat >"$overlay/kustomization.yaml" <<YAML
# Written by hack/deploy.sh: the repository's manifests, with the image of this build.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- $(realpath --relative-to="$overlay" "$REPO_ROOT")
images:
- name: nodevirt
  newTag: "$tag"
# The local cluster's nodes share this machine's few cores: a holder pod asks 100m per guest
# core (--cpu-ratio), not a whole CPU, or two VMs would fill a node.
patches:
- target: {kind: Deployment, name: nodevirt-controller}
  patch: |-
    - op: add
      path: /spec/template/spec/containers/0/args/-
      value: --cpu-ratio=0.1
YAML
log "kubectl apply -k (nodevirt:$tag)"
started=$(date +%s.%N)
kubectl apply -k "$overlay" >/dev/null
log "waiting for the agent on every node and the controller's replicas"
kubectl -n nodevirt rollout status daemonset/nodevirt-agent --timeout=300s >&2
kubectl -n nodevirt rollout status deployment/nodevirt-controller --timeout=300s >&2
ready=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" \
  "$started" "$(date +%s.%N)")
log "nodevirt:$tag deployed: apply -> all agents and controllers ready in ${ready}s"
kubectl -n nodevirt get pods -o wide >&2
echo "$tag"
