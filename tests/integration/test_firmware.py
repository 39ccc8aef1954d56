"""Booting through firmware (issue 15; docs/run.md "Firmware"): Debian's
SeaBIOS on vireo with fw_cfg, the CMOS RTC and the shadowed BIOS, booting
a disk's MBR from virtio-blk, and a kernel handed over through fw_cfg as
QEMU -kernel does; QEMU -M pc, the reference, runs the same disk. The
firmware starts in real mode, which a KVM without hardware virtualization
(kvm_pvm) cannot run: those tests are hw_virt (the nested test host here),
and vireo refuses --firmware on such a host, which is tested here too."""
import datetime
import re
import time

import pytest

from conftest import VIREO, have_hw_virt, have_kvm, hw_virt, needs_kvm, needs_qemu, \
    run_until_exit, scaled
from daemonutil import Daemon, wait_for
from test_linux import BASE_CMDLINE, LINUX_VM, kit, linux_lines  # noqa: F401

SEABIOS = "/usr/share/seabios/bios.bin"
SEABIOS_256K = "/usr/share/seabios/bios-256k.bin"
MARKER = "VIREO-MBR-OK"
EXIT_CODE = 42

needs_seabios = pytest.mark.skipif(not __import__("os").path.exists(SEABIOS),
                                   reason="skipped: package seabios not installed")


def boot_sector():
    """A 512-byte MBR (real mode, loaded at 0:7c00) that prints MARKER on
    COM1 and writes EXIT_CODE to the debug-exit port 0xf4."""
    msg_at = 26
    code = bytes([
        0x31, 0xC0,              # xor ax, ax
        0x8E, 0xD8,              # mov ds, ax
        0xBA, 0xF8, 0x03,        # mov dx, 0x3f8
        0xBE, msg_at, 0x7C,      # mov si, 0x7c00 + msg_at
        0xFC,                    # cld
        0xAC,                    # next: lodsb
        0x84, 0xC0,              # test al, al
        0x74, 0x03,              # jz done
        0xEE,                    # out dx, al
        0xEB, 0xF8,              # jmp next
        0xB0, EXIT_CODE,         # done: mov al, EXIT_CODE
        0xE6, 0xF4,              # out 0xf4, al
        0xF4,                    # halt: hlt
        0xEB, 0xFD,              # jmp halt
    ])
    assert len(code) == msg_at
    mbr = bytearray(512)
    mbr[:msg_at] = code
    msg = (MARKER + "\r\n").encode() + b"\0"
    mbr[msg_at:msg_at + len(msg)] = msg
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr)


def mbr_disk(tmp_path):
    disk = tmp_path / "mbr.raw"
    with open(disk, "wb") as f:
        f.write(boot_sector())
        f.truncate(1 << 20)
    return disk


def vireo_firmware(firmware, *extra, memory="256M"):
    return [str(VIREO), "run", "--firmware", firmware, "--memory", memory, "--debug-exit",
            *extra]


@pytest.mark.skipif(have_hw_virt(), reason="skipped: this host has hardware virtualization")
@needs_kvm
@needs_seabios
def test_firmware_refused_without_hardware_virtualization(tmp_path):
    """kvm_pvm never comes back from real-mode code: a clear error at once,
    not a VM that hangs."""
    start = time.monotonic()
    status, out, err = run_until_exit(vireo_firmware(SEABIOS, "--disk",
                                                     f"path={mbr_disk(tmp_path)},format=raw"), 30)
    assert status == 1, (status, err)
    assert "--firmware needs hardware virtualization" in err
    assert time.monotonic() - start < 10


@needs_kvm
def test_bad_firmware_images_refused(tmp_path):
    small = tmp_path / "small.bin"
    small.write_bytes(b"\0" * 1000)
    status, out, err = run_until_exit(vireo_firmware(str(small)), 30)
    assert status == 1 and "a BIOS image is 64 KiB to 16 MiB" in err, err
    status, out, err = run_until_exit(vireo_firmware(str(tmp_path / "none.bin")), 30)
    assert status == 1 and "cannot read firmware" in err, err
    status, out, err = run_until_exit([str(VIREO), "run", "--memory", "64M"], 30)
    assert status == 1 and "--kernel or --firmware is required" in err, err


