"""Virtual networks (issue 13, first step): the daemon's Linux bridges
(POST/GET/DELETE /networks, `vireo net`), vNICs on them, persistence.
Needs root and iproute2; bridge names are unique per test run, and every
bridge a test made is deleted afterwards."""
import json
import re
import os
import shutil
import signal
import subprocess

import pytest

from conftest import VIREO, needs_kvm
from daemonutil import Daemon, wait_for

pytestmark = [needs_kvm, pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="skipped: needs root and iproute2")]

TAG = "%x" % (os.getpid() & 0xfffff)


def netname(suffix):
    return f"t{TAG}{suffix}"[:12]


def link_config(name):
    """`ip -d link show NAME` without its running timers."""
    out = subprocess.run(["ip", "-d", "link", "show", name], capture_output=True,
                         text=True).stdout
    return re.sub(r"\S*_timer\s+\S+", "", out)


def link_exists(name):
    return os.path.exists(f"/sys/class/net/{name}")


def bridges():
    out = subprocess.run(["ip", "-o", "-d", "link", "show", "type", "bridge"],
                         capture_output=True, text=True, check=True).stdout
    return sorted(line.split(":")[1].strip() for line in out.splitlines())


def ports(bridge):
    d = f"/sys/class/net/{bridge}/brif"
    return sorted(os.listdir(d)) if os.path.isdir(d) else None


@pytest.fixture
def netd(tmp_path):
    d = Daemon(extra=["--storage", str(tmp_path)]).start()
    made = []
    d.made = made
    yield d
    d.cleanup()
    for n in made:
        if link_exists("vb-" + n):
            subprocess.run(["ip", "link", "del", "vb-" + n])


def create_net(d, name, **kw):
    d.made.append(name)
    return d.ok("POST", "/networks", {"name": name, **kw}, status=201)


def test_network_api_lifecycle(netd):
    a = netname("a")
    js = create_net(netd, a)
    assert js["bridge"] == "vb-" + a and js["present"] and js["ports"] == []
    assert "vb-" + a in bridges()
    assert [n["name"] for n in netd.ok("GET", "/networks")["networks"]] == [a]
    info = netd.ok("GET", f"/networks/{a}")
    assert info["vlan_aware"] is False and "rx_bytes" in info["counters"]
    st, js = netd.request("POST", "/networks", {"name": a})
    assert st == 409 and "exists" in js["error"], js
    assert netd.ok("DELETE", f"/networks/{a}")["deleted"] == a
    assert not link_exists("vb-" + a)
    assert netd.request("GET", f"/networks/{a}")[0] == 404
    assert netd.request("DELETE", f"/networks/{a}")[0] == 404
    assert not os.path.exists(os.path.join(netd.state, "networks", a + ".json"))


def test_bad_input_changes_nothing(netd):
    a = netname("b")
    create_net(netd, a)
    before = link_config("vb-" + a)
    def nets():     # without the counters, which the bridge's own frames move
        return [{k: v for k, v in n.items() if k != "counters"}
                for n in netd.ok("GET", "/networks")["networks"]]
    nets_before = nets()
    files_before = sorted(os.listdir(os.path.join(netd.state, "networks")))
    bad = [({"name": "bad name"}, "'name'"),
           ({"name": "x" * 13}, "'name'"),
           ({"name": "-x"}, "'name'"),
           ({"name": netname("c"), "uplink": f"nope{TAG}"}, "'uplink'"),
           ({"name": netname("c"), "vlan_aware": "yes"}, "'vlan_aware'"),
           ({"name": netname("c"), "color": "red"}, "'color'"),
           ({}, "'name'")]
    for body, field in bad:
        st, js = netd.request("POST", "/networks", body)
        assert st == 400 and field in js["error"], (body, st, js)
    # A VM on an unknown network is refused naming the field, and not created.
    st, js = netd.request("POST", "/vms", {
        "name": "vx", "cpus": 1, "memory": "64M", "kernel": str(netd_probe()),
        "nics": [{"network": netname("zz")}]})
    assert st == 400 and "nics[0]" in js["error"] and "'network'" in js["error"], js
    assert netd.request("GET", "/vms/vx")[0] == 404
    # No bridge of any name asked for (the host's whole list is not
    # compared: a second test run beside this one makes bridges of its own).
    for name in ("bad name", "x" * 13, "-x", netname("c"), netname("zz")):
        assert not link_exists(("vb-" + name)[:15]), name
    assert nets() == nets_before
    assert sorted(os.listdir(os.path.join(netd.state, "networks"))) == files_before
    assert link_config("vb-" + a) == before


