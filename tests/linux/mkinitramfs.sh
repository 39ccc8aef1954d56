#!/usr/bin/env bash
# Builds the Linux guest kit (DESIGN §5): Debian's unmodified
# linux-image-cloud-amd64 kernel and a busybox initramfs with the virtio
# modules, into OUT (default build/linux):
#   OUT/vmlinuz          the kernel, as Debian ships it
#   OUT/initrd.img       busybox + modules + /init (tests/linux/init)
# both rebuilt only when older than this script, /init, busybox or the kernel
# package (a new one is fetched when the package lists name a newer version).
# The kernel package is downloaded and unpacked here, never installed on the
# host. Needs apt-get, dpkg-deb, cpio and busybox-static (scripts/setup-debian.sh).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-build/linux}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work="$out/work"

# The versioned package behind the metapackage, e.g. linux-image-6.1.0-56-cloud-amd64.
pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$pkg" ] || { echo "mkinitramfs: cannot resolve linux-image-cloud-amd64 (run apt-get update)" >&2; exit 1; }
if [ ! -f "$out/$pkg.stamp" ]; then
	rm -rf "$work" && mkdir -p "$work/deb"
	(cd "$work/deb" && apt-get download -qq "$pkg" 2>/dev/null)
	dpkg-deb -x "$work"/deb/*.deb "$work/kernel"
	# The package ships no modules.dep: depmod makes it, as installing would.
	depmod -b "$work/kernel" "$(ls "$work/kernel/lib/modules")"
	touch "$out/$pkg.stamp"
fi
# Nothing is rewritten when the kit is newer than all its inputs: the nested
# test host runs the Linux tests in a read-only copy of the checkout.
fresh=1
for f in "$out/vmlinuz" "$out/initrd.img"; do
	for in in "$here/mkinitramfs.sh" "$here/init" /bin/busybox "$out/$pkg.stamp"; do
		[ "$f" -nt "$in" ] || fresh=0
	done
done
if [ $fresh = 1 ]; then
	echo "mkinitramfs: $out/vmlinuz and $out/initrd.img are up to date ($pkg)"
	exit 0
fi

kver=$(ls "$work/kernel/lib/modules")
moddir="$work/kernel/lib/modules/$kver"
cp "$work/kernel/boot/vmlinuz-$kver" "$out/vmlinuz"

# Modules in load order: each wanted module after its dependencies (modules.dep).
wanted="virtio virtio_ring virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk
        failover net_failover virtio_net virtio_balloon virtio-rng button evdev 8021q"
order=()
add_module() {
	local path deps dep
	path=$(awk -F: -v m="/$1.ko" 'index($1, m) && substr($1, length($1) - length(m) + 1) == m {print $1; exit}' "$moddir/modules.dep")
	[ -n "$path" ] || { echo "mkinitramfs: module $1 not in $kver" >&2; exit 1; }
	for p in "${order[@]}"; do [ "$p" = "$path" ] && return 0; done
	deps=$(awk -F: -v p="$path" '$1 == p {print $2}' "$moddir/modules.dep")
	for dep in $deps; do add_module "$(basename "$dep" .ko)"; done
	order+=("$path")
}
for m in $wanted; do add_module "$m"; done

root="$work/initramfs"
rm -rf "$root" && mkdir -p "$root"/{bin,dev,proc,sys,tmp,lib/modules}
cp /bin/busybox "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
for p in "${order[@]}"; do
	cp "$moddir/$p" "$root/lib/modules/"
	basename "$p" >> "$root/lib/modules/load-order"
done
install -m 0755 "$here/init" "$root/init"
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet | gzip -9) > "$out/initrd.img"
echo "mkinitramfs: $out/vmlinuz ($kver) and $out/initrd.img (${#order[@]} modules)"
