#!/bin/sh
# Runs the virtio scenarios on QEMU (the reference, DESIGN §5) and on vireo
# and compares their PROBE lines, minus the fields that may differ (irq mode
# and counters, rng bytes' crc, hostile per-case results).
# usage: guest/parity.sh [VIREO_BINARY]   (default build/vireo)
set -u
vireo=${1:-build/vireo}
elf=${PROBE_ELF:-build/guest/probe.elf}
dir=$(mktemp -d /tmp/probe-parity.XXXXXX)
trap 'rm -rf "$dir"' EXIT
fail=0

strip() {
	grep '^PROBE ' | grep -v -e '^PROBE boot ' -e '^PROBE hostile dev=[a-z]* case=' |
		sed -E 's/ (irq|irqs|kicks|tx_kicks|crc|ms|status|features)=[^ ]*//g;
			s/ result=[a-z_]* cases/ cases/; s/ (needs_reset|used|ignored|failed)=[0-9]*//g'
}

# compare NAME CMDLINE
compare() {
	for vm in qemu vireo; do
		rm -f "$dir/disk.img"; truncate -s 64M "$dir/disk.img"
		if [ $vm = qemu ]; then
			PROBE_MACHINE=microvm,pcie=on PROBE_ELF=$elf "$(dirname "$0")/run-qemu.sh" 1 \
				"$2 ecam=0xe0000000" \
				-drive file="$dir/disk.img",if=none,id=d0,format=raw,discard=unmap \
				-device virtio-blk-pci,drive=d0,serial=probe0,disable-legacy=on \
				-device virtio-rng-pci,disable-legacy=on \
				-device virtio-balloon-pci,disable-legacy=on 2>/dev/null
		else
			timeout 120 "$vireo" run --kernel "$elf" --cmdline "$2" \
				--disk path="$dir/disk.img",format=raw,serial=probe0 --rng --balloon 2>/dev/null
		fi | strip > "$dir/$vm.out"
		cp "$dir/disk.img" "$dir/$vm.img"
	done
	if cmp -s "$dir/qemu.out" "$dir/vireo.out" && cmp -s "$dir/qemu.img" "$dir/vireo.img"; then
		echo "same $1"
	else
		echo "DIFF $1"; diff "$dir/qemu.out" "$dir/vireo.out" | sed 's/^/     /'
		cmp -s "$dir/qemu.img" "$dir/vireo.img" || echo "     disk images differ"
		fail=1
	fi
}

for irq in poll msix; do
	compare "blk irq=$irq" "scenario=blk irq=$irq seed=3 n=200"
	compare "blk irq=$irq event_idx=1" "scenario=blk irq=$irq event_idx=1 seed=4 n=200"
	compare "blk irq=$irq indirect=1" "scenario=blk irq=$irq indirect=1 seed=5 n=200"
	compare "rng irq=$irq" "scenario=rng irq=$irq"
	compare "balloon irq=$irq" "scenario=balloon irq=$irq balloon_mib=32 deflate=1"
done
compare "hostile" "scenario=hostile"
exit $fail