def test_vlan_aware_is_all_or_nothing(netd):
    """This host's kernel may lack bridge VLAN filtering: then a clear 400
    and no bridge; where it has it, a bridge with vlan_filtering 1."""
    v = netname("v")
    netd.made.append(v)
    st, js = netd.request("POST", "/networks", {"name": v, "vlan_aware": True})
    if st == 400:
        assert "VLAN filtering" in js["error"], js
        assert not link_exists("vb-" + v)
        assert netd.ok("GET", "/networks")["networks"] == []
    else:
        assert st == 201, js
        out = subprocess.run(["ip", "-d", "link", "show", "vb-" + v], capture_output=True,
                             text=True, check=True).stdout
        assert "vlan_filtering 1" in out


def netd_probe():
    from conftest import PROBE
    return PROBE


def cli(d, *args):
    return subprocess.run([str(VIREO), "net", *args], capture_output=True, text=True,
                          env={**os.environ, "VIREO_SOCKET": d.socket}, timeout=30)


def test_cli(netd):
    a = netname("l")
    netd.made.append(a)
    r = cli(netd, "create", a, "--output=json")     # options after the operand too
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bridge"] == "vb-" + a
    r = cli(netd, "--output=json", "list")
    assert [n["name"] for n in json.loads(r.stdout)["networks"]] == [a]
    r = cli(netd, "list")
    assert r.returncode == 0 and ("vb-" + a) in r.stdout and "BRIDGE" in r.stdout
    r = cli(netd, "info", a)
    assert r.returncode == 0 and "rx_bytes" in r.stdout, r
    r = cli(netd, "create", "bad name")
    assert r.returncode != 0 and "'name'" in r.stderr and "HTTP 400" in r.stderr, r
    r = cli(netd, "info", a, "--uplink", "eth0")
    assert r.returncode == 2, r
    r = cli(netd, "delete", a)
    assert r.returncode == 0 and not link_exists("vb-" + a)
    r = cli(netd, "delete", a)
    assert r.returncode == 1 and "HTTP 404" in r.stderr


def test_networks_persist_across_restart(tmp_path):
    a = netname("p")
    d = Daemon(extra=["--storage", str(tmp_path)]).start()
    try:
        d.ok("POST", "/networks", {"name": a}, status=201)
        d.kill(signal.SIGTERM)
        assert link_exists("vb-" + a)            # bridges outlive the daemon
        subprocess.run(["ip", "link", "del", "vb-" + a], check=True)
        d.start()
        assert link_exists("vb-" + a), d.logtext()   # re-created
        assert d.ok("GET", f"/networks/{a}")["present"] is True
        d.kill(signal.SIGTERM)
        d.start()                                    # adopted as it is
        assert [n["name"] for n in d.ok("GET", "/networks")["networks"]] == [a]
        d.ok("DELETE", f"/networks/{a}")
    finally:
        d.cleanup()
        if link_exists("vb-" + a):
            subprocess.run(["ip", "link", "del", "vb-" + a])


