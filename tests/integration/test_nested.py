"""The nested test host itself (tests/nested/; DESIGN §5): its initramfs
archive, the kernel's module order, the mapping of an inner pytest run's
report lines back to test outcomes, and then a real L1: commands with their
status, output, directory and environment, timeouts, the read-only root,
writable directories, modules loaded on request, the l1-run CLI and a whole
hw_virt batch reported by an outer pytest, through a frozen L1.

The L1 tests need root, qemu-system-x86, qemu-system-common (virtiofsd),
busybox-static and the kernel package (apt-get download, once)."""
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

import hwvirt
import l1
import report_stream
from conftest import PROBE, ROOT, VIREO

L1_RUN = ROOT / "tests/nested/l1-run"


def test_cpio_newc_is_what_cpio_reads(tmp_path):
    if shutil.which("cpio") is None:
        pytest.skip("skipped: cpio not installed")
    data = l1.cpio_newc([("d", 0o040755, b"", (0, 0)),
                         ("d/f", 0o100644, b"hello\n", (0, 0)),
                         ("d/odd", 0o100755, b"12345", (0, 0)),
                         ("d/l", 0o120777, b"f", (0, 0)),
                         ("console", 0o020600, b"", (5, 1))])
    listing = subprocess.run(["cpio", "-itv", "--quiet"], input=data, capture_output=True,
                             check=True).stdout.decode().splitlines()
    modes = {line.split()[-1] if "->" not in line else line.split()[-3]: line.split()[0]
             for line in listing}
    assert modes == {"d": "drwxr-xr-x", "d/f": "-rw-r--r--", "d/odd": "-rwxr-xr-x",
                     "d/l": "lrwxrwxrwx", "console": "crw-------"}, listing
    assert any(line.endswith("d/l -> f") for line in listing), listing
    assert any(re.search(r"\b5,\s+1\b", line) for line in listing
               if line.endswith("console")), listing
    subprocess.run(["cpio", "-id", "--quiet", "d/f", "d/odd"], input=data, cwd=tmp_path,
                   check=True)
    assert (tmp_path / "d/f").read_bytes() == b"hello\n"
    assert (tmp_path / "d/odd").read_bytes() == b"12345"


def test_static_busybox_is_told_from_a_dynamic_program():
    if not os.access(l1.BUSYBOX, os.X_OK):
        pytest.skip("skipped: busybox-static not installed")
    assert l1.is_static_elf(l1.BUSYBOX)
    assert not l1.is_static_elf(os.path.realpath("/bin/sh"))


def test_kernel_modules_come_after_their_dependencies(tmp_path):
    moddir = tmp_path / "lib/modules/6.1.0-1-cloud-amd64"
    moddir.mkdir(parents=True)
    (moddir / "modules.dep").write_text(
        "kernel/arch/x86/kvm/kvm-amd.ko: kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko\n"
        "kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko\n"
        "kernel/virt/lib/irqbypass.ko:\n"
        "kernel/drivers/virtio/virtio.ko:\n")
    k = l1.Kernel(tmp_path)
    assert k.version == "6.1.0-1-cloud-amd64"
    assert k.modules(["kvm_amd", "virtio", "kvm"]) == [
        "kernel/virt/lib/irqbypass.ko", "kernel/arch/x86/kvm/kvm.ko",
        "kernel/arch/x86/kvm/kvm-amd.ko", "kernel/drivers/virtio/virtio.ko"]
    with pytest.raises(l1.L1Error, match="no module tun"):
        k.modules(["tun"])


INNER_TESTS = '''
import pytest

@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")

class TestC:
    @pytest.mark.parametrize("p", ["a/b", "x::y"])
    def test_pass(self, p, tmp_path):
        (tmp_path / "image").write_bytes(b"x" * 4096)
        print("said", p, "in", tmp_path)

def test_fail():
    print("before the failure")
    assert 1 == 2, "one is not two"

def test_skip():
    pytest.skip("skipped: for a reason")

@pytest.mark.xfail(reason="known bad")
def test_xfail():
    assert False

def test_setup_error(broken):
    pass
'''


