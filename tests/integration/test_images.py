"""Image interoperability with qemu-img (DESIGN §6 tier 2): images vireo
creates pass qemu-img check/compare, images qemu-img creates read back
identically through vireo, both directions of convert, random writes."""
import json
import shutil

import pytest

from conftest import needs_qemu_img
from imgutil import (BACKING_VARIANTS, BLKIO, CHECKABLE, VARIANTS, opts,
                     pattern_raw, qcheck, qimg, run, same, vid, vireo)

pytestmark = needs_qemu_img
SIZE = 48 << 20


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return pattern_raw(tmp_path_factory.mktemp("src") / "src.raw", SIZE, seed=42)


@pytest.mark.parametrize("v", VARIANTS, ids=vid)
def test_create_passes_qemu_check(tmp_path, v):
    fmt, o = v
    img = tmp_path / f"new.{fmt}"
    vireo("create", "-f", fmt, *opts(o), img, "1G")
    qcheck(img, fmt)
    info = json.loads(qimg("info", "--output=json", "-f", fmt, img).stdout)
    # vpc rounds sizes up to a CHS geometry: it must round as qemu-img does.
    qimg("create", "-f", fmt, *opts(o), tmp_path / "q.img", "1G")
    qinfo = json.loads(qimg("info", "--output=json", "-f", fmt, tmp_path / "q.img").stdout)
    assert info["virtual-size"] == qinfo["virtual-size"] >= 1 << 30
    assert info["format"] == fmt


@pytest.mark.parametrize("v", VARIANTS, ids=vid)
def test_convert_vireo_to_qemu(tmp_path, src, v):
    fmt, o = v
    out = tmp_path / f"out.{fmt}"
    vireo("convert", "-f", "raw", "-O", fmt, *opts(o), src, out)
    qcheck(out, fmt)
    same(src, out, "raw", fmt)


@pytest.mark.parametrize("v", VARIANTS, ids=vid)
def test_convert_qemu_to_vireo(tmp_path, src, v):
    fmt, o = v
    img = tmp_path / f"q.{fmt}"
    back = tmp_path / "back.raw"
    qimg("convert", "-f", "raw", "-O", fmt, *opts(o), src, img)
    vireo("compare", "-f", "raw", "-F", fmt, src, img)
    vireo("convert", "-f", fmt, "-O", "raw", img, back)
    data, want = back.read_bytes(), src.read_bytes()
    # vpc sizes are rounded up to a CHS geometry: the rest reads as zeroes
    assert data[:len(want)] == want and not data[len(want):].strip(b"\0")


@pytest.mark.parametrize("v", VARIANTS, ids=vid)
def test_random_writes_read_back(tmp_path, v):
    fmt, o = v
    img, shadow = tmp_path / f"r.{fmt}", tmp_path / "shadow.raw"
    vireo("create", "-f", fmt, *opts(o), img, "24M")
    shadow.write_bytes(b"")
    run("truncate", "-s", "24M", shadow)
    run(BLKIO, "-f", fmt, "-n", "400", "-s", "11", "-z", img, shadow)
    qcheck(img, fmt)
    same(shadow, img, "raw", fmt)
    vireo("compare", "-f", "raw", "-F", fmt, shadow, img)


@pytest.mark.parametrize("v", BACKING_VARIANTS, ids=vid)
def test_random_writes_with_backing(tmp_path, src, v):
    fmt, o = v
    base, img, shadow = tmp_path / "base.qcow2", tmp_path / f"top.{fmt}", tmp_path / "sh.raw"
    qimg("convert", "-f", "raw", "-O", "qcow2", src, base)
    vireo("create", "-f", fmt, *opts(o), "-b", base.name, "-F", "qcow2", img)
    shutil.copy(src, shadow)
    run(BLKIO, "-f", fmt, "-n", "300", "-s", "5", "-z", img, shadow)
    qcheck(img, fmt)
    same(shadow, img, "raw", fmt)


def qemu_filled(tmp_path, name="q.qcow2", extra=()):
    img = tmp_path / name
    qimg("create", "-f", "qcow2", *extra, img, "32M")
    run("qemu-io", "-c", "write -P 0xab 1M 2M", "-c", "write -z 4M 1M",
        "-c", "write -P 0xcd 10M 64k", "-c", "write -P 0x5a 20M 300k", img)
    return img


def test_qemu_snapshots_read(tmp_path):
    img = qemu_filled(tmp_path)
    qimg("snapshot", "-c", "s1", img)
    run("qemu-io", "-c", "write -P 0x11 1M 64k", "-c", "write -z 10M 64k", img)
    ref_now, ref_s1 = tmp_path / "now.raw", tmp_path / "s1.raw"
    qimg("convert", "-O", "raw", img, ref_now)
    qimg("convert", "-l", "s1", "-O", "raw", img, ref_s1)
    vireo("compare", "-F", "raw", img, ref_now)
    assert "s1" in vireo("snapshot", "-l", img).stdout
    vireo("snapshot", "-a", "s1", img)
    qcheck(img, "qcow2")
    vireo("compare", "-F", "raw", img, ref_s1)


