#!/usr/bin/env bash
# Builds a bootable Debian 12 disk image from Debian's packages only, for the
# disk-boot tests (docs/linux-guest-tests.md): OUT (default
# build/debian/debian12.qcow2), a qcow2 made with `vireo img convert`.
#   - one MBR partition, /dev/vda1, ext4, the root file system, made by
#     debootstrap (variant minbase) with systemd, udev, dbus (for
#     systemd-logind, which turns the ACPI power button into a clean
#     shutdown) and the cloud kernel linux-image-cloud-amd64;
#   - GRUB as the boot loader (Debian's grub-pc-bin: boot.img in the MBR,
#     core.img in the gap before the partition, /boot/grub), on the serial
#     console (GRUB's and the kernel's: console=ttyS0);
#   - vireo-system-up.service prints the kernel's log ("dmesg: " lines),
#     the virtio drivers' devices ("bound: "), the boot CPU's timer
#     ("clockevent: "), then VIREO-SYSTEM-UP and the
#     guest's clock (Unix seconds) on /dev/ttyS0 once multi-user.target is
#     reached; before the marker, when the VM has a NIC, what the host-side
#     peer 10.0.2.1 answered on TCP port 7777 ("peer: ..."); systemd-networkd
#     asks DHCP for the address of a NIC named en*.
# Rebuilt only when older than this script (a cache between runs: build/ is
# kept; exit status 75 when Debian's mirror cannot be reached). Needs root, a loop device, the
# Debian mirror and debootstrap, grub-pc-bin, fdisk (sfdisk) and e2fsprogs (scripts/setup-debian.sh). VIREO names the vireo binary
# (default build/vireo of this checkout), MIRROR the mirror (default: the
# one apt on this host uses).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin" LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-build/debian/debian12.qcow2}
vireo=${VIREO:-$here/../../build/vireo}
mkdir -p "$(dirname "$out")"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
work="$out.work"
size_mib=2048

if [ -f "$out" ] && [ "$out" -nt "$here/mkdiskimage.sh" ]; then
	echo "mkdiskimage: $out is up to date"
	exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "mkdiskimage: needs root (debootstrap, a loop device)" >&2; exit 1; }
[ -x "$vireo" ] || { echo "mkdiskimage: no vireo binary at $vireo (make first)" >&2; exit 1; }
if [ -z "${MIRROR:-}" ]; then
	MIRROR=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
		/etc/apt/sources.list.d/*.sources 2>/dev/null |
		grep -oE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' | awk '{print $2; exit}' || true)
	MIRROR=${MIRROR:-http://deb.debian.org/debian}
fi

loop="" disk_loop="" mnt="$work/mnt"
cleanup() {
	mountpoint -q "$mnt" && umount "$mnt"
	[ -n "$loop" ] && losetup -d "$loop"
	[ -n "$disk_loop" ] && losetup -d "$disk_loop"
	true
}
trap cleanup EXIT
start=$(date +%s)
rm -rf "$work" && mkdir -p "$work"
root="$work/root"

# Recommends stay out (debootstrap installs none); dbus is there for logind.
# Exit status 75 (EX_TEMPFAIL) when the mirror cannot be reached: the tests
# skip on it, and fail on any other error.
if ! debootstrap --variant=minbase --merged-usr \
	--include=systemd,systemd-sysv,udev,dbus,linux-image-cloud-amd64 \
	bookworm "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1; then
	tail -n 30 "$work/debootstrap.log" >&2
	if grep -qE 'Failed getting release file|Couldn.t download|Failed to connect|Temporary failure resolving' \
		"$work/debootstrap.log"; then
		echo "mkdiskimage: cannot download from Debian's mirror $MIRROR (no network? set MIRROR)" >&2
		exit 75
	fi
	echo "mkdiskimage: debootstrap failed (log above)" >&2
	exit 1
fi

echo vireo-debian > "$root/etc/hostname"
printf '/dev/vda1 / ext4 errors=remount-ro 0 1\n' > "$root/etc/fstab"
cat > "$root/etc/systemd/system/vireo-system-up.service" <<'EOF'
[Unit]
Description=Tell the serial console that multi-user.target is reached
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/vireo-system-up

[Install]
WantedBy=multi-user.target
EOF
# What the tests read on the serial console: the kernel's log (complaints
# about the virtual hardware), the virtio devices with a driver bound, then
# the marker with the guest's clock, which they compare with the host's.
# Through the kernel's log, one record a line (printk_devkmsg=on lifts the
# rate limit on writers): it reaches the serial console whatever
# serial-getty does, whose vhangup() of /dev/ttyS0 cuts off other writers.
cat > "$root/usr/local/sbin/vireo-system-up" <<'EOF'
#!/bin/bash
echo on > /proc/sys/kernel/printk_devkmsg
{
	dmesg | sed 's/^/dmesg: /'
	for dev in /sys/bus/virtio/drivers/*/virtio*; do
		echo "bound: ${dev#/sys/bus/virtio/drivers/}"
	done
	echo "clockevent: $(cat /sys/devices/system/clockevents/clockevent0/current_device)"
} | while IFS= read -r line; do
	printf '%s\n' "$line" > /dev/kmsg
