#!/usr/bin/env bash
# Linux boot benchmark (DESIGN §7): Debian's kernel with the test kit's
# initramfs (tests/linux/mkinitramfs.sh), the same memory and vCPUs, on vireo
# and on QEMU (-M microvm, pc and q35, each with -kernel, -cpu host), N runs
# each, in one run. Prints medians and ratios of
#   - process start -> the first userspace line (/init's "LINUX userspace=1");
#   - process start -> process exit (the guest powers off);
#   - the VMM's memory beside guest RAM (RSS minus the guest-RAM mapping's),
#     sampled while the guest waits for its power button;
#   - KVM's exit counts per boot (debugfs kvm/: exits, io_exits, mmio_exits,
#     halt_exits, irq_exits, nested page faults where KVM counts them).
# Unmodified Linux needs hardware virtualization: on a host without it the
# benchmark runs itself in the nested test host (tests/nested/l1-run), where
# absolute times mean little (TCG) and only the ratios count.
#
# bench/linux-boot.sh disk [RUNS] boots the Debian disk image instead
# (tests/linux/mkdiskimage.sh, built first as root: SeaBIOS, GRUB, systemd),
# 512 MiB, 1 vCPU, virtio-blk on a qcow2 overlay, and reports process start ->
# the serial login prompt on vireo (--firmware bios.bin) and QEMU (-M pc with
# the same SeaBIOS; -M microvm with its SeaBIOS build, /usr/share/seabios/bios-microvm.bin),
# and when each boot stage's first line came (firmware, GRUB, kernel, systemd).
# usage: bench/linux-boot.sh [disk] [RUNS] [MEMORY_MIB] [CPUS]   (after make)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=kernel
if [ "${1:-}" = disk ]; then mode=disk; shift; fi
runs=${1:-5} mem=${2:-128} cpus=${3:-1}
if [ $mode = disk ]; then
	# Built or found up to date (the nested test host's checkout is read-only).
	grep -qw -e vmx -e svm /proc/cpuinfo && [ -f build/debian/debian12.qcow2 ] ||
		tests/linux/mkdiskimage.sh build/debian/debian12.qcow2
else
	[ -f build/linux/initrd.img ] || tests/linux/mkinitramfs.sh build/linux >/dev/null
fi
if ! grep -qw -e vmx -e svm /proc/cpuinfo; then
	args=("$runs" "$mem" "$cpus")
	[ $mode = disk ] && args=(disk "$runs")
	exec tests/nested/l1-run -t 3600 -- bench/linux-boot.sh "${args[@]}"
fi
# KVM's counters and trace events: the exit counts, and a stalled boot's report
mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug 2>/dev/null || true
[ $mode = disk ] && exec /usr/bin/python3 bench/disk-boot.py "$runs"
exec /usr/bin/python3 - "$runs" "$mem" "$cpus" <<'PY'
import os, socket, statistics, subprocess, sys, tempfile, time
sys.path.insert(0, "bench")
from kvmstat import STATS, kvm_stats

runs, mem, cpus = (int(a) for a in sys.argv[1:4])
KERNEL, INITRD = "build/linux/vmlinuz", "build/linux/initrd.img"
CMDLINE = "console=ttyS0 panic=-1 quiet"
TMP = tempfile.mkdtemp(prefix="lb-")

def vireo(extra, sock):
    return ["build/vireo", "run", "--kernel", KERNEL, "--initrd", INITRD, "--memory",
            f"{mem}M", "--cpus", str(cpus), "--cmdline", f"{CMDLINE} {extra}".strip(),
            "--api-socket", sock]

def qemu(machine):
    def argv(extra, sock):
        return ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-M", machine,
                "-m", f"{mem}M", "-smp", str(cpus), "-nographic", "-nodefaults",
                "-serial", "stdio", "-no-reboot", "-kernel", KERNEL, "-initrd", INITRD,
                "-append", f"{CMDLINE} {extra}".strip(),
                "-qmp", f"unix:{sock},server=on,wait=off"]
    return argv

VMMS = {"vireo": vireo, "qemu-microvm": qemu("microvm"), "qemu-pc": qemu("pc"),
        "qemu-q35": qemu("q35")}

def boot(argv_of):
    """(seconds to the first userspace line, seconds to exit, KVM's counts).
    KVM sums its debugfs counters over the VMs that exist, so they are read
    while the guest is still there, at /init's last line: the only VM then."""
    sock = os.path.join(TMP, "s")
    t0 = time.monotonic()
    p = subprocess.Popen(argv_of("", sock), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    first, stats = None, {}
    for line in p.stdout:
        if first is None and b"LINUX userspace=1" in line:
            first = time.monotonic() - t0
        if b"LINUX done=1" in line:
            stats = kvm_stats()
    p.wait()
    end = time.monotonic() - t0
    if first is None:
        raise SystemExit(f"no userspace line from {argv_of('', sock)[0]} (exit {p.returncode})")
    return first, end, stats

def smaps_rss(pid):
    """(total RSS, RSS of the largest mapping = guest RAM) in KiB."""
    total, size, best = 0, 0, (0, 0)
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and ":" not in parts[0]:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                size = hi - lo
            elif parts[0] == "Rss:":
                total += int(parts[1])
                if size > best[0]:
                    best = (size, int(parts[1]))
    return total, best[1]

def overhead_kib(argv_of):
    sock = os.path.join(TMP, "m")
    p = subprocess.Popen(argv_of("vireo.test=powerbutton", sock), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    for line in p.stdout:
        if b"powerbutton ready" in line:
            break
    total, guest = smaps_rss(p.pid)
    p.kill()
    p.wait()
    return total - guest

# Round robin, so that a change in the machine's load falls on every VMM.
all_boots = {name: [] for name in VMMS}
for _ in range(runs):
    for name, argv_of in VMMS.items():
        all_boots[name].append(boot(argv_of))
res = {}
for name, argv_of in VMMS.items():
    boots = all_boots[name]
    first = statistics.median(b[0] for b in boots)
    end = statistics.median(b[1] for b in boots)
    exits = {k: int(statistics.median(b[2].get(k, 0) for b in boots)) for k in STATS
             if any(k in b[2] for b in boots)}
    over = overhead_kib(argv_of)
    res[name] = (first, end, over, exits)
    print(f"{name:13s} to userspace {first:6.2f} s   to exit {end:6.2f} s   "
          f"VMM memory {over / 1024:6.1f} MiB   exits {exits}", flush=True)
v = res["vireo"]
for name in VMMS:
    if name != "vireo":
        q = res[name]
        print(f"vireo/{name}: to userspace {v[0] / q[0]:.2f}x   to exit {v[1] / q[1]:.2f}x   "
              f"VMM memory {v[2] / q[2]:.3f}x")
print(f"({runs} runs each, {mem} MiB, {cpus} vCPU, medians)")
PY
