"""Dirty tracking only when asked (issue 11): KVM's dirty logging costs the
guest a write fault per page and 4 KiB mappings for as long as it runs, so a
VMM runs it only after a snapshot taken with "track_dirty": true or a restore
with --track-dirty, for a later incremental snapshot. Without it the memory
slots carry no dirty-log flag (the control socket's info "dirty_log") and an
incremental snapshot is refused with one clear error (never silently full)."""
import os

from conftest import VIREO, LiveProbe, needs_kvm, run_until_exit, vireo_args, vireo_control

pytestmark = [needs_kvm]


def fresh(sock):
    if os.path.exists(sock):
        os.unlink(sock)
    return sock


def dirty_log(sock):
    r = vireo_control(sock, action="info")
    assert r["ok"], r
    return r["dirty_log"]


def snapshot(sock, path, **kw):
    r = vireo_control(sock, action="snapshot", dir=str(path), **kw)
    assert r["ok"], r
    return r


def refused_increment(sock, path):
    r = vireo_control(sock, action="snapshot", dir=str(path), incremental=True)
    assert not r["ok"] and "dirty tracking is off since snapshot" in r["error"], r
    assert "track_dirty" in r["error"], r
    assert not (path / "state").exists() and not (path / "memory").exists()


def test_tracking_only_when_asked(tmp_path, sock):
    guest = LiveProbe(vireo_args("scenario=count=200", extra=["--api-socket", fresh(sock)]))
    try:
        guest.wait_line("PROBE count n=2 ")
        assert dirty_log(sock) is False
        assert vireo_control(sock, action="pause")["ok"]
        a = snapshot(sock, tmp_path / "A")
        # A plain snapshot leaves no log behind, and nothing to be incremental to.
        assert dirty_log(sock) is False
        refused_increment(sock, tmp_path / "X")
        assert a["id"] in vireo_control(sock, action="snapshot", dir=str(tmp_path / "X"),
                                        incremental=True)["error"]
        # Asked for: the log runs from this snapshot on, also while running.
        snapshot(sock, tmp_path / "B", track_dirty=True)
        assert dirty_log(sock) is True
        assert vireo_control(sock, action="resume")["ok"]
        guest.wait_line("PROBE count n=5 ")
        assert dirty_log(sock) is True
        assert vireo_control(sock, action="pause")["ok"]
        # An increment that does not ask to go on ends the log after it.
        c = snapshot(sock, tmp_path / "C", incremental=True)
        assert c["incremental"] and c["dirty_pages"] > 0, c
        assert dirty_log(sock) is False
        refused_increment(sock, tmp_path / "D")
        # The refusal changed nothing: the VM goes on, and a full snapshot works.
        assert vireo_control(sock, action="resume")["ok"]
        guest.wait_line("PROBE count n=8 ")
    finally:
        guest.proc.kill()
        guest.finish()


def test_restore_tracks_only_with_the_flag(tmp_path, sock):
    guest = LiveProbe(vireo_args("scenario=count=200", extra=["--api-socket", fresh(sock)]))
    try:
        guest.wait_line("PROBE count n=2 ")
        assert vireo_control(sock, action="pause")["ok"]
        snapshot(sock, tmp_path / "A")
    finally:
        guest.proc.kill()
        guest.finish()
    for flag, tracking in (([], False), (["--track-dirty"], True)):
        guest = LiveProbe([str(VIREO), "run", "--restore", str(tmp_path / "A"), *flag,
                           "--api-socket", fresh(sock)])
        try:
            guest.wait_line("PROBE count n=")
            assert dirty_log(sock) is tracking
            assert vireo_control(sock, action="pause")["ok"]
            if tracking:
                r = snapshot(sock, tmp_path / "B", incremental=True)
                assert r["incremental"], r
            else:
                refused_increment(sock, tmp_path / "B")
        finally:
            guest.proc.kill()
            guest.finish()


def test_track_dirty_arguments(tmp_path, sock):
    status, _, err = run_until_exit([str(VIREO), "run", "--track-dirty", "--kernel", "x"],
                                    timeout=30)
    assert status != 0 and "--track-dirty goes with --restore" in err, err
    guest = LiveProbe(vireo_args("scenario=count=200", extra=["--api-socket", fresh(sock)]))
    try:
        guest.wait_line("PROBE count n=1 ")
        assert vireo_control(sock, action="pause")["ok"]
        r = vireo_control(sock, action="snapshot", dir=str(tmp_path / "A"), track_dirty=1)
        assert not r["ok"] and "'track_dirty' must be true or false" in r["error"], r
        r = vireo_control(sock, action="snapshot", disks=True, name="s", track_dirty=True)
        assert not r["ok"] and "goes with a snapshot of memory" in r["error"], r
        assert dirty_log(sock) is False
    finally:
        guest.proc.kill()
        guest.finish()
