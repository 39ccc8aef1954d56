"""Issue 12 with a real kernel: Debian's Linux under the daemon, with an ext4
disk (qcow2, shared storage) and a vNIC, moves from host A to host B and
back while a client on a third namespace streams data to it over one TCP
connection and a process in it keeps counting (the `count` scenario).

Hosts A and B are network namespaces, each with a daemon whose network
"lan" has an uplink (a veth) to the bridge of a "switch" namespace; the
client's namespace hangs off that switch too, and A and B have a link of
their own for the migration stream. After each switch the destination VMM
announces the VM's MAC (RARP), so the switch sends the stream to the new
port. The connection must survive both moves, the guest must receive
exactly the bytes sent (size and md5 of all it got), its count and uptime
go on without a restart, and its file system is clean at the end."""
import json
import os
import re
import shutil
import subprocess
import threading

import pytest

from conftest import VIREO, hw_virt, needs_kvm, scaled, wait_until
from test_daemon_migrate import NsDaemon
from test_linux import BASE_CMDLINE, build_kit, linux_lines
from test_linux_snapshot import ext4_qcow2

pytestmark = [needs_kvm, hw_virt(prepare=build_kit, seconds=300), pytest.mark.skipif(
    os.geteuid() != 0 or not all(map(shutil.which, ("ip", "mkfs.ext4", "e2fsck", "qemu-img"))),
    reason="skipped: needs root, iproute2, e2fsprogs and qemu-img")]

MIG_A, MIG_B = "10.233.7.1", "10.233.7.2"        # the hosts' own link
CLIENT_IP, GUEST_IP = "10.0.43.1", "10.0.43.2"   # on the switch
MAC = "52:54:00:43:00:02"
COUNT = re.compile(r"LINUX count n=(\d+) up=([\d.]+)\r?\n")   # whole lines only
PART = 1 << 20          # bytes the stream carries before, between and after the moves
RATE = 200 << 10        # bytes per second: each part spans seconds, a move included

# The client, in its own namespace: one connection to the guest's port 9000,
# paced hex text (it cannot contain "stop") until the file argv[2] exists,
# then "stop"; it waits for the guest's FIN (a reset or a silence fails it)
# and prints the size and md5 of all it sent. "sent N" lines on the way.
CLIENT = r"""
import hashlib, os, socket, sys, time
ip, flag, rate = sys.argv[1], sys.argv[2], int(sys.argv[3])
deadline = time.monotonic() + 60
while True:
    try:
        s = socket.create_connection((ip, 9000), timeout=5)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
s.settimeout(120)
md5, total, block, t0 = hashlib.md5(), 0, b"", time.monotonic()
while not os.path.exists(flag):
    block = hashlib.sha256(block + b"%d" % total).hexdigest().encode() * 64
    s.sendall(block)
    md5.update(block)
    total += len(block)
    print("sent", total, flush=True)
    ahead = total / rate - (time.monotonic() - t0)
    if ahead > 0:
        time.sleep(ahead)
s.sendall(b"stop\n")
md5.update(b"stop\n")
total += 5
s.shutdown(socket.SHUT_WR)
while s.recv(4096):
    pass
print("done bytes=%d md5=%s" % (total, md5.hexdigest()), flush=True)
"""


# Beside the client: every RARP frame that reaches the client's port of the
# switch (the announce is a broadcast), by its sender's MAC.
RARP = r"""
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x8035))
s.bind((sys.argv[1], 0))
print("ready", flush=True)
while True:
    print("rarp", s.recv(2048)[6:12].hex(":"), flush=True)
"""