def test_convert_reads_an_internal_snapshot(tmp_path):
    """convert -l reads a snapshot's view as qemu-img does, also with -U
    from an image another process holds (the daemon's export of a running
    VM), and writes nothing to the image."""
    img = qemu_filled(tmp_path)
    qimg("snapshot", "-c", "s1", img)
    run("qemu-io", "-c", "write -P 0x11 1M 64k", "-c", "write -z 10M 64k",
        "-c", "write -P 0x22 30M 1M", img)
    qimg("resize", img, "40M")
    ref = tmp_path / "s1.raw"
    qimg("convert", "-l", "snapshot.name=s1", "-O", "raw", img, ref)
    before = img.read_bytes()
    out = tmp_path / "out.qcow2"
    vireo("convert", "-U", "-l", "snapshot.name=s1", "-c", "-O", "qcow2", img, out)
    qcheck(out, "qcow2")
    assert "compressed" in qimg("check", out).stdout
    same(ref, out, "raw", "qcow2")
    # The snapshot's size (a rollback's); qemu-img keeps the image's
    # present size, with zeroes past the snapshot's end.
    vireo("convert", "-l", "s1", "-O", "raw", img, tmp_path / "out.raw")
    data, want = (tmp_path / "out.raw").read_bytes(), ref.read_bytes()
    assert len(data) == 32 << 20 and data == want[:len(data)]
    assert want[len(data):] == bytes(len(want) - len(data))
    assert img.read_bytes() == before
    p = vireo("convert", "-l", "nope", "-O", "raw", img, tmp_path / "x.raw", ok=False)
    assert p.returncode == 1 and "no snapshot 'nope'" in p.stderr, p


def test_vireo_snapshots(tmp_path):
    img = qemu_filled(tmp_path)
    ref = tmp_path / "ref.raw"
    qimg("convert", "-O", "raw", img, ref)
    vireo("snapshot", "-c", "before", img)
    qcheck(img, "qcow2")
    run("qemu-io", "-c", "write -P 0x77 0 3M", img)
    snaps = json.loads(qimg("info", "--output=json", img).stdout)["snapshots"]
    assert [s["name"] for s in snaps] == ["before"]
    out = tmp_path / "before.raw"
    qimg("convert", "-l", "before", "-O", "raw", img, out)
    assert out.read_bytes() == ref.read_bytes()
    vireo("snapshot", "-a", "before", img)
    qcheck(img, "qcow2")
    same(ref, img, "raw", "qcow2")
    vireo("snapshot", "-d", "before", img)
    qcheck(img, "qcow2")
    assert "snapshots" not in json.loads(qimg("info", "--output=json", img).stdout)
    same(ref, img, "raw", "qcow2")


