"""VM snapshots in the daemon (issue 11, "Daemon + CLI"): POST/GET/DELETE
/vms/NAME/snapshots and .../SNAP/rollback, and the vireo vm verbs. The
probe's count scenario prints a counter: a VM rolled back to a memory
snapshot goes on from the snapshot's counter without booting again. Disks
get qcow2 internal snapshots (qemu-img snapshot -l shows them), checked
with qemu-img compare against a copy taken at the snapshot."""
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time

import pytest

from conftest import VIREO, LiveProbe, needs_kvm, scaled, vireo_args, vireo_control
from daemonutil import Daemon, wait_for

pytestmark = [needs_kvm]

COUNT = re.compile(r"PROBE count n=(\d+) ms=(\d+)")


@pytest.fixture
def sdaemon(tmp_path):
    """A daemon whose VMMs are not sandboxed (the `daemon` fixture's are:
    both must work)."""
    d = Daemon(extra=["--storage", str(tmp_path), "--vmm-uid-base", "none"]).start()
    yield d
    d.cleanup()


def counts(d, name):
    return [int(m.group(1)) for m in COUNT.finditer(d.vm_log(name))]


def last_count(d, name):
    c = counts(d, name)
    return c[-1] if c else -1


def qcow2(tmp_path, name="disk.qcow2", size="4M"):
    path = tmp_path / name
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path


def qemu_io(path, cmd):
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", cmd, str(path)], check=True,
                   stdout=subprocess.DEVNULL)


def internal_snapshots(path, share=False):
    out = subprocess.run(["qemu-img", "snapshot", "-l", *(["-U"] if share else []), str(path)],
                         check=True, capture_output=True, text=True).stdout
    # "ID  TAG  VM SIZE  DATE  VM CLOCK  ICOUNT" table: the tags.
    return [line.split()[1] for line in out.splitlines()[2:] if line.split()]


def same_image(a, b):
    return subprocess.run(["qemu-img", "compare", "-q", str(a), str(b)]).returncode == 0


def snapshots(d, name):
    return d.ok("GET", f"/vms/{name}/snapshots")


def start_counting(d, name, **kw):
    d.create(name, scenario="count=50", **kw)
    d.ok("POST", f"/vms/{name}/start")
    assert wait_for(lambda: last_count(d, name) >= 5, timeout=30), d.vm_log(name)


def test_memory_snapshot_of_a_running_vm_and_rollback(sdaemon):
    d = sdaemon
    start_counting(d, "c")
    before = last_count(d, "c")
    snap = d.ok("POST", "/vms/c/snapshots", {"name": "s1"}, status=201)
    assert snap["name"] == "s1" and snap["memory"] is True and snap["parent"] is None, snap
    assert snap["vm_state"] == "running", snap
    after = last_count(d, "c")
    # The VM was resumed and keeps counting.
    vm = d.vm("c")
    assert vm["state"] == "running", vm
    assert wait_for(lambda: last_count(d, "c") >= after + 10, timeout=30), d.vm_log("c")
    gone_on = last_count(d, "c")

    lst = snapshots(d, "c")
    assert lst["current"] == "s1" and [s["name"] for s in lst["snapshots"]] == ["s1"], lst
    s = lst["snapshots"][0]
    assert s["memory"] is True and 0 < s["size"] < 16 << 20 and s["time"] > 0, s

    pid = d.vm("c")["pid"]
    vm = d.ok("POST", "/vms/c/snapshots/s1/rollback")
    assert vm["state"] == "running" and vm["pid"] != pid, vm
    # The new VMM's log: it goes on from the snapshot's counter, no boot.
    assert wait_for(lambda: len(counts(d, "c")) >= 3, timeout=30), d.vm_log("c")
    first = counts(d, "c")[0]
    assert before < first <= after + 1 and first < gone_on, (before, first, after, gone_on)
    assert "PROBE boot" not in d.vm_log("c")
    assert wait_for(lambda: last_count(d, "c") >= first + 5, timeout=30), d.vm_log("c")

    # A second snapshot descends from the first; rollback of a paused VM.
    d.ok("POST", "/vms/c/pause")
    paused_at = last_count(d, "c")
    s2 = d.ok("POST", "/vms/c/snapshots", {"name": "s2"}, status=201)
    assert s2["parent"] == "s1" and s2["vm_state"] == "paused", s2
    assert d.vm("c")["state"] == "paused"
    d.ok("POST", "/vms/c/snapshots/s1/rollback")
    assert snapshots(d, "c")["current"] == "s1"
    assert wait_for(lambda: len(counts(d, "c")) >= 2, timeout=30), d.vm_log("c")
    assert before < counts(d, "c")[0] <= after + 1
    # A snapshot taken paused comes back paused: no guest code has run yet;
    # on resume it goes on with the very next count.
    vm = d.ok("POST", "/vms/c/snapshots/s2/rollback")
    assert vm["state"] == "paused" and d.vm("c")["vmm"]["state"] == "paused", vm
    assert counts(d, "c") == [] and "PROBE boot" not in d.vm_log("c")
    d.ok("POST", "/vms/c/resume")
    assert wait_for(lambda: len(counts(d, "c")) >= 2, timeout=30), d.vm_log("c")
    assert counts(d, "c")[:2] == [paused_at + 1, paused_at + 2], (paused_at, counts(d, "c"))


