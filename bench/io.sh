#!/usr/bin/env bash
# I/O benchmark (DESIGN §7): the probe guest's blk_bench on a raw and a qcow2
# image and its net_bench through a tap, under vireo and under QEMU microvm
# in the same run, plus the rate limiters' accuracy (a 5 s transfer against
# a disk limit and a vNIC limit), and an O_DIRECT section on a file on the
# machine's real disk: vireo cache=none,aio=io_uring against QEMU
# cache=none with aio=io_uring and aio=threads, raw and qcow2 (preallocated, so
# that reads reach the disk). Needs root (tap in a network namespace).
# usage: bench/io.sh [SECONDS_PER_MODE]   (from the repository root, after make)
#   BENCH_DISK_DIR: where the O_DIRECT images go (default build/; not a tmpfs)
set -euo pipefail
cd "$(dirname "$0")/.."
exec /usr/bin/python3 - "${1:-2}" <<'PY'
import os, shutil, subprocess, sys, tempfile

secs = float(sys.argv[1])
ELF = "build/guest/probe.elf"
tmp = tempfile.mkdtemp(prefix="vireo-bench-")
ns = f"vireo-bench-{os.getpid()}"

def vireo(cmd, extra, netns=False):
    a = ["build/vireo", "run", "--kernel", ELF, "--memory", "256M", "--cmdline", cmd, *extra]
    return run(["ip", "netns", "exec", ns, *a] if netns else a)

def qemu(cmd, extra, netns=False):
    a = ["qemu-system-x86_64", "-enable-kvm", "-M", "microvm,pcie=on", "-m", "256M",
         "-nographic", "-nodefaults", "-serial", "stdio", "-no-reboot", "-kernel", ELF,
         "-append", cmd + " ecam=0xe0000000",
         "-device", "isa-debug-exit,iobase=0xf4,iosize=4", *extra]
    return run(["ip", "netns", "exec", ns, *a] if netns else a)

def run(argv):
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=600)
    rows = []
    for line in p.stdout.splitlines():
        if line.startswith("PROBE blk_bench ") or line.startswith("PROBE net_bench "):
            rows.append(dict(t.split("=", 1) for t in line.split()[2:] if "=" in t))
    if not rows:
        raise SystemExit(f"no results from {argv[0]}: {p.stdout[-500:]} {p.stderr[-500:]}")
    return rows

def image(fmt):
    path = f"{tmp}/disk.{fmt}"
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, path, "1G"], check=True)
    return path

ms = int(secs * 1000)
print(f"blk_bench, {secs:g} s per mode, queue depth 16 (IOPS; MB/s for 1 MiB modes)")
ours_raw = None
for fmt in ("raw", "qcow2"):
    o = vireo(f"scenario=blk_bench time_ms={ms}", ["--disk", f"path={image(fmt)},format={fmt}"])
    q = qemu(f"scenario=blk_bench time_ms={ms}",
             ["-drive", f"file={image(fmt)},if=none,id=d0,format={fmt}",
              "-device", "virtio-blk-pci,drive=d0"])
    for a, b in zip(o, q):
        key = "mbps" if a["bs"] == "1048576" else "iops"
        line = (f"  {fmt:5s} {a['mode']:9s} vireo {int(a[key]):8d}  qemu {int(b[key]):8d}  "
                f"ratio {int(a[key]) / max(1, int(b[key])):.2f}x")
        if fmt == "qcow2" and ours_raw:
            r = next(x for x in ours_raw if x["mode"] == a["mode"])
            line += f"  qcow2/raw (vireo) {int(a[key]) / max(1, int(r[key])):.2f}x"
        print(line, key)
    if fmt == "raw":
        ours_raw = o

HP = "/proc/sys/vm/nr_hugepages"

def reserve_hugepages(n):
    """Adds n 2 MiB pages to the pool; returns how many were added (0: none)."""
    try:
        before = int(open(HP).read())
        open(HP, "w").write(str(before + n))
        added = int(open(HP).read()) - before
    except OSError:
        return 0
    if added < n:
        release_hugepages(added)
        print(f"  (only {added} of {n} huge pages could be reserved: no --hugepages column)")
        return 0
    return added

def release_hugepages(n):
    if n:
        open(HP, "w").write(str(int(open(HP).read()) - n))

def direct_image(d, fmt):
    path = f"{d}/direct.{fmt}"
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, "-o", "preallocation=full", path,
                    "512M"], check=True)
    return path