def test_report_stream_maps_back_to_the_outcomes(tmp_path):
    """An inner pytest run's report lines (report_stream.py), as the batch
    reads them: each node id with the right outcome, text and captured
    output, and a line as each test starts; each test's tmp_path is removed
    after it."""
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests" / "nested"))
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                        "-p", "report_stream", "-q", "--rootdir", str(tmp_path), "test_inner.py"],
                       cwd=tmp_path, env=env, capture_output=True, text=True)
    msgs = [json.loads(line[len(report_stream.PREFIX):]) for line in r.stderr.splitlines()
            if line.startswith(report_stream.PREFIX)]
    started = [m["nodeid"] for m in msgs if m.get("started")]
    ended = {m["nodeid"]: m["phases"] for m in msgs if not m.get("started")}
    assert started == list(ended) and len(ended) == 6, r.stderr

    def outcome(nodeid):
        return hwvirt.Outcome.from_phases(ended[nodeid], "[L1] ")

    for p in ("a/b", "x::y"):
        o = outcome(f"test_inner.py::TestC::test_pass[{p}]")
        assert (o.outcome, o.when) == ("passed", "call")
        said = [text for _, text in o.sections if f"said {p} in " in text]
        assert said, o.sections
        # its tmp_path is gone with its teardown (in L1: RAM for the next tests)
        assert not os.path.exists(said[0].split(" in ", 1)[1].strip()), said
    o = outcome("test_inner.py::test_fail")
    assert (o.outcome, o.when) == ("failed", "call")
    assert o.text.startswith("[L1] ") and "one is not two" in o.text
    assert any("before the failure" in text for _, text in o.sections)
    o = outcome("test_inner.py::test_skip")
    assert (o.outcome, o.when, o.text) == ("skipped", "setup", "skipped: for a reason")
    o = outcome("test_inner.py::test_xfail")
    assert (o.outcome, o.xfail, o.text) == ("skipped", True, "known bad")
    o = outcome("test_inner.py::test_setup_error")
    assert (o.outcome, o.when) == ("failed", "setup") and "fixture broke" in o.text


ENTRY_CRASH = """\
[    7.730512]  sysvec_apic_timer_interrupt+0xa/0x90
[    7.730512] RIP: 0033:0x461610
[    7.730512] ---[ end trace 0000000000000000 ]---
[    7.730512] RIP: 0010:error_entry+0x10/0x130
[    7.730512] Kernel panic - not syncing: Fatal exception in interrupt
"""


class MarkedItem:
    """Enough of a pytest item for hwvirt's routing: its markers."""

    def __init__(self, *names):
        self.names, self.added = set(names), []

    def get_closest_marker(self, name):
        return pytest.mark.kvm if name in self.names else None

    def add_marker(self, mark):
        self.added.append(mark)


@pytest.mark.parametrize("kvm,hw,mode,probe,probe_to,linux_to", [
    (False, False, "auto", "1", "L1", "L1"),        # some of our machines: no /dev/kvm
    (False, False, "auto", "", "skip", "L1"),       # the same, by default
    (True, False, "auto", "1", "here", "L1"),       # kvm_pvm
    (True, True, "auto", "1", "here", "here"),      # a host with vmx/svm
    (False, False, "never", "1", "skip", "skip"),
    (True, True, "always", "", "L1", "L1")])
