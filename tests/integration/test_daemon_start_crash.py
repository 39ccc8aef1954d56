"""Starts that survive a daemon dying, and one VMM per VM (issue 10, items 3
and 4): kill -9 of the daemon during `POST /vms/NAME/start`, a full state
file system and a damaged run record never leave a VMM the daemon does not
know, nor a second VMM on the same disk, nor a child holding the state dir."""
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile

import pytest

from conftest import needs_kvm, needs_qemu_img, wait_until
from daemonutil import Daemon

pytestmark = [needs_kvm]


def cmdlines():
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    yield int(pid), f.read().split(b"\0")
            except OSError:
                pass


def vmm_pids(d, name):
    """Live processes serving NAME's control socket: its VMMs."""
    want = f"--api-socket={d.state}/run/{name}.sock".encode()
    return sorted(pid for pid, argv in cmdlines() if want in argv and _alive(pid))


def strays(d):
    """Processes of `vireo daemon` on this state dir: a daemon's forked child
    not yet exec'd once the daemon is dead."""
    return [pid for pid, argv in cmdlines()
            if b"daemon" in argv and d.state.encode() in argv and _alive(pid)]


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def state_dir_free(d):
    """Whether nobody holds daemon.lock (a new daemon could start)."""
    with open(os.path.join(d.state, "daemon.lock"), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def send_start(d, name):
    """POST /vms/NAME/start without waiting for the answer."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(d.socket)
    s.sendall(f"POST /vms/{name}/start HTTP/1.1\r\nHost: localhost\r\n"
              "Content-Length: 0\r\n\r\n".encode())
    return s


def qcow2(path):
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return {"path": str(path), "format": "qcow2"}


def after_crash(d, name):
    """The daemon was killed mid-start: nothing may hold the state dir, the
    next daemon knows the one VMM there is (if any), and a start then never
    makes a second."""
    d.proc.wait(timeout=10)
    d.log.close()
    wait_until(lambda: not strays(d), 5, lambda: f"the daemon's children to die: {strays(d)}")
    wait_until(lambda: state_dir_free(d), 5, "daemon.lock free")
    d.env = None
    d.start()
    vmms = vmm_pids(d, name)
    js = d.vm(name)
    assert len(vmms) <= 1, vmms
    if vmms:
        assert js["state"] == "running" and js["pid"] == vmms[0], (js, vmms)
    else:
        assert js["state"] != "running", js
    st, js = d.request("POST", f"/vms/{name}/start")
    assert st in (200, 409), (st, js)
    vmms = vmm_pids(d, name)
    assert len(vmms) == 1 and d.vm(name)["pid"] == vmms[0], (vmms, d.vm(name))
    js = d.ok("POST", f"/vms/{name}/stop", {"force": True})
    assert js["state"] == "stopped", js
    wait_until(lambda: not vmm_pids(d, name), 5, "the VMM to end")


def qemu_img_check(path):
    r = subprocess.run(["qemu-img", "check", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_qemu_img
@pytest.mark.parametrize("point", ["forked", "released"])
def test_daemon_killed_at_each_point_of_a_start(daemon, tmp_path, point):
    """Deterministic: the daemon pauses at the point (a test hook) and is
    killed there: after the fork, before the run record (issue: a child
    left on its gate with daemon.lock); after the VMM is let go, before it
    answers (issue: a VMM the next daemon does not know)."""
    daemon.create("w", disks=[qcow2(tmp_path / "w.qcow2")])
    daemon.kill(signal.SIGTERM)
    daemon.env = {"VIREO_TEST_START_PAUSE": point}
    daemon.start()
    s = send_start(daemon, "w")
    wait_until(lambda: f"start paused ({point})" in daemon.logtext(), 10,
               lambda: f"the daemon to pause at {point}: {daemon.logtext()[-2000:]}")
    daemon.proc.kill()
    s.close()
    after_crash(daemon, "w")
    qemu_img_check(tmp_path / "w.qcow2")


@needs_qemu_img
def test_daemon_killed_during_starts(daemon, tmp_path):
    """kill -9 at 1-13 ms and 16-28 ms into a start (20 trials each), the
    windows the issue found on main."""
    import time
    daemon.create("t", disks=[qcow2(tmp_path / "t.qcow2")])
    delays = [1 + 12 * i / 19 for i in range(20)] + [16 + 12 * i / 19 for i in range(20)]
    for ms in delays:
        s = send_start(daemon, "t")
        time.sleep(ms / 1000)
        daemon.proc.kill()
        s.close()
        after_crash(daemon, "t")
    qemu_img_check(tmp_path / "t.qcow2")


def test_start_on_a_full_state_fs_fails_and_changes_nothing():
    root = tempfile.mkdtemp(prefix="vd-", dir="/tmp")
    d = Daemon(root=root)
    os.mkdir(d.state)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "vireo-test", d.state], check=True)
    try:
        d.start()
        d.create("f")
        fd = os.open(os.path.join(d.state, "filler"), os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\1" * 4096):
                pass
        except OSError:
            pass
        os.close(fd)
        st, js = d.request("POST", "/vms/f/start")
        assert st >= 400 and "No space left" in js["error"], (st, js)
        assert not vmm_pids(d, "f")
        assert d.vm("f")["state"] == "stopped"
        os.unlink(os.path.join(d.state, "filler"))
        assert d.ok("POST", "/vms/f/start")["state"] == "running"
        assert len(vmm_pids(d, "f")) == 1
    finally:
        d.cleanup()
        subprocess.run(["umount", "-l", d.state])
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("record", ["{garbage", '{"state": "stopped", "pid": 0}', None])
def test_damaged_run_record_never_gives_a_second_vmm(daemon, record):
    """No disk: only the VM's own lock tells the daemon its VMM lives."""
    daemon.create("g")
    pid = daemon.ok("POST", "/vms/g/start")["pid"]
    daemon.kill(signal.SIGKILL)
    path = os.path.join(daemon.state, "run", "g.json")
    if record is None:
        os.unlink(path)
    else:
        with open(path, "w") as f:
            f.write(record)
    daemon.start()
    js = daemon.vm("g")
    assert js["state"] == "running" and js["pid"] == pid, js
    st, js = daemon.request("POST", "/vms/g/start")
    assert st == 409, (st, js)
    assert vmm_pids(daemon, "g") == [pid]
    with open(path) as f:
        rec = json.load(f)  # repaired, with the VMM's own uid (never given twice)
    with open(f"/proc/{pid}/status") as f:
        uid = next(int(l.split()[2]) for l in f if l.startswith("Uid:"))
    assert rec["pid"] == pid and rec["vmm_uid"] == uid, (rec, uid)
    assert daemon.ok("POST", "/vms/g/stop", {"force": True})["state"] == "stopped"
    assert not vmm_pids(daemon, "g")
