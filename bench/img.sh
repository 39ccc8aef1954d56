#!/usr/bin/env bash
# vireo img vs qemu-img (DESIGN §7): convert throughput and random 4 KiB I/O
# through each format driver vs raw. Prints one markdown table row per figure
# (for docs/benchmarks.md). Usage: bench/img.sh [WORKDIR]   (needs ~3 GiB)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VIREO=$ROOT/build/vireo
W=${1:-$(mktemp -d /tmp/vireo-bench.XXXXXX)}
mkdir -p "$W"
trap 'rm -rf "$W"/*.raw "$W"/*.qcow2 "$W"/*.vmdk "$W"/*.vpc' EXIT
OPS=${OPS:-10000}

# 1 GiB, every other 64 KiB chunk random data (50% data), the rest holes.
python3 - "$W/src.raw" <<'PY'
import os, random, sys
r = random.Random(1)
with open(sys.argv[1], "wb") as f:
    f.truncate(1 << 30)
    block = os.urandom(1 << 20)
    for off in range(0, 1 << 30, 128 << 10):
        f.seek(off)
        i = r.randrange(0, (1 << 20) - (64 << 10))
        f.write(block[i:i + (64 << 10)])
PY
sync

best() {	# best wall time of 3 runs of "$@" (output synced), in seconds
	local b=999999 t0 t1
	for _ in 1 2 3; do
		rm -f "$W"/out.*
		sync
		t0=$(date +%s.%N)
		"$@" >/dev/null 2>&1
		sync
		t1=$(date +%s.%N)
		b=$(python3 -c "print(round(min($b, $t1 - $t0), 3))")
	done
	echo "$b"
}

row() { printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4"; }

echo "| figure | vireo | peer | ratio (vireo/peer, >1 = vireo better) |"
echo "|---|---|---|---|"
v=$(best "$VIREO" img convert -f raw -O qcow2 "$W/src.raw" "$W/out.qcow2")
q=$(best qemu-img convert -f raw -O qcow2 "$W/src.raw" "$W/out.qcow2")
row "convert raw→qcow2, 1 GiB, 50% data (s)" "$v" "$q (qemu-img)" \
	"$(python3 -c "print(f'{$q/$v:.2f}x')")"
qemu-img convert -f raw -O qcow2 "$W/src.raw" "$W/src.qcow2"
if "$VIREO" img --help 2>&1 | grep -q ' vmdk'; then
	v=$(best "$VIREO" img convert -f qcow2 -O vmdk "$W/src.qcow2" "$W/out.vmdk")
	q=$(best qemu-img convert -f qcow2 -O vmdk "$W/src.qcow2" "$W/out.vmdk")
	row "convert qcow2→vmdk, 1 GiB, 50% data (s)" "$v" "$q (qemu-img)" \
		"$(python3 -c "print(f'{$q/$v:.2f}x')")"
else
	row "convert qcow2→vmdk" "n/a: no vmdk driver in this build" "" ""
fi
v=$(best "$VIREO" img convert -c -f raw -O qcow2 "$W/src.raw" "$W/out.qcow2")
q=$(best qemu-img convert -c -f raw -O qcow2 "$W/src.raw" "$W/out.qcow2")
row "convert -c raw→qcow2 (zlib), 1 GiB (s)" "$v" "$q (qemu-img)" \
	"$(python3 -c "print(f'{$q/$v:.2f}x')")"

# Random 4 KiB I/O through the driver, 256 MiB fully allocated images, with
# O_DIRECT (-t none: how a VM disk runs) so page-cache state can't skew it.
head -c 256M /dev/urandom > "$W/io.raw"
qemu-img convert -f raw -O qcow2 "$W/io.raw" "$W/io.qcow2"
sync
iops() {	# best of 3
	local b=0 v
	for _ in 1 2 3; do
		v=$("$VIREO" img bench -t none "$@" | sed -n 's/.*: \([0-9]*\) IOPS/\1/p')
		[ "$v" -gt "$b" ] && b=$v
	done
	echo "$b"
}
FORMATS=$("$VIREO" img --help 2>&1 | sed -n 's/.*formats://p')
for fmt in qcow2 vpc vmdk; do
	case " $FORMATS " in *" $fmt "*) ;; *) continue ;; esac
	# vpc/vmdk: the layout vireo writes (VHD blocks with 4 KiB-aligned data)
	[ "$fmt" = qcow2 ] || "$VIREO" img convert -f raw -O "$fmt" "$W/io.raw" "$W/io.$fmt"
	for mode in read write; do
		w=""; [ $mode = write ] && w=-w
		r=$(iops -f raw -c "$OPS" -s 4K $w "$W/io.raw")
		c=$(iops -f "$fmt" -c "$OPS" -s 4K $w "$W/io.$fmt")
		row "random 4K $mode IOPS, $fmt vs raw driver" "$c ($fmt)" "$r (raw)" \
			"$(python3 -c "print(f'{$c/$r:.2f}x')")"
	done
done
# Allocating writes (page cache): each run starts from an empty image.
alloc() {
	local fmt=$1 b=0 v
	for _ in 1 2 3; do
		rm -f "$W/empty.$fmt"
		"$VIREO" img create -f "$fmt" "$W/empty.$fmt" 256M >/dev/null
		sync
		v=$("$VIREO" img bench -f "$fmt" -c "$OPS" -s 4K -w "$W/empty.$fmt" |
		    sed -n 's/.*: \([0-9]*\) IOPS/\1/p')
		[ "$v" -gt "$b" ] && b=$v
	done
	echo "$b"
}
r=$(alloc raw)
c=$(alloc qcow2)
row "random 4K allocating write IOPS, empty qcow2 vs sparse raw" "$c (qcow2)" "$r (raw)" \
	"$(python3 -c "print(f'{$c/$r:.2f}x')")"
