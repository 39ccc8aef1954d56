"""VHD (vpc) and VMDK beyond the shared interop variants (issue 3):
differencing VHDs and VMDK parents, images qemu-io fills, QEMU's vpc
sizing, and corruption: bytes poked into headers and tables are refused with
an error naming the file, never a crash, and a refused image is not written."""
import hashlib
import json
import os
import random
import shutil
import struct

import pytest

from conftest import needs_qemu_img
from imgutil import BLKIO, qimg, run, same, vireo

pytestmark = needs_qemu_img


def md5(p):
    return hashlib.md5(p.read_bytes()).hexdigest()


def poke(path, off, data):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


def vhd_fix_checksum(path, off, size, csum_off):
    """Recomputes a VHD footer/header checksum after a deliberate poke."""
    with open(path, "r+b") as f:
        f.seek(off)
        b = bytearray(f.read(size))
        b[csum_off:csum_off + 4] = b"\0\0\0\0"
        f.seek(off + csum_off)
        f.write(struct.pack(">I", ~sum(b) & 0xffffffff))


def no_crash(*args):
    p = vireo(*args, ok=False)
    assert p.returncode in (0, 1, 2, 3, 63), f"{args}: {p.returncode} {p.stderr}"
    return p


def refused(bad, fmt, tmp_path, what=None):
    before = md5(bad)
    for args in (["info", "-f", fmt, bad], ["check", "-f", fmt, bad],
                 ["convert", "-f", fmt, "-O", "raw", bad, tmp_path / "o.raw"],
                 ["bench", "-f", fmt, "-w", "-c", "5", "-s", "4K", bad]):
        p = no_crash(*args)
        assert p.returncode != 0, args
        assert bad.name in p.stderr, p.stderr
        if what:
            assert what in p.stderr, p.stderr
    assert md5(bad) == before, "a refused image was written"


def qemu_fill(img):
    run("qemu-io", "-c", "write -P 0xab 1M 2M", "-c", "write -P 0xcd 10M 64k",
        "-c", "write -P 0x5a 20M 300k", "-c", "write -P 0x11 31M 1k", img)


# ---- images qemu-io fills read back through vireo ----

@pytest.mark.parametrize("fmt,o", [("vpc", "subformat=dynamic"), ("vpc", "subformat=fixed"),
                                   ("vmdk", "subformat=monolithicSparse"),
                                   ("vmdk", "subformat=twoGbMaxExtentSparse"),
                                   ("vmdk", "subformat=monolithicFlat")])
def test_qemu_io_filled_read(tmp_path, fmt, o):
    img, ref = tmp_path / f"q.{fmt}", tmp_path / "ref.raw"
    qimg("create", "-f", fmt, "-o", o, img, "32M")
    run("qemu-io", "-f", fmt, "-c", "write -P 0xab 1M 2M", "-c", "write -P 0xcd 10M 64k",
        "-c", "write -P 0x5a 20M 300k", "-c", "write -P 0x11 31M 1k", img)
    qimg("convert", "-f", fmt, "-O", "raw", img, ref)
    vireo("compare", "-f", fmt, "-F", "raw", img, ref)
    info = json.loads(vireo("info", "-f", fmt, "--output=json", img).stdout)
    q = json.loads(qimg("info", "-f", fmt, "--output=json", img).stdout)
    assert info["virtual-size"] == q["virtual-size"]
    assert info.get("cluster-size") == q.get("cluster-size")
    if fmt != "vmdk" or "monolithicSparse" in o:    # qemu also maps extent files
        qmap = json.loads(qimg("map", "-f", fmt, "--output=json", img).stdout)
        assert json.loads(vireo("map", "-f", fmt, "--output=json", img).stdout) == qmap
    if fmt == "vmdk":
        for k in ("cid", "parent-cid", "create-type"):
            assert info["format-specific"]["data"][k] == q["format-specific"]["data"][k], k