FIRMWARE_VM = [needs_kvm, needs_seabios, hw_virt]


@pytest.mark.parametrize("vmm,firmware", [
    pytest.param("vireo", SEABIOS, marks=FIRMWARE_VM),
    pytest.param("vireo", SEABIOS_256K, marks=FIRMWARE_VM),
    pytest.param("qemu", SEABIOS, marks=[needs_qemu, *FIRMWARE_VM]),
])
def test_seabios_boots_the_disk(vmm, firmware, tmp_path):
    """SeaBIOS, unmodified, finds the virtio-blk disk through bootorder,
    prints its banner and boot messages on COM1 (sercon: there is no VGA),
    and runs the disk's MBR, which prints the marker and exits."""
    disk = mbr_disk(tmp_path)
    if vmm == "vireo":
        argv = vireo_firmware(firmware, "--firmware-debug", "--disk", f"path={disk},format=raw")
        want = EXIT_CODE
    else:
        accel = "kvm" if have_kvm() else "tcg"
        argv = ["qemu-system-x86_64", "-accel", accel, "-M", "pc", "-m", "256M",
                "-bios", firmware, "-nographic", "-nodefaults", "-serial", "stdio",
                "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
                "-drive", f"file={disk},if=none,id=d0,format=raw",
                "-device", "virtio-blk-pci,drive=d0,bootindex=1"]
        want = (EXIT_CODE << 1) | 1
    start = time.monotonic()
    status, out, err = run_until_exit(argv, 60)
    took = time.monotonic() - start
    print(f"{vmm} {firmware}: {took:.2f} s to the MBR's exit")
    assert status == want, (status, out[-2000:], err[-4000:])
    assert "SeaBIOS (version" in out, out[-2000:]
    assert "Booting from Hard Disk" in out, out[-2000:]
    # SeaBIOS's serial console flushes its screen lazily (from its timer
    # interrupt, on QEMU too): the rest of its "..." and line end may
    # come in the middle of the MBR's direct writes.
    assert MARKER in re.sub(r"[.\r\n]", "", out.split("Booting from Hard Disk", 1)[1]), out
    if vmm == "vireo":
        # What vireo still lacks shows in SeaBIOS's own log: nothing worse.
        log = [line for line in err.splitlines() if line.startswith("firmware: ")]
        assert any("Found QEMU fw_cfg" in line for line in log), err[-4000:]
        assert any("fw_cfg DMA interface supported" in line for line in log), err[-4000:]
        assert any("found virtio-blk" in line for line in log), err[-4000:]
        # The i8042 answers SeaBIOS's probe (it waited 10,000 polls for one).
        assert not [line for line in log if "WARNING" in line], log


@pytest.mark.parametrize("vmm", [pytest.param("vireo", marks=[needs_kvm, needs_seabios,
                                                             LINUX_VM]),
                                 pytest.param("qemu", marks=[needs_qemu, needs_seabios,
                                                            LINUX_VM])])
