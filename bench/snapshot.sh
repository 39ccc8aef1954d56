#!/usr/bin/env bash
# Snapshot benchmark (DESIGN §7, issue 11): the probe guest's touch scenario
# (1 GiB guest, 512 MiB written, then 10 MiB changed) under vireo and under
# QEMU microvm in the same run, RUNS times each. Prints medians of
#   - snapshot time: pause to resume, around vireo's `snapshot` action or
#     QEMU's `stop`, `migrate "exec:cat > FILE"` (until completed), `cont`;
#   - snapshot size: disk blocks of the files;
#   - restore time: process start (`vireo run --restore DIR`, `qemu ...
#     -incoming "exec:cat FILE"` and `cont` as soon as it is in) to the
#     guest's first line after it, RESTORES times per run (the first one
#     also checks every page; the median of all is printed);
#   - vireo's incremental snapshot after the 10 MiB change against its full one
#     (and the restore of that chain).
# The full snapshot asks for dirty tracking ("track_dirty"), which the
# incremental one needs; the restores do not (no --track-dirty).
# usage: bench/snapshot.sh [RUNS] [MEMORY] [RESTORES]   (from the repository root, after make)
set -euo pipefail
cd "$(dirname "$0")/.."
exec /usr/bin/python3 - "${1:-3}" "${2:-1G}" "${3:-5}" <<'PY'
import os, shutil, statistics, subprocess, sys, tempfile, threading, time
sys.path.insert(0, "bench")
from vmctl import Qmp, vireo_ctl  # noqa: E402

runs, MEM, RESTORES = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ELF = "build/guest/probe.elf"
CMD = "scenario=touch=512 change_mib=10 change_after_ms=2000 tick_ms=5"
tmp = tempfile.mkdtemp(prefix="vireo-bench-snap-")

class Guest:
    """A VMM process whose stdout lines are collected by a thread."""
    def __init__(self, argv):
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL)
        self.lines, self.cond = [], threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
    def _read(self):
        for line in self.p.stdout:
            with self.cond:
                self.lines.append((time.monotonic(), line.decode(errors="replace")))
                self.cond.notify_all()
    def wait(self, prefix, timeout=120):
        """Seconds from process start to the first line starting with prefix."""
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for t, line in self.lines:
                    if line.startswith(prefix):
                        return t - self.t0, line
                if time.monotonic() > end or self.p.poll() is not None:
                    raise SystemExit(f"no {prefix!r} line: {self.lines[-3:]}")
                self.cond.wait(1)
    def kill(self):
        self.p.kill()
        self.p.wait()

def blocks(path):
    if os.path.isfile(path):
        return os.stat(path).st_blocks * 512
    return sum(os.stat(os.path.join(path, f)).st_blocks * 512 for f in os.listdir(path))

def restores(argv, qmp=None):
    """RESTORES restores of one snapshot: each time taken, the first checked."""
    return [restore(argv, qmp=qmp, check=i == 0) for i in range(RESTORES)]

def restore(argv, prefix="PROBE touch tick", qmp=None, check=True):
    g = Guest(argv)
    if qmp:
        # The source was stopped: QEMU's destination stays paused once the
        # state is in (status "paused" after "inmigrate") until `cont`.
        q = Qmp(qmp)
        while q.cmd("query-status")["status"] == "inmigrate":
            time.sleep(0.001)
        q.cmd("cont")
    t, _ = g.wait(prefix)
    # Taken before the change, the guest goes on to make it and checks every
    # page (an increment was taken after that).
    line = g.wait("PROBE touch changed")[1] if check else " bad=0"
    g.kill()
    if " bad=0" not in line:
        raise SystemExit(f"restored guest found bad pages: {line}")
    return t