def test_vireo_writes_into_qemu_images(tmp_path):
    for fmt, o in (("vpc", "subformat=dynamic"), ("vmdk", "subformat=monolithicSparse")):
        img, shadow = tmp_path / f"w.{fmt}", tmp_path / f"w-{fmt}.raw"
        qimg("create", "-f", fmt, "-o", o, img, "32M")
        qemu_fill(img)
        qimg("convert", "-f", fmt, "-O", "raw", img, shadow)
        run(BLKIO, "-f", fmt, "-n", "300", "-s", "21", "-z", img, shadow)
        same(shadow, img, "raw", fmt)


@pytest.mark.parametrize("size", ["1M", "4095M", "127G", "128G", "2040G", "1234567"])
def test_vpc_size_as_qemu(tmp_path, size):
    for o in ("subformat=dynamic", "force_size=on"):
        v, q = tmp_path / "v.vhd", tmp_path / "q.vhd"
        vireo("create", "-f", "vpc", "-o", o, v, size)
        qimg("create", "-f", "vpc", "-o", o, q, size)
        vs = json.loads(qimg("info", "--output=json", v).stdout)["virtual-size"]
        qs = json.loads(qimg("info", "--output=json", q).stdout)["virtual-size"]
        assert vs == qs
        assert json.loads(vireo("info", "--output=json", q).stdout)["virtual-size"] == qs
    assert vireo("create", "-f", "vpc", v, "2041G", ok=False).returncode == 1


def test_stream_optimized_is_compressed(tmp_path):
    src = tmp_path / "z.raw"
    src.write_bytes(b"vireo" * (4 << 20))
    out = tmp_path / "z.vmdk"
    vireo("convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", src, out)
    assert out.stat().st_size < src.stat().st_size // 20
    q = json.loads(qimg("info", "--output=json", out).stdout)
    assert q["format-specific"]["data"]["extents"][0]["compressed"] is True
    same(src, out, "raw", "vmdk")
    # convert -c (parallel compression): streamOptimized compresses, other
    # subformats store plainly
    for sub in ("streamOptimized", "monolithicSparse"):
        c = tmp_path / f"c-{sub}.vmdk"
        vireo("convert", "-c", "-f", "raw", "-O", "vmdk", "-o", f"subformat={sub}", src, c)
        assert qimg("check", c, ok=False).returncode == 0
        same(src, c, "raw", "vmdk")
    assert (tmp_path / "c-streamOptimized.vmdk").stat().st_size < src.stat().st_size // 20


# ---- differencing VHD, VMDK parents ----

def test_vhd_differencing(tmp_path):
    base, top, shadow = tmp_path / "base.vhd", tmp_path / "top.vhd", tmp_path / "sh.raw"
    qimg("create", "-f", "vpc", base, "24M")
    qemu_fill_small = ["-c", "write -P 0x42 0 3M", "-c", "write -P 0x43 9M 5k"]
    run("qemu-io", "-f", "vpc", *qemu_fill_small, base)
    vireo("create", "-f", "vpc", "-b", "base.vhd", top)
    info = json.loads(vireo("info", "--output=json", top).stdout)
    assert info["backing-filename"] == "base.vhd" and info["backing-filename-format"] == "vpc"
    qimg("convert", "-f", "vpc", "-O", "raw", base, shadow)
    run(BLKIO, "-f", "vpc", "-n", "300", "-s", "8", "-z", "-m", "70000", top, shadow)
    vireo("compare", "-F", "raw", top, shadow)
    assert vireo("check", top).returncode == 0
    # The parent is untouched; commit writes the child's data into it.
    vireo("commit", top)
    same(shadow, base, "raw", "vpc")
    assert top.stat().st_size < 64 << 10         # commit emptied the child
    vireo("compare", "-F", "raw", top, shadow)
    assert vireo("check", top).returncode == 0
    # A replaced parent (same name and size, another UUID) is refused.
    vireo("create", "-f", "vpc", base, "24M")
    p = no_crash("convert", "-O", "raw", top, tmp_path / "o.raw")
    assert p.returncode == 1 and "UUID" in p.stderr and top.name in p.stderr
    # A parent that is not a VHD is refused.
    qimg("create", "-f", "qcow2", tmp_path / "b.qcow2", "24M")
    p = vireo("create", "-f", "vpc", "-b", "b.qcow2", "-F", "qcow2", tmp_path / "x.vhd", ok=False)
    assert p.returncode == 1 and "VHD" in p.stderr


