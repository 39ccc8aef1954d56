#!/usr/bin/env bash
# Boot benchmark (DESIGN §7): the probe guest's hello scenario under vireo
# and under QEMU microvm (same ELF, same memory), N runs each, in one run.
# Prints medians and ratios of
#   - process start -> first "PROBE" line on the console;
#   - VMM memory overhead: RSS of the VMM process minus the RSS of its
#     guest-RAM mapping, sampled while the guest runs (cpuburn scenario).
# usage: bench/boot.sh [RUNS]   (from the repository root, after make)
set -euo pipefail
cd "$(dirname "$0")/.."
exec /usr/bin/python3 - "${1:-10}" <<'PY'
import os, statistics, subprocess, sys, time

runs = int(sys.argv[1])
MEM = "256M"
ELF = "build/guest/probe.elf"
VMMS = {
    "vireo": lambda cmd: ["build/vireo", "run", "--kernel", ELF, "--memory", MEM,
                          "--cmdline", cmd],
    "qemu": lambda cmd: ["qemu-system-x86_64", "-enable-kvm", "-M", "microvm", "-m", MEM,
                         "-nographic", "-nodefaults", "-serial", "stdio", "-no-reboot",
                         "-kernel", ELF, "-append", cmd,
                         "-device", "isa-debug-exit,iobase=0xf4,iosize=4"],
}

def time_to_first_line(argv):
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    for line in p.stdout:
        if line.startswith(b"PROBE"):
            t = time.monotonic() - t0
            break
    else:
        raise SystemExit(f"no PROBE line from {argv[0]}")
    p.stdout.read()
    p.wait()
    return t

def smaps_rss(pid):
    """(total RSS, RSS of the largest mapping = guest RAM) in KiB."""
    total, largest, cur_size, cur_rss = 0, 0, 0, 0
    best = (0, 0)
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5 and ":" not in parts[0]:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                cur_size = hi - lo
            elif parts[0] == "Rss:":
                rss = int(parts[1])
                total += rss
                if cur_size > best[0]:
                    best = (cur_size, rss)
    return total, best[1]

def overhead_kib(argv):
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    for line in p.stdout:
        if b"PROBE boot" in line:
            break
    time.sleep(0.5)  # the guest is spinning in cpuburn now
    total, guest = smaps_rss(p.pid)
    p.stdout.read()
    p.wait()
    return total - guest

res = {}
for name, argv in VMMS.items():
    starts = [time_to_first_line(argv("scenario=hello")) for _ in range(runs)]
    over = [overhead_kib(argv("scenario=cpuburn=1500")) for _ in range(max(3, runs // 3))]
    res[name] = (statistics.median(starts), statistics.median(over))
    print(f"{name:6s} start->first PROBE line: median {res[name][0]*1000:7.1f} ms   "
          f"VMM overhead: median {res[name][1]/1024:6.2f} MiB   ({runs} runs)")
v, q = res["vireo"], res["qemu"]
print(f"ratio vireo/qemu: start {v[0]/q[0]:.3f}x   overhead {v[1]/q[1]:.3f}x")
PY
