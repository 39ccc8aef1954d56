"""Debian's unmodified kernel as the guest (DESIGN §5; docs/linux-guest-tests.md).

The guest's /init (tests/linux/init) runs the scenarios named by vireo.test=
on the kernel command line and reports "LINUX [name] key=value..." lines;
the tests also check the host side: the disk images after power-off, the
HTTP helper's view of the transfers (tests/linux/net_peer.py).

Each scenario runs on vireo and on QEMU, the reference, in the same place:
directly on a host with hardware virtualization, in the nested test host
elsewhere (an unmodified kernel cannot boot on a KVM that emulates CPL0;
the hw_virt marker, tests/nested/hwvirt.py). /init's parts also run under the
host's busybox (loop devices, the host's own virtio-rng, the HTTP helper over
loopback)."""
import hashlib
import os
import pathlib
import random
import shutil
import socket
import subprocess

import pytest

from conftest import (BUILD, ROOT, have_hw_virt, have_kvm, hw_virt, needs_kvm, needs_qemu,
                      needs_qemu_img, output_at_exit, qemu_hmp, run_vireo)

KIT = BUILD / "linux"
INIT = ROOT / "tests/linux/init"
NET_PEER = ROOT / "tests/linux/net_peer.py"
BASE_CMDLINE = "console=ttyS0 panic=-1 quiet"
BUSYBOX = "/bin/busybox"  # the binary mkinitramfs.sh puts into the initramfs

DISK_MIB = 64
BLK_SEED, BLK_MIB = 7, 4
GUEST_IP, HOST_IP, PEER_PORT, PEER_SEED, PEER_SIZE = "10.0.2.2/24", "10.0.2.1", 8080, 5, 4 << 20
MAC = "52:54:00:12:34:57"
BALLOON_MIB = 64

needs_busybox = pytest.mark.skipif(not os.access(BUSYBOX, os.X_OK),
                                   reason="skipped: busybox-static not installed")


def build_kit():
    """The kit, built (or found up to date) by mkinitramfs.sh. In the nested
    test host the checkout is read-only and apt has no package lists: there
    the host built it before the batch (LINUX_VM's prepare)."""
    if os.environ.get("VIREO_IN_L1"):
        missing = [f for f in ("vmlinuz", "initrd.img") if not (KIT / f).is_file()]
        assert not missing, f"{KIT}: no {missing} (built on the host before the batch)"
        return KIT
    if shutil.which("apt-get") is None:
        pytest.skip("skipped: no apt-get to fetch Debian's kernel")
    subprocess.run([str(ROOT / "tests/linux/mkinitramfs.sh"), str(KIT)], check=True,
                   timeout=600)
    return KIT


@pytest.fixture(scope="module")
def kit():
    return build_kit()


def linux_lines(stdout):
    """The guest's "LINUX ..." lines as {name: {key: value}}; lines that start
    with a key=value pair (no name) are merged under "". A line may start with
    firmware's escape sequences (QEMU's SeaBIOS clears the screen)."""
    out = {}
    for line in stdout.splitlines():
        at = line.find("LINUX ")
        if at < 0 or line.startswith("dmesg: "):
            continue
        toks = line[at:].split()[1:]
        name = "" if not toks or "=" in toks[0] else toks.pop(0)
        out.setdefault(name, {}).update(t.split("=", 1) for t in toks if "=" in t)
    return out


# Each Linux test runs on vireo and on QEMU, the reference (DESIGN §5), both
# where there is hardware virtualization: directly on a host that has it, in
# the nested test host (one L1 for all of them) elsewhere, QEMU with KVM
# there, so that the two are compared on the same footing.
LINUX_VM = hw_virt(prepare=build_kit)
VMMS = [pytest.param("vireo", marks=[needs_kvm, LINUX_VM]),
        pytest.param("qemu", marks=[needs_qemu, LINUX_VM])]


class Disk:
    def __init__(self, path, fmt, serial=None, readonly=False, cache=None, aio=None,
                 queues=None):
        self.path, self.fmt, self.serial, self.readonly = path, fmt, serial, readonly
        self.cache, self.aio, self.queues = cache, aio, queues