def test_vhd_parent_loop_refused(tmp_path):
    q, p, t = tmp_path / "q.vhd", tmp_path / "p.vhd", tmp_path / "t.vhd"
    vireo("create", "-f", "vpc", q, "8M")
    vireo("create", "-f", "vpc", "-b", "q.vhd", p)
    vireo("create", "-f", "vpc", "-b", "p.vhd", t)
    os.replace(t, q)            # q's parent is p, p's parent is q
    r = no_crash("info", "--backing-chain", p)
    assert r.returncode == 1 and "loop" in r.stderr
    r = no_crash("convert", "-O", "raw", p, tmp_path / "o.raw")
    assert r.returncode == 1 and "loop" in r.stderr


def test_vmdk_backing(tmp_path):
    base, top, shadow = tmp_path / "base.vmdk", tmp_path / "top.vmdk", tmp_path / "sh.raw"
    qimg("create", "-f", "vmdk", base, "16M")
    run("qemu-io", "-f", "vmdk", "-c", "write -P 0x42 0 3M", base)
    vireo("create", "-f", "vmdk", "-b", "base.vmdk", top)
    qimg("convert", "-O", "raw", base, shadow)
    run(BLKIO, "-f", "vmdk", "-n", "200", "-s", "4", "-z", top, shadow)
    same(shadow, top, "raw", "vmdk")       # qemu-img follows our parent link
    vireo("compare", "-F", "raw", top, shadow)
    q = json.loads(qimg("info", "--output=json", top).stdout)
    assert q["backing-filename"] == "base.vmdk"


def test_vmdk_descriptor_loop_refused(tmp_path):
    for a, b in (("a", "b"), ("b", "a")):
        (tmp_path / f"{a}-flat.vmdk").write_bytes(bytes(1 << 20))
        (tmp_path / f"{a}.vmdk").write_text(
            '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=fffffffe\n'
            f'createType="monolithicFlat"\nparentFileNameHint="{b}.vmdk"\n'
            f'RW 2048 FLAT "{a}-flat.vmdk" 0\n')
    r = no_crash("info", "--backing-chain", tmp_path / "a.vmdk")
    assert r.returncode == 1 and "loop" in r.stderr


# ---- corruption: VHD ----

@pytest.fixture(scope="module")
def good_vhd(tmp_path_factory):
    d = tmp_path_factory.mktemp("vhd")
    img = d / "good.vhd"
    qimg("create", "-f", "vpc", img, "16M")
    run("qemu-io", "-f", "vpc", "-c", "write -P 0xab 0 300k", "-c", "write -P 0xcd 4M 64k", img)
    return img


# (offset, bytes, fix footer checksum?, fix dyn header checksum?, expected words)
VHD_POKES = {
    "cookie": (0, b"conectiX", False, False, None),
    # a byte of the random unique id, flipped (a fixed value was already
    # there in one image of 256)
    "footer_checksum": (70, None, False, False, "checksum"),
    "disk_type": (60, struct.pack(">I", 7), True, False, "disk type"),
    "size_huge": (48, struct.pack(">Q", 1 << 62), True, False, "size"),
    "size_odd": (48, struct.pack(">Q", 1000), True, False, "size"),
    "geometry_huge_qem2": (28, b"qem2", True, False, None),
    "data_offset": (16, struct.pack(">Q", 1 << 45), True, False, "offset"),
    "dyn_cookie": (512, b"cxsparsX", False, False, "cookie"),
    "dyn_checksum": (512 + 100, b"\x01", False, False, "checksum"),
    "block_size": (512 + 32, struct.pack(">I", 12345), False, True, "block size"),
    "max_entries": (512 + 28, struct.pack(">I", 0x7fffffff), False, True, "BAT"),
    "too_few_entries": (512 + 28, struct.pack(">I", 1), False, True, "BAT"),
    "table_offset": (512 + 16, struct.pack(">Q", 1 << 40), False, True, "BAT offset"),
    "bat_past_end": (1536, struct.pack(">I", 0x7000000), False, False, "past the end"),
    "bat_into_metadata": (1536, struct.pack(">I", 2), False, False, "into metadata"),
}


