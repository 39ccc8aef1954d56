"""Asynchronous virtio-blk (issue 14, docs/run.md "aio"): the device takes
every request the guest queued and has them in flight together, with
io_uring and with worker threads; qcow2 stays consistent with many writes
in flight, also when the VMM is killed among them; a limit change reaches
requests already waiting for the old one."""
import random
import signal
import subprocess
import time

import pytest

from conftest import (LiveProbe, VIREO, needs_kvm, needs_qemu_img, scaled, vireo_args,
                      vireo_control, wait_until)
from test_blk_cache import disk_dir  # noqa: F401 - fixture: a directory on the real disk
from test_virtio import make_image

pytestmark = [needs_kvm, needs_qemu_img]

AIO = ["io_uring", "threads"]


def disk_info(sock):
    return vireo_control(sock, action="info")["disks"][0]


def bench(img, fmt, sock, aio, cache="none", time_ms=1500):
    return LiveProbe(vireo_args(f"scenario=blk_bench time_ms={time_ms} qd=16 irq=msix",
                                extra=["--disk", f"path={img},format={fmt},cache={cache},aio={aio}",
                                       "--api-socket", sock]))


@pytest.mark.parametrize("aio", AIO)
def test_guest_queue_depth_reaches_the_host(disk_dir, sock, aio):  # noqa: F811
    # O_DIRECT on the real disk: requests really wait in the kernel or on
    # a worker, so "in flight together" is the host's queue depth
    img = disk_dir / "qd.raw"
    make_image(img, "raw")
    vm = bench(img, "raw", sock, aio)
    vm.wait_line("PROBE blk_bench mode=seqwrite", timeout=60)
    d = disk_info(sock)
    assert d["aio"] == aio, d
    # the probe keeps 16 requests queued; the host must have had several
    # of them in flight at once (threads: up to its 8 workers)
    wait_until(lambda: disk_info(sock)["inflight_max"] >= 4, 30, "4 requests in flight")
    done = vm.wait_line("PROBE blk_bench_done", timeout=120)
    assert "errors=0" in done, done
    run = vm.finish()
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("cache", ["writeback", "none"])
@pytest.mark.parametrize("aio", AIO)
def test_qcow2_consistent_after_concurrent_random_writes(disk_dir, sock, aio, cache):  # noqa: F811
    img = disk_dir / "rw.qcow2"
    subprocess.run([str(VIREO), "img", "create", "-f", "qcow2", "-o", "cluster_size=4096",
                    str(img), "64M"], check=True, capture_output=True)
    vm = bench(img, "qcow2", sock, aio, cache, time_ms=1000)
    done = vm.wait_line("PROBE blk_bench_done", timeout=120)
    assert "errors=0" in done, done
    run = vm.finish()
    assert run.returncode == 0, run.stdout + run.stderr
    rw = [f for f in run.all("blk_bench") if f["mode"] == "randwrite"][0]
    assert int(rw["ops"]) > 100, rw   # many clusters allocated with 16 in flight
    chk = subprocess.run(["qemu-img", "check", str(img)], capture_output=True, text=True)
    assert chk.returncode == 0, chk.stdout + chk.stderr
    assert "No errors were found" in chk.stdout, chk.stdout


@pytest.mark.parametrize("aio", AIO)
def test_sigkill_among_concurrent_qcow2_writes_never_corrupts(tmp_path, sock, aio):
    rnd = random.Random(14)
    for i in range(6):
        img = tmp_path / f"k{i}.qcow2"
        subprocess.run([str(VIREO), "img", "create", "-f", "qcow2", "-o", "cluster_size=4096",
                        str(img), "64M"], check=True, capture_output=True)
        vm = bench(img, "qcow2", sock, aio, "writeback", time_ms=800)
        # seqwrite, seqread, then randwrite: kill during the random writes
        vm.wait_line("PROBE blk_bench mode=seqread", timeout=60)
        time.sleep(rnd.uniform(0.1, 0.7))
        vm.proc.send_signal(signal.SIGKILL)
        vm.finish()
        chk = subprocess.run(["qemu-img", "check", str(img)], capture_output=True, text=True)
        # leaks are allowed (exit status 3), corruption (2) is not
        assert chk.returncode in (0, 3), chk.stdout + chk.stderr


@pytest.mark.parametrize("aio", AIO)
def test_limit_change_reaches_waiting_requests(tmp_path, sock, aio):
    img = tmp_path / "wz.raw"
    subprocess.run([str(VIREO), "img", "create", "-f", "raw", str(img), "64M"], check=True,
                   capture_output=True)
    # 64 KiB/s: the first 8 MiB write-zeroes goes into debt, the second
    # would wait ~128 s for the old rate
    vm = LiveProbe(vireo_args("scenario=blk_wz mib=32", extra=[
        "--disk", f"path={img},format=raw,bps=64K,aio={aio}", "--api-socket", sock]))
    wait_until(lambda: disk_info(sock)["wr_ops"] >= 1, 30, "the first write-zeroes")
    t0 = time.monotonic()
    assert vireo_control(sock, action="set-limits", disk=0, bps=0)["ok"]
    line = vm.wait_line("PROBE blk_wz ", timeout=20)
    assert time.monotonic() - t0 < scaled(20), line
    assert "failed=0" in line, line
    run = vm.finish()
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("aio", AIO)
def test_image_lock_is_free_when_the_vmm_has_exited(tmp_path, aio):
    # a restarted VMM (guest reboot under the daemon) opens the image at
    # once: nothing (an io_uring's registered file) may hold it past the exit
    img = tmp_path / "l.raw"
    make_image(img, "raw")
    for _ in range(3):
        run = subprocess.run(vireo_args("scenario=blk n=8", extra=[
            "--disk", f"path={img},format=raw,aio={aio}"]), capture_output=True, text=True,
            timeout=scaled(60))
        assert run.returncode == 0, run.stdout + run.stderr
        q = subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(img), "64M"],
                           capture_output=True, text=True)
        assert q.returncode == 0, q.stderr
