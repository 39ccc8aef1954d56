"""Disks inside the storage the operator named, opened as the VM (issue 10,
item 2): a backing chain that leads out of the storage directories (a
backing file /etc/shadow, ../, a VMDK extent, a symlink) is refused at
create and at start with 400 naming the path; a VMDK parent must be VMDK;
a legitimate chain still works, opened by a VMM that runs as its own uid
with access to exactly its files while it runs."""
import os
import subprocess

import pytest

from conftest import PROBE, ROOT, VIREO, needs_kvm, needs_qemu_img, run_vireo
from daemonutil import Daemon, wait_for

pytestmark = [needs_kvm, needs_qemu_img]

SEED, N, MIB = 7, 20, 16


def qimg(*args):
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def shadow_backing(d):
    """The issue's exact image."""
    qimg("create", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", str(d / "up.qcow2"), "1M")
    return d / "up.qcow2", "/etc/shadow"


def dotdot_backing(d):
    out = d.parent / "outside.raw"
    out.write_bytes(b"secret" * 1000)
    qimg("create", "-f", "qcow2", "-u", "-b", "../outside.raw", "-F", "raw", str(d / "dd.qcow2"),
         "1M")
    return d / "dd.qcow2", str(out)


def vmdk_extent(d):
    (d / "ext.vmdk").write_text(
        '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n'
        'createType="monolithicFlat"\n\n# Extent description\nRW 2 FLAT "/etc/shadow" 0\n')
    return d / "ext.vmdk", "/etc/shadow"


def symlinked_disk(d):
    os.symlink("/etc/shadow", d / "link.raw")
    return d / "link.raw", "/etc/shadow"


def vmdk_raw_parent(d):
    """A parent inside the storage, but not a VMDK: docs/images.md says a
    VMDK's parent is a VMDK."""
    (d / "parent.raw").write_bytes(b"\0" * 65536)
    (d / "flat.raw").write_bytes(b"\0" * 65536)
    (d / "child.vmdk").write_text(
        '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=00000001\n'
        'parentFileNameHint="parent.raw"\ncreateType="monolithicFlat"\n\n'
        '# Extent description\nRW 128 FLAT "flat.raw" 0\n')
    return d / "child.vmdk", "not a VMDK image"


CASES = {"shadow": shadow_backing, "dotdot": dotdot_backing, "vmdk-extent": vmdk_extent,
         "symlink": symlinked_disk, "vmdk-parent": vmdk_raw_parent}


@pytest.fixture
def storage(tmp_path):
    s = tmp_path / "images"
    s.mkdir()
    return s


@pytest.mark.parametrize("case", CASES)
def test_chain_out_of_storage_is_refused_by_the_api(tmp_path, case):
    d = tmp_path / "images"
    d.mkdir()
    daemon = Daemon(extra=["--storage", str(d)]).start()
    try:
        img, named = CASES[case](d)
        vm = {"name": "x", "cpus": 1, "memory": "64M", "kernel": str(PROBE),
              "cmdline": "scenario=hello", "disks": [{"path": str(img)}]}
        st, js = daemon.request("POST", "/vms", vm)
        assert st == 400 and named in js["error"], (st, js)
        assert daemon.request("GET", "/vms/x")[0] == 404
        # At start too: a good disk swapped for the bad one after create.
        good = d / "good.raw"
        good.write_bytes(b"\0" * 65536)
        daemon.ok("POST", "/vms", dict(vm, disks=[{"path": str(good)}]), status=201)
        os.replace(img, good)
        st, js = daemon.request("POST", "/vms/x/start")
        assert st == 400 and named in js["error"], (st, js)
        assert daemon.vm("x")["state"] == "stopped"
    finally:
        daemon.cleanup()


def test_disk_outside_storage_is_refused(tmp_path):
    """The daemon's default storage is its state dir's images/: never
    anywhere."""
    d = Daemon().start()
    try:
        img = tmp_path / "d.raw"
        img.write_bytes(b"\0" * 65536)
        st, js = d.request("POST", "/vms", {"name": "y", "kernel": str(PROBE),
                                            "disks": [{"path": str(img), "format": "raw"}]})
        assert st == 400 and str(img) in js["error"] and "storage" in js["error"], js
        inside = os.path.join(d.state, "images", "d.raw")
        os.replace(img, inside)
        d.ok("POST", "/vms", {"name": "y", "kernel": str(PROBE),
                              "disks": [{"path": inside, "format": "raw"}]}, status=201)
    finally:
        d.cleanup()


def acl(path):
    try:
        return os.getxattr(path, "system.posix_acl_access")
    except OSError:
        return None


def test_backing_chain_in_storage_works_as_the_vms_uid(tmp_path):
    """A qcow2 overlay on a raw base, both in the storage dir (0700, files
    0600: only root could open them): the guest reads the base's pattern
    through the overlay, from a VMM running as its own uid, which the
    daemon granted access to exactly these files; the grants go when the
    VMM ends, and the modes are as they were."""
    d = tmp_path / "images"
    d.mkdir(mode=0o700)
    base, top = d / "base.raw", d / "top.qcow2"
    subprocess.run(["/usr/bin/python3", str(ROOT / "guest/blk_expected.py"), str(SEED), str(N),
                    str(MIB * 2048), str(base)], check=True, capture_output=True)
    qimg("create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", str(top), f"{MIB}M")
    other = d / "other.raw"
    other.write_bytes(b"\0" * 65536)
    for f in (base, top, other):
        os.chmod(f, 0o600)
    modes = {f: os.stat(f).st_mode for f in (d, base, top, other)}
    daemon = Daemon(extra=["--storage", str(d)]).start()
    disks = [{"path": str(top), "format": "qcow2"}]
    try:
        # While it runs: its own uid, access to exactly its files (the top
        # read-write, the base read-only, the directory searchable).
        daemon.create("w", scenario="wait=60000", disks=disks)
        js = daemon.ok("POST", "/vms/w/start")
        assert js["vmm_uid"] >= 100000, js
        with open(f"/proc/{js['pid']}/status") as f:
            assert f"Uid:\t{js['vmm_uid']}\t" in f.read()
        assert acl(top) and acl(base) and acl(d) and acl(other) is None
        assert os.stat(top).st_mode & 0o070 == 0o060     # the ACL mask: rw
        assert os.stat(base).st_mode & 0o070 == 0o040    # r
        daemon.stop("w", force=True)
        # Taken back when it ends, the modes as they were.
        assert acl(top) is None and acl(base) is None and acl(d) is None
        assert {f: os.stat(f).st_mode for f in modes} == modes

        # The guest reads the base's data through the overlay.
        daemon.create("v", scenario=f"blk seed={SEED} n={N} verify=1", disks=disks)
        daemon.ok("POST", "/vms/v/start")
        js = wait_for(lambda: (v := daemon.vm("v"))["state"] != "running" and v, timeout=30)
        text = open(os.path.join(daemon.state, "logs", "v.log")).read()
        assert js and js["reason"] == "powered off", (js, text)
        line = [l for l in text.splitlines() if "PROBE blk_verify" in l][0]
        assert "mismatches=0" in line and f"reads={N}" in line, line
        assert acl(top) is None and {f: os.stat(f).st_mode for f in modes} == modes
    finally:
        daemon.cleanup()


def test_vmm_enforces_storage_itself(tmp_path):
    """`vireo run --storage` (what the daemon passes) refuses the chain in
    the VMM too, naming the file."""
    d = tmp_path / "images"
    d.mkdir()
    img, _ = shadow_backing(d)
    run = run_vireo("scenario=hello", memory="64M",
                    extra=["--storage", str(d), "--disk", f"path={img}"])
    assert run.returncode == 1, run.stdout
    assert "/etc/shadow: outside the storage directories" in run.stderr, run.stderr


@pytest.mark.parametrize("case", CASES)
def test_img_backing_confine(tmp_path, case):
    """`vireo img --backing-confine` refuses what leads out of the image's
    directory, for info (even without --backing-chain) and check."""
    d = tmp_path / "images"
    d.mkdir()
    img, named = CASES[case](d)
    for cmd in (["info"], ["info", "--backing-chain"], ["check"]):
        r = subprocess.run([str(VIREO), "img", *cmd, "--backing-confine", str(img)],
                           capture_output=True, text=True)
        assert r.returncode == 1 and named in r.stderr, (cmd, r.stdout, r.stderr)


def test_vmdk_parent_must_be_vmdk_without_any_policy(tmp_path):
    """docs/images.md: a VMDK's parent is a VMDK. A descriptor naming a raw
    file as its parent is refused by every path that opens the chain; a
    VMDK parent still works."""
    img, _ = vmdk_raw_parent(tmp_path)
    r = subprocess.run([str(VIREO), "img", "info", "--backing-chain", str(img)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "VMDK parent 'parent.raw' is not a VMDK image" in r.stderr, \
        (r.stdout, r.stderr)
    qimg("create", "-f", "vmdk", str(tmp_path / "base.vmdk"), "1M")
    qimg("create", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", str(tmp_path / "snap.vmdk"))
    r = subprocess.run([str(VIREO), "img", "info", "--backing-chain", "--backing-confine",
                        str(tmp_path / "snap.vmdk")], capture_output=True, text=True)
    assert r.returncode == 0 and "base.vmdk" in r.stdout, (r.stdout, r.stderr)
