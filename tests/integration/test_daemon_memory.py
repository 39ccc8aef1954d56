"""The daemon's automatic memory policy (--memory-policy=auto): probe guests
with balloon_follow=1 report free = total - what their balloon holds, and
follow the target the daemon sets."""
import pytest

from conftest import needs_kvm
from daemonutil import Daemon, wait_for

pytestmark = [needs_kvm]

MIB = 1 << 20
FOLLOW = "balloon balloon_follow=1 balloon_hold_ms=60000"


def actual(d, name):
    return d.vm(name)["vmm"]["balloon"]["actual"]


@pytest.fixture
def auto():
    d = Daemon(extra=["--memory-policy=auto", "--memory-interval=200",
                      "--memory-reserve=64M"]).start()
    yield d
    d.cleanup()


def test_needy_guest_gets_memory_from_idle_one(auto):
    """'needy' starts with 112 of its 128 MiB in the balloon (guest free
    about 12%: under pressure); 'idle' has an empty balloon (free 100%).
    Within a few seconds the policy deflates needy and inflates idle."""
    auto.create("needy", memory="128M", balloon=True, balloon_target="112M", scenario=FOLLOW)
    auto.create("idle", memory="128M", balloon=True, scenario=FOLLOW)
    # The policy takes from a guest only once it has reported its memory:
    # idle must have, before needy asks (on a loaded host, idle's first
    # report came after needy's first rounds, which the host then fed).
    auto.ok("POST", "/vms/idle/start")
    assert wait_for(lambda: auto.vm("idle")["vmm"]["balloon"].get("guest", {}).get("total"),
                    timeout=30), auto.vm("idle")
    auto.ok("POST", "/vms/needy/start")
    assert wait_for(lambda: actual(auto, "needy") < 112 * MIB and actual(auto, "idle") > 0,
                    timeout=30), (auto.vm("needy"), auto.vm("idle"), auto.logtext())
    n, i = auto.vm("needy"), auto.vm("idle")
    # Memory moved from idle to needy (the first step is a quarter of needy's RAM).
    assert n["balloon_target"] <= 80 * MIB and i["balloon_target"] >= 32 * MIB
    assert n["vmm"]["balloon"]["target"] == n["balloon_target"]
    # Then it settles: needy no longer under pressure, idle above its floor.
    assert wait_for(lambda: auto.vm("needy")["vmm"]["balloon"]["guest"]["free"] >
                    auto.vm("needy")["vmm"]["balloon"]["guest"]["total"] // 5, timeout=30)
    g = auto.vm("needy")["vmm"]["balloon"]["guest"]
    assert g["free"] * 5 > g["total"], g
    assert auto.vm("idle")["balloon_target"] <= 128 * MIB - 32 * MIB
    assert "memory policy" in auto.logtext()


def test_needy_guest_alone_gets_memory_from_the_host(auto):
    """No idle guest to take from: the host gives, above its reserve (64M here,
    far below this host's MemAvailable)."""
    auto.create("alone", memory="128M", balloon=True, balloon_target="112M", scenario=FOLLOW)
    auto.ok("POST", "/vms/alone/start")
    assert wait_for(lambda: actual(auto, "alone") == 80 * MIB, timeout=30), auto.vm("alone")
    auto.stop("alone", force=True)  # the balloon scenario ignores the button


def test_host_reserve_reclaims_down_to_memory_min():
    """A reserve larger than the host: the policy takes memory back from an
    idle guest, but never below its memory_min."""
    d = Daemon(extra=["--memory-policy=auto", "--memory-interval=200",
                      "--memory-reserve=1T"]).start()
    try:
        d.create("idle", memory="128M", balloon=True, memory_min="80M", scenario=FOLLOW)
        d.ok("POST", "/vms/idle/start")
        assert wait_for(lambda: actual(d, "idle") == 48 * MIB, timeout=30), d.vm("idle")
        assert d.vm("idle")["memory_min"] == 80 * MIB
        st, js = d.request("POST", "/vms", {"name": "x", "kernel": "/bin/true",
                                            "memory": "64M", "memory_min": "1G"})
        assert st == 400 and "memory_min" in js["error"]
        d.stop("idle", force=True)
    finally:
        d.cleanup()


def test_bad_policy_options():
    import subprocess
    from conftest import VIREO
    for arg in ("--memory-policy=sometimes", "--memory-interval=5", "--memory-reserve=lots"):
        r = subprocess.run([str(VIREO), "daemon", "--state-dir", "/tmp/x", "--socket", "/tmp/y",
                            arg], capture_output=True, text=True)
        assert r.returncode == 2 and "--memory" in r.stderr, r.stderr