class Proc(threading.Thread):
    """A python script in a namespace, its output lines read as they come."""

    def __init__(self, netns, script, *args):
        super().__init__(daemon=True)
        self.proc = subprocess.Popen(["ip", "netns", "exec", netns, "python3", "-c", script,
                                      *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines = []
        self.start()

    def run(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Client(Proc):
    def __init__(self, netns, flag):
        super().__init__(netns, CLIENT, GUEST_IP, str(flag), str(RATE))

    @property
    def sent(self):
        last = next((ln for ln in reversed(self.lines) if ln.startswith("sent ")), "sent 0")
        return int(last.split()[1])

    def finish(self, timeout):
        self.proc.wait(timeout=timeout)
        self.join(timeout=5)
        err = self.proc.stderr.read()
        assert self.proc.returncode == 0, f"the client failed: {err}"
        return dict(t.split("=") for t in self.lines[-1].split()[1:])


def ns_run(ns, *args):
    subprocess.run(["ip", "netns", "exec", ns, *args], check=True)


@pytest.fixture
def net():
    """Namespaces a, b (hosts), s (the switch, bridge sw) and c (the client);
    a and b reach sw through their uplinks up-a and up-b, and each other
    through mg-a/mg-b."""
    tag = os.getpid()
    ns = {r: f"vireo-lm-{r}-{tag}" for r in "abcs"}
    try:
        for n in ns.values():
            subprocess.run(["ip", "netns", "add", n], check=True)
            ns_run(n, "ip", "link", "set", "lo", "up")
        ns_run(ns["s"], "ip", "link", "add", "sw", "type", "bridge")
        ns_run(ns["s"], "ip", "link", "set", "sw", "up")
        for r in "abc":
            subprocess.run(["ip", "link", "add", f"up-{r}", "netns", ns[r], "type", "veth",
                            "peer", "name", f"p-{r}", "netns", ns["s"]], check=True)
            ns_run(ns["s"], "ip", "link", "set", f"p-{r}", "master", "sw", "up")
        ns_run(ns["c"], "ip", "addr", "add", f"{CLIENT_IP}/24", "dev", "up-c")
        ns_run(ns["c"], "ip", "link", "set", "up-c", "up")
        subprocess.run(["ip", "link", "add", "mg-a", "netns", ns["a"], "type", "veth", "peer",
                        "name", "mg-b", "netns", ns["b"]], check=True)
        for r, ip in (("a", MIG_A), ("b", MIG_B)):
            ns_run(ns[r], "ip", "addr", "add", f"{ip}/24", "dev", f"mg-{r}")
            ns_run(ns[r], "ip", "link", "set", f"mg-{r}", "up")
        yield ns
    finally:
        for n in ns.values():
            subprocess.run(["ip", "netns", "del", n], stderr=subprocess.DEVNULL)


def counts(text):
    """(n, uptime) of each count line; the VMM's own stderr lines
    ("vireo: ...") can land inside a console line: taken out first."""
    text = re.sub(r"vireo: [^\n]*\n", "", text)
    return [(int(n), float(up)) for n, up in COUNT.findall(text)]


def answers(ns):
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "2", GUEST_IP],
                          capture_output=True).returncode == 0


def migrate(src, dst, uri):
    """`vireo vm migrate lx --to DST_SOCKET`: the CLI prepares dst (the
    source's definition), moves the VM and waits until it runs there."""
    argv = [str(VIREO), "vm", "--socket", src.socket, "migrate", "lx", "--to", dst.socket,
            "--listen", uri, "--max-downtime", "300", "--output=json"]
    try:
        # ~12 s in the nested test host; a bound on a hang, which then says
        # where each side was
        r = subprocess.run(argv, capture_output=True, text=True, timeout=scaled(90))
    except subprocess.TimeoutExpired as e:
        def side(d):
            try:
                info = d.vm("lx")
            except Exception as why:    # the report must not hide the hang
                info = why
            return f"{info}\n{d.vm_log('lx')[-2500:]}"
        raise AssertionError(f"the migration still ran after {e.timeout:g} s: {e.stdout!r} "
                             f"{e.stderr!r}\nsource: {side(src)}\ndestination: {side(dst)}"
                             ) from None
    # both VMs' logs' ends: a guest that died says why there (the nested test
    # host's batch re-runs its known faults by what they print)
    assert r.returncode == 0, (r, src.vm_log("lx")[-3000:], dst.vm_log("lx")[-2000:])
    js = json.loads(r.stdout)
    assert js["state"] == "stopped" and js["migration"]["state"] == "completed", js
    assert js["destination"]["state"] == "running", js
    return js["migration"]


def announced(rarp, after):
    """The VM's MAC was announced after the first AFTER lines of the watcher."""
    wait_until(lambda: f"rarp {MAC}\n" in rarp.lines[after:], 10,
               lambda: f"a RARP from {MAC} after the move: {rarp.lines}")
    return len(rarp.lines)


def stream_moves_on(client, part):
    """The stream goes on: another PART bytes go through."""
    at = client.sent
    wait_until(lambda: client.sent >= at + part, 30 + part / RATE,
               lambda: f"{part} more bytes from {at}: {client.lines[-3:]}")


def test_linux_moves_to_b_and_back_while_streaming_and_counting(tmp_path, net):
    kit = build_kit()
    img = ext4_qcow2(tmp_path)
    a = NsDaemon(net["a"], extra=["--storage", str(tmp_path)]).start()
    b = NsDaemon(net["b"], extra=["--storage", str(tmp_path)]).start()
    client = None
    rarp = Proc(net["c"], RARP, "up-c")
    try:
        wait_until(lambda: rarp.lines, 10, lambda: f"the RARP watcher: {rarp.proc.poll()}")
        a.ok("POST", "/networks", {"name": "lan", "uplink": "up-a"}, status=201)
        b.ok("POST", "/networks", {"name": "lan", "uplink": "up-b"}, status=201)
        cmdline = f"{BASE_CMDLINE} vireo.test=count vireo.ip={GUEST_IP}/24"
        a.ok("POST", "/vms", {"name": "lx", "cpus": 2, "memory": "256M",
                              "kernel": str(kit / "vmlinuz"), "initrd": str(kit / "initrd.img"),
                              "cmdline": cmdline, "disks": [{"path": str(img)}],
                              "nics": [{"network": "lan", "mac": MAC}]}, status=201)
        a.ok("POST", "/vms/lx/start")
        wait_until(lambda: len(counts(a.vm_log("lx"))) >= 5, 150,
                   lambda: f"counting on A: {a.vm_log('lx')[-3000:]}")
        wait_until(lambda: answers(net["c"]), 30, "the guest answers ping from the client")
        flag = tmp_path / "finish"
        client = Client(net["c"], flag)
        stream_moves_on(client, PART)

        # The stream alone teaches the switch the new port as soon as the
        # guest answers it; the announce is what does it for a quiet guest.
        seen = len(rarp.lines)
        first = migrate(a, b, f"tcp:{MIG_B}:4471")
        seen = announced(rarp, seen)
        log_a1 = a.vm_log("lx")
        stream_moves_on(client, PART)
        wait_until(lambda: len(counts(b.vm_log("lx"))) >= 10, 30,
                   lambda: f"counting on B: {b.vm_log('lx')[-2000:]}")
        back = migrate(b, a, f"tcp:{MIG_A}:4472")
        announced(rarp, seen)
        log_b = b.vm_log("lx")
        stream_moves_on(client, PART)

        def since_back():
            log = a.vm_log("lx")
            return log[len(log_a1):] if log.startswith(log_a1) else log
        # counting on A again before the end (the stream alone can be done
        # within seconds of the move, since B's tap is attached early)
        wait_until(lambda: len(counts(since_back())) >= 5, 30,
                   lambda: f"counting on A again: {since_back()[-2000:]}")
        flag.touch()
        sent = client.finish(timeout=scaled(60))
        wait_until(lambda: a.vm("lx")["state"] == "stopped", 60,
                   lambda: f"the guest powers off: {a.vm_log('lx')[-2000:]}")
        log_a2 = a.vm_log("lx")
        if log_a2.startswith(log_a1):
            log_a2 = log_a2[len(log_a1):]
        end = linux_lines(log_a2)["count"]
        # every byte arrived, once, in order, on the one connection
        assert (end["rx_bytes"], end["rx_md5"]) == (sent["bytes"], sent["md5"]), (end, sent)
        assert int(sent["bytes"]) > 3 * PART, sent
        # one count, never restarted, across both moves: each n once, the
        # uptime never falls (a console line cut by a switch ends in the
        # next log: joined first)
        got = counts(log_a1 + log_b + log_a2)
        assert [n for n, _ in got] == list(range(1, len(got) + 1)), got
        assert all(u1 <= u2 for (_, u1), (_, u2) in zip(got, got[1:])), got
        assert len(counts(log_b)) >= 10 and len(counts(log_a2)) >= 5, (log_b, log_a2)
        for log in (log_b, log_a2):
            assert "LINUX userspace=1" not in log and "LINUX kernel=" not in log, log[-2000:]
        # the disk's file holds exactly the counts
        assert end["lines"] == end["end"] == end["last"] == str(got[-1][0]), (end, got[-1])
        assert linux_lines(log_a2)[""].get("fails") == "0", log_a2[-2000:]
        for m in (first, back):
            print("migration:", {k: m.get(k) for k in ("downtime_ms", "bytes_sent",
                                                       "total_ms", "rounds")})
            assert m["downtime_ms"] > 0 and m["bytes_sent"] > 0, m
    finally:
        for p in (client, rarp):
            if p:
                p.kill()
        a.cleanup()
        b.cleanup()
    raw = tmp_path / "after.raw"
    subprocess.run(["qemu-img", "convert", "-q", "-O", "raw", str(img), str(raw)], check=True)
    fsck = subprocess.run(["e2fsck", "-fn", str(raw)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
