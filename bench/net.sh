#!/usr/bin/env bash
# Guest-to-guest throughput through a bridge and the per-vNIC firewall
# (DESIGN §7, issue 13): two probe guests (scenario net_ip) on vireo, on a
# daemon network, and two on QEMU microvm, on taps in the same bridge with the
# same rules, in one run. Guest A sends N UDP datagrams (blast, port 9997
# trigger) to guest B; the rate is the frames B's tap delivered divided by
# A's sending time. Rules: none (anti-spoofing off too), anti-spoofing only,
# and a firewall of 10 and of 1,000 rules on both vNICs (the last rule the one
# that accepts). Prints frames/s per VMM and setting, and each setting's ratio
# to "none" (issue 13's target: 1,000 rules cost at most 10 %). The last
# column has no VMM in it: two namespaces on veths in the same bridge with the
# same rules, the CPU time a sender spends per datagram (the kernel's path).
# Beside each guest rate, the host's CPU time per frame delivered (all CPUs,
# /proc/stat, during the blast): what a frame costs the machine, which holds
# where a rate on 2 busy cores moves by tens of percent.
# The settings are measured round robin, RUNS rounds, and the medians kept.
# usage: bench/net.sh [FRAMES] [SIZE] [RUNS]   (root, from the repository root, after make)
set -euo pipefail
cd "$(dirname "$0")/.."
exec /usr/bin/python3 - "${1:-20000}" "${2:-1000}" "${3:-3}" <<'PY'
import json, os, re, shutil, socket, statistics, struct, subprocess, sys, tempfile, time
sys.path.insert(0, "tests/integration")
from daemonutil import Daemon, wait_for

FRAMES, SIZE, RUNS = (int(a) for a in sys.argv[1:4])
NET, BR, NS = "bench", "vb-bench", "vbench-peer"
PEER_IP = "10.78.0.1"
VMS = {  # name: (ip, mac, vmm)
    "a": ("10.78.0.2", "52:54:00:78:00:02", "vireo"), "b": ("10.78.0.3", "52:54:00:78:00:03", "vireo"),
    "qa": ("10.78.0.4", "52:54:00:78:00:04", "qemu"), "qb": ("10.78.0.5", "52:54:00:78:00:05", "qemu"),
    # no VMM: two namespaces on veths, the kernel's own cost of the same rules
    "ka": ("10.78.0.6", "52:54:00:78:00:06", "kernel"), "kb": ("10.78.0.7", "52:54:00:78:00:07", "kernel")}
KERNEL_N = 100000
ELF = os.path.abspath("build/guest/probe.elf")


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def firewall(nrules):
    """nrules rules on a vNIC, half in, half out, the accepting ones last."""
    rules = [{"dir": ("in", "out")[i % 2], "proto": "udp", "dport": 20000 + i, "action": "drop"}
             for i in range(nrules - 3)]
    rules += [{"dir": "in", "proto": "udp", "dport": 7777, "action": "accept"},
              {"dir": "out", "proto": "udp", "dport": 7777, "action": "accept"},
              {"dir": "in", "proto": "udp", "dport": 9997, "action": "accept"}]  # the trigger
    return {"policy_in": "drop", "policy_out": "drop", "rules": rules}


