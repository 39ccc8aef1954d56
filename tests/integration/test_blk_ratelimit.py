"""The disk's rate limit holds for write-zeroes too (issue 14): requests are
charged before they run, the device caps write-zeroes at 8 MiB a request
(max_write_zeroes_sectors, one segment) and refuses larger ones."""
import subprocess
import time

from conftest import VIREO, needs_kvm, run_vireo

pytestmark = [needs_kvm]


def test_write_zeroes_are_paced_by_bps(tmp_path):
    img = tmp_path / "wz.raw"
    subprocess.run([str(VIREO), "img", "create", "-f", "raw", str(img), "64M"], check=True,
                   capture_output=True)
    run = run_vireo("scenario=blk_wz mib=32",
                    extra=["--disk", f"path={img},format=raw,bps=16M"])
    assert run.returncode == 0, run.stdout + run.stderr
    f = run.all("blk_wz")[0]
    assert f["max_sectors"] == "16384" and f["max_segs"] == "1", f
    assert f["requests"] == "4" and f["failed"] == "0", f
    # 32 MiB at 16 MiB/s: the first 8 MiB request goes on the full bucket
    # (1.6 MiB) into debt, the other three wait for it: >= (32-8-1.6)/16 s
    assert int(f["ms"]) >= 1300, f
    over = run.all("blk_wz_over")[0]
    assert over["status"] == "2", over  # VIRTIO_BLK_S_UNSUPP


def test_every_queue_of_a_multiqueue_disk_is_paced_and_served(tmp_path):
    """4 queues share the disk's limit: a queue that waits for the refill is
    served again when it comes (each deferred queue, not only the first),
    and all of them together go no faster than the limit."""
    img = tmp_path / "mq.raw"
    subprocess.run([str(VIREO), "img", "create", "-f", "raw", str(img), "64M"], check=True,
                   capture_output=True)
    t0 = time.monotonic()
    run = run_vireo("scenario=blk_mq queues=4 seed=5 irq=msix",
                    extra=["--disk", f"path={img},format=raw,queues=4,iops=40"])
    elapsed = time.monotonic() - t0
    assert run.returncode == 0, run.stdout + run.stderr
    f = run.all("blk_mq")[0]
    assert f["requests"] == "64" and f["mismatches"] == "0", f
    # 64 requests at 40/s, 4 of them on the full bucket: >= 1.5 s
    assert elapsed >= 1.4, elapsed
