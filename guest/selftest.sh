#!/bin/sh
# Runs every probe scenario on QEMU microvm (the reference, DESIGN §5) and
# checks the PROBE lines and exit status. usage: guest/selftest.sh
set -u
run=$(dirname "$0")/run-qemu.sh
fail=0

# check SMP CMDLINE WANT_RC PATTERN... (each an extended regex, all must match)
check() {
	smp=$1 cmdline=$2 want=$3
	shift 3
	out=$("$run" "$smp" "$cmdline" ${QEMU_EXTRA:-} 2>/dev/null)
	rc=$?
	ok=1
	[ "$rc" = "$want" ] || ok=0
	for pat in "$@"; do
		printf '%s\n' "$out" | grep -Eq "$pat" || ok=0
	done
	if [ $ok = 1 ]; then
		echo "ok   smp=$smp $cmdline"
	else
		echo "FAIL smp=$smp $cmdline (rc=$rc, want $want)"
		printf '%s\n' "$out" | sed 's/^/     /'
		fail=1
	fi
}

check 2 "scenario=hello" 0 '^PROBE banner=vireo-probe$' '^PROBE mem_mib=256$' '^PROBE cpus=2$'
check 1 "scenario=cpus" 0 '^PROBE cpus_up=1$'
check 2 "scenario=cpus" 0 '^PROBE cpu_up apic_id=1$' '^PROBE cpus_up=2$'
check 8 "scenario=cpus" 0 '^PROBE cpu_up apic_id=7$' '^PROBE cpus_up=8$'
check 1 "scenario=cpuburn=200" 0 '^PROBE burn_ms=200 iterations=[1-9][0-9]*$'
check 1 "scenario=exit=5" 11 '^PROBE exit=5$'
check 1 "scenario=exit exit=0" 1 '^PROBE exit=0$'
check 1 "scenario=bogus" 3 '^PROBE error=unknown-scenario'
check 1 "scenario=fault=pf" 7 '^PROBE fault vector=14 ' '^PROBE fault_addr=0x100000000000$'
check 1 "scenario=hello rsdp=scan" 0 'rsdp_from=scan' '^PROBE cpus=1$'
check 1 "scenario=serial_irq" 0 '^PROBE serial_irqs=60 chars=59 '
# probe.bzimage through QEMU's real-mode setup path (startup_32)
PROBE_ELF=${PROBE_BZIMAGE:-build/guest/probe.bzimage} check 2 "scenario=hello" 0 \
	'^PROBE boot boot_protocol=2.12 .*entry=linux32$' '^PROBE mem_mib=256$' '^PROBE cpus=2$'
PROBE_ELF=${PROBE_BZIMAGE:-build/guest/probe.bzimage} check 2 "scenario=cpus" 0 '^PROBE cpus_up=2$'
PROBE_MACHINE=microvm,pcie=on check 1 "scenario=pci ecam=0xe0000000" 0 \
	'^PROBE pci dev=00:00.0 id=1b36:0008 class=060000$' '^PROBE pci_count=1$'

# virtio (issue 4): microvm,pcie=on, BARs assigned by the probe itself
export PROBE_MACHINE=microvm,pcie=on
disk=$(mktemp /tmp/probe-disk.XXXXXX)
exp=$(mktemp /tmp/probe-exp.XXXXXX)
trap 'rm -f "$disk" "$exp"' EXIT
blk="-drive file=$disk,if=none,id=d0,format=raw,discard=unmap -device virtio-blk-pci,drive=d0,serial=probe0,disable-legacy=on"
for irq in poll msix; do
	rm -f "$disk"; truncate -s 64M "$disk"
	sum=$(python3 "$(dirname "$0")/blk_expected.py" 7 300 131072 "$exp")
	QEMU_EXTRA=$blk check 1 "scenario=blk ecam=0xe0000000 irq=$irq seed=7 n=300" 0 \
		"^PROBE blk capacity=131072 serial=probe0 writes=300 reads=300 mismatches=0 $sum flush=ok discard=ok discard_reads=zero write_zeroes=ok$" \
		"^PROBE blk_stats irq=$irq "
	if cmp -s "$disk" "$exp"; then echo "ok   blk image matches the layout (irq=$irq)"
	else echo "FAIL blk image differs from the layout (irq=$irq)"; fail=1; fi
done
QEMU_EXTRA=$blk check 1 "scenario=blk_bench ecam=0xe0000000 time_ms=200" 0 \
	'^PROBE blk_bench mode=randread bs=4096 qd=16 ops=[1-9]' '^PROBE blk_bench_done .* errors=0$'
for irq in poll msix; do
	QEMU_EXTRA="-device virtio-rng-pci,disable-legacy=on" check 1 "scenario=rng ecam=0xe0000000 irq=$irq" 0 \
		'^PROBE rng bytes=65536 distinct=256$'
done
QEMU_EXTRA="-device virtio-balloon-pci,disable-legacy=on" check 1 \
	"scenario=balloon ecam=0xe0000000 balloon_mib=64 deflate=1" 0 \
	'^PROBE balloon target_pages=16384 actual_pages=16384$' '^PROBE balloon_deflate pages=16384 actual_pages=0$'
QEMU_EXTRA="$blk -device virtio-rng-pci,disable-legacy=on -device virtio-balloon-pci,disable-legacy=on
	-netdev user,id=n0 -device virtio-net-pci,netdev=n0,disable-legacy=on" check 1 \
	"scenario=hostile ecam=0xe0000000" 0 '^PROBE hostile_devices=4$' \
	'^PROBE hostile dev=blk result=needs_reset cases=14 .* recovered=14$' '^PROBE hostile dev=net .*cases=14 .* recovered=14$' \
	'^PROBE hostile dev=rng .*cases=14 .* recovered=14$' '^PROBE hostile dev=balloon .*cases=14 .* recovered=14$'
if [ "$(id -u)" = 0 ]; then
	for irq in poll msix; do
		out=$("$(dirname "$0")/run-net-qemu.sh" "scenario=net ecam=0xe0000000 n=100 irq=$irq" ,host_mtu=9000 2>/dev/null)
		if printf '%s\n' "$out" | grep -q '^PROBE net mac=52:54:00:12:34:56 sent=100 received=100 mismatches=0$'; then
			echo "ok   net irq=$irq"
		else
			echo "FAIL net irq=$irq"; printf '%s\n' "$out" | sed 's/^/     /'; fail=1
		fi
	done
else
	echo "skip net (needs root for the tap namespace)"
fi
exit $fail
