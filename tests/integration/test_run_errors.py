"""vireo run refuses bad input with one clear line and a non-zero status,
never a core dump; a crashing guest gets its registers printed."""
import os
import struct
import subprocess

import pytest

from conftest import PROBE, VIREO, needs_kvm, scaled


def vireo(*args, user=None):
    cmd = [str(VIREO), "run", *args]
    if user:
        cmd = ["setpriv", "--reuid", user, "--regid", user, "--clear-groups", *cmd]
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60)


def error_lines(p):
    return [l for l in p.stderr.splitlines() if "notice:" not in l]


def assert_clean_failure(p, *words):
    assert p.returncode == 1, (p.returncode, p.stderr)
    lines = error_lines(p)
    assert len(lines) == 1, p.stderr
    for w in words:
        assert w in lines[0], lines[0]


def pvh_elf(code, entry=0x100000):
    """A minimal 64-bit ELF with one PT_LOAD at `entry` holding `code`, and a
    Xen PVH note pointing at it: the smallest thing vireo will boot."""
    note = struct.pack("<III4sI", 4, 4, 18, b"Xen\0", entry)
    ehsize, phsize = 64, 56
    code_off = ehsize + 2 * phsize
    note_off = code_off + len(code)
    eh = struct.pack("<4sBBBBB7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, 2, 62, 1,
                     entry, ehsize, 0, 0, ehsize, phsize, 2, 0, 0, 0)
    load = struct.pack("<IIQQQQQQ", 1, 7, code_off, entry, entry, len(code), len(code), 0x1000)
    pnote = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(note), len(note), 4)
    return (eh + load + pnote + code + note).ljust(4096, b"\0")


@pytest.fixture
def tmpfile(tmp_path):
    def make(name, data):
        p = tmp_path / name
        p.write_bytes(data)
        return str(p)
    return make


def test_missing_kernel_option():
    assert_clean_failure(vireo(), "--kernel")


def test_missing_kernel_file():
    assert_clean_failure(vireo("--kernel", "/nonexistent/kernel"), "/nonexistent/kernel")


@needs_kvm
def test_not_a_kernel(tmpfile):
    path = tmpfile("notes.txt", b"hello, I am not a kernel\n" * 100)
    assert_clean_failure(vireo("--kernel", path), "not a Linux kernel")


@needs_kvm
def test_truncated_elf(tmpfile):
    data = pvh_elf(b"\x0f\x0b")
    path = tmpfile("short.elf", data[:100] + b"\0" * 1000)
    p = vireo("--kernel", path)
    assert p.returncode == 1 and len(error_lines(p)) == 1, p.stderr


@needs_kvm
def test_initrd_that_does_not_fit(tmp_path):
    big = tmp_path / "big.initrd"
    with open(big, "wb") as f:
        f.truncate(300 << 20)
    assert_clean_failure(vireo("--kernel", str(PROBE), "--memory", "64M", "--initrd", str(big)),
                         "does not fit")


@pytest.mark.parametrize("args,word", [
    (["--memory", "0"], "--memory"),
    (["--memory", "lots"], "--memory"),
    (["--cpus", "0"], "--cpus"),
    (["--cpus", "-3"], "--cpus"),
    (["--reboot", "sometimes"], "--reboot"),
])
def test_bad_options(args, word):
    assert_clean_failure(vireo("--kernel", str(PROBE), *args), word)


@needs_kvm
def test_more_cpus_than_allowed():
    assert_clean_failure(vireo("--kernel", str(PROBE), "--cpus", "100000"), "--cpus")
    assert_clean_failure(vireo("--kernel", str(PROBE), "--cpus", "300"), "--cpus")


@pytest.mark.skipif(os.geteuid() != 0 or os.stat("/dev/kvm").st_mode & 0o006 if
                    os.path.exists("/dev/kvm") else True,
                    reason="skipped: needs root and a /dev/kvm that others cannot open")
def test_no_permission_on_dev_kvm():
    assert_clean_failure(vireo("--kernel", str(PROBE), user="65534"), "/dev/kvm")


@needs_kvm
def test_triple_fault_resets_and_prints_registers(tmpfile):
    # ud2 in 32-bit protected mode with no IDT: #UD -> #DF -> triple fault,
    # which resets a PC (Linux's reboot=t): exit 3, as for any reboot.
    path = tmpfile("ud2.elf", pvh_elf(b"\x0f\x0b"))
    p = vireo("--kernel", path)
    assert p.returncode == 3, p.stderr
    assert "triple fault: the machine resets" in p.stderr and "guest rebooted" in p.stderr
    assert "rip=" in p.stderr   # the fault's (VMX) or the reset state (SVM)


@needs_kvm
def test_reboot_exits_with_status_3(tmpfile):
    # mov al, 0xfe; out 0x64, al (i8042 reset); hlt
    path = tmpfile("reboot.elf", pvh_elf(b"\xb0\xfe\xe6\x64\xf4"))
    p = vireo("--kernel", path)
    assert p.returncode == 3, p.stderr


@needs_kvm
def test_ctrl_a_x_quits_from_a_terminal():
    """On a tty, Ctrl-A x stops the VM; the terminal gets its mode back."""
    import pty
    import select
    import termios
    import time
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(str(VIREO), [str(VIREO), "run", "--kernel", str(PROBE),
                              "--cmdline", "scenario=cpuburn=20000"])
    out = b""
    deadline = time.monotonic() + 20
    while b"PROBE boot" not in out and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            out += os.read(fd, 4096)
    assert b"PROBE boot" in out
    assert not termios.tcgetattr(fd)[3] & termios.ICANON   # raw while the VM runs
    os.write(fd, b"\x01x")
    t0 = time.monotonic()
    _, status = os.waitpid(pid, 0)
    assert time.monotonic() - t0 < scaled(5)          # not the 20 s burn
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert termios.tcgetattr(fd)[3] & termios.ICANON       # restored on exit
    os.close(fd)


@pytest.mark.parametrize("queues", ["0", "9", "two", ""])
def test_disk_queues_out_of_range(tmpfile, queues):
    disk = tmpfile("d.raw", b"\0" * 65536)
    assert_clean_failure(vireo("--kernel", str(PROBE), "--disk",
                               f"path={disk},format=raw,queues={queues}"),
                         "queues must be 1 to 8")