def test_memory_snapshot_of_a_sandboxed_vmm(daemon):
    """The daemon's default as root: the VMM runs jailed (own uid, empty
    read-only root, Landlock, seccomp) and cannot open a file; the daemon
    passes it the snapshot's memory and state files."""
    d = daemon
    start_counting(d, "sb")
    assert d.vm("sb")["vmm_uid"] > 0
    before = last_count(d, "sb")
    snap = d.ok("POST", "/vms/sb/snapshots", {"name": "m"}, status=201)
    assert snap["memory"] is True, snap
    after = last_count(d, "sb")
    assert d.vm("sb")["state"] == "running"
    assert wait_for(lambda: last_count(d, "sb") >= after + 10, timeout=30), d.vm_log("sb")
    files = os.path.join(d.state, "snapshots", "sb", "m")
    assert sorted(os.listdir(files)) == ["memory", "meta.json", "state"]
    assert os.path.getsize(os.path.join(files, "memory")) == 64 << 20
    vm = d.ok("POST", "/vms/sb/snapshots/m/rollback")
    assert vm["state"] == "running" and vm["vmm_uid"] > 0, vm
    assert wait_for(lambda: len(counts(d, "sb")) >= 3, timeout=30), d.vm_log("sb")
    assert before < counts(d, "sb")[0] <= after + 1 and "PROBE boot" not in d.vm_log("sb")


def test_rollback_into_a_sandboxed_vmm_and_leftovers(sdaemon):
    """A memory snapshot restores under the daemon's default sandbox too (the
    VMM opens the snapshot's files before it jails itself); a temporary
    directory a dead daemon left behind is never listed and is cleaned up."""
    d = sdaemon
    start_counting(d, "j")
    d.ok("POST", "/vms/j/snapshots", {"name": "m"}, status=201)
    at = last_count(d, "j")
    d.stop("j", force=True)
    left = os.path.join(d.state, "snapshots", "j", ".x.tmp")
    os.mkdir(left)
    with open(os.path.join(left, "memory"), "w") as f:
        f.write("half")
    d.kill()
    d2 = Daemon(root=d.root, extra=["--storage", d.extra[1]]).start()
    try:
        assert [s["name"] for s in snapshots(d2, "j")["snapshots"]] == ["m"]
        vm = d2.ok("POST", "/vms/j/snapshots/m/rollback")
        assert vm["state"] == "running" and vm["vmm_uid"] > 0, vm
        assert wait_for(lambda: len(counts(d2, "j")) >= 3, timeout=30), d2.vm_log("j")
        assert counts(d2, "j")[0] <= at + 1 and "PROBE boot" not in d2.vm_log("j")
        d2.ok("POST", "/vms/j/snapshots", {"name": "d", "memory": False}, status=201)
        assert not os.path.exists(left)
    finally:
        d2.cleanup()


