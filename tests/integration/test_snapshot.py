"""Whole-VM snapshots (issue 11, first part): the control socket's
"snapshot" action on a paused probe guest, and `vireo run --restore DIR`.
The probe's count scenario prints a counter and its clock (kvmclock): a
restored guest must go on from where it stopped, without booting again."""
import hashlib
import os
import re
import subprocess
import struct
import time
import zlib

import pytest

from conftest import (VIREO, LiveProbe, in_netns, needs_kvm, needs_qemu_img, run_until_exit,
                      scaled, vireo_args, vireo_control, wait_until)
from test_virtio import netns_tap  # noqa: F401 (a fixture)

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


DEVLOOP = re.compile(r"PROBE devloop n=(\d+) ms=(\d+) blk=(\w+) rng=(\d+) net=(\w+)")


def devloop(lines):
    return [m.groups() for m in map(DEVLOOP.match, lines) if m]


def devices_guest(tmp_path, sock, netns=None, irq="msix"):
    """The devloop scenario on a qcow2 and a raw disk, rng, a balloon half
    inflated (64 of 128 MiB), and a vNIC when netns (with tap0) is given."""
    qcow2, raw = tmp_path / "d.qcow2", tmp_path / "d.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "16M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), "16M"], check=True)
    extra = ["--api-socket", sock, "--disk", f"path={qcow2},format=qcow2",
             "--disk", f"path={raw},format=raw", "--rng", "--balloon"]
    if netns:
        extra += ["--net", "tap=tap0"]
    args = vireo_args(f"scenario=devloop={PERIOD_MS} irq={irq} balloon_mib=64",
                      memory="128M", extra=extra, netns=netns)
    return LiveProbe(args), qcow2, raw


def snapshot_devices(guest, sock, snap):
    """Lets the devloop run, pauses it and snapshots it; returns the last
    round it printed."""
    guest.wait_line("PROBE devloop ready disks=2 rng=1 balloon_pages=16384")
    guest.wait_line("PROBE devloop n=5 ")
    assert vireo_control(sock, action="pause")["ok"]
    with guest.cond:
        last = devloop(guest.out)[-1]
    r = vireo_control(sock, action="snapshot", dir=str(snap))
    assert r["ok"], r
    # The 64 MiB the balloon holds are not in the memory file.
    assert os.stat(snap / "memory").st_blocks * 512 < 32 << 20
    return int(last[0])


def check_restored_devices(guest, sock2, n, net):
    guest.wait_line(f"PROBE devloop n={n + 4} ")
    after = devloop(guest.out)
    assert [int(r[0]) for r in after[:4]] == [n + 1, n + 2, n + 3, n + 4], guest.out
    # blk read back what the guest wrote before the snapshot (round n) and
    # after; rng gave bytes; the vNIC took frames.
    assert all(r[2] == "ok" and int(r[3]) > 0 for r in after), after
    assert all(r[4] == ("ok" if net else "none") for r in after), after
    assert not any(line.startswith("PROBE boot") for line in guest.out)
    info = vireo_control(sock2, action="info")
    assert info["state"] == "running"
    assert vireo_control(sock2, action="poweroff")["ok"]
    assert guest.wait_exit(10)


@needs_qemu_img
@pytest.mark.parametrize("irq", ["msix", "poll"])
def test_snapshot_with_virtio_devices(tmp_path, sock, irq):
    """blk (qcow2 and raw), rng and a half-inflated balloon, snapshotted
    while the guest does I/O on all of them: the restored guest goes on
    and every device still works; the images stay clean."""
    snap = tmp_path / "snap"
    guest, qcow2, raw = devices_guest(tmp_path, sock, irq=irq)
    try:
        n = snapshot_devices(guest, sock, snap)
        assert vireo_control(sock, action="poweroff")["ok"]
        assert guest.wait_exit(10)
    finally:
        guest.proc.kill()
        guest.finish()
    sock2 = sock + ".2"
    guest = LiveProbe(restore_args(snap, sock2))
    try:
        check_restored_devices(guest, sock2, n, net=False)
    finally:
        guest.proc.kill()
        run = guest.finish()
    assert run.returncode == 0, run.stderr
    subprocess.run(["qemu-img", "check", "-q", str(qcow2)], check=True)


@needs_qemu_img
def test_snapshot_with_vnic(tmp_path, sock, netns_tap):
    """The same with a vNIC on a tap, which the restore opens again by name."""
    snap = tmp_path / "snap"
    guest, qcow2, _ = devices_guest(tmp_path, sock, netns=netns_tap)
    try:
        n = snapshot_devices(guest, sock, snap)
        assert vireo_control(sock, action="poweroff")["ok"]
        assert guest.wait_exit(10)
    finally:
        guest.proc.kill()
        guest.finish()
    sock2 = sock + ".2"
    guest = LiveProbe(in_netns(restore_args(snap, sock2), netns_tap))
    try:
        check_restored_devices(guest, sock2, n, net=True)
    finally:
        guest.proc.kill()
        run = guest.finish()
    assert run.returncode == 0, run.stderr
    subprocess.run(["qemu-img", "check", "-q", str(qcow2)], check=True)