def clone_rules(src_tap, src, dst_tap, dst):
    """The nftables rules of vireo's vNIC src_tap, for QEMU's dst_tap: the
    same chains with the guest's addresses and the tap's mark swapped."""
    sid, did = (int(open(f"/sys/class/net/{t}/ifindex").read()) for t in (src_tap, dst_tap))
    subs = [(f"nic-{src_tap}-", f"nic-{dst_tap}-"), (VMS[src][1], VMS[dst][1]),
            (VMS[src][0], VMS[dst][0]), ("0x%08x" % sid, "0x%08x" % did),
            ("0x%08x" % (sid << 16), "0x%08x" % (did << 16)), (f'"{src_tap}"', f'"{dst_tap}"')]
    cmds = []
    r = subprocess.run(["nft", "list", "table", "inet", "vireo"], capture_output=True, text=True)
    for name in re.findall(r"map (nic-" + re.escape(src_tap) + r"-\S+) \{", r.stdout):
        new = name.replace(src_tap, dst_tap)
        js = json.loads(subprocess.run(["nft", "-j", "list", "map", "inet", "vireo", name],
                                       capture_output=True, text=True, check=True).stdout)
        (m,) = [o["map"] for o in js["nftables"] if "map" in o]
        cmds.append(f"add map inet vireo {new} {{ type {' . '.join(m['type'])} : verdict; "
                    "flags interval; counter; }")     # the key's fields in vireo's order
        elems = []
        for key, verdict in m.get("elem", []):
            fields = [f"{f['range'][0]}-{f['range'][1]}" if isinstance(f, dict) else str(f)
                      for f in key["elem"]["val"]["concat"]]
            elems.append(f"{' . '.join(fields)} : {next(iter(verdict))}")
        if elems:
            cmds.append(f"add element inet vireo {new} {{ {', '.join(elems)} }}")
    for fam in ("bridge", "inet"):
        r = subprocess.run(["nft", "list", "table", fam, "vireo"], capture_output=True, text=True)
        for name, body in re.findall(r"chain (nic-\S+) \{\n(.*?)\n\t\}", r.stdout, re.S):
            if not name.startswith(f"nic-{src_tap}-"):
                continue
            new = name.replace(src_tap, dst_tap)
            cmds += [f"add chain {fam} vireo {new}", f"flush chain {fam} vireo {new}"]
            for line in body.split("\n"):
                line = re.sub(r"counter packets \d+ bytes \d+", "counter", line.strip())
                for a, b in subs:
                    line = line.replace(a, b)
                cmds.append(f"add rule {fam} vireo {new} {line}")
        key = lambda m: f'"{dst_tap}"' if fam == "bridge" else ("0x%08x" % (did << 16 if m == "to_vnic" else did))
        for m, d in (("from_vnic", "out"), ("to_vnic", "in")):
            if f"nic-{src_tap}-{d}" in r.stdout:
                cmds.append(f"add element {fam} vireo {m} {{ {key(m)} : jump nic-{dst_tap}-{d} }}")
    return cmds


def drop_clone(tap):
    for fam in ("bridge", "inet"):
        r = subprocess.run(["nft", "-a", "list", "table", fam, "vireo"], capture_output=True, text=True)
        for m in ("from_vnic", "to_vnic"):
            for el in re.findall(r'([^\s{,]+) : jump nic-' + re.escape(tap) + r'-', r.stdout):
                subprocess.run(["nft", "delete", "element", fam, "vireo", m, "{", el, "}"],
                               stderr=subprocess.DEVNULL)
        for d in ("out", "in"):
            subprocess.run(["nft", "flush", "chain", fam, "vireo", f"nic-{tap}-{d}"],
                           stderr=subprocess.DEVNULL)
        for name in re.findall(r"map (nic-" + re.escape(tap) + r"-\S+) \{", r.stdout):
            subprocess.run(["nft", "delete", "map", fam, "vireo", name], stderr=subprocess.DEVNULL)
        for d in ("out", "in"):
            subprocess.run(["nft", "delete", "chain", fam, "vireo", f"nic-{tap}-{d}"],
                           stderr=subprocess.DEVNULL)