def test_qemu_backing_chain_read(tmp_path):
    base = qemu_filled(tmp_path, "base.qcow2")
    mid, top = tmp_path / "mid.qcow2", tmp_path / "top.qcow2"
    qimg("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", mid)
    run("qemu-io", "-c", "write -P 0x21 1536k 1M", "-c", "write -z 10M 32k", mid)
    qimg("create", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", top)
    run("qemu-io", "-c", "write -P 0x31 2M 4k", "-c", "write -P 0x32 30M 1M", top)
    ref = tmp_path / "ref.raw"
    qimg("convert", "-O", "raw", top, ref)
    vireo("compare", "-F", "raw", top, ref)
    chain = json.loads(vireo("info", "--output=json", "--backing-chain", top).stdout)
    assert [c["filename"].split("/")[-1] for c in chain] == ["top.qcow2", "mid.qcow2", "base.qcow2"]
    assert chain[0]["backing-filename-format"] == "qcow2"
    qmap = json.loads(qimg("map", "--output=json", top).stdout)
    vmap = json.loads(vireo("map", "--output=json", top).stdout)
    assert vmap == qmap


@pytest.mark.parametrize("ctype", ["zlib", "zstd"])
def test_compressed_both_ways(tmp_path, src, ctype):
    q, v = tmp_path / "q.qcow2", tmp_path / "v.qcow2"
    o = f"compression_type={ctype}"
    qimg("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", o, src, q)
    vireo("compare", "-f", "raw", "-F", "qcow2", src, q)
    vireo("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", o, src, v)
    qcheck(v, "qcow2")
    same(src, v, "raw", "qcow2")
    info = json.loads(qimg("info", "--output=json", v).stdout)
    assert info["format-specific"]["data"]["compression-type"] == ctype
    assert v.stat().st_size < src.stat().st_blocks * 512
    # Overwriting compressed clusters works and frees them.
    shadow = tmp_path / "sh.raw"
    shutil.copy(src, shadow)
    run(BLKIO, "-f", "qcow2", "-n", "200", "-s", "9", "-z", v, shadow)
    qcheck(v, "qcow2")
    same(shadow, v, "raw", "qcow2")


def test_commit_rebase_resize(tmp_path, src):
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    qimg("convert", "-f", "raw", "-O", "qcow2", src, base)
    vireo("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top)
    run("qemu-io", "-c", "write -P 0x44 3M 1M", "-c", "write -z 0 64k", top)
    ref = tmp_path / "ref.raw"
    qimg("convert", "-O", "raw", top, ref)
    vireo("commit", top)
    qcheck(base, "qcow2")
    qcheck(top, "qcow2")
    same(ref, base, "raw", "qcow2")
    same(ref, top, "raw", "qcow2")
    # Safe rebase onto an empty image keeps the content.
    empty = tmp_path / "empty.qcow2"
    qimg("create", "-f", "qcow2", empty, str(SIZE))
    vireo("rebase", "-b", "empty.qcow2", "-F", "qcow2", top)
    assert json.loads(qimg("info", "--output=json", top).stdout)["backing-filename"] == "empty.qcow2"
    qcheck(top, "qcow2")
    same(ref, top, "raw", "qcow2")
    vireo("rebase", "-u", "-b", "base.qcow2", "-F", "qcow2", top)
    same(ref, top, "raw", "qcow2")
    vireo("resize", top, "+16M")
    qcheck(top, "qcow2")
    assert json.loads(qimg("info", "--output=json", top).stdout)["virtual-size"] == SIZE + (16 << 20)


def test_resize_grows_l1(tmp_path):
    img = tmp_path / "g.qcow2"
    vireo("create", "-f", "qcow2", "-o", "cluster_size=512", img, "1M")
    vireo("resize", img, "64M")
    run("qemu-io", "-c", "write -P 0x99 60M 64k", img)
    qcheck(img, "qcow2")
    vireo("resize", "-f", "raw", tmp_path / "nothing", "1M", ok=False)


def test_compare_and_check_exit_codes(tmp_path, src):
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    qimg("convert", "-f", "raw", "-O", "qcow2", src, a)
    shutil.copy(a, b)
    assert vireo("compare", a, b).returncode == 0
    run("qemu-io", "-c", "write -P 0x1 7M 1", b)
    p = vireo("compare", a, b, ok=False)
    assert p.returncode == 1 and "7340032" in p.stdout
    assert vireo("check", a).returncode == 0
    assert vireo("check", "-f", "raw", src, ok=False).returncode == 63
    j = json.loads(vireo("check", "--output=json", a).stdout)
    q = json.loads(qimg("check", "--output=json", a).stdout)
    for k in ("corruptions", "leaks", "allocated-clusters", "total-clusters", "image-end-offset"):
        assert j.get(k, 0) == q.get(k, 0), k


def test_info_json_matches_qemu(tmp_path):
    img = qemu_filled(tmp_path)
    qimg("snapshot", "-c", "s", img)
    q = json.loads(qimg("info", "--output=json", img).stdout)
    v = json.loads(vireo("info", "--output=json", img).stdout)
    for k in ("virtual-size", "format", "cluster-size", "dirty-flag"):
        assert v[k] == q[k], k
    assert v["format-specific"] == q["format-specific"]
    assert [s["name"] for s in v["snapshots"]] == [s["name"] for s in q["snapshots"]]


def test_probed_raw_is_never_written(tmp_path):
    raw = tmp_path / "disk.img"
    raw.write_bytes(bytes(1 << 20))
    shadow = tmp_path / "s.raw"
    shadow.write_bytes(bytes(1 << 20))
    p = run(BLKIO, "-n", "1", raw, shadow, ok=False)
    assert p.returncode == 1 and "-f raw" in p.stderr
    p = vireo("resize", raw, "2M", ok=False)
    assert p.returncode == 1 and "raw" in p.stderr
    vireo("resize", "-f", "raw", raw, "2M")
    assert raw.stat().st_size == 2 << 20


def test_backing_loop_refused(tmp_path):
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    qimg("create", "-f", "qcow2", a, "1M")
    qimg("create", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", b)
    qimg("rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", a)
    p = vireo("info", "--backing-chain", b, ok=False)
    assert p.returncode == 1 and "loop" in p.stderr and "a.qcow2" in p.stderr


def test_deep_chain_read_and_depth_limit(tmp_path):
    # 64 layers in all are followed; a 65th is refused with a clear error.
    qimg("create", "-f", "qcow2", tmp_path / "l0.qcow2", "1M")
    run("qemu-io", "-c", "write -P 0x10 0 4k", tmp_path / "l0.qcow2")
    for i in range(1, 65):
        qimg("create", "-f", "qcow2", "-u", "-b", f"l{i - 1}.qcow2", "-F", "qcow2",
             tmp_path / f"l{i}.qcow2", "1M")
    top63 = tmp_path / "l63.qcow2"
    assert vireo("convert", "-O", "raw", top63, tmp_path / "o.raw").returncode == 0
    assert (tmp_path / "o.raw").read_bytes()[:4096] == b"\x10" * 4096
    p = vireo("info", "--backing-chain", tmp_path / "l64.qcow2", ok=False)
    assert p.returncode == 1 and "deeper than 64" in p.stderr
