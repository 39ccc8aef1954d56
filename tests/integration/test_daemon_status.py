"""What the daemon believes about a VM's end comes from the VMM (its status
file, `vireo run --status-file`), never from the console log that the guest
writes into (issue 10, item 7)."""
import os
import signal

import pytest

from conftest import needs_kvm
from daemonutil import _proc_state, wait_for

pytestmark = [needs_kvm]


def start_then_lose_the_daemon(daemon, name, scenario):
    """Starts NAME, kills the daemon, and returns once the VMM has ended on
    its own: the next daemon adopts a VMM it cannot wait for."""
    daemon.create(name, scenario=scenario)
    pid = daemon.ok("POST", f"/vms/{name}/start")["pid"]
    daemon.kill(signal.SIGKILL)
    assert wait_for(lambda: _proc_state(pid) in ("Z", None), timeout=30), pid
    daemon.start()
    return pid


@pytest.mark.parametrize("scenario", ["wait=1500", "say=vireo:_guest_rebooted say_after=1500"],
                         ids=["poweroff", "guest-prints-the-reboot-line"])
def test_poweroff_after_a_daemon_restart_is_a_poweroff(daemon, scenario):
    # The second guest ends its output with the very line `vireo run`
    # prints after a reboot: the daemon used to restart it for that.
    start_then_lose_the_daemon(daemon, "p", scenario)
    js = daemon.vm("p")
    assert js["state"] == "stopped" and js["reason"] == "powered off", js


def test_guest_cannot_pick_the_exit_status(daemon):
    # Port 0xf4 is off in daemon VMMs: exit=2 would have read as a crash.
    daemon.create("x", scenario="exit=2")
    daemon.ok("POST", "/vms/x/start")
    js = wait_for(lambda: (v := daemon.vm("x"))["state"] != "running" and v, timeout=10)
    assert js and js["state"] == "stopped" and js["reason"] == "powered off", daemon.vm("x")


def test_vmm_error_reason_comes_from_the_vmm(daemon, tmp_path):
    daemon.create("e", disks=[{"path": str(tmp_path / "missing.img")}])
    st, js = daemon.request("POST", "/vms/e/start")
    assert st == 500, js
    vm = daemon.vm("e")
    assert vm["state"] == "crashed" and "missing.img" in vm["reason"], vm
    with open(os.path.join(daemon.state, "run", "e.status")) as f:
        assert "missing.img" in f.read()
