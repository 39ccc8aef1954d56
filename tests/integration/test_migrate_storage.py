"""Live migration without shared storage (issue 12, "copy_storage"): the
source copies each disk into an empty image the destination was given with
`vireo run --incoming-disk`, while the guest runs and writes it; grains
written meanwhile go again, the last ones in the pause. The probe's devloop
scenario writes its disks every round; a byte on its console holds them
(so that, once the source has stopped writing, the destination's image must
equal the source's at the switch, byte for byte)."""
import hashlib
import hmac
import json
import os
import socket
import struct
import subprocess

import pytest

from conftest import (PROBE, VIREO, LiveProbe, needs_kvm, needs_qemu_img, scaled, vireo_control,
                      wait_until)
from test_daemon_migrate import hosts  # noqa: F401
from test_migrate import devloop, free_port, lines_of, pairs, wait_err  # noqa: F401

pytestmark = [needs_kvm, needs_qemu_img]

SIZE = 64 << 20
DATA_AT, DATA_LEN = 8 << 20, 6 << 20  # written before the VM starts: the first pass's bulk


def images(tmp_path, fmt, dst_fmt=None):
    """The source's disk (6 MiB of data, the rest holes) and the
    destination's empty image of the same virtual size."""
    dst_fmt = dst_fmt or fmt
    src, dst = tmp_path / f"src.{fmt}", tmp_path / f"dst.{dst_fmt}"
    for path, f in ((src, fmt), (dst, dst_fmt)):
        subprocess.run(["qemu-img", "create", "-q", "-f", f, str(path), str(SIZE)], check=True)
    subprocess.run(["qemu-io", "-f", fmt, "-c", f"write -P 0x5a {DATA_AT} {DATA_LEN}", str(src)],
                   check=True, capture_output=True)
    return src, dst


def copy_pair(tmp_path, sock, pairs, fmt, dest=True, dst_fmt=None):
    src, dst = images(tmp_path, fmt, dst_fmt)
    p = pairs(tmp_path, sock, "scenario=devloop=20 keep=4 dirty_mib=1", memory="128M",
              extra=["--disk", f"path={src},format={fmt}"], dest=dest,
              dst_extra=["--incoming-disk", f"path={dst},format={dst_fmt or fmt}"])
    p.src.wait_line("PROBE devloop ready disks=1 ")
    p.src.wait_line("PROBE devloop n=10 ")
    return p, src, dst


def rounds_ok(lines):
    return all(r[1] in ("ok", "held") and r[4] == "ok" for r in devloop(lines))


def hold_disks(p):
    p.src.proc.stdin.write("h")
    p.src.proc.stdin.flush()
    return int(p.src.wait_line("PROBE devloop held n=").split("n=")[1])


