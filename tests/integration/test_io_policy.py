"""The daemon's automatic I/O policy (--io-policy=auto, docs/api.md
"Automatic I/O policy"): three probe VMs share a disk budget (blk_bench's
1 MiB sequential writes, far faster here than the budget) and a vNIC budget
(net_bench transmitting through a tap). Rates are measured on the VMMs' own
counters (`vmm.disks[].wr_bytes`, `vmm.nics[].tx_bytes`) over a window that
ends when enough bytes went through, never over a fixed sleep, and held
against the limits with the time each limiter held its device back
(`throttled_ns`), so that a guest starved of CPU by a loaded host is not
taken for a policy that gave it too little."""
import os
import socket
import subprocess
import threading
import time

import pytest

from conftest import PROBE, VIREO, needs_kvm, scaled
from daemonutil import Daemon, wait_for

pytestmark = [needs_kvm]

BUDGET = 30_000_000        # disk bytes/s
# vNIC bytes/s, each direction: lower, since every frame costs the guest
# exits and the host shares 2 CPUs with other work.
NET_BUDGET = 12_000_000
INTERVAL_MS = 500
# irq=msix: the guests sleep until their requests complete instead of
# spinning on the used ring, so three of them leave the host's CPUs to the
# VMMs and the shares measured are the policy's, not the scheduler's.
BUSY_DISK = "blk_bench time_ms=600000 qd=4 irq=msix"   # 10 min of 1 MiB writes
# 9014-byte frames (MTU 9000): a sixth of the exits of 1514-byte ones, so
# that three guests keep their shares up on a loaded 2-CPU host.
BUSY_NET = "net_bench time_ms=600000 net_size=9014 irq=msix"
IDLE = "wait=600000"


@pytest.fixture
def policy(tmp_path):
    d = Daemon(extra=["--storage", str(tmp_path), "--io-policy=auto",
                      f"--io-interval={INTERVAL_MS}", f"--io-budget-bps={BUDGET}",
                      f"--net-budget-bps={NET_BUDGET}"]).start()
    yield d
    d.cleanup()


def disk_vm(d, tmp_path, name, scenario, **disk):
    img = tmp_path / f"{name}.img"
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    d.create(name, memory="128M", scenario=scenario,
             disks=[{"path": str(img), "format": "raw", **disk}])
    d.ok("POST", f"/vms/{name}/start")


def disk_counters(vmm):
    k = vmm["disks"][0]
    return k["wr_bytes"] + k["rd_bytes"], k["throttled_ns"], k["bps"]


def nic_tx_counters(vmm):
    k = vmm["nics"][0]
    return k["tx_bytes"], k["tx_throttled_ns"], k["tx_bps"]


def nic_rx_counters(vmm):
    k = vmm["nics"][0]
    return k["rx_bytes"], k["rx_throttled_ns"], k["rx_bps"]


def fresh_vmm(d, name):
    """(VMM figures of VM `name`, the earliest and the latest instant they
    can be from). GET /vms/NAME asks the VMM with a 1 s deadline and falls
    back to figures up to a second old, which on a loaded host would skew a
    rate by a quarter over a 4 s window: only figures fetched during the
    request are taken."""
    for _ in range(100):
        before = time.monotonic()
        js = d.vm(name)
        after = time.monotonic()
        if js.get("vmm_info_age_ms", 1e9) <= (after - before) * 1000 + 1:
            return js["vmm"], before, after
    raise AssertionError(f"{name}: no fresh VMM figures in 100 tries: {js}")


