#!/usr/bin/env bash
# Packs the tiny guest (hack/guest-image.sh) as an OCI image layout the way KubeVirt's
# registry disks are built: one gzip layer holding disk/disk.img. Cached next to the image;
# prints the layout folder as its last line. Push it with:
#   skopeo copy oci:DIR:latest docker://HOST:PORT/NAME:TAG
set -euo pipefail
source "$(dirname "$0")/lib.sh"

image=$("$REPO_ROOT/hack/guest-image.sh" | tail -n1)
out=$(dirname "$image")/oci
if [ -f "$out/index.json" ]; then
  echo "$out"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root/disk" "$work/oci/blobs/sha256"
cp "$image" "$work/root/disk/disk.img"
tar -C "$work/root" --owner=0 --group=0 --numeric-owner -cf "$work/layer.tar" disk
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
gzip -n -c "$work/layer.tar" > "$work/layer.tar.gz"
blob() { # stores a file as a blob; prints "digest size"
  local digest size
  digest=$(sha256sum "$1" | cut -d' ' -f1)
  size=$(stat -c %s "$1")
  cp "$1" "$work/oci/blobs/sha256/$digest"
  echo "$digest $size"
}
read -r layer_digest layer_size < <(blob "$work/layer.tar.gz")
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
  "$diff_id" > "$work/config.json"
read -r config_digest config_size < <(blob "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
  "$config_digest" "$config_size" "$layer_digest" "$layer_size" > "$work/manifest.json"
read -r manifest_digest manifest_size < <(blob "$work/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' \
  "$manifest_digest" "$manifest_size" > "$work/oci/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' > "$work/oci/oci-layout"
rm -rf "$out"
mv "$work/oci" "$out"
echo "$out"
