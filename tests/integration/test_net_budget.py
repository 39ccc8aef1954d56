"""A vNIC bandwidth budget per network (docs/api.md "Automatic I/O policy",
budget_bps): the vNICs on a network with a budget share it by the host
budget's rules, and --net-budget-bps, when given, caps the total. Probe
guests transmit 9014-byte frames (net_bench) into their taps, ports of the
networks' bridges; rates are the VMMs' own counters (`vmm.nics[].tx_bytes`).
Needs root (bridges)."""
import json
import os
import shutil
import signal
import subprocess

import pytest

from conftest import VIREO, needs_kvm, scaled
from daemonutil import Daemon, wait_for
from test_io_policy import (BUSY_NET, INTERVAL_MS, assert_limits_hold, converged, limits,
                            nic_tx_counters, rates)
from test_networks import link_exists, netname

pytestmark = [needs_kvm, pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="skipped: needs root and iproute2")]

B1 = 8_000_000     # bytes/s, each direction
B2 = 4_000_000


@pytest.fixture
def made():
    """Networks to delete afterwards (their bridges outlive a daemon)."""
    names = []
    yield names
    for n in names:
        if link_exists("vb-" + n):
            subprocess.run(["ip", "link", "del", "vb-" + n])


def daemon(tmp_path, *extra):
    return Daemon(extra=["--storage", str(tmp_path), "--io-policy=auto",
                         f"--io-interval={INTERVAL_MS}", *extra]).start()


def network(d, made, suffix, budget):
    name = netname(suffix)
    made.append(name)
    d.ok("POST", "/networks", {"name": name, "budget_bps": budget}, status=201)
    return name


def busy_vm(d, name, net, **nic):
    d.create(name, memory="128M", scenario=BUSY_NET,
             nics=[{"network": net, "mtu": 9000, **nic}])
    d.ok("POST", f"/vms/{name}/start")


def in_force(d, name):
    return d.vm(name)["vmm"]["nics"][0]["tx_bps"]


