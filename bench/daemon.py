#!/usr/bin/python3
"""Host-manager benchmarks (issue 5, DESIGN §7), through the daemon's API:

  fairness  two cpuburn VMs pinned to one host CPU, weights 2:1: CPU ratio;
            a VM capped at 25 % of a CPU (cpu_max) alone on another CPU: its use;
            an uncapped VM next to a spinning one, equal weights, one CPU: its share.
  scale     16 probe VMs of 64 MiB at once (each capped at 5 % so that they do not
            hog the host), all paused and resumed through the API; memory overhead
            of the daemon and of each VMM.

CPU use is the VMM's cgroup CPU time (cpuacct.usage or cpu.stat) over the window.
usage: bench/daemon.py [fairness|scale|all] [SECONDS]   (repository root, after make;
needs /dev/kvm and a writable cgroup hierarchy for fairness)
"""
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from daemonutil import Daemon  # noqa: E402


def cpu_ns(d, name):
    return d.vm(name)["cpu_ns"]


def measure(d, names, seconds):
    """Fraction of one CPU each VM used over `seconds` (after a warm-up)."""
    time.sleep(0.5)
    t0 = time.monotonic()
    c0 = {n: cpu_ns(d, n) for n in names}
    time.sleep(seconds)
    dt = time.monotonic() - t0
    return {n: (cpu_ns(d, n) - c0[n]) / 1e9 / dt for n in names}


def run_pair(d, a, b, seconds):
    for n in (a, b):
        d.ok("POST", f"/vms/{n}/start")
    use = measure(d, (a, b), seconds)
    for n in (a, b):
        d.ok("POST", f"/vms/{n}/stop", {"force": True})
    return use


def fairness(d, seconds):
    if d.ok("GET", "/vms")["cgroup"] == "none":
        print("fairness: skipped: no usable cgroup hierarchy")
        return
    cpus = sorted(os.sched_getaffinity(0))
    c0, c1 = str(cpus[0]), str(cpus[-1])
    d.create("heavy", cpu_weight=200, cpu_pin=[c0])
    d.create("light", cpu_weight=100, cpu_pin=[c0])
    use = run_pair(d, "heavy", "light", seconds)
    ratio = use["heavy"] / use["light"]
    print(f"weights 2:1 on CPU {c0}: heavy {use['heavy']*100:.1f} %  light {use['light']*100:.1f} %"
          f"  ratio {ratio:.2f} (target 2.00 +- 10 %: {'ok' if abs(ratio - 2) <= 0.2 else 'MISSED'})")

    d.create("capped", cpu_max=25, cpu_pin=[c1])
    d.ok("POST", "/vms/capped/start")
    use = measure(d, ("capped",), seconds)["capped"]
    d.ok("POST", "/vms/capped/stop", {"force": True})
    print(f"cpu_max 25 % on CPU {c1}: {use*100:.1f} % (target 25 +- 5: "
          f"{'ok' if abs(use - 0.25) <= 0.05 else 'MISSED'})")

    d.create("spinner", cpu_pin=[c0])
    d.create("neighbour", cpu_pin=[c0])
    use = run_pair(d, "spinner", "neighbour", seconds)
    share = use["neighbour"] / (use["spinner"] + use["neighbour"])
    print(f"equal weights on CPU {c0}: spinner {use['spinner']*100:.1f} %  neighbour "
          f"{use['neighbour']*100:.1f} %  neighbour's share {share*100:.1f} % (target 50 +- 5: "
          f"{'ok' if abs(share - 0.5) <= 0.05 else 'MISSED'})")


def mem_kib(pid):
    """smaps_rollup figures (KiB): Rss, Pss, Pss_Anon, Pss_File, Pss_Shmem."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem"):
                out[k] = int(v.split()[0])
    return out


def scale(d, n=16):
    names = [f"s{i:02d}" for i in range(n)]
    t0 = time.monotonic()
    for name in names:
        d.create(name, cpu_max=5)
        d.ok("POST", f"/vms/{name}/start")
    t_start = time.monotonic() - t0
    time.sleep(0.5)
    vms = {v["name"]: v for v in d.ok("GET", "/vms")["vms"]}
    running = sum(vms[x]["state"] == "running" for x in names)
    t0 = time.monotonic()
    for name in names:
        d.ok("POST", f"/vms/{name}/pause")
    for name in names:
        d.ok("POST", f"/vms/{name}/resume")
    t_pr = (time.monotonic() - t0) / (2 * n)
    vmm = [mem_kib(vms[x]["pid"]) for x in names]
    dm = mem_kib(d.proc.pid)
    # Guest RAM is a memfd (Pss_Shmem); the VMM's own overhead is the rest of
    # its proportional set size (shared library pages divided among the 16).
    over = sorted(v["Pss"] - v["Pss_Shmem"] for v in vmm)
    anon = sorted(v["Pss_Anon"] for v in vmm)
    rss = sorted(v["Rss"] - v["Pss_Shmem"] for v in vmm)
    guest = sorted(v["Pss_Shmem"] for v in vmm)
    print(f"{n} VMs x 64 MiB: {running} running; create+start {t_start/n*1000:.1f} ms per VM; "
          f"pause or resume {t_pr*1000:.2f} ms per request")
    print(f"daemon: RSS {dm['Rss']/1024:.2f} MiB, PSS {dm['Pss']/1024:.2f} MiB")
    print(f"each VMM without guest RAM (median, max): PSS {over[n//2]/1024:.2f}, {over[-1]/1024:.2f} MiB;"
          f" anonymous {anon[n//2]/1024:.2f}, {anon[-1]/1024:.2f} MiB; RSS {rss[n//2]/1024:.2f} MiB;"
          f" guest RAM touched {guest[n//2]/1024:.2f} MiB")
    for name in names:
        d.ok("POST", f"/vms/{name}/stop", {"force": True})


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
    d = Daemon().start()
    try:
        print(f"cgroup mode: {d.ok('GET', '/vms')['cgroup']}; host CPUs: {os.cpu_count()}")
        if what in ("fairness", "all"):
            fairness(d, seconds)
        if what in ("scale", "all"):
            scale(d)
    finally:
        d.cleanup()


if __name__ == "__main__":
    main()
