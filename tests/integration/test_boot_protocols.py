"""vireo's Linux boot-protocol paths, with the probe guest standing in for
Linux (which cannot boot on hosts without hardware virtualization, DESIGN §5):

- probe.bzimage: a bzImage (protocol 2.12). vireo loads it through the
  64-bit boot protocol (boot_params at 0x7000, startup_64 at 1 MiB + 0x200);
  QEMU runs its real-mode setup code, which enters startup_32.
- probe64.elf: an ELF vmlinux without a PVH note; vireo enters startup_64
  with a boot_params it synthesises.

Each must report what the PVH boot of probe.elf reports (memory, CPUs, ACPI),
and the command line and initrd must arrive intact (the probe prints their
CRC-32s)."""
import os
import zlib

import pytest

import conftest
from conftest import (BUILD, PROBE, ProbeRun, needs_kvm, needs_qemu, run_qemu, run_until_exit,
                      run_vireo, vireo_args)

pytestmark = [needs_kvm]

BZIMAGE = BUILD / "guest" / "probe.bzimage"
PROBE64 = BUILD / "guest" / "probe64.elf"
CMDLINE_SIZE = 4095             # probe.bzimage's setup header (0x238)
SAME_AS_PVH = ("mem_bytes", "mem_mib", "cpus", "hw_reduced", "sleep_ctl", "s5", "ecam",
               "tables", "rsdp")


def run_qemu_kernel(kernel, cmdline, **kw):
    return conftest.run_qemu(cmdline, kernel=kernel, **kw)


def booted(run, entry):
    """The facts of a run that went in through entry (pvh, linux64, linux32)."""
    boot = run.all("boot")
    assert boot, run.stdout + run.stderr
    assert boot[0]["entry"] == entry, run.stdout
    return run.facts()


def check_hello(run, entry, ref, cpus, memory):
    assert run.returncode == 0, run.stdout + run.stderr
    f = booted(run, entry)
    assert f["banner"] == "vireo-probe"
    assert int(f["cpus"]) == cpus
    assert int(f["mem_mib"]) == int(memory[:-1])
    r = ref.facts()
    for key in SAME_AS_PVH:
        assert f[key] == r[key], key
    return f


@pytest.fixture(scope="module")
def initrd(tmp_path_factory):
    """An odd-sized initrd of random bytes and its CRC-32."""
    path = tmp_path_factory.mktemp("initrd") / "initrd.img"
    data = os.urandom(300 * 1024 + 123)
    path.write_bytes(data)
    return path, len(data), "%08x" % zlib.crc32(data)


def check_initrd(run, initrd, memory="256M"):
    _, size, crc = initrd
    f = run.facts()
    assert "initrd_error" not in f, run.stdout
    addr = int(f["initrd_addr"], 16)
    assert int(f["initrd_size"]) == size
    assert f["initrd_crc32"] == crc
    assert addr % 4096 == 0
    assert 0x100000 <= addr and addr + size <= int(memory[:-1]) << 20


def check_cmdline(run, cmdline):
    f = run.facts()
    assert int(f["cmdline_len"]) == len(cmdline), run.stdout
    assert f["cmdline_crc32"] == "%08x" % zlib.crc32(cmdline.encode())


# --- vireo: bzImage and ELF through the 64-bit entry -----------------------

@pytest.mark.parametrize("kernel", [BZIMAGE, PROBE64], ids=["bzimage", "elf64"])
@pytest.mark.parametrize("cpus,memory", [(1, "256M"), (2, "512M"), (1, "4608M")])
def test_hello_like_pvh_on_vireo(kernel, cpus, memory):
    ref = run_vireo("scenario=hello", cpus=cpus, memory=memory)
    assert ref.returncode == 0, ref.stderr
    run = run_vireo("scenario=hello", cpus=cpus, memory=memory, kernel=kernel)
    f = check_hello(run, "linux64", ref, cpus, memory)
    # The e820 table in boot_params is the PVH memory map, entry by entry.
    assert run.all("memmap") == ref.all("memmap")
    assert len(run.all("memmap")) >= 3
    # vireo puts the RSDP in boot_params (acpi_rsdp_addr, 0x070).
    assert f["rsdp_from"] == "boot_params"
    # The bzImage's own header reached boot_params; for the ELF, vireo's.
    version = run.all("boot")[0]["boot_protocol"]
    if kernel == BZIMAGE:
        assert version == "2.12"
    else:
        assert tuple(map(int, version.split("."))) >= (2, 0)