def apply(d, taps, n):
    """Setting n (None: nothing, 0: anti-spoofing, else n rules) on vireo's
    vNICs through the API, and the same chains on QEMU's taps."""
    for vm in ("a", "b"):
        body = {"nic": 0, "anti_spoof": n is not None}
        if n:
            body["ips"], body["firewall"] = [VMS[vm][0]], firewall(n)
        st, js = d.request("POST", f"/vms/{vm}/firewall", raw=json.dumps(body, separators=(",", ":")))
        assert st == 200, js
    for q, v in (("qa", "a"), ("qb", "b"), ("ka", "a"), ("kb", "b")):
        drop_clone(taps[q])
        if n is not None:
            cmds = clone_rules(taps[v], v, taps[q], q)
            subprocess.run(["nft", "-f", "-"], input="\n".join(cmds) + "\n", text=True, check=True)


def kernel_ns(vm):
    """Namespace vbk-VM with eth0 (VM's address and MAC) on veth vbk-VM in
    the bridge; ka knows kb's MAC, kb sends nothing (an ICMP error would
    touch the flow): both as with the guests."""
    ip, mac, _ = VMS[vm]
    ns = tap = f"vbk-{vm}"
    sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", ns)
    sh("ip", "link", "set", tap, "master", BR, "up")
    for cmd in (["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"],
                ["ip", "link", "set", "eth0", "address", mac], ["ip", "addr", "add", ip + "/24", "dev", "eth0"],
                ["ip", "link", "set", "eth0", "up"]):
        sh("ip", "netns", "exec", ns, *cmd)
    if vm == "ka":
        sh("ip", "-n", ns, "neigh", "add", VMS["kb"][0], "lladdr", VMS["kb"][1], "dev", "eth0")
    else:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], check=True, text=True,
                       input="add table ip q\nadd chain ip q o { type filter hook output priority 0; policy drop; }\n")
    return tap


def kernel_cost():
    """CPU time per datagram (µs) of a sender in ka to kb through the bridge:
    the syscall carries each one through the bridge and both veths' rules,
    so this is the kernel's path alone, and CPU time, unlike a rate, holds
    on a loaded host."""
    code = (f"import socket, time; s = socket.socket(2, 2); d = bytes({SIZE}); t = time.process_time()\n"
            f"for i in range({KERNEL_N}): s.sendto(d, ('{VMS['kb'][0]}', 7777))\n"
            f"print((time.process_time() - t) / {KERNEL_N} * 1e6)")
    out = subprocess.run(["ip", "netns", "exec", "vbk-ka", "python3", "-c", code], check=True,
                         capture_output=True, text=True).stdout
    return float(out)


class Trigger:
    """A sender in the peer's namespace, started once, so that starting a
    blast costs one datagram and no process start inside the measurement."""

    def __init__(self):
        code = ("import socket, sys\ns = socket.socket(2, 2)\nfor line in sys.stdin:\n"
                "    ip, data = line.split()\n    s.sendto(bytes.fromhex(data), (ip, 9997))\n")
        self.p = subprocess.Popen(["ip", "netns", "exec", NS, "python3", "-u", "-c", code],
                                  stdin=subprocess.PIPE, text=True)

    def send(self, src, dst):
        ip, mac, _ = VMS[dst]
        payload = struct.pack(">IH", FRAMES, SIZE) + socket.inet_aton(ip) + bytes.fromhex(mac.replace(":", ""))
        self.p.stdin.write(f"{VMS[src][0]} {payload.hex()}\n")
        self.p.stdin.flush()

    def close(self):
        self.p.stdin.close()
        self.p.wait()


