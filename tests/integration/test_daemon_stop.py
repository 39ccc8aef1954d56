"""Graceful stop: the daemon presses the VM's ACPI power button (GED), the
guest powers off; a guest that ignores it is killed at the stop's timeout.
The probe's `wait` scenario answers the button, `echo` ignores it."""
import os
import signal
import subprocess
import time

import pytest

from conftest import VIREO, needs_kvm, scaled
from daemonutil import wait_for

pytestmark = [needs_kvm]


def start_waiting(d, name, scenario="wait"):
    d.create(name, scenario=scenario)
    d.ok("POST", f"/vms/{name}/start")
    ready = "PROBE wait ged_gsi=" if scenario == "wait" else "PROBE echo ready"
    assert wait_for(lambda: ready in d.vm_log(name), timeout=10), d.vm_log(name)


def test_graceful_stop_powers_the_guest_off(daemon):
    start_waiting(daemon, "w")
    t0 = time.monotonic()
    st, js = daemon.request("POST", "/vms/w/stop", {"timeout": 20})
    assert st == 202 and js["state"] == "stopping" and "power button" in js["reason"], js
    js = wait_for(lambda: (v := daemon.vm("w"))["state"] != "stopping" and v, timeout=20)
    assert js["state"] == "stopped" and js["reason"] == "powered off", js
    assert time.monotonic() - t0 < scaled(10)    # the guest's doing, not the timeout
    assert "PROBE power_button=1" in daemon.vm_log("w")
    assert daemon.vm("w")["pid"] == 0


def test_guest_that_ignores_the_button_is_killed_at_the_timeout(daemon):
    start_waiting(daemon, "deaf", scenario="echo=60000")
    t0 = time.monotonic()
    js = daemon.stop("deaf", timeout=1)
    assert js["state"] == "stopped", js
    assert "did not power off within 1 s" in js["reason"], js
    assert 1 <= time.monotonic() - t0 < scaled(8)
    assert "power_button" not in daemon.vm_log("deaf")


def test_force_ends_a_stop_in_progress_and_paused_vms_need_force(daemon):
    start_waiting(daemon, "f", scenario="echo=60000")
    assert daemon.request("POST", "/vms/f/stop", {"timeout": 600})[0] == 202
    st, js = daemon.request("POST", "/vms/f/stop")
    assert st == 409 and "force" in js["error"], js        # already stopping
    assert daemon.request("POST", "/vms/f/pause")[0] == 409
    js = daemon.ok("POST", "/vms/f/stop", {"force": True})
    assert js["state"] == "stopped" and js["reason"] == "forced stop by request", js
    # A paused guest cannot see the button: refused, the VM stays paused.
    start_waiting(daemon, "p")
    daemon.ok("POST", "/vms/p/pause")
    st, js = daemon.request("POST", "/vms/p/stop")
    assert st == 409 and "paused" in js["error"], js
    assert daemon.vm("p")["state"] == "paused"
    assert daemon.ok("POST", "/vms/p/stop", {"force": True})["state"] == "stopped"


def test_stop_deadline_survives_a_daemon_restart(daemon):
    start_waiting(daemon, "r", scenario="echo=60000")
    pid = daemon.vm("r")["pid"]
    assert daemon.request("POST", "/vms/r/stop", {"timeout": 3})[0] == 202
    daemon.kill(signal.SIGKILL)
    daemon.start()
    js = daemon.vm("r")
    assert js["state"] == "stopping" and js["pid"] == pid, js
    js = wait_for(lambda: (v := daemon.vm("r"))["state"] != "stopping" and v, timeout=10)
    assert js["state"] == "stopped" and "within 3 s" in js["reason"], js
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}") or
                    open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] == "Z")


@pytest.mark.parametrize("body,msg", [
    ({"timeout": -1}, "'timeout' must be whole seconds"),
    ({"timeout": 3601}, "'timeout' must be whole seconds"),
    ({"timeout": "5"}, "'timeout' must be whole seconds"),
    ({"timeout": 1.5}, "'timeout' must be whole seconds"),
    ({"force": 1}, "'force' must be true or false"),
    ({"now": True}, "unknown field 'now'"),
])
def test_bad_stop_bodies(daemon, body, msg):
    start_waiting(daemon, "b")
    st, js = daemon.request("POST", "/vms/b/stop", body)
    assert st == 400 and msg in js["error"], js
    assert daemon.vm("b")["state"] == "running"
    daemon.stop("b", force=True)


def test_cli_stop_waits_for_the_guest(daemon):
    start_waiting(daemon, "c")
    r = subprocess.run([str(VIREO), "vm", "--socket", daemon.socket, "stop", "c",
                        "--timeout", "20"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "c: stopped (powered off)\n", r.stdout + r.stderr
    r = subprocess.run([str(VIREO), "vm", "--socket", daemon.socket, "stop", "c",
                        "--timeout", "x"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "usage" in r.stderr
