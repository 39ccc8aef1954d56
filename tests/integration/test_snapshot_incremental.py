"""Incremental snapshots (issue 11): the control socket's "snapshot" action
with "incremental": true saves only the pages the guest dirtied since the
VMM's base (its last snapshot taken with "track_dirty": true, or the one it
was restored from with --track-dirty), naming that one as its parent;
`vireo run --restore` of an increment restores the chain.

The probe's dirty scenario writes every page of a 4 MiB buffer in each pass,
each with its own address and the pass number, and checks first that the
page holds what the previous pass wrote: a restored guest whose memory is
not exact shows bad=N, or a pass number that does not follow."""
import hashlib
import os
import re
import shutil

import subprocess

from conftest import (VIREO, LiveProbe, needs_kvm, needs_qemu_img, run_until_exit, vireo_args,
                      vireo_control)

pytestmark = [needs_kvm]

DIRTY = re.compile(r"PROBE dirty pass=(\d+) bad=(\d+) ms=\d+$")
COUNT = re.compile(r"PROBE count n=(\d+) ")


def fresh(sock):
    """The socket path of a VMM that was killed, free for the next one."""
    if os.path.exists(sock):
        os.unlink(sock)
    return sock


def passes(guest):
    with guest.cond:
        return [(int(m.group(1)), int(m.group(2))) for m in map(DIRTY.match, guest.out) if m]


def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def pause_at(guest, sock, n):
    """Pauses once the guest is n passes further."""
    guest.wait_line("PROBE dirty pass=")
    start = passes(guest)[-1][0]
    guest.wait_line(f"PROBE dirty pass={start + n} ")
    assert vireo_control(sock, action="pause")["ok"]


def last_pass(guest):
    """The last pass of a paused guest, read after a snapshot: by then the
    output it made before the pause has reached us."""
    return passes(guest)[-1][0]


def snapshot(sock, path, **kw):
    r = vireo_control(sock, action="snapshot", dir=str(path), **kw)
    assert r["ok"], r
    return r


def take_chain(tmp_path, sock):
    """A full snapshot A and increments B (of A) and C (of B) of the dirty
    scenario, and Cf, a full one at C's instant. Returns the snapshots'
    last passes and replies."""
    guest = LiveProbe(vireo_args("scenario=dirty=4", extra=["--api-socket", fresh(sock)]))
    last, replies = {}, {}
    try:
        for name, inc in (("A", False), ("B", True), ("C", True)):
            pause_at(guest, sock, 20)
            replies[name] = snapshot(sock, tmp_path / name, incremental=inc, track_dirty=True)
            last[name] = last_pass(guest)
            if name == "C":
                replies["Cf"] = snapshot(sock, tmp_path / "Cf")
            assert vireo_control(sock, action="resume")["ok"]
        assert all(bad == 0 for _, bad in passes(guest))
    finally:
        guest.proc.kill()
        guest.finish()
    return last, replies


def restored_memory(tmp_path, snap, sock):
    """Restores snap paused, saves it whole again untouched: its memory."""
    out = tmp_path / f"{snap.name}-again"
    guest = LiveProbe([str(VIREO), "run", "--restore", str(snap), "--paused",
                       "--api-socket", fresh(sock)])
    try:
        snapshot(sock, out)
    finally:
        guest.proc.kill()
        guest.finish()
    return out / "memory"


def resumes_exactly(snap, sock, last):
    """The restored guest goes on at pass last+1 and finds every page as
    the pass before left it, for 30 passes."""
    guest = LiveProbe([str(VIREO), "run", "--restore", str(snap), "--api-socket", fresh(sock)])
    try:
        guest.wait_line(f"PROBE dirty pass={last + 30} ")
        seen = passes(guest)
        with guest.cond:
            # The pause may cut pass last+1's line: its rest comes first.
            cut = not guest.out[0].startswith("PROBE")
        assert seen[0][0] == last + 1 + cut, (seen[:3], guest.out[:2])
        assert [n for n, _ in seen] == list(range(seen[0][0], seen[-1][0] + 1))
        assert all(bad == 0 for _, bad in seen), seen
        with guest.cond:
            assert not any("PROBE boot" in line or "PROBE hello" in line for line in guest.out)
    finally:
        guest.proc.kill()
        guest.finish()