@pytest.mark.parametrize("name", sorted(VHD_POKES))
def test_vhd_bad_header_refused(good_vhd, tmp_path, name):
    off, data, fix_f, fix_d, what = VHD_POKES[name]
    bad = tmp_path / "bad.vhd"
    shutil.copy(good_vhd, bad)
    if name == "geometry_huge_qem2":      # a size only current_size can tell: huge
        poke(bad, 48, struct.pack(">Q", 1 << 50))
    if data is None:
        data = bytes([bad.read_bytes()[off] ^ 0xff])
    poke(bad, off, data)
    if fix_f:
        vhd_fix_checksum(bad, 0, 512, 64)
    if fix_d:
        vhd_fix_checksum(bad, 512, 1024, 36)
    refused(bad, "vpc", tmp_path, what)


def test_vhd_fixed_bad_footer(tmp_path):
    img = tmp_path / "f.vhd"
    vireo("create", "-f", "vpc", "-o", "subformat=fixed", img, "4M")
    n = img.stat().st_size
    poke(img, n - 512 + 56, struct.pack(">H", 60000))      # CHS bigger than the file
    vhd_fix_checksum(img, n - 512, 512, 64)
    refused(img, "vpc", tmp_path, "shorter")


def test_vhd_truncated(good_vhd, tmp_path):
    data = good_vhd.read_bytes()
    for n in (0, 100, 511, 512, 1000, 1536, 2000, 4096, len(data) - 700):
        bad = tmp_path / f"t{n}.vhd"
        bad.write_bytes(data[:n])
        no_crash("info", "-f", "vpc", bad)
        no_crash("check", "-f", "vpc", bad)
        no_crash("convert", "-f", "vpc", "-O", "raw", bad, tmp_path / "o.raw")


def test_vhd_missing_end_footer_repaired(good_vhd, tmp_path):
    bad = tmp_path / "nf.vhd"
    shutil.copy(good_vhd, bad)
    with open(bad, "r+b") as f:         # a crash between block and footer
        f.truncate(bad.stat().st_size - 512)
    ref = tmp_path / "ref.raw"
    qimg("convert", "-f", "vpc", "-O", "raw", good_vhd, ref)
    vireo("compare", "-F", "raw", bad, ref)
    assert no_crash("check", bad).returncode == 3       # consistent: a leak
    vireo("check", "-r", "leaks", bad)
    assert vireo("check", bad).returncode == 0
    same(ref, bad, "raw", "vpc")


def test_vhd_random_pokes_never_crash(good_vhd, tmp_path):
    rnd = random.Random(5)
    data = good_vhd.read_bytes()
    for _ in range(40):
        b = bytearray(data)
        for _ in range(rnd.randrange(1, 5)):
            b[rnd.choice([0, 512, 1536]) + rnd.randrange(0, 512)] = rnd.randrange(256)
        bad = tmp_path / "p.vhd"
        bad.write_bytes(bytes(b))
        no_crash("info", "-f", "vpc", bad)
        no_crash("check", "-f", "vpc", bad)
        no_crash("convert", "-f", "vpc", "-O", "raw", bad, tmp_path / "o.raw")
        no_crash("bench", "-f", "vpc", "-w", "-c", "5", "-s", "4K", bad)


# ---- corruption: VMDK ----

@pytest.fixture(scope="module")
def good_vmdk(tmp_path_factory):
    d = tmp_path_factory.mktemp("vmdk")
    img = d / "good.vmdk"
    qimg("create", "-f", "vmdk", img, "16M")
    run("qemu-io", "-f", "vmdk", "-c", "write -P 0xab 0 300k", "-c", "write -P 0xcd 4M 64k", img)
    s = d / "good-s.vmdk"
    src = d / "src.raw"
    src.write_bytes(random.Random(9).randbytes(200000) + bytes(100000) + b"\x55" * 90000)
    vireo("convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", src, s)
    return img, s


