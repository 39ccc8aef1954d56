"""Virtio devices with the probe guest's drivers, on vireo and on QEMU (the
reference, DESIGN §5): same answers on both; disk images checked afterwards
with qemu-img."""
import subprocess

import pytest

from conftest import ROOT, VIREO, needs_kvm, needs_qemu, needs_qemu_img, run_qemu, run_vireo

pytestmark = [needs_kvm, needs_qemu, needs_qemu_img]

QEMU_PCI = "microvm,pcie=on"
QEMU_ECAM = "ecam=0xe0000000"  # microvm has no MCFG; the probe takes the ECAM base
DISK_MIB = 64
FORMATS = ["raw", "qcow2", "vpc", "vmdk"]
AIO = ["io_uring", "threads"]  # --disk aio=: every blk test runs with both


def make_image(path, fmt):
    subprocess.run([str(VIREO), "img", "create", "-f", fmt, str(path), f"{DISK_MIB}M"],
                   check=True, capture_output=True)


def expected_image(tmp_path, seed, n, sectors=DISK_MIB * 2048, discard_reads="zero"):
    """The image the blk scenario leaves. Discard is advisory: formats that
    cannot deallocate (vpc, vmdk) keep the data, and the guest says which."""
    out = tmp_path / "expected.raw"
    p = subprocess.run(["/usr/bin/python3", str(ROOT / "guest/blk_expected.py"), str(seed),
                        str(n), str(sectors), str(out), "--discard-reads", discard_reads],
                       check=True, capture_output=True, text=True)
    return out, p.stdout.strip().split("=")[1]


