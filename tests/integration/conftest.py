"""Shared fixtures for the end-to-end tests (DESIGN §6)."""
import os
import pathlib
import shutil

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
VIREO = BUILD / "vireo"
PROBE = BUILD / "guest" / "probe.elf"


def have_kvm():
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def have_hw_virt():
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    return " vmx" in flags or " svm" in flags


needs_kvm = pytest.mark.skipif(not have_kvm(), reason="skipped: no usable /dev/kvm")
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="skipped: qemu-system-x86_64 not installed")
needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                    reason="skipped: qemu-img not installed")
needs_hw_virt = pytest.mark.skipif(not have_hw_virt(),
                                   reason="skipped: no hardware virtualization")


class ProbeRun:
    """The result of one probe-guest run: exit status, PROBE lines, stderr."""

    def __init__(self, returncode, stdout, stderr):
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.lines = [l[len("PROBE "):].strip() for l in stdout.splitlines()
                      if l.startswith("PROBE ")]

    def facts(self):
        """key=value pairs of all PROBE lines merged (later lines win)."""
        out = {}
        for line in self.lines:
            for tok in line.split():
                if "=" in tok:
                    k, v = tok.split("=", 1)
                    out[k] = v
        return out

    def all(self, prefix):
        """Lines starting with prefix (e.g. 'cpu_up'), as dicts."""
        res = []
        for line in self.lines:
            if line.split()[0] == prefix:
                res.append(dict(t.split("=", 1) for t in line.split()[1:] if "=" in t))
        return res


def in_netns(args, netns):
    return ["ip", "netns", "exec", netns, *args] if netns else args


def run_vireo(cmdline, cpus=1, memory="256M", extra=(), timeout=120, kernel=None, netns=None):
    import subprocess
    args = in_netns([str(VIREO), "run", "--kernel", str(kernel or PROBE), "--cpus", str(cpus),
                     "--memory", memory, "--cmdline", cmdline, *extra], netns)
    p = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=timeout)
    return ProbeRun(p.returncode, p.stdout, p.stderr)


def run_qemu(cmdline, cpus=1, memory="256M", machine="microvm", extra=(), timeout=120,
             netns=None, kernel=None):
    """The reference VMM (DESIGN §5): QEMU microvm with the debug-exit device
    at the same port; its exit status is (code << 1) | 1 after a debug exit."""
    import subprocess
    args = ["qemu-system-x86_64", "-enable-kvm", "-M", machine, "-m", memory,
            "-smp", str(cpus), "-nographic", "-nodefaults", "-serial", "stdio",
            "-no-reboot", "-kernel", str(kernel or PROBE), "-append", cmdline,
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4", *extra]
    p = subprocess.run(in_netns(args, netns), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=timeout)
    return ProbeRun(p.returncode, p.stdout, p.stderr)