@needs_qemu_img
def test_request_left_pending_is_served_after_restore(tmp_path, sock):
    """A disk request the guest queued but the device had not served (held
    by a rate limit) when the snapshot was taken: the restored device looks
    at its queues once, serves it and interrupts, and the guest goes on."""
    raw = tmp_path / "d.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), "16M"], check=True)
    guest = LiveProbe(vireo_args(f"scenario=devloop={PERIOD_MS} irq=msix", memory="128M",
                                 extra=["--api-socket", sock, "--disk", f"path={raw},format=raw"]))
    snap = tmp_path / "snap"
    try:
        guest.wait_line("PROBE devloop n=3 ")
        # One byte a second: the next 4 KiB request waits in the ring.
        assert vireo_control(sock, action="set-limits", disk=0, bps=1)["ok"]
        wait_until(lambda: vireo_control(sock, action="info")["disks"][0]["throttled_ns"] > 0,
                   10, "a request held by the limit")
        assert vireo_control(sock, action="pause")["ok"]
        with guest.cond:
            n = int(devloop(guest.out)[-1][0])
        assert vireo_control(sock, action="snapshot", dir=str(snap))["ok"]
        assert vireo_control(sock, action="poweroff")["ok"]
        assert guest.wait_exit(10)
    finally:
        guest.proc.kill()
        guest.finish()
    # The limit was the old VMM's (set at run time, not in the machine).
    sock2 = sock + ".2"
    guest = LiveProbe(restore_args(snap, sock2))
    try:
        guest.wait_line(f"PROBE devloop n={n + 2} ", timeout=scaled(8))
        assert all(r[2] == "ok" for r in devloop(guest.out)), guest.out
    finally:
        guest.proc.kill()
        guest.finish()


def section_offset(state, type_):
    """Where section type_ 0's 24-byte header starts, found by walking the
    headers (its type and id may also occur inside other sections' data)."""
    off = 48
    while off < len(state):
        t, i, _, _, length, _ = struct.unpack_from("<6I", state, off)
        if t == type_ and i == 0:
            return off
        off += 24 + length
    raise AssertionError(f"no section {type_}")


def rewrite_section(state, type_, patch):
    """The state file with section type_ 0's payload passed through patch,
    its checksums made right again (a hostile file, not a damaged one)."""
    off = section_offset(state, type_)
    t, i, flags, _, length, _ = struct.unpack_from("<6I", state, off)
    body = patch(bytearray(state[off + 24:off + 24 + length]))
    head = struct.pack("<5I", t, i, flags, zlib.crc32(body), len(body))
    head += struct.pack("<I", zlib.crc32(head))
    return state[:off] + head + body + state[off + 24 + length:]


@needs_qemu_img
def test_hostile_device_sections_refused(tmp_path, sock):
    """A flipped byte in a device section is refused before anything is
    opened, and the VM that was snapshotted goes on as it was; a queue
    address outside guest RAM (checksums made right: a hostile file) is
    refused with one line, and the intact snapshot still restores."""
    snap = tmp_path / "snap"
    sock2 = sock + ".2"
    guest, qcow2, _ = devices_guest(tmp_path, sock)
    try:
        n = snapshot_devices(guest, sock, snap)
        assert vireo_control(sock, action="resume")["ok"]
        state = (snap / "state").read_bytes()
        blk = section_offset(state, 10)                 # section virtio-blk 0
        flipped = state[:blk + 600] + bytes([state[blk + 600] ^ 1]) + state[blk + 601:]
        (snap / "state").write_bytes(flipped)
        assert "damaged state file: section virtio-blk 0 checksum mismatch" in \
            refused(snap, sock2)
        guest.wait_line(f"PROBE devloop n={n + 3} ")
        assert all(r[2] == "ok" for r in devloop(guest.out)), guest.out
        # Paused again, as it was snapshotted, and stopped: the disks are free.
        assert vireo_control(sock, action="poweroff")["ok"]
        assert guest.wait_exit(10)
    finally:
        guest.proc.kill()
        guest.finish()

    # Queue 0's descriptor address: after the config blob (4 + 4096), the
    # features, selects and vector (8 + 4 * 4), status, ISR, generation (3),
    # the queue count (4), the queue's size (4) and enable byte (1).
    at = 4 + 4096 + 8 + 16 + 3 + 4 + 4 + 1

    def far_away(body):
        assert struct.unpack_from("<Q", body, at)[0] != 0
        body[at:at + 8] = struct.pack("<Q", 1 << 40)
        return bytes(body)
    for type_ in (10, 12):  # virtio-blk 0, virtio-rng 0
        (snap / "state").write_bytes(rewrite_section(state, type_, far_away))
        line = refused(snap, sock2)
        assert "queue 0's rings are misaligned or outside guest RAM" in line, line
    (snap / "state").write_bytes(state)
    guest = LiveProbe(restore_args(snap, sock2))
    try:
        guest.wait_line(f"PROBE devloop n={n + 4} ")
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