def vmdk_hdr(img):
    b = img.read_bytes()[:512]
    gd = struct.unpack_from("<Q", b, 56)[0]
    gt = struct.unpack_from("<I", img.read_bytes(), gd * 512)[0]
    return dict(gd=gd, gt=gt)


VMDK_POKES = {
    "magic": (0, b"KDMX", None),
    "version": (4, struct.pack("<I", 9), "version"),
    "grain_size": (20, struct.pack("<Q", 100), "grain size"),
    "grain_huge": (20, struct.pack("<Q", 1 << 30), "grain size"),
    "gtes": (44, struct.pack("<I", 0), "grain table"),
    "capacity_huge": (12, struct.pack("<Q", 1 << 50), "capacity"),
    "gd_too_big": (12, struct.pack("<Q", 1 << 39), None),
    "gd_past_end": (56, struct.pack("<Q", 1 << 30), "grain directory"),
    "desc_past_end": (28, struct.pack("<QQ", 1 << 20, 20), "descriptor"),
    "overhead": (64, struct.pack("<Q", 1 << 30), "overhead"),
    "compression": (8, struct.pack("<I", 0x30003), "compression"),
}


@pytest.mark.parametrize("name", sorted(VMDK_POKES))
def test_vmdk_bad_header_refused(good_vmdk, tmp_path, name):
    off, data, what = VMDK_POKES[name]
    bad = tmp_path / "bad.vmdk"
    shutil.copy(good_vmdk[0], bad)
    poke(bad, off, data)
    if name == "compression":
        poke(bad, 77, struct.pack("<H", 7))
    refused(bad, "vmdk", tmp_path, what)


@pytest.mark.parametrize("where,value,what", [("gd", 1 << 28, "past the end"),
                                              ("gd", 0, "into metadata"),
                                              ("gt", 1 << 28, "past the end"),
                                              ("gt", 3, "into metadata")])
def test_vmdk_bad_tables(good_vmdk, tmp_path, where, value, what):
    bad = tmp_path / "bad.vmdk"
    shutil.copy(good_vmdk[0], bad)
    h = vmdk_hdr(bad)
    if where == "gd":
        poke(bad, h["gd"] * 512, struct.pack("<I", value or 1))
        refused(bad, "vmdk", tmp_path, what)
        return
    poke(bad, h["gt"] * 512, struct.pack("<I", value))
    before = md5(bad)
    p = no_crash("convert", "-O", "raw", bad, tmp_path / "o.raw")
    assert p.returncode == 1 and what in p.stderr and bad.name in p.stderr
    assert no_crash("check", bad).returncode == 2
    p = no_crash("bench", "-w", "-c", "20", "-s", "64K", bad)
    assert md5(bad) == before or p.returncode == 0


def test_vmdk_bad_descriptors(tmp_path):
    flat = tmp_path / "d-flat.vmdk"
    flat.write_bytes(bytes(1 << 20))
    head = '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n'
    cases = {
        "no_type": head + 'RW 2048 FLAT "d-flat.vmdk" 0\n',
        "bad_line": head + 'createType="monolithicFlat"\nRW lots FLAT "d-flat.vmdk"\n',
        "no_quote": head + 'createType="monolithicFlat"\nRW 2048 FLAT d-flat.vmdk\n',
        "zero_size": head + 'createType="monolithicFlat"\nRW 0 FLAT "d-flat.vmdk" 0\n',
        "huge": head + 'createType="monolithicFlat"\nRW 99999999999999999 FLAT "d-flat.vmdk"\n',
        "missing": head + 'createType="monolithicFlat"\nRW 2048 FLAT "nothere.vmdk" 0\n',
        "vmfssparse": head + 'createType="x"\nRW 2048 VMFSSPARSE "d-flat.vmdk"\n',
        "no_extents": head + 'createType="monolithicFlat"\n',
        "junk": head + 'createType="monolithicFlat"\nthis is not a line\n',
        "sparse_not_sparse": head + 'createType="x"\nRW 2048 SPARSE "d-flat.vmdk"\n',
    }
    for name, text in cases.items():
        d = tmp_path / f"{name}.vmdk"
        d.write_text(text)
        refused(d, "vmdk", tmp_path)
    assert md5(flat) == hashlib.md5(bytes(1 << 20)).hexdigest()


