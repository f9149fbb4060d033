#!/usr/bin/env bash
# Builds nodevirt's OCI image without a container engine, reproducibly: one layer holding
# the binary, /pause (the holder pods' process), qemu-img and genisoimage with the shared
# libraries they load (copied from this host), CA certificates, /etc/passwd with root and
# nonroot (65532), an empty /tmp; no shell, no package manager. Same binary, same commit and
# same host packages give the same digest.
#
# Usage: hack/image.sh [BINARY] [--out DIR] [--push REGISTRY] [--no-check]
#   BINARY      default target/release/nodevirt (built with cargo if missing)
#   --out DIR   where nodevirt-<version>.oci.tar goes (default target/image)
#   --push R    also push both tags to R (host[:port]) with skopeo; plain HTTP on localhost
#   --no-check  skip running the image's programs in a chroot (the check needs root)
#
# Tags: nodevirt:<Cargo.toml version> and nodevirt:<git short commit>, the latter with
# "-dirty" when the work tree has changes (tracked or untracked), so that a commit tag always
# means exactly that commit's sources. The time in the tar and the config is the last commit's
# (SOURCE_DATE_EPOCH overrides it).
# Import:  ctr -n k8s.io image import ARCHIVE    (names it docker.io/library/nodevirt:<tag>)
# stdout:  manifest=sha256:..., ref=nodevirt:<tag> (two), compressed_bytes=, unpacked_bytes=,
#          and the archive path as the last line; progress goes to stderr.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

helper=$REPO_ROOT/hack/image/build_oci.py
binary= out=$REPO_ROOT/target/image registry= check=1
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=${2:?--out needs a folder}; shift 2 ;;
    --push) registry=${2:?--push needs a registry host[:port]}; shift 2 ;;
    --no-check) check=; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$binary" ] || die "one BINARY only (got $binary and $1)"; binary=$1; shift ;;
  esac
done
if [ -z "$binary" ]; then
  binary=$REPO_ROOT/target/release/nodevirt
  if [ ! -x "$binary" ]; then
    log "building $binary"
    (cd "$REPO_ROOT" && cargo build --locked --release --bin nodevirt) >&2
  fi
fi
[ -x "$binary" ] || die "$binary is not an executable file"
binary=$(realpath "$binary") # run below as a path, never looked up in PATH
[ -z "$check" ] || [ "$(id -u)" -eq 0 ] || die "the check chroots into the image: run as root, or pass --no-check"
for tool in python3 ldd gcc qemu-img genisoimage git ${registry:+skopeo}; do
  command -v "$tool" >/dev/null || die "$tool is missing (hack/install-deps.sh installs it)"
done

# [package] version, not the first "version =" of some dependency table.
version=$(awk '/^\[/ {pkg = ($0 == "[package]")} pkg && /^version *=/ {gsub(/[" ]/, ""); sub(/^version=/, ""); print; exit}' \
  "$REPO_ROOT/Cargo.toml")
[ -n "$version" ] || die "no [package] version in Cargo.toml"
revision=$(git -C "$REPO_ROOT" rev-parse HEAD)
commit_tag=$(git -C "$REPO_ROOT" rev-parse --short HEAD)
changes=$(git -C "$REPO_ROOT" status --porcelain)
if [ -n "$changes" ]; then
  commit_tag+=-dirty
  revision+=-dirty
fi
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$REPO_ROOT" log -1 --format=%ct)}
tags=("$version" "$commit_tag")
archive=$(mkdir -p "$out" && cd "$out" && pwd)/nodevirt-$version.oci.tar

