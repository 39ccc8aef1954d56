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
