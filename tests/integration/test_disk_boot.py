"""A real Debian system booted from its disk (issue 15; docs/run.md "Firmware
boot", docs/linux-guest-tests.md): tests/linux/mkdiskimage.sh builds a
Debian 12 qcow2 image (systemd, the cloud kernel, GRUB in the MBR) on this
host; vireo boots it through SeaBIOS and GRUB from virtio-blk to systemd's
multi-user.target, whose marker unit says so, with the guest's clock, on the
serial console; its vNIC gets its address from dnsmasq (DHCP) on the host
side and talks to a peer there over TCP; the ACPI
power button (the control socket's powerdown) makes systemd shut the system
down, vireo exits 0, and the image is clean afterwards: the journal on it
closed with the power-off, no unit failed, e2fsck -n clean. QEMU -M pc with the
same SeaBIOS is the reference; the daemon's graceful stop does the same to a
VM defined with "firmware". The firmware starts in real mode: hw_virt."""
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from conftest import BUILD, ROOT, VIREO, LiveProbe, have_hw_virt, have_kvm, hw_virt, \
    needs_kvm, needs_qemu, qmp_command, scaled, stall_report, vireo_control, wait_until
from daemonutil import Daemon
from test_linux import HOST_IP, MAC
from test_linux_lifecycle import complaints

SEABIOS = "/usr/share/seabios/bios.bin"
IMAGE = BUILD / "debian" / "debian12.qcow2"
MARKER = "VIREO-SYSTEM-UP"
GRUB_LINE = "vireo-debian: GRUB loads Linux"   # grub.cfg's echo (mkdiskimage.sh)
DHCP_FIRST, DHCP_LAST = 100, 149  # dnsmasq's range: 10.0.2.100-149
PEER_PORT = 7777                 # the host-side peer the image's unit calls (mkdiskimage.sh)
PEER_HELLO = "VIREO-PEER-HELLO"


def build_image():
    """The image, built (or found up to date) by mkdiskimage.sh, which needs
    root, debootstrap and Debian's mirror; in the nested test host (a
    read-only checkout) the host built it before the batch. Only with
    VIREO_DISK_BOOT=1: each boot takes minutes in the nested test host, and
    one CI run (2026-12-06) saw vireo's boot stall once, not yet explained
    (docs/linux-guest-tests.md), so `make test` leaves these out."""
    if not os.environ.get("VIREO_DISK_BOOT"):
        pytest.skip("skipped: the Debian disk-boot tests run with VIREO_DISK_BOOT=1 "
                    "(docs/linux-guest-tests.md)")
    if os.environ.get("VIREO_IN_L1"):
        assert IMAGE.is_file(), f"{IMAGE}: missing (built on the host before the batch)"
        return IMAGE
    if os.geteuid() != 0 or shutil.which("debootstrap", path=os.environ.get("PATH", "") +
                                         ":/usr/sbin:/sbin") is None:
        pytest.skip("skipped: building the Debian image needs root and debootstrap")
    r = subprocess.run([str(ROOT / "tests/linux/mkdiskimage.sh"), str(IMAGE)],
                       capture_output=True, text=True, timeout=1200,
                       env={**os.environ, "VIREO": str(VIREO)})
    tail = "\n".join((r.stdout + r.stderr).splitlines()[-15:])
    if r.returncode == 75:   # the mirror cannot be reached
        pytest.skip(f"skipped: the Debian image cannot be built here:\n{tail}")
    assert r.returncode == 0, f"tests/linux/mkdiskimage.sh failed ({r.returncode}):\n{tail}"
    return IMAGE


@pytest.fixture(scope="module")
def image():
    return build_image()


# In the nested test host: vireo 114-148 s, QEMU 126-173 s (boot to power-off and the
# checks); the batch deadline allows ~4x.
DISK_VM = [needs_kvm, hw_virt(prepare=build_image, seconds=600),
           pytest.mark.skipif(not os.path.exists(SEABIOS),
                              reason="skipped: package seabios not installed")]