work=$(mktemp -d "${TMPDIR:-/tmp}/nodevirt-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs

# The shared libraries a program loads, as ldd resolves them on this host (ldd runs the
# loader on the real file), and the loader itself; the vDSO has no file.
closure() {
  local listing
  listing=$(ldd "$1") || die "ldd $1 failed"
  [[ $listing != *"not found"* ]] || die "$1 needs a library this host lacks: $listing"
  awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$listing"
}

log "staging the root filesystem of nodevirt:$version ($binary)"
install -D -m 0755 "$binary" "$rootfs/usr/local/bin/nodevirt"
# What the VMs' holder pods run (src/api/holder/spec.rs: /pause --until-killed): it waits.
gcc -static -Os -s -o "$rootfs/pause" "$REPO_ROOT/hack/image/pause.c"
# Where the agent runs them: by name through PATH (src/storage/files.rs).
tools=(/usr/bin/qemu-img /usr/bin/genisoimage)
# Into a variable first: a failing ldd inside <(...) would go unnoticed.
listed=$({ closure "$binary"; for tool in "${tools[@]}"; do closure "$tool"; done; } | sort -u)
mapfile -t libs <<<"$listed"
# No dlopen() to cover: libvirt's client (remote and test drivers) and gnutls load no modules
# (LD_DEBUG=files virsh shows none); glibc 2.36 has nss files/dns built in; qemu-utils 7.2 has
# its block drivers built in; libmagic (genisoimage) reads its database for -hfs -magic only.
# libsasl2 would load plugins from /usr/lib/x86_64-linux-gnu/sasl2 only if libvirtd asked for
# SASL, which it does not on its unix socket.
python3 "$helper" stage "$rootfs" "${tools[@]}" "${libs[@]}" /lib64/ld-linux-x86-64.so.2 \
  /etc/ssl/certs/ca-certificates.crt
install -d -m 0755 "$rootfs/etc" "$rootfs/run" "$rootfs/var"
install -d -m 1777 "$rootfs/tmp"
# libvirt's client connects to /var/run/libvirt/libvirt-sock (built in); the pod mounts the
# node's /run/libvirt: as on Debian, /var/run is /run.
ln -s /run "$rootfs/var/run"
# The agent runs as root, the controller as nonroot (daemonset.yaml: runAsUser 65532).
printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin' \
  > "$rootfs/etc/passwd"
printf '%s\n' 'root:x:0:' 'nonroot:x:65532:' > "$rootfs/etc/group"
# Only what glibc has built in: nothing to dlopen (the host's also asks libnss_systemd).
printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' > "$rootfs/etc/nsswitch.conf"

log "packing $archive"
refs=()
for tag in "${tags[@]}"; do refs+=(--ref "$tag=docker.io/library/nodevirt:$tag"); done
packed=$(python3 "$helper" pack --rootfs "$rootfs" --archive "$archive" --epoch "$epoch" \
  --version "$version" --revision "$revision" "${refs[@]}")

# Runs what the pods run, from the unpacked archive (not from the staging folder), so that a
# library missing from the image fails the build here rather than on a node.
check_image() {
  local dir=$work/check expected got
  rm -rf "$dir"
  python3 "$helper" unpack "$archive" "$version" "$dir"
  # The device nodes every container runtime provides (qemu-img opens /dev/null).
  mkdir -p "$dir/dev"
  mknod -m 0666 "$dir/dev/null" c 1 3
  mknod -m 0666 "$dir/dev/zero" c 1 5
  mknod -m 0666 "$dir/dev/random" c 1 8
  mknod -m 0666 "$dir/dev/urandom" c 1 9
  got=$(chroot "$dir" /usr/local/bin/nodevirt --version) || die "nodevirt --version failed in the image"
  [ "$got" = "nodevirt $version" ] || die "nodevirt --version in the image says '$got', expected 'nodevirt $version'"
  chroot --userspec=65532:65532 "$dir" /usr/local/bin/nodevirt --version >/dev/null ||
    die "nodevirt does not run as nonroot (65532) in the image"
  cp "$REPO_ROOT/examples/vm.yaml" "$dir/tmp/vm.yaml"
  expected=$("$binary" render "$REPO_ROOT/examples/vm.yaml" --hypervisor qemu)
  got=$(chroot "$dir" /usr/local/bin/nodevirt render /tmp/vm.yaml --hypervisor qemu) ||
    die "nodevirt render failed in the image"
  [ "$got" = "$expected" ] || die "nodevirt render in the image differs from the same binary outside it"
  # The holder pods' process waits until killed (137), as nonroot.
  local rc=0
  timeout -s KILL 1 chroot --userspec=65532:65532 "$dir" /pause --until-killed || rc=$?
  [ "$rc" -eq 137 ] || die "/pause did not run as nonroot in the image (exit status $rc)"
  chroot "$dir" /usr/bin/qemu-img --version >/dev/null || die "qemu-img --version failed in the image"
  chroot "$dir" /usr/bin/genisoimage --version >/dev/null || die "genisoimage --version failed in the image"
  # And what the agent makes with them: an emptyDisk, an overlay on it, a cloud-init ISO.
  printf 'instance-id: check\n' > "$dir/tmp/meta-data"
  printf '#cloud-config\n' > "$dir/tmp/user-data"
  chroot "$dir" /usr/bin/qemu-img create -q -f qcow2 /tmp/empty.qcow2 1048576 &&
    chroot "$dir" /usr/bin/qemu-img create -q -f qcow2 -F qcow2 -b /tmp/empty.qcow2 /tmp/overlay.qcow2 &&
    chroot "$dir" /usr/bin/genisoimage -quiet -output /tmp/cidata.iso -volid cidata -joliet -rock \
      /tmp/user-data /tmp/meta-data ||
    die "qemu-img or genisoimage could not make a disk in the image"
  log "checked: nodevirt, qemu-img and genisoimage run in the image"
}
[ -z "$check" ] || check_image

if [ -n "$registry" ]; then
  tls=()
  case $registry in
    localhost|localhost:*|127.0.0.1|127.0.0.1:*|\[::1\]|\[::1\]:*) tls=(--dest-tls-verify=false) ;;
  esac
  for tag in "${tags[@]}"; do
    log "pushing $registry/nodevirt:$tag"
    skopeo copy --quiet "${tls[@]}" "oci-archive:$archive:$tag" "docker://$registry/nodevirt:$tag" >&2
  done
fi

log "built $archive"
grep '^manifest=' <<<"$packed"
for tag in "${tags[@]}"; do echo "ref=nodevirt:$tag"; done
grep -v '^manifest=' <<<"$packed"
echo "$archive"
