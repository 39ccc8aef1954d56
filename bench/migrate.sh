#!/usr/bin/env bash
# Live migration benchmark (DESIGN §7, issue 12): the probe guest moved by
# vireo and by QEMU microvm in the same run, same ELF and memory, over a
# veth between two network namespaces (the hosts; loopback if not root),
# RUNS times each, for three guests:
#   idle    count=20: a line every 20 ms, nothing else written;
#   dirty   dirty=50 dirty_rate=50: 50 MiB rewritten at 50 MiB/s, all along;
#   touched touch=512: 512 MiB written once, then idle (throughput).
# vireo goes twice: plain (no token) and encrypted (a token: TLS-PSK);
# QEMU's stream is plain TCP. Both with a 300 ms downtime limit and no
# bandwidth cap. Prints medians of
#   - total: the migrate command to the source's end (vireo: its VMM exits
#     after the handover; QEMU: query-migrate says completed);
#   - downtime: each VMM's own figure (vireo: pause on the source to running
#     on the destination; QEMU: its `downtime`, stop to completion at the source);
#   - gap (idle, touched: a line every 20 ms): the guest's last line at the
#     source to its first at the destination as this script sees them, the
#     same measure for both (+-20 ms), and "runs there": the migrate command
#     to that first line;
#   - bytes: on the wire (vireo: the destination's bytes_received; QEMU:
#     ram transferred), and MB/s = bytes / total;
# and the ratios vireo/QEMU and encrypted/plain.
# usage: bench/migrate.sh [RUNS] [MEMORY]   (root for the namespaces; after make)
#   VIREO=PATH: another vireo binary (build/vireo by default), e.g. a copy of
#   the one before a change, to compare the two on the same loaded host.
#   GUESTS="idle touched": only those guests (all three by default).
set -euo pipefail
cd "$(dirname "$0")/.."
exec /usr/bin/python3 - "${1:-3}" "${2:-1G}" <<'PY'
import os, shutil, statistics, subprocess, sys, tempfile, threading, time
sys.path.insert(0, "bench")
from vmctl import Qmp, vireo_ctl  # noqa: E402

runs, MEM = int(sys.argv[1]), sys.argv[2]
ELF = "build/guest/probe.elf"
VIREO = os.environ.get("VIREO", "build/vireo")
WORK = {"idle": ("scenario=count=20", "PROBE count n=20 ", "PROBE count"),
        "dirty": ("scenario=dirty=50 dirty_rate=50", "PROBE dirty pass=3 ", "PROBE dirty"),
        "touched": ("scenario=touch=512 tick_ms=20 change_after_ms=100000", "PROBE touch filled",
                    "PROBE touch tick")}
tmp = tempfile.mkdtemp(prefix="vireo-bench-mig-")
pid = os.getpid()
NS = [f"vireo-bm-a-{pid}", f"vireo-bm-b-{pid}"]
ADDR = ["10.234.0.1", "10.234.0.2"]
use_ns = os.geteuid() == 0 and shutil.which("ip") is not None
ports = iter(range(4600, 4800))

def sh(*argv):
    subprocess.run(argv, check=True)

def hosts_up():
    for ns in NS:
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "link", "add", "vbm-a", "netns", NS[0], "type", "veth", "peer", "name", "vbm-b",
       "netns", NS[1])
    for ns, dev, ip in zip(NS, ("vbm-a", "vbm-b"), ADDR):
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")

def on(host, argv):
    return ["ip", "netns", "exec", NS[host], *argv] if use_ns else argv

def dst_addr():
    return ADDR[1] if use_ns else "127.0.0.1"

class Guest:
    """A VMM process; its stdout and stderr lines are collected by threads."""
    def __init__(self, argv):
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        self.lines, self.err, self.cond = [], [], threading.Condition()
        for f, out in ((self.p.stdout, self.lines), (self.p.stderr, self.err)):
            threading.Thread(target=self._read, args=(f, out), daemon=True).start()
    def _read(self, f, out):
        for line in f:
            with self.cond:
                out.append((time.monotonic(), line.decode(errors="replace")))
                self.cond.notify_all()
    def wait(self, prefix, timeout=120, err=False, after=0.0):
        """The host time of the first line starting with prefix (after `after`)."""
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for t, line in (self.err if err else self.lines):
                    if t > after and line.startswith(prefix):
                        return t
                if time.monotonic() > end or self.p.poll() is not None:
                    raise SystemExit(f"no {prefix!r} line: {(self.err if err else self.lines)[-3:]}")
                self.cond.wait(0.5)
    def last(self, prefix):
        with self.cond:
            return max(t for t, line in self.lines if line.startswith(prefix))
    def exited(self, timeout):
        try:
            self.p.wait(timeout)
            return time.monotonic()
        except subprocess.TimeoutExpired:
            raise SystemExit(f"the source did not end: {self.err[-3:]}")
    def kill(self):
        self.p.kill()
        self.p.wait()

def gap(src, dst, line, t_mig):
    """For the guests with a line every 20 ms: the last line at the source
    to the first at the destination, and the migrate command to that one."""
    if line == "PROBE dirty":
        return None, None
    t = dst.wait(line, after=0)
    return t - src.last(line), t - t_mig