def vireo_args(disks, nic, rng, balloon_mib):
    args = []
    for d in disks:
        args += ["--disk", f"path={d.path},format={d.fmt}" +
                 (f",serial={d.serial}" if d.serial else "") + (",readonly" if d.readonly else "") +
                 (f",cache={d.cache}" if d.cache else "") + (f",aio={d.aio}" if d.aio else "") +
                 (f",queues={d.queues}" if d.queues else "")]
    if nic:
        args += ["--net", f"tap=tap0,mac={nic}"]
    if rng:
        args.append("--rng")
    if balloon_mib is not None:
        args.append(f"--balloon=target={balloon_mib}M")
    return args


def qemu_args(disks, nic, rng, balloon_mib, balloon_doo):
    args = []
    for i, d in enumerate(disks):
        args += ["-drive", f"file={d.path},if=none,id=d{i},format={d.fmt}" +
                 (",readonly=on" if d.readonly else "") +
                 (f",cache={d.cache}" if d.cache else "") + (f",aio={d.aio}" if d.aio else ""),
                 "-device", f"virtio-blk-pci,drive=d{i}" + (f",serial={d.serial}" if d.serial else "") +
                 (f",num-queues={d.queues}" if d.queues else "")]
    if nic:
        args += ["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
                 "-device", f"virtio-net-pci,netdev=n0,mac={nic}"]
    if rng:
        args += ["-device", "virtio-rng-pci"]
    if balloon_mib is not None:
        args += ["-device", "virtio-balloon-pci,free-page-reporting=on,deflate-on-oom=" +
                 ("on" if balloon_doo else "off")]
    return args


def run_qemu_linux(kit, cmdline, cpus, memory_mib, args, balloon_mib, netns, tmp):
    """QEMU on the kit, with KVM where there is hardware virtualization (as
    in the nested test host), TCG elsewhere; the balloon target, which QEMU
    takes only from its monitor, is set as soon as the monitor answers, long
    before the guest loads virtio_balloon."""
    import tempfile
    sock = os.path.join(tempfile.mkdtemp(dir=tmp), "mon")
    accel = "kvm" if have_hw_virt() and have_kvm() else "tcg"
    cmd = ["qemu-system-x86_64", "-accel", accel, "-M", "pc", "-m", f"{memory_mib}M",
           "-smp", str(cpus), "-nographic", "-nodefaults", "-serial", "stdio", "-no-reboot",
           "-kernel", str(kit / "vmlinuz"), "-initrd", str(kit / "initrd.img"),
           "-append", cmdline, "-monitor", f"unix:{sock},server=on,wait=off", *args]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        if balloon_mib is not None:
            qemu_hmp(sock, f"balloon {memory_mib - balloon_mib}")
        out, err = output_at_exit(p, 150, "qemu-system-x86_64")
    finally:
        if p.poll() is None:
            p.kill()        # not waited for: it may never end
    return p.returncode, out, err


def boot(kit, vmm, cmdline="", cpus=1, memory_mib=256, disks=(), nic=None, rng=False,
         balloon_mib=None, balloon_doo=False, netns=None, tmp="/tmp", keep_output=False):
    """Boots the kit's kernel under VMM with the given virtio devices; asserts
    a clean run (power-off, every module loaded, no scenario failed) and
    returns the LINUX lines (keep_output: and the whole console, as
    "output")."""
    cmdline = f"{BASE_CMDLINE} {cmdline}".strip()
    if vmm == "vireo":
        run = run_vireo(cmdline, cpus=cpus, memory=f"{memory_mib}M", kernel=kit / "vmlinuz",
                        extra=["--initrd", str(kit / "initrd.img"),
                               *vireo_args(disks, nic, rng, balloon_mib)],
                        netns=netns, timeout=150)
        rc, out, err = run.returncode, run.stdout, run.stderr
    else:
        rc, out, err = run_qemu_linux(kit, cmdline, cpus, memory_mib,
                                      qemu_args(disks, nic, rng, balloon_mib, balloon_doo),
                                      balloon_mib, netns, tmp)
    log = failure_log(rc, out, err)
    assert rc == 0, log
    lines = linux_lines(out)
    facts = lines.get("", {})
    assert facts.get("done") == "1", log
    assert "insmod_failed" not in facts, log
    assert "unknown_test" not in facts, log
    assert facts.get("fails") == "0", log
    if keep_output:
        lines["output"] = out
    return lines