def rates(d, names, counters, least):
    """Bytes/s of each VM's device over a window that lasts until every one
    of them has moved at least `least` bytes (and at least 4 s, to average
    out the moments a guest waits for a host CPU), as (lowest, highest):
    each sample was read somewhere within its request, so the window is
    known to within two requests' time; the part of that window each
    device's limiter held it back; the limits the VMM had in force through
    it (the policy moves a share a starved guest leaves unused to the
    others); and when they were sampled. counters(vmm) gives the device's
    (bytes, throttled_ns, limit in force)."""
    seen = {n: [] for n in names}
    spans = {n: [] for n in names}
    times = []

    def sample():
        t = time.monotonic()
        times.append(t)
        for n in names:
            vmm, before, after = fresh_vmm(d, n)
            seen[n].append(counters(vmm))
            spans[n].append((before, after))
        return t

    def filled():
        sample()
        return time.monotonic() - t0 >= 4 and all(seen[n][-1][0] - seen[n][0][0] >= least
                                                  for n in names)
    t0 = sample()
    done = wait_for(filled, timeout=60, step=0.2)
    sample()
    moved = {n: seen[n][-1][0] - seen[n][0][0] for n in names}
    assert done, ("window never filled", moved, d.logtext()[-3000:])
    longest = {n: spans[n][-1][1] - spans[n][0][0] for n in names}
    shortest = {n: spans[n][-1][0] - spans[n][0][1] for n in names}
    return ({n: (moved[n] / longest[n], moved[n] / shortest[n]) for n in names},
            {n: (seen[n][-1][1] - seen[n][0][1]) / 1e9 / longest[n] for n in names},
            {n: [c[2] for c in seen[n]] for n in names}, times)


def limit_over(seen, times):
    """The most a limit sampled as `seen` at `times` let through, per second
    of the window: between two samples it may have been either of them, so
    the higher is taken (a mean of the samples is too low when they come
    unevenly, as they do on a loaded host)."""
    allowed = sum(max(a, b) * (t1 - t0)
                  for a, b, t0, t1 in zip(seen, seen[1:], times, times[1:]))
    return allowed / (times[-1] - times[0])


def assert_limits_hold(measured):
    """Each device moved at most what its limits let through over the window
    (+10 % for the window's edges), and at least its lowest limit over the part of
    the window its limiter held it back: a held device has requests
    waiting, so it moves at its limit then; the rest of the time its guest
    had nothing waiting (on a loaded host, a vCPU that did not get a CPU),
    which says nothing about the limit. A busy guest on a quiet host is
    held back nearly all the time, so there this asks for nearly the whole
    limit. The tests check the policy's limits themselves before they
    measure (converged())."""
    r, held, limits_in_force, times = measured
    for n, seen in limits_in_force.items():
        assert all(seen), (n, "a window without a limit", seen)
        most = limit_over(seen, times)
        lowest, highest = r[n]
        assert 0.9 * min(held[n], 1) * min(seen) <= highest and lowest <= 1.1 * most, \
            (n, {"rates": r, "held": held,
                 "limits (min, let through, max)": {k: (min(v), limit_over(v, times), max(v))
                                                    for k, v in limits_in_force.items()}})


def limits(d, name, kind="disks", key="limit_bps"):
    return d.vm(name)["io_policy"][kind][0][key]


def test_disk_burst_alone_gets_the_spare_budget(policy, tmp_path):
    """Two VMs idle, one writing as fast as it can: within two intervals of
    its start it is allowed nearly the whole budget, and does that much."""
    disk_vm(policy, tmp_path, "idle1", IDLE)
    disk_vm(policy, tmp_path, "idle2", IDLE)
    # The idle ones have been seen idle (a bounded demand).
    assert wait_for(lambda: all(policy.vm(n).get("io_policy", {}).get("disks", [{}])[0]
                                .get("demand_bps") is not None for n in ("idle1", "idle2")),
                    timeout=10), policy.vm("idle1")
    disk_vm(policy, tmp_path, "burst", BUSY_DISK)
    t0 = time.monotonic()
    # Its first round (nothing known: a fair third), then it is seen
    # saturated and gets what the idle ones leave: two intervals.
    assert wait_for(lambda: (limits(policy, "burst") or 0) >= 0.9 * BUDGET, timeout=10), \
        (policy.vm("burst")["io_policy"], policy.logtext()[-3000:])
    took = time.monotonic() - t0
    assert took <= scaled(2 * INTERVAL_MS / 1000 + 1.5), took   # + start and a round trip
    assert_limits_hold(rates(policy, ["burst"], disk_counters, 3 * BUDGET))
    assert limits(policy, "burst") <= BUDGET
    assert "I/O policy: disk 0 bps" in policy.logtext()
    st, text = policy.request("GET", "/metrics")
    assert 'vireo_vm_disk_policy_limit_bytes_per_second{vm="burst",disk="0"}' in text
    assert 'vireo_vm_disk_policy_demand_bytes_per_second{vm="burst",disk="0"} +Inf' in text
    assert f'vireo_io_budget_per_second{{class="disk_bytes"}} {BUDGET}' in text


