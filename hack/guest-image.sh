#!/usr/bin/env bash
# Builds the tiny test guest: a FAT disk image with syslinux, a Debian kernel and a busybox
# initrd (hack/guest/init) with the virtio, net, block, cdrom and iso9660 modules. No root
# mounts, no loop devices. Cached under ~/.cache/nodevirt/guest/<key>/; prints the image's
# path as its last line.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

KERNEL_PKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$KERNEL_PKG" ] || die "no kernel package found (run apt-get update)"
KERNEL_VERSION=$(apt-cache policy "$KERNEL_PKG" | awk '/Candidate:/ {print $2}')
key=$(cat "$0" "$REPO_ROOT/hack/guest/init" "$REPO_ROOT/hack/guest/udhcpc.script" /bin/busybox |
  sha256sum | cut -c1-12)
out=$NODEVIRT_CACHE/guest/$KERNEL_PKG-$KERNEL_VERSION-$key
image=$out/disk.img
if [ -f "$image" ]; then
  echo "$image"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work" # apt-get download drops privileges to _apt
log "guest image: kernel $KERNEL_PKG $KERNEL_VERSION"
(cd "$work" && apt-get download -qq "$KERNEL_PKG=$KERNEL_VERSION")
dpkg-deb -x "$work"/"$KERNEL_PKG"_*.deb "$work/kernel"
kver=${KERNEL_PKG#linux-image-}
moddir=$work/kernel/lib/modules/$kver/kernel

# Load order matters: each module after the ones it needs.
MODULES="drivers/virtio/virtio_ring.ko drivers/virtio/virtio.ko
drivers/virtio/virtio_pci_legacy_dev.ko drivers/virtio/virtio_pci_modern_dev.ko
drivers/virtio/virtio_pci.ko net/core/failover.ko drivers/net/net_failover.ko
drivers/net/virtio_net.ko drivers/block/virtio_blk.ko drivers/scsi/scsi_common.ko
drivers/scsi/scsi_mod.ko drivers/cdrom/cdrom.ko drivers/scsi/sr_mod.ko
crypto/crct10dif_common.ko crypto/crct10dif_generic.ko lib/crc-t10dif.ko lib/crc64.ko
crypto/crc64_rocksoft_generic.ko lib/crc64-rocksoft.ko block/t10-pi.ko drivers/scsi/sd_mod.ko drivers/scsi/virtio_scsi.ko drivers/ata/libata.ko
drivers/ata/libahci.ko drivers/ata/ahci.ko drivers/ata/ata_piix.ko fs/isofs/isofs.ko
drivers/block/floppy.ko fs/fat/fat.ko fs/fat/vfat.ko drivers/watchdog/watchdog.ko
drivers/watchdog/i6300esb.ko drivers/input/evdev.ko drivers/acpi/button.ko"

initrd=$work/initrd
mkdir -p "$initrd"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,lib/modules,etc,tmp}
cp /bin/busybox "$initrd/bin/busybox"
# `busybox --install -s` would link to the build folder; link to /bin/busybox instead.
for applet in $(/bin/busybox --list); do
  [ -e "$initrd/bin/$applet" ] || ln -s /bin/busybox "$initrd/bin/$applet"
done
for m in $MODULES; do
  src=$moddir/$m
  [ -f "$src" ] || src=$src.xz
  [ -f "$src" ] || { log "module $m is not in $KERNEL_PKG (built in?), skipped"; continue; }
  base=$(basename "$m")
  case "$src" in
    *.xz) xz -dc "$src" > "$initrd/lib/modules/$base" ;;
    *) cp "$src" "$initrd/lib/modules/$base" ;;
  esac
  echo "$base" >> "$initrd/modules.order"
done
install -m 0755 "$REPO_ROOT/hack/guest/init" "$initrd/init"
install -m 0755 "$REPO_ROOT/hack/guest/udhcpc.script" "$initrd/udhcpc.script"
(cd "$initrd" && find . | cpio -o -H newc --quiet | gzip -9) > "$work/initrd.gz"

cat > "$work/syslinux.cfg" <<CFG
DEFAULT linux
TIMEOUT 0
PROMPT 0
LABEL linux
  KERNEL vmlinuz
  APPEND initrd=initrd.gz console=ttyS0 quiet panic=-1
CFG
mkdir -p "$out"
rm -f "$work/disk.img"
mkfs.vfat -C -n NODEVIRT "$work/disk.img" 65536 >/dev/null
syslinux --install "$work/disk.img"
mcopy -i "$work/disk.img" "$work/kernel/boot/vmlinuz-$kver" ::vmlinuz
mcopy -i "$work/disk.img" "$work/initrd.gz" ::initrd.gz
mcopy -i "$work/disk.img" "$work/syslinux.cfg" ::syslinux.cfg
mv "$work/disk.img" "$image"
log "guest image built: $(du -h "$image" | cut -f1) on disk"
echo "$image"