def test_kernel_through_firmware(kit, vmm, tmp_path):  # noqa: F811
    """--kernel with --firmware: the kernel, initrd and command line go
    through fw_cfg to QEMU's linuxboot_dma option ROM, which SeaBIOS runs;
    Debian's kernel finds vireo's ACPI tables (installed by the firmware
    from etc/table-loader), reaches its /init and powers off through
    them. The kernel comes before the disk in the boot order, and the
    BARs SeaBIOS placed lie in a window of the DSDT's PCI root."""
    cmdline = f"{BASE_CMDLINE} vireo.test=dmesg"
    blank = tmp_path / "blank.raw"
    with open(blank, "wb") as f:
        f.truncate(16 << 20)
    if vmm == "vireo":
        argv = [str(VIREO), "run", "--firmware", SEABIOS, "--memory", "256M",
                "--kernel", str(kit / "vmlinuz"), "--initrd", str(kit / "initrd.img"),
                "--cmdline", cmdline, "--disk", f"path={blank},format=raw"]
    else:
        argv = ["qemu-system-x86_64", "-accel", "kvm", "-M", "pc", "-m", "256M",
                "-bios", SEABIOS, "-nographic", "-nodefaults", "-serial", "stdio",
                "-no-reboot", "-kernel", str(kit / "vmlinuz"),
                "-initrd", str(kit / "initrd.img"), "-append", cmdline]
    status, out, err = run_until_exit(argv, 90)
    lines = linux_lines(out)
    assert status == 0, (status, out[-3000:], err[-3000:])
    assert "Booting from ROM" in out, out[-3000:]
    assert lines.get("", {}).get("userspace") == "1", out[-3000:]
    assert lines.get("", {}).get("done") == "1", out[-3000:]
    if vmm == "vireo":
        xsdt = [line for line in out.splitlines() if "ACPI: XSDT" in line]
        assert xsdt and "VIREO" in xsdt[0], out[-3000:]
        assert "Boot failed" not in out, out[-3000:]
        assert "virtio_devices=1" in out, out[-3000:]
        bad = [line for line in out.splitlines()
               if "can't claim" in line or "no compatible bridge window" in line]
        assert not bad, bad


@pytest.mark.parametrize("vmm", [pytest.param("vireo", marks=[needs_kvm, LINUX_VM])])
def test_linux_reads_the_time_from_the_rtc(kit, vmm):  # noqa: F811
    """Linux's rtc_cmos binds to the DSDT's PNP0B00 and sets the system
    clock from it: the time it sets is the host's (UTC), to the second."""
    argv = [str(VIREO), "run", "--kernel", str(kit / "vmlinuz"), "--initrd",
            str(kit / "initrd.img"), "--memory", "256M", "--cmdline",
            f"{BASE_CMDLINE} vireo.test=dmesg"]
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    status, out, err = run_until_exit(argv, 90)
    after = datetime.datetime.now(datetime.timezone.utc)
    assert status == 0, (status, out[-3000:], err[-3000:])
    dmesg = [line for line in out.splitlines() if line.startswith("dmesg: ")]
    assert any("rtc_cmos" in line and "registered as rtc0" in line for line in dmesg), \
        "\n".join(dmesg)
    m = [re.search(r"setting system clock to (\S+)T(\S+) UTC", line) for line in dmesg]
    m = [x for x in m if x]
    assert m, "\n".join(line for line in dmesg if "rtc" in line)
    rtc = datetime.datetime.fromisoformat(f"{m[0][1]}T{m[0][2]}+00:00")
    assert before - datetime.timedelta(seconds=2) <= rtc <= after, (rtc, before, after)


@pytest.mark.parametrize("cpus", [1, 2])
@needs_kvm
@needs_seabios
@hw_virt
def test_probe_bzimage_through_firmware(cpus):
    """The probe guest's bzImage through SeaBIOS and QEMU's linuxboot ROM:
    its real-mode setup runs (entry linux32, as on QEMU), and it finds the
    same machine as when vireo boots it directly: CPUs (SMP through the
    MADT), _S5_, the ECAM and the tables, which the firmware put elsewhere;
    but a PC's FADT (not hardware-reduced, PM1a control block at 0x60c,
    no sleep register), and it powers off through PM1a_CNT (exit 0)."""
    from conftest import ProbeRun, run_vireo
    bzimage = VIREO.parent / "guest" / "probe.bzimage"
    # Both timed, process start to exit: what the firmware costs (docs/run.md).
    start = time.monotonic()
    direct = run_vireo("scenario=hello", cpus=cpus, timeout=60)
    took_direct = time.monotonic() - start
    assert direct.returncode == 0, direct.stdout + direct.stderr
    start = time.monotonic()
    run = run_vireo("scenario=hello", cpus=cpus, kernel=bzimage, timeout=60,
                    extra=["--firmware", SEABIOS])
    took = time.monotonic() - start
    print(f"probe, {cpus} vCPUs, start to exit: direct {took_direct:.2f} s, "
          f"probe.bzimage through SeaBIOS {took:.2f} s")
    assert run.returncode == 0, run.stdout + run.stderr
    # SeaBIOS's serial console flushes lazily: the rest of its output (the
    # screen clear) may come in front of the probe's first line.
    run = ProbeRun(run.returncode, re.sub(r"(?m)^.*?(?=PROBE )", "", run.stdout), run.stderr)
    assert run.all("boot")[0]["entry"] == "linux32", run.stdout
    want, got = direct.facts(), run.facts()
    for key in ("cpus", "s5", "ecam", "tables"):
        assert got.get(key) == want.get(key), (key, got, want)
    assert want.get("hw_reduced") == "1" and want.get("sleep_ctl") == "io:0x600", want
    assert got.get("hw_reduced") == "0" and got.get("pm1a_cnt") == "0x60c", got
    assert got.get("sleep_ctl") == "mem:0x0", got
    assert got.get("rsdp") != want.get("rsdp")   # where SeaBIOS put it