def test_vmdk_stream_bad_grain(good_vmdk, tmp_path):
    bad = tmp_path / "bad-s.vmdk"
    shutil.copy(good_vmdk[1], bad)
    h = vmdk_hdr(bad)
    grain = struct.unpack_from("<I", bad.read_bytes(), h["gt"] * 512)[0]
    poke(bad, grain * 512 + 8, struct.pack("<I", 1 << 30))     # compressed size
    p = no_crash("convert", "-O", "raw", bad, tmp_path / "o.raw")
    assert p.returncode == 1 and "compressed grain" in p.stderr and bad.name in p.stderr
    poke(bad, grain * 512 + 8, struct.pack("<I", 100))         # doesn't inflate
    p = no_crash("convert", "-O", "raw", bad, tmp_path / "o.raw")
    assert p.returncode == 1 and "inflate" in p.stderr


def test_vmdk_truncated_and_pokes(good_vmdk, tmp_path):
    rnd = random.Random(3)
    for good in good_vmdk:
        data = good.read_bytes()
        h = vmdk_hdr(good)
        for n in (0, 3, 100, 512, 4096, 11000, len(data) // 2):
            bad = tmp_path / f"t{n}.vmdk"
            bad.write_bytes(data[:n])
            no_crash("info", "-f", "vmdk", bad)
            no_crash("convert", "-f", "vmdk", "-O", "raw", bad, tmp_path / "o.raw")
        hot = [0, 512, h["gd"] * 512, h["gt"] * 512, 65536]
        for _ in range(30):
            b = bytearray(data)
            for _ in range(rnd.randrange(1, 5)):
                b[rnd.choice(hot) + rnd.randrange(0, 512)] = rnd.randrange(256)
            bad = tmp_path / "p.vmdk"
            bad.write_bytes(bytes(b))
            no_crash("info", bad)
            no_crash("check", bad)
            no_crash("convert", "-O", "raw", bad, tmp_path / "o.raw")
            no_crash("bench", "-f", "vmdk", "-w", "-c", "5", "-s", "4K", bad)


def vmware_stream(path, data, grain=65536):
    """A streamOptimized VMDK as VMware's tools stream it: grains, then each
    GT after its grains, then the GD, a footer (the header with the real GD
    offset) and the end-of-stream marker; the header says "GD at end"."""
    import zlib
    sectors = len(data) // 512
    desc = (b'# Disk DescriptorFile\nversion=1\nCID=1234abcd\nparentCID=ffffffff\n'
            b'createType="streamOptimized"\nRW %d SPARSE "x.vmdk"\n' % sectors)

    def header(gd):
        h = struct.pack("<IIIQQQQIQQQB4sH", 0x564d444b, 3, 0x30001, sectors, grain // 512,
                        1, 1, 512, 0, gd, 128, 0, b"\n \r\n", 1)
        return h.ljust(512, b"\0")

    def marker(val, typ):
        return struct.pack("<QII", val, 0, typ).ljust(512, b"\0")

    out = bytearray(header(0xffffffffffffffff) + desc.ljust(512, b"\0"))
    out += bytes(128 * 512 - len(out))
    grains = (len(data) + grain - 1) // grain
    gts = (grains + 511) // 512
    gd = [0] * gts
    for t in range(gts):
        gt = [0] * 512
        for i in range(512):
            g = t * 512 + i
            chunk = data[g * grain:(g + 1) * grain]
            if g >= grains or not chunk.strip(b"\0"):
                continue
            z = zlib.compress(chunk)
            gt[i] = len(out) // 512
            out += (struct.pack("<QI", g * grain // 512, len(z)) + z)
            out += bytes(-len(out) % 512)
        if any(gt):
            out += marker(4, 1)
            gd[t] = len(out) // 512
            out += struct.pack("<512I", *gt)
    out += marker((gts * 4 + 511) // 512, 2)
    gd_sector = len(out) // 512
    out += struct.pack(f"<{gts}I", *gd).ljust((gts * 4 + 511) // 512 * 512, b"\0")
    out += marker(1, 3) + header(gd_sector) + marker(0, 0)
    path.write_bytes(bytes(out))


def test_vmdk_vmware_stream_read(tmp_path):
    rnd = random.Random(11)
    data = bytearray(40 << 20)
    for off in range(0, len(data), 1 << 20):
        if rnd.random() < 0.4:
            n = rnd.randrange(1, 200000)
            data[off:off + n] = rnd.randbytes(n)
    src, img = tmp_path / "s.raw", tmp_path / "x.vmdk"
    src.write_bytes(bytes(data))
    vmware_stream(img, bytes(data))
    same(src, img, "raw", "vmdk")                # the generator is right for qemu-img
    vireo("compare", "-f", "raw", "-F", "vmdk", src, img)
    assert vireo("check", img).returncode == 0
    before = md5(img)
    p = no_crash("bench", "-w", "-c", "5", "-s", "4K", img)
    assert p.returncode == 1 and "read-only" in p.stderr
    assert md5(img) == before
    # a footer that no longer matches is refused, not guessed at
    poke(img, img.stat().st_size - 1536 + 12, struct.pack("<I", 7))
    refused(img, "vmdk", tmp_path, "footer")


def test_vmdk_zeroed_grains(tmp_path):
    img, ref, shadow = tmp_path / "z.vmdk", tmp_path / "ref.raw", tmp_path / "sh.raw"
    qimg("create", "-f", "vmdk", "-o", "zeroed_grain=on", img, "16M")
    run("qemu-io", "-f", "vmdk", "-c", "write -P 0x66 0 4M", "-c", "write -z 1M 1M",
        "-c", "write -z 8M 2M", img)
    qimg("convert", "-f", "vmdk", "-O", "raw", img, ref)
    vireo("compare", "-F", "raw", img, ref)
    qmap = json.loads(qimg("map", "--output=json", img).stdout)
    assert json.loads(vireo("map", "--output=json", img).stdout) == qmap
    shutil.copy(ref, shadow)
    run(BLKIO, "-f", "vmdk", "-n", "100", "-s", "2", "-z", img, shadow)
    same(shadow, img, "raw", "vmdk")
    assert qimg("check", img, ok=False).returncode == 0


def test_vmdk_two_gb_extents(tmp_path):
    img, shadow = tmp_path / "big.vmdk", tmp_path / "sh.raw"
    vireo("create", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", img, "5G")
    assert sorted(p.name for p in tmp_path.glob("big-s*.vmdk")) == \
        ["big-s001.vmdk", "big-s002.vmdk", "big-s003.vmdk"]
    q = json.loads(qimg("info", "--output=json", img).stdout)
    assert q["virtual-size"] == 5 << 30 and len(q["format-specific"]["data"]["extents"]) == 3
    # writes straddling the 2 GiB extent boundaries, from both sides
    run("qemu-io", "-f", "vmdk", "-c", "write -P 0x21 2047M 2M", "-c", "write -P 0x22 4095M 3M",
        img)
    shadow.write_bytes(b"")
    run("truncate", "-s", "5G", shadow)
    run("qemu-io", "-f", "raw", "-c", "write -P 0x21 2047M 2M", "-c", "write -P 0x22 4095M 3M",
        shadow)
    run(BLKIO, "-f", "vmdk", "-n", "60", "-s", "6", img, shadow)
    vireo("compare", "-F", "raw", img, shadow)
    same(shadow, img, "raw", "vmdk")
    assert qimg("check", img, ok=False).returncode == 0


def test_vmdk_shared_grain_is_corruption(good_vmdk, tmp_path):
    bad = tmp_path / "dup.vmdk"
    shutil.copy(good_vmdk[0], bad)
    h = vmdk_hdr(bad)
    first = struct.unpack_from("<I", bad.read_bytes(), h["gt"] * 512)[0]
    poke(bad, h["gt"] * 512 + 4 * 100, struct.pack("<I", first))   # grain 100 = grain 0
    p = no_crash("check", bad)
    assert p.returncode == 2 and "overlap" in p.stdout + p.stderr
