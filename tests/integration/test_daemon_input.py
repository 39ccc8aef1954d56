"""Hostile input to the daemon's API and to a VMM's control socket
(DESIGN §3.8): every bad request gets a JSON error with a clear HTTP status,
nothing crashes, no definition is lost."""
import json
import os
import random
import socket
import subprocess
import time

import pytest

from conftest import PROBE, VIREO, needs_kvm, scaled
from daemonutil import Daemon, wait_for

pytestmark = [needs_kvm]


@pytest.fixture(scope="module")
def daemon():
    d = Daemon().start()
    d.create("keep")
    d.ok("POST", "/vms/keep/start")
    yield d
    d.cleanup()


def good_def(name="x"):
    return {"name": name, "cpus": 1, "memory": "64M", "kernel": str(PROBE),
            "cmdline": "scenario=cpuburn=100000"}


def with_(**kw):
    d = good_def()
    d.update(kw)
    return d


BAD = [
    # (method, path, body, status, words in the error)
    ("POST", "/vms", "{", 400, "JSON"),
    ("POST", "/vms", "[1, 2]", 400, "object"),
    ("POST", "/vms", '{"name": "x"} trailing', 400, "trailing"),
    ("POST", "/vms", "", 400, "body"),
    ("POST", "/vms", json.dumps(with_(name="../etc")), 400, "name"),
    ("POST", "/vms", json.dumps(with_(name="a/b")), 400, "name"),
    ("POST", "/vms", json.dumps(with_(name="")), 400, "name"),
    ("POST", "/vms", json.dumps(with_(name="x" * 65)), 400, "name"),
    ("POST", "/vms", json.dumps(with_(name=".hidden")), 400, "name"),
    ("POST", "/vms", json.dumps(with_(colour="red")), 400, "unknown field 'colour'"),
    ("POST", "/vms", json.dumps(with_(cpus=0)), 400, "cpus"),
    ("POST", "/vms", json.dumps(with_(cpus=100000)), 400, "cpus"),
    ("POST", "/vms", json.dumps(with_(cpus="2")), 400, "integer"),
    ("POST", "/vms", json.dumps(with_(memory="1K")), 400, "memory"),
    ("POST", "/vms", json.dumps(with_(memory=-5)), 400, "memory"),
    ("POST", "/vms", json.dumps(with_(memory="lots")), 400, "memory"),
    ("POST", "/vms", json.dumps(with_(kernel="relative.elf")), 400, "kernel"),
    ("POST", "/vms", json.dumps(with_(kernel="/nonexistent/k")), 400, "kernel"),
    ("POST", "/vms", json.dumps(with_(cpu_weight=0)), 400, "cpu_weight"),
    ("POST", "/vms", json.dumps(with_(cpu_weight=10001)), 400, "cpu_weight"),
    ("POST", "/vms", json.dumps(with_(cpu_max=-1)), 400, "cpu_max"),
    ("POST", "/vms", json.dumps(with_(cpu_pin=["0-"])), 400, "CPU list"),
    ("POST", "/vms", json.dumps(with_(cpu_pin=["0", "1"])), 400, "cpu_pin"),
    ("POST", "/vms", json.dumps(with_(disks=[{"path": "/x", "format": "iso"}])), 400, "format"),
    ("POST", "/vms", json.dumps(with_(disks=[{"path": "/x", "size": 1}])), 400, "unknown field"),
    ("POST", "/vms", json.dumps(with_(disks=[{}] * 9)), 400, "at most"),
    ("POST", "/vms", json.dumps(with_(cmdline="a\nb")), 400, "control"),
    ("POST", "/vms", json.dumps(with_(nics=[{"tap": "a/b"}])), 400, "tap"),
    ("POST", "/vms", json.dumps(with_(nics=[{"tap": "x" * 16}])), 400, "tap"),
    ("POST", "/vms", json.dumps(with_(nics=[{"mac": "52:54:00:12:34"}])), 400, "mac"),
    ("POST", "/vms", json.dumps(with_(nics=[{"mtu": 20}])), 400, "mtu"),
    ("POST", "/vms", json.dumps(with_(nics=[{}] * 5)), 400, "at most"),
    ("POST", "/vms", json.dumps(with_(balloon_target="1M")), 400, "balloon"),
    ("POST", "/vms", json.dumps(with_(name="keep")), 409, "exists"),
    ("GET", "/vms/nope", None, 404, "no VM"),
    ("GET", "/vms/..", None, 400, "name"),
    ("GET", "/vms/a%2F..%2Fb", None, 400, "name"),
    ("GET", "/nothing", None, 404, "route"),
    ("GET", "/vms/keep/start", None, 405, "POST"),
    ("PUT", "/vms", None, 405, "GET or POST"),
    ("POST", "/vms/keep/explode", None, 404, "unknown action"),
    ("POST", "/vms/keep/start", None, 409, "already running"),
    ("POST", "/vms/keep/resume", None, 409, "running"),
    ("POST", "/vms/keep/stop", '{"force": "yes"}', 400, "force"),
    ("POST", "/vms/keep/pause", '{"force": true}', 400, "unknown field"),
    ("PATCH", "/vms/keep", '{"cpus": 4}', 400, "unknown field 'cpus'"),
    ("PATCH", "/vms/keep", '{"cpu_weight": 0}', 400, "cpu_weight"),
    ("PATCH", "/vms/keep", '{"disk_limits": [{"disk": 0, "bps": 1}]}', 400, "no disk 0"),
    ("DELETE", "/vms/keep", None, 409, "stop it first"),
    ("POST", "/metrics", None, 405, "GET"),
]