def failure_log(rc, out, err):
    """What a failed boot says, most telling first (a CI report may show only
    its start): the exit status and the VMM's stderr, the LINUX lines, the end
    of the console, then the end of the guest's dmesg (printed when a
    scenario failed, or by the dmesg scenario)."""
    lines = out.splitlines()
    dmesg = [l for l in lines if l.startswith("dmesg: ")]
    console = [l for l in lines if not l.startswith("dmesg: ")]
    return "\n".join([f"exit status {rc}; stderr ends with:", err[-2000:].rstrip(),
                      "LINUX lines:", *(l for l in console if "LINUX " in l),
                      "the console ends with:", *console[-40:],
                      "dmesg ends with:", *dmesg[-80:]])


def blk_pattern(seed, first, count):
    """The bytes the guest's blk_pattern writes (tests/linux/init)."""
    return b"".join(b"%-511s\n" % (b"vireo-linux-blk seed=%d sector=%d" % (seed, i))
                    for i in range(first, first + count))


def expected_disk(path, seed, mib, disk_mib):
    """A raw image of what the guest's blk scenario leaves on a fresh disk:
    the pattern over the first MIB MiB and the last MiB, zeros elsewhere (the
    MiB it discards was never written)."""
    sectors = disk_mib * 2048
    head, tail = blk_pattern(seed, 0, mib * 2048), blk_pattern(seed, sectors - 2048, 2048)
    with open(path, "wb") as f:
        f.truncate(disk_mib << 20)
        f.write(head)
        f.seek((sectors - 2048) * 512)
        f.write(tail)
    return hashlib.md5(head + tail).hexdigest()


def busybox_sh(script, tmp_path, **env):
    """Runs SCRIPT in Debian's busybox sh with /init's functions loaded, every
    applet ahead of the host's commands on PATH (as in the guest)."""
    bindir = tmp_path / "bin"
    if not bindir.exists():
        bindir.mkdir()
        subprocess.run([BUSYBOX, "--install", "-s", str(bindir)], check=True)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "VIREO_INIT_LIB": "1",
           "VIREO_TMP": str(tmp_path), **env}
    return subprocess.run([BUSYBOX, "sh", "-c", f". {INIT}\n{script}"], env=env,
                          capture_output=True, text=True, timeout=60)


# --- runs everywhere ---------------------------------------------------------

def test_kit_has_kernel_modules_and_init(kit):
    assert (kit / "vmlinuz").read_bytes()[0x202:0x206] == b"HdrS"
    listing = subprocess.run(f"zcat {kit / 'initrd.img'} | cpio -t --quiet", shell=True,
                             capture_output=True, text=True, check=True).stdout.split()
    for f in ("init", "bin/busybox", "lib/modules/virtio_pci.ko", "lib/modules/virtio_blk.ko",
              "lib/modules/virtio_net.ko", "lib/modules/virtio_balloon.ko",
              "lib/modules/virtio-rng.ko", "lib/modules/load-order"):
        assert f in listing, f
    order = subprocess.run(f"zcat {kit / 'initrd.img'} | cpio -i --quiet --to-stdout "
                           "lib/modules/load-order", shell=True, capture_output=True, text=True,
                           check=True).stdout.split()
    # each module after what it depends on (modules.dep), the devices' last
    for before, after in (("virtio.ko", "virtio_pci.ko"), ("virtio_ring.ko", "virtio_pci.ko"),
                          ("virtio_pci_modern_dev.ko", "virtio_pci.ko"),
                          ("virtio_pci.ko", "virtio_blk.ko"), ("net_failover.ko", "virtio_net.ko"),
                          ("failover.ko", "net_failover.ko")):
        assert order.index(before) < order.index(after), (before, after)


