"""Export and import of VM snapshots (issue 11, "Backup and recovery"):
POST /vms/NAME/snapshots/SNAP/export writes a directory with the snapshot
(and its incremental chain), the definition and the disks, each file under
a SHA-256; POST /vms/NEW/import on a second daemon (its own state dir and
storage) makes a VM of it that a rollback brings back running. A damaged
or hostile export is refused with one line and leaves nothing behind."""
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import tarfile
import threading
import time

import pytest

from conftest import VIREO, needs_kvm
from daemonutil import Daemon, wait_for

pytestmark = [needs_kvm]

COUNT = re.compile(r"PROBE count n=(\d+) ")
DIRTY = re.compile(r"PROBE dirty pass=(\d+) bad=(\d+) ms=\d+\n")


@pytest.fixture
def two(tmp_path):
    """Daemon A and daemon B, each with its own state dir and storage."""
    sa, sb = tmp_path / "a", tmp_path / "b"
    sa.mkdir()
    sb.mkdir()
    a = Daemon(extra=["--storage", str(sa), "--vmm-uid-base", "none"]).start()
    b = Daemon(extra=["--storage", str(sb)]).start()
    yield a, b, sa, sb
    a.cleanup()
    b.cleanup()


def counts(d, name):
    return [int(m.group(1)) for m in COUNT.finditer(d.vm_log(name))]


def passes(d, name):
    return [(int(m.group(1)), int(m.group(2))) for m in DIRTY.finditer(d.vm_log(name))]


def qcow2(path, size="8M"):
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path


def counting_vm_with_disk(a, sa):
    disk = qcow2(sa / "src.qcow2")
    a.create("src", scenario="count=50", disks=[{"path": str(disk), "format": "qcow2"}])
    a.ok("POST", "/vms/src/start")
    assert wait_for(lambda: len(counts(a, "src")) >= 5, timeout=30), a.vm_log("src")
    before = counts(a, "src")[-1]
    a.ok("POST", "/vms/src/snapshots", {"name": "s1"}, status=201)
    return disk, (before, counts(a, "src")[-1])


def test_export_import_runs_on_a_second_daemon(two):
    a, b, sa, sb = two
    disk, at = counting_vm_with_disk(a, sa)
    a.stop("src", force=True)
    out = a.ok("POST", "/vms/src/snapshots/s1/export", {"dir": str(sa / "exp")})
    assert out["exported"] == "s1" and out["dir"] == str(sa / "exp"), out
    files = sorted(f["path"] for f in out["files"])
    assert files == ["boot/kernel", "disks/0", "snapshots/s1/memory", "snapshots/s1/state"]
    manifest = (sa / "exp" / "manifest.json").read_text()
    assert hashlib.sha256(manifest.encode()).hexdigest() + "\n" == \
        (sa / "exp" / "manifest.sha256").read_text()
    # Outside the storage, or onto something that exists: refused.
    r = a.request("POST", "/vms/src/snapshots/s1/export", {"dir": "/tmp/elsewhere"})
    assert r[0] == 400 and "not in a storage directory" in r[1]["error"], r
    r = a.request("POST", "/vms/src/snapshots/s1/export", {"dir": str(sa / "exp")})
    assert r[0] == 409 and "exists" in r[1]["error"], r

    shutil.copytree(sa / "exp", sb / "exp")
    vm = b.ok("POST", "/vms/dst/import", {"dir": str(sb / "exp")}, status=201)
    assert vm["state"] == "stopped", vm
    assert vm["disks"][0]["path"] == str(sb / "dst-disk0.qcow2"), vm
    lst = b.ok("GET", "/vms/dst/snapshots")
    assert lst["current"] == "s1" and [s["name"] for s in lst["snapshots"]] == ["s1"], lst
    vm = b.ok("POST", "/vms/dst/snapshots/s1/rollback")
    assert vm["state"] == "running" and vm["vmm_uid"] > 0, vm
    assert wait_for(lambda: len(counts(b, "dst")) >= 5, timeout=30), b.vm_log("dst")
    assert at[0] < counts(b, "dst")[0] <= at[1] + 1, (at, counts(b, "dst")[:3])
    assert "PROBE boot" not in b.vm_log("dst")
    b.stop("dst", force=True)
    # Its disk is the source's at the snapshot (an internal snapshot in each).
    subprocess.run(["qemu-img", "snapshot", "-a", "s1", str(disk)], check=True)
    assert subprocess.run(["qemu-img", "compare", "-q", str(disk),
                           str(sb / "dst-disk0.qcow2")]).returncode == 0