@pytest.mark.parametrize("method,path,body,status,words", BAD,
                         ids=[f"{m} {p} {i}" for i, (m, p, *_rest) in enumerate(BAD)])
def test_bad_request(daemon, method, path, body, status, words):
    st, js = daemon.request(method, path, raw=body)
    assert st == status, js
    assert isinstance(js, dict) and words in js["error"], js
    assert "code" in js
    assert daemon.vm("keep")["state"] == "running"


def test_oversized_body_is_refused(daemon):
    st, js = daemon.request("POST", "/vms", raw="x" * 200_000)
    assert st == 413 and "larger than" in js["error"]
    st, js = daemon.request("POST", "/vms", raw=json.dumps(with_(cmdline="a" * 5000)))
    assert st == 400


def test_raw_garbage_on_the_socket(daemon):
    """Not even HTTP: the daemon closes or answers 400, and stays up."""
    for junk in (b"\x00\xff" * 100, b"GET\r\n\r\n", b"GET /vms HTTP/9.9\r\n\r\n",
                 b"POST /vms HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n{",
                 b"GET /" + b"a" * 100000 + b" HTTP/1.1\r\n\r\n"):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(scaled(5))
        s.connect(daemon.socket)
        try:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            s.recv(4096)
        except OSError:
            pass
        s.close()
    assert daemon.vm("keep")["state"] == "running"


def mutate(rng, text):
    ops = rng.randrange(4)
    b = list(text)
    for _ in range(rng.randrange(1, 6)):
        if not b:
            break
        i = rng.randrange(len(b))
        if ops == 0:
            b[i] = chr(rng.randrange(32, 127))
        elif ops == 1:
            del b[i]
        elif ops == 2:
            b.insert(i, rng.choice('{}[]",:0-9ae\\'))
        else:
            b[i:i + rng.randrange(1, 8)] = []
    return "".join(b)


def test_fuzz_malformed_requests(daemon):
    """Bounded: 400 requests or 20 s. Each answer is JSON with a status below
    500; the daemon and the running VM survive; only valid names appear."""
    rng = random.Random(5)
    bodies = [json.dumps(good_def("f")), json.dumps({"cpu_weight": 10, "cpu_max": 20}),
              json.dumps({"disk_limits": [{"disk": 0, "bps": 1}]}), '{"force": true}']
    paths = ["/vms", "/vms/keep", "/vms/keep/stop", "/vms/keep/pause", "/vms/f", "/metrics"]
    methods = ["GET", "POST", "PATCH", "DELETE", "PUT"]
    end = time.monotonic() + 20
    n = 0
    while n < 400 and time.monotonic() < end:
        method = rng.choice(methods)
        path = rng.choice(paths)
        if rng.random() < 0.3:
            path = mutate(rng, path).replace(" ", "") or "/"
            if not path.startswith("/"):
                path = "/" + path
        body = mutate(rng, rng.choice(bodies)) if rng.random() < 0.9 else None
        if path in ("/vms/keep/stop",) or (method == "DELETE" and "keep" in path):
            continue  # keep the witness VM running
        st, js = daemon.request(method, path, raw=body)
        assert st < 500 or (isinstance(js, dict) and "error" in js), (method, path, body, st, js)
        if path != "/metrics" or method != "GET":
            assert isinstance(js, dict), (method, path, body, js)
        n += 1
    assert n >= 100
    assert daemon.proc.poll() is None
    assert daemon.vm("keep")["state"] in ("running", "paused")
    for v in daemon.ok("GET", "/vms")["vms"]:
        assert v["name"] in ("keep", "f")
    for f in os.listdir(os.path.join(daemon.state, "vms")):
        assert f in ("keep.json", "f.json"), f


def test_concurrent_clients_on_one_vm(daemon):
    """Two clients pausing and resuming one VM at once: each gets 200 or 409,
    the state stays consistent with the VMM's."""
    import threading
    results = []

    def worker(action):
        for _ in range(20):
            results.append(daemon.request("POST", f"/vms/keep/{action}")[0])

    ts = [threading.Thread(target=worker, args=(a,)) for a in ("pause", "resume")]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert set(results) <= {200, 409}
    vm = daemon.vm("keep")
    assert vm["state"] == vm["vmm"]["state"]
    if vm["state"] == "paused":
        daemon.ok("POST", "/vms/keep/resume")


