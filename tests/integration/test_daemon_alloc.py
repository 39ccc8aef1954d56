"""Host CPU commitment (overcommit limit and warning, pins counted per host
CPU) and the memory floor (memory_min) of the daemon."""
import os

import pytest

from conftest import needs_kvm
from daemonutil import Daemon

pytestmark = [needs_kvm]

HOST_CPUS = os.cpu_count()


@pytest.fixture
def daemon():
    d = Daemon(extra=["--overcommit", "2", "--overcommit-warn", "1"]).start()
    yield d
    d.cleanup()


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(name + " missing")


@pytest.mark.skipif(HOST_CPUS != 2, reason="the figures assume a 2-CPU host")
def test_pins_pile_commitment_onto_one_host_cpu(daemon):
    # Unpinned, 1 vCPU on 2 host CPUs: 0.5 on each, under both levels.
    daemon.create("free")
    js = daemon.ok("POST", "/vms/free/start")
    assert "warnings" not in js
    # 2 vCPUs pinned to CPU 0 would make it 2.5: past the limit of 2.
    daemon.create("pinned0", cpus=2, cpu_pin=["0"])
    st, js = daemon.request("POST", "/vms/pinned0/start")
    assert st == 409 and "host CPU 0" in js["error"] and "2.50" in js["error"], js
    assert daemon.vm("pinned0")["state"] == "stopped"
    # 1 vCPU pinned to CPU 1: 1.5 there, past the warning level of 1.
    daemon.create("pinned1", cpu_pin=["1"])
    js = daemon.ok("POST", "/vms/pinned1/start")
    assert js["state"] == "running"
    assert len(js["warnings"]) == 1 and "host CPU 1 now carries 1.50" in js["warnings"][0]
    text = daemon.ok("GET", "/metrics")
    assert metric(text, "vireo_vcpus_per_cpu_max") == 1.5
    assert metric(text, "vireo_overcommit_limit") == 2
    # Unpinned, pinned0 spreads: with pinned1 stopped, 0.5 + 1 on each CPU.
    daemon.stop("pinned1", force=True)
    daemon.ok("PATCH", "/vms/pinned0", {"cpu_pin": []})
    js = daemon.ok("POST", "/vms/pinned0/start")
    assert js["state"] == "running" and "1.50" in js["warnings"][0]
    assert metric(daemon.ok("GET", "/metrics"), "vireo_vcpus_per_cpu_max") == 1.5
    for n in ("free", "pinned0"):
        daemon.stop(n, force=True)


def test_memory_min_floor(daemon):
    daemon.create("m", memory="128M", balloon=True, balloon_target="64M")
    daemon.ok("POST", "/vms/m/start")
    # Raising the floor past what the balloon leaves deflates the balloon.
    js = daemon.ok("PATCH", "/vms/m", {"memory_min": "96M"})
    assert js["memory_min"] == 96 << 20 and js["balloon_target"] == 32 << 20
    assert daemon.vm("m")["vmm"]["balloon"]["target"] == 32 << 20
    # A target below the floor is refused, and nothing changes.
    st, js = daemon.request("PATCH", "/vms/m", {"balloon_target": "48M"})
    assert st == 400 and "memory_min" in js["error"], js
    st, js = daemon.request("PATCH", "/vms/m", {"memory_min": "256M"})
    assert st == 400 and "memory_min" in js["error"], js
    js = daemon.vm("m")
    assert js["balloon_target"] == 32 << 20 and js["memory_min"] == 96 << 20
    daemon.stop("m", force=True)
    # At create, too.
    st, js = daemon.request("POST", "/vms", {"name": "bad", "kernel": daemon.vm("m")["kernel"],
                                             "memory": "128M", "balloon": True,
                                             "balloon_target": "100M", "memory_min": "64M"})
    assert st == 400 and "memory_min" in js["error"], js


@pytest.mark.parametrize("args,msg", [
    (["--memory-low", "60", "--memory-high", "50"], "below --memory-high"),
    (["--memory-low", "0"], "--memory-low must be 1 to 99"),
    (["--overcommit-warn", "x"], "--overcommit-warn must be 0 to 1000"),
])
def test_bad_policy_options(args, msg):
    import subprocess
    from conftest import VIREO
    r = subprocess.run([str(VIREO), "daemon", "--state-dir", "/tmp/unused-vd",
                        "--socket", "/tmp/unused-vd.sock", *args], capture_output=True, text=True)
    assert r.returncode == 2 and msg in r.stderr, r.stderr