@pytest.mark.parametrize("aio", AIO)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("irq", ["poll", "msix", "msix event_idx=1 indirect=1"])
def test_blk_same_on_vireo_and_qemu(tmp_path, fmt, irq, aio):
    seed, n = 7, 200
    cmd = f"scenario=blk seed={seed} n={n} irq={irq}"
    ours_img, ref_img = tmp_path / f"ours.{fmt}", tmp_path / f"ref.{fmt}"
    make_image(ours_img, fmt)
    make_image(ref_img, fmt)
    ours = run_vireo(cmd, extra=["--disk", f"path={ours_img},format={fmt},serial=probe0,aio={aio}"])
    ref = run_qemu(f"{cmd} {QEMU_ECAM}", machine=QEMU_PCI, extra=[
        "-drive", f"file={ref_img},if=none,id=d0,format={fmt},discard=unmap",
        "-device", "virtio-blk-pci,drive=d0,serial=probe0"])
    assert ours.returncode == 0, ours.stdout + ours.stderr
    assert ref.returncode == 0, ref.stdout + ref.stderr
    f, r = ours.all("blk")[0], ref.all("blk")[0]
    assert f["mismatches"] == "0" and f["writes"] == str(n), f
    keys = ["capacity", "serial", "writes", "reads", "mismatches", "checksum", "flush",
            "discard", "write_zeroes"]
    if fmt in ("raw", "qcow2"):
        keys.append("discard_reads")  # both deallocate; QEMU's vpc/vmdk discard differs
    for key in keys:
        assert f[key] == r[key], key
    # vpc rounds the size up to a CHS geometry, as qemu-img does
    expected, crc = expected_image(tmp_path, seed, n, int(f["capacity"]), f["discard_reads"])
    assert f["checksum"] == crc
    if fmt in ("qcow2", "vmdk"):
        subprocess.run(["qemu-img", "check", str(ours_img)], check=True, capture_output=True)
    cmp = subprocess.run(["qemu-img", "compare", "-f", fmt, "-F", "raw", str(ours_img),
                          str(expected)], capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr


@pytest.mark.parametrize("aio", AIO)
@pytest.mark.parametrize("cpus,queues", [(4, None), (1, 4)])
def test_blk_multiqueue_same_on_vireo_and_qemu(tmp_path, aio, cpus, queues):
    """VIRTIO_BLK_F_MQ with 4 queues, by default on 4 vCPUs (one per vCPU)
    or asked for with queues=4 on 1: the probe writes through every queue at
    once and reads each region back through another queue; each queue's own
    MSI-X vector interrupts. QEMU with num-queues=4 answers the same and
    leaves the same image."""
    cmd = "scenario=blk_mq queues=4 seed=3 irq=msix event_idx=1"
    ours_img, ref_img = tmp_path / "ours.raw", tmp_path / "ref.raw"
    make_image(ours_img, "raw")
    make_image(ref_img, "raw")
    ours = run_vireo(cmd, cpus=cpus, extra=[
        "--disk", f"path={ours_img},format=raw,aio={aio}" + (f",queues={queues}" if queues else "")])
    ref = run_qemu(f"{cmd} {QEMU_ECAM}", cpus=cpus, machine=QEMU_PCI, extra=[
        "-drive", f"file={ref_img},if=none,id=d0,format=raw",
        "-device", "virtio-blk-pci,drive=d0,num-queues=4"])
    assert ours.returncode == 0, ours.stdout + ours.stderr
    assert ref.returncode == 0, ref.stdout + ref.stderr
    f, r = ours.all("blk_mq")[0], ref.all("blk_mq")[0]
    assert f["num_queues"] == "4" and f["mq"] == "1", f
    assert f["mismatches"] == "0" and f["queues_interrupted"] == "4", f
    for key in ("num_queues", "mq", "queues", "requests", "mismatches", "queues_interrupted"):
        assert f[key] == r[key], key
    ours_bytes = ours_img.read_bytes()
    assert ours_bytes == ref_img.read_bytes()
    # four regions of 512 KiB of pattern (random bytes: 1/256 of them zero)
    assert len(ours_bytes) - ours_bytes.count(0) > 4 * (512 << 10) * 99 // 100


@pytest.mark.parametrize("aio", AIO)
def test_blk_readonly_disk_refuses_writes(tmp_path, aio):
    img = tmp_path / "ro.qcow2"
    make_image(img, "qcow2")
    before = img.read_bytes()
    ours = run_vireo("scenario=blk n=8",
                     extra=["--disk", f"path={img},format=qcow2,readonly,aio={aio}"])
    ref = run_qemu(f"scenario=blk n=8 {QEMU_ECAM}", machine=QEMU_PCI, extra=[
        "-drive", f"file={img},if=none,id=d0,format=qcow2,readonly=on",
        "-device", "virtio-blk-pci,drive=d0"])
    # The device offers VIRTIO_BLK_F_RO; the driver sees it and refuses.
    assert ours.facts()["blk_error"] == ref.facts()["blk_error"] == "read-only"
    assert img.read_bytes() == before


def test_rng_same_on_vireo_and_qemu():
    ours = run_vireo("scenario=rng", extra=["--rng"])
    ref = run_qemu(f"scenario=rng {QEMU_ECAM}", machine=QEMU_PCI,
                   extra=["-device", "virtio-rng-pci"])
    for run in (ours, ref):
        assert run.returncode == 0, run.stdout + run.stderr
        r = run.all("rng")[0]
        assert int(r["bytes"]) >= 4096
        assert int(r["distinct"]) == 256
    assert ours.all("rng")[0]["bytes"] == ref.all("rng")[0]["bytes"]


@pytest.mark.parametrize("aio", AIO)
def test_hostile_guest_cannot_crash_vireo(tmp_path, aio):
    img = tmp_path / "h.raw"
    make_image(img, "raw")
    run = run_vireo("scenario=hostile",
                    extra=["--disk", f"path={img},format=raw,aio={aio}", "--rng"])
    assert run.returncode == 0, run.stdout + run.stderr
    summaries = [d for d in run.all("hostile") if "cases" in d]
    assert {d["dev"] for d in summaries} == {"blk", "rng"}
    for d in summaries:
        # every case either refused (NEEDS_RESET) or served harmlessly, and
        # the device works again after a reset
        assert d["failed"] == "0" and d["recovered"] == d["cases"], d
        assert int(d["needs_reset"]) >= 5, d
    assert "guest broke a virtqueue" in run.stderr


def proc_status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def test_balloon_returns_memory_to_the_host():
    """512 MiB guest touches then gives 384 MiB (75%) to the balloon: the VMM's
    RSS must drop by at least 300 MiB; deflating gives the pages back."""
    cmd = "scenario=balloon balloon_mib=384 balloon_hold_ms=1500 deflate=1"
    p = subprocess.Popen([str(VIREO), "run", "--debug-exit",
                          "--kernel", str(ROOT / "build/guest/probe.elf"),
                          "--memory", "512M", "--balloon", "--cmdline", cmd],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    rss_after = peak = None
    lines = []
    for line in p.stdout:
        lines.append(line)
        if line.startswith("PROBE balloon target_pages="):
            rss_after = proc_status_kib(p.pid, "VmRSS")
            peak = proc_status_kib(p.pid, "VmHWM")
    assert p.wait(timeout=60) == 0, "".join(lines) + p.stderr.read()
    assert rss_after is not None, "".join(lines)
    assert peak >= 384 * 1024, peak          # the guest really touched its pages
    assert peak - rss_after >= 300 * 1024, (peak, rss_after)
    out = "".join(lines)
    assert "PROBE balloon target_pages=98304 actual_pages=98304" in out
    assert "PROBE balloon_deflate pages=98304 actual_pages=0" in out

    ref = run_qemu(f"{cmd} {QEMU_ECAM}", machine=QEMU_PCI, memory="512M",
                   extra=["-device", "virtio-balloon-pci"])
    assert ref.returncode == 0, ref.stdout
    assert "PROBE balloon target_pages=98304 actual_pages=98304" in ref.stdout


@pytest.fixture
def netns_tap():
    """A network namespace with tap0 (MTU 9000) and the echo helper on it."""
    import os
    import shutil
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("skipped: needs root and iproute2 for network namespaces")
    ns = f"vireo-test-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "sh", "-c",
                        "ip tuntap add tap0 mode tap && "
                        "sysctl -qw net.ipv6.conf.tap0.disable_ipv6=1 && "
                        "ip link set tap0 mtu 9000 up"], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns])