def test_chain_of_three_restores_exactly(tmp_path, sock):
    last, r = take_chain(tmp_path, sock)
    assert not r["A"]["incremental"] and r["B"]["incremental"] and r["C"]["incremental"]
    assert len({r[k]["id"] for k in r}) == 4
    # Each increment holds what a pass dirties (1024 pages), not all RAM.
    for k in ("B", "C"):
        assert 1024 <= r[k]["dirty_pages"] < 2048, r[k]
        assert os.path.getsize(tmp_path / k / "memory") == r[k]["dirty_pages"] * 4096
    # The newest of the chain restores byte for byte as the full snapshot
    # of its instant does (both restored: KVM rewrites the kvmclock area).
    assert digest(restored_memory(tmp_path, tmp_path / "C", sock)) == \
        digest(restored_memory(tmp_path, tmp_path / "Cf", sock))
    for k in ("A", "B", "C"):
        resumes_exactly(tmp_path / k, sock, last[k])


def test_increment_of_a_restored_chain(tmp_path, sock):
    """A VMM restored from C takes C as its base: its increment D restores
    exactly, through the chain A, B, C."""
    last, _ = take_chain(tmp_path, sock)
    guest = LiveProbe([str(VIREO), "run", "--restore", str(tmp_path / "C"), "--track-dirty",
                       "--api-socket", fresh(sock)])
    try:
        pause_at(guest, sock, 10)
        r = snapshot(sock, tmp_path / "D", incremental=True)
        d_last = last_pass(guest)
        assert d_last > last["C"]
        assert r["incremental"] and r["dirty_pages"] < 2048
    finally:
        guest.proc.kill()
        guest.finish()
    resumes_exactly(tmp_path / "D", sock, d_last)


def test_small_change_small_increment(tmp_path, sock):
    """The count scenario writes almost nothing: its increment is a few
    pages, far less than a tenth of the full snapshot."""
    guest = LiveProbe(vireo_args("scenario=count=20", extra=["--api-socket", fresh(sock)]))
    try:
        guest.wait_line("PROBE count n=5 ")
        assert vireo_control(sock, action="pause")["ok"]
        full = snapshot(sock, tmp_path / "A", track_dirty=True)
        assert vireo_control(sock, action="resume")["ok"]
        guest.wait_line("PROBE count n=15 ")
        assert vireo_control(sock, action="pause")["ok"]
        inc = snapshot(sock, tmp_path / "B", incremental=True)
        assert 0 < inc["dirty_pages"] < 64, inc
        assert inc["memory_bytes"] * 10 < full["memory_bytes"], (inc, full)
        used = os.stat(tmp_path / "B" / "memory").st_blocks * 512
        assert used * 10 < os.stat(tmp_path / "A" / "memory").st_blocks * 512
    finally:
        guest.proc.kill()
        guest.finish()
    guest = LiveProbe([str(VIREO), "run", "--restore", str(tmp_path / "B")])
    try:
        guest.wait_line("PROBE count n=20 ")
        with guest.cond:
            ns = [int(m.group(1)) for m in map(COUNT.match, guest.out) if m]
        assert ns[0] > 15 and ns == list(range(ns[0], ns[-1] + 1)), ns[:5]
    finally:
        guest.proc.kill()
        guest.finish()


def test_incremental_refused_without_base(tmp_path, sock):
    guest = LiveProbe(vireo_args("scenario=count=20", extra=["--api-socket", fresh(sock)]))
    try:
        guest.wait_line("PROBE count n=2 ")
        assert vireo_control(sock, action="pause")["ok"]
        r = vireo_control(sock, action="snapshot", dir=str(tmp_path / "X"), incremental=True)
        assert not r["ok"] and "take a full one first" in r["error"], r
        assert not (tmp_path / "X" / "state").exists()
        snapshot(sock, tmp_path / "A", track_dirty=True)
        r = vireo_control(sock, action="snapshot", dir=str(tmp_path / "B"), incremental=True,
                          parent_id="0123456789abcdef")
        assert not r["ok"] and "does not descend" in r["error"], r
        a = (tmp_path / "A" / "memory").read_bytes()
        r = vireo_control(sock, action="snapshot", dir=str(tmp_path / "A"), incremental=True)
        assert not r["ok"] and "directory of its parent" in r["error"], r
        assert (tmp_path / "A" / "memory").read_bytes() == a
    finally:
        guest.proc.kill()
        guest.finish()


def refused(snap, sock):
    status, out, err = run_until_exit([str(VIREO), "run", "--restore", str(snap),
                                       "--api-socket", fresh(sock)], timeout=30)
    assert status == 1, (status, out, err)
    assert "PROBE" not in out
    lines = [line for line in err.splitlines() if not line.startswith("vireo: notice")]
    assert len(lines) == 1, err
    return lines[0]


