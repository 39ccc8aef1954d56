#!/bin/sh
# The "net" scenario on QEMU: a tap (MTU 9000, IPv6 off) in a fresh network
# namespace, tests/net_echo.py echoing on it, QEMU's virtio-net-pci on it.
# Needs root. usage: guest/run-net-qemu.sh "CMDLINE" [extra -device options]
# e.g. guest/run-net-qemu.sh "scenario=net ecam=0xe0000000 n=64" ,host_mtu=9000
set -eu
here=$(dirname "$0")
cmdline=$1
devopts=${2:-}
ns=vireo-probe-$$
ip netns add "$ns"
trap 'kill $echo_pid 2>/dev/null; ip netns del "$ns"' EXIT
ip netns exec "$ns" sh -c 'ip tuntap add tap0 mode tap &&
	sysctl -qw net.ipv6.conf.tap0.disable_ipv6=1 &&
	ip link set tap0 mtu 9000 up'
ip netns exec "$ns" python3 "$here/../tests/net_echo.py" tap0 --timeout "${PROBE_TIMEOUT:-60}" &
echo_pid=$!
sleep 0.3
PROBE_MACHINE=${PROBE_MACHINE:-microvm,pcie=on} ip netns exec "$ns" "$here/run-qemu.sh" 1 "$cmdline" \
	-netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
	-device "virtio-net-pci,netdev=n0,disable-legacy=on,mac=52:54:00:12:34:56$devopts"
