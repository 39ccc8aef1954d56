"""Live migration between two daemons (issue 12, the daemons' side): two
hosts are two network namespaces joined by a veth, each with its own
`vireo daemon` (own state dir); the storage is shared (the same qcow2 path
on both). The destination waits with POST /vms/NAME/incoming, the source
moves the VM with POST /vms/NAME/migrate. The probe's devloop scenario
counts rounds (n), reads and writes its disk and checks the pages it
dirtied each round (dirty=ok), so a lost or stale page or disk block, a
round run twice or a second boot shows."""
import json
import os
import re
import subprocess
import threading

import pytest

from conftest import PROBE, VIREO, needs_kvm, needs_qemu_img, scaled, wait_until
from daemonutil import Daemon

pytestmark = [needs_kvm, needs_qemu_img]

# Whole lines only: the log is read while the VMM writes it, and a line cut
# in two ("dirty=o") failed a loaded run.
DEVLOOP = re.compile(r"PROBE devloop n=(\d+) ms=\d+ blk=(\w+) rng=\d+ net=\w+ kept=(\w+) "
                     r"dirty=(\w+)\r?\n")
HOST_A, HOST_B = "10.232.0.1", "10.232.0.2"


class NsDaemon(Daemon):
    """A daemon inside a network namespace (its VMMs listen and connect
    there); its API socket is a file, reachable from here."""

    def __init__(self, netns, **kw):
        super().__init__(**kw)
        self.netns = netns

    def start(self):
        import daemonutil
        real = daemonutil.subprocess.Popen

        def popen(args, **kw):
            return real(["ip", "netns", "exec", self.netns, *args], **kw)
        daemonutil.subprocess.Popen = popen
        try:
            return super().start()
        finally:
            daemonutil.subprocess.Popen = real


@pytest.fixture
def hosts(tmp_path):
    """Daemons A and B in two namespaces joined by a veth; tmp_path is the
    storage both share."""
    if os.geteuid() != 0:
        pytest.skip("skipped: needs root for network namespaces")
    a, b = f"vireo-dm-a-{os.getpid()}", f"vireo-dm-b-{os.getpid()}"
    daemons = []
    try:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "link", "add", "vdm-a", "netns", a, "type", "veth", "peer",
                        "name", "vdm-b", "netns", b], check=True)
        for ns, dev, ip in ((a, "vdm-a", HOST_A), (b, "vdm-b", HOST_B)):
            subprocess.run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        for ns in (a, b):
            daemons.append(NsDaemon(ns, extra=["--storage", str(tmp_path)]).start())
        yield daemons[0], daemons[1]
    finally:
        for d in daemons:
            d.cleanup()
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)


_ports = iter(range(4444, 4500))


def free_port():
    """Nothing else listens in the namespaces: a new port for each stream."""
    return next(_ports)


def definition(tmp_path, name="mig"):
    disk = tmp_path / "d.qcow2"
    if not disk.exists():
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    return {"name": name, "cpus": 1, "memory": "128M", "kernel": str(PROBE),
            "cmdline": "scenario=devloop=20 keep=16 dirty_mib=4",
            "disks": [{"path": str(disk), "format": "qcow2"}]}


def rounds(text):
    """The devloop rounds in a VM's log. The VMM's stderr goes there too, and
    a line of it ("vireo: migration to ... failed: ...") can land inside a
    console line: taken out, the console line is whole again."""
    text = re.sub(r"vireo: [^\n]*\n", "", text)
    return [(int(n), blk, kept, dirty) for n, blk, kept, dirty in DEVLOOP.findall(text)]


def last_round(d, name="mig"):
    r = rounds(d.vm_log(name))
    return r[-1][0] if r else -1


def wait_rounds(d, n, name="mig", timeout=30):
    wait_until(lambda: last_round(d, name) >= n, timeout,
               lambda: f"round {n} on {d.netns}: {d.vm_log(name)[-400:]}")


