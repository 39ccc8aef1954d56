"""Corrupted images (issue 3): bytes poked into headers and tables are
refused with a clear error naming the file, or repaired by check -r all;
never a crash, and a refused image is not written."""
import hashlib
import json
import random
import shutil
import struct

import pytest

from conftest import needs_qemu_img
from imgutil import qcheck, qimg, run, vireo

pytestmark = needs_qemu_img


def md5(p):
    return hashlib.md5(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    img = d / "good.qcow2"
    qimg("create", "-f", "qcow2", img, "8M")
    run("qemu-io", "-c", "write -P 0xab 0 300k", "-c", "write -P 0xcd 4M 64k", img)
    qimg("snapshot", "-c", "s", img)
    run("qemu-io", "-c", "write -P 0xef 64k 64k", img)
    ref = d / "good.raw"
    qimg("convert", "-O", "raw", img, ref)
    return img, ref


def header(img):
    b = img.read_bytes()[:104]
    f = struct.unpack(">IIQIIQIIQQIIQ", b[:72])
    return dict(cluster_bits=f[4], l1_size=f[7], l1=f[8], rt=f[9], nb_snap=f[11])


def poke(path, off, data):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


def be64(path, off):
    with open(path, "rb") as f:
        f.seek(off)
        return struct.unpack(">Q", f.read(8))[0]


def copy(good, tmp_path, name="bad.qcow2"):
    bad = tmp_path / name
    shutil.copy(good[0], bad)
    return bad


def no_crash(*args):
    p = vireo(*args, ok=False)
    assert p.returncode in (0, 1, 2, 3, 63), f"{args}: {p.returncode} {p.stderr}"
    return p


HEADER_POKES = {
    "magic": (0, b"QFI\x00"),
    "version": (4, struct.pack(">I", 9)),
    "cluster_bits": (20, struct.pack(">I", 40)),
    "size_huge": (24, struct.pack(">Q", 1 << 63)),
    "encrypted": (32, struct.pack(">I", 1)),
    "l1_size_huge": (36, struct.pack(">I", 0x7fffffff)),
    "l1_past_end": (40, struct.pack(">Q", 1 << 40)),
    "l1_unaligned": (40, struct.pack(">Q", 0x30001)),
    "rt_past_end": (48, struct.pack(">Q", 1 << 40)),
    "rt_clusters_huge": (56, struct.pack(">I", 0x10000000)),
    "nb_snapshots_huge": (60, struct.pack(">I", 0x7fffffff)),
    "snapshots_past_end": (64, struct.pack(">Q", 1 << 40)),
    "unknown_incompat": (72, struct.pack(">Q", 1 << 40)),
    "refcount_order": (96, struct.pack(">I", 7)),
    "header_length": (100, struct.pack(">I", 1 << 20)),
    "backing_offset": (8, struct.pack(">QI", 0xfff0, 1000)),
}


@pytest.mark.parametrize("name", sorted(HEADER_POKES))
def test_bad_header_refused(good, tmp_path, name):
    bad = copy(good, tmp_path)
    poke(bad, *HEADER_POKES[name])
    before = md5(bad)
    for args in (["info", "-f", "qcow2", bad], ["check", "-f", "qcow2", bad],
                 ["convert", "-f", "qcow2", "-O", "raw", bad, tmp_path / "o.raw"],
                 ["snapshot", "-c", "x", bad], ["resize", "-f", "qcow2", bad, "16M"]):
        p = no_crash(*args)
        assert p.returncode != 0, args
        assert str(bad) in p.stderr or bad.name in p.stderr, p.stderr
    assert md5(bad) == before, "a refused image was written"


def l2_offset(img):
    h = header(img)
    return be64(img, h["l1"]) & 0x00fffffffffffe00


def test_l2_entry_past_end(good, tmp_path):
    bad = copy(good, tmp_path)
    l2 = l2_offset(bad)
    poke(bad, l2 + 8, struct.pack(">Q", (1 << 63) | (1 << 40)))
    p = no_crash("compare", "-F", "raw", bad, good[1])
    assert p.returncode == 2 and "corrupt" in p.stderr and bad.name in p.stderr
    assert no_crash("check", bad).returncode == 2
    vireo("check", "-r", "all", bad)
    qcheck(bad, "qcow2")


def test_l1_entry_unaligned(good, tmp_path):
    bad = copy(good, tmp_path)
    h = header(bad)
    poke(bad, h["l1"], struct.pack(">Q", (1 << 63) | 0x40200))
    assert no_crash("convert", "-O", "raw", bad, tmp_path / "o.raw").returncode == 1
    assert no_crash("check", bad).returncode == 2
    vireo("check", "-r", "all", bad)
    qcheck(bad, "qcow2")


def refcount_block(img):
    return be64(img, header(img)["rt"]) & ~511


def test_leak_repaired(good, tmp_path):
    bad = copy(good, tmp_path)
    poke(bad, refcount_block(bad), struct.pack(">H", 2))   # header cluster: 2
    assert qimg("check", bad, ok=False).returncode == 3
    assert no_crash("check", bad).returncode == 3
    r = vireo("check", "-r", "leaks", bad)
    assert "1 leaked clusters" in r.stdout
    qcheck(bad, "qcow2")
    vireo("compare", "-F", "raw", bad, good[1])


def test_refcount_corruption_repaired(good, tmp_path):
    bad = copy(good, tmp_path)
    data = be64(bad, l2_offset(bad)) & 0x00fffffffffffe00
    cluster = data >> header(bad)["cluster_bits"]
    poke(bad, refcount_block(bad) + 2 * cluster, struct.pack(">H", 0))
    assert qimg("check", bad, ok=False).returncode == 2
    assert no_crash("check", bad).returncode == 2
    p = vireo("check", "--output=json", bad, ok=False)
    assert json.loads(p.stdout)["corruptions"] >= 1
    vireo("check", "-r", "all", bad)
    qcheck(bad, "qcow2")
    vireo("compare", "-F", "raw", bad, good[1])
    # The snapshot survived the repair too.
    out = tmp_path / "s.raw"
    qimg("convert", "-l", "s", "-O", "raw", bad, out)


def test_copied_flag_repaired(good, tmp_path):
    bad = copy(good, tmp_path)
    l2 = l2_offset(bad)
    # Entry 1 (64k) was rewritten after the snapshot: refcount 1, COPIED.
    e = be64(bad, l2 + 8)
    assert e >> 63
    poke(bad, l2 + 8, struct.pack(">Q", e & ~(1 << 63)))
    assert qimg("check", bad, ok=False).returncode == 2
    assert no_crash("check", bad).returncode == 2
    vireo("check", "-r", "all", bad)
    qcheck(bad, "qcow2")


def test_truncated_and_empty(good, tmp_path):
    for n in (0, 7, 71, 100, 0x10000, 0x30008):
        bad = tmp_path / f"t{n}.qcow2"
        bad.write_bytes(good[0].read_bytes()[:n])
        no_crash("info", "-f", "qcow2", bad)
        no_crash("check", "-f", "qcow2", bad)
        no_crash("convert", "-f", "qcow2", "-O", "raw", bad, tmp_path / "o.raw")


def test_random_pokes_never_crash(good, tmp_path):
    rnd = random.Random(7)
    data = good[0].read_bytes()
    h = header(good[0])
    hot = [0, h["l1"], h["rt"], refcount_block(good[0]), l2_offset(good[0])]
    for i in range(60):
        b = bytearray(data)
        for _ in range(rnd.randrange(1, 6)):
            base = rnd.choice(hot)
            b[base + rnd.randrange(0, 512)] = rnd.randrange(256)
        bad = tmp_path / "p.qcow2"
        bad.write_bytes(bytes(b))
        no_crash("info", bad)
        no_crash("compare", "-F", "raw", bad, good[1])
        no_crash("check", bad)
        no_crash("snapshot", "-l", bad)
        no_crash("check", "-r", "all", bad)
        no_crash("convert", "-O", "qcow2", bad, tmp_path / "o.qcow2")


def test_dirty_image_repaired_when_opened_writable(good, tmp_path):
    bad = copy(good, tmp_path)
    poke(bad, 72, struct.pack(">Q", 1))                     # incompatible: dirty
    poke(bad, refcount_block(bad), struct.pack(">H", 2))    # and a leak
    assert json.loads(vireo("info", "--output=json", bad).stdout)["dirty-flag"] is True
    vireo("resize", bad, "+1M")
    assert json.loads(qimg("info", "--output=json", bad).stdout)["dirty-flag"] is False
    qcheck(bad, "qcow2")
    vireo("compare", "-F", "raw", bad, good[1])


def test_corrupt_flag_blocks_writes_until_repaired(good, tmp_path):
    bad = copy(good, tmp_path)
    poke(bad, 72, struct.pack(">Q", 2))                     # incompatible: corrupt
    vireo("compare", "-F", "raw", bad, good[1])             # still readable
    p = no_crash("commit", bad)
    assert p.returncode == 1
    vireo("check", "-r", "all", bad)
    assert json.loads(qimg("info", "--output=json", bad).stdout)["format-specific"]["data"]["corrupt"] is False


def test_guest_write_never_lands_on_metadata(good, tmp_path):
    bad = copy(good, tmp_path)
    h = header(bad)
    l2 = l2_offset(bad)
    for i in range(128):     # every guest cluster "is" the L1 table, COPIED
        poke(bad, l2 + 8 * i, struct.pack(">Q", (1 << 63) | h["l1"]))
    l1_before = bad.read_bytes()[h["l1"]:h["l1"] + 512]
    p = no_crash("bench", "-w", "-c", "20", "-s", "4K", bad)
    assert p.returncode == 1 and "overlaps metadata" in p.stderr
    assert bad.read_bytes()[h["l1"]:h["l1"] + 512] == l1_before


@pytest.mark.parametrize("opt,what", [("extended_l2=on", "incompatible features 0x10"),
                                      ("encryption=on,encrypt.key-secret=x", "encrypted")])
def test_unsupported_qemu_features_refused(tmp_path, opt, what):
    img = tmp_path / "u.qcow2"
    if "encrypt" in opt:
        p = qimg("create", "--object", "secret,id=x,data=abc", "-f", "qcow2", "-o", opt, img,
                 "1M", ok=False)
    else:
        p = qimg("create", "-f", "qcow2", "-o", opt, img, "1M", ok=False)
    if p.returncode:
        pytest.skip(f"qemu-img cannot create {opt}")
    before = md5(img)
    r = no_crash("info", img)
    assert r.returncode == 1 and what in r.stderr and img.name in r.stderr
    assert md5(img) == before
