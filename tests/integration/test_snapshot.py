"""Whole-VM snapshots (issue 11, first part): the control socket's
"snapshot" action on a paused probe guest, and `vireo run --restore DIR`.
The probe's count scenario prints a counter and its clock (kvmclock): a
restored guest must go on from where it stopped, without booting again."""
import hashlib
import os
import re
import subprocess
import time

import pytest

from conftest import (VIREO, LiveProbe, needs_kvm, run_until_exit, scaled, vireo_args,
                      vireo_control)

pytestmark = [needs_kvm]

COUNT = re.compile(r"PROBE count n=(\d+) ms=(\d+)")
PERIOD_MS = 50


def counts(lines):
    return [(int(m.group(1)), int(m.group(2))) for m in map(COUNT.match, lines) if m]


def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.digest()


def restore_args(snap, sock, *extra):
    return [str(VIREO), "run", "--restore", str(snap), "--api-socket", sock, *extra]


def take_snapshot(tmp_path, sock, cpus=1, gap=0.0):
    """Runs the count scenario, pauses it, waits `gap` seconds, snapshots it
    into tmp_path/snap and kills it. Returns (dir, the last count line)."""
    guest = LiveProbe(vireo_args(f"scenario=count={PERIOD_MS}", cpus=cpus,
                                 extra=["--api-socket", sock]))
    try:
        guest.wait_line("PROBE count n=5 ")
        assert vireo_control(sock, action="pause") == {"ok": True, "state": "paused"}
        # Output in flight when the vCPUs stopped has reached the pipe once
        # the pause reply is here; nothing comes after it.
        with guest.cond:
            last = counts(guest.out)[-1]
        # The paused time must not show in the restored guest's clock.
        time.sleep(gap)
        snap = tmp_path / "snap"
        r = vireo_control(sock, action="snapshot", dir=str(snap))
        assert r["ok"] and r["state"] == "paused", r
        assert 0 < r["memory_bytes"] < 16 << 20
        with guest.cond:
            assert counts(guest.out)[-1] == last
    finally:
        guest.proc.kill()
        guest.finish()
    return snap, last


@pytest.mark.parametrize("cpus", [1, 2])
def test_restored_guest_goes_on_counting(tmp_path, sock, cpus):
    snap, (n, ms) = take_snapshot(tmp_path, sock, cpus=cpus, gap=1.0)
    st = os.stat(snap / "memory")
    assert st.st_size == 256 << 20
    assert st.st_blocks * 512 < 16 << 20  # holes stayed holes
    before = digest(snap / "memory")
    # Twice: the first restore's guest writes must not reach the file.
    for _ in range(2):
        restore_and_count(snap, sock + ".2", n, ms, cpus)
    assert digest(snap / "memory") == before


def restore_and_count(snap, sock2, n, ms, cpus):
    guest = LiveProbe(restore_args(snap, sock2))
    try:
        guest.wait_line(f"PROBE count n={n + 3} ")
        after = counts(guest.out)
        assert [c for c, _ in after[:3]] == [n + 1, n + 2, n + 3], guest.out
        # The clock goes on from the pause: no jump for the second spent
        # paused nor for the time on disk, never backwards.
        assert ms <= after[0][1] < ms + 4 * PERIOD_MS + 300, (ms, after[:3])
        assert all(a[1] <= b[1] for a, b in zip(after, after[1:]))
        assert not any(line.startswith("PROBE boot") for line in guest.out), guest.out
        info = vireo_control(sock2, action="info")
        assert info["state"] == "running" and info["cpus"] == cpus
        assert vireo_control(sock2, action="poweroff")["ok"]
        assert guest.wait_exit(10)
    finally:
        guest.proc.kill()
        run = guest.finish()
    assert run.returncode == 0, run.stderr


def test_restore_paused_runs_on_resume(tmp_path, sock):
    snap, (n, ms) = take_snapshot(tmp_path, sock)
    sock2 = sock + ".2"
    guest = LiveProbe(restore_args(snap, sock2, "--paused"))
    try:
        assert vireo_control(sock2, action="info")["state"] == "paused"
        with guest.cond:
            assert counts(guest.out) == []
        # A paused restored VM can be snapshotted again, and resumed.
        r = vireo_control(sock2, action="snapshot", dir=str(tmp_path / "again"))
        assert r["ok"], r
        # The time it waited paused must not show either.
        time.sleep(1.0)
        assert vireo_control(sock2, action="resume") == {"ok": True, "state": "running"}
        guest.wait_line(f"PROBE count n={n + 2} ")
        first = counts(guest.out)[0]
        assert first[0] == n + 1
        assert ms <= first[1] < ms + 4 * PERIOD_MS + 300, (ms, first)
    finally:
        guest.proc.kill()
        guest.finish()