def test_export_of_an_incremental_chain(two):
    """A VM without disks can be exported running; an increment takes its
    chain along, and the imported one rolls back exactly."""
    a, b, sa, sb = two
    a.create("c", scenario="dirty=4")
    a.ok("POST", "/vms/c/start")
    for snap, kw in (("s1", {}), ("s2", {"incremental": True})):
        at = len(passes(a, "c"))
        assert wait_for(lambda: len(passes(a, "c")) >= at + 20, timeout=20)
        a.ok("POST", "/vms/c/snapshots", {"name": snap, **kw}, status=201)
    mark = passes(a, "c")[-1][0]
    p = subprocess.run([str(VIREO), "vm", "--socket", a.socket, "snapshot", "export", "c", "s2",
                        str(sa / "chain")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "exported to" in p.stdout, p
    shutil.copytree(sa / "chain", sb / "chain")
    p = subprocess.run([str(VIREO), "vm", "--socket", b.socket, "snapshot", "import",
                        str(sb / "chain"), "c2"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "imported" in p.stdout, p
    lst = {s["name"]: s for s in b.ok("GET", "/vms/c2/snapshots")["snapshots"]}
    assert lst["s2"]["incremental"] and lst["s2"]["parent"] == "s1" and lst["s1"]["parent"] is None
    b.ok("POST", "/vms/c2/snapshots/s2/rollback")
    assert wait_for(lambda: len(passes(b, "c2")) >= 30, timeout=20), b.vm_log("c2")
    seen = passes(b, "c2")
    assert seen[0][0] <= mark + 2 and all(bad == 0 for _, bad in seen), seen[:3]
    assert [n for n, _ in seen] == list(range(seen[0][0], seen[-1][0] + 1))


# Up to "rng=": a line the VMM is still writing (blk=o…) does not count.
DEVLOOP = re.compile(r"PROBE devloop n=(\d+) ms=(\d+) blk=(\w+) rng=")


def rounds(d, name):
    return [(int(m.group(1)), int(m.group(2)), m.group(3))
            for m in DEVLOOP.finditer(d.vm_log(name))]


def random_qcow2(path, mib):
    raw = str(path) + ".raw"
    with open(raw, "wb") as f:
        f.write(os.urandom(mib << 20))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, str(path)],
                   check=True)
    os.unlink(raw)
    return path


def test_export_of_a_running_vm(two, tmp_path):
    """A VM that writes its disk all the time is exported while it runs:
    it keeps running (same VMM, its rounds go on); the exported disk is a
    compressed qcow2 with what the disk held at the snapshot; a rollback
    or a delete that would remove what the export reads is refused while
    it runs; imported on a second daemon it resumes at the snapshot."""
    a, b, sa, sb = two
    # Incompressible data: the export takes long enough to be caught.
    disk = random_qcow2(sa / "run.qcow2", 96)
    a.create("run", scenario="devloop=50", disks=[{"path": str(disk), "format": "qcow2"}])
    a.ok("POST", "/vms/run/start")
    assert wait_for(lambda: len(rounds(a, "run")) >= 5, timeout=30), a.vm_log("run")
    # A copy of the disk at the snapshot, taken while the VM is paused.
    a.ok("POST", "/vms/run/pause")
    a.ok("POST", "/vms/run/snapshots", {"name": "s1"}, status=201)
    after = rounds(a, "run")[-1][0]
    ref = tmp_path / "ref.qcow2"
    subprocess.run(["qemu-img", "convert", "-U", "-O", "qcow2", str(disk), str(ref)], check=True)
    a.ok("POST", "/vms/run/resume")
    assert wait_for(lambda: rounds(a, "run")[-1][0] >= after + 5, timeout=30), a.vm_log("run")
    a.ok("POST", "/vms/run/snapshots", {"name": "s0", "memory": False}, status=201)
    pid = a.vm("run")["pid"]

    done = {}
    t = threading.Thread(target=lambda: done.update(
        r=a.request("POST", "/vms/run/snapshots/s1/export", {"dir": str(sa / "exp")})))
    n0 = rounds(a, "run")[-1][0]
    t.start()
    assert wait_for(lambda: (sa / "exp.partial").exists() or not t.is_alive(), timeout=30)
    busy = [a.request("POST", "/vms/run/snapshots/s1/rollback"),
            a.request("DELETE", "/vms/run/snapshots/s0"),
            a.request("DELETE", "/vms/run")]
    # The guest goes on while the export runs.
    wait_for(lambda: rounds(a, "run")[-1][0] >= n0 + 3 or not t.is_alive(), timeout=30)
    went_on = rounds(a, "run")[-1][0] >= n0 + 3 and t.is_alive()
    still = t.is_alive()
    t0 = time.monotonic()
    t.join(timeout=300)
    assert done["r"][0] == 200, done
    print(f"export ran on {time.monotonic() - t0:.2f} s after the checks")
    assert still, "the export ended before the requests it should refuse"
    assert went_on, "the guest did not go on during the export"
    for st, js in busy:
        assert st == 409 and "export under way" in js["error"], (st, js)
    vm = a.vm("run")
    assert vm["state"] == "running" and vm["pid"] == pid, vm
    n = rounds(a, "run")[-1][0]
    assert wait_for(lambda: rounds(a, "run")[-1][0] >= n + 5, timeout=30), a.vm_log("run")
    assert all(blk == "ok" for _, _, blk in rounds(a, "run"))
    assert [s["name"] for s in a.ok("GET", "/vms/run/snapshots")["snapshots"]] == ["s1", "s0"]

    out = sa / "exp" / "disks" / "0"
    assert subprocess.run(["qemu-img", "compare", "-q", str(ref), str(out)]).returncode == 0
    chk = subprocess.run(["qemu-img", "check", str(out)], capture_output=True, text=True)
    assert chk.returncode == 0 and "No errors" in chk.stdout, chk.stdout
    assert "compressed clusters" in chk.stdout, chk.stdout

    shutil.copytree(sa / "exp", sb / "exp")
    b.ok("POST", "/vms/dst/import", {"dir": str(sb / "exp")}, status=201)
    vm = b.ok("POST", "/vms/dst/snapshots/s1/rollback")
    assert vm["state"] == "paused", vm
    b.ok("POST", "/vms/dst/resume")
    assert wait_for(lambda: len(rounds(b, "dst")) >= 5, timeout=30), b.vm_log("dst")
    r = rounds(b, "dst")
    assert r[0][0] <= after + 1 and all(blk == "ok" for _, _, blk in r), (after, r)
    assert "PROBE boot" not in b.vm_log("dst")


def in_thread(d, *req):
    """d.request(*req) in a thread; its answer, or the error a killed
    daemon gives, in the returned dict."""
    done = {}

    def call():
        try:
            done["r"] = d.request(*req)
        except OSError as e:
            done["r"] = e
    t = threading.Thread(target=call)
    t.start()
    return t, done


def test_daemon_killed_mid_export_and_mid_import(two):
    """SIGKILL of the daemon while it exports a running VM's snapshot: the
    VM runs on and is re-adopted, the export's directory never appears, the
    unfinished one is named when the export is asked for again, and the
    disk is intact. SIGKILL while it imports: the next start removes the
    import's temporary directory and the disk copy it had begun, and the
    same import then succeeds."""
    a, b, sa, sb = two
    disk = random_qcow2(sa / "run.qcow2", 128)     # incompressible: slow to copy
    a.create("run", scenario="devloop=50", disks=[{"path": str(disk), "format": "qcow2"}])
    a.ok("POST", "/vms/run/start")
    assert wait_for(lambda: len(rounds(a, "run")) >= 5, timeout=30), a.vm_log("run")
    a.ok("POST", "/vms/run/snapshots", {"name": "s1"}, status=201)
    pid = a.vm("run")["pid"]

    t, done = in_thread(a, "POST", "/vms/run/snapshots/s1/export", {"dir": str(sa / "exp")})
    assert wait_for(lambda: (sa / "exp.partial").exists() or not t.is_alive(), timeout=30)
    a.kill()
    t.join(timeout=30)
    assert isinstance(done["r"], OSError), f"the export ended before the kill: {done}"
    assert not (sa / "exp").exists()
    a.start()
    vm = a.vm("run")
    assert vm["state"] == "running" and vm["pid"] == pid, vm
    n = rounds(a, "run")[-1][0]
    assert wait_for(lambda: rounds(a, "run")[-1][0] >= n + 5, timeout=30), a.vm_log("run")
    st, js = a.request("POST", "/vms/run/snapshots/s1/export", {"dir": str(sa / "exp")})
    assert st == 409 and "did not finish" in js["error"], (st, js)
    shutil.rmtree(sa / "exp.partial")
    a.ok("POST", "/vms/run/snapshots/s1/export", {"dir": str(sa / "exp")})

    shutil.copytree(sa / "exp", sb / "exp")
    left = [sb / "dst-disk0.qcow2", pathlib.Path(b.state) / "snapshots" / ".dst.import"]
    t, done = in_thread(b, "POST", "/vms/dst/import", {"dir": str(sb / "exp")})
    assert wait_for(lambda: left[0].exists() or not t.is_alive(), timeout=30)
    b.kill()
    t.join(timeout=30)
    assert isinstance(done["r"], OSError), f"the import ended before the kill: {done}"
    assert all(p.exists() for p in left), left
    # The state directory names the files to remove: one outside the
    # storage directories is never removed.
    keep = sb.parent / "keep"
    keep.write_text("x")
    journal = left[1] / "storage-files.json"
    files = json.loads(journal.read_text())["files"]
    journal.write_text(json.dumps({"files": files + [str(keep)]}))
    b.start()
    assert keep.exists()
    assert not any(p.exists() for p in left), left
    assert "an import that did not finish" in b.logtext()
    assert b.request("GET", "/vms/dst")[0] == 404
    b.ok("POST", "/vms/dst/import", {"dir": str(sb / "exp")}, status=201)
    assert b.ok("POST", "/vms/dst/snapshots/s1/rollback")["state"] == "running"
    assert wait_for(lambda: len(rounds(b, "dst")) >= 5, timeout=30), b.vm_log("dst")
    b.stop("dst", force=True)

    a.stop("run", force=True)
    chk = subprocess.run(["qemu-img", "check", str(disk)], capture_output=True, text=True)
    assert chk.returncode == 0 and "No errors" in chk.stdout, chk.stdout


def rehash(exp):
    """Makes manifest.sha256 match manifest.json again."""
    text = (exp / "manifest.json").read_bytes()
    (exp / "manifest.sha256").write_text(hashlib.sha256(text).hexdigest() + "\n")


def set_file_hash(exp, rel):
    """Records rel's present size and hash in the manifest (a consistent
    forgery: only the deeper checks can catch what is wrong in it)."""
    m = json.loads((exp / "manifest.json").read_text())
    data = (exp / rel).read_bytes()
    for f in m["files"]:
        if f["path"] == rel:
            f["size"], f["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (exp / "manifest.json").write_text(json.dumps(m))
    rehash(exp)


def test_damaged_exports_refused_and_nothing_left(two):
    a, b, sa, sb = two
    counting_vm_with_disk(a, sa)
    a.stop("src", force=True)
    a.ok("POST", "/vms/src/snapshots/s1/export", {"dir": str(sa / "exp")})

    def damaged(change):
        exp = sb / "exp"
        if exp.exists():
            shutil.rmtree(exp)
        shutil.copytree(sa / "exp", exp)
        change(exp)
        before_storage = sorted(os.listdir(sb))
        before_state = sorted(os.listdir(os.path.join(b.state, "snapshots"))) \
            if os.path.exists(os.path.join(b.state, "snapshots")) else []
        st, js = b.request("POST", "/vms/x/import", {"dir": str(exp)})
        assert st in (400, 409), (st, js)
        assert "\n" not in js["error"] and js["error"].startswith("cannot import"), js
        assert b.request("GET", "/vms/x")[0] == 404
        assert sorted(os.listdir(sb)) == before_storage
        assert (sorted(os.listdir(os.path.join(b.state, "snapshots")))
                if os.path.exists(os.path.join(b.state, "snapshots")) else []) == before_state
        return js["error"]

    def flip(rel, at):
        def change(exp):
            data = bytearray((exp / rel).read_bytes())
            data[at] ^= 0x40
            (exp / rel).write_bytes(bytes(data))
        return change

    assert "memory: checksum mismatch" in damaged(flip("snapshots/s1/memory", 4096 * 300))
    assert "disks/0: checksum mismatch" in damaged(flip("disks/0", 100))
    assert "does not match manifest.sha256" in damaged(flip("manifest.json", 40))

    def truncate(exp):
        os.truncate(exp / "snapshots/s1/state", 100)
    assert "snapshots/s1/state is 100 bytes, the manifest says" in damaged(truncate)

    def link(exp):
        os.unlink(exp / "disks/0")
        os.symlink("/etc/passwd", exp / "disks/0")
    assert "disks/0" in damaged(link)

    def version(exp):
        m = json.loads((exp / "manifest.json").read_text())
        m["version"] = 2
        (exp / "manifest.json").write_text(json.dumps(m))
        rehash(exp)
    assert "export format version 2: this vireo reads version 1" in damaged(version)

    def extra(exp):
        m = json.loads((exp / "manifest.json").read_text())
        m["files"][0]["path"] = "../../etc/shadow"
        (exp / "manifest.json").write_text(json.dumps(m))
        rehash(exp)
    assert "unexpected file" in damaged(extra)

    def huge(exp):
        m = json.loads((exp / "manifest.json").read_text())
        for f in m["files"]:
            if f["path"].endswith("/memory"):
                f["size"] = 1 << 40
        (exp / "manifest.json").write_text(json.dumps(m))
        rehash(exp)
        os.truncate(exp / "snapshots/s1/memory", 1 << 40)
    assert "larger than such a file can be" in damaged(huge)

    def forged_state(exp):
        flip("snapshots/s1/state", 300)(exp)
        set_file_hash(exp, "snapshots/s1/state")
    assert "damaged state file" in damaged(forged_state)

    def forged_disk(exp):
        subprocess.run(["qemu-img", "snapshot", "-d", "s1", str(exp / "disks/0")], check=True)
        set_file_hash(exp, "disks/0")
    assert "has no internal snapshot 's1'" in damaged(forged_disk)

    def backing(exp):
        # A disk that would read another file of the importing host.
        other = sb / "other.qcow2"
        if not other.exists():
            qcow2(other)
        subprocess.run(["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", str(other), "-F",
                        "qcow2", str(exp / "disks/0")], check=True)
        set_file_hash(exp, "disks/0")
    assert "has a backing file" in damaged(backing)

    # And the intact one imports.
    shutil.rmtree(sb / "exp")
    shutil.copytree(sa / "exp", sb / "exp")
    b.ok("POST", "/vms/x/import", {"dir": str(sb / "exp")}, status=201)
    r = b.request("POST", "/vms/x/import", {"dir": str(sb / "exp")})
    assert r[0] == 409 and "exists" in r[1]["error"], r


# ---- one archive: vireo vm export NAME [SNAP] FILE, vireo vm import FILE [NEWNAME] ----

def cli(d, *args):
    return subprocess.run([str(VIREO), "vm", "--socket", d.socket, *args],
                          capture_output=True, text=True, timeout=120)


def test_archive_round_trip_of_a_running_vm(two):
    """The one-file form: exported while the VM runs, a tar that tar
    lists, imported on a second daemon under the exported VM's name; it
    resumes at the snapshot with its disk as then."""
    a, b, sa, sb = two
    disk, at = counting_vm_with_disk(a, sa)
    pid = a.vm("src")["pid"]
    p = cli(a, "export", "src", "s1", str(sa / "src.tar"))
    assert p.returncode == 0 and "snapshot s1 exported to" in p.stdout, p
    vm = a.vm("src")
    assert vm["state"] == "running" and vm["pid"] == pid, vm
    n = counts(a, "src")[-1]
    assert wait_for(lambda: counts(a, "src")[-1] >= n + 5, timeout=30), a.vm_log("src")
    with tarfile.open(sa / "src.tar") as t:
        names = t.getnames()
        assert all(m.isreg() for m in t.getmembers())
    assert names[:2] == ["manifest.json", "manifest.sha256"], names
    assert sorted(names[2:]) == ["boot/kernel", "disks/0", "snapshots/s1/memory",
                                 "snapshots/s1/state"], names
    # The memory file's holes stay holes: the archive is far smaller than
    # the guest's RAM.
    assert os.path.getsize(sa / "src.tar") < 16 << 20
    # An existing file is not overwritten.
    p = cli(a, "export", "src", "s1", str(sa / "src.tar"))
    assert p.returncode == 1 and "exists" in p.stderr, p

    shutil.copy(sa / "src.tar", sb / "src.tar")
    p = cli(b, "import", str(sb / "src.tar"))
    assert p.returncode == 0 and p.stdout.startswith("src: imported"), p
    p = cli(b, "import", str(sb / "src.tar"), "src2")
    assert p.returncode == 0 and p.stdout.startswith("src2: imported"), p
    assert b.vm("src")["disks"][0]["path"] == str(sb / "src-disk0.qcow2")
    b.ok("POST", "/vms/src/snapshots/s1/rollback")
    assert wait_for(lambda: len(counts(b, "src")) >= 5, timeout=30), b.vm_log("src")
    assert at[0] < counts(b, "src")[0] <= at[1] + 1, (at, counts(b, "src")[:3])
    assert "PROBE boot" not in b.vm_log("src")
    b.stop("src", force=True)
    ref = sa / "ref.qcow2"
    subprocess.run(["qemu-img", "convert", "-U", "-l", "snapshot.name=s1", "-O", "qcow2",
                    str(disk), str(ref)], check=True)
    assert subprocess.run(["qemu-img", "compare", "-q", str(ref),
                           str(sb / "src2-disk0.qcow2")]).returncode == 0
    assert subprocess.run(["qemu-img", "check", "-q", str(sb / "src2-disk0.qcow2")]
                          ).returncode == 0


def test_archive_of_the_vm_now(two):
    """vireo vm export NAME FILE (no SNAP): the VM as it is now, through
    a snapshot that is gone again afterwards; the VM ran on, and the
    import resumes where it was when exported."""
    a, b, sa, sb = two
    counting_vm_with_disk(a, sa)
    pid = a.vm("src")["pid"]
    before = counts(a, "src")[-1]
    p = cli(a, "export", "src", str(sa / "now.tar"))
    assert p.returncode == 0 and "exported to" in p.stdout, p
    after = counts(a, "src")[-1]
    snap = re.search(r"snapshot (export-\d{8}T\d{6}Z) exported", p.stdout).group(1)
    lst = a.ok("GET", "/vms/src/snapshots")
    assert [s["name"] for s in lst["snapshots"]] == ["s1"] and lst["current"] == "s1", lst
    vm = a.vm("src")
    assert vm["state"] == "running" and vm["pid"] == pid, vm
    # A stopped VM: its disks only.
    a.stop("src", force=True)
    p = cli(a, "export", "src", str(sa / "stopped.tar"))
    assert p.returncode == 0, p
    with tarfile.open(sa / "stopped.tar") as t:
        assert not [n for n in t.getnames() if n.startswith("snapshots/")], t.getnames()

    shutil.copy(sa / "now.tar", sb / "now.tar")
    p = cli(b, "import", str(sb / "now.tar"), "now")
    assert p.returncode == 0, p
    assert b.ok("GET", "/vms/now/snapshots")["current"] == snap
    b.ok("POST", f"/vms/now/snapshots/{snap}/rollback")
    assert wait_for(lambda: len(counts(b, "now")) >= 3, timeout=30), b.vm_log("now")
    assert before < counts(b, "now")[0] <= after + 1, (before, after, counts(b, "now")[:3])
    assert "PROBE boot" not in b.vm_log("now")


def pax_member(name, data=b"", size=None, kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if size is None else size
    block = info.tobuf(tarfile.PAX_FORMAT)
    pad = b"\0" * (-len(data) % 512)
    return block + data + pad


def test_hostile_archives_refused_and_nothing_left(two):
    a, b, sa, sb = two
    counting_vm_with_disk(a, sa)
    a.ok("POST", "/vms/src/snapshots/s1/export", {"file": str(sa / "good.tar")})
    good = (sa / "good.tar").read_bytes()
    with tarfile.open(sa / "good.tar") as t:
        members = {m.name: m for m in t.getmembers()}
        head = b"".join(pax_member(n, t.extractfile(n).read())
                        for n in ("manifest.json", "manifest.sha256"))

    def refused(data):
        path = sb / "x.tar"
        path.write_bytes(data)
        before = sorted(os.listdir(sb))
        snaps = os.path.join(b.state, "snapshots")
        before_state = sorted(os.listdir(snaps)) if os.path.exists(snaps) else []
        st, js = b.request("POST", "/vms/x/import", {"file": str(path)})
        assert st == 400, (st, js)
        assert "\n" not in js["error"] and js["error"].startswith("cannot import"), js
        assert b.request("GET", "/vms/x")[0] == 404
        assert sorted(os.listdir(sb)) == before
        assert (sorted(os.listdir(snaps)) if os.path.exists(snaps) else []) == before_state
        path.unlink()
        return js["error"]

    assert "damaged archive" in refused(good[:len(good) // 2])
    assert "not a vireo export archive" in refused(good[:300])
    flipped = bytearray(good)
    flipped[members["disks/0"].offset_data + 1000] ^= 0x40
    assert "disks/0: checksum mismatch" in refused(bytes(flipped))
    flipped = bytearray(good)
    flipped[members["manifest.json"].offset_data + 40] ^= 0x40
    assert "does not match manifest.sha256" in refused(bytes(flipped))
    end = b"\0" * 1024
    assert "not a plain relative path" in refused(head + pax_member("../evil", b"x") + end)
    assert "not a plain relative path" in refused(head + pax_member("/etc/evil", b"x") + end)
    assert "not a regular file" in refused(
        head + pax_member("disks/0", kind=tarfile.SYMTYPE, link="/etc/passwd") + end)
    assert "not a regular file" in refused(
        head + pax_member("disks/0", kind=tarfile.CHRTYPE) + end)
    state_size = members["snapshots/s1/state"].size
    assert f"is {1 << 40} bytes, the manifest says {state_size}" in refused(
        head + pax_member("snapshots/s1/state", b"x" * 512, size=1 << 40))
    assert "not a file of the manifest" in refused(head + pax_member("disks/7", b"x") + end)
    assert "the archive has no" in refused(head + end)

    # Unpacked and packed again by tar (directory entries and all), with the
    # manifest first: still an export.
    unpacked = sa / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "-xf", str(sa / "good.tar"), "-C", str(unpacked)], check=True)
    subprocess.run(["tar", "-cf", str(sb / "repacked.tar"), "-C", str(unpacked),
                    "manifest.json", "manifest.sha256", "snapshots", "disks", "boot"], check=True)
    b.ok("POST", "/vms/re/import", {"file": str(sb / "repacked.tar")}, status=201)

    # The intact one imports, under the name asked for.
    shutil.copy(sa / "good.tar", sb / "good.tar")
    vm = b.ok("POST", "/vms/x/import", {"file": str(sb / "good.tar")}, status=201)
    assert vm["name"] == "x" and vm["state"] == "stopped", vm
