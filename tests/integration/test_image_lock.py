"""One writer per image (issue 10, item 3): vireo's image locks are QEMU's
(OFD locks on bytes 100+perm and 200+unshared perm), so neither a second
vireo nor QEMU/qemu-img opens a disk a VMM writes, vireo opens none that
QEMU writes, and `-U` still reads them."""
import os
import subprocess

import pytest

from conftest import LiveProbe, VIREO, needs_kvm, needs_qemu_img, vireo_args, wait_until

pytestmark = [needs_qemu_img]

IN_USE = "image is in use by another process"


def run(*args):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60)


def lock_bytes(path):
    """The byte offsets locked on path's inode (any process), from /proc/locks."""
    ino = os.stat(path).st_ino
    got = set()
    with open("/proc/locks") as f:
        for line in f:
            parts = line.split()
            if "OFDLCK" in parts and parts[5].endswith(f":{ino}"):
                got.update(range(int(parts[6]), int(parts[7]) + 1))
    return got


def qemu_img_create(path, size="64M"):
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)


@pytest.fixture
def qemu_io():
    """qemu-io holding an image open (it waits for commands on stdin)."""
    procs = []

    def start(path, *opts):
        p = subprocess.Popen(["qemu-io", *opts, "-f", "qcow2", str(path)],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        procs.append(p)
        wait_until(lambda: 100 in lock_bytes(path), 10, "qemu-io's image locks")
        return p

    yield start
    for p in procs:
        p.stdin.close()
        p.wait(timeout=10)


def test_qemu_writer_locks_out_vireo(tmp_path, qemu_io):
    img = tmp_path / "d.qcow2"
    qemu_img_create(img)
    qemu_io(img)
    assert {100, 101, 103, 201, 203} <= lock_bytes(img)

    r = run(VIREO, "img", "info", img)
    assert r.returncode != 0 and f"{IN_USE}: {img}" in r.stderr, r.stderr
    r = run(VIREO, "img", "info", "-U", img)
    assert r.returncode == 0 and "virtual size: 64 MiB" in r.stdout, r.stderr
    r = run(VIREO, "img", "check", "-U", img)
    assert r.returncode == 0, r.stderr
    for args in (["resize", img, "128M"], ["create", "-f", "qcow2", img, "1M"]):
        r = run(VIREO, "img", *args)
        assert r.returncode != 0 and IN_USE in r.stderr, (args, r.stderr)
    # create refused before it truncated: the image is whole
    r = run("qemu-img", "info", "-U", img)
    assert "virtual size: 64 MiB" in r.stdout, r.stdout


@needs_kvm
def test_qemu_writer_locks_out_a_vireo_vmm(tmp_path, qemu_io):
    img = tmp_path / "d.qcow2"
    qemu_img_create(img)
    qemu_io(img)
    r = run(*vireo_args("scenario=hello", 1, "64M",
                        ["--disk", f"path={img},format=qcow2"], None, None))
    assert r.returncode == 1 and f"{IN_USE}: {img}" in r.stderr, r.stderr


def test_qemu_reader_shares_with_vireo_readers_only(tmp_path, qemu_io):
    img = tmp_path / "d.qcow2"
    qemu_img_create(img)
    qemu_io(img, "-r")
    assert 101 not in lock_bytes(img)
    r = run(VIREO, "img", "info", img)
    assert r.returncode == 0, r.stderr
    r = run(VIREO, "img", "resize", img, "128M")
    assert r.returncode != 0 and IN_USE in r.stderr, r.stderr


@needs_kvm
def test_vireo_vmm_locks_out_qemu_and_vireo(tmp_path):
    img = tmp_path / "d.qcow2"
    qemu_img_create(img)
    vmm = LiveProbe(vireo_args("scenario=cpuburn=100000", 1, "64M",
                               ["--disk", f"path={img},format=qcow2"], None, None))
    try:
        # QEMU's writer set: read, write, resize held; write, resize refused.
        wait_until(lambda: {100, 101, 103, 201, 203} <= lock_bytes(img), 10,
                   lambda: f"the VMM's image locks (have {sorted(lock_bytes(img))})")
        r = run("qemu-img", "info", img)
        assert r.returncode != 0 and 'Failed to get shared "write" lock' in r.stderr, r.stderr
        r = run("qemu-io", "-f", "qcow2", "-c", "write 0 4k", img)
        assert r.returncode != 0 and "lock" in r.stderr, r.stderr
        r = run("qemu-img", "info", "-U", img)
        assert r.returncode == 0 and "virtual size: 64 MiB" in r.stdout, r.stderr
        r = run(VIREO, "img", "info", img)
        assert r.returncode != 0 and f"{IN_USE}: {img}" in r.stderr, r.stderr
        r = run(VIREO, "img", "info", "-U", img)
        assert r.returncode == 0 and "virtual size: 64 MiB" in r.stdout, r.stderr
        second = run(*vireo_args("scenario=hello", 1, "64M",
                                 ["--disk", f"path={img},format=qcow2"], None, None))
        assert second.returncode == 1 and IN_USE in second.stderr, second.stderr
        assert vmm.proc.poll() is None, "the first VMM must run on"
    finally:
        vmm.proc.kill()
        vmm.proc.wait(timeout=10)
    r = run("qemu-img", "check", img)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not lock_bytes(img)
    assert run("qemu-img", "info", img).returncode == 0