def test_probe_tests_go_to_l1_only_without_dev_kvm(monkeypatch, kvm, hw, mode, probe,
                                                    probe_to, linux_to):
    monkeypatch.setattr(hwvirt, "host_has_kvm", lambda: kvm)
    monkeypatch.setattr(hwvirt, "host_has_hw_virt", lambda: hw)
    monkeypatch.setenv("VIREO_NESTED", mode)
    monkeypatch.setenv("VIREO_NESTED_PROBE", probe)
    monkeypatch.delenv("VIREO_IN_L1", raising=False)
    probe, linux = MarkedItem(hwvirt.KVM_MARKER), MarkedItem(hwvirt.KVM_MARKER, hwvirt.MARKER)
    hwvirt.skip_without_kvm([probe, linux])
    for item, where in ((probe, probe_to), (linux, linux_to)):
        got = "L1" if hwvirt.goes_to_l1(item) else "skip" if item.added else "here"
        assert got == where, (item.names, kvm, hw, mode)
    monkeypatch.setenv("VIREO_IN_L1", "1")      # in L1 everything runs where it is
    assert not hwvirt.goes_to_l1(probe) and not hwvirt.goes_to_l1(linux)


def test_only_the_known_l1_faults_are_re_run():
    """The batch re-runs a test that failed the ways seen only in L1 (a guest
    that died in its CPU entry code, a VM that printed nothing until its
    deadline, an emulator loop, a triple fault, a QEMU reference that reset
    silently or got stuck), and nothing else: not a guest crash in a driver,
    not a VM that stopped after printing, not a plain failure, not a pass."""
    def fault(outcome, text):
        return hwvirt.l1_fault(hwvirt.Outcome(outcome, text=text))
    assert fault("failed", "vireo still running after 600 s (its stdout stayed empty):\n")
    assert not fault("failed", "vireo still running after 600 s:\nLINUX userspace=1\n")
    assert fault("failed", ENTRY_CRASH)
    assert not fault("passed", ENTRY_CRASH)
    in_driver = ENTRY_CRASH.replace("error_entry+0x10", "virtballoon_probe+0x10")
    assert not fault("failed", in_driver)
    assert not fault("failed", "assert 3 == 0")
    assert not fault("failed", ENTRY_CRASH.replace("Fatal exception in interrupt",
                                                   "Attempted to kill init!"))
    # a vCPU looping in L1's instruction emulator, injecting page faults
    loop = ("stall report (threads, then again 1 s later):\n"
            "  kvm 151-4: exits=5650878 insn_emulation=5597977 io_exits=2 pf_guest=5596952 x=1\n"
            "  --\n"
            "  kvm 151-4: exits=5669951 insn_emulation=5617085 io_exits=2 pf_guest=5614390 x=1\n")
    assert fault("failed", loop)
    assert not fault("failed", loop.replace("pf_guest=5614390", "pf_guest=5596960"))
    assert not fault("failed", loop.replace("insn_emulation=5617085", "insn_emulation=5597980"))
    assert not fault("failed", loop.split("  --")[0])
    # L1's kernel prints counters that come and go before "exits=" (ci22's
    # report, which the first pattern never matched)
    l1_kernel = loop.replace("exits=", "blocking=1 directed_yield_attempted=3 exits=")
    assert fault("failed", l1_kernel)
    assert not fault("failed", l1_kernel.replace("pf_guest=5614390", "pf_guest=5596960"))
    # a Linux guest's vCPU that triple-faulted (vireo's report on stderr)
    triple = "exit status 3; stderr ends with:\n  vireo: vCPU 1: triple fault: the machine resets\n"
    assert fault("failed", triple)
    assert not fault("passed", triple)
    assert not fault("failed", triple.replace("triple fault", "KVM_RUN failed"))
    # the QEMU reference's guest gone silently before its last line (ci26)
    silent = ("exit status 0; stderr ends with:\n\nLINUX lines:\nLINUX userspace=1\n"
              "LINUX rng bound=1\nassert None == '1'\n")
    ref = "tests/integration/test_linux.py::test_linux_all_devices_on_two_cpus"
    assert hwvirt.l1_fault(hwvirt.Outcome("failed", text=silent), ref + "[qemu]")
    assert hwvirt.l1_fault(hwvirt.Outcome("failed", text=silent), ref + "[qemu-raw]")
    assert not hwvirt.l1_fault(hwvirt.Outcome("failed", text=silent), ref + "[vireo]")
    assert not hwvirt.l1_fault(hwvirt.Outcome("failed", text=silent + "LINUX done=1\n"),
                               ref + "[qemu]")
    assert not hwvirt.l1_fault(hwvirt.Outcome("failed", text="exit status 1; stderr ends with"),
                               ref + "[qemu]")
    # the QEMU reference stuck in L1's kernel (CI stop 28), and only the reference
    for stuck in ("qemu-system-x86_64 still running after 600 s, and 120 s after SIGKILL "
                  "(stuck in the kernel):\n", "test_linux.py::x[qemu] ran past its 720 s in L1; "
                  "this run's processes:\n"):
        assert hwvirt.l1_fault(hwvirt.Outcome("failed", text=stuck), ref + "[qemu]")
        assert not hwvirt.l1_fault(hwvirt.Outcome("failed", text=stuck), ref + "[vireo]")
    assert not hwvirt.l1_fault(hwvirt.Outcome("failed", text="qemu-system-x86_64 still running "
                                              "after 600 s:\n"), ref + "[qemu]")


