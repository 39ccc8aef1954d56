"""The disk-boot half of bench/linux-boot.sh (run as `bench/linux-boot.sh
disk [RUNS]`): the Debian image of tests/linux/mkdiskimage.sh through
SeaBIOS and GRUB to systemd's serial login prompt, on vireo and on QEMU, each
on its own qcow2 overlay, round robin; medians and ratios of process start
-> "login:", and where the time goes: the median time at which each stage's
first console line came: SeaBIOS's banner, GRUB's first words (its core
loaded by the MBR), grub.cfg's echo (before GRUB reads the kernel and the
initramfs through the BIOS), the kernel's banner, systemd's, the prompt;
and KVM's counters (exits by kind, emulated instructions, nested page
faults) in each stage, from the previous stage's first line to its own."""
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
# SeaBIOS's microvm build, from the seabios package: qemu-system-data's
# /usr/share/qemu/bios-microvm.bin is a link to qboot, which boots no disk.
SEABIOS_MICROVM = "/usr/share/seabios/bios-microvm.bin"
TMP = tempfile.mkdtemp(prefix="db-")
QEMU = ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", MEM, "-nographic",
        "-nodefaults", "-serial", "stdio", "-no-reboot"]
TIMEOUT = 300
# A console quiet this long is a stall (the longest quiet stage, GRUB reading
# the kernel through the BIOS, takes seconds): the tests' stall report (each
# thread's state, KVM's counters and last events) says whether it is the
# nested host's emulator loop (docs/linux-guest-tests.md) or the VMM's.
QUIET = 60
sys.path.insert(0, "tests/integration")
from conftest import stall_report  # noqa: E402
sys.path.insert(0, "bench")
from kvmstat import kvm_stats  # noqa: E402
# The console's first line of each stage, in order.
STAGES = [("firmware", b"SeaBIOS (version"), ("grub", b"GRUB loading"),
          ("grub-cfg", b"GRUB loads Linux"), ("kernel", b"Linux version"),
          ("systemd", b"running in system mode"), ("login", b"login:")]


def vireo(disk):
    return ["build/vireo", "run", "--firmware", SEABIOS, "--memory", MEM,
            "--disk", f"path={disk},format=qcow2"]


def qemu_pc(disk):
    return [*QEMU, "-M", "pc", "-bios", SEABIOS,
            "-drive", f"file={disk},if=none,id=d0,format=qcow2",
            "-device", "virtio-blk-pci,drive=d0,bootindex=1"]


def qemu_microvm(disk):
    # The disk on virtio-mmio: SeaBIOS's microvm build does not find a
    # virtio-blk-pci disk on microvm's PCIe host ("could not read the boot disk").
    return [*QEMU, "-M", "microvm,rtc=on", "-bios", SEABIOS_MICROVM,
            "-drive", f"file={disk},if=none,id=d0,format=qcow2",
            "-device", "virtio-blk-device,drive=d0"]


VMMS = {"vireo": vireo, "qemu-pc": qemu_pc, "qemu-microvm": qemu_microvm}


def boot(name, argv_of):
    """({stage: seconds from process start to its first line}, {stage: KVM's
    counters in it}) on a fresh overlay; "login" missing when the prompt did
    not come (the console's end is printed then). The VM is the only one on
    the host while it runs, so KVM's sums are its own."""
    disk = os.path.join(TMP, f"{name}.qcow2")
    subprocess.run(["build/vireo", "img", "create", "-f", "qcow2", "-b", os.path.abspath(IMAGE),
                    "-F", "qcow2", disk], check=True, capture_output=True)
    before = kvm_stats()
    counts = {}
    t0 = time.monotonic()
    p = subprocess.Popen(argv_of(disk), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    os.set_blocking(p.stdout.fileno(), False)
    seen, text, last = {}, b"", t0
    while "login" not in seen and time.monotonic() - t0 < TIMEOUT and p.poll() is None:
        chunk = p.stdout.read(65536)
        if not chunk:
            if time.monotonic() - last > QUIET:
                print(f"{name}: console quiet for {QUIET} s, {last - t0:.1f} s in\n"
                      f"{stall_report(p.pid)}", flush=True)
                break
            time.sleep(0.01)
            continue
        text, last = text + chunk, time.monotonic()
        for stage, line in STAGES:
            if stage not in seen and line in text:
                seen[stage] = time.monotonic() - t0
                now = kvm_stats()
                counts[stage] = {k: v - before.get(k, 0) for k, v in now.items()}
                before = now
    p.kill()
    p.wait()
    os.unlink(disk)
    if "login" not in seen:
        print(f"{name}: no login prompt in {TIMEOUT} s (exit {p.returncode}); the console's "
              f"end:\n{text[-1500:].decode(errors='replace')}", flush=True)
    return seen, counts


times = {name: [] for name in VMMS}
counters = {name: [] for name in VMMS}
for _ in range(RUNS):
    for name, argv_of in VMMS.items():
        seen, counts = boot(name, argv_of)
        times[name].append(seen)
        counters[name].append(counts)
        print(f"{name:13s} " + "  ".join(f"{s} {seen[s]:6.2f}" for s, _ in STAGES if s in seen),
              flush=True)
med = {}
for name, runs in times.items():
    stages = {s: statistics.median([r[s] for r in runs if s in r])
              for s, _ in STAGES if any(s in r for r in runs)}
    ok = sum("login" in r for r in runs)
    med[name] = stages.get("login") if ok == len(runs) else None
    print(f"{name:13s} median s from start: " +
          "  ".join(f"{s} {t:6.2f}" for s, t in stages.items()) + f"  ({ok}/{len(runs)} to login)")
print("KVM's counters in each stage (medians), from the previous stage's first line:")
for name, runs in counters.items():
    for stage, _ in STAGES:
        got = [r[stage] for r in runs if stage in r]
        if got:
            print(f"{name:13s} {stage:9s} " + "  ".join(
                f"{k} {int(statistics.median(g.get(k, 0) for g in got))}" for k in got[0]))
for name in VMMS:
    if name != "vireo" and med[name] and med["vireo"]:
        print(f"vireo/{name}: {med['vireo'] / med[name]:.2f}x")
print(f"({RUNS} runs each, {MEM}, 1 vCPU, medians)")