def test_each_network_gets_its_own_budget(tmp_path, made):
    """No host budget: a busy vNIC on each of two networks is allowed ≥ 90 %
    of its own network's budget within two intervals and never more, does
    that much, and GET /networks/NAME shows the allocation. A PATCH of the
    budget is followed by the next rounds."""
    d = daemon(tmp_path)
    try:
        a, b = network(d, made, "ba", B1), network(d, made, "bb", B2)
        busy_vm(d, "a1", a)
        busy_vm(d, "b1", b)
        budget = {"a1": B1, "b1": B2}
        seen = {n: [] for n in budget}

        def granted():
            for n in budget:
                seen[n].append((limits(d, n, "nics", "limit_tx_bps") or 0, in_force(d, n)))
            return all(seen[n][-1][0] >= 0.9 * budget[n] for n in budget)

        assert wait_for(granted, timeout=2 * INTERVAL_MS / 1000 + 1.5), \
            ({n: d.vm(n).get("io_policy") for n in budget}, d.logtext()[-3000:])
        measured = rates(d, list(budget), nic_tx_counters, 2 * B2)
        for n in budget:
            granted()
            # The VMM runs at its fixed limits (none) until the policy's
            # first round: from then on its limit is the network's at most.
            vmm = [v for _, v in seen[n]]
            first = next(i for i, v in enumerate(vmm) if v)
            assert all(0 < v <= budget[n] for v in vmm[first:]), (n, vmm)
            assert all(p <= budget[n] for p, _ in seen[n]), (n, seen[n])
        assert_limits_hold(measured)
        js = d.ok("GET", f"/networks/{a}")
        assert js["budget_bps"] == B1, js
        assert 0.9 * B1 <= js["allocation"]["tx_bps"] <= B1, js
        assert js["allocation"]["rx_bps"] == B1, js   # idle receive: the whole budget
        st, text = d.request("GET", "/metrics")
        assert f'vireo_network_budget_bytes_per_second{{network="{b}"}} {B2}' in text, text
        assert f'vireo_network_policy_allocation_tx_bytes_per_second{{network="{b}"}}' in text
        assert "I/O policy: nic 0 tx_bps" in d.logtext()
        # A new budget for a running network: the next rounds follow.
        assert d.ok("PATCH", f"/networks/{a}", {"budget_bps": B1 // 2})["budget_bps"] == B1 // 2
        assert wait_for(lambda: converged(d, ["a1"], {"a1": B1 / 2}, "nics", "limit_tx_bps"),
                        timeout=10), d.vm("a1")["io_policy"]
        assert 0 < in_force(d, "a1") <= B1 // 2
    finally:
        d.cleanup()


def test_weights_share_a_network_budget(tmp_path, made):
    """Two busy vNICs of weights 100 and 200 on one network share its
    budget 1:2, within 10 %."""
    d = daemon(tmp_path)
    try:
        a = network(d, made, "bw", 3 * B2)
        busy_vm(d, "w1", a, weight=100)
        busy_vm(d, "w2", a, weight=200)
        want = {"w1": B2, "w2": 2 * B2}
        assert wait_for(lambda: converged(d, want, want, "nics", "limit_tx_bps"), timeout=15), \
            ({n: d.vm(n)["io_policy"] for n in want}, d.logtext()[-3000:])
        assert_limits_hold(rates(d, list(want), nic_tx_counters, 2 * B2))
    finally:
        d.cleanup()


def test_host_budget_caps_the_networks(tmp_path, made):
    """--net-budget-bps below B1 + B2: the two networks' busy vNICs together
    stay within it. Each network counts against it as one share (equal
    weights: half each), but the B2 network cannot take its half: the
    other takes the rest, below its own B1."""
    host = B1 + B2 // 4
    d = daemon(tmp_path, f"--net-budget-bps={host}")
    try:
        a, b = network(d, made, "ha", B1), network(d, made, "hb", B2)
        busy_vm(d, "h1", a)
        busy_vm(d, "h2", b)
        want = {"h1": host - B2, "h2": B2}
        assert wait_for(lambda: converged(d, want, want, "nics", "limit_tx_bps"), timeout=15), \
            ({n: d.vm(n)["io_policy"] for n in want}, d.logtext()[-3000:])
        assert_limits_hold(rates(d, list(want), nic_tx_counters, B2))
        vmm = {n: in_force(d, n) for n in want}
        assert 0 < vmm["h2"] <= B2 and 0 < vmm["h1"] <= B1, vmm
        assert sum(vmm.values()) <= host, vmm
        assert sum(limits(d, n, "nics", "limit_tx_bps") for n in want) <= host
        for net, n in ((a, "h1"), (b, "h2")):
            alloc = d.ok("GET", f"/networks/{net}")["allocation"]["tx_bps"]
            assert abs(alloc - want[n]) <= 0.03 * want[n], (net, alloc)
    finally:
        d.cleanup()


def cli(d, *args):
    return subprocess.run([str(VIREO), "net", *args], capture_output=True, text=True,
                          env={**os.environ, "VIREO_SOCKET": d.socket}, timeout=30)


def test_budget_input_cli_and_persistence(tmp_path, made):
    """Bad budgets are refused with a 400 naming the field and change
    nothing; the CLI takes sizes; the budget survives a restart."""
    d = Daemon(extra=["--storage", str(tmp_path)]).start()
    try:
        a = netname("bi")
        made.append(a)
        r = cli(d, "create", a, "--budget-bps", "8M", "--output=json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["budget_bps"] == 8 << 20
        path = os.path.join(d.state, "networks", a + ".json")
        with open(path) as f:
            saved = f.read()
        c = netname("bc")
        made.append(c)
        for bad in (0, -1, "8M", 1.5, None, True, 1 << 51):
            st, js = d.request("POST", "/networks", {"name": c, "budget_bps": bad})
            assert st == 400 and "'budget_bps'" in js["error"], (bad, st, js)
            st, js = d.request("PATCH", f"/networks/{a}", {"budget_bps": bad})
            assert st == 400 and "'budget_bps'" in js["error"], (bad, st, js)
        for body in ({}, {"uplink": "eth0"}, {"budget_bps": 1000, "vlan_aware": True}):
            st, js = d.request("PATCH", f"/networks/{a}", body)
            assert st == 400, (body, st, js)
        assert d.request("PATCH", f"/networks/{netname('zz')}", {"budget_bps": 1})[0] == 404
        assert not link_exists("vb-" + c)
        assert [n["name"] for n in d.ok("GET", "/networks")["networks"]] == [a]
        assert d.ok("GET", f"/networks/{a}")["budget_bps"] == 8 << 20
        with open(path) as f:
            assert f.read() == saved
        # Without the policy there is no allocation.
        assert d.ok("GET", f"/networks/{a}")["allocation"] == {"rx_bps": None, "tx_bps": None}
        r = cli(d, "set", a, "--budget-bps", "2M")
        assert r.returncode == 0, r.stderr
        r = cli(d, "info", a)
        assert r.returncode == 0 and f"budget_bps   {2 << 20} " in r.stdout, r.stdout
        assert cli(d, "set", a).returncode == 2
        assert cli(d, "create", c, "--budget-bps", "0").returncode == 2
        assert cli(d, "info", a, "--budget-bps", "1M").returncode == 2
        d.kill(signal.SIGTERM)
        d.start()
        assert d.ok("GET", f"/networks/{a}")["budget_bps"] == 2 << 20
        r = cli(d, "create", c)                     # none: not in the JSON
        assert r.returncode == 0 and "budget_bps" not in d.ok("GET", f"/networks/{c}")
    finally:
        d.cleanup()