def host_busy_s():
    """CPU seconds all the host's CPUs have spent busy (not idle or in
    iowait) since boot."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (sum(f[:8]) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


def tx_packets(tap):
    return int(open(f"/sys/class/net/{tap}/statistics/tx_packets").read())


BLAST = re.compile(r"PROBE net_ip blast frames=(\d+) size=\d+ ms=(\d+)\r?\n")
retries = []


def run_once(src, dst, taps, logs, trig):
    """Frames per second of one blast, and the host's CPU µs per frame
    delivered. The trigger is one datagram and a blast ends early when the
    device stalls for a second (both happen on a loaded host): such a run is
    repeated, and counted."""
    for _ in range(5):
        before, n0 = tx_packets(taps[dst]), len(BLAST.findall(logs[src]()))
        busy0 = host_busy_s()
        trig.send(src, dst)
        if not wait_for(lambda: len(BLAST.findall(logs[src]())) > n0, timeout=30, step=0.05):
            retries.append((src, "no blast"))
            continue
        busy = host_busy_s() - busy0
        frames, ms = (int(x) for x in BLAST.findall(logs[src]())[-1])
        if frames < FRAMES:
            retries.append((src, f"stalled after {frames}"))
            continue
        time.sleep(0.2)                       # the last frames reach B's tap
        delivered = tx_packets(taps[dst]) - before
        return delivered / max(ms, 1) * 1000, busy * 1e6 / max(delivered, 1)
    raise SystemExit(f"no blast from {src}: {retries[-5:]} {logs[src]()[-600:]}")


def main():
    tmp = tempfile.mkdtemp(prefix="vireo-bench-net-")
    d = Daemon(extra=["--storage", tmp]).start()
    qemus, logs, taps, trig = [], {}, {}, None
    try:
        d.ok("POST", "/networks", {"name": NET}, status=201)
        sh("ip", "netns", "add", NS)
        sh("ip", "link", "add", "vbp-host", "type", "veth", "peer", "name", "eth0", "netns", NS)
        sh("ip", "link", "set", "vbp-host", "master", BR, "up")
        sh("ip", "netns", "exec", NS, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        sh("ip", "-n", NS, "addr", "add", PEER_IP + "/24", "dev", "eth0")
        sh("ip", "-n", NS, "link", "set", "eth0", "up")
        trig = Trigger()
        for vm, (ip, mac, vmm) in VMS.items():
            cmd = f"scenario=net_ip net_ip={ip} net_ip_ms=3600000"
            if vmm == "kernel":
                taps[vm] = kernel_ns(vm)
                continue
            if vmm == "vireo":
                d.create(vm, scenario="net_ip", cmdline=cmd, memory="64M",
                         nics=[{"network": NET, "mac": mac, "anti_spoof": False}])
                d.ok("POST", f"/vms/{vm}/start")
                logs[vm] = (lambda v: lambda: open(os.path.join(d.state, "logs", v + ".log")).read())(vm)
                continue
            tap = f"vbq-{vm}"
            sh("ip", "tuntap", "add", tap, "mode", "tap")
            sh("ip", "link", "set", tap, "master", BR, "up")
            out = open(os.path.join(tmp, vm + ".log"), "w")
            qemus.append(subprocess.Popen(
                ["qemu-system-x86_64", "-enable-kvm", "-M", "microvm,pcie=on", "-m", "64M",
                 "-nographic", "-nodefaults", "-serial", "stdio", "-no-reboot", "-kernel", ELF,
                 "-append", cmd + " ecam=0xe0000000", "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
                 "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
                 "-device", f"virtio-net-pci,netdev=n0,disable-legacy=on,mac={mac}"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT))
            taps[vm] = tap
            logs[vm] = (lambda p: lambda: open(p).read())(out.name)
        for vm in logs:
            if not wait_for(lambda: "PROBE net_ip ready" in logs[vm](), timeout=30):
                raise SystemExit(f"{vm} did not start: {logs[vm]()[-400:]}")
        for vm in ("a", "b"):                     # the daemon's taps, from the counters
            d.ok("POST", f"/vms/{vm}/firewall", {"nic": 0, "anti_spoof": True})
            taps[vm] = d.vm(vm)["firewall_counters"][0]["tap"]
        # The bridge learns a MAC from frames the guest sends, and a receiver
        # of a one-way flow sends none: its frames would be flooded to every
        # port (through every vNIC's rules) unless the bridge knows the way.
        for vm, (_, mac, _) in VMS.items():
            sh("bridge", "fdb", "replace", mac, "dev", taps[vm], "master", "static")
        settings = [("none", None), ("anti-spoof", 0), ("10 rules", 10), ("1000 rules", 1000)]
        rates, cpu = {}, {}
        # Round robin: every round measures every setting on both VMMs, so
        # load from elsewhere on the host spreads over all of them alike.
        for _ in range(RUNS):
            for label, n in settings:
                apply(d, taps, n)
                for vmm, (src, dst) in (("vireo", ("a", "b")), ("qemu", ("qa", "qb"))):
                    run_once(src, dst, taps, logs, trig)  # warm-up: ARP, conntrack
                    rate, us = run_once(src, dst, taps, logs, trig)
                    rates.setdefault((vmm, label), []).append(rate)
                    cpu.setdefault((vmm, label), []).append(us)
                rates.setdefault(("kernel", label), []).append(kernel_cost())
        res = {k: statistics.median(v) for k, v in rates.items()}
        us = {k: statistics.median(v) for k, v in cpu.items()}
        print(f"# bench/net.sh: {FRAMES} UDP datagrams of {SIZE} bytes, guest to guest through "
              f"{BR}, median of {RUNS} rounds")
        print(f"{'setting':<12} {'vireo fr/s':>12} {'qemu fr/s':>12} {'vireo/qemu':>11} "
              f"{'vireo vs none':>14} {'qemu vs none':>13} {'kernel µs/dgram':>16}")
        for label, _ in settings:
            v, q = res[("vireo", label)], res[("qemu", label)]
            print(f"{label:<12} {v:>12.0f} {q:>12.0f} {v / q:>11.2f} "
                  f"{v / res[('vireo', 'none')]:>14.3f} {q / res[('qemu', 'none')]:>13.3f} "
                  f"{res[('kernel', label)]:>16.2f}")
        print("# host CPU µs per frame delivered (all CPUs, during the blast), and none's "
              "figure over the setting's (the share of throughput a CPU-bound host keeps)")
        print(f"{'setting':<12} {'vireo µs':>9} {'qemu µs':>9} {'vireo none/this':>16} "
              f"{'qemu none/this':>15}")
        for label, _ in settings:
            v, q = us[("vireo", label)], us[("qemu", label)]
            print(f"{label:<12} {v:>9.2f} {q:>9.2f} {us[('vireo', 'none')] / v:>16.3f} "
                  f"{us[('qemu', 'none')] / q:>15.3f}")
        print("# per round, vireo µs/frame: " + "; ".join(
            f"{label} " + "/".join(f"{x:.2f}" for x in cpu[("vireo", label)]) for label, _ in settings))
        if retries:
            print(f"# runs repeated: {retries}")
    finally:
        if trig:
            trig.close()
        for p in qemus:
            p.kill()
            p.wait()
        for vm in ("a", "b"):
            try:
                d.stop(vm, force=True)
            except Exception:
                pass
        d.cleanup()
        for q in ("qa", "qb", "ka", "kb"):
            if q in taps:
                drop_clone(taps[q])
                subprocess.run(["ip", "link", "del", taps[q]], stderr=subprocess.DEVNULL)
            if q.startswith("k"):
                subprocess.run(["ip", "netns", "del", f"vbk-{q}"], stderr=subprocess.DEVNULL)
        subprocess.run(["ip", "link", "del", "vbp-host"], stderr=subprocess.DEVNULL)
        subprocess.run(["ip", "netns", "del", NS], stderr=subprocess.DEVNULL)
        subprocess.run(["ip", "link", "del", BR], stderr=subprocess.DEVNULL)
        for fam in ("bridge", "inet"):
            r = subprocess.run(["nft", "list", "table", fam, "vireo"], capture_output=True, text=True)
            if r.returncode == 0 and "nic-" not in r.stdout:
                subprocess.run(["nft", "delete", "table", fam, "vireo"])
        shutil.rmtree(tmp, ignore_errors=True)


main()
PY