def echo_helper(ns):
    p = subprocess.Popen(["ip", "netns", "exec", ns, "/usr/bin/python3",
                          str(ROOT / "tests/net_echo.py"), "tap0", "--timeout", "30"],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


@pytest.mark.parametrize("irq", ["poll", "msix"])
def test_net_echo_same_on_vireo_and_qemu(netns_tap, irq):
    mac = "52:54:00:12:34:56"
    cmd = f"scenario=net n=64 irq={irq}"
    results = []
    for vmm in ("vireo", "qemu"):
        echo = echo_helper(netns_tap)
        try:
            if vmm == "vireo":
                run = run_vireo(cmd, extra=["--net", f"tap=tap0,mtu=9000,mac={mac}"],
                                netns=netns_tap)
            else:
                run = run_qemu(f"{cmd} {QEMU_ECAM}", machine=QEMU_PCI, netns=netns_tap, extra=[
                    "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
                    "-device", f"virtio-net-pci,netdev=n0,disable-legacy=on,mac={mac},"
                               "host_mtu=9000"])
        finally:
            echo.kill()
        assert run.returncode == 0, run.stdout + run.stderr
        results.append(run)
    for run in results:
        net = run.all("net")[0]
        assert net == {"mac": mac, "sent": "64", "received": "64", "mismatches": "0"}
        assert run.all("net_stats")[0]["max_frame"] == "9014"


@pytest.mark.parametrize("aio", AIO)
def test_two_disks_are_independent(tmp_path, aio):
    a, b = tmp_path / "a.qcow2", tmp_path / "b.raw"
    make_image(a, "qcow2")
    make_image(b, "raw")
    run = run_vireo("scenario=blk blk_dev=1 seed=3 n=32",
                    extra=["--disk", f"path={a},format=qcow2,serial=first,aio={aio}",
                           "--disk", f"path={b},format=raw,serial=second,aio={aio}"])
    assert run.returncode == 0, run.stdout + run.stderr
    blk = run.all("blk")[0]
    assert blk["serial"] == "second" and blk["mismatches"] == "0"
    expected, _ = expected_image(tmp_path, 3, 32)
    assert subprocess.run(["cmp", str(b), str(expected)]).returncode == 0
    # the first disk was not written
    m = subprocess.run(["qemu-img", "map", "--output=json", str(a)], capture_output=True,
                       text=True, check=True)
    assert '"data": true' not in m.stdout