def test_daemon_definition_takes_firmware(daemon, tmp_path):
    """"firmware" is an alternative to "kernel" in a definition (or goes with
    it): absolute paths, at least one of them, an unreadable one refused;
    the definition shows it."""
    disk = mbr_disk(tmp_path)
    js = daemon.ok("POST", "/vms", {"name": "fw", "firmware": SEABIOS,
                                     "disks": [{"path": str(disk), "format": "raw"}]},
                   status=201)
    assert js["firmware"] == SEABIOS and "kernel" not in js, js
    for body, field in [({}, "'kernel' or 'firmware'"),
                        ({"firmware": "bios.bin"}, "'firmware'"),
                        ({"firmware": 7}, "'firmware'"),
                        ({"firmware": str(tmp_path / "none.bin")}, "firmware")]:
        st, js = daemon.request("POST", "/vms", {"name": "bad", **body})
        assert st == 400 and field in js["error"], (body, js)
    assert daemon.request("GET", "/vms/bad")[0] == 404


@pytest.mark.parametrize("vmm", [pytest.param("vireo", marks=FIRMWARE_VM)])
def test_daemon_boots_a_disk_through_firmware(vmm, tmp_path):
    """Under the daemon, a VM defined with "firmware" and a disk: SeaBIOS
    runs the disk's MBR, whose marker shows in the VM's log."""
    disk = mbr_disk(tmp_path)
    d = Daemon(extra=["--storage", str(tmp_path)]).start()
    try:
        d.ok("POST", "/vms", {"name": "fw", "firmware": SEABIOS, "memory": "128M",
                              "disks": [{"path": str(disk), "format": "raw"}]}, status=201)
        d.ok("POST", "/vms/fw/start")
        assert wait_for(lambda: "Booting from Hard Disk" in d.vm_log("fw") and
                        MARKER in re.sub(r"[.\r\n]", "", d.vm_log("fw").split(
                            "Booting from Hard Disk", 1)[-1]),
                        timeout=scaled(60)), d.vm_log("fw")[-3000:]
        assert "SeaBIOS (version" in d.vm_log("fw")
        assert d.stop("fw", force=True)["state"] == "stopped"
    finally:
        d.cleanup()


LINUX_COUNT = re.compile(r"LINUX count n=(\d+) up=([\d.]+)")
# What a kernel prints at the console level the kit leaves (emergencies)
# or at a boot: none of it may show after a restore or a migration.
BAD_CONSOLE = ("LINUX userspace=1", "LINUX kernel=", "SeaBIOS (version", "Kernel panic",
               "soft lockup", "BUG:", "Oops", "Call Trace")


def console(guest):
    with guest.cond:
        return "".join(guest.out)


def linux_counts(guest):
    """(n, uptime) of the count lines a LiveProbe got (its stdout is the
    console alone: no VMM line mixes in)."""
    return [(int(n), float(up)) for n, up in LINUX_COUNT.findall(console(guest))]


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not all(map(__import__("shutil").which, ("mkfs.ext4", "qemu-img"))),
                    reason="skipped: needs e2fsprogs and qemu-img")