@pytest.mark.parametrize("kernel", [BZIMAGE, PROBE64], ids=["bzimage", "elf64"])
@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_cpus_on_vireo(kernel, cpus):
    run = run_vireo("scenario=cpus", cpus=cpus, kernel=kernel, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    booted(run, "linux64")
    ids = sorted(int(c["apic_id"]) for c in run.all("cpu_up"))
    assert ids == list(range(cpus)), run.stdout
    assert int(run.facts()["cpus_up"]) == cpus
    assert not run.all("cpu_timeout")


@pytest.mark.parametrize("kernel", [BZIMAGE, PROBE64, PROBE], ids=["bzimage", "elf64", "pvh"])
def test_initrd_on_vireo(kernel, initrd):
    run = run_vireo("scenario=hello", kernel=kernel, extra=("--initrd", str(initrd[0])))
    assert run.returncode == 0, run.stdout + run.stderr
    check_initrd(run, initrd)


def test_initrd_below_initrd_addr_max_on_vireo(initrd):
    """probe.bzimage says initrd_addr_max = 0x7fffffff: with 3 GiB of RAM
    (all below the 3 GiB PCI hole) the initrd must still end below 2 GiB."""
    run = run_vireo("scenario=hello", kernel=BZIMAGE, memory="3G",
                    extra=("--initrd", str(initrd[0])))
    assert run.returncode == 0, run.stdout + run.stderr
    check_initrd(run, initrd, memory="3072M")
    f = run.facts()
    assert int(f["initrd_addr"], 16) + int(f["initrd_size"]) <= 0x80000000


def sparse_initrd(path, size):
    """size bytes, random at both ends and zero between; returns the CRC-32."""
    head, tail = os.urandom(65536), os.urandom(65536)
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
        f.seek(size - len(tail))
        f.write(tail)
    crc = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            crc = zlib.crc32(chunk, crc)
    return "%08x" % crc


def test_initrd_stays_clear_of_init_size(tmp_path):
    """vireo must keep the initrd out of [1 MiB, 1 MiB + init_size), the
    memory the bzImage needs beyond its file (the probe's .bss and stacks,
    cleared and used before it reads the initrd): the largest initrd that
    fits arrives intact right above it, one page more is refused."""
    with open(BZIMAGE, "rb") as f:
        f.seek(0x260)
        init_size = int.from_bytes(f.read(4), "little")
    kernel_end = (0x100000 + init_size + 4095) & ~4095
    size = (256 << 20) - kernel_end
    path = tmp_path / "big-initrd.img"
    crc = sparse_initrd(path, size)
    run = run_vireo("scenario=hello", kernel=BZIMAGE, extra=("--initrd", str(path)))
    assert run.returncode == 0, run.stdout + run.stderr
    f = run.facts()
    assert int(f["initrd_addr"], 16) == kernel_end
    assert int(f["initrd_size"]) == size
    assert f["initrd_crc32"] == crc
    sparse_initrd(path, size + 4096)
    run = run_vireo("scenario=hello", kernel=BZIMAGE, extra=("--initrd", str(path)))
    assert run.returncode != 0
    assert "does not fit" in run.stderr


@pytest.mark.parametrize("relocatable", [1, 0], ids=["relocatable", "fixed"])
def test_initrd_stays_clear_of_runtime_start(tmp_path, relocatable):
    """A bzImage runs at its runtime start, not where it was loaded
    (boot.rst, init_size): relocatable, align_up(max(load, pref_address),
    kernel_alignment); else pref_address. Linux with pref_address 16 MiB
    copies itself to [16 MiB, 16 MiB + init_size) before it reads its memory
    map, so the initrd must stay out of there. probe.bzimage with Linux's
    values patched in (the probe itself still runs at 1 MiB, where vireo
    loads it): an initrd that only fits by overlapping that range is refused,
    the largest that fits above it arrives intact."""
    image = bytearray(BZIMAGE.read_bytes())
    image[0x230:0x234] = (0x200000).to_bytes(4, "little")     # kernel_alignment
    image[0x234] = relocatable
    image[0x258:0x260] = (0x1000000).to_bytes(8, "little")    # pref_address
    kernel = tmp_path / "linux-like.bzimage"
    kernel.write_bytes(bytes(image))
    init_size = int.from_bytes(image[0x260:0x264], "little")
    kernel_end = (0x1000000 + init_size + 4095) & ~4095
    path = tmp_path / "initrd.img"
    sparse_initrd(path, (256 << 20) - kernel_end + 4096)
    run = run_vireo("scenario=hello", kernel=kernel, extra=("--initrd", str(path)))
    assert run.returncode != 0, run.stdout
    assert "does not fit" in run.stderr
    crc = sparse_initrd(path, (256 << 20) - kernel_end)
    run = run_vireo("scenario=hello", kernel=kernel, extra=("--initrd", str(path)))
    assert run.returncode == 0, run.stdout + run.stderr
    f = run.facts()
    assert int(f["initrd_addr"], 16) == kernel_end
    assert f["initrd_crc32"] == crc


def long_cmdline(total):
    """A command line of exactly total bytes, with quotes and punctuation."""
    head = 'scenario=hello x="quoted" y=a,b;c:d p='
    pad = ("0123456789abcdef" * (total // 16 + 1))[:total - len(head)]
    return head + pad


@pytest.mark.parametrize("kernel", [BZIMAGE, PROBE64], ids=["bzimage", "elf64"])
def test_cmdline_intact_on_vireo(kernel):
    for cmdline in ("scenario=hello", long_cmdline(2000), long_cmdline(CMDLINE_SIZE)):
        run = run_vireo(cmdline, kernel=kernel)
        assert run.returncode == 0, run.stdout + run.stderr
        booted(run, "linux64")
        check_cmdline(run, cmdline)


def test_cmdline_longer_than_cmdline_size_is_refused():
    """The bzImage's cmdline_size (4095) bounds the command line."""
    run = run_vireo(long_cmdline(CMDLINE_SIZE + 1), kernel=BZIMAGE, timeout=30)
    assert run.returncode != 0
    assert "command line is too long" in run.stderr
    assert not run.lines


def test_cmdline_size_without_limit(tmp_path):
    """cmdline_size 0xffffffff leaves vireo's own limit (64 KiB with the NUL)."""
    image = bytearray(BZIMAGE.read_bytes())
    image[0x238:0x23c] = (0xffffffff).to_bytes(4, "little")
    kernel = tmp_path / "nolimit.bzimage"
    kernel.write_bytes(bytes(image))
    for cmdline in ("scenario=hello", long_cmdline(65535)):
        run = run_vireo(cmdline, kernel=kernel)
        assert run.returncode == 0, run.stdout + run.stderr
        check_cmdline(run, cmdline)
    run = run_vireo(long_cmdline(65536), kernel=kernel, timeout=30)
    assert run.returncode != 0
    assert "command line is too long" in run.stderr


@pytest.mark.parametrize("patch,error", [
    ({0x236: b"\0\0"}, "has no 64-bit entry"),              # xloadflags without XLF_KERNEL_64
    ({0x206: b"\x0b\x02"}, "has no 64-bit entry"),          # protocol 2.11: no xloadflags
    ({"truncate": 16 * 512}, "truncated bzImage"),          # setup only
    ({0x1f1: b"\xff"}, "truncated bzImage"),                # 255 setup sectors: past the end
], ids=["no-xlf-kernel-64", "protocol-2.11", "setup-only", "setup-sects-past-end"])
def test_bad_bzimage_refused(tmp_path, patch, error):
    image = bytearray(BZIMAGE.read_bytes())
    for off, val in patch.items():
        if off == "truncate":
            del image[val:]
        else:
            image[off:off + len(val)] = val
    kernel = tmp_path / "bad.bzimage"
    kernel.write_bytes(bytes(image))
    run = run_vireo("scenario=hello", kernel=kernel, timeout=30)
    assert run.returncode != 0
    assert error in run.stderr, run.stderr
    assert not run.lines


@pytest.mark.parametrize("kernel", [BZIMAGE, PROBE64], ids=["bzimage", "elf64"])
@pytest.mark.parametrize("code", [0, 7])
def test_exit_code_on_vireo(kernel, code):
    run = run_vireo(f"scenario=exit={code}", kernel=kernel)
    assert run.returncode == code, run.stdout + run.stderr
    assert run.facts()["exit"] == str(code)


@pytest.mark.parametrize("code", [2, 3, 7])
def test_debug_exit_is_opt_in(code):
    """Without --debug-exit the guest cannot choose the VMM's status (2 would
    read as a crash, 3 as a reboot): port 0xf4 is unassigned, and the probe's
    fallback, ACPI power-off, ends the run with 0."""
    args = [a for a in vireo_args(f"scenario=exit={code}") if a != "--debug-exit"]
    run = ProbeRun(*run_until_exit(args, 60))
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.facts()["exit"] == str(code)


# --- QEMU: the bzImage through its real-mode setup code (startup_32) -------

@needs_qemu
@pytest.mark.parametrize("cpus,memory", [(1, "256M"), (2, "512M"), (1, "4608M")])
def test_hello_like_pvh_on_qemu(cpus, memory):
    ref = run_qemu("scenario=hello", cpus=cpus, memory=memory)
    assert ref.returncode == 0, ref.stderr
    run = run_qemu_kernel(BZIMAGE, "scenario=hello", cpus=cpus, memory=memory)
    f = check_hello(run, "linux32", ref, cpus, memory)
    # The setup code's INT 15h E820 map is what QEMU's PVH ROM passes.
    assert run.all("memmap") == ref.all("memmap")
    # QEMU leaves acpi_rsdp_addr 0: the probe finds the same RSDP by scanning.
    assert f["rsdp_from"] == "scan"


@needs_qemu
@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_cpus_on_qemu(cpus):
    run = run_qemu_kernel(BZIMAGE, "scenario=cpus", cpus=cpus, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    booted(run, "linux32")
    ids = sorted(int(c["apic_id"]) for c in run.all("cpu_up"))
    assert ids == list(range(cpus)), run.stdout
    assert int(run.facts()["cpus_up"]) == cpus


@needs_qemu
def test_initrd_and_cmdline_on_qemu(initrd):
    cmdline = long_cmdline(3000)
    run = run_qemu_kernel(BZIMAGE, cmdline, extra=("-initrd", str(initrd[0])))
    assert run.returncode == 0, run.stdout + run.stderr
    booted(run, "linux32")
    check_initrd(run, initrd)
    check_cmdline(run, cmdline)