def test_snapshot_only_when_paused(tmp_path, sock):
    guest = LiveProbe(vireo_args(f"scenario=count={PERIOD_MS}", extra=["--api-socket", sock]))
    try:
        guest.wait_line("PROBE count n=1 ")
        r = vireo_control(sock, action="snapshot", dir=str(tmp_path / "s"))
        assert r == {"ok": False, "code": "wrong-state",
                     "error": "'snapshot' is not allowed while the VM is running"}
        assert not (tmp_path / "s").exists()
        r = vireo_control(sock, action="snapshot", dir="relative/dir")
        assert r["code"] == "bad-request" and "absolute" in r["error"]
        guest.wait_line("PROBE count n=3 ")  # still running
    finally:
        guest.proc.kill()
        guest.finish()


def test_snapshot_with_virtio_devices_refused(tmp_path, sock):
    guest = LiveProbe(vireo_args(f"scenario=count={PERIOD_MS}",
                                 extra=["--api-socket", sock, "--rng"]))
    try:
        guest.wait_line("PROBE count n=1 ")
        assert vireo_control(sock, action="pause")["ok"]
        r = vireo_control(sock, action="snapshot", dir=str(tmp_path / "s"))
        assert r == {"ok": False, "code": "bad-request",
                     "error": "not yet supported: snapshot of a VM with virtio devices"}
        assert not (tmp_path / "s" / "state").exists()
        assert vireo_control(sock, action="resume")["ok"]
        guest.wait_line("PROBE count n=3 ")
    finally:
        guest.proc.kill()
        guest.finish()


def refused(snap, sock):
    status, out, err = run_until_exit(restore_args(snap, sock), timeout=30)
    assert status == 1, (status, out, err)
    assert "PROBE" not in out
    lines = [line for line in err.splitlines() if not line.startswith("vireo: notice")]
    assert len(lines) == 1, err
    return lines[0]


def test_damaged_snapshots_refused(tmp_path, sock):
    snap, _ = take_snapshot(tmp_path, sock)
    state = (snap / "state").read_bytes()
    # A flipped byte in a vCPU's registers (well inside the file).
    (snap / "state").write_bytes(state[:300] + bytes([state[300] ^ 0x10]) + state[301:])
    assert "damaged state file" in refused(snap, sock)
    (snap / "state").write_bytes(state[:len(state) // 2])
    assert "truncated state file" in refused(snap, sock)
    (snap / "state").write_bytes(state)
    os.truncate(snap / "memory", (256 << 20) - 4096)
    msg = refused(snap, sock)
    assert "memory is 268431360 bytes, the snapshot's guest has 268435456" in msg
    os.truncate(snap / "memory", 256 << 20)
    assert "no such file" in refused(tmp_path / "nothing", sock).lower()


def test_restore_takes_the_machine_from_the_snapshot(tmp_path, sock):
    status, _, err = run_until_exit([str(VIREO), "run", "--restore", str(tmp_path),
                                     "--cpus", "2"], timeout=30)
    assert status == 1 and "--restore takes the machine from the snapshot" in err


def test_restored_guest_takes_interrupts(tmp_path, sock):
    """The wait scenario idles on its interrupts (the LAPIC timer, the GED's
    IOAPIC pin that it unmasked): a restored guest must still get the power
    button through the restored IOAPIC and LAPIC."""
    guest = LiveProbe(vireo_args("scenario=wait", extra=["--api-socket", sock]))
    snap = tmp_path / "snap"
    try:
        guest.wait_line("PROBE wait ")
        assert vireo_control(sock, action="pause")["ok"]
        assert vireo_control(sock, action="snapshot", dir=str(snap))["ok"]
    finally:
        guest.proc.kill()
        guest.finish()
    sock2 = sock + ".2"
    guest = LiveProbe(restore_args(snap, sock2))
    try:
        assert vireo_control(sock2, action="info")["state"] == "running"
        assert vireo_control(sock2, action="powerdown")["ok"]
        guest.wait_line("PROBE power_button=1")
        assert guest.wait_exit(10)
    finally:
        guest.proc.kill()
        run = guest.finish()
    assert run.returncode == 0, run.stderr
    assert "PROBE boot" not in run.stdout
