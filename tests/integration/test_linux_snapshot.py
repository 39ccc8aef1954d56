"""Issue 11 with a real kernel: Debian's Linux on vireo under the daemon,
with an ext4 disk (qcow2) and a vNIC on a daemon network, is snapshotted
while a process in it counts, keeps running, and is rolled back twice. Each
time the kernel goes on from the snapshot (no boot, uptime and count from
the snapshot's), the count file on the disk matches the memory, the guest
answers on the network, and at the end the file system is clean."""
import os
import re
import shutil
import socket
import subprocess

import pytest

from conftest import needs_kvm, scaled
from daemonutil import Daemon, wait_for
from test_linux import BASE_CMDLINE, LINUX_VM, build_kit, linux_lines

pytestmark = [needs_kvm, LINUX_VM, pytest.mark.skipif(
    os.geteuid() != 0 or not all(map(shutil.which, ("ip", "mkfs.ext4", "e2fsck", "qemu-img"))),
    reason="skipped: needs root, iproute2, e2fsprogs and qemu-img")]

TAG = "%x" % (os.getpid() & 0xffff)
HOST_IP, GUEST_IP = "10.0.31.1", "10.0.31.2"
COUNT = re.compile(r"LINUX count n=(\d+) up=([\d.]+)\r?\n")   # whole lines only


def counts(text):
    return [(int(n), float(up)) for n, up in COUNT.findall(text)]


def last_timeline(got):
    """The counts after the last fall of N: a line the old VMM printed just
    before it ended may precede the restored guest's."""
    start = max([i for i in range(1, len(got)) if got[i][0] < got[i - 1][0]], default=0)
    return got[start:]


def ext4_qcow2(tmp_path):
    raw, img = tmp_path / "fs.raw", tmp_path / "fs.qcow2"
    with open(raw, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(raw)], check=True)
    subprocess.run(["qemu-img", "convert", "-q", "-O", "qcow2", str(raw), str(img)], check=True)
    raw.unlink()
    return img


def answers(ip):
    return subprocess.run(["ping", "-c", "1", "-W", "2", ip], capture_output=True).returncode == 0


def test_linux_snapshot_and_two_rollbacks_go_on_where_it_stopped(tmp_path):
    kit = build_kit()
    img = ext4_qcow2(tmp_path)
    d = Daemon(extra=["--storage", str(tmp_path)]).start()
    net = f"s{TAG}"
    try:
        d.ok("POST", "/networks", {"name": net}, status=201)
        subprocess.run(["ip", "addr", "add", f"{HOST_IP}/24", "dev", f"vb-{net}"], check=True)
        subprocess.run(["ip", "link", "set", f"vb-{net}", "up"], check=True)
        cmdline = f"{BASE_CMDLINE} vireo.test=count vireo.ip={GUEST_IP}/24"
        d.ok("POST", "/vms", {"name": "lx", "cpus": 2, "memory": "256M",
                              "kernel": str(kit / "vmlinuz"), "initrd": str(kit / "initrd.img"),
                              "cmdline": cmdline, "disks": [{"path": str(img)}],
                              "nics": [{"network": net}]}, status=201)
        d.ok("POST", "/vms/lx/start")
        assert wait_for(lambda: len(counts(d.vm_log("lx"))) >= 5, timeout=scaled(150)), \
            d.vm_log("lx")[-3000:]
        assert wait_for(lambda: answers(GUEST_IP), timeout=scaled(30))
        before = counts(d.vm_log("lx"))[-1]
        d.ok("POST", "/vms/lx/snapshots", {"name": "s1"}, status=201)
        after = counts(d.vm_log("lx"))[-1]
        # it runs on past the snapshot
        assert wait_for(lambda: counts(d.vm_log("lx"))[-1][0] >= after[0] + 10,
                        timeout=scaled(60)), d.vm_log("lx")[-2000:]
        log = os.path.join(d.state, "logs", "lx.log")
        for rollback in (1, 2):
            ran_to = counts(d.vm_log("lx"))[-1]
            os.truncate(log, 0)
            vm = d.ok("POST", "/vms/lx/snapshots/s1/rollback")
            assert vm["state"] == "running", vm
            assert wait_for(lambda: len(last_timeline(counts(d.vm_log("lx")))) >= 5,
                            timeout=scaled(60)), d.vm_log("lx")[-2000:]
            new = d.vm_log("lx")
            got = last_timeline(counts(new))
            # the count goes on from the snapshot's, not from where it ran
            # to, nor from a new boot; so does the uptime
            assert before[0] < got[0][0] <= after[0] + 1 < ran_to[0], (before, after, ran_to, got)
            assert [n for n, _ in got] == list(range(got[0][0], got[0][0] + len(got))), got
            assert got[0][1] >= before[1], (before, got)
            assert "LINUX userspace=1" not in new and "LINUX kernel=" not in new, new[-2000:]
            assert wait_for(lambda: answers(GUEST_IP), timeout=scaled(30)), f"rollback {rollback}"
        with socket.create_connection((GUEST_IP, 9000), timeout=scaled(10)) as s:
            s.sendall(b"stop\n")
        assert wait_for(lambda: d.vm("lx")["state"] == "stopped", timeout=scaled(60)), \
            d.vm_log("lx")[-2000:]
        end = linux_lines(d.vm_log("lx"))["count"]
        # the file on the disk holds exactly the counts of this timeline
        assert end["lines"] == end["end"] == end["last"], end
        assert linux_lines(d.vm_log("lx"))[""].get("fails") == "0", d.vm_log("lx")[-2000:]
    finally:
        d.cleanup()
        subprocess.run(["ip", "link", "del", f"vb-{net}"], capture_output=True)
    raw = tmp_path / "after.raw"
    subprocess.run(["qemu-img", "convert", "-q", "-O", "raw", str(img), str(raw)], check=True)
    fsck = subprocess.run(["e2fsck", "-fn", str(raw)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