def test_broken_chains_refused(tmp_path, sock):
    take_chain(tmp_path, sock)
    c = tmp_path / "C"
    # A parent that is another snapshot than the one recorded.
    shutil.move(tmp_path / "B", tmp_path / "B.real")
    shutil.copytree(tmp_path / "A", tmp_path / "B")
    assert "is not its parent" in refused(c, sock)
    shutil.rmtree(tmp_path / "B")
    # A parent gone.
    assert "its parent" in refused(c, sock)
    shutil.move(tmp_path / "B.real", tmp_path / "B")
    # The full snapshot's memory short; an increment's memory short.
    os.truncate(tmp_path / "A" / "memory", (256 << 20) - 4096)
    assert "its parent: its parent:" in refused(c, sock)
    os.truncate(tmp_path / "A" / "memory", 256 << 20)
    size = os.path.getsize(c / "memory")
    os.truncate(c / "memory", size - 4096)
    assert "the increment has" in refused(c, sock)
    os.truncate(c / "memory", size)
    # A flipped bit in the increment's state file.
    state = bytearray((c / "state").read_bytes())
    state[-200] ^= 1
    (c / "state").write_bytes(bytes(state))
    assert "damaged state file" in refused(c, sock)
    state[-200] ^= 1
    (c / "state").write_bytes(bytes(state))
    resumes = LiveProbe([str(VIREO), "run", "--restore", str(c), "--api-socket", fresh(sock)])
    try:
        resumes.wait_line("PROBE dirty pass=")
    finally:
        resumes.proc.kill()
        resumes.finish()


# ---- virtio devices: the VMM's own writes into guest RAM ----
#
# The devloop scenario keeps every device busy (as in test_migrate.py):
# keep=K gives each disk K buffers that only the device writes (disk reads)
# and checks them all each round, so a page the VMM wrote that an increment
# left out shows as kept=bad; dirty_mib=4 checks the guest's own writes.

DEVLOOP = re.compile(r"PROBE devloop n=(\d+) ms=\d+ blk=(\w+) rng=(\d+) net=(\w+) kept=(\w+) "
                     r"dirty=(\w+)$")
KEEP = 16


def devloop(guest):
    with guest.cond:
        return [(int(m.group(1)), *m.groups()[1:]) for m in map(DEVLOOP.match, guest.out) if m]


@needs_qemu_img
def test_chain_with_virtio_devices(tmp_path, sock):
    """blk (qcow2 and raw), rng and a half-inflated balloon, all busy: a full
    snapshot and two increments; the newest restores with every device
    working and every page the devices and the guest wrote in place."""
    qcow2, raw = tmp_path / "d.qcow2", tmp_path / "d.raw"
    for path, fmt in ((qcow2, "qcow2"), (raw, "raw")):
        subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), "16M"], check=True)
    guest = LiveProbe(vireo_args(
        f"scenario=devloop=20 keep={KEEP} dirty_mib=4 balloon_mib=64", memory="128M",
        extra=["--api-socket", fresh(sock), "--disk", f"path={qcow2},format=qcow2",
               "--disk", f"path={raw},format=raw", "--rng", "--balloon"]))
    try:
        guest.wait_line("PROBE devloop ready disks=2 rng=1 balloon_pages=16384")
        for name, inc in (("A", False), ("B", True), ("C", True)):
            at = devloop(guest)[-1][0] if devloop(guest) else 0
            guest.wait_line(f"PROBE devloop n={at + KEEP + 5} ")
            assert vireo_control(sock, action="pause")["ok"]
            r = snapshot(sock, tmp_path / name, incremental=inc, track_dirty=True)
            if inc:
                # Not all of RAM: the balloon's 64 MiB and the untouched rest stay out.
                assert 0 < r["dirty_pages"] < 4096, r
            if name != "C":
                assert vireo_control(sock, action="resume")["ok"]
        last = devloop(guest)[-1][0]
        assert vireo_control(sock, action="poweroff")["ok"]
        assert guest.wait_exit(10)
    finally:
        guest.proc.kill()
        guest.finish()
    guest = LiveProbe([str(VIREO), "run", "--restore", str(tmp_path / "C"),
                       "--api-socket", fresh(sock)])
    try:
        guest.wait_line(f"PROBE devloop n={last + KEEP + 5} ")
        seen = devloop(guest)
        assert [r[0] for r in seen] == list(range(last + 1, seen[-1][0] + 1)), seen[:3]
        bad = [r for r in seen if r[1] != "ok" or int(r[2]) != 64 or r[4] != "ok" or
               r[5] != "ok"]
        assert not bad, bad[:5]
        assert vireo_control(sock, action="info")["state"] == "running"
    finally:
        guest.proc.kill()
        guest.finish()
    subprocess.run(["qemu-img", "check", "-q", str(qcow2)], check=True)
