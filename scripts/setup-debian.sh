#!/usr/bin/env bash
# Installs vireo's build, test and benchmark dependencies on Debian 12 (DESIGN §4).
# The nested test host (tests/nested/) needs qemu-system-x86, qemu-system-common
# (virtiofsd), busybox-static and kmod, with apt-get, dpkg-deb and unshare from
# the base system; it downloads Debian's kernel package itself.
# The firmware tests boot seabios; --kernel through firmware needs
# qemu-system-data (linuxboot_dma.bin). tests/linux/mkdiskimage.sh (the Debian disk
# image) needs debootstrap, grub-pc-bin (GRUB for BIOS) and grub2-common
# (grub-install), fdisk and e2fsprogs; its
# test pings the guest (iputils-ping), serves its vNIC DHCP with dnsmasq (dnsmasq-base)
# and reads its journal off the disk with journalctl (systemd).
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
	build-essential clang pkg-config \
	libarchive-dev libcmocka-dev libjson-c-dev liburing-dev libmicrohttpd-dev libmnl-dev libgnutls28-dev \
	libnftables-dev libseccomp-dev libzstd-dev zlib1g-dev \
	python3-pytest qemu-utils qemu-system-x86 qemu-system-common seabios qemu-system-data \
	busybox-static cpio kmod iproute2 iputils-ping e2fsprogs nftables acpica-tools strace gdb \
	debootstrap grub-pc-bin grub2-common fdisk dnsmasq-base systemd >/dev/null