def start_on(d, tmp_path):
    d.ok("POST", "/vms", definition(tmp_path), status=201)
    d.ok("POST", "/vms/mig/start")
    wait_rounds(d, 20)


def incoming(d, tmp_path, port, **kw):
    js = d.ok("POST", "/vms/mig/incoming", {"definition": definition(tmp_path),
                                           "listen": f"tcp:{d_addr(d)}:{port}", **kw},
              status=202)
    assert js["state"] == "incoming" and js["listen"] == f"tcp:{d_addr(d)}:{port}", js
    assert d.vm("mig")["state"] == "incoming"
    return js


def d_addr(d):
    return HOST_A if d.netns.startswith("vireo-dm-a") else HOST_B


class Migrate(threading.Thread):
    """POST /vms/mig/migrate on d, in the background (it answers at the end);
    meanwhile GET /vms/mig shows the progress."""

    def __init__(self, d, body):
        super().__init__(daemon=True)
        self.d, self.body, self.result = d, body, None
        self.start()

    def run(self):
        self.result = self.d.request("POST", "/vms/mig/migrate", self.body)

    def wait(self, timeout=90):
        self.join(scaled(timeout))
        assert not self.is_alive(), "the migrate request did not end"
        return self.result


def check_moved(src, dst, uri, result):
    st, js = result
    assert st == 200, js
    assert js["state"] == "stopped" and js["reason"] == f"migrated to {uri}", js
    assert js["migration"]["state"] == "completed", js
    assert js["migration"]["bytes_sent"] > 0, js
    v = src.vm("mig")
    assert v["state"] == "stopped" and v["pid"] == 0, v
    v = wait_until(lambda: (v := dst.vm("mig"))["state"] == "running" and v, 30,
                   lambda: f"running on the destination: {dst.vm('mig')}")
    assert v["reason"] == "migrated in" and v["pid"] > 0, v
    assert v["vmm"]["migration"]["direction"] == "incoming", v


def check_rounds(*logs):
    """Every round once, in order, across the hosts, each with its disk,
    kept buffers and dirtied pages intact; one boot."""
    # Joined first: a console line cut by the switch ends in the next log.
    seen = rounds("".join(logs))
    assert [r[0] for r in seen] == list(range(seen[-1][0] + 1)), [r[0] for r in seen]
    bad = [r for r in seen if r[1:] != ("ok", "ok", "ok")]
    assert not bad, bad[:5]
    assert sum(log.count("PROBE boot") for log in logs) <= 1


def test_vm_moves_to_b_and_back(tmp_path, hosts):
    a, b = hosts
    start_on(a, tmp_path)
    # A -> B through the API, the token made by B.
    port = free_port()
    uri = f"tcp:{HOST_B}:{port}"
    token = incoming(b, tmp_path, port)["token"]
    m = Migrate(a, {"uri": uri, "token": token, "max_downtime_ms": 300})
    check_moved(a, b, uri, m.wait())
    log_a1 = a.vm_log("mig")
    # Never two running copies: the moved-away VM does not start here.
    st, js = a.request("POST", "/vms/mig/start")
    assert st == 409 and "runs there" in js["error"], (st, js)
    wait_rounds(b, last_round(a) + 20)
    # The token was good for that stream only: B has removed its file.
    assert not os.path.exists(os.path.join(b.state, "run", "mig.token"))

    # B -> A through the CLI, options anywhere, the token from a file.
    tokfile = tmp_path / "token"
    tokfile.write_text("s3cret-token\n")
    deffile = tmp_path / "mig.json"
    deffile.write_text(json.dumps(definition(tmp_path)))
    port = free_port()
    uri = f"tcp:{HOST_A}:{port}"
    r = subprocess.run([str(VIREO), "vm", "incoming", "--socket", a.socket, "mig", "--listen",
                        uri, "--file", str(deffile), "--token-file", str(tokfile)],
                       capture_output=True, text=True, timeout=scaled(30))
    assert r.returncode == 0 and r.stdout == f"mig: incoming, listening on {uri}\n", r
    r = subprocess.run([str(VIREO), "vm", "migrate", "mig", "--to", uri, "--output=json",
                        "--token-file", str(tokfile), "--socket", b.socket,
                        "--max-downtime", "300"],
                       capture_output=True, text=True, timeout=scaled(90))
    assert r.returncode == 0, r
    check_moved(b, a, uri, (200, json.loads(r.stdout)))
    log_b = b.vm_log("mig")
    wait_rounds(a, last_round(b) + 20)
    check_rounds(log_a1, log_b, a.vm_log("mig"))
    # Powered off where it runs, the image is whole.
    a.stop("mig", force=True)
    subprocess.run(["qemu-img", "check", "-q", str(tmp_path / "d.qcow2")], check=True)