# --- a real L1 ------------------------------------------------------------------

def l1_or_skip(**kw):
    if os.environ.get("VIREO_IN_L1"):
        pytest.skip("skipped: no nested test host inside the nested test host")
    try:
        return l1.NestedHost(**kw).start()
    except l1.L1Unavailable as e:
        pytest.skip(f"skipped: {e}")


@pytest.fixture(scope="module")
def writable(tmp_path_factory):
    return tmp_path_factory.mktemp("l1-writable")


@pytest.fixture(scope="module")
def host(writable):
    # the checkout too: under /tmp (a CI clone), it is hidden by L1's own tmpfs
    h = l1_or_skip(writable=[writable], keep=[str(writable.parent), str(ROOT)])
    yield h
    h.close()


def test_l1_has_a_kvm_with_hardware_virtualization(host):
    assert host.info["svm"] and host.info["kvm"], host.info
    rc, out, err = host.run("grep -cw svm /proc/cpuinfo; stat -c %F /dev/kvm; "
                            "grep -E '^kvm_amd ' /proc/modules | cut -d' ' -f1; "
                            "cat /sys/module/kvm_amd/parameters/npt", timeout=60)
    assert (rc, err) == (0, "")
    # nested paging but where asked otherwise (the Linux tests' batch)
    npt = "N" if "npt=0" in host.kvm_amd else "Y"
    assert out.split("\n")[1:] == ["character special file", "kvm_amd", npt, ""], out
    assert int(out.split()[0]) == host.smp


def test_vms_in_l1_leave_kvm_static_keys_pinned(host):
    """The agent pins KVM's static keys (agent.pin_kvm_static_keys): it holds
    a VM and its vCPU for as long as it lives, so VMs that come and go in L1
    never bring those keys' counts to zero and L1's kernel patches no code
    for them (the int3 dance of both CPUs under multi-threaded TCG, where L1
    froze). Counting the patches takes ftrace, and turning ftrace's tracer
    on or off is such a patch itself: that froze this test's L1 in two CI
    runs (ci27, ci29). So the test checks the pin: the agent holds its VM
    and vCPU before and after two VM lifecycles. (Counted with ftrace by
    hand: 0 text_poke_bp_batch calls for two VMs, 6 without the pin.)"""
    assert host.info["kvm_keys_pinned"], host.info
    held = "ls -l /proc/$PPID/fd | grep -cE 'anon_inode:kvm-(vm|vcpu)'"
    vm = f"{VIREO} run --kernel {PROBE} --cpus 2 --cmdline scenario=cpus >/dev/null"
    rc, out, err = host.run(f"{held}; {vm} && {vm}; rc=$?; {held}; exit $rc", timeout=300)
    assert (rc, out) == (0, "2\n2\n"), (out, err)


