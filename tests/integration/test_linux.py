"""Debian's unmodified kernel as the guest (DESIGN §5). The kit is built
everywhere, so it cannot rot; booting it needs hardware virtualization (an
unmodified kernel cannot boot on a KVM that emulates CPL0)."""
import shutil
import subprocess

import pytest

from conftest import BUILD, ROOT, VIREO, needs_hw_virt, needs_kvm

KIT = BUILD / "linux"


@pytest.fixture(scope="module")
def kit():
    if shutil.which("apt-get") is None:
        pytest.skip("skipped: no apt-get to fetch Debian's kernel")
    subprocess.run([str(ROOT / "tests/linux/mkinitramfs.sh"), str(KIT)], check=True,
                   timeout=600)
    return KIT


def test_kit_has_kernel_modules_and_init(kit):
    assert (kit / "vmlinuz").read_bytes()[0x202:0x206] == b"HdrS"
    listing = subprocess.run(f"zcat {kit / 'initrd.img'} | cpio -t --quiet", shell=True,
                             capture_output=True, text=True, check=True).stdout.split()
    for f in ("init", "bin/busybox", "lib/modules/virtio_pci.ko", "lib/modules/virtio_blk.ko",
              "lib/modules/virtio_net.ko", "lib/modules/virtio_balloon.ko",
              "lib/modules/virtio-rng.ko", "lib/modules/load-order"):
        assert f in listing, f


@needs_kvm
@needs_hw_virt
def test_debian_kernel_boots_on_two_cpus(kit):
    p = subprocess.run([str(VIREO), "run", "--kernel", str(kit / "vmlinuz"),
                        "--initrd", str(kit / "initrd.img"), "--cpus", "2", "--memory", "256M",
                        "--cmdline", "console=ttyS0 panic=-1 quiet"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    facts = dict(l.split(" ", 1)[1].split("=", 1) for l in p.stdout.splitlines()
                 if l.startswith("LINUX ") and "=" in l)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr
    assert facts.get("done") == "1"
    assert "insmod_failed" not in facts
    assert facts["cpus"] == "2"
    # MemTotal is RAM less what the kernel keeps for itself.
    assert 200 * 1024 < int(facts["memtotal_kb"]) <= 256 * 1024