def converged(d, names, want, kind="disks", key="limit_bps"):
    got = {n: limits(d, n, kind, key) or 0 for n in names}
    return all(abs(got[n] - want[n]) <= 0.03 * want[n] for n in names) and got


def test_disk_shares_follow_weights_when_all_are_busy(policy, tmp_path):
    weights = {"w1": 100, "w2": 200, "w3": 300}
    for n, w in weights.items():
        disk_vm(policy, tmp_path, n, BUSY_DISK, weight=w)
    want = {n: BUDGET * w / 600 for n, w in weights.items()}
    assert wait_for(lambda: converged(policy, weights, want), timeout=15), \
        ({n: policy.vm(n)["io_policy"] for n in weights}, policy.logtext()[-3000:])
    assert_limits_hold(rates(policy, list(weights), disk_counters, 2 * want["w1"]))


def test_weight_and_floor_patched_on_running_vms(policy, tmp_path):
    """PATCH disk_limits (and `vireo vm set --disk-limit`) change a running
    VM's weight and floor; the next rounds follow, the fixed limit stays."""
    disk_vm(policy, tmp_path, "p1", BUSY_DISK)
    disk_vm(policy, tmp_path, "p2", BUSY_DISK)
    names = ["p1", "p2"]
    assert wait_for(lambda: converged(policy, names, {"p1": BUDGET / 2, "p2": BUDGET / 2}),
                    timeout=10), {n: policy.vm(n)["io_policy"] for n in names}
    js = policy.ok("PATCH", "/vms/p2", {"disk_limits": [{"disk": 0, "weight": 200}]})
    assert js["disks"][0]["weight"] == 200 and js["disks"][0]["bps"] == 0, js
    assert wait_for(lambda: converged(policy, names, {"p1": BUDGET / 3, "p2": BUDGET * 2 / 3}),
                    timeout=10), {n: policy.vm(n)["io_policy"] for n in names}
    r = subprocess.run([str(VIREO), "vm", "--socket", policy.socket, "set", "p1",
                        "--disk-limit", f"0,floor_bps={BUDGET * 3 // 4}"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: converged(policy, names, {"p1": BUDGET * 3 / 4, "p2": BUDGET / 4}),
                    timeout=10), {n: policy.vm(n)["io_policy"] for n in names}
    st, js = policy.request("PATCH", "/vms/p1", {"disk_limits": [{"disk": 0, "weight": 0}]})
    assert st == 400 and "weight" in js["error"], js
    st, js = policy.request("PATCH", "/vms/p1", {"nic_limits": [{"nic": 0, "floor_iops": 1}]})
    assert st == 400, js


def test_disk_floor_holds_while_the_others_are_busy(policy, tmp_path):
    """A floor of half the budget on a weight-100 disk against two weight-300
    ones (its weighted share would be a seventh): it gets its floor, the
    others split the rest by weight."""
    disk_vm(policy, tmp_path, "floor", BUSY_DISK, floor_bps=BUDGET // 2)
    disk_vm(policy, tmp_path, "big1", BUSY_DISK, weight=300)
    disk_vm(policy, tmp_path, "big2", BUSY_DISK, weight=300)
    names = ["floor", "big1", "big2"]
    want = {"floor": BUDGET / 2, "big1": BUDGET / 4, "big2": BUDGET / 4}
    assert wait_for(lambda: converged(policy, names, want), timeout=15), \
        ({n: policy.vm(n)["io_policy"] for n in names}, policy.logtext()[-3000:])
    assert policy.vm("floor")["disks"][0]["floor_bps"] == BUDGET // 2
    measured = rates(policy, names, disk_counters, 2 * want["big1"])
    assert_limits_hold(measured)
    # The floor held all through, whatever the others did.
    assert min(measured[2]["floor"]) >= 0.97 * BUDGET / 2, measured[2]["floor"]


def test_floors_above_the_budget_are_scaled_and_reported(policy, tmp_path):
    """Two disks each with a floor of the whole budget: both cannot hold;
    each gets the same fraction (half), the daemon warns and says so in
    /metrics (docs/api.md rule 5)."""
    disk_vm(policy, tmp_path, "f1", IDLE, floor_bps=BUDGET)
    disk_vm(policy, tmp_path, "f2", IDLE, floor_bps=BUDGET)
    half = {"f1": BUDGET / 2, "f2": BUDGET / 2}
    assert wait_for(lambda: converged(policy, ["f1", "f2"], half), timeout=10), \
        ({n: policy.vm(n).get("io_policy") for n in half}, policy.logtext()[-2000:])
    st, text = policy.request("GET", "/metrics")
    assert 'vireo_io_floors_overcommitted{class="disk_bytes"} 1' in text
    assert "floors ask for more disk bytes/s than the budget" in policy.logtext()


def nic_vm(d, name, scenario, **nic):
    tap = f"vtio{os.getpid() % 10000}{name[-1]}"
    d.create(name, memory="128M", scenario=scenario, nics=[{"tap": tap, "mtu": 9000, **nic}])
    st, js = d.request("POST", f"/vms/{name}/start")
    if st != 200 and "tap" in js.get("error", ""):
        pytest.skip("skipped: cannot create tap devices here: " + js["error"])
    assert st == 200, js
    return tap


def test_nic_bandwidth_follows_demand_and_weights(policy):
    """The same rules for vNIC transmit bandwidth through taps: one alone
    gets the spare budget, then all three busy share by weight, a floor
    holds."""
    nic_vm(policy, "n1", BUSY_NET, weight=100)
    assert wait_for(lambda: (limits(policy, "n1", "nics", "limit_tx_bps") or 0)
                    >= 0.9 * NET_BUDGET, timeout=10), policy.vm("n1").get("io_policy")
    assert_limits_hold(rates(policy, ["n1"], nic_tx_counters, 2 * NET_BUDGET))
    nic_vm(policy, "n2", BUSY_NET, weight=200)
    nic_vm(policy, "n3", BUSY_NET, weight=100, floor_bps=NET_BUDGET // 2)
    names = ["n1", "n2", "n3"]
    # n3's floor (1/2) is above its weighted share (1/4): n1 and n2 split
    # the other half 1:2.
    want = {"n1": NET_BUDGET / 6, "n2": NET_BUDGET / 3, "n3": NET_BUDGET / 2}
    assert wait_for(lambda: converged(policy, names, want, "nics", "limit_tx_bps"),
                    timeout=15), ({n: policy.vm(n)["io_policy"] for n in names},
                                  policy.logtext()[-3000:])
    measured = rates(policy, names, nic_tx_counters, 2 * want["n1"])
    assert_limits_hold(measured)
    assert min(measured[2]["n3"]) >= 0.97 * NET_BUDGET / 2, measured[2]["n3"]


def test_nic_burst_beside_idle_ones_gets_the_spare_budget(policy):
    """Two vNICs idle, one transmitting as fast as it can: within two
    intervals of its start it is allowed nearly the whole budget, does that
    much, and the decision is logged and in /metrics."""
    nic_vm(policy, "ni1", IDLE)
    nic_vm(policy, "ni2", IDLE)
    # The idle ones have been seen idle (a bounded demand).
    assert wait_for(lambda: all(limits(policy, n, "nics", "demand_tx_bps") is not None
                                for n in ("ni1", "ni2")), timeout=10), policy.vm("ni1")
    nic_vm(policy, "nb", BUSY_NET)
    t0 = time.monotonic()
    assert wait_for(lambda: (limits(policy, "nb", "nics", "limit_tx_bps") or 0)
                    >= 0.9 * NET_BUDGET, timeout=10), \
        (policy.vm("nb").get("io_policy"), policy.logtext()[-3000:])
    took = time.monotonic() - t0
    assert took <= scaled(2 * INTERVAL_MS / 1000 + 1.5), took   # + start and a round trip
    assert_limits_hold(rates(policy, ["nb"], nic_tx_counters, 2 * NET_BUDGET))
    # The idle ones keep what they would need to start, no more.
    for n in ("ni1", "ni2"):
        assert limits(policy, n, "nics", "limit_tx_bps") <= 0.05 * NET_BUDGET, policy.vm(n)
    assert "I/O policy: nic 0 tx_bps" in policy.logtext()
    st, text = policy.request("GET", "/metrics")
    assert 'vireo_vm_nic_policy_demand_tx_bytes_per_second{vm="nb",nic="0"} +Inf' in text
    assert f'vireo_io_budget_per_second{{class="net_bytes"}} {NET_BUDGET}' in text


def test_nic_shares_follow_weights_when_all_are_busy(policy):
    weights = {"nw1": 100, "nw2": 200, "nw3": 300}
    for n, w in weights.items():
        nic_vm(policy, n, BUSY_NET, weight=w)
    want = {n: NET_BUDGET * w / 600 for n, w in weights.items()}
    assert wait_for(lambda: converged(policy, weights, want, "nics", "limit_tx_bps"),
                    timeout=15), ({n: policy.vm(n)["io_policy"] for n in weights},
                                  policy.logtext()[-3000:])
    assert_limits_hold(rates(policy, list(weights), nic_tx_counters, 2 * want["nw1"]))


def in_force(d, name, key, kind="nics"):
    """The limit the VMM's rate limiter has now (0: none)."""
    return d.vm(name)["vmm"][kind][0][key]


def test_fixed_nic_limit_holds_under_the_policy(policy):
    """A vNIC's fixed tx_bps is a hard cap (docs/api.md rule 4): with weight
    300 and a floor of half the budget it would get 3/4; capped at 1/4 it
    never has more, and the other busy one takes the rest. A cap lowered on
    the running VM holds from the PATCH on, and the PATCH leaves the
    policy's receive limit in force (no unlimited moment)."""
    cap = NET_BUDGET // 4
    nic_vm(policy, "nc1", BUSY_NET, weight=300, floor_bps=NET_BUDGET // 2, tx_bps=cap)
    nic_vm(policy, "nc2", BUSY_NET, weight=100)
    names = ["nc1", "nc2"]
    seen = []

    def capped(want):
        seen.append(in_force(policy, "nc1", "tx_bps"))
        return converged(policy, names, want, "nics", "limit_tx_bps")

    want = {"nc1": cap, "nc2": NET_BUDGET - cap}
    assert wait_for(lambda: capped(want), timeout=15), \
        ({n: policy.vm(n)["io_policy"] for n in names}, policy.logtext()[-3000:])
    measured = rates(policy, names, nic_tx_counters, 2 * cap)
    assert 0 < min(seen) and max(seen) <= cap, seen
    assert_limits_hold(measured)
    rx = policy.vm("nc1")["io_policy"]["nics"][0]["limit_rx_bps"]
    assert rx and 0 < in_force(policy, "nc1", "rx_bps") <= rx, policy.vm("nc1")
    low = cap // 2
    policy.ok("PATCH", "/vms/nc1", {"nic_limits": [{"nic": 0, "tx_bps": low}]})
    assert 0 < in_force(policy, "nc1", "rx_bps") <= NET_BUDGET, policy.vm("nc1")["vmm"]
    assert policy.vm("nc1")["nics"][0]["tx_bps"] == low
    want = {"nc1": low, "nc2": NET_BUDGET - low}
    seen.clear()
    assert wait_for(lambda: capped(want), timeout=15), \
        ({n: policy.vm(n)["io_policy"] for n in names}, policy.logtext()[-3000:])
    measured = rates(policy, names, nic_tx_counters, 2 * low)
    assert 0 < min(seen) and max(seen) <= low, seen
    assert_limits_hold(measured)


def test_fixed_disk_limit_holds_under_the_policy(tmp_path):
    """The same for a disk's fixed bps, with an operations budget too: a
    PATCH of bps leaves the policy's iops limit in force (the definition
    has no fixed iops, which would mean none until the next round)."""
    iops_budget = 2000
    d = Daemon(extra=["--storage", str(tmp_path), "--io-policy=auto",
                      f"--io-interval={INTERVAL_MS}", f"--io-budget-bps={BUDGET}",
                      f"--io-budget-iops={iops_budget}"]).start()
    try:
        cap = BUDGET // 4
        disk_vm(d, tmp_path, "dc1", BUSY_DISK, weight=300, floor_bps=BUDGET // 2, bps=cap)
        disk_vm(d, tmp_path, "dc2", BUSY_DISK, weight=100)
        names = ["dc1", "dc2"]
        seen = []

        def capped(want):
            seen.append(in_force(d, "dc1", "bps", "disks"))
            return converged(d, names, want)

        want = {"dc1": cap, "dc2": BUDGET - cap}
        assert wait_for(lambda: capped(want), timeout=15), \
            ({n: d.vm(n)["io_policy"] for n in names}, d.logtext()[-3000:])
        measured = rates(d, names, disk_counters, 2 * cap)
        assert 0 < min(seen) and max(seen) <= cap, seen
        assert_limits_hold(measured)
        iops = limits(d, "dc1", "disks", "limit_iops")
        assert iops and 0 < in_force(d, "dc1", "iops", "disks") <= iops_budget, d.vm("dc1")
        low = cap // 2
        d.ok("PATCH", "/vms/dc1", {"disk_limits": [{"disk": 0, "bps": low}]})
        assert 0 < in_force(d, "dc1", "iops", "disks") <= iops_budget, d.vm("dc1")["vmm"]
        assert 0 < in_force(d, "dc1", "bps", "disks") <= low, d.vm("dc1")["vmm"]
        seen.clear()
        want = {"dc1": low, "dc2": BUDGET - low}
        assert wait_for(lambda: capped(want), timeout=15), \
            ({n: d.vm(n)["io_policy"] for n in names}, d.logtext()[-3000:])
        measured = rates(d, names, disk_counters, 2 * low)
        assert 0 < min(seen) and max(seen) <= low, seen
        assert_limits_hold(measured)
    finally:
        d.cleanup()


# Receive: the guest takes frames from its tap (net_echo counts the ones
# not for it and sends nothing back); the host sends them into the tap.
RECEIVE = "net_echo=1 net_echo_ms=600000 irq=msix"
FRAME = 9014


class Flood:
    """Sends 9014-byte frames (not for the guest, another ethertype) into
    taps at `rate` bytes/s each, paced, until stopped."""

    def __init__(self):
        self.rates, self.stop = {}, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.error = None

    def start(self, tap, rate):
        # The VMM leaves the host side's MTU alone (1500); the frames are
        # 9014 bytes, a sixth of the exits of 1514-byte ones.
        subprocess.run(["ip", "link", "set", tap, "mtu", "9000"], check=True)
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind((tap, 0))
        self.rates[tap] = [s, rate, time.monotonic(), 0]
        if not self.thread.is_alive():
            self.thread.start()

    def run(self):
        frame = bytes.fromhex("020000000099" "020000000098" "88b6") + bytes(FRAME - 14)
        try:
            while not self.stop.wait(0.005):
                for entry in list(self.rates.values()):
                    s, rate, t0, sent = entry
                    due = int((time.monotonic() - t0) * rate / FRAME)
                    for _ in range(min(due - sent, 200)):
                        try:
                            s.send(frame)
                        except BlockingIOError:
                            pass
                        except OSError as e:   # ENOBUFS: the tap's queue is full
                            if e.errno != 105:
                                raise
                    entry[3] = due
        except Exception as e:   # noqa: BLE001 (reported by the test)
            self.error = e

    def close(self):
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(5)
        for s, *_ in self.rates.values():
            s.close()


@pytest.fixture
def flood():
    f = Flood()
    yield f
    f.close()


def test_nic_receive_follows_demand_and_weights(policy, flood):
    """Receive bandwidth has its own pool with the same rules: a vNIC the
    host floods beside two idle ones is allowed nearly the whole budget
    within two intervals and receives that much; with all three flooded,
    shares follow weights."""
    weights = {"nr1": 100, "nr2": 200, "nr3": 300}
    taps = {n: nic_vm(policy, n, RECEIVE, weight=w) for n, w in weights.items()}
    assert wait_for(lambda: all(limits(policy, n, "nics", "demand_rx_bps") is not None
                                for n in weights), timeout=10), policy.vm("nr1")
    flood.start(taps["nr1"], 2 * NET_BUDGET)
    t0 = time.monotonic()
    assert wait_for(lambda: (limits(policy, "nr1", "nics", "limit_rx_bps") or 0)
                    >= 0.9 * NET_BUDGET, timeout=10), \
        (policy.vm("nr1").get("io_policy"), flood.error, policy.logtext()[-3000:])
    took = time.monotonic() - t0
    assert took <= scaled(2 * INTERVAL_MS / 1000 + 1.5), took
    assert_limits_hold(rates(policy, ["nr1"], nic_rx_counters, 2 * NET_BUDGET))
    assert "I/O policy: nic 0 rx_bps" in policy.logtext()
    for n in ("nr2", "nr3"):
        flood.start(taps[n], NET_BUDGET * 1.2)
    want = {n: NET_BUDGET * w / 600 for n, w in weights.items()}
    assert wait_for(lambda: converged(policy, weights, want, "nics", "limit_rx_bps"),
                    timeout=15), ({n: policy.vm(n)["io_policy"] for n in weights},
                                  flood.error, policy.logtext()[-3000:])
    assert_limits_hold(rates(policy, list(weights), nic_rx_counters, 2 * want["nr1"]))
    assert flood.error is None, flood.error


def test_weights_and_floors_in_definitions_and_cli(policy, tmp_path):
    """The fields are kept, shown only when set, refused out of range, and
    `vireo vm create` takes them."""
    img = tmp_path / "c.img"
    img.write_bytes(b"\0" * (1 << 20))
    r = subprocess.run([str(VIREO), "vm", "--socket", policy.socket, "create", "c",
                        "--kernel", str(PROBE), "--disk",
                        f"path={img},format=raw,weight=300,floor_bps=2M,floor_iops=50",
                        "--nic", "tap=vtioc0,weight=7,floor_bps=1M"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    v = policy.vm("c")
    assert v["disks"][0]["weight"] == 300 and v["disks"][0]["floor_bps"] == 2 << 20
    assert v["disks"][0]["floor_iops"] == 50
    assert v["nics"][0] == {"tap": "vtioc0", "rx_bps": 0, "tx_bps": 0, "weight": 7,
                            "floor_bps": 1 << 20}, v["nics"][0]
    policy.create("plain", disks=[{"path": str(img), "format": "raw", "readonly": True}])
    assert "weight" not in policy.vm("plain")["disks"][0]
    for bad in ({"weight": 0}, {"weight": 10001}, {"floor_bps": -1}, {"floor_iops": "x"}):
        st, js = policy.request("POST", "/vms", {"name": "bad", "kernel": str(PROBE),
                                                 "disks": [{"path": str(img), **bad}]})
        assert st == 400, (bad, js)
