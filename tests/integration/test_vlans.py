"""802.1Q VLANs on the daemon's networks (issue 13): access ports, trunks
with a native VLAN, and an uplink that carries the network's VLANs tagged
to a second "host" (a network namespace with VLAN subinterfaces).

Bridge VLAN filtering is missing from our hosts' kernel (DESIGN §5), so these
are hw_virt tests: on our machines they run in the nested test host, whose
Debian kernel has it, with probe guests; where the host kernel has it and
hardware virtualization, they run directly."""
import os
import shutil
import subprocess

import pytest

from conftest import ROOT, needs_kvm, scaled
from daemonutil import Daemon, wait_for
from test_linux import BASE_CMDLINE, MAC, build_kit, linux_lines

pytestmark = [needs_kvm, pytest.mark.hw_virt, pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="skipped: needs root and iproute2")]

TAG = "%x" % (os.getpid() & 0xffff)
ECHO_MAC = "02:00:00:00:00:01"      # where the probe's "net" scenario sends


def ip(*args, ns=None):
    pre = ["ip", "netns", "exec", ns] if ns else []
    subprocess.run([*pre, "ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def remote():
    """A second "host": netns vr-TAG, its end of a veth pair with VLAN 20
    on it (peer.20); the other end (the uplink) stays here."""
    ns, up, peer = f"vr-{TAG}", f"vu{TAG}", f"vp{TAG}"
    ip("netns", "add", ns)
    try:
        ip("link", "add", up, "type", "veth", "peer", "name", peer)
        ip("link", "set", peer, "netns", ns)
        try:
            ip("link", "add", "link", peer, "name", f"{peer}.20", "type", "vlan", "id", "20",
               ns=ns)
        except subprocess.CalledProcessError as e:
            pytest.skip(f"skipped: no 802.1Q devices in this kernel: {e.stderr.strip()}")
        for link in (peer, f"{peer}.20", "lo"):
            ip("link", "set", link, "up", ns=ns)
        yield ns, up, peer
    finally:
        subprocess.run(["ip", "link", "del", up], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def vlan_network(d, net, **kw):
    """Creates vlan_aware network NET (skips where the kernel cannot)."""
    st, js = d.request("POST", "/networks", {"name": net, "vlan_aware": True, **kw})
    if st == 400 and "VLAN filtering" in js.get("error", ""):
        pytest.skip(f"skipped: {js['error']}")
    assert st == 201, js
    return js


def port_vlans(d, net):
    """{port: (pvid, tagged VLANs)} as GET /networks/NAME tells."""
    return {p["name"]: (p.get("pvid"), p["vlans"])
            for p in d.ok("GET", f"/networks/{net}")["ports"]}


def probe_line(d, name, prefix):
    """The VM's "PROBE …" line starting with PREFIX once it stopped."""
    assert wait_for(lambda: d.vm(name)["state"] == "stopped", timeout=scaled(60)), \
        (d.vm(name), d.vm_log(name))
    lines = [ln for ln in d.vm_log(name).splitlines() if ln.startswith(prefix)]
    assert lines, d.vm_log(name)
    return lines[-1]


def test_vlans_keep_traffic_apart_on_ports_trunks_and_the_uplink(tmp_path, remote):
    ns, up, peer = remote
    d = Daemon(extra=["--storage", str(tmp_path)]).start()
    net = f"v{TAG}"
    try:
        js = vlan_network(d, net, uplink=up, vlans=[10, 20])
        (uplink,) = js["ports"]
        assert (uplink["name"], uplink["pvid"], uplink["vlans"]) == (up, 1, [10, 20]), js

        # VM "echo" answers on VLAN 10; the remote host answers on VLAN 20.
        d.create("echo", scenario="net_echo", cmdline="scenario=net_echo net_echo=64",
                 nics=[{"network": net, "vlan": 10, "mac": ECHO_MAC}])
        d.ok("POST", "/vms/echo/start")
        assert wait_for(lambda: "PROBE net_echo ready" in d.vm_log("echo"),
                        timeout=scaled(30)), d.vm_log("echo")
        responder = subprocess.Popen(
            ["ip", "netns", "exec", ns, "python3", str(ROOT / "tests/net_echo.py"),
             f"{peer}.20", "--timeout", str(scaled(60))], stdout=subprocess.PIPE, text=True)
        assert responder.stdout.readline().strip() == "ready"

        nets = {"a10": {"vlan": 10}, "t": {"trunk": [20], "native_vlan": 10},
                "a20": {"vlan": 20}, "a30": {"vlan": 30}}
        for name, vlans in nets.items():
            n = 8 if name == "a30" else 32
            d.create(name, scenario="net", cmdline=f"scenario=net n={n} net_timeout_ms=3000",
                     nics=[{"network": net, **vlans}])
        ports = port_vlans(d, net)
        assert sorted(ports.values()) == [(1, [10, 20]), (10, [])], ports

        # An access port on VLAN 10 and a trunk whose untagged frames are
        # VLAN 10 reach "echo"; VLAN 20 reaches the remote host through the
        # uplink, tagged; VLAN 30, which nobody else has, reaches no one.
        expect = {"a10": 32, "t": 32, "a20": 32, "a30": 0}
        for name, received in expect.items():
            d.ok("POST", f"/vms/{name}/start")
            if name == "t":
                ports = port_vlans(d, net)
                assert (10, [20]) in ports.values(), ports
            line = probe_line(d, name, "PROBE net mac=")
            assert f"received={received} mismatches=0" in line, (name, line)
        # (other: the host's own IPv6 chatter on the tap, not frames of VM
        # "a20", which the remote host answered)
        assert "PROBE net_echo echoed=64 " in probe_line(d, "echo", "PROBE net_echo echoed")
        responder.terminate()
        out, _ = responder.communicate(timeout=30)
        # exactly VLAN 20's frames: none of VLAN 10's crossed over
        assert "echoed=32" in out, out
        # every VM stopped: only the uplink is left
        assert wait_for(lambda: list(port_vlans(d, net)) == [up], timeout=scaled(10))
    finally:
        d.cleanup()
        subprocess.run(["ip", "link", "del", f"vb-{net}"], capture_output=True)


def test_vlans_survive_a_daemon_restart_that_rebuilds_the_bridge(tmp_path):
    """The bridge deleted under a running VM while no daemon runs: the next
    daemon re-creates it, VLAN-aware, and the VM's tap joins again with its
    access VLAN."""
    d = Daemon(extra=["--storage", str(tmp_path)]).start()
    net = f"w{TAG}"
    try:
        vlan_network(d, net)
        d.create("w", scenario="wait", nics=[{"network": net, "vlan": 42}])
        d.ok("POST", "/vms/w/start")
        before = port_vlans(d, net)
        assert list(before.values()) == [(42, [])], before
        d.kill()
        subprocess.run(["ip", "link", "del", f"vb-{net}"], check=True)
        d.start()
        assert d.ok("GET", f"/networks/{net}")["vlan_aware"]
        assert port_vlans(d, net) == before
        out = subprocess.run(["ip", "-d", "link", "show", f"vb-{net}"], capture_output=True,
                             text=True, check=True).stdout
        assert "vlan_filtering 1" in out
    finally:
        d.cleanup()
        subprocess.run(["ip", "link", "del", f"vb-{net}"], capture_output=True)


@pytest.mark.hw_virt(prepare=build_kit)
@pytest.mark.parametrize("port, reaches", [({"trunk": [20], "native_vlan": 1}, True),
                                           ({"vlan": 10}, False)],
                         ids=["trunk", "access-port-drops-a-foreign-tag"])
def test_linux_vlan_subinterface(tmp_path, remote, port, reaches):
    """Debian's kernel on vireo makes eth0.20 (8021q) and pings the remote
    host's 10.0.20.1 on VLAN 20 through the uplink: it answers when the vNIC
    is a trunk carrying 20; on an access port of VLAN 10 the guest's frames
    tagged 20 are dropped at the bridge."""
    ns, up, peer = remote
    ip("addr", "add", "10.0.20.1/24", "dev", f"{peer}.20", ns=ns)
    kit = build_kit()
    d = Daemon(extra=["--storage", str(tmp_path)]).start()
    net = f"l{TAG}"
    try:
        vlan_network(d, net, uplink=up, vlans=[10, 20])
        cmdline = "vireo.test=net vireo.vlan=20 vireo.ip=10.0.20.2/24 vireo.peer=10.0.20.1 " \
                  "vireo.port=0"
        d.ok("POST", "/vms", {"name": "lx", "cpus": 1, "memory": "256M",
                              "kernel": str(kit / "vmlinuz"), "initrd": str(kit / "initrd.img"),
                              "cmdline": f"{BASE_CMDLINE} {cmdline}",
                              "nics": [{"network": net, "mac": MAC, **port}]}, status=201)
        d.ok("POST", "/vms/lx/start")
        assert wait_for(lambda: d.vm("lx")["state"] == "stopped", timeout=scaled(150)), \
            (d.vm("lx"), d.vm_log("lx")[-4000:])
        net_line = linux_lines(d.vm_log("lx")).get("net")
        assert net_line and net_line["bound"] == "1" and net_line["vlan"] == "20", \
            d.vm_log("lx")[-4000:]
        assert net_line["ping"] == ("ok" if reaches else "fail"), net_line
    finally:
        d.cleanup()
        subprocess.run(["ip", "link", "del", f"vb-{net}"], capture_output=True)


def test_patch_moves_a_running_vm_to_another_vlan(tmp_path):
    """PATCH nic_vlans on a running VM: VM "echo" leaves VLAN 10 for VLAN 20
    and VM "s" on VLAN 20 reaches it only afterwards; a refused PATCH
    changes neither the port nor the definition."""
    d = Daemon(extra=["--storage", str(tmp_path)]).start()
    net = f"p{TAG}"
    try:
        vlan_network(d, net)
        d.create("echo", scenario="net_echo",
                 cmdline=f"scenario=net_echo net_echo=8 net_echo_ms={scaled(120) * 1000}",
                 nics=[{"network": net, "vlan": 10, "mac": ECHO_MAC}])
        d.create("s", scenario="net", cmdline="scenario=net n=8 net_timeout_ms=3000",
                 nics=[{"network": net, "vlan": 20}])
        d.ok("POST", "/vms/echo/start")
        assert wait_for(lambda: "PROBE net_echo ready" in d.vm_log("echo"),
                        timeout=scaled(30)), d.vm_log("echo")
        d.ok("POST", "/vms/s/start")
        assert "received=0 " in probe_line(d, "s", "PROBE net mac=")
        before = port_vlans(d, net)
        st, js = d.request("PATCH", "/vms/echo", {"nic_vlans": [{"nic": 0, "vlan": 4095}]})
        assert st == 400 and "nic_vlans[0]" in js["error"], js
        st, js = d.request("PATCH", "/vms/echo", {"nic_vlans": [{"nic": 1, "vlan": 20}]})
        assert st == 400 and "'nic'" in js["error"], js
        assert port_vlans(d, net) == before and d.vm("echo")["nics"][0]["vlan"] == 10
        d.ok("PATCH", "/vms/echo", {"nic_vlans": [{"nic": 0, "vlan": 20}]})
        assert d.vm("echo")["nics"][0]["vlan"] == 20
        assert sorted(port_vlans(d, net).values()) == [(20, [])], port_vlans(d, net)
        os.truncate(os.path.join(d.state, "logs", "s.log"), 0)
        d.ok("POST", "/vms/s/start")
        assert "received=8 mismatches=0" in probe_line(d, "s", "PROBE net mac=")
        assert "PROBE net_echo echoed=8 " in probe_line(d, "echo", "PROBE net_echo echoed")
    finally:
        d.cleanup()
        subprocess.run(["ip", "link", "del", f"vb-{net}"], capture_output=True)