def test_two_vms_on_a_network_exchange_frames(netd):
    """VM "echo" (MAC 02:00:00:00:00:01, the probe's "host" address) sends
    back what VM "send" sends it, through the bridge only."""
    a = netname("x")
    br = "vb-" + a
    create_net(netd, a)
    netd.create("echo", scenario="net_echo", nics=[{"network": a, "mac": "02:00:00:00:00:01"}],
                cmdline="scenario=net_echo net_echo=64")
    netd.create("send", scenario="net", cmdline="scenario=net n=64",
                nics=[{"network": a, "mac": "52:54:00:00:00:0a"}])
    netd.ok("POST", "/vms/echo/start")
    assert len(ports(br)) == 1
    st, js = netd.request("DELETE", f"/networks/{a}")
    assert st == 409 and "is used by VM" in js["error"], js
    assert wait_for(lambda: "PROBE net_echo ready" in netd.vm_log("echo"), timeout=20), \
        netd.vm_log("echo")
    netd.ok("POST", "/vms/send/start")
    assert wait_for(lambda: netd.vm("send")["state"] == "stopped", timeout=30), \
        (netd.vm("send"), netd.vm_log("send"))
    assert "PROBE net mac=52:54:00:00:00:0a sent=64 received=64 mismatches=0" in \
        netd.vm_log("send"), netd.vm_log("send")
    assert wait_for(lambda: netd.vm("echo")["state"] == "stopped", timeout=30), netd.vm_log("echo")
    assert "PROBE net_echo echoed=64" in netd.vm_log("echo")
    # Both VMMs ended: their taps (and so the ports) are gone.
    assert wait_for(lambda: ports(br) == [], timeout=10), ports(br)
    # Still defined on the network: deleting it is refused until the VMs go.
    assert netd.request("DELETE", f"/networks/{a}")[0] == 409
    netd.ok("DELETE", "/vms/echo")
    netd.ok("DELETE", "/vms/send")
    netd.ok("DELETE", f"/networks/{a}")
    assert not link_exists(br)


def test_vm_stop_and_crash_leave_no_port(netd):
    a = netname("s")
    br = "vb-" + a
    create_net(netd, a)
    netd.create("w", scenario="wait", nics=[{"network": a}])
    netd.ok("POST", "/vms/w/start")
    (tap,) = ports(br)
    assert tap.startswith("vt")
    netd.stop("w", force=True)
    assert wait_for(lambda: ports(br) == [], timeout=10), ports(br)
    assert not link_exists(tap)
    pid = netd.ok("POST", "/vms/w/start")["pid"]
    assert ports(br) == [tap]
    os.kill(pid, signal.SIGKILL)                      # a crash too
    assert wait_for(lambda: netd.vm("w")["state"] == "crashed", timeout=10)
    assert wait_for(lambda: ports(br) == [], timeout=10), ports(br)
    assert not link_exists(tap)


def test_restart_rebuilds_the_bridge_of_a_running_vm(tmp_path):
    """The bridge is deleted under a running VM while no daemon runs: the
    next daemon re-creates it with the VM's tap as a port again; a VMM that
    died meanwhile has its tap deleted."""
    a = netname("r")
    br = "vb-" + a
    d = Daemon(extra=["--storage", str(tmp_path)]).start()
    try:
        d.ok("POST", "/networks", {"name": a}, status=201)
        d.create("keep", scenario="wait", nics=[{"network": a}])
        d.create("gone", scenario="wait", nics=[{"network": a}])
        d.ok("POST", "/vms/keep/start")
        gone_pid = d.ok("POST", "/vms/gone/start")["pid"]
        taps = ports(br)
        assert len(taps) == 2
        d.kill(signal.SIGTERM)
        subprocess.run(["ip", "link", "del", br], check=True)
        os.kill(gone_pid, signal.SIGKILL)
        d.start()
        assert d.vm("keep")["state"] == "running"
        assert wait_for(lambda: d.vm("gone")["state"] == "crashed", timeout=10)
        (tap,) = [t for t in taps if link_exists(t)]
        assert ports(br) == [tap], (ports(br), d.logtext())
    finally:
        d.cleanup()
        if link_exists(br):
            subprocess.run(["ip", "link", "del", br])