done
# With a NIC: the host-side peer's answer on TCP (bash's /dev/tcp), once
# DHCP has given the NIC its address (tries for 60 s), and that address.
if ls /sys/class/net | grep -q '^en'; then
	reply="no answer"
	for try in $(seq 60); do
		got=$(timeout 10 bash -c 'exec 3<>/dev/tcp/10.0.2.1/7777 &&
			echo "vireo-guest $(hostname -I)" >&3 && read -r line <&3 &&
			echo "$line"' 2>/dev/null) && { reply=$got; break; }
		sleep 1
	done
	echo "peer: $reply (try $try, addresses $(hostname -I))" > /dev/kmsg
fi
# The clock read only now, when everything before it is out.
echo "VIREO-SYSTEM-UP at $(date +%s.%N)" > /dev/kmsg
EOF
chmod 755 "$root/usr/local/sbin/vireo-system-up"
cat > "$root/etc/systemd/network/50-vireo.network" <<'EOF'
[Match]
Name=en*

[Network]
DHCP=ipv4
EOF
chroot "$root" systemctl enable -q vireo-system-up.service systemd-networkd.service
# What a minimal image does without: apt's caches and lists, docs, man pages.
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/usr/share/doc/* \
	"$root"/usr/share/man/* "$root"/usr/share/locale/* "$root"/var/log/*.log

kernel=$(cd "$root/boot" && ls vmlinuz-*)
kver=${kernel#vmlinuz-}
uuid=$(cat /proc/sys/kernel/random/uuid)
mkdir -p "$root/boot/grub"
# GRUB's menu and messages on the serial console too; the echo tells the
# tests that GRUB, not another loader, started the kernel. `linux`, as
# update-grub writes it: the kernel's 32-bit entry, whose setup code does not
# mask the 8259 PIC that SeaBIOS left with its timer on vector 8. Linux must
# take the PIC over itself, which it does only if the ACPI tables describe a
# PC (PM1 blocks and an SCI: vireo's firmware-boot tables, vireo/acpipm.h).
cat > "$root/boot/grub/grub.cfg" <<EOF
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
menuentry "Debian GNU/Linux 12" {
	search --no-floppy --fs-uuid --set=root $uuid
	echo "vireo-debian: GRUB loads Linux $kver"
	linux /boot/vmlinuz-$kver root=UUID=$uuid ro console=ttyS0,115200
	initrd /boot/initrd.img-$kver
}
EOF

# One bootable partition from 1 MiB (the gap before it holds GRUB's
# core.img), filled from the directory with mke2fs -d. grub-install gets a
# loop device on the whole disk (for the MBR and the gap) and finds
# /boot/grub on a second one, on the partition, by the file system's UUID.
raw="$work/disk.raw"
truncate -s "${size_mib}M" "$raw"
echo 'start=2048, type=83, bootable' | sfdisk -q "$raw"
mkfs.ext4 -q -F -L root -U "$uuid" -E offset=$((2048 * 512)) -d "$root" "$raw" \
	$(((size_mib - 1) * 1024))k
disk_loop=$(losetup -f --show "$raw")
loop=$(losetup -f --show -o $((2048 * 512)) "$raw")
mkdir -p "$mnt"
mount "$loop" "$mnt"
grub-install --target=i386-pc --boot-directory="$mnt/boot" --modules="part_msdos ext2" \
	"$disk_loop" >"$work/grub-install.log" 2>&1 ||
	{ cat "$work/grub-install.log" >&2; exit 1; }
umount "$mnt"
losetup -d "$loop" && loop=""
losetup -d "$disk_loop" && disk_loop=""

"$vireo" img convert -f raw -O qcow2 "$raw" "$out.tmp"
mv "$out.tmp" "$out"
rm -rf "$work"
echo "mkdiskimage: $out (Debian 12, kernel $kver) in $(($(date +%s) - start)) s," \
	"$(du -m "$out" | cut -f1) MiB"