def test_l1_command_status_output_directory_and_environment(host):
    rc, out, err = host.run('echo out; echo err >&2; pwd; echo "$FOO $VIREO_IN_L1"; exit 7',
                            timeout=60, cwd=ROOT, env={"FOO": "bar"})
    assert (rc, out, err) == (7, f"out\n{ROOT}\nbar 1\n", "err\n")
    assert host.run(["printf", "%s|", "a b", "c"], timeout=60) == (0, "a b|c|", "")
    rc, _, err = host.run(["/nonexistent/program"], timeout=60)
    assert rc == 127 and "nonexistent" in err
    rc, _, _ = host.run("kill -TERM $$", timeout=60)
    assert rc == -15


def test_l1_timeout_kills_the_command_and_what_it_started(host):
    seen = []
    with pytest.raises(l1.CommandTimeout) as e:
        host.run("echo before; sleep 1000 & sleep 1000", timeout=3,
                 output=lambda fd, data: seen.append((fd, data)))
    assert e.value.stdout == "before\n" and seen == [(1, b"before\n")]
    # L1 serves on, and no sleep is left (the whole process group went)
    rc, out, _ = host.run("cat /proc/[0-9]*/comm | grep -cx sleep", timeout=60)
    assert (rc, out) == (1, "0\n")


def test_l1_sees_this_root_read_only_and_writes_to_writable_dirs(host, writable):
    rc, _, err = host.run(f"touch {ROOT}/l1-was-here", timeout=60)
    assert rc != 0 and "Read-only file system" in err
    assert not (ROOT / "l1-was-here").exists()
    rc, out, err = host.run(f"head -n 3 {ROOT / 'Makefile'}; "
                            f"echo from-l1 > {writable}/back; touch /tmp/own-tmpfs",
                            timeout=60)
    assert rc == 0, err
    assert out.splitlines() == (ROOT / "Makefile").read_text().splitlines()[:3]
    assert (writable / "back").read_text() == "from-l1\n"


def test_l1_loads_modules_the_kernel_asks_for(host):
    """ip link add ... type vlan makes the kernel request 8021q: it comes from
    the unpacked kernel package, as do the dummy and bridge drivers."""
    rc, out, err = host.run("ip link add d0 type dummy && "
                            "ip link add link d0 name d0.10 type vlan id 10 && "
                            "ip link add br0 type bridge vlan_filtering 1 && "
                            "cut -d' ' -f1 /proc/modules | grep -xE '8021q|dummy|bridge' | sort",
                            timeout=60)
    assert (rc, out.split()) == (0, ["8021q", "bridge", "dummy"]), err


def test_a_boot_of_l1_that_never_comes_up_is_booted_again(monkeypatch):
    """An L1 whose agent never says ready (seen in CI: L1's console stopped
    at "starting the agent") is killed and booted again; start() keeps why
    the failed boot failed, and the next boot serves commands."""
    real = l1.NestedHost._frame
    failed = []

    def first_boot_silent(self, limit, what, frozen=False):
        if what == "L1 did not come up" and not failed:
            failed.append(what)
            raise self._fail(f"{what}: nothing from L1's agent (this test)", l1.L1Frozen)
        return real(self, limit, what, frozen)

    monkeypatch.setattr(l1.NestedHost, "_frame", first_boot_silent)
    h = l1_or_skip()
    try:
        assert len(h.boot_failures) == 1 and "(this test)" in h.boot_failures[0]
        assert h.run("echo up")[:2] == (0, "up\n")
    finally:
        h.close()


