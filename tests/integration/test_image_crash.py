"""Crash safety (issue 3): a writer killed with SIGKILL at random points
leaves an image that qemu-img check does not call corrupt (leaks allowed
for qcow2, as qemu-img allows), and vireo check -r all cleans it up."""
import json
import random
import signal
import subprocess
import time

import pytest

from conftest import needs_qemu_img
from imgutil import BLKIO, CHECKABLE, opts, qcheck, qimg, run, vid, vireo

pytestmark = needs_qemu_img
RUNS = 50
# Small clusters make metadata updates (L2, refcount blocks, table growth)
# frequent, so that kills land between them.
# "+snapshot": the image holds data and an internal snapshot before the
# writer starts, so writes copy shared clusters and release references.
CRASH_VARIANTS = [("raw", ""), ("qcow2", ""), ("qcow2", "cluster_size=512"),
                  ("qcow2", "cluster_size=4096+snapshot"),
                  ("vpc", "subformat=dynamic"), ("vmdk", "subformat=monolithicSparse"),
                  ("vmdk", "subformat=streamOptimized")]


def prepare(img, fmt, o, shadow):
    o, _, snap = o.partition("+")
    vireo("create", "-f", fmt, *opts(o), img, "16M")
    if snap:
        run(BLKIO, "-f", fmt, "-n", "60", "-s", "999", img, shadow)
        vireo("snapshot", "-c", "base", img)


@pytest.mark.parametrize("v", CRASH_VARIANTS, ids=vid)
def test_sigkill_writer(tmp_path, v):
    fmt, o = v
    rnd = random.Random(1234)
    shadow = tmp_path / "shadow.raw"
    shadow.write_bytes(b"")
    shadow.open("r+b").truncate(16 << 20)
    for i in range(RUNS):
        img = tmp_path / f"c{i}.{fmt}"
        prepare(img, fmt, o, shadow)
        p = subprocess.Popen([str(BLKIO), "-f", fmt, "-n", "100000", "-m", "200000",
                              "-s", str(i), "-z", str(img), str(shadow)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rnd.uniform(0.005, 0.08))
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert p.returncode == -signal.SIGKILL, p.stderr.read()
        qcheck(img, fmt, allow_leaks=True)
        if fmt in ("vpc", "vmdk"):
            # qemu-img reads the whole image; vireo check finds at most leaks
            qimg("convert", "-f", fmt, "-O", "raw", img, tmp_path / "back.raw")
            r = vireo("check", img, ok=False)
            assert r.returncode in (0, 3), r.stdout + r.stderr
        if fmt in CHECKABLE:
            r = vireo("check", "--output=json", img, ok=False)
            assert r.returncode in (0, 3), r.stdout + r.stderr
            q = json.loads(qimg("check", "--output=json", img, ok=False).stdout)
            assert json.loads(r.stdout).get("leaks", 0) == q.get("leaks", 0)
            if i % 10 == 0:
                vireo("check", "-r", "all", img)
                qcheck(img, fmt)
        img.unlink()