def overlay(tmp_path, base):
    """A qcow2 overlay on the (read-only, shared) image: the guest writes there."""
    disk = tmp_path / "disk.qcow2"
    subprocess.run([str(VIREO), "img", "create", "-f", "qcow2", "-b", str(base), "-F", "qcow2",
                    str(disk)], check=True, capture_output=True)
    return disk


# The host-side peer: answers each caller's line with PEER_HELLO and prints
# who called and what it said.
PEER = f"""
import socket
s = socket.create_server(("{HOST_IP}", {PEER_PORT}))
print("listening", flush=True)
while True:
    c, addr = s.accept()
    line = c.makefile().readline().strip()
    c.sendall(b"{PEER_HELLO}\\n")
    c.close()
    print(addr[0], line, flush=True)
"""


class HostSide:
    """The vNIC's host side, in a network namespace of its own: tap0 at
    HOST_IP/24, dnsmasq (the DHCP server libvirt and the field use) leasing
    from 10.0.2.100-149 on it, and the TCP peer on HOST_IP:PEER_PORT. VMMs
    run in the namespace (prefix)."""

    def __init__(self, tmp_path):
        self.ns = f"vireo-disk-{os.getpid()}"
        self.prefix = ["ip", "netns", "exec", self.ns]
        self.leases = tmp_path / "dnsmasq.leases"
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        self.dnsmasq = self.peer = None
        try:
            subprocess.run([*self.prefix, "sh", "-c",
                            "ip link set lo up && ip tuntap add tap0 mode tap && "
                            "sysctl -qw net.ipv6.conf.tap0.disable_ipv6=1 && "
                            f"ip addr add {HOST_IP}/24 dev tap0 && ip link set tap0 up"],
                           check=True)
            self.dnsmasq = subprocess.Popen(
                [*self.prefix, "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
                 "--interface=tap0", "--bind-interfaces", "--log-dhcp", "--log-facility=-",
                 "--user=root", "--group=root", f"--pid-file={tmp_path / 'dnsmasq.pid'}",
                 f"--dhcp-leasefile={self.leases}",
                 f"--dhcp-range=10.0.2.{DHCP_FIRST},10.0.2.{DHCP_LAST},255.255.255.0,1h"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True)
            self.peer = subprocess.Popen([*self.prefix, sys.executable, "-c", PEER],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         text=True)
            assert self.peer.stdout.readline() == "listening\n"
        except BaseException:
            self.close()
            raise

    def close(self):
        """Ends dnsmasq and the peer; returns their output."""
        outs = []
        for p in (self.dnsmasq, self.peer):
            if p is None:
                outs.append("")
                continue
            p.terminate()
            outs.append(p.communicate(timeout=10)[0] or "")
        subprocess.run(["ip", "netns", "del", self.ns])
        self.dnsmasq_log, self.peer_log = outs
        return outs

    def lease(self):
        """(MAC, address) of the one lease dnsmasq gave, else None."""
        try:
            rows = [line.split() for line in self.leases.read_text().splitlines()]
        except OSError:
            return None
        return (rows[0][1], rows[0][2]) if len(rows) == 1 else None

    def check_guest_network(self, console):
        """The guest took a lease from the range for its MAC, answered pings
        on that address, and (its unit) called the peer from it over TCP
        and got the peer's answer."""
        lease = wait_until(self.lease, 30, lambda: f"a lease in {self.leases}")
        mac, addr = lease
        assert mac == MAC and DHCP_FIRST <= int(addr.split(".")[3]) <= DHCP_LAST, lease
        m = re.search(r"peer: (.*) \(try \d+, addresses ([0-9. ]*)\)", console)
        assert m and m.group(1) == PEER_HELLO, (m and m.group(0), console[-3000:])
        assert m.group(2).split() == [addr], (m.group(0), lease)
        ping = subprocess.run([*self.prefix, "ping", "-c", "1", "-W", str(int(scaled(5))),
                               "-w", str(int(scaled(60))), addr], capture_output=True, text=True)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        return addr

    def check_logs(self, addr):
        """After close(): dnsmasq acknowledged the lease, the peer saw the
        guest call from it."""
        assert f"DHCPACK(tap0) {addr} {MAC}" in self.dnsmasq_log, self.dnsmasq_log[-3000:]
        assert f"{addr} vireo-guest {addr}" in self.peer_log, self.peer_log


def argv(vmm, disk, sock, prefix):
    if vmm == "vireo":
        cmd = [str(VIREO), "run", "--firmware", SEABIOS, "--memory", "512M",
               "--disk", f"path={disk},format=qcow2", "--net", f"tap=tap0,mac={MAC}",
               "--rng", "--balloon=target=64M", "--api-socket", sock]
    else:
        accel = "kvm" if have_hw_virt() and have_kvm() else "tcg"
        # QEMU's default CPU (qemu64, no TSC-deadline timer): with -cpu host
        # (EPYC under L1's TCG) this guest died at 7 s of its boot, not looked into.
        cmd = ["qemu-system-x86_64", "-accel", accel, "-M", "pc", "-m", "512M",
               "-bios", SEABIOS, "-nographic", "-nodefaults", "-serial", "stdio", "-no-reboot",
               "-drive", f"file={disk},if=none,id=d0,format=qcow2",
               "-device", "virtio-blk-pci,drive=d0,bootindex=1",
               "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
               "-device", f"virtio-net-pci,netdev=n0,mac={MAC}",
               "-device", "virtio-rng-pci", "-device", "virtio-balloon-pci",
               "-qmp", f"unix:{sock},server=on,wait=off"]
    return [*prefix, *cmd]


def check_disk(disk, tmp_path):
    """The guest's disk after its power-off, made raw: e2fsck -n of the root
    partition (from 1 MiB) is clean, and the journal on it (Debian 12's is
    persistent, in /var/log/journal; copied out with debugfs) shows the
    clean shutdown: systemd reached poweroff.target, journald was stopped by
    systemd-shutdown and closed its files (state OFFLINE, not ONLINE as a
    power cut leaves them), and no unit failed during the boot or the
    shutdown."""
    raw = tmp_path / "check.raw"
    subprocess.run([str(VIREO), "img", "convert", "-f", "qcow2", "-O", "raw", str(disk),
                    str(raw)], check=True, capture_output=True)
    part = f"{raw}?offset={1 << 20}"
    jdir = tmp_path / "journal"
    try:
        fsck = subprocess.run(["e2fsck", "-n", "-f", part], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        shutil.rmtree(jdir, ignore_errors=True)
        jdir.mkdir()
        subprocess.run(["debugfs", "-R", f"rdump /var/log/journal {jdir}", part],
                       check=True, capture_output=True)
    finally:
        raw.unlink()
    assert shutil.which("journalctl"), "reading the guest's journal needs journalctl (systemd)"
    journal = ["journalctl", "--no-pager", "-D", str(jdir / "journal")]
    header = subprocess.run([*journal, "--header"], capture_output=True, text=True).stdout
    states = re.findall(r"^State: (\S+)", header, re.M)
    assert states and set(states) == {"OFFLINE"}, header
    text = subprocess.run([*journal, "-o", "short-monotonic"], capture_output=True,
                          text=True).stdout
    assert "Reached target poweroff.target" in text, text[-4000:]
    assert re.search(r"systemd-journald\[\d+\]: Received SIGTERM from PID 1 "
                     r"\(systemd-shutdow\)", text), text[-4000:]
    failed = [line for line in text.splitlines()
              if re.search(r"Failed with result|[Ff]ailed to start|entered failed state", line)]
    assert not failed, "\n".join(failed)
    print("the journal's end:\n" + "\n".join(text.splitlines()[-8:]))


@pytest.mark.parametrize("vmm", [pytest.param("vireo", marks=DISK_VM),
                                 pytest.param("qemu", marks=[needs_qemu, *DISK_VM])])
def test_debian_boots_from_its_disk_and_powers_off(image, vmm, tmp_path):
    """SeaBIOS runs the disk's MBR, GRUB loads Debian's kernel and
    initramfs, root is /dev/vda1 and systemd reaches multi-user.target with
    the guest's clock right;
    networkd gets the vNIC's address from dnsmasq by DHCP, the host side
    pings it there and the guest calls the host-side peer over TCP.
    The power button makes systemd stop everything and power off: exit 0,
    the journal's clean shutdown, qemu-img check and e2fsck -n of the disk
    clean."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("skipped: needs root and iproute2 for network namespaces")
    disk = overlay(tmp_path, image)
    sock = str(tmp_path / "ctl")
    host = HostSide(tmp_path)
    try:
        guest = LiveProbe(argv(vmm, disk, sock, host.prefix))
        try:
            out = lambda: "".join(guest.out)  # noqa: E731
            start = time.monotonic()
            seen = wait_marker(out, guest.proc)
            print(f"{vmm}: {time.monotonic() - start:.1f} s to {MARKER}")
            assert MARKER in out(), out()[-3000:] + "".join(guest.err)[-3000:]
            check_guest_clock(out(), seen)
            check_devices_and_dmesg(out(), vmm)
            addr = host.check_guest_network(out())
            if vmm == "vireo":
                assert vireo_control(sock, action="powerdown")["ok"]
            else:
                assert qmp_command(sock, "system_powerdown") == {}
        except BaseException:
            guest.proc.kill()   # a check failed: no power button comes, no need to wait
            raise
        finally:
            result = guest.finish(timeout=120)
    finally:
        host.close()
    print(f"{vmm}: the console's end:\n{result.stdout[-2500:]}")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    host.check_logs(addr)
    check_clean_shutdown(result.stdout, disk, tmp_path)


def wait_marker(out, proc):
    """Waits for the marker line (or the VMM's end); returns the host's
    clock just before the last look that did not see it and just after the
    one that did: the guest printed it in between."""
    seen = [time.time(), None]

    def look():
        now = time.time()
        if re.search(MARKER + r" at [0-9.]+\r?\n", out()):
            seen[1] = time.time()
            return True
        seen[0] = now
        return proc.poll() is not None
    # A stall report on the way out: the nested host's known faults (an
    # emulator loop) are then recognised and re-run once (tests/nested/hwvirt.py).
    wait_until(look, 150, lambda: f"{MARKER}: {out()[-3000:]}\n{stall_report(proc.pid)}")
    return seen


def check_guest_clock(text, seen):
    """The guest's clock at the marker (read at boot from the RTC or
    kvmclock, never set since: the image has no NTP) is within 2 s of the
    host's while the line came."""
    guest = float(re.search(MARKER + r" at ([0-9.]+)", text).group(1))
    before, after = seen
    assert before - 2 <= guest <= after + 2, \
        f"guest clock {guest:.3f}, host {before:.3f}..{after:.3f}"


def check_devices_and_dmesg(text, vmm, want_bound=frozenset(
        {"virtio_blk", "virtio_net", "virtio_rng", "virtio_balloon"})):
    """Linux bound its drivers to the disk, the vNIC, the rng and the
    balloon (and to nothing else; the daemon's VMs have no rng), its timer
    is the LAPIC's TSC-deadline one, and its log has no complaint about the
    virtual hardware (the dmesg test's filter; on QEMU, the reference, they
    are printed only)."""
    # The image's service writes them into the kernel's log: each console
    # line starts with the kernel's timestamp.
    dmesg = [l.split("dmesg: ", 1)[1] for l in text.splitlines() if "dmesg: " in l]
    assert len(dmesg) > 100, text[-4000:]
    bound = {l.split("bound: ", 1)[1].split("/")[0] for l in text.splitlines()
             if "bound: " in l}
    assert bound == want_bound, bound
    # The LAPIC's TSC-deadline mode (CPUID says so, as QEMU -cpu host does): without it
    # Linux calibrates the LAPIC timer against the PIT and, on a busy host,
    # disables it ("APIC timer disabled due to verification failure").
    # (QEMU's qemu64 has none: its guest shows "lapic", printed only.)
    timer = re.search(r"clockevent: (\S+)", text)
    print(f"{vmm}: {timer and timer.group(0)}")
    if vmm == "vireo":
        assert timer and timer.group(1) == "lapic-deadline", timer and timer.group(0)
    bad = complaints(dmesg)
    print(f"{vmm}: dmesg complaints:", *bad, sep="\n  ")
    if vmm == "vireo":
        assert not bad, "\n".join(bad)


def check_clean_shutdown(text, disk, tmp_path):
    """The console shows the boot and systemd's shutdown; the disk is clean."""
    assert "SeaBIOS (version" in text and "Booting from Hard Disk" in text, text[:3000]
    assert GRUB_LINE in text, text[:3000]
    assert re.search(r"Welcome to .*Debian GNU/Linux 12", text), text[-4000:]
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    # systemd's shutdown, not a power cut: poweroff.target, then the file
    # systems unmounted (the root remounted read-only) before the power off.
    for step in ("Reached target poweroff.target - System Power Off",
                 "systemd-shutdown[1]: All filesystems unmounted.",
                 "systemd-shutdown[1]: Powering off.", "reboot: Power down"):
        assert step in plain, (step, plain[-4000:])
    assert "[FAILED]" not in plain, [line for line in plain.splitlines() if "FAILED" in line]
    if shutil.which("qemu-img"):
        check = subprocess.run(["qemu-img", "check", str(disk)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    check_disk(disk, tmp_path)


@pytest.mark.parametrize("vmm", [pytest.param("vireo", marks=DISK_VM)])
def test_daemon_stops_debian_gracefully(image, vmm, tmp_path):
    """Under the daemon, "firmware", the image as the VM's disk, a vNIC and
    a balloon: the system reaches multi-user.target with the guest's clock
    right, its drivers bound, its vNIC's address from DHCP and the peer's
    answer; `vireo vm stop` (graceful) presses the power button and systemd
    powers off (state stopped, "powered off"), and the disk and its journal
    are clean."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("skipped: needs root and iproute2 for network namespaces")
    disk = tmp_path / "deb.qcow2"
    shutil.copyfile(image, disk)
    host = HostSide(tmp_path)
    d = None
    try:
        d = Daemon(extra=["--storage", str(tmp_path)], prefix=host.prefix).start()
        d.ok("POST", "/vms", {"name": "deb", "firmware": SEABIOS, "memory": "512M",
                              "disks": [{"path": str(disk), "format": "qcow2"}],
                              "nics": [{"tap": "tap0", "mac": MAC}], "balloon": True},
             status=201)
        d.ok("POST", "/vms/deb/start")
        seen = wait_marker(lambda: d.vm_log("deb"), d.proc)
        assert MARKER in d.vm_log("deb"), d.vm_log("deb")[-4000:]
        check_guest_clock(d.vm_log("deb"), seen)
        check_devices_and_dmesg(d.vm_log("deb"), vmm,
                                {"virtio_blk", "virtio_net", "virtio_balloon"})
        addr = host.check_guest_network(d.vm_log("deb"))
        # The CLI's graceful stop: the power button, then waits for the end.
        stop = subprocess.run([str(VIREO), "vm", "--socket", d.socket, "stop", "deb",
                               "--timeout", str(int(scaled(60)))],
                              capture_output=True, text=True, timeout=scaled(60) + 30)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        js = d.vm("deb")
        assert js["state"] == "stopped" and js["reason"] == "powered off", js
        console = d.vm_log("deb")
    finally:
        if d:
            d.cleanup()
        host.close()
    host.check_logs(addr)
    check_clean_shutdown(console, disk, tmp_path)
