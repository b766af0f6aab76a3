#!/usr/bin/env bash
# Build the runtime tests' guest: Debian's cloud kernel plus a busybox-static initramfs
# whose /init keeps writing sequence-numbered 4 KiB blocks to its disk (see init.sh).
#
# Usage: build.sh CACHE_DIR
# Prints the folder holding `vmlinuz` and `initrd.gz` on its last line of stdout.
# The result is cached under CACHE_DIR/<key>, the key being the package versions and the
# hash of this folder's scripts, so a second call is instant. Needs only apt (for
# `apt-get download` of the kernel package) and the installed busybox-static and
# qemu-guest-agent packages.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${1:?usage: build.sh CACHE_DIR}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"

# The package the metapackage depends on (e.g. linux-image-6.1.0-56-cloud-amd64).
kpkg_of() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}'; }
kpkg="$(kpkg_of)"
if [ -z "$kpkg" ]; then
  apt-get update -qq >&2
  kpkg="$(kpkg_of)"
fi
[ -n "$kpkg" ] || { echo "build.sh: cannot resolve linux-image-cloud-amd64" >&2; exit 1; }
kver="$(apt-cache policy "$kpkg" | awk '/Candidate:/{print $2; exit}')"
bbver="$(dpkg-query -W -f='${Version}' busybox-static)"
gaver="$(dpkg-query -W -f='${Version}' qemu-guest-agent 2>/dev/null || echo none)"
scripts="$(cat "$here"/build.sh "$here"/init.sh "$here"/fsfreeze-hook | sha256sum | cut -c1-12)"
key="$(printf '%s %s %s %s %s' "$kpkg" "$kver" "$bbver" "$gaver" "$scripts" | sha256sum | cut -c1-16)"
out="$cache/$key"

exec 9>"$cache/.lock"
flock 9
if [ -f "$out/done" ]; then
  echo "$out"
  exit 0
fi

work="$(mktemp -d "$cache/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download "$kpkg" >&2 2>/dev/null) || (cd "$work" && apt-get download "$kpkg" >&2)
dpkg -x "$work"/"$kpkg"_*.deb "$work/pkg"
kdir="$(ls -d "$work"/pkg/lib/modules/*)"

root="$work/root"
mkdir -p "$root"/{bin,sbin,dev,proc,sys,run,tmp,etc/qemu,lib/modules,usr/sbin}
cp /bin/busybox "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
# Load order matters: insmod does not resolve dependencies.
modules="scsi_common scsi_mod sd_mod virtio_ring virtio virtio_pci_legacy_dev
  virtio_pci_modern_dev virtio_pci virtio_blk virtio_scsi virtio_console vmw_pvscsi
  libata ata_piix button evdev"
: >"$root/modules.list"
for m in $modules; do
  f="$(find "$kdir/kernel" -name "$m.ko" -o -name "$m.ko.xz" | head -n1)"
  [ -n "$f" ] || { echo "build.sh: module $m missing from $kpkg" >&2; exit 1; }
  case "$f" in
    *.xz) xz -dc "$f" >"$root/lib/modules/$m.ko" ;;
    *) cp "$f" "$root/lib/modules/$m.ko" ;;
  esac
  echo "$m" >>"$root/modules.list"
done
install -m 0755 "$here/init.sh" "$root/init"
install -m 0755 "$here/fsfreeze-hook" "$root/etc/qemu/fsfreeze-hook"

# qemu-ga is dynamically linked: copy it with the libraries ldd names.
if [ -x /usr/sbin/qemu-ga ]; then
  cp /usr/sbin/qemu-ga "$root/usr/sbin/qemu-ga"
  for lib in $(ldd /usr/sbin/qemu-ga | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
fi

cp "$(ls "$work"/pkg/boot/vmlinuz-*)" "$work/vmlinuz"
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) >"$work/initrd.gz"
mkdir -p "$out"
mv "$work/vmlinuz" "$work/initrd.gz" "$out/"
printf '%s %s\nbusybox-static %s\nqemu-guest-agent %s\n' "$kpkg" "$kver" "$bbver" "$gaver" >"$out/versions"
touch "$out/done"
echo "$out"
