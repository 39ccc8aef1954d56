#!/bin/sh
# Boots the probe guest on the reference VMM (DESIGN §5).
# usage: guest/run-qemu.sh SMP "CMDLINE" [extra qemu args...]
# Exit status: QEMU's, i.e. (code << 1) | 1 after a debug-exit, 0 after S5.
set -eu
smp=${1:-1}
cmdline=${2:-scenario=hello}
shift 2 2>/dev/null || shift $#
exec timeout "${PROBE_TIMEOUT:-60}" qemu-system-x86_64 -enable-kvm \
	-M "${PROBE_MACHINE:-microvm}" -m "${PROBE_MEM:-256M}" -smp "$smp" \
	-nographic -nodefaults -serial stdio -no-reboot \
	-kernel "${PROBE_ELF:-build/guest/probe.elf}" -append "$cmdline" \
	-device isa-debug-exit,iobase=0xf4,iosize=4 "$@"
