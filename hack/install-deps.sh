#!/usr/bin/env bash
# Installs everything the tests and the demo need on a fresh Debian bookworm machine.
# Idempotent: apt runs only when a package is missing; Go builds run only when the
# binary for the pinned version is not yet under ~/.cache/nodevirt/bin/.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

APT_PACKAGES=(
  # libvirt + QEMU (TCG guests) and the tools the agent shells out to
  libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config
  qemu-system-x86 qemu-utils libxml2-utils
  # NoCloud ISO fallback and the tiny guest's boot image
  genisoimage xorriso syslinux syslinux-common mtools dosfstools busybox-static cpio kmod
  # libvirt's NAT network inside our own network namespace
  dnsmasq-base iproute2 iptables
  # certificates, registry for registryDisk tests, scripting
  openssl ca-certificates curl jq apache2-utils docker-registry skopeo
  # real kubelet nodes: container runtime, CNI plugins, the static pause binary, mount tools
  containerd runc containernetworking-plugins gcc libc6-dev util-linux conntrack ethtool socat
)

install_apt() {
  local missing=()
  local status
  for p in "${APT_PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# k8s.io/kubernetes replaces its staging modules with local folders, so it cannot be
# `go install`ed; hack/k8s/ is a wrapper module that pins each staging module instead.
# The control plane, kubectl, and what each real node runs (kubelet, kube-proxy).
K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)

build_k8s() {
  local missing=0
  for b in "${K8S_BINARIES[@]}"; do
    [ -x "$K8S_BIN/$b" ] || missing=1
  done
  [ $missing -eq 0 ] && return 0
  mkdir -p "$K8S_BIN"
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local ld="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean"
  done
  for b in "${K8S_BINARIES[@]}"; do
    [ -x "$K8S_BIN/$b" ] && continue
    log "go build $b $K8S_VERSION (a cold build takes many minutes)"
    (cd "$REPO_ROOT/hack/k8s" && CGO_ENABLED=0 go build -trimpath -ldflags "$ld" \
      -o "$K8S_BIN/$b.tmp" "k8s.io/kubernetes/cmd/$b")
    mv "$K8S_BIN/$b.tmp" "$K8S_BIN/$b"
  done
}

build_etcd() {
  [ -x "$ETCD_BIN/etcd" ] && return 0
  mkdir -p "$ETCD_BIN"
  log "go build etcd $ETCD_VERSION"
  (cd "$REPO_ROOT/hack/etcd" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" \
    -o "$ETCD_BIN/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$ETCD_BIN/etcd.tmp" "$ETCD_BIN/etcd"
}

# rustfmt and clippy run in hack/test.sh; a minimal rustup profile lacks them.
install_rust_components() {
  command -v rustup >/dev/null || return 0
  # Read the list whole: with pipefail, `rustup | grep -q` can fail when grep exits first.
  local installed
  installed=$(rustup component list --installed 2>/dev/null || true)
  grep -q '^clippy' <<<"$installed" || rustup component add clippy
  grep -q '^rustfmt' <<<"$installed" || rustup component add rustfmt
}

case "${1:-all}" in
  apt) install_apt ;;
  go) build_etcd; build_k8s ;;
  all) install_apt; install_rust_components; build_etcd; build_k8s ;;
  *) die "usage: $0 [apt|go|all]" ;;
esac
