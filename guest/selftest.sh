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
	out=$("$run" "$smp" "$cmdline" 2>/dev/null)
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
PROBE_MACHINE=microvm,pcie=on check 1 "scenario=pci ecam=0xe0000000" 0 \
	'^PROBE pci dev=00:00.0 id=1b36:0008 class=060000$' '^PROBE pci_count=1$'
exit $fail
