"""Incremental snapshots in the daemon (issue 11): POST /vms/NAME/snapshots
with "incremental": true and `vireo vm snapshot NAME SNAP --incremental`.
The probe's dirty scenario checks every page of its buffer on each pass (a
page not as the previous pass left it counts as bad): a VM rolled back to
any snapshot of a chain goes on with the next pass and finds none bad."""
import os
import re
import subprocess

from conftest import VIREO, needs_kvm
from daemonutil import wait_for

pytestmark = [needs_kvm]

DIRTY = re.compile(r"PROBE dirty pass=(\d+) bad=(\d+) ms=\d+\n")


def passes(d, name):
    return [(int(m.group(1)), int(m.group(2))) for m in DIRTY.finditer(d.vm_log(name))]


def last_pass(d, name):
    p = passes(d, name)
    return p[-1][0] if p else -1


def take(d, name, snap, **kw):
    return d.ok("POST", f"/vms/{name}/snapshots", {"name": snap, **kw}, status=201)


def go_on(d, name, n=20):
    at = last_pass(d, name)
    assert wait_for(lambda: last_pass(d, name) >= at + n, timeout=20), d.vm_log(name)[-500:]


def rolls_back_exactly(d, name, snap, before, after):
    """Rolled back, the VM goes on with a pass between before and after+1
    (when exactly it was paused is not known here) and finds every page."""
    d.ok("POST", f"/vms/{name}/snapshots/{snap}/rollback")
    assert wait_for(lambda: len(passes(d, name)) >= 30, timeout=20), d.vm_log(name)[-500:]
    seen = passes(d, name)
    assert before < seen[0][0] <= after + 2, (before, seen[:2], after)
    assert [n for n, _ in seen] == list(range(seen[0][0], seen[-1][0] + 1))
    assert all(bad == 0 for _, bad in seen), seen
    assert "PROBE boot" not in d.vm_log(name)


def test_chain_rollbacks_and_delete_order(daemon):
    """Under the default sandbox: a chain of three, each rollback exact; an
    increment of a rolled-back VM; a parent with an increment cannot go."""
    d = daemon
    d.create("inc", scenario="dirty=4")
    r = d.request("POST", "/vms/inc/snapshots", {"name": "x", "incremental": True})
    assert r[0] == 400 and "is stopped" in r[1]["error"], r
    d.ok("POST", "/vms/inc/start")
    go_on(d, "inc")
    r = d.request("POST", "/vms/inc/snapshots", {"name": "x", "incremental": True})
    assert r[0] == 409 and "no current snapshot" in r[1]["error"], r
    marks = {}
    for snap, kw in (("s1", {}), ("s2", {"incremental": True}), ("s3", {"incremental": True})):
        go_on(d, "inc")
        before = last_pass(d, "inc")
        s = take(d, "inc", snap, **kw)
        marks[snap] = (before, last_pass(d, "inc"))
        assert s["incremental"] is bool(kw) and s["memory"] is True, s
        assert len(s["memory_id"]) == 16, s
    lst = {s["name"]: s for s in d.ok("GET", "/vms/inc/snapshots")["snapshots"]}
    assert lst["s2"]["parent"] == "s1" and lst["s3"]["parent"] == "s2", lst
    # An increment is what 4 MiB of passes dirtied, the full one all 64 MiB
    # the guest touched... at least its kernel and buffer.
    assert lst["s3"]["size"] < 8 << 20 and lst["s3"]["size"] < lst["s1"]["size"], lst

    for snap in ("s3", "s1", "s2"):
        rolls_back_exactly(d, "inc", snap, *marks[snap])
    # The VM descends from s2 now: its increment is s2's child.
    go_on(d, "inc")
    s4 = take(d, "inc", "s4", incremental=True)
    assert s4["parent"] == "s2", s4
    rolls_back_exactly(d, "inc", "s4", marks["s2"][0], last_pass(d, "inc") + 1)

    r = d.request("DELETE", "/vms/inc/snapshots/s2")
    assert r[0] == 409 and "parent of incremental snapshot" in r[1]["error"], r
    assert os.path.exists(os.path.join(d.state, "snapshots", "inc", "s2", "memory"))
    d.ok("DELETE", "/vms/inc/snapshots/s3")
    d.ok("DELETE", "/vms/inc/snapshots/s4")
    d.ok("DELETE", "/vms/inc/snapshots/s2")
    r = d.request("DELETE", "/vms/inc/snapshots/s1")
    assert r[0] == 200, r


def test_cli_incremental_and_a_virtio_vm(daemon, tmp_path):
    d = daemon
    d.create("cl", scenario="dirty=4")
    d.ok("POST", "/vms/cl/start")
    go_on(d, "cl")

    def cli(*args):
        return subprocess.run([str(VIREO), "vm", "--socket", d.socket, *args],
                              capture_output=True, text=True, timeout=60)
    assert cli("snapshot", "cl", "a").returncode == 0
    go_on(d, "cl")
    p = cli("snapshot", "cl", "b", "--incremental")
    assert p.returncode == 0 and "changed since its parent" in p.stdout, p
    p = cli("snapshots", "cl")
    assert re.search(r"b\s.*\bincr\b.*\ba$", p.stdout, re.M), p.stdout
    # A VM with a virtio device (the balloon, which gives pages back): its
    # device's writes are in the increment too.
    d.create("bal", scenario="dirty=4", balloon=True)
    d.ok("POST", "/vms/bal/start")
    go_on(d, "bal")
    take(d, "bal", "full")
    go_on(d, "bal")
    before = last_pass(d, "bal")
    assert take(d, "bal", "i", incremental=True)["incremental"]
    rolls_back_exactly(d, "bal", "i", before, last_pass(d, "bal"))