# ---- the VMM's control socket, without the daemon ----

class Control:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(scaled(5))
        self.s.connect(path)
        self.f = self.s.makefile("rw")

    def raw(self, line):
        self.f.write(line + "\n")
        self.f.flush()
        return json.loads(self.f.readline())

    def __call__(self, **req):
        return self.raw(json.dumps(req))


@pytest.fixture
def vmm(tmp_path):
    sock = f"/tmp/vc-{os.getpid()}-{time.monotonic_ns()}.sock"
    img = tmp_path / "d.img"
    img.write_bytes(b"\0" * (1 << 20))
    p = subprocess.Popen([str(VIREO), "run", "--kernel", str(PROBE), "--memory", "64M",
                          "--cpus", "2", "--cmdline", "scenario=cpuburn=100000",
                          "--disk", f"path={img},format=raw", "--api-socket", sock],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    assert wait_for(lambda: os.path.exists(sock))
    yield p, sock
    if p.poll() is None:
        p.kill()
    p.wait()
    if os.path.exists(sock):        # a killed VMM leaves its socket
        os.unlink(sock)


def test_control_socket_actions(vmm):
    p, sock = vmm
    c = Control(sock)
    info = c(action="info")
    assert info["ok"] and info["state"] == "running" and info["cpus"] == 2
    assert info["pid"] == p.pid and len(info["vcpus"]) == 2
    # tids appear as the vCPU threads start, right after the socket.
    assert wait_for(lambda: all(v["tid"] > 0 for v in c(action="info")["vcpus"]))
    assert info["disks"][0]["path"].endswith("d.img")
    assert c(action="pause") == {"ok": True, "state": "paused"}
    r = c(action="pause")
    assert not r["ok"] and r["code"] == "wrong-state"
    t0 = sum(v["cpu_ns"] for v in c(action="info")["vcpus"])
    time.sleep(0.2)
    assert sum(v["cpu_ns"] for v in c(action="info")["vcpus"]) - t0 < 10_000_000
    assert c(action="set-limits", disk=0, iops=10)["ok"]  # legal while paused
    assert c(action="resume")["state"] == "running"
    assert c(action="info")["disks"][0]["iops"] == 10
    assert c(action="set-limits", disk=0, bps=1 << 20)["ok"]
    d = c(action="info")["disks"][0]
    assert d["bps"] == 1 << 20 and d["iops"] == 10
    assert c(action="pin", vcpu=1, cpus="0")["ok"]
    assert os.sched_getaffinity(c(action="info")["vcpus"][1]["tid"]) == {0}
    assert c(action="poweroff") == {"ok": True, "state": "stopped"}
    assert p.wait(timeout=scaled(10)) == 0
    assert not os.path.exists(sock)


def test_control_socket_bad_requests(vmm):
    p, sock = vmm
    c = Control(sock)
    cases = [
        ("{", "bad-request"), ("[]", "bad-request"), ('"info"', "bad-request"),
        ('{"action": 1}', "bad-request"), ('{"action": "fly"}', "bad-request"),
        ('{"action": "info", "extra": 1}', "bad-request"),
        ('{"action": "info"} {"action": "info"}', "bad-request"),
        ('{"action": "set-limits", "disk": 0}', "bad-request"),
        ('{"action": "set-limits", "disk": 5, "bps": 1}', "not-found"),
        ('{"action": "set-limits", "disk": 0, "bps": -1}', "bad-request"),
        ('{"action": "set-limits", "disk": 0, "bps": 1.5}', "bad-request"),
        ('{"action": "pin", "vcpu": 7, "cpus": "0"}', "not-found"),
        ('{"action": "pin", "vcpu": 0, "cpus": "3-1"}', "bad-request"),
        ('{"action": "pin", "vcpu": 0, "cpus": ""}', "bad-request"),
        ('{"action": "pin", "vcpu": 0, "cpus": "99999"}', "bad-request"),
        ('{"action": "resume"}', "wrong-state"),
        ('{"action": "balloon", "target": 4096}', "not-found"),
        ('{"action": "balloon"}', "bad-request"),
        ('{"action": "set-limits", "nic": 0, "rx_bps": 1}', "not-found"),
        ('{"action": "set-limits", "nic": 0, "bps": 1}', "bad-request"),
        ('{"action": "set-limits", "disk": 0, "nic": 0, "bps": 1}', "bad-request"),
        ('{"action": "set-limits", "disk": 0, "bps": 1, "tx_bps": 1}', "bad-request"),
    ]
    for line, code in cases:
        r = c.raw(line)
        assert r["ok"] is False and r["code"] == code, (line, r)
    # A line longer than the limit closes that connection only.
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    s.sendall(b"x" * 70000)
    assert b"too long" in s.recv(4096)
    s.close()
    # Random bytes, then the socket still answers.
    rng = random.Random(7)
    for _ in range(50):
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        s.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) + b"\n")
        s.close()
    assert c(action="info")["state"] == "running"
    assert p.poll() is None