@needs_busybox
def test_init_uses_only_busybox_applets_and_parses():
    applets = set(subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True,
                                 check=True).stdout.split())
    used = {"awk", "base64", "blkdiscard", "blockdev", "cat", "cmp", "cut", "dd", "dmesg",
            "grep", "head", "insmod", "ip", "ls", "md5sum", "mount", "nc", "od", "ping", "poweroff",
            "readlink", "rm", "sed", "sleep", "sort", "sync", "tail", "timeout", "tr", "uname",
            "wc", "wget"}
    assert used <= applets, used - applets
    r = subprocess.run([BUSYBOX, "sh", "-n", str(INIT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@needs_busybox
def test_init_functions_under_host_busybox(tmp_path):
    """/init's pure parts, run by the same busybox binary the guest runs: the
    command line, the scenario list, the blk pattern (which the host-side disk
    check rebuilds in Python) and the byte counter of the rng scenario."""
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyS0 vireo.test=rng,all,bogus vireo.seed=9 quiet\n")
    r = busybox_sh('echo "seed=$(param vireo.seed 1) port=$(param vireo.port 8080)"\n'
                   'echo "tests=$(tests "$(param vireo.test "")" 2>/dev/null | tr " " ,)"\n'
                   'tests bogus', tmp_path, CMDLINE=str(cmdline))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["seed=9 port=8080", "tests=rng,blk,net,balloon", ""]
    assert r.stderr.strip() == "LINUX unknown_test=bogus"

    r = busybox_sh(f"blk_pattern {BLK_SEED} 4094 4 > {tmp_path}/p; md5sum < {tmp_path}/p",
                   tmp_path)
    assert r.stdout.split()[0] == hashlib.md5(blk_pattern(BLK_SEED, 4094, 4)).hexdigest()

    (tmp_path / "bytes").write_bytes(bytes(range(256)) * 3 + b"\0")
    (tmp_path / "zeros").write_bytes(bytes(4096))
    r = busybox_sh(f"distinct {tmp_path}/bytes; distinct {tmp_path}/zeros", tmp_path)
    assert r.stdout.split() == ["256", "1"]

    r = busybox_sh("failed x; failed y; echo \"$x $y $fails\"", tmp_path)
    assert r.stdout.strip() == "fail fail 2"


def host_rng_current():
    try:
        with open("/sys/class/misc/hw_random/rng_current") as f:
            return f.read().strip()
    except OSError:
        return ""


@needs_busybox
@pytest.mark.skipif(not host_rng_current().startswith("virtio_rng"),
                    reason="skipped: this host has no virtio-rng")
def test_rng_scenario_on_this_hosts_virtio_rng(tmp_path):
    """Our test machines are virtio guests themselves: /init's rng scenario
    runs unchanged against the host kernel's virtio_rng and /dev/hwrng."""
    r = busybox_sh("test_rng", tmp_path)
    rng = linux_lines(r.stdout)["rng"]
    assert rng["current"].startswith("virtio_rng."), rng
    assert rng["bytes"] == "4096" and int(rng["distinct"]) >= 250, rng


@needs_busybox
def test_balloon_and_net_helpers_on_this_host(tmp_path):
    """The balloon scenario with its module load stubbed and a target of 0
    (its arithmetic, meminfo/vmstat parsing and feature bits); the lookup of
    the virtio_net interface where the host has one."""
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "features").write_text("0011010" + "0" * 57 + "\n")
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("vireo.balloon_kb=0\n")
    r = busybox_sh(f"load() {{ :; }}; virtio_dev() {{ echo {dev}; }}; test_balloon", tmp_path,
                   CMDLINE=str(cmdline))
    b = linux_lines(r.stdout)["balloon"]
    assert (b["deflate_on_oom"], b["reporting"], b["target_kb"], b["balloon_kb"]) == \
        ("1", "1", "0", "0"), b
    for k in ("memtotal_before_kb", "memtotal_after_kb", "memfree_before_kb",
              "memfree_after_kb"):
        assert int(b[k]) > 0, b
    virtio_nics = [d.name for d in pathlib.Path("/sys/class/net").iterdir()
                   if os.path.realpath(d / "device/driver").endswith("/virtio_net")]
    r = busybox_sh("net_if", tmp_path)
    assert (r.stdout.strip() in virtio_nics) if virtio_nics else r.stdout.strip() == ""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peer_md5():
    """md5 of the blob net_peer.py serves (its blob())."""
    return hashlib.md5(random.Random(PEER_SEED).randbytes(PEER_SIZE)).hexdigest()


def start_peer(port, netns=None):
    args = ["/usr/bin/python3", str(NET_PEER), "--port", str(port), "--seed", str(PEER_SEED),
            "--size", str(PEER_SIZE), "--timeout", "300"]
    if netns:
        args = ["ip", "netns", "exec", netns, *args]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def stop_peer(p):
    p.terminate()
    return p.communicate(timeout=10)[0].splitlines()


@needs_busybox
def test_net_transfer_against_the_http_helper(tmp_path):
    """The net scenario's TCP part (busybox wget both ways, base64 upload)
    against net_peer.py over loopback: the protocol the guest will speak."""
    port = free_port()
    peer = start_peer(port)
    try:
        r = busybox_sh(f'net_transfer 127.0.0.1 {port}; echo "$dl $up $fails"', tmp_path)
    finally:
        served = stop_peer(peer)
    digest = peer_md5()
    assert r.stdout.split() == [digest, digest, "0"], r.stdout + r.stderr
    assert served == [f"get bytes={PEER_SIZE} md5={digest}",
                      f"upload bytes={PEER_SIZE} md5={digest}"]


# --- the kernel on vireo and on QEMU (hardware virtualization, or L1) ---------

@pytest.mark.parametrize("vmm", VMMS)
def test_debian_kernel_boots_on_two_cpus(kit, vmm, tmp_path):
    facts = boot(kit, vmm, cpus=2, memory_mib=256, tmp=tmp_path)[""]
    assert facts["cpus"] == "2"
    # MemTotal is RAM less what the kernel keeps for itself.
    assert 200 * 1024 < int(facts["memtotal_kb"]) <= 256 * 1024


def blk_disks(tmp_path, fmt):
    """A fresh DISK_MIB disk in FMT, and a read-only raw disk with known
    content; returns their paths and the second one's bytes."""
    img = tmp_path / f"linux.{fmt}"
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(img), f"{DISK_MIB}M"],
                   check=True)
    ro = tmp_path / "ro.raw"
    ro_bytes = blk_pattern(99, 0, 2048 * 8)
    ro.write_bytes(ro_bytes)
    return img, ro, ro_bytes