def direct_section(ddir, huge):
    """vireo (its default RAM, and hugetlbfs RAM when huge) and QEMU on O_DIRECT images."""
    direct_raw = None
    # Guest RAM on 4 KiB pages makes a 1 MiB transfer 256 segments, which
    # the host's block layer cannot merge into its largest requests. vireo's
    # RAM comes in 2 MiB pages (src/vmm/memory.c) as QEMU's does; the run on
    # hugetlbfs pages (--hugepages) shows whether the default still gets them.
    for fmt in ("raw", "qcow2"):
        img = direct_image(ddir, fmt)
        cmd = f"scenario=blk_bench time_ms={ms}"
        o = vireo(cmd, ["--disk", f"path={img},format={fmt},cache=none,aio=io_uring"])
        oh = vireo(cmd, ["--hugepages", "--disk",
                         f"path={img},format={fmt},cache=none,aio=io_uring"]) if huge else o
        qu, qt = (qemu(cmd, ["-drive", f"file={img},if=none,id=d0,format={fmt},cache=none,"
                                       f"aio={aio}", "-device", "virtio-blk-pci,drive=d0"])
                  for aio in ("io_uring", "threads"))
        for a, h, b, c in zip(o, oh, qu, qt):
            key = "mbps" if a["bs"] == "1048576" else "iops"
            va, vh, vb, vc = int(a[key]), int(h[key]), int(b[key]), int(c[key])
            line = (f"  {fmt:5s} {a['mode']:9s} vireo {va:7d}  qemu io_uring {vb:7d} "
                    f"({va / max(1, vb):.2f}x)  qemu threads {vc:7d} ({va / max(1, vc):.2f}x)")
            if huge:
                line += f"  vireo --hugepages {vh:7d} ({vh / max(1, vb):.2f}x)"
            if fmt == "qcow2" and direct_raw:
                r = next(x for x in direct_raw if x["mode"] == a["mode"])
                line += f"  qcow2/raw {va / max(1, int(r[key])):.2f}x"
            print(line, key)
        if fmt == "raw":
            direct_raw = o
        os.unlink(img)

ddir = tempfile.mkdtemp(prefix="vireo-bench-direct-", dir=os.environ.get("BENCH_DISK_DIR", "build"))
if subprocess.run(["stat", "-f", "-c", "%T", ddir], capture_output=True,
                  text=True).stdout.strip() == "tmpfs":
    print(f"O_DIRECT section skipped: {ddir} is on tmpfs (set BENCH_DISK_DIR)")
else:
    print(f"O_DIRECT (cache=none) on {ddir}, 512 MiB preallocated images, queue depth 16, "
          f"{secs:g} s per mode (IOPS; MB/s for 1 MiB modes)")
    # Guest RAM on 4 KiB pages (vireo's memfd) makes a 1 MiB transfer 256
    # segments, which the host's block layer cannot merge into its largest
    # requests; QEMU's RAM has transparent huge pages. So vireo runs once
    # more on hugetlbfs pages (--hugepages), reserved here for the run.
    huge = reserve_hugepages(160)
    try:
        direct_section(ddir, huge)
    finally:  # a failed run must not keep 320 MiB of the host's RAM reserved
        release_hugepages(huge)
shutil.rmtree(ddir, ignore_errors=True)

print(f"disk rate limit 50 MB/s, sequential 1 MiB writes for 5 s")
o = vireo("scenario=blk_bench time_ms=5000",
          ["--disk", f"path={image('raw')},format=raw,bps=50M"])
w = next(x for x in o if x["mode"] == "seqwrite")
mb = int(w["ops"]) * 1048576 / (int(w["ms"]) / 1000) / 1048576
print(f"  measured {mb:.1f} MiB/s over {int(w['ms'])/1000:.1f} s (limit 50 MiB/s, burst 100 ms)")

subprocess.run(["ip", "netns", "add", ns], check=True)
try:
    subprocess.run(["ip", "netns", "exec", ns, "sh", "-c",
                    "ip tuntap add tap0 mode tap && ip link set tap0 up"], check=True)
    print(f"net_bench, transmit through a tap, {secs:g} s, 1514-byte frames")
    o = vireo(f"scenario=net_bench time_ms={ms}", ["--net", "tap=tap0"], netns=True)[0]
    q = qemu(f"scenario=net_bench time_ms={ms}",
             ["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
              "-device", "virtio-net-pci,netdev=n0,disable-legacy=on"], netns=True)[0]
    print(f"  vireo {o['pps']} pps {o['mbps']} MB/s   qemu {q['pps']} pps {q['mbps']} MB/s   "
          f"ratio {int(o['mbps']) / max(1, int(q['mbps'])):.2f}x")
    print("vNIC rate limit tx 10 MB/s, 5 s")
    o = vireo("scenario=net_bench time_ms=5000", ["--net", "tap=tap0,tx_bps=10M"], netns=True)[0]
    print(f"  measured {int(o['mbps']) / 1.048576:.1f} MiB/s (limit 10 MiB/s, burst 100 ms)")
finally:
    subprocess.run(["ip", "netns", "del", ns])
PY
