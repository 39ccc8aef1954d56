#!/usr/bin/env bash
# Seed corpus for a format's fuzzer: small images (512-byte clusters where
# the format has them) with data, zero ranges, snapshots, compression.
set -euo pipefail
fmt=$1 out=$2
V=build/vireo
rm -rf "$out"; mkdir -p "$out"
t=$(mktemp -d); trap 'rm -rf "$t"' EXIT
head -c 200000 /dev/urandom > "$t/data"
python3 -c "open('$t/src.raw','wb').write(open('$t/data','rb').read()[:12000] + bytes(20000) + b'\x55'*9000)"
truncate -s 128K "$t/src.raw"
case $fmt in
qcow2)
	$V img convert -f raw -O qcow2 -o cluster_size=512 "$t/src.raw" "$out/plain.qcow2" >/dev/null
	$V img convert -c -f raw -O qcow2 -o cluster_size=512 "$t/src.raw" "$out/zlib.qcow2" >/dev/null
	$V img convert -c -f raw -O qcow2 -o cluster_size=512,compression_type=zstd "$t/src.raw" "$out/zstd.qcow2" >/dev/null
	$V img convert -f raw -O qcow2 -o cluster_size=512,compat=0.10 "$t/src.raw" "$out/v2.qcow2" >/dev/null
	cp "$out/plain.qcow2" "$out/snap.qcow2"
	$V img snapshot -c s1 "$out/snap.qcow2"
	$V img create -f qcow2 -o cluster_size=512 -b plain.qcow2 -F qcow2 "$out/overlay.qcow2" >/dev/null
	;;
vpc)
	$V img convert -f raw -O vpc -o block_size=4K "$t/src.raw" "$out/dynamic.vhd" >/dev/null
	$V img convert -f raw -O vpc -o subformat=fixed "$t/src.raw" "$out/fixed.vhd" >/dev/null
	$V img create -f vpc -o block_size=4K -b dynamic.vhd "$out/diff.vhd" >/dev/null
	$V img convert -n -f raw -O vpc "$t/src.raw" "$out/diff.vhd" >/dev/null
	;;
vmdk)
	$V img convert -f raw -O vmdk "$t/src.raw" "$out/sparse.vmdk" >/dev/null
	$V img convert -f raw -O vmdk -o subformat=streamOptimized "$t/src.raw" "$out/stream.vmdk" >/dev/null
	;;
*)
	$V img convert -f raw -O "$fmt" "$t/src.raw" "$out/seed.$fmt" >/dev/null || true
	;;
esac