def test_rollback_to_a_damaged_memory_snapshot_leaves_the_vm_running(sdaemon):
    """Everything is checked before the VM is stopped: a state file with a
    flipped byte, or a memory file cut short, is refused with one line and
    the VM runs on in the same VMM."""
    d = sdaemon
    start_counting(d, "dm")
    d.ok("POST", "/vms/dm/snapshots", {"name": "m"}, status=201)
    files = os.path.join(d.state, "snapshots", "dm", "m")
    pid = d.vm("dm")["pid"]
    state = os.path.join(files, "state")
    with open(state, "r+b") as f:
        f.seek(os.path.getsize(state) // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x40]))
    st, js = d.request("POST", "/vms/dm/snapshots/m/rollback")
    assert st == 400 and "snapshot 'm' cannot be restored" in js["error"], js
    assert "checksum mismatch" in js["error"] and "\n" not in js["error"], js
    with open(state, "r+b") as f:
        f.seek(os.path.getsize(state) // 2)
        f.write(b)
    os.truncate(os.path.join(files, "memory"), 4096)
    st, js = d.request("POST", "/vms/dm/snapshots/m/rollback")
    assert st == 400 and "the snapshot's guest has" in js["error"], js
    vm = d.vm("dm")
    assert vm["state"] == "running" and vm["pid"] == pid, vm
    n = last_count(d, "dm")
    assert wait_for(lambda: last_count(d, "dm") >= n + 3, timeout=30)
    assert snapshots(d, "dm")["current"] == "m"


def test_disk_snapshot_of_a_stopped_vm(sdaemon, tmp_path):
    d = sdaemon
    disk = qcow2(tmp_path)
    qemu_io(disk, "write -P 0x11 0 64k")
    d.create("st", disks=[{"path": str(disk)}])
    snap = d.ok("POST", "/vms/st/snapshots", {"name": "before-upgrade"}, status=201)
    # A stopped VM has no memory to save: disks only.
    assert snap["memory"] is False and snap["disks"] == [{"index": 0, "path": str(disk)}], snap
    assert internal_snapshots(disk) == ["before-upgrade"]
    ref = tmp_path / "ref.qcow2"
    shutil.copy(disk, ref)

    qemu_io(disk, "write -P 0x22 0 128k")
    assert not same_image(disk, ref)
    vm = d.ok("POST", "/vms/st/snapshots/before-upgrade/rollback")
    assert vm["state"] == "stopped", vm
    assert same_image(disk, ref)

    # Survives a daemon restart.
    d.kill()
    d2 = Daemon(root=d.root, extra=d.extra).start()
    try:
        lst = snapshots(d2, "st")
        assert [s["name"] for s in lst["snapshots"]] == ["before-upgrade"], lst
        assert lst["current"] == "before-upgrade"
        qemu_io(disk, "write -P 0x33 0 64k")
        d2.ok("POST", "/vms/st/snapshots/before-upgrade/rollback")
        assert same_image(disk, ref)
        # Delete: the files and the internal snapshot go.
        d2.ok("DELETE", "/vms/st/snapshots/before-upgrade")
        assert internal_snapshots(disk) == []
        assert not os.path.exists(os.path.join(d.state, "snapshots", "st", "before-upgrade"))
        assert snapshots(d2, "st") == {"snapshots": [], "current": None}
        st, js = d2.request("POST", "/vms/st/snapshots/before-upgrade/rollback")
        assert st == 404 and "no snapshot 'before-upgrade'" in js["error"], js
    finally:
        d2.cleanup()


def test_disk_snapshot_of_a_running_vm_by_its_vmm(daemon, tmp_path):
    """The VMM holds the image: it takes the internal snapshot while paused,
    here sandboxed (jail, own uid, seccomp) as the daemon runs it by default."""
    d = daemon
    disk = qcow2(tmp_path)
    start_counting(d, "r", disks=[{"path": str(disk)}])
    snap = d.ok("POST", "/vms/r/snapshots", {"name": "disk-only", "memory": False}, status=201)
    assert snap["memory"] is False and snap["vm_state"] == "running", snap
    assert d.vm("r")["state"] == "running"
    n = last_count(d, "r")
    assert wait_for(lambda: last_count(d, "r") >= n + 5, timeout=30)
    assert internal_snapshots(disk, share=True) == ["disk-only"]
    # A second name: the VMM adds it beside the first; delete goes through
    # the VMM too, while it runs.
    d.ok("POST", "/vms/r/snapshots", {"name": "two", "memory": False}, status=201)
    assert internal_snapshots(disk, share=True) == ["disk-only", "two"]
    d.ok("DELETE", "/vms/r/snapshots/two")
    assert internal_snapshots(disk, share=True) == ["disk-only"]
    # Rollback of a running VM to a disk-only snapshot: stopped, disks back.
    vm = d.ok("POST", "/vms/r/snapshots/disk-only/rollback")
    assert vm["state"] == "stopped", vm
    assert subprocess.run(["qemu-img", "check", "-q", str(disk)]).returncode == 0


# blk's word whole: the log is read while the VMM writes it, and a line cut
# in two ("blk=o") failed a loaded run.
DEVLOOP = re.compile(r"PROBE devloop n=(\d+) ms=\d+ blk=(\w+) ")


def rounds(d, name):
    return [(int(m.group(1)), m.group(2)) for m in DEVLOOP.finditer(d.vm_log(name))]


@pytest.mark.parametrize("which", ["sdaemon", "daemon"])
def test_memory_snapshot_with_a_qcow2_disk_and_rollback(request, which, tmp_path):
    """A VM that writes its qcow2 disk all the time (the devloop scenario):
    memory and disk saved at one instant; rolled back, the guest goes on
    from the snapshot and reads back what it had written, in the disk as
    it was then. Unsandboxed and sandboxed (jail, own uid, seccomp)."""
    d = request.getfixturevalue(which)
    disk = qcow2(tmp_path, size="16M")
    d.create("v", scenario="devloop=50 irq=msix", disks=[{"path": str(disk)}])
    d.ok("POST", "/vms/v/start")
    assert wait_for(lambda: len(rounds(d, "v")) >= 5, timeout=30), d.vm_log("v")
    snap = d.ok("POST", "/vms/v/snapshots", {"name": "full"}, status=201)
    assert snap["memory"] is True and snap["vm_state"] == "running", snap
    assert internal_snapshots(disk, share=True) == ["full"]
    after = rounds(d, "v")[-1][0]
    assert wait_for(lambda: rounds(d, "v")[-1][0] >= after + 5, timeout=30), d.vm_log("v")
    d.ok("POST", "/vms/v/snapshots/full/rollback")
    assert wait_for(lambda: len(rounds(d, "v")) >= 4, timeout=30), d.vm_log("v")
    r = rounds(d, "v")
    assert r[0][0] <= after + 1 and all(ok == "ok" for _, ok in r), r
    assert "PROBE boot" not in d.vm_log("v")
    d.ok("POST", "/vms/v/stop", {"force": True})
    assert wait_for(lambda: d.vm("v")["state"] == "stopped", timeout=30)
    assert subprocess.run(["qemu-img", "check", "-q", str(disk)]).returncode == 0


def test_vmm_disk_snapshots_all_or_none(tmp_path, sock):
    """The VMM's part on its own: internal snapshots of its writable disks,
    only while paused; one disk that cannot take it and none has it after."""
    a, b, ro = qcow2(tmp_path, "a.qcow2"), qcow2(tmp_path, "b.qcow2"), qcow2(tmp_path, "ro.qcow2")
    subprocess.run(["qemu-img", "snapshot", "-c", "taken", str(b)], check=True)
    guest = LiveProbe(vireo_args("scenario=count=50", memory="64M", extra=[
        "--api-socket", sock, "--disk", f"path={a}", "--disk", f"path={b}",
        "--disk", f"path={ro},readonly"]))
    try:
        guest.wait_line("PROBE count n=2 ")
        r = vireo_control(sock, action="snapshot", disks=True, name="s1")
        assert r["code"] == "wrong-state", r
        assert vireo_control(sock, action="pause")["ok"]
        r = vireo_control(sock, action="snapshot", disks=True, name="taken")
        assert r["code"] == "wrong-state" and "already has an internal snapshot" in r["error"], r
        assert internal_snapshots(a, share=True) == []
        # "fds": the files come with the request (SCM_RIGHTS), or it is refused.
        r = vireo_control(sock, action="snapshot", fds=True, disks=True, name="s1")
        assert r["code"] == "bad-request" and "descriptors" in r["error"], r
        assert internal_snapshots(a, share=True) == []
        r = vireo_control(sock, action="snapshot", disks=True, name="s1")
        assert r == {"ok": True, "state": "paused", "state_bytes": 0, "memory_bytes": 0}, r
        assert internal_snapshots(a, share=True) == ["s1"]
        assert internal_snapshots(b, share=True) == ["taken", "s1"]
        assert internal_snapshots(ro, share=True) == []      # read-only: left alone
        assert vireo_control(sock, action="resume")["ok"]
        r = vireo_control(sock, action="disk-snapshot-delete", name="s1")
        assert r == {"ok": True, "state": "running"}, r
        assert internal_snapshots(a, share=True) == [] and internal_snapshots(b, share=True) == ["taken"]
        assert vireo_control(sock, action="poweroff")["ok"]
        assert guest.wait_exit(10)
    finally:
        guest.proc.kill()
        guest.finish()
    for img in (a, b):
        assert subprocess.run(["qemu-img", "check", "-q", str(img)]).returncode == 0


def test_bad_requests_change_nothing(sdaemon, tmp_path):
    d = sdaemon
    disk = qcow2(tmp_path)
    raw = tmp_path / "raw.img"
    raw.write_bytes(b"\0" * (1 << 20))
    d.create("b", disks=[{"path": str(disk)}])
    for body in ({}, {"name": "../x"}, {"name": ".hidden"}, {"name": "a" * 65},
                 {"name": "x y"}, {"name": "ok", "memory": "yes"}, {"name": "ok", "other": 1},
                 {"name": 5}):
        st, js = d.request("POST", "/vms/b/snapshots", body)
        assert st == 400 and js["code"] == "bad-request", (body, st, js)
    st, js = d.request("POST", "/vms/b/snapshots", raw="[1]")
    assert st == 400, js
    for method, path in (("DELETE", "/vms/b/snapshots/%2e%2e"),
                         ("POST", "/vms/b/snapshots/.x/rollback")):
        st, js = d.request(method, path)
        assert st == 400 and "bad snapshot name" in js["error"], (path, st, js)
    for method, path in (("DELETE", "/vms/b/snapshots/nope"),
                         ("POST", "/vms/b/snapshots/nope/rollback"),
                         ("POST", "/vms/nosuch/snapshots")):
        st, js = d.request(method, path, {"name": "x"} if path.endswith("snapshots") else None)
        assert st == 404, (path, st, js)
    st, js = d.request("POST", "/vms/b/snapshots/nope/revert")
    assert st == 404, js
    st, js = d.request("PUT", "/vms/b/snapshots")
    assert st == 405, js
    assert snapshots(d, "b")["snapshots"] == [] and internal_snapshots(disk) == []

    # Two disks, the second has an internal snapshot by that name already:
    # refused before the first is touched.
    other = qcow2(tmp_path, "other.qcow2")
    subprocess.run(["qemu-img", "snapshot", "-c", "dup", str(other)], check=True)
    d.create("two", disks=[{"path": str(disk)}, {"path": str(other)}])
    st, js = d.request("POST", "/vms/two/snapshots", {"name": "dup"})
    assert st == 409 and "already has an internal snapshot 'dup'" in js["error"], js
    assert internal_snapshots(disk) == [] and snapshots(d, "two")["snapshots"] == []

    # A raw disk cannot take an internal snapshot: refused before anything.
    d.create("rw", disks=[{"path": str(raw), "format": "raw"}])
    st, js = d.request("POST", "/vms/rw/snapshots", {"name": "s"})
    assert st == 400 and "raw, which has no internal snapshots" in js["error"], js
    assert snapshots(d, "rw")["snapshots"] == []

    # Duplicates; damaged metadata.
    d.ok("POST", "/vms/b/snapshots", {"name": "s"}, status=201)
    st, js = d.request("POST", "/vms/b/snapshots", {"name": "s"})
    assert st == 409 and "already has a snapshot 's'" in js["error"], js
    ref = tmp_path / "ref.qcow2"
    shutil.copy(disk, ref)
    qemu_io(disk, "write -P 0x44 0 64k")
    meta = os.path.join(d.state, "snapshots", "b", "s", "meta.json")
    good = {"name": "s", "time_ns": 1, "parent": None, "memory": False,
            "disks": [{"index": 0, "path": str(disk)}]}
    for bad in ('{"name": "s", "time": ', "[]", "", json.dumps({**good, "name": "t"}),
                json.dumps({**good, "parent": "../x"}), json.dumps({**good, "memory": 1}),
                json.dumps({**good, "time_ns": "1"}), json.dumps({**good, "disks": None}),
                json.dumps({**good, "disks": [{"index": 99, "path": "/x"}]}),
                json.dumps({k: v for k, v in good.items() if k != "disks"})):
        with open(meta, "w") as f:
            f.write(bad)
        st, js = d.request("POST", "/vms/b/snapshots/s/rollback")
        assert st == 400 and "snapshot 's' of VM 'b' is damaged" in js["error"], (bad, js)
        assert not same_image(disk, ref)          # nothing rolled back
    lst = snapshots(d, "b")["snapshots"]
    assert lst[0]["name"] == "s" and "damaged" in lst[0], lst
    # A missing disk snapshot is refused before the disk is touched.
    with open(meta, "w") as f:
        json.dump(good, f)
    subprocess.run(["qemu-img", "snapshot", "-d", "s", str(disk)], check=True)
    st, js = d.request("POST", "/vms/b/snapshots/s/rollback")
    assert st == 409 and "has no internal snapshot 's'" in js["error"], js
    assert not same_image(disk, ref)
    # A damaged one can still be deleted.
    with open(meta, "w") as f:
        f.write("garbage")
    d.ok("DELETE", "/vms/b/snapshots/s")
    assert snapshots(d, "b")["snapshots"] == []


def test_snapshot_count_is_bounded(sdaemon):
    d = sdaemon
    d.create("many")
    for i in range(32):
        d.ok("POST", "/vms/many/snapshots", {"name": f"s{i}"}, status=201)
    st, js = d.request("POST", "/vms/many/snapshots", {"name": "one-more"})
    assert st == 409 and "32 snapshots" in js["error"], js
    # Each one's parent is the one before; deleting one re-parents its child.
    lst = snapshots(d, "many")["snapshots"]
    assert [s["parent"] for s in lst[:3]] == [None, "s0", "s1"], lst[:3]
    d.ok("DELETE", "/vms/many/snapshots/s1")
    lst = {s["name"]: s for s in snapshots(d, "many")["snapshots"]}
    assert lst["s2"]["parent"] == "s0" and len(lst) == 31
    # Deleting the VM takes its snapshots.
    d.ok("DELETE", "/vms/many")
    assert not os.path.exists(os.path.join(d.state, "snapshots", "many"))


def vm_cli(d, *args):
    return subprocess.run([str(VIREO), "vm", "--socket", d.socket, *args], capture_output=True,
                          text=True, timeout=scaled(60))


def test_cli_verbs(sdaemon, tmp_path):
    d = sdaemon
    disk = qcow2(tmp_path)
    d.create("cli", disks=[{"path": str(disk)}])
    r = vm_cli(d, "snapshot", "cli", "first", "--no-memory")
    assert r.returncode == 0 and "cli: snapshot first taken (disks only)" in r.stdout, r
    r = vm_cli(d, "snapshots", "cli")
    assert r.returncode == 0 and re.search(r"^\* first\s+\S+ \S+\s+disks\s", r.stdout, re.M), r
    r = vm_cli(d, "--output=json", "snapshots", "cli")
    assert json.loads(r.stdout)["snapshots"][0]["name"] == "first", r
    qemu_io(disk, "write -P 0x55 0 64k")
    r = vm_cli(d, "rollback", "cli", "first")
    assert r.returncode == 0 and "cli: rolled back to first (stopped)" in r.stdout, r
    r = vm_cli(d, "rollback", "cli", "second")
    assert r.returncode == 1 and "no snapshot 'second'" in r.stderr, r
    r = vm_cli(d, "delsnapshot", "cli", "first")
    assert r.returncode == 0 and "cli: snapshot first deleted" in r.stdout, r
    assert internal_snapshots(disk) == []
    r = vm_cli(d, "snapshot", "cli")
    assert r.returncode == 2 and "usage" in r.stderr, r


def test_cli_progress_line_when_slow(tmp_path):
    """A daemon that takes 1.5 s to answer: the CLI says what it waits for
    (once, stderr not being a terminal), and only then the result."""
    path = str(tmp_path / "slow.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)
    seen = []

    def serve():
        c, _ = srv.accept()
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < int(
                re.search(rb"Content-Length: (\d+)", data).group(1)):
            chunk = c.recv(65536)
            if not chunk:
                break
            data += chunk
        seen.append(data.decode())
        time.sleep(1.5)
        body = json.dumps({"name": "s", "memory": True}).encode()
        c.sendall(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        c.close()

    t = threading.Thread(target=serve)
    t.start()
    r = subprocess.run([str(VIREO), "vm", "--socket", path, "snapshot", "vm1", "s"],
                       capture_output=True, text=True, timeout=scaled(30))
    t.join()
    srv.close()
    assert seen and seen[0].startswith("POST /vms/vm1/snapshots "), seen
    assert '{"name":"s","memory":true}' in seen[0].replace(" ", ""), seen
    assert r.returncode == 0 and r.stdout == "vm1: snapshot s taken (memory and disks)\n", r
    assert r.stderr == "vireo: taking snapshot s of vm1...\n", r
