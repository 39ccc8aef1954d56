"""The disk-boot half of bench/linux-boot.sh (run as `bench/linux-boot.sh
disk [RUNS]`): the Debian image of tests/linux/mkdiskimage.sh through
SeaBIOS and GRUB to systemd's serial login prompt, on vireo and on QEMU, each
on its own qcow2 overlay, round robin; medians and ratios of process start
-> "login:"."""
import os
import statistics
import subprocess
import sys
import tempfile
import time

RUNS = int(sys.argv[1])
IMAGE = "build/debian/debian12.qcow2"
MEM = "512M"
SEABIOS = "/usr/share/seabios/bios.bin"
SEABIOS_MICROVM = "/usr/share/qemu/bios-microvm.bin"
TMP = tempfile.mkdtemp(prefix="db-")
QEMU = ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", MEM, "-nographic",
        "-nodefaults", "-serial", "stdio", "-no-reboot"]


def vireo(disk):
    return ["build/vireo", "run", "--firmware", SEABIOS, "--memory", MEM,
            "--disk", f"path={disk},format=qcow2"]


def qemu_pc(disk):
    return [*QEMU, "-M", "pc", "-bios", SEABIOS,
            "-drive", f"file={disk},if=none,id=d0,format=qcow2",
            "-device", "virtio-blk-pci,drive=d0,bootindex=1"]


def qemu_microvm(disk):
    # microvm's PCIe host (pcie=on) so that the disk is the same virtio-blk-pci.
    return [*QEMU, "-M", "microvm,pcie=on,rtc=on", "-bios", SEABIOS_MICROVM,
            "-drive", f"file={disk},if=none,id=d0,format=qcow2",
            "-device", "virtio-blk-pci,drive=d0,bootindex=1"]


VMMS = {"vireo": vireo, "qemu-pc": qemu_pc, "qemu-microvm": qemu_microvm}


def boot(name, argv_of):
    """Seconds from process start to the login prompt, on a fresh overlay."""
    disk = os.path.join(TMP, f"{name}.qcow2")
    subprocess.run(["build/vireo", "img", "create", "-f", "qcow2", "-b", os.path.abspath(IMAGE),
                    "-F", "qcow2", disk], check=True, capture_output=True)
    t0 = time.monotonic()
    p = subprocess.Popen(argv_of(disk), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    seen, tail = None, b""
    while seen is None:
        chunk = p.stdout.read1(65536)
        if not chunk:
            break
        tail = (tail + chunk)[-256:]
        if b"login:" in tail:
            seen = time.monotonic() - t0
    p.kill()
    p.wait()
    os.unlink(disk)
    if seen is None:
        raise SystemExit(f"{name}: no login prompt (exit {p.returncode})")
    return seen


times = {name: [] for name in VMMS}
for _ in range(RUNS):
    for name, argv_of in VMMS.items():
        times[name].append(boot(name, argv_of))
        print(f"{name:13s} {times[name][-1]:7.2f} s to the login prompt", flush=True)
med = {name: statistics.median(t) for name, t in times.items()}
for name, m in med.items():
    print(f"{name:13s} median {m:7.2f} s")
for name in VMMS:
    if name != "vireo":
        print(f"vireo/{name}: {med['vireo'] / med[name]:.2f}x")
print(f"({RUNS} runs each, {MEM}, 1 vCPU, medians)")