@pytest.mark.parametrize("vmm", [pytest.param("vireo", marks=[needs_kvm, needs_seabios,
                                                             LINUX_VM])])
def test_firmware_vm_restores_and_migrates(kit, vmm, tmp_path):  # noqa: F811
    """A VM booted through SeaBIOS (2 vCPUs, Debian's kernel through fw_cfg,
    an ext4 disk it counts on) is paused and snapshotted; the VMM ends, and
    `run --restore` goes on from the snapshot's count (the ROM and fw_cfg
    come from the state: no firmware file given); that VMM then migrates it
    to a third (`run --incoming`), where it goes on again. One boot; no
    firmware or kernel start lines, no kernel emergency, after it."""
    from conftest import LiveProbe, vireo_control, wait_until
    from test_linux_snapshot import ext4_qcow2
    img, snap = ext4_qcow2(tmp_path), tmp_path / "snap"
    socks = [str(tmp_path / f"{n}.sock") for n in "abc"]
    vms = []
    try:
        vms.append(LiveProbe([str(VIREO), "run", "--firmware", SEABIOS, "--cpus", "2",
                              "--memory", "256M", "--kernel", str(kit / "vmlinuz"),
                              "--initrd", str(kit / "initrd.img"),
                              "--cmdline", f"{BASE_CMDLINE} vireo.test=count",
                              "--disk", f"path={img}", "--api-socket", socks[0]]))
        a = vms[0]
        wait_until(lambda: len(linux_counts(a)) >= 5, 150,
                   lambda: f"counting: {console(a)[-3000:]} {''.join(a.err)[-2000:]}")
        assert vireo_control(socks[0], action="pause")["ok"]
        at = linux_counts(a)[-1]
        r = vireo_control(socks[0], action="snapshot", dir=str(snap))
        assert r["ok"], r
        # The disk stays as the snapshot has it: this VMM never runs on.
        a.proc.kill()
        a.finish()

        vms.append(LiveProbe([str(VIREO), "run", "--restore", str(snap),
                              "--api-socket", socks[1]]))
        b = vms[1]
        wait_until(lambda: len(linux_counts(b)) >= 5, 60,
                   lambda: f"counting after the restore: {console(b)[-2000:]} "
                           f"{''.join(b.err)[-2000:]}")
        got = linux_counts(b)
        assert got[0][0] == at[0] + 1 and got[0][1] >= at[1], (at, got)

        port = free_port()
        vms.append(LiveProbe([str(VIREO), "run", "--incoming", f"tcp:127.0.0.1:{port}",
                              "--api-socket", socks[2]]))
        c = vms[2]
        wait_until(lambda: any("waiting for a migration" in line for line in c.err), 10,
                   lambda: "".join(c.err))
        r = vireo_control(socks[1], action="migrate", uri=f"tcp:127.0.0.1:{port}",
                          max_downtime_ms=300)
        assert r == {"ok": True, "state": "running"}, r
        assert b.wait_exit(60), "".join(b.err)
        assert b.proc.returncode == 0, "".join(b.err)
        last = linux_counts(b)[-1][0]
        wait_until(lambda: linux_counts(c) and linux_counts(c)[-1][0] >= last + 5, 60,
                   lambda: f"counting after the move: {console(c)[-2000:]} "
                           f"{''.join(c.err)[-2000:]}")
        # One count from the snapshot on, across the switch (a line the
        # switch cut is whole again when the consoles are joined): each n
        # once, in order, the uptime never back.
        seen = [(int(n), float(up)) for n, up in
                LINUX_COUNT.findall(console(b) + console(c))]
        ns = [n for n, _ in seen]
        assert ns == list(range(at[0] + 1, at[0] + 1 + len(ns))), ns
        assert all(u1 <= u2 for (_, u1), (_, u2) in zip(seen, seen[1:])), seen
        for g in (b, c):
            bad = [s for s in BAD_CONSOLE if s in console(g)]
            assert not bad, (bad, console(g)[-3000:])
    finally:
        for g in vms:
            g.proc.kill()
            g.finish()