def goes_on_at_a(a, b):
    v = a.vm("mig")
    assert v["state"] == "running" and "migration" not in v, v
    wait_rounds(a, last_round(a) + 20)
    check_rounds(a.vm_log("mig"))
    # Nothing is left on B: no VM, no VMM, no token.
    wait_until(lambda: b.request("GET", "/vms/mig")[0] == 404, 30,
               lambda: f"the VM removed from B: {b.vm('mig')}")
    assert b.ok("GET", "/vms")["vms"] == []
    assert not os.path.exists(os.path.join(b.state, "run", "mig.token"))
    assert not os.path.exists(os.path.join(b.state, "vms", "mig.json"))


def test_wrong_token_leaves_vm_on_a(tmp_path, hosts):
    a, b = hosts
    start_on(a, tmp_path)
    port = free_port()
    incoming(b, tmp_path, port, token="right-token")
    st, js = a.request("POST", "/vms/mig/migrate",
                       {"uri": f"tcp:{HOST_B}:{port}", "token": "wrong-token"})
    assert st == 500 and "refused" in js["error"], (st, js)
    goes_on_at_a(a, b)
    assert "did not prove the token" in b.logtext() or "refused" in b.logtext()


def test_killed_destination_leaves_vm_on_a(tmp_path, hosts):
    a, b = hosts
    start_on(a, tmp_path)
    port = free_port()
    token = incoming(b, tmp_path, port)["token"]
    vmm = b.vm("mig")["pid"]
    assert vmm > 0
    m = Migrate(a, {"uri": f"tcp:{HOST_B}:{port}", "token": token, "bandwidth": 2_000_000})
    wait_until(lambda: a.vm("mig").get("migration", {}).get("bytes_sent", 0) > 1 << 20, 30,
               "1 MiB sent")
    os.kill(vmm, 9)
    st, js = m.wait()
    assert st == 500 and "failed" in js["error"], (st, js)
    goes_on_at_a(a, b)


def test_incoming_times_out(tmp_path, hosts):
    """No source comes: the VMM is killed at the deadline and B forgets the VM."""
    a, b = hosts
    port = free_port()
    incoming(b, tmp_path, port, timeout_s=1)
    wait_until(lambda: b.request("GET", "/vms/mig")[0] == 404, 30, "the VM removed from B")
    assert "no migration completed within 1 s" in b.logtext()


def test_incoming_refused_while_the_vm_runs_here(tmp_path, hosts):
    a, b = hosts
    start_on(a, tmp_path)
    st, js = a.request("POST", "/vms/mig/incoming", {"definition": definition(tmp_path),
                                                     "listen": f"tcp:{HOST_A}:4444"})
    assert st == 409 and "running" in js["error"], (st, js)
    st, js = a.request("POST", "/vms/mig/migrate", {"uri": f"tcp:{HOST_B}:1"})
    assert st == 400 and "token" in js["error"], (st, js)
    assert a.vm("mig")["state"] == "running"