def blk_devices(img, fmt, ro):
    return [Disk(img, fmt, serial="linux0"), Disk(ro, "raw", readonly=True)]


def check_blk(blk, tmp_path, img, fmt, ro=None, ro_bytes=None, virtio=True, mib=BLK_MIB):
    """The guest's report, then the image as the host sees it after power-off.
    virtio=False: /init's blk code ran on the host's loop devices."""
    expected = tmp_path / "expected.raw"
    md5 = expected_disk(expected, BLK_SEED, mib, DISK_MIB)
    if virtio:
        assert blk["bound"] == ("1" if ro is None else "2"), blk
        assert blk["serial"] == "linux0", blk
    assert blk["size_sectors"] == str(DISK_MIB * 2048), blk
    assert blk["roundtrip"] == "ok", blk
    assert blk["discard"] == "ok", blk          # vireo offers VIRTIO_BLK_F_DISCARD
    assert blk["md5"] == md5, blk
    if fmt == "qcow2":
        subprocess.run(["qemu-img", "check", "-q", str(img)], check=True)
    cmp = subprocess.run(["qemu-img", "compare", "-q", "-f", fmt, "-F", "raw", str(img),
                          str(expected)], capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    if ro is not None:
        assert blk["vdb_ro"] == "1" and blk["vdb_write"] == "refused", blk
        assert ro.read_bytes() == ro_bytes


@needs_busybox
@needs_qemu_img
def test_blk_scenario_on_loop_devices(tmp_path):
    """/init's blk scenario, run by the guest's busybox against loop devices
    on the host (standing for /dev/vda and a read-only /dev/vdb), then the
    host-side check of the Linux blk test on the image: the dd offsets, the
    discard range, the read-only refusal and the expected image agree."""
    if os.geteuid() != 0 or shutil.which("losetup") is None or \
            not os.path.exists("/dev/loop-control"):
        pytest.skip("skipped: needs root and loop devices")
    img, ro, ro_bytes = blk_disks(tmp_path, "raw")
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(f"vireo.seed={BLK_SEED} vireo.blk_mib={BLK_MIB}\n")
    loops = []
    try:
        for args in ([str(img)], ["-r", str(ro)]):
            loops.append(subprocess.run(["losetup", "-f", "--show", *args], check=True,
                                        capture_output=True, text=True).stdout.strip())
        r = busybox_sh("test_blk; echo \"LINUX fails=$fails\"", tmp_path, CMDLINE=str(cmdline),
                       VIREO_VDA=loops[0][len("/dev/"):], VIREO_VDB=loops[1][len("/dev/"):],
                       VIREO_DROP_CACHES=str(tmp_path / "drop_caches"))
    finally:
        for dev in loops:
            subprocess.run(["losetup", "-d", dev])
    lines = linux_lines(r.stdout)
    assert lines[""]["fails"] == "0", r.stdout + r.stderr
    check_blk(lines["blk"], tmp_path, img, "raw", ro, ro_bytes, virtio=False)


@needs_qemu_img
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("vmm", VMMS)
def test_linux_blk_roundtrip(kit, tmp_path, vmm, fmt):
    """virtio_blk binds; a pattern written with dd (fsync) at the start and
    end of /dev/vda reads back after dropping the caches; a discard works; a
    read-only second disk refuses writes. After power-off the image holds
    exactly the pattern (qemu-img compare) and the read-only one is intact."""
    img, ro, ro_bytes = blk_disks(tmp_path, fmt)
    lines = boot(kit, vmm, f"vireo.test=blk vireo.seed={BLK_SEED} vireo.blk_mib={BLK_MIB}",
                 disks=blk_devices(img, fmt, ro), tmp=tmp_path)
    check_blk(lines["blk"], tmp_path, img, fmt, ro, ro_bytes)


@pytest.fixture
def netns_tap():
    """A network namespace with tap0 at HOST_IP/24, the HTTP helper on it."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("skipped: needs root and iproute2 for network namespaces")
    ns = f"vireo-linux-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    peer = None
    try:
        subprocess.run(["ip", "netns", "exec", ns, "sh", "-c",
                        "ip link set lo up && ip tuntap add tap0 mode tap && "
                        "sysctl -qw net.ipv6.conf.tap0.disable_ipv6=1 && "
                        f"ip addr add {HOST_IP}/24 dev tap0 && ip link set tap0 up"],
                       check=True)
        peer = start_peer(PEER_PORT, ns)
        yield ns, peer
    finally:
        if peer and peer.poll() is None:
            peer.kill()
            peer.wait()
        subprocess.run(["ip", "netns", "del", ns])


NET_CMDLINE = f"vireo.ip={GUEST_IP} vireo.peer={HOST_IP} vireo.port={PEER_PORT}"


def check_net(net, peer):
    digest = peer_md5()
    assert net["bound"] == "1", net
    assert net["mac"] == MAC, net
    assert net["operstate"] == "up", net
    assert net["ping"] == "ok", net
    assert net["download_md5"] == digest, net
    assert net["upload_md5"] == digest, net
    served = stop_peer(peer)
    assert f"get bytes={PEER_SIZE} md5={digest}" in served, served
    assert f"upload bytes={PEER_SIZE} md5={digest}" in served, served


@pytest.mark.parametrize("vmm", VMMS)
def test_linux_net_ping_and_tcp(kit, netns_tap, vmm, tmp_path):
    """virtio_net binds with our MAC; the guest (10.0.2.2) pings the host end
    of the tap (10.0.2.1), then fetches 4 MiB over HTTP from the helper and
    posts it back: both sides see the same md5."""
    ns, peer = netns_tap
    lines = boot(kit, vmm, f"vireo.test=net {NET_CMDLINE}", nic=MAC, netns=ns, tmp=tmp_path)
    check_net(lines["net"], peer)


def check_rng(rng):
    assert rng["bound"] == "1", rng
    assert rng["current"] == "virtio_rng.0", rng
    assert rng["bytes"] == "4096", rng
    assert int(rng["distinct"]) >= 250, rng     # 256 but for a 3e-5 chance


@pytest.mark.parametrize("vmm", VMMS)
def test_linux_rng(kit, vmm, tmp_path):
    """virtio_rng binds and the hwrng core makes it current; 4 KiB read from
    /dev/hwrng look random."""
    check_rng(boot(kit, vmm, "vireo.test=rng", rng=True, tmp=tmp_path)["rng"])


def check_balloon(b, target_kb):
    assert b["bound"] == "1", b
    assert b["target_kb"] == str(target_kb), b
    assert b["balloon_kb"] == str(target_kb), b  # vmstat balloon_inflate - balloon_deflate
    total_drop = int(b["memtotal_before_kb"]) - int(b["memtotal_after_kb"])
    free_drop = int(b["memfree_before_kb"]) - int(b["memfree_after_kb"])
    # Linux 6.1 (virtio_balloon.c, fill_balloon): without DEFLATE_ON_OOM the
    # pages leave MemTotal (adjust_managed_page_count); with it they count as
    # used. Either way MemFree drops by the target.
    assert target_kb * 90 // 100 <= free_drop <= target_kb + 16 * 1024, b
    if b["deflate_on_oom"] == "1":
        assert abs(total_drop) <= 1024, b
    else:
        assert target_kb <= total_drop <= target_kb + 1024, b


@pytest.mark.parametrize("vmm,doo", [
    pytest.param("vireo", None, marks=[needs_kvm, LINUX_VM]),
    pytest.param("qemu", False, marks=[needs_qemu, LINUX_VM]),
    pytest.param("qemu", True, marks=[needs_qemu, LINUX_VM])])
def test_linux_balloon_inflates_to_the_boot_target(kit, vmm, doo, tmp_path):
    """With a 64 MiB target set before the driver loads, it inflates as soon
    as it probes: the balloon holds 64 MiB (/proc/vmstat), MemFree drops by as
    much, MemTotal too unless deflate-on-OOM was negotiated (vireo offers it;
    QEMU runs both ways)."""
    target_kb = BALLOON_MIB * 1024
    b = boot(kit, vmm, f"vireo.test=balloon vireo.balloon_kb={target_kb}", memory_mib=256,
             balloon_mib=BALLOON_MIB, balloon_doo=doo, tmp=tmp_path)["balloon"]
    check_balloon(b, target_kb)
    if doo is not None:
        assert b["deflate_on_oom"] == ("1" if doo else "0"), b


@needs_qemu_img
@pytest.mark.parametrize("vmm", VMMS)
def test_linux_all_devices_on_two_cpus(kit, tmp_path, netns_tap, vmm):
    """Every device at once (their MSI-X vectors and queues side by side), on
    2 vCPUs: each scenario passes as it does alone."""
    ns, peer = netns_tap
    img, ro, ro_bytes = blk_disks(tmp_path, "qcow2")
    target_kb = BALLOON_MIB * 1024
    lines = boot(kit, vmm, f"vireo.test=all vireo.seed={BLK_SEED} vireo.blk_mib={BLK_MIB} "
                 f"{NET_CMDLINE} vireo.balloon_kb={target_kb}", cpus=2, memory_mib=512,
                 disks=blk_devices(img, "qcow2", ro), nic=MAC, rng=True,
                 balloon_mib=BALLOON_MIB, balloon_doo=True, netns=ns, tmp=tmp_path)
    assert lines[""]["cpus"] == "2"
    check_blk(lines["blk"], tmp_path, img, "qcow2", ro, ro_bytes)
    check_net(lines["net"], peer)
    check_rng(lines["rng"])
    check_balloon(lines["balloon"], target_kb)



def accepts_o_direct(d):
    try:
        fd = os.open(d / ".o_direct", os.O_CREAT | os.O_WRONLY | os.O_DIRECT, 0o600)
    except OSError:
        return False
    os.close(fd)
    os.unlink(d / ".o_direct")
    return True


@pytest.fixture
def direct_dir(tmp_path):
    """A directory whose file system accepts O_DIRECT, for cache=none and
    directsync: tmp_path if it does (a host's disk, tmpfs since Linux 6.6),
    else an ext4 on a loop device in it (the nested test host's /tmp is the
    tmpfs of Linux 6.1, which refuses O_DIRECT, and its checkout is
    read-only)."""
    if accepts_o_direct(tmp_path):
        yield tmp_path
        return
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4") or not shutil.which("losetup"):
        pytest.skip("skipped: no O_DIRECT under tmp_path, and no root, mkfs.ext4 or losetup "
                    "for an ext4 on a loop device")
    subprocess.run(["modprobe", "-q", "loop"], check=False)
    fs, mnt = tmp_path / "ext4.img", tmp_path / "ext4"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "1G", str(fs)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(fs)], check=True)
    loop = subprocess.run(["losetup", "-f", "--show", str(fs)], check=True, capture_output=True,
                          text=True).stdout.strip()
    try:
        subprocess.run(["mount", "-t", "ext4", loop, str(mnt)], check=True)
        try:
            assert accepts_o_direct(mnt)
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)


# One disk per cache mode, aio alternating, raw and qcow2 in turn (qcow2 runs
# on the worker threads whatever aio says; raw under io_uring moves data on
# the ring, O_DIRECT and O_DSYNC included).
CACHE_DISKS = [("none", "raw", "io_uring"), ("writeback", "qcow2", "threads"),
               ("writethrough", "raw", "io_uring"), ("directsync", "qcow2", "threads"),
               ("unsafe", "raw", "io_uring")]
MQ_CPUS = 4
CACHE_BLK_MIB = 1   # per cache-mode disk: five of them in one boot (the pattern is awk's work)


@needs_qemu_img
@pytest.mark.parametrize("vmm", VMMS)
def test_linux_blk_multiqueue_and_every_cache_mode(kit, tmp_path, direct_dir, vmm):
    """One boot on 4 vCPUs. A 4-queue disk: Linux makes 4 blk-mq hardware
    queues on 4 MSI-X vectors; one O_DIRECT dd per CPU (taskset) writes its
    own pattern into its own MiB, all at once, and all read back at once;
    every queue's vector interrupted. Five more disks, one per cache mode
    (docs/run.md), each pass the blk scenario. After power-off every image
    holds exactly what the guest wrote (qemu-img check for qcow2, compare)."""
    mq = direct_dir / "mq.raw"
    mq.write_bytes(b"")
    os.truncate(mq, DISK_MIB << 20)
    disks = [Disk(mq, "raw", serial="mq", cache="none", aio="io_uring", queues=MQ_CPUS)]
    images = {}
    for mode, fmt, aio in CACHE_DISKS:
        images[mode] = direct_dir / f"{mode}.{fmt}"
        subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(images[mode]),
                        f"{DISK_MIB}M"], check=True)
        disks.append(Disk(images[mode], fmt, serial=mode, cache=mode, aio=aio))
    lines = boot(kit, vmm, "vireo.test=blkmq,blkdisks vireo.mq_disk=mq "
                 f"vireo.blk_disks={','.join(m for m, _, _ in CACHE_DISKS)} "
                 f"vireo.seed={BLK_SEED} vireo.blk_mib={CACHE_BLK_MIB}",
                 cpus=MQ_CPUS, memory_mib=512, disks=disks, tmp=tmp_path)
    m = lines["blkmq"]
    assert m["cpus"] == str(MQ_CPUS), m
    assert m["queues"] == str(MQ_CPUS), m           # /sys/block/vdX/mq
    assert m["queue_vectors"] == str(MQ_CPUS), m    # virtioN-req.K: a vector per queue
    assert m["vectors_used"] == str(MQ_CPUS), m     # each CPU's queue completed on its own
    assert m["roundtrip"] == "ok", m
    data = mq.read_bytes()
    for i in range(MQ_CPUS):
        assert data[i << 20:(i + 1) << 20] == blk_pattern(BLK_SEED + i, i * 2048, 2048), i
    assert data[MQ_CPUS << 20:].count(0) == len(data) - (MQ_CPUS << 20)
    for mode, fmt, _ in CACHE_DISKS:
        blk = lines[f"blk_{mode}"]
        assert blk["serial"] == mode and blk["bound"] == str(len(disks)), blk
        check_blk(blk, tmp_path, images[mode], fmt, virtio=False, mib=CACHE_BLK_MIB)
