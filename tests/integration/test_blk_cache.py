"""Host cache modes of --disk (docs/run.md, "Disks"): the probe guest's blk
scenario in every mode, on a file on the real disk (O_DIRECT means nothing on
a page-cache-only file system), images checked with qemu-img afterwards."""
import os
import subprocess

import pytest

from conftest import ROOT, needs_kvm, on_tmpfs, needs_qemu_img, run_until_exit, run_vireo, vireo_args
from test_virtio import AIO, expected_image, make_image

pytestmark = [needs_kvm, needs_qemu_img]

MODES = ["writeback", "none", "writethrough", "directsync", "unsafe"]


@pytest.fixture
def disk_dir(tmp_path):
    """A directory on a disk-backed file system: the worktree's build/."""
    if not os.access(ROOT / "build", os.W_OK):
        pytest.skip("build/ is read-only here (the nested test host sees the checkout so, "
                    "and has only tmpfs of its own): no disk-backed file for O_DIRECT")
    d = ROOT / "build" / "test-blk-cache" / tmp_path.name
    d.mkdir(parents=True, exist_ok=True)
    st = os.statvfs(d)
    assert st.f_bsize > 0
    if on_tmpfs(d):
        pytest.skip("build/ is on tmpfs: no real disk for O_DIRECT")
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


@pytest.mark.parametrize("aio", AIO)
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("mode", MODES)
def test_blk_in_every_cache_mode(tmp_path, disk_dir, fmt, mode, aio):
    seed, n = 11, 120
    img = disk_dir / f"d.{fmt}"
    make_image(img, fmt)
    run = run_vireo(f"scenario=blk seed={seed} n={n} irq=msix",
                    extra=["--disk", f"path={img},format={fmt},cache={mode},aio={aio}"])
    assert run.returncode == 0, run.stdout + run.stderr
    f = run.all("blk")[0]
    assert f["mismatches"] == "0" and f["writes"] == str(n), f
    assert f["write_zeroes"] == "ok" and f["discard"] == "ok", f
    # O_DSYNC modes are write-through: no volatile cache, no flush command
    durable = mode in ("writethrough", "directsync")
    assert f["flush"] == ("unsupported" if durable else "ok"), f
    expected, crc = expected_image(tmp_path, seed, n, int(f["capacity"]), f["discard_reads"])
    assert f["checksum"] == crc
    if fmt == "qcow2":
        subprocess.run(["qemu-img", "check", str(img)], check=True, capture_output=True)
    cmp = subprocess.run(["qemu-img", "compare", "-f", fmt, "-F", "raw", str(img),
                          str(expected)], capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr


@pytest.mark.parametrize("mode", ["none", "directsync"])
def test_o_direct_refused_names_disk_and_way_out(mode):
    # procfs has no direct I/O: open(O_DIRECT) says EINVAL, as tmpfs did
    # before Linux 6.6 (this host's tmpfs accepts O_DIRECT)
    path = "/proc/self/cmdline"
    run = run_vireo("scenario=blk n=8",
                    extra=["--disk", f"path={path},format=raw,readonly,cache={mode}"])
    assert run.returncode != 0
    assert f"disk {path}" in run.stderr, run.stderr
    assert "refuses O_DIRECT" in run.stderr and "cache=writeback" in run.stderr, run.stderr


def test_bad_cache_mode_is_refused(tmp_path):
    img = tmp_path / "d.raw"
    make_image(img, "raw")
    run = run_vireo("scenario=blk n=8", extra=["--disk", f"path={img},format=raw,cache=fast"])
    assert run.returncode != 0
    assert "cache must be none, writeback" in run.stderr, run.stderr


def count_syncs(disk_dir, tmp_path, mode):
    img = disk_dir / f"{mode}.qcow2"
    make_image(img, "qcow2")
    trace = tmp_path / f"{mode}.strace"
    args = vireo_args("scenario=blk seed=5 n=32",
                      extra=["--disk", f"path={img},format=qcow2,cache={mode}"])
    status, out, err = run_until_exit(["strace", "-f", "-qq", "-o", str(trace),
                                       "-e", "trace=fdatasync,fsync", *args], 180)
    assert status == 0, out + err
    assert "flush=ok" in out, out
    subprocess.run(["qemu-img", "check", str(img)], check=True, capture_output=True)
    return sum(1 for line in trace.read_text().splitlines()
               if "fdatasync(" in line or "fsync(" in line)


def test_unsafe_ignores_flushes_writeback_honours_them(tmp_path, disk_dir):
    assert count_syncs(disk_dir, tmp_path, "writeback") >= 2  # the guest's two flushes
    assert count_syncs(disk_dir, tmp_path, "unsafe") == 0