def vireo_run(work, token):
    cmd, ready, line = WORK[work]
    port = next(ports)
    uri = f"tcp:{dst_addr()}:{port}"
    ssock, dsock = (os.path.join(tmp, f"{x}.sock") for x in "sd")
    extra = []
    if token:
        tok = os.path.join(tmp, "token")
        with open(tok, "w") as f:
            f.write("bench-" + os.urandom(16).hex())
        extra = ["--incoming-token-file", tok]
    dst = Guest(on(1, [VIREO, "run", "--incoming", uri, "--api-socket", dsock, *extra]))
    src = Guest(on(0, [VIREO, "run", "--kernel", ELF, "--memory", MEM, "--cmdline", cmd,
                       "--api-socket", ssock]))
    try:
        dst.wait("vireo: waiting for a migration", err=True)
        src.wait(ready)
        req = {"action": "migrate", "uri": uri, "max_downtime_ms": 300}
        if token:
            req["token"] = open(tok).read()
        t0 = time.monotonic()
        vireo_ctl(ssock, **req)
        total = src.exited(300) - t0
        if src.p.returncode != 0:
            raise SystemExit(f"vireo's migration failed: {src.err[-3:]}")
        g, there = gap(src, dst, line, t0)
        mig = vireo_ctl(dsock, action="info")["migration"]
        assert mig["encrypted"] == bool(token), mig
        return {"total": total, "downtime": mig["downtime_ms"] / 1000, "gap": g,
                "there": there, "bytes": mig["bytes_received"]}
    finally:
        src.kill()
        dst.kill()

def qemu_argv(qmp, *extra):
    return ["qemu-system-x86_64", "-enable-kvm", "-M", "microvm", "-m", MEM, "-nographic",
            "-nodefaults", "-serial", "stdio", "-no-reboot", "-kernel", ELF,
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-qmp",
            f"unix:{qmp},server=on,wait=off", *extra]

def qemu_run(work):
    cmd, ready, line = WORK[work]
    port = next(ports)
    sq, dq = (os.path.join(tmp, f"{x}.qmp") for x in "sd")
    dst = Guest(on(1, qemu_argv(dq, "-append", cmd, "-incoming", f"tcp:{dst_addr()}:{port}")))
    src = Guest(on(0, qemu_argv(sq, "-append", cmd)))
    try:
        Qmp(dq)  # up, listening
        src.wait(ready)
        q = Qmp(sq)
        q.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40, "downtime-limit": 300})
        t0 = time.monotonic()
        q.cmd("migrate", uri=f"tcp:{dst_addr()}:{port}")
        while (r := q.cmd("query-migrate")).get("status") not in ("completed", "failed"):
            time.sleep(0.002)
        total = time.monotonic() - t0
        if r["status"] != "completed":
            raise SystemExit(f"QEMU's migration failed: {r}")
        g, there = gap(src, dst, line, t0)
        return {"total": total, "downtime": r["downtime"] / 1000, "gap": g, "there": there,
                "bytes": r["ram"]["transferred"]}
    finally:
        src.kill()
        dst.kill()

try:
    if use_ns:
        hosts_up()
    res = {}
    works = os.environ.get("GUESTS", " ".join(WORK)).split()
    for work in works:
        for i in range(runs):
            for name, fn in (("vireo", lambda: vireo_run(work, False)),
                             ("vireo-tls", lambda: vireo_run(work, True)),
                             ("qemu", lambda: qemu_run(work))):
                res.setdefault((work, name), []).append(fn())
    MiB = 1 << 20
    link = "veth between two namespaces" if use_ns else "loopback"
    print(f"# {runs} runs each, {MEM} guests, over a {link}; medians")
    med = {}
    for (work, name), rs in res.items():
        m = {k: statistics.median(r[k] for r in rs) for k in ("total", "downtime", "bytes")}
        for k in ("gap", "there"):
            m[k] = statistics.median(r[k] for r in rs) if rs[0][k] is not None else None
        med[(work, name)] = m
        g = (f"gap {m['gap']*1000:6.1f} ms  runs there {m['there']*1000:8.1f} ms  "
             if m["gap"] is not None else " " * 41)
        print(f"{work:8s} {name:9s} total {m['total']*1000:8.1f} ms  downtime "
              f"{m['downtime']*1000:6.1f} ms  {g}bytes {m['bytes']/MiB:8.1f} MiB  "
              f"{m['bytes']/m['total']/1e6:7.1f} MB/s  (downtimes "
              + "/".join(f"{r['downtime']*1000:.0f}" for r in rs) + ")")
    for work in works:
        v, t, q = med[(work, "vireo")], med[(work, "vireo-tls")], med[(work, "qemu")]
        r = lambda a, b: f"{a/b:.3f}x" if b else "n/a"
        print(f"{work:8s} vireo/qemu: total {r(v['total'], q['total'])}  downtime "
              f"{r(v['downtime'], q['downtime'])}  bytes {r(v['bytes'], q['bytes'])}"
              + (f"  gap {r(v['gap'], q['gap'])}  runs there {r(v['there'], q['there'])}"
                 if v["gap"] is not None else "")
              + f"   tls/plain: total {r(t['total'], v['total'])}  MB/s "
              f"{r(t['bytes']/t['total'], v['bytes']/v['total'])}")
finally:
    if use_ns:
        for ns in NS:
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
    shutil.rmtree(tmp, ignore_errors=True)
PY