@pytest.mark.parametrize("fmt,dst_fmt", [("qcow2", "qcow2"), ("raw", "raw"), ("qcow2", "raw")])
def test_disk_copied_while_the_guest_writes_it(tmp_path, sock, pairs, fmt, dst_fmt):
    """The copy at 4 MB/s takes seconds; the guest writes its disk (slots
    below the 6 MiB of data, so copied before them and written again after)
    for a while of it, then holds its disks: after the switch the
    destination's image (in its own format) compares equal to the source's
    and checks clean."""
    p, src, dst = copy_pair(tmp_path, sock, pairs, fmt, dst_fmt=dst_fmt)
    p.migrate(copy_storage=True, bandwidth=4_000_000, max_downtime_ms=300)
    start = devloop(lines_of(p.src))[-1][0]
    # Rounds that write the disk during the copy, however slowly a loaded
    # host runs the guest: the copy's 6 MiB of data alone take 1.5 s.
    wait_until(lambda: p.migration().get("bytes_sent", 0) > 2 << 20 and
               devloop(lines_of(p.src))[-1][0] > start + 5, 30,
               lambda: f"2 MiB sent and 6 rounds from {start}: {p.migration()}, "
                       f"{devloop(lines_of(p.src))[-1:]}")
    hold_disks(p)
    assert p.src.wait_exit(60), "".join(p.src.err)
    assert p.src.proc.returncode == 0, "".join(p.src.err)
    last = devloop(lines_of(p.src))[-1][0]
    p.dst.wait_line(f"PROBE devloop n={last + 10} ")
    assert rounds_ok(lines_of(p.src, p.dst)), devloop(lines_of(p.src, p.dst))[-5:]
    info = vireo_control(p.dsock, action="info")
    mig = info["migration"]
    assert mig["state"] == "completed", mig
    # Holes cost nothing: 6 MiB of data and the rewritten grains, of 64 MiB.
    assert mig["bytes_received"] < 24 << 20, mig
    # The source is gone, its image as at the switch; the destination's
    # guest writes no more (held).
    r = subprocess.run(["qemu-img", "compare", "-U", "-f", fmt, "-F", dst_fmt, str(src),
                        str(dst)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert vireo_control(p.dsock, action="poweroff")["ok"]
    assert p.dst.wait_exit(10) and p.dst.proc.returncode == 0, "".join(p.dst.err)
    if dst_fmt == "qcow2":
        subprocess.run(["qemu-img", "check", "-q", str(dst)], check=True)
    r = subprocess.run(["qemu-img", "compare", "-f", fmt, "-F", dst_fmt, str(src), str(dst)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_cancel_mid_copy(tmp_path, sock, pairs):
    """Cancelled while the disk goes: the guest goes on at the source, its
    disk working; the destination ends without running anything."""
    p, src, dst = copy_pair(tmp_path, sock, pairs, "qcow2")
    p.migrate(copy_storage=True, bandwidth=1_000_000)
    wait_until(lambda: p.migration().get("bytes_sent", 0) > 1 << 20, 30, "1 MiB sent")
    mig = p.migration()
    assert mig["remaining_bytes"] > 2 << 20, mig  # the disk's data not sent yet
    assert vireo_control(p.ssock, action="migrate-cancel")["ok"]
    mig = p.wait_migration(("cancelled",))
    assert mig["error"] == "migration cancelled" and mig["copy_storage"], mig
    assert p.dst.wait_exit(10) and p.dst.proc.returncode == 1
    assert "PROBE" not in "".join(p.dst.out)
    last = devloop(lines_of(p.src))[-1][0]
    p.src.wait_line(f"PROBE devloop n={last + 20} ")
    assert rounds_ok(lines_of(p.src)) and "held" not in "".join(p.src.out)
    assert vireo_control(p.ssock, action="info")["state"] == "running"
    # The partial copy is nobody's disk: not taken as an empty image again.
    p.dst.finish()
    g = LiveProbe([str(VIREO), "run", "--incoming", p.uri, "--api-socket", p.dsock,
                   "--incoming-disk", f"path={dst},format=qcow2"])
    wait_err(g, "waiting for a migration")
    p.migrate(copy_storage=True)
    assert g.wait_exit(10) and g.proc.returncode == 1
    g.finish()
    assert "is not empty" in "".join(g.err), "".join(g.err)
    p.wait_migration(("failed",))
    # Nothing left behind: a second migration goes (the disks held first,
    # so that the images compare at its end).
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(dst), str(SIZE)], check=True)
    p.dst = LiveProbe([str(VIREO), "run", "--incoming", p.uri, "--api-socket", p.dsock,
                       "--incoming-disk", f"path={dst},format=qcow2"])
    wait_err(p.dst, "waiting for a migration")
    hold_disks(p)
    p.migrate(copy_storage=True)
    assert p.src.wait_exit(60) and p.src.proc.returncode == 0, "".join(p.src.err)
    r = subprocess.run(["qemu-img", "compare", "-U", str(src), str(dst)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_copy_needs_incoming_disks(tmp_path, sock, pairs):
    """A copying source and a destination without --incoming-disk (it would
    write into the source's own paths): refused, the VM stays."""
    p, src, dst = copy_pair(tmp_path, sock, pairs, "raw", dest=False)
    p.dst = LiveProbe([str(VIREO), "run", "--incoming", p.uri, "--api-socket", p.dsock])
    wait_err(p.dst, "waiting for a migration")
    p.migrate(copy_storage=True)
    p.wait_migration(("failed",))
    assert p.dst.wait_exit(10) and p.dst.proc.returncode == 1
    assert "give --incoming-disk" in "".join(p.dst.err), "".join(p.dst.err)
    last = devloop(lines_of(p.src))[-1][0]
    p.src.wait_line(f"PROBE devloop n={last + 5} ")


def test_incoming_disks_need_a_copying_source(tmp_path, sock, pairs):
    """The reverse: a source that does not copy (shared storage) and a
    destination given its own images: refused at the switch, the VM stays."""
    p, src, dst = copy_pair(tmp_path, sock, pairs, "raw")
    p.migrate()
    mig = p.wait_migration(("failed",))
    assert "did not copy its disks" in mig["error"], mig
    assert p.dst.wait_exit(10) and p.dst.proc.returncode == 1
    last = devloop(lines_of(p.src))[-1][0]
    p.src.wait_line(f"PROBE devloop n={last + 5} ")
    assert rounds_ok(lines_of(p.src))


# ---- a hostile source ----

def fake_source(port, records):
    """Speaks the protocol (no token) up to the hello, then sends records."""
    c = socket.create_connection(("127.0.0.1", port))
    nd = c.recv(44, socket.MSG_WAITALL)[12:]
    ns = os.urandom(32)
    c.sendall(b"VIREOMIG" + struct.pack("<I", 1) + ns +
              hmac.new(b"", b"src" + nd + ns, hashlib.sha256).digest())
    assert c.recv(33, socket.MSG_WAITALL)[0] == 1
    c.sendall(struct.pack("<IQI", 1, 128 << 20, 1) + records)
    return c


def disks(*sizes):
    return struct.pack("<II", 5, len(sizes)) + b"".join(struct.pack("<Q", s) for s in sizes)


def data(disk, off, length, payload=None):
    return struct.pack("<IIQI", 6, disk, off, length) + (payload if payload is not None else
                                                         b"\xab" * length)


def zero(disk, off, length):
    return struct.pack("<IIQQ", 7, disk, off, length)


HOSTILE = {
    "past-the-end": (disks(SIZE) + data(0, SIZE - 512, 4096), "out of bounds"),
    "offset-wraps": (disks(SIZE) + data(0, (1 << 64) - 512, 1024), "out of bounds"),
    "too-long": (disks(SIZE) + struct.pack("<IIQI", 6, 0, 0, 64 << 20), "out of bounds"),
    "zero-past-the-end": (disks(SIZE) + zero(0, 4096, SIZE), "out of bounds"),
    "no-such-disk": (disks(SIZE) + data(1, 0, 512), "out of bounds"),
    "data-before-disks": (data(0, 0, 512), "out of bounds"),
    "too-many-disks": (struct.pack("<II", 5, 1 << 30), "--incoming-disk"),
    "wrong-size": (disks(SIZE * 2), "virtual size"),
    "disks-twice": (disks(SIZE) + disks(SIZE), "disks to copy"),
    "truncated": (disks(SIZE) + struct.pack("<IIQI", 6, 0, 0, 65536) + b"\xab" * 100, "closed"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_disk_section_refused(tmp_path, case):
    """Every size, offset and count the source gives is checked: the
    destination refuses and ends, and writes nothing out of place (its image
    reads as zeroes but for whole records it accepted: none here)."""
    records, why = HOSTILE[case]
    dst, empty = tmp_path / "dst.qcow2", tmp_path / "empty.qcow2"
    for path in (dst, empty):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(SIZE)],
                       check=True)
    port = free_port()
    g = LiveProbe([str(VIREO), "run", "--incoming", f"tcp:127.0.0.1:{port}",
                   "--incoming-disk", f"path={dst},format=qcow2"])
    try:
        wait_err(g, "waiting for a migration")
        c = fake_source(port, records)
        if case == "truncated":
            c.close()
        assert g.wait_exit(scaled(10)) and g.proc.returncode == 1, "".join(g.err)
        c.close()
        assert why in "".join(g.err), "".join(g.err)
        assert "PROBE" not in "".join(g.out)
    finally:
        g.proc.kill()
        g.finish()
    subprocess.run(["qemu-img", "check", "-q", str(dst)], check=True)
    r = subprocess.run(["qemu-img", "compare", str(empty), str(dst)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_destination_image_must_be_empty(tmp_path):
    """A destination image with data in it is refused before anything is
    written: the source skips what reads as zeroes."""
    dst = tmp_path / "dst.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(dst), str(SIZE)], check=True)
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 1 1M 4k", str(dst)], check=True,
                   capture_output=True)
    port = free_port()
    g = LiveProbe([str(VIREO), "run", "--incoming", f"tcp:127.0.0.1:{port}",
                   "--incoming-disk", f"path={dst},format=raw"])
    try:
        wait_err(g, "waiting for a migration")
        c = fake_source(port, disks(SIZE))
        assert g.wait_exit(scaled(10)) and g.proc.returncode == 1, "".join(g.err)
        c.close()
        assert "is not empty" in "".join(g.err), "".join(g.err)
    finally:
        g.proc.kill()
        g.finish()


# ---- between two daemons ----

def test_daemons_copy_the_disk(tmp_path, hosts):
    """A -> B with copy_storage through the CLI (`vm incoming --copy-storage`
    on B with B's own empty image, `vm migrate --copy-storage` on A): the
    guest's rounds go on at B, each finding on B's copy what the round
    before wrote on A's disk; B's image checks clean and holds the data
    written before the VM started."""
    from test_daemon_migrate import HOST_B, check_moved, check_rounds, last_round, wait_rounds
    a, b = hosts
    src, dst = images(tmp_path, "qcow2")

    def definition(disk):
        return {"name": "mig", "cpus": 1, "memory": "128M", "kernel": str(PROBE),
                "cmdline": "scenario=devloop=20 keep=16 dirty_mib=4",
                "disks": [{"path": str(disk), "format": "qcow2"}]}
    a.ok("POST", "/vms", definition(src), status=201)
    a.ok("POST", "/vms/mig/start")
    wait_rounds(a, 20)
    tokfile, deffile = tmp_path / "token", tmp_path / "mig.json"
    tokfile.write_text("copy-token\n")
    deffile.write_text(json.dumps(definition(dst)))
    uri = f"tcp:{HOST_B}:4499"
    r = subprocess.run([str(VIREO), "vm", "incoming", "--socket", b.socket, "mig", "--listen",
                        uri, "--file", str(deffile), "--token-file", str(tokfile),
                        "--copy-storage"], capture_output=True, text=True, timeout=scaled(30))
    assert r.returncode == 0, r
    r = subprocess.run([str(VIREO), "vm", "migrate", "mig", "--to", uri, "--output=json",
                        "--token-file", str(tokfile), "--socket", a.socket, "--copy-storage"],
                       capture_output=True, text=True, timeout=scaled(90))
    assert r.returncode == 0, r
    result = json.loads(r.stdout)
    check_moved(a, b, uri, (200, result))
    assert result["migration"]["copy_storage"] is True, result
    log_a = a.vm_log("mig")
    wait_rounds(b, last_round(a) + 20)
    check_rounds(log_a, b.vm_log("mig"))
    assert b.vm("mig")["disks"][0]["path"] == str(dst)
    b.stop("mig", force=True)
    subprocess.run(["qemu-img", "check", "-q", str(dst)], check=True)
    r = subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"read -P 0x5a {DATA_AT} {DATA_LEN}",
                        str(dst)], capture_output=True, text=True)
    assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, r