def test_garbage_to_the_migration_port(tmp_path, hosts):
    """Whatever connects to B's port first and sends no proof of the token
    ends the wait: B runs nothing and forgets the VM."""
    a, b = hosts
    port = free_port()
    incoming(b, tmp_path, port)
    subprocess.run(["ip", "netns", "exec", a.netns, "python3", "-c",
                    "import socket, sys; s = socket.create_connection((sys.argv[1], "
                    "int(sys.argv[2]))); s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n' * 1000); "
                    "s.close()", HOST_B, str(port)], check=True, timeout=scaled(10))
    wait_until(lambda: b.request("GET", "/vms/mig")[0] == 404, 40, "the VM removed from B")
    assert "incoming migration failed" in b.logtext()


def test_daemon_restart_ends_an_incoming_vm(tmp_path, hosts):
    """A daemon that died while a VM was incoming does not adopt a VMM that
    runs nothing yet: it is killed, the VM stopped."""
    a, b = hosts
    port = free_port()
    incoming(b, tmp_path, port)
    vmm = b.vm("mig")["pid"]
    b.kill()
    b.start()
    v = b.vm("mig")
    assert v["state"] == "stopped" and "daemon restart" in v["reason"], v
    wait_until(lambda: not os.path.exists(f"/proc/{vmm}") or
               open(f"/proc/{vmm}/stat").read().split(") ")[1][0] == "Z", 10, "the VMM gone")


def test_cancel_leaves_vm_on_a(tmp_path, hosts):
    """migrate-cancel (the CLI's, beside the migrate request that holds the
    VM): the migrate request ends with 409, the VM goes on at A, B forgets it."""
    a, b = hosts
    start_on(a, tmp_path)
    port = free_port()
    token = incoming(b, tmp_path, port)["token"]
    m = Migrate(a, {"uri": f"tcp:{HOST_B}:{port}", "token": token, "bandwidth": 2_000_000})
    wait_until(lambda: a.vm("mig").get("migration", {}).get("bytes_sent", 0) > 1 << 20, 30,
               "1 MiB sent")
    r = subprocess.run([str(VIREO), "vm", "migrate-cancel", "mig", "--socket", a.socket],
                       capture_output=True, text=True, timeout=scaled(10))
    assert r.returncode == 0 and r.stdout == "mig: migration cancelled\n", r
    st, js = m.wait()
    assert st == 409 and "cancelled" in js["error"], (st, js)
    goes_on_at_a(a, b)
    st, js = a.request("POST", "/vms/mig/migrate-cancel")
    assert st == 409 and "no migration" in js["error"], (st, js)


def one_command(a, b, port, *opts):
    """`vireo vm migrate mig --to B's socket`: the CLI drives both daemons."""
    args = [str(VIREO), "vm", "--socket", a.socket, "migrate", "mig", "--to", b.socket,
            "--listen", f"tcp:{d_addr(b)}:{port}", *opts]
    return subprocess.run(args,
                          capture_output=True, text=True, timeout=scaled(90))


def test_one_command_moves_vm_and_back(tmp_path, hosts):
    """The destination prepared (the source's definition, a token B makes),
    the source migrated, both ends' figures reported; JSON one way, text the
    other."""
    a, b = hosts
    start_on(a, tmp_path)
    port = free_port()
    r = one_command(a, b, port, "--max-downtime", "300", "--output=json")
    assert r.returncode == 0, r
    js = json.loads(r.stdout)
    check_moved(a, b, f"tcp:{HOST_B}:{port}", (200, js))
    assert js["destination"]["state"] == "running", js
    assert js["destination"]["memory"] == a.vm("mig")["memory"], js
    assert 0 < js["migration"]["downtime_ms"] < scaled(2000), js["migration"]
    assert not os.path.exists(os.path.join(b.state, "run", "mig.token"))
    log_a1 = a.vm_log("mig")
    wait_rounds(b, last_round(a) + 20)

    port = free_port()
    r = one_command(b, a, port, "--bandwidth", "500M")
    assert r.returncode == 0, r
    assert re.fullmatch(rf"mig: migrated to {re.escape(a.socket)} \(downtime \d+ ms, \d+ "
                        r"bytes sent in \d+ ms\)\n", r.stdout), r
    assert a.vm("mig")["state"] == "running" and b.vm("mig")["state"] == "stopped"
    log_b = b.vm_log("mig")
    wait_rounds(a, last_round(b) + 20)
    check_rounds(log_a1, log_b, a.vm_log("mig"))


