"""Issue 10, item 8 ("smaller ones"): images that are not files, URL and
body bytes that cut names, definitions that can never start, PATCHes that
half-apply, terminal escapes from the daemon, and CLI options anywhere."""
import json
import os
import subprocess
import tempfile

import pytest

from conftest import PROBE, VIREO, needs_kvm, scaled
from daemonutil import Daemon

BAD_CPU = str(os.cpu_count() + 3)      # a CPU this host does not have


def test_img_info_on_a_fifo_fails_at_once(tmp_path):
    """DESIGN §3.15: a FIFO is refused after a non-blocking open, not read
    (it blocked until a writer came)."""
    fifo = tmp_path / "disk.img"
    os.mkfifo(fifo)
    for args in (["info", str(fifo)], ["check", str(fifo)], ["info", "-f", "raw", str(fifo)]):
        r = subprocess.run([str(VIREO), "img", *args], capture_output=True, text=True,
                           timeout=scaled(10))
        assert r.returncode != 0 and "FIFO, not a regular file" in r.stderr, r


@pytest.fixture(scope="module")
def daemon():
    d = Daemon().start()
    yield d
    d.cleanup()


def vm_cli(d, *args):
    return subprocess.run([str(VIREO), "vm", "--socket", d.socket, *args],
                          capture_output=True, text=True, timeout=scaled(30))


def defn(name, **kw):
    d = {"name": name, "cpus": 1, "memory": "64M", "kernel": str(PROBE),
         "cmdline": "scenario=cpuburn=100000"}
    d.update(kw)
    return d


def test_nul_in_the_url_does_not_cut_the_name(daemon):
    daemon.ok("POST", "/vms", defn("cli1"), status=201)
    for method, path in (("DELETE", "/vms/cli1%00zzz"), ("GET", "/vms/cli1%00"),
                         ("POST", "/vms/cli1%00/start"), ("DELETE", "/vms/cli1%2F..")):
        st, js = daemon.request(method, path)
        assert st == 400, (path, st, js)
    r = vm_cli(daemon, "delete", "cli1%00zzz")
    assert r.returncode == 1 and "400" in r.stderr, r
    assert daemon.vm("cli1")["name"] == "cli1"
    # An escaped but valid name still works.
    assert daemon.request("GET", "/vms/%63li1")[0] == 200
    daemon.ok("DELETE", "/vms/cli1")


def test_a_nul_after_the_json_body_is_refused(daemon):
    body = json.dumps(defn("nul1"))
    for tail in ("\0", "\0garbage", " \0 "):
        st, js = daemon.request("POST", "/vms", raw=body + tail)
        assert st == 400 and "trailing" in js["error"], (tail, st, js)
    assert daemon.request("GET", "/vms/nul1")[0] == 404
    daemon.ok("POST", "/vms", defn("nul2"), status=201)
    st, js = daemon.request("PATCH", "/vms/nul2", raw='{"cpu_weight": 7}\0')
    assert st == 400, js
    assert daemon.vm("nul2")["cpu_weight"] == 100
    daemon.ok("DELETE", "/vms/nul2")


NEVER_START = [
    # (definition changes, a word the error must contain: the field)
    ({"name": "tasks"}, "name"),
    ({"name": "cpu.shares"}, "name"),
    ({"name": "cgroup.procs"}, "name"),
    ({"name": "memory.max"}, "name"),
    ({"nics": [{"mac": "01:00:5e:00:00:01"}]}, "mac"),
    ({"nics": [{"mac": "33:33:00:00:00:01"}]}, "mac"),
    ({"nics": [{"mac": "00:00:00:00:00:00"}]}, "mac"),
    ({"memory": "1T"}, "memory"),
    ({"cpu_pin": [BAD_CPU]}, "cpu_pin"),
    ({"cpu_pin": ["0-" + BAD_CPU]}, "cpu_pin"),
]


@pytest.mark.parametrize("change,word", NEVER_START,
                         ids=[f"{i}-{w}" for i, (_c, w) in enumerate(NEVER_START)])
def test_create_refuses_what_can_never_start(daemon, change, word):
    d = defn("ns1")
    d.update(change)
    st, js = daemon.request("POST", "/vms", d)
    assert st == 400 and word in js["error"], (change, st, js)
    assert daemon.request("GET", "/vms/" + d["name"])[0] in (400, 404)


def test_a_name_too_long_for_the_state_dirs_socket_path():
    """A 64-character name under a deep state dir: the control socket path
    would pass 107 bytes. Refused at create, naming 'name'; a shorter one
    fits."""
    root = tempfile.mkdtemp(prefix="vd-", dir="/tmp")
    deep = os.path.join(root, "d" * 20)
    os.mkdir(deep)
    d = Daemon(root=deep).start()
    try:
        name = "n" * 64
        assert len(d.state) + len("/run/") + 64 + len(".sock") > 107
        st, js = d.request("POST", "/vms", defn(name))
        assert st == 400 and "'name'" in js["error"] and "socket" in js["error"], js
        assert d.request("GET", "/vms/" + name)[0] == 404
        short = "n" * (107 - len(d.state) - len("/run/") - len(".sock"))
        d.ok("POST", "/vms", defn(short), status=201)
    finally:
        d.cleanup()
        os.rmdir(root) if os.path.isdir(root) else None


def def_file(d, name):
    with open(os.path.join(d.state, "vms", name + ".json")) as f:
        return f.read()