def vireo_run(i):
    sock, full, inc = (os.path.join(tmp, f"v{i}.{x}") for x in ("sock", "full", "inc"))
    g = Guest(["build/vireo", "run", "--kernel", ELF, "--memory", MEM, "--cmdline", CMD,
               "--api-socket", sock])
    g.wait("PROBE touch filled")
    t0 = time.monotonic()
    vireo_ctl(sock, action="pause")
    vireo_ctl(sock, action="snapshot", dir=full, track_dirty=True)
    vireo_ctl(sock, action="resume")
    t_full = time.monotonic() - t0
    g.wait("PROBE touch changed")
    t0 = time.monotonic()
    vireo_ctl(sock, action="pause")
    vireo_ctl(sock, action="snapshot", dir=inc, incremental=True)
    vireo_ctl(sock, action="resume")
    t_inc = time.monotonic() - t0
    g.kill()
    r = {"snap": t_full, "size": blocks(full), "inc_snap": t_inc, "inc_size": blocks(inc),
         "restore": restores(["build/vireo", "run", "--restore", full]),
         "inc_restore": restore(["build/vireo", "run", "--restore", inc], check=False)}
    shutil.rmtree(full)
    shutil.rmtree(inc)
    return r

def qemu_argv(qmp, *extra):
    return ["qemu-system-x86_64", "-enable-kvm", "-M", "microvm", "-m", MEM, "-nographic",
            "-nodefaults", "-serial", "stdio", "-no-reboot", "-kernel", ELF, "-append", CMD,
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-qmp",
            f"unix:{qmp},server=on,wait=off", *extra]

def qemu_run(i):
    qmp, state = os.path.join(tmp, f"q{i}.qmp"), os.path.join(tmp, f"q{i}.state")
    g = Guest(qemu_argv(qmp))
    g.wait("PROBE touch filled")
    q = Qmp(qmp)
    # No bandwidth cap: a snapshot to a file, not a live migration.
    q.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
    t0 = time.monotonic()
    q.cmd("stop")
    q.cmd("migrate", uri=f"exec:cat > {state}")
    while (st := q.cmd("query-migrate").get("status")) not in ("completed", "failed"):
        time.sleep(0.002)
    q.cmd("cont")
    t = time.monotonic() - t0
    if st != "completed":
        raise SystemExit("QEMU's migration to a file failed")
    g.kill()
    r = {"snap": t, "size": blocks(state),
         "restore": restores(qemu_argv(qmp + ".in", "-incoming", f"exec:cat {state}"),
                             qmp=qmp + ".in")}
    os.unlink(state)
    return r

try:
    res = {"vireo": [], "qemu": []}
    for i in range(runs):
        res["vireo"].append(vireo_run(i))
        res["qemu"].append(qemu_run(i))
    def median(vals):
        return statistics.median(x for v in vals for x in (v if isinstance(v, list) else [v]))
    med = {k: {f: median(r[f] for r in v) for f in v[0]} for k, v in res.items()}
    v, q = med["vireo"], med["qemu"]
    MiB = 1 << 20
    for name, m in med.items():
        print(f"{name:6s} snapshot {m['snap']*1000:8.1f} ms  size {m['size']/MiB:7.1f} MiB  "
              f"restore {m['restore']*1000:7.1f} ms   ({runs} runs x {RESTORES} restores, {MEM}, "
              "512 MiB touched)")
    print(f"vireo  incremental after 10 MiB: snapshot {v['inc_snap']*1000:.1f} ms  size "
          f"{v['inc_size']/MiB:.1f} MiB  restore (chain) {v['inc_restore']*1000:.1f} ms")
    print(f"ratio vireo/qemu: snapshot {v['snap']/q['snap']:.3f}x  size {v['size']/q['size']:.3f}x  "
          f"restore {v['restore']/q['restore']:.3f}x")
    print(f"ratio incremental/full (vireo): snapshot {v['inc_snap']/v['snap']:.3f}x  "
          f"size {v['inc_size']/v['size']:.3f}x")
finally:
    shutil.rmtree(tmp, ignore_errors=True)
PY