def lan_ports(d):
    """The ports of network lan's bridge in daemon D's namespace (the VMs' taps)."""
    out = subprocess.run(["ip", "-n", d.netns, "-o", "link", "show", "master", "vb-lan"],
                         capture_output=True, text=True, check=True).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def test_vnic_on_a_network_lands_on_the_destinations_tap(tmp_path, hosts):
    """Each daemon names its taps (its instance id is in the name), so the
    stream's machine names A's tap; B's VMM must open B's own, the port of
    B's bridge, and A's goes with A's VMM. Without it B's VMM opened a tap
    of A's name, in no bridge, and the guest was cut off after the move."""
    a, b = hosts
    for d in (a, b):
        d.ok("POST", "/networks", {"name": "lan"}, status=201)
    defn = dict(definition(tmp_path), nics=[{"network": "lan", "mac": "52:54:00:43:00:07"}])
    a.ok("POST", "/vms", defn, status=201)
    a.ok("POST", "/vms/mig/start")
    wait_rounds(a, 5)

    (tap_a,) = lan_ports(a)
    r = one_command(a, b, free_port())
    assert r.returncode == 0, (r, b.logtext()[-2000:])
    (tap_b,) = wait_until(lambda: lan_ports(b), 30, "B's tap in B's bridge")
    assert tap_b != tap_a, (tap_a, tap_b)
    v = b.vm("mig")
    assert v["state"] == "running" and v["vmm"]["nics"][0]["tap"] == tap_b, v
    wait_until(lambda: lan_ports(a) == [], 30, "A's tap gone with A's VMM")
    wait_rounds(b, last_round(a) + 10)


def test_killed_destination_with_a_vnic_leaves_no_tap_on_b(tmp_path, hosts):
    """kill -9 of B's VMM mid-stream, its tap attached early: the VM goes on
    at A on A's tap, and B deletes the tap it had made for the VM."""
    a, b = hosts
    for d in (a, b):
        d.ok("POST", "/networks", {"name": "lan"}, status=201)
    nics = [{"network": "lan", "mac": "52:54:00:43:00:08"}]
    a.ok("POST", "/vms", dict(definition(tmp_path), nics=nics), status=201)
    a.ok("POST", "/vms/mig/start")
    wait_rounds(a, 5)

    tap_a = lan_ports(a)
    port = free_port()
    js = b.ok("POST", "/vms/mig/incoming", {"definition": dict(definition(tmp_path), nics=nics),
                                            "listen": f"tcp:{HOST_B}:{port}"}, status=202)
    assert len(lan_ports(b)) == 1, lan_ports(b)
    m = Migrate(a, {"uri": f"tcp:{HOST_B}:{port}", "token": js["token"], "bandwidth": 2_000_000})
    wait_until(lambda: a.vm("mig").get("migration", {}).get("bytes_sent", 0) > 1 << 20, 30,
               "1 MiB sent")
    os.kill(b.vm("mig")["pid"], 9)
    st, r = m.wait()
    assert st == 500 and "failed" in r["error"], (st, r)
    goes_on_at_a(a, b)
    assert lan_ports(a) == tap_a
    wait_until(lambda: lan_ports(b) == [], 30, lambda: f"B's tap deleted: {lan_ports(b)}")