def test_restart_with_the_lock_held_by_a_vmm_not_found_leaves_no_tap(tmp_path):
    """A VMM killed just before the daemon starts can still be exiting: it
    holds the VM's lock but is no longer found as that VM's VMM. The daemon
    takes the VM for crashed, and then nothing of it may stay behind (its
    tap outside any bridge would make the next start fail). Here a lock of
    the test's own plays that VMM."""
    import fcntl
    a = netname("l")
    br = "vb-" + a
    d = Daemon(extra=["--storage", str(tmp_path)]).start()
    try:
        d.ok("POST", "/networks", {"name": a}, status=201)
        d.create("held", scenario="wait", nics=[{"network": a}])
        pid = d.ok("POST", "/vms/held/start")["pid"]
        (tap,) = ports(br)
        d.kill(signal.SIGTERM)
        os.kill(pid, signal.SIGKILL)

        def take(lock):
            try:
                fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:         # its threads are still exiting
                return False
        with open(os.path.join(d.state, "run", "held.lock"), "a") as lock:
            assert wait_for(lambda: take(lock), timeout=10), "the killed VMM kept its lock"
            d.start()
            vm = d.vm("held")
            assert vm["state"] == "crashed" and "holds its lock" in vm["reason"], vm
            assert not link_exists(tap), (tap, ports(br), d.logtext())
        assert ports(br) == []
        d.ok("POST", "/vms/held/start")
        assert d.vm("held")["state"] == "running" and ports(br) == [tap]
    finally:
        d.cleanup()
        if link_exists(br):
            subprocess.run(["ip", "link", "del", br])


def test_uplink_is_a_port_and_survives_the_network(netd):
    a = netname("u")
    up, peer = f"vu{TAG}", f"vp{TAG}"
    subprocess.run(["ip", "link", "add", up, "type", "veth", "peer", "name", peer], check=True)
    try:
        js = create_net(netd, a, uplink=up)
        assert js["uplink"] == up and [p["name"] for p in js["ports"]] == [up]
        assert ports("vb-" + a) == [up]
        netd.ok("DELETE", f"/networks/{a}")
        assert link_exists(up) and not link_exists("vb-" + a)   # the uplink is the host's
    finally:
        subprocess.run(["ip", "link", "del", up])


def test_a_tap_name_in_use_is_refused_and_left_alone(netd):
    """A second VM whose nic names the first one's tap cannot take it over:
    its start fails naming the owner, and the first VM keeps its port."""
    a = netname("t")
    br = "vb-" + a
    create_net(netd, a)
    netd.create("w1", scenario="wait", nics=[{"network": a}])
    netd.ok("POST", "/vms/w1/start")
    (tap,) = ports(br)
    netd.create("w2", scenario="wait", nics=[{"network": a, "tap": tap}])
    st, js = netd.request("POST", "/vms/w2/start")
    assert st >= 400 and "w1" in js["error"] and tap in js["error"], (st, js)
    assert ports(br) == [tap] and netd.vm("w1")["state"] == "running"


def test_two_daemons_on_one_host_with_same_vm_names(netd, tmp_path):
    """Two daemons (a test run beside another, or two state dirs) whose VMs
    share a name: each VM gets its own tap; neither start is refused."""
    a, b = netname("p"), netname("q")
    create_net(netd, a)
    (tmp_path / "other").mkdir()
    other = Daemon(extra=["--storage", str(tmp_path / "other")]).start()
    try:
        other.ok("POST", "/networks", {"name": b}, status=201)
        for d, n in ((netd, a), (other, b)):
            d.create("web", scenario="wait", nics=[{"network": n}])
            d.ok("POST", "/vms/web/start")
        (ta,), (tb,) = ports("vb-" + a), ports("vb-" + b)
        assert ta != tb and netd.vm("web")["state"] == other.vm("web")["state"] == "running"
        # The same state dir keeps its names: a restart re-adopts the port.
        other.kill(signal.SIGTERM)
        other.start()
        assert other.vm("web")["state"] == "running" and ports("vb-" + b) == [tb]
    finally:
        other.cleanup()
        if link_exists("vb-" + b):
            subprocess.run(["ip", "link", "del", "vb-" + b])


