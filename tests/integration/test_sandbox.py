"""The VMM's sandbox (vireo run --user, --jail, --seccomp; the daemon's one
uid per VMM): the process really is unprivileged, chrooted and filtered on
every thread, and every device still works inside it."""
import json
import os
import subprocess

import pytest

from conftest import LiveProbe, needs_kvm, run_vireo, vireo_args, vireo_control
from daemonutil import Daemon, wait_for
from test_virtio import echo_helper, make_image, netns_tap  # noqa: F401 (a fixture)

pytestmark = [needs_kvm,
              pytest.mark.skipif(os.geteuid() != 0, reason="skipped: needs root to drop")]

NOBODY = 65534


def status(pid, task=None):
    path = f"/proc/{pid}/task/{task}/status" if task else f"/proc/{pid}/status"
    with open(path) as f:
        return dict(l.rstrip("\n").split(":\t", 1) for l in f if ":\t" in l)


def assert_sandboxed(pid, uid, jail):
    st = status(pid)
    assert st["Uid"].split() == [str(uid)] * 4 and st["Gid"].split() == [str(uid)] * 4, st
    assert st["CapEff"] == "0" * 16 and st["NoNewPrivs"] == "1", st
    assert os.readlink(f"/proc/{pid}/root") == str(jail)
    tasks = os.listdir(f"/proc/{pid}/task")
    assert len(tasks) >= 2           # the event loop, vCPUs, device I/O threads
    for t in tasks:                  # every thread is filtered, jailed, dropped
        ts = status(pid, t)
        assert ts["Seccomp"] == "2" and ts["NoNewPrivs"] == "1", (t, ts)
        assert ts["Uid"] == st["Uid"] and ts["CapEff"] == "0" * 16, (t, ts)
        assert os.readlink(f"/proc/{pid}/task/{t}/root") == str(jail), t


def sandbox_args(tmp_path):
    jail = tmp_path / "jail"
    jail.mkdir()
    return jail, ["--user", str(NOBODY), "--jail", str(jail)]


def test_sandboxed_vmm_is_unprivileged_jailed_and_filtered(tmp_path):
    jail, extra = sandbox_args(tmp_path)
    img = tmp_path / "d.raw"
    make_image(img, "raw")
    sock = f"/tmp/vsb-{os.getpid()}.sock"
    guest = LiveProbe(vireo_args("scenario=wait=30000", extra=[
        *extra, "--api-socket", sock, "--disk", f"path={img},format=raw", "--rng"]))
    try:
        guest.wait_line("PROBE wait ged_gsi=")
        assert_sandboxed(guest.proc.pid, NOBODY, jail)
        # The control socket still works, with per-vCPU scheduler figures
        # read through a /proc descriptor opened before the chroot.
        info = vireo_control(sock, action="info")
        assert info["ok"] and info["vcpus"][0]["cpu_ns"] > 0 and "wait_ns" in info["vcpus"][0]
        assert vireo_control(sock, action="pin", vcpu=0, cpus="0")["ok"]
        assert vireo_control(sock, action="set-limits", disk=0, iops=100)["ok"]
        assert vireo_control(sock, action="powerdown")["ok"]
        run = guest.finish(timeout=20)
        assert run.returncode == 0 and "power_button=1" in run.lines, run.stdout + run.stderr
    finally:
        if os.path.exists(sock):
            os.unlink(sock)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_disks_work_sandboxed(tmp_path, fmt):
    _, extra = sandbox_args(tmp_path)
    img = tmp_path / f"d.{fmt}"
    make_image(img, fmt)
    run = run_vireo("scenario=blk seed=5 n=100 irq=msix",
                    extra=[*extra, "--disk", f"path={img},format={fmt}"])
    assert run.returncode == 0, run.stdout + run.stderr
    blk = run.all("blk")[0]
    assert blk["mismatches"] == "0" and blk["writes"] == "100", blk
    if fmt == "qcow2":   # allocating writes (the image grows) inside the jail
        subprocess.run(["qemu-img", "check", str(img)], check=True, capture_output=True)


def test_rng_and_balloon_work_sandboxed(tmp_path):
    _, extra = sandbox_args(tmp_path)
    run = run_vireo("scenario=rng", extra=[*extra, "--rng"])
    assert run.returncode == 0 and run.all("rng")[0]["distinct"] == "256", run.stdout
    run = run_vireo("scenario=balloon balloon_mib=64 balloon_hold_ms=100 deflate=1",
                    extra=[*extra, "--balloon"])
    assert run.returncode == 0, run.stdout + run.stderr
    assert "balloon_deflate pages=16384 actual_pages=0" in run.stdout


def test_net_works_sandboxed(tmp_path, netns_tap):
    _, extra = sandbox_args(tmp_path)
    echo = echo_helper(netns_tap)
    try:
        run = run_vireo("scenario=net n=32 irq=msix", netns=netns_tap,
                        extra=[*extra, "--net", "tap=tap0,mtu=9000,mac=52:54:00:12:34:56"])
    finally:
        echo.kill()
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.all("net")[0]["received"] == "32"


@pytest.mark.parametrize("args,msg", [
    (["--user", "no-such-user-x"], "no user named"),
    (["--user", "1:x"], "not a group id"),
    (["--jail", "/nonexistent-jail"], "--jail /nonexistent-jail"),
    (["--seccomp=maybe"], "--seccomp must be on, off or log"),
    (["--user", "65534", "--reboot=restart"], "use --reboot=exit"),
    (["--seccomp=on", "--reboot=restart"], "use --reboot=exit"),
])
def test_bad_sandbox_options(args, msg):
    run = run_vireo("scenario=hello", extra=args)
    assert run.returncode == 1 and msg in run.stderr, run.stderr


def test_daemon_gives_each_vmm_its_own_uid():
    d = Daemon().start()
    try:
        uids = {}
        for n in ("u1", "u2"):
            d.create(n)
            js = d.ok("POST", f"/vms/{n}/start")
            uids[n] = js["vmm_uid"]
            assert_sandboxed(js["pid"], js["vmm_uid"], os.path.join(d.state, "jail"))
        assert sorted(uids.values()) == [100000, 100001]
        # A stopped VM's uid is free again; the next start takes the lowest.
        d.stop("u1", force=True)
        d.create("u3")
        assert d.ok("POST", "/vms/u3/start")["vmm_uid"] == 100000
        with open(os.path.join(d.state, "run", "u3.json")) as f:
            assert json.load(f)["vmm_uid"] == 100000
    finally:
        d.cleanup()


def test_daemon_without_uid_drop_still_filters():
    d = Daemon(extra=["--vmm-uid-base", "none"]).start()
    try:
        d.create("n1")
        js = d.ok("POST", "/vms/n1/start")
        assert "vmm_uid" not in js
        assert status(js["pid"])["Uid"].split()[0] == "0"
        assert wait_for(lambda: all(status(js["pid"], t)["Seccomp"] == "2"
                                    for t in os.listdir(f"/proc/{js['pid']}/task")))
    finally:
        d.cleanup()