def test_l1_run_cli_status_and_output(tmp_path):
    if os.environ.get("VIREO_IN_L1"):
        pytest.skip("skipped: no nested test host inside the nested test host")
    r = subprocess.run([str(L1_RUN), "-t", "60", "--", "echo", "hi;", "echo", "there", ">&2;",
                        "exit", "7"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if r.returncode == 125 and "needs" in r.stderr:
        pytest.skip(f"skipped: {r.stderr.strip()}")
    assert (r.returncode, r.stdout, r.stderr) == (7, "hi\n", "there\n")


BATCH_TESTS = '''
import os
import pathlib
import signal
import time

import pytest

import hwvirt

HERE = pathlib.Path(__file__).parent


def prepare():
    (HERE / "prepared").write_text("on the host\\n")


VM = pytest.mark.hw_virt(prepare=prepare)


@VM
def test_in_l1():
    assert os.environ["VIREO_IN_L1"] == "1" and hwvirt.time_scale() == 4
    assert os.path.exists("/dev/kvm")
    assert (HERE / "prepared").read_text() == "on the host\\n"


@VM
def test_fails_in_l1():
    assert 6 * 7 == 43, "arithmetic in L1"


@VM
def test_quiet_for_a_while():
    # longer than the outer run's silence timeout: the agent's heartbeats
    # say that L1 is alive; shorter than the tests' limit
    time.sleep(20)


@VM
def test_freezes_l1_once():
    if os.environ["VIREO_L1_BOOT"] == "1":
        os.kill(os.getppid(), signal.SIGSTOP)   # the agent: L1 falls silent
        time.sleep(600)


@VM
def test_panics_l1_once():
    if os.environ["VIREO_L1_BOOT"] == "2":
        with open("/proc/sysrq-trigger", "w") as f:
            f.write("c")                        # L1's kernel panics; QEMU ends
        time.sleep(600)


@VM
def test_overruns_its_limit():
    time.sleep(600)         # interrupted at VIREO_NESTED_TEST_LIMIT


@VM
def test_overruns_deaf_to_its_watchdog():
    while True:             # a wait that never gives up, as in a process stuck in the kernel
        try:
            time.sleep(600)
        except BaseException:
            pass


@VM
def test_skips_in_l1():
    pytest.skip("skipped: a reason from L1")


def test_on_the_host():
    assert "VIREO_IN_L1" not in os.environ
'''


LIMIT = 30     # each test's in L1 (VIREO_NESTED_TEST_LIMIT)


def test_hw_virt_batch_reports_each_outcome(tmp_path):
    """A test file with hw_virt tests, run by an outer pytest that sends them
    to L1 (VIREO_NESTED=always): each is reported with what it did there,
    the unmarked one runs on the host, prepare ran on the host first. One of
    them freezes the first L1 (its agent stops): a second L1 runs it and the
    tests after it, and none of those before runs twice (the first L1 is
    woken by a monitor command and an NMI before it counts as frozen); the next one makes
    the second L1's kernel panic: a third L1 runs it and the last; a test
    quiet for longer than the silence timeout is not taken for a freeze. A
    test that runs past its limit fails, and the tests after it run in a new
    L1; so does one deaf to its watchdog, whose run in L1 then ends."""
    if os.environ.get("VIREO_IN_L1"):
        pytest.skip("skipped: no nested test host inside the nested test host")
    (tmp_path / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT / 'tests/nested')!r})\nimport hwvirt\n\n\n"
        "def pytest_configure(config):\n    hwvirt.configure(config)\n")
    (tmp_path / "test_batch.py").write_text(BATCH_TESTS)
    # its own logs, the kernel already fetched
    cache = tmp_path / "cache"
    cache.mkdir()
    kernels = l1.cache_dir() / "kernel"
    kernels.mkdir(parents=True, exist_ok=True)
    (cache / "kernel").symlink_to(kernels)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIREO_")}
    env.update(VIREO_NESTED="always", VIREO_L1_CACHE=str(cache), VIREO_L1_SILENCE_TIMEOUT="15",
               VIREO_NESTED_TEST_LIMIT=str(LIMIT))
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-rs",
                        "--rootdir", str(tmp_path), "--junitxml", str(tmp_path / "outer.xml"),
                        "test_batch.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=900)
    if "skipped: no hardware virtualization, and" in r.stdout:
        pytest.skip(r.stdout.split("skipped: no hardware virtualization, and")[1].split("\n")[0])
    cases = {c.get("name"): c for c in ET.parse(tmp_path / "outer.xml").getroot().iter("testcase")}
    out = r.stdout + r.stderr
    assert set(cases) == {"test_in_l1", "test_fails_in_l1", "test_quiet_for_a_while",
                          "test_freezes_l1_once", "test_panics_l1_once", "test_skips_in_l1",
                          "test_overruns_its_limit", "test_overruns_deaf_to_its_watchdog",
                          "test_on_the_host"}, out
    for name in ("test_in_l1", "test_on_the_host", "test_quiet_for_a_while",
                 "test_freezes_l1_once", "test_panics_l1_once"):
        assert cases[name].find("failure") is None and cases[name].find("error") is None, out
    failure = cases["test_fails_in_l1"].find("failure")
    assert failure is not None and "arithmetic in L1" in failure.text, out
    assert "[in the nested test host; the run's log:" in failure.text
    skipped = cases["test_skips_in_l1"].find("skipped")
    assert skipped is not None and skipped.get("message") == "skipped: a reason from L1", out
    assert "tests go to the nested test host" in r.stdout and "L1 up in" in r.stdout, out
    assert "L1 froze during test_batch.py::test_freezes_l1_once; a new L1 runs the 5 " \
           "test(s)" in r.stdout, out
    assert "L1 died during test_batch.py::test_panics_l1_once; a new L1 runs the 4 " \
           "test(s)" in r.stdout, out
    failure = cases["test_overruns_its_limit"].find("failure")
    assert failure is not None and f"ran past its {LIMIT} s in L1" in failure.text, out
    assert "this run's processes:" in failure.text and "time.sleep(600)" in failure.text, out
    failure = cases["test_overruns_deaf_to_its_watchdog"].find("error")
    assert failure is not None and "still stuck after its limit" in failure.text, out
    assert "(the run ends here)" in failure.text, out
    assert "test_batch.py::test_overruns_its_limit overran its limit; a new L1 runs the 2 " \
           "test(s)" in r.stdout, out
    assert "test_batch.py::test_overruns_deaf_to_its_watchdog overran its limit; a new L1 " \
           "runs the 1 test(s)" in r.stdout, out
    assert "5 boots of L1" in r.stdout, out
    # the frozen L1 was woken twice before it counted as frozen (a slow
    # heartbeat elsewhere may add more)
    assert re.search(r", ([2-9]|\d\d+) wake-ups of a silent L1 \(", r.stdout), out
    log = (cache / "last-batch.log").read_text()
    assert log.count("test_batch.py::test_in_l1 PASSED") == 1, log
    assert log.count("test_batch.py::test_quiet_for_a_while PASSED") == 1, log
    assert log.count("test_batch.py::test_freezes_l1_once PASSED") == 1, log
    assert log.count("test_batch.py::test_panics_l1_once PASSED") == 1, log
    assert "L1's kernel reported:" in log and "sysrq triggered crash" in log, log
    # its agent (stopped) did not answer, but L1's kernel took the NMI
    assert "woken by a monitor command: no answer" in log, log
    assert "woken by an NMI: no answer" in log and "NMI received for unknown reason" in log, log
    assert "'kvm_keys_pinned': True" in log, log
    assert "test_on_the_host" not in log, log
    cpus = (cache / "last-batch-console-cpus.txt").read_text()
    assert "# info registers -a" in cpus and "RIP=" in cpus, cpus
    assert (tmp_path / "prepared").read_text() == "on the host\n"