def test_bad_vlans_are_refused_naming_the_field(netd):
    """VLAN ids out of 1..4094, a trunk with an access VLAN, a native VLAN
    without a trunk, VLANs on a network that is not vlan_aware: 400 naming
    the field, and no VM or network made."""
    a = netname("q")
    create_net(netd, a)
    before = link_config("vb-" + a)
    bad = [({"vlan": 0}, "'vlan'"), ({"vlan": 4095}, "'vlan'"), ({"vlan": 5000}, "'vlan'"),
           ({"vlan": "10"}, "'vlan'"), ({"trunk": [10, 4095]}, "'trunk'[1]"),
           ({"trunk": ["30-20"]}, "'trunk'[0]"), ({"trunk": []}, "'trunk'"),
           ({"vlan": 10, "trunk": [20]}, "'trunk'"), ({"native_vlan": 10}, "'native_vlan'"),
           ({"trunk": [20], "native_vlan": 0}, "'native_vlan'"),
           ({"vlan": 10}, "not vlan_aware"), ({"trunk": [10]}, "not vlan_aware")]
    for extra, field in bad:
        st, js = netd.request("POST", "/vms", {
            "name": "vv", "cpus": 1, "memory": "64M", "kernel": str(netd_probe()),
            "nics": [{"network": a, **extra}]})
        assert st == 400 and "nics[0]" in js["error"] and field in js["error"], (extra, js)
    st, js = netd.request("POST", "/vms", {"name": "vv", "cpus": 1, "memory": "64M",
                                           "kernel": str(netd_probe()), "nics": [{"vlan": 10}]})
    assert st == 400 and "'network'" in js["error"], js
    assert netd.request("GET", "/vms/vv")[0] == 404
    st, js = netd.request("POST", "/networks", {"name": netname("w"), "vlans": [10]})
    assert st == 400 and "'vlans'" in js["error"] and "vlan_aware" in js["error"], js
    st, js = netd.request("POST", "/networks", {"name": netname("w"), "vlan_aware": True,
                                                "vlans": [0]})
    assert st == 400 and "'vlans'" in js["error"], js
    assert not link_exists("vb-" + netname("w"))
    assert link_config("vb-" + a) == before


def test_patch_of_vlans_is_checked_and_changes_nothing_when_refused(netd):
    a = netname("k")
    create_net(netd, a)
    netd.create("pv", scenario="wait", nics=[{"network": a}, {"mac": "52:54:00:00:00:0b"}])
    before = netd.vm("pv")["nics"]
    for body, field in [({"nic_vlans": [{"nic": 0, "vlan": 10}]}, "not vlan_aware"),
                        ({"nic_vlans": [{"nic": 1, "vlan": 10}]}, "'nic'"),
                        ({"nic_vlans": [{"nic": 2}]}, "'nic'"),
                        ({"nic_vlans": [{"vlan": 10}]}, "'nic'"),
                        ({"nic_vlans": [{"nic": 0, "vlan": 0}]}, "'vlan'"),
                        ({"nic_vlans": [{"nic": 0, "tap": "x"}]}, "'tap'"),
                        ({"nic_vlans": {}}, "'nic_vlans'")]:
        st, js = netd.request("PATCH", "/vms/pv", body)
        assert st == 400 and field in js["error"], (body, js)
    assert netd.vm("pv")["nics"] == before
    r = subprocess.run([str(VIREO), "vm", "set", "pv", "--nic-vlan", "0,vlan=10"],
                       capture_output=True, text=True, timeout=30,
                       env={**os.environ, "VIREO_SOCKET": netd.socket})
    assert r.returncode != 0 and "not vlan_aware" in r.stderr, r