def test_one_command_interrupted_leaves_vm_on_a(tmp_path, hosts):
    """Ctrl-C while the memory goes: the CLI cancels at the source, the VM
    goes on there, B forgets it."""
    a, b = hosts
    start_on(a, tmp_path)
    port = free_port()
    args = [str(VIREO), "vm", "--socket", a.socket, "migrate", "mig", "--to", b.socket,
            "--listen", f"tcp:{HOST_B}:{port}", "--bandwidth", "2M"]
    cli = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: a.vm("mig").get("migration", {}).get("bytes_sent", 0) > 1 << 20, 30,
                   "1 MiB sent")
        cli.send_signal(2)
        out, err = cli.communicate(timeout=scaled(30))
    finally:
        cli.kill()
    assert cli.returncode == 1 and "cancelling the migration of mig" in err, (out, err)
    goes_on_at_a(a, b)


def test_one_command_source_fails_before_connecting(tmp_path, hosts):
    """The source cannot reach the address B listens on (B's 0.0.0.0 is
    A's own host there): its migrate fails at once, and the CLI (on B's
    network here) ends B's wait at once, not at its 300 s deadline. A
    stopped VM is not offered to B at all."""
    a, b = hosts
    d = dict(definition(tmp_path), name="idle")
    a.ok("POST", "/vms", d, status=201)
    r = subprocess.run([str(VIREO), "vm", "--socket", a.socket, "migrate", "idle", "--to",
                        b.socket, "--listen", f"tcp:{HOST_B}:{free_port()}"],
                       capture_output=True, text=True, timeout=scaled(30))
    assert r.returncode == 1 and "idle is stopped" in r.stderr, r
    assert b.request("GET", "/vms/idle")[0] == 404

    start_on(a, tmp_path)
    port = free_port()
    r = subprocess.run(["ip", "netns", "exec", b.netns, str(VIREO), "vm", "--socket", a.socket,
                        "migrate", "mig", "--to", b.socket, "--listen", f"tcp:0.0.0.0:{port}"],
                       capture_output=True, text=True, timeout=scaled(30))
    assert r.returncode == 1 and "cannot connect" in r.stderr, r
    goes_on_at_a(a, b)


def restart_with(d, *opts):
    d.kill()
    d.extra += list(opts)
    d.start()


def test_migration_address_picks_a_free_port(tmp_path, hosts):
    """`vireo daemon --migration-address HOST[:PORT]`: an incoming VM
    without "listen" waits on a free port there (from PORT up, in turn;
    without PORT, any), and `vm migrate NAME --to DEST_SOCKET` then needs
    no --listen. A daemon without it still wants "listen"."""
    a, b = hosts
    for bad in ("0.0.0.0", "10.0.0.1:0", "10.0.0.1:65536", "b.example:4600", "::1"):
        r = subprocess.run([str(VIREO), "daemon", "--state-dir", str(tmp_path / "x"), "--socket",
                            str(tmp_path / "x.sock"), "--migration-address", bad],
                           capture_output=True, text=True, timeout=scaled(10))
        assert r.returncode == 2 and "--migration-address takes HOST[:PORT]" in r.stderr, (bad, r)
    restart_with(b, "--migration-address", f"{HOST_B}:4600")
    # Something else listens on the range's first port: it is skipped.
    busy = subprocess.Popen(["ip", "netns", "exec", b.netns, "python3", "-c",
                             "import socket, sys, time; s = socket.socket(); "
                             "s.bind((sys.argv[1], 4600)); s.listen(); print(1, flush=True); "
                             "time.sleep(600)", HOST_B], stdout=subprocess.PIPE, text=True)
    try:
        assert busy.stdout.readline() == "1\n"
        start_on(a, tmp_path)
        other = {"name": "other", "cpus": 1, "memory": "64M", "kernel": str(PROBE)}
        st, js = a.request("POST", "/vms/other/incoming", {"definition": other})
        assert st == 400 and "no --migration-address" in js["error"], (st, js)

        r = subprocess.run([str(VIREO), "vm", "--socket", a.socket, "migrate", "mig", "--to",
                            b.socket, "--output=json"],
                           capture_output=True, text=True, timeout=scaled(90))
        assert r.returncode == 0, r
        check_moved(a, b, f"tcp:{HOST_B}:4601", (200, json.loads(r.stdout)))
        log_a1 = a.vm_log("mig")
        wait_rounds(b, last_round(a) + 20)
        # The next one gets the next port, though 4601 is free again.
        js = b.ok("POST", "/vms/other/incoming", {"definition": other, "timeout_s": 1},
                  status=202)
        assert js["listen"] == f"tcp:{HOST_B}:4602", js
        wait_until(lambda: b.request("GET", "/vms/other")[0] == 404, 30, "other removed from B")
    finally:
        busy.kill()
        busy.wait()

    # No PORT: whichever the kernel gives; `vm incoming` needs no --listen either.
    restart_with(a, "--migration-address", HOST_A)
    deffile = tmp_path / "other.json"
    deffile.write_text(json.dumps(other))
    r = subprocess.run([str(VIREO), "vm", "incoming", "--socket", a.socket, "other", "--file",
                        str(deffile), "--timeout", "1"],
                       capture_output=True, text=True, timeout=scaled(30))
    assert r.returncode == 0 and re.fullmatch(
        rf"other: incoming, listening on tcp:{re.escape(HOST_A)}:\d+\ntoken: \w+\n", r.stdout), r
    wait_until(lambda: a.request("GET", "/vms/other")[0] == 404, 30, "other removed from A")
    r = subprocess.run([str(VIREO), "vm", "--socket", b.socket, "migrate", "mig", "--to",
                        a.socket, "--output=json"],
                       capture_output=True, text=True, timeout=scaled(90))
    assert r.returncode == 0, r
    js = json.loads(r.stdout)
    uri = js["reason"].removeprefix("migrated to ")
    assert re.fullmatch(rf"tcp:{re.escape(HOST_A)}:\d+", uri), js
    check_moved(b, a, uri, (200, js))
    log_b = b.vm_log("mig")
    wait_rounds(a, last_round(b) + 20)
    check_rounds(log_a1, log_b, a.vm_log("mig"))