def test_a_failed_patch_changes_nothing_on_a_stopped_vm(daemon):
    daemon.ok("POST", "/vms", defn("p1"), status=201)
    before, disk = daemon.vm("p1"), def_file(daemon, "p1")
    st, js = daemon.request("PATCH", "/vms/p1", {"cpu_weight": 300, "cpu_pin": [BAD_CPU]})
    assert st == 400 and "cpu_pin" in js["error"], js
    # The save fails (its temp file cannot be created): 500, nothing kept.
    os.mkdir(os.path.join(daemon.state, "vms", "p1.json.tmp"))
    try:
        st, js = daemon.request("PATCH", "/vms/p1", {"cpu_weight": 333})
        assert st == 500, js
    finally:
        os.rmdir(os.path.join(daemon.state, "vms", "p1.json.tmp"))
    after = daemon.vm("p1")
    assert (after["cpu_weight"], after["cpu_pin"]) == (before["cpu_weight"], before["cpu_pin"])
    assert def_file(daemon, "p1") == disk
    daemon.ok("PATCH", "/vms/p1", {"cpu_weight": 334})
    assert daemon.vm("p1")["cpu_weight"] == 334
    daemon.ok("DELETE", "/vms/p1")


@needs_kvm
def test_a_failed_patch_changes_nothing_on_a_running_vm(daemon):
    daemon.ok("POST", "/vms", defn("p2", cpus=2), status=201)
    daemon.ok("POST", "/vms/p2/start")
    try:
        before, disk = daemon.vm("p2"), def_file(daemon, "p2")
        st, js = daemon.request("PATCH", "/vms/p2", {"cpu_weight": 300, "cpu_pin": [BAD_CPU]})
        assert st == 400 and "cpu_pin" in js["error"], js
        os.mkdir(os.path.join(daemon.state, "vms", "p2.json.tmp"))
        try:
            st, js = daemon.request("PATCH", "/vms/p2", {"cpu_weight": 333, "cpu_pin": ["0"]})
            assert st == 500, js
        finally:
            os.rmdir(os.path.join(daemon.state, "vms", "p2.json.tmp"))
        after = daemon.vm("p2")
        assert after["state"] == "running"
        assert (after["cpu_weight"], after["cpu_pin"]) == (before["cpu_weight"],
                                                           before["cpu_pin"])
        assert def_file(daemon, "p2") == disk
    finally:
        daemon.stop("p2", force=True)
        daemon.ok("DELETE", "/vms/p2")


def test_the_cli_escapes_what_it_prints(daemon, tmp_path):
    """A reason (the guest's last line) or an error that quotes a client's
    field name reaches the terminal escaped, never as raw control bytes."""
    daemon.ok("POST", "/vms", defn("esc1"), status=201)
    daemon.kill()
    run = os.path.join(daemon.state, "run", "esc1.json")
    with open(run, "w") as f:
        json.dump({"state": "crashed", "reason": "\x1b]0;owned\x07\x1b[2J\u009b31m"}, f)
    daemon.start()
    for args in (["list"], ["info", "esc1"], ["list", "--output=json"]):
        r = vm_cli(daemon, *args)
        assert r.returncode == 0, r
        for raw in ("\x1b", "\x07", "\u009b"):
            assert raw not in r.stdout, (args, r.stdout)
        assert "owned" in r.stdout
    assert "\\x1b]0;owned\\x07" in vm_cli(daemon, "list").stdout
    spec = tmp_path / "bad.json"
    spec.write_text(json.dumps({**defn("esc2"), "\x1b[31mred": 1}))
    r = vm_cli(daemon, "create", "--file", str(spec))
    assert r.returncode == 1 and "unknown field" in r.stderr, r
    assert "\x1b" not in r.stderr and "\\x1b[31mred" in r.stderr, r.stderr
    daemon.ok("DELETE", "/vms/esc1")


@needs_kvm
def test_cli_options_go_anywhere(daemon):
    """As getopt permutes: options before or after the name (and --socket
    or --output after the command)."""
    sock = daemon.socket
    r = subprocess.run([str(VIREO), "vm", "create", "--kernel", str(PROBE), "o1", "--memory",
                        "64M", "--cmdline", "scenario=cpuburn=100000", "--socket", sock],
                       capture_output=True, text=True, timeout=scaled(30))
    assert r.returncode == 0, r.stderr
    assert vm_cli(daemon, "set", "--cpu-weight", "55", "o1").returncode == 0
    assert daemon.vm("o1")["cpu_weight"] == 55
    r = subprocess.run([str(VIREO), "vm", "start", "o1", "--socket", sock, "--output=json"],
                       capture_output=True, text=True, timeout=scaled(30))
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "running", r
    r = vm_cli(daemon, "stop", "--force", "o1")
    assert r.returncode == 0 and r.stdout.startswith("o1: stopped"), r
    assert vm_cli(daemon, "start", "o1").returncode == 0
    r = vm_cli(daemon, "stop", "--timeout", "5", "o1", "--force")
    assert r.returncode == 0 and r.stdout.startswith("o1: stopped"), r
    r = vm_cli(daemon, "stop", "o1", "--frobnicate")
    assert r.returncode == 2 and "usage" in r.stderr, r
    r = vm_cli(daemon, "info", "--output", "json", "o1")
    assert r.returncode == 0 and json.loads(r.stdout)["name"] == "o1", r
    r = vm_cli(daemon, "top", "--count", "1", "--interval", "0.2", "--output=json")
    assert r.returncode == 0 and json.loads(r.stdout) is not None, r
    assert vm_cli(daemon, "delete", "o1", "extra").returncode == 2
    assert vm_cli(daemon, "delete", "o1").returncode == 0