RACER = """
import os, socket, sys, time
token, host, port, deadline = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
print("ready", flush=True)
end = time.monotonic() + deadline
while not os.path.exists(token):
    if time.monotonic() > end:
        print("no token", flush=True)
        sys.exit(1)
s = socket.socket()
try:
    s.bind((host, port))
    s.listen()
except OSError:
    print("busy", flush=True)
    sys.exit(0)
print("took", flush=True)
time.sleep(deadline)
"""


def test_migration_address_port_held(hosts):
    """`--migration-address HOST` without a port: the port the daemon picks
    is bound from that moment until the VMM listens on it (the daemon passes
    the socket on: run --incoming fd:N). It used to check that a port was
    free, close its socket and let the VMM bind the port later; a process
    that took the port meanwhile (here: as soon as the token file, written
    right after the pick, appears) made the incoming VM fail."""
    a, b = hosts
    port = 45123
    # The kernel's pick in B's namespace is known: its only ephemeral port.
    subprocess.run(["ip", "netns", "exec", b.netns, "sysctl", "-qw",
                    f"net.ipv4.ip_local_port_range={port} {port}"], check=True)
    restart_with(b, "--migration-address", HOST_B)
    token = os.path.join(b.state, "run", "other.token")
    racer = subprocess.Popen(["ip", "netns", "exec", b.netns, "python3", "-c", RACER, token,
                              HOST_B, str(port), str(scaled(30))],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert racer.stdout.readline() == "ready\n"
        other = {"name": "other", "cpus": 1, "memory": "64M", "kernel": str(PROBE)}
        st, js = b.request("POST", "/vms/other/incoming", {"definition": other, "timeout_s": 1})
        assert racer.stdout.readline() == "busy\n"
        assert st == 202 and js["listen"] == f"tcp:{HOST_B}:{port}", (st, js)
        assert re.search(r"waiting for a migration on fd:\d+", b.vm_log("other")), \
            b.vm_log("other")
    finally:
        racer.kill()
        racer.wait()
    wait_until(lambda: b.request("GET", "/vms/other")[0] == 404, 30, "other removed from B")
