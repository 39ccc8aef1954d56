"""pytest and the nested test host (DESIGN §5, §6; docs/linux-guest-tests.md).

Tests marked `hw_virt` need hardware virtualization (vmx/svm): an unmodified
Linux kernel booted by vireo. Where the host has it, they run directly, as any
test. Where it has not (our machines), they are not skipped: at the first of
them one L1 boots (tests/nested/l1.py) and runs all the selected hw_virt tests
in one pytest run inside it, in the checkout that L1 sees read-only at the
same path; each of them then reports here the outcome of its run in L1 (a
line per test from the plugin report_stream.py, as each ends): passed, failed
with the failure text and the captured output, or skipped with its reason.
Their fixtures run only in L1.

    @pytest.mark.hw_virt(prepare=build_kit)
    @pytest.mark.hw_virt(prepare=build_image, seconds=600)

Tests marked `kvm` (conftest.needs_kvm: the probe guest's) need only a
/dev/kvm: where the host has none, VIREO_NESTED_PROBE=1 sends them to the
same batch in L1, which has one; else they are skipped.

prepare: a function run once on this host before L1 boots, for what the
tests need and cannot make in L1 (the checkout is read-only there), such as
the Linux kit; a skip or failure in it is the outcome of the tests that ask
for it. seconds: the test's share of the batch's deadline (below).

In L1 the environment has VIREO_IN_L1=1 and VIREO_TEST_TIME_SCALE=4 (a
factor for deadlines: everything there runs under TCG); VIREO_* variables of
this process go along. The inner run's output goes to build/nested/
last-batch.log (under VIREO_L1_CACHE) as it comes, L1's console to
last-batch-console.log next to it. VIREO_L1_BATCH_TIMEOUT (seconds) bounds
the whole run (default 300 + 60 per test: they take ~15 s each here, and a CI machine
was seen three times slower; a test that takes minutes there gives its share with the
marker's seconds=). VIREO_NESTED=always sends the
tests to L1 even on a host with hardware virtualization, =never runs them
directly even without.

An L1 that freezes or dies (its agent silent or gone, l1.L1Lost: seen in CI)
is killed and a new one runs the tests that had not ended, up to
MAX_L1_RESTARTS times; the test that was running when it was lost is named in
the terminal summary, and its first run's failure is kept in its report. In
L1, VIREO_L1_BOOT says which boot of L1 runs the tests (1, 2, ...).

Each test has a limit in L1 (test_limit: past all its own deadlines). One
that runs past it is interrupted and fails, saying what its processes were
doing, and the run in L1 stops after it (report_stream.py, its watchdog);
should that not end the run either, the host does (l1.L1Wedged). The tests
that had not run go on in a new L1, as after a freeze.
"""
import contextlib
import json
from pathlib import Path
import os
import re
import sys
import time
import traceback

import pytest

import l1
import report_stream
from report_stream import PREFIX as REPORT_PREFIX

MARKER = "hw_virt"
KVM_MARKER = "kvm"
# With shadow paging in L1 (l1.SHADOW_PAGING) L1's own kernel died twice in
# one batch of CI run ci27 (in its CPU entry code, while KVM ran a vCPU), where
# guests failed before; a new L1 costs ~10 s and the test that was running.
MAX_L1_RESTARTS = 6
SLOWEST = 8     # tests named in the summary with their time in L1 (where it went)


def host_has_kvm():
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def host_has_hw_virt():
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " vmx" in flags or " svm" in flags


def time_scale():
    """The factor by which tests stretch their deadlines (1 but in L1)."""
    try:
        return max(1.0, float(os.environ.get("VIREO_TEST_TIME_SCALE", "1")))
    except ValueError:
        return 1.0


def configure(config):
    """Called from conftest.py's pytest_configure: declares the markers and,
    when some of the marked tests go to L1 (nested()), registers the batch."""
    config.addinivalue_line(
        "markers", f"{MARKER}(prepare=None, seconds=60): needs hardware virtualization; runs "
                   "in the nested test host where the host has none (tests/nested/hwvirt.py)")
    config.addinivalue_line(
        "markers", f"{KVM_MARKER}: needs /dev/kvm (the probe guest's tests); where the host has "
                   "none, skipped, or run in the nested test host with VIREO_NESTED_PROBE=1")
    if ((nested() or nested(kvm_only=True)) and
            not config.pluginmanager.has_plugin("vireo-nested-batch")):
        config.pluginmanager.register(NestedBatch(config), "vireo-nested-batch")


def goes_to_l1(item):
    """Whether ITEM runs in the batch in L1 rather than here."""
    return bool((item.get_closest_marker(MARKER) and nested()) or
                (item.get_closest_marker(KVM_MARKER) and nested(kvm_only=True)))


def skip_without_kvm(items):
    """Called from conftest.py's pytest_collection_modifyitems: a test that
    needs /dev/kvm, on a host without one, that does not go to L1 (the
    default; VIREO_NESTED_PROBE=1 sends it) is skipped, saying so."""
    if host_has_kvm():
        return
    for item in items:
        if item.get_closest_marker(KVM_MARKER) and not goes_to_l1(item):
            item.add_marker(pytest.mark.skip(reason="skipped: no usable /dev/kvm"))


def budget(item):
    """An item's share of the batch's deadline: its marker's seconds= (a
    test that takes minutes in L1, such as a whole Debian system's boot),
    else 60."""
    return max([m.kwargs.get("seconds", 60) for m in item.iter_markers(MARKER)] or [60])


# The longest deadline of a test's own (a Linux boot's 150 s, before the time
# scale): the watchdog in L1 (report_stream.py) fires only after it, so a test
# fails with its own message first when it can.
OWN_DEADLINE_S = 150
LIMIT_MARGIN_S = 120


# How long past a test's limit the host waits for the run in L1 to end it
# (report_stream.py: up to MAX_ALARMS - 1 graces) before it takes the run as wedged.
WATCHDOG_S = report_stream.OVERRUN_GRACE_S * report_stream.MAX_ALARMS + 60


class TestsLeft(Exception):
    """The run in L1 stopped after a test that overran its limit."""


def test_limit(item, scale):
    """How long ITEM may run in L1 (deadlines stretched by SCALE) before its
    watchdog interrupts it; VIREO_NESTED_TEST_LIMIT (seconds) sets it for
    every test."""
    return (l1.env_int("VIREO_NESTED_TEST_LIMIT", 0) or
            scale * max(budget(item), OWN_DEADLINE_S) + LIMIT_MARGIN_S)


def nested(kvm_only=False):
    """Whether hw_virt tests go to L1: where the host lacks hardware
    virtualization, or always with VIREO_NESTED=always; never with
    VIREO_NESTED=never, nor in L1. With KVM_ONLY, whether the kvm tests go:
    where the host has no /dev/kvm and VIREO_NESTED_PROBE=1 asks for it (not
    by default: in L1 they still fail now and then, docs/linux-guest-tests.md),
    or always with VIREO_NESTED=always."""
    mode = os.environ.get("VIREO_NESTED", "auto")
    if os.environ.get("VIREO_IN_L1") or mode == "never":
        return False
    if kvm_only:
        return mode == "always" or (os.environ.get("VIREO_NESTED_PROBE") == "1"
                                    and not host_has_kvm())
    return mode == "always" or not host_has_hw_virt()


# Failures seen in L1 on work that passes everywhere else, whose cause is not
# found (docs/linux-guest-tests.md):
# - a guest kernel that dies in its own CPU entry code (GS base lost on an
#   interrupt from user mode, then recursive page faults to a double fault),
#   once in ~10 full batches; vireo never touches a vCPU's registers after
#   boot, so QEMU's TCG emulation of SVM is the suspect;
# - a VM that never starts: no output at all until the test's deadline, both
#   L1 CPUs busy, in ~1 batch of 4, each time in a different test.
# - a guest vCPU that loops in L1's KVM instruction emulator, each emulated
#   instruction injecting a page fault into the guest (~20 k/s of both in the
#   stall report's KVM counters), seen once in ~10 firmware-boot batches, in
#   the middle of a Linux boot that passes otherwise; and in ci22 in the
#   dmesg test (~41 k/s of both; KVM's trace: a nested page fault during
#   the guest's page walk at a GPA above the guest's 512 MiB of RAM, which
#   KVM takes for MMIO, emulates, and answers with a #PF, again and again).
# - a Linux guest vCPU that triple-faults with no kernel message first (vireo:
#   "vCPU N: triple fault"), seen twice in test_linux_dmesg_has_no_complaint_
#   about_vireo, while the guest printed its kernel log with the balloon
#   inflated and free page reporting on (docs/linux-guest-tests.md: a vireo
#   bug there is not ruled out).
# - the QEMU reference that resets silently (ci26) or never ends (CI stop 28).
# Such a failure is re-run once, in a new L1, and the terminal summary
# names it; a second failure stands. At most MAX_RERUNS per batch: a vireo bug
# that breaks guests shows up every time, or elsewhere in the trace.
MAX_RERUNS = 3
GUEST_CPU_FAULT = re.compile(r"Kernel panic - not syncing: Fatal exception in interrupt")
GUEST_ENTRY_FRAME = re.compile(r"RIP: 0010:(?:error_entry|asm_exc_\w+|asm_sysvec_\w+|"
                               r"entry_SYSCALL_64\w*|paranoid_entry|irqentry_enter)\+")
NEVER_STARTED = re.compile(r"still running after [\d.]+ s \(its stdout stayed empty\)")
GUEST_TRIPLE_FAULT = re.compile(r"vireo: vCPU \d+: triple fault: the machine resets")
# The QEMU reference's guest gone before its last line, QEMU ending with
# status 0: with -no-reboot, QEMU ends so on a triple fault and prints
# nothing (vireo prints the line above). Seen once in ci26, in a QEMU run; a
# reference run says nothing about vireo, and a real failure fails twice.
QEMU_REFERENCE = re.compile(r"\[qemu[\]-]")
QEMU_SILENT_RESET = re.compile(r"exit status 0; stderr ends with")
# The QEMU reference stuck past its deadline in a way only a kernel makes:
# deaf to SIGKILL (conftest.output_at_exit), or its test past its limit
# (report_stream.py). CI stop 28: a reference run that never ended in L1.
QEMU_STUCK = re.compile(r"s after SIGKILL \(stuck in the kernel\)|ran past its \d+ s in L1")


# conftest.stall_report's KVM counter lines, taken twice 1 s apart. The
# counters come in name order and some come and go ("blocking=1" before
# "directed_yield_..." and "exits="), so nothing is assumed before ours: the
# first pattern here wanted "exits=" first and never matched L1's kernel, so
# an emulator loop in ci22 failed the run instead of being re-run.
KVM_COUNTERS = re.compile(r"kvm \S+:.*?\binsn_emulation=(\d+).*?\bpf_guest=(\d+)")
EMULATOR_LOOP_PER_S = 1000


def emulator_loop(text):
    """Whether a stall report in TEXT shows a vCPU that emulates instructions
    and injects page faults, both more than EMULATOR_LOOP_PER_S a second."""
    samples = [(int(a), int(b)) for a, b in KVM_COUNTERS.findall(text)]
    return len(samples) >= 2 and all(
        later - earlier > EMULATOR_LOOP_PER_S for earlier, later in zip(samples[0], samples[1]))


def l1_fault(outcome, nodeid=""):
    """Whether OUTCOME (of test NODEID) is one of the unexplained L1
    failures above."""
    if outcome.outcome != "failed":
        return False
    if (QEMU_REFERENCE.search(nodeid) and QEMU_SILENT_RESET.search(outcome.text)
            and "LINUX done=1" not in outcome.text):
        return True
    if QEMU_REFERENCE.search(nodeid) and QEMU_STUCK.search(outcome.text):
        return True
    crashed = GUEST_CPU_FAULT.search(outcome.text) and GUEST_ENTRY_FRAME.search(outcome.text)
    return bool(crashed or NEVER_STARTED.search(outcome.text) or emulator_loop(outcome.text)
                or GUEST_TRIPLE_FAULT.search(outcome.text))


@contextlib.contextmanager
def redirect_fds(f):
    """Standard output and error, of this process and its children, into F."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


class Outcome:
    """What one test did in L1 (or why it did not get there)."""

    def __init__(self, outcome, when="call", text="", duration=0.0, sections=(),
                 xfail=False):
        self.outcome, self.when, self.text = outcome, when, text
        self.duration, self.sections, self.xfail = duration, list(sections), xfail

    @classmethod
    def from_phases(cls, phases, where):
        """From the setup/call/teardown reports that report_stream.py sent."""
        duration = sum(p["duration"] for p in phases)
        sections = [(f"{title} in L1", text) for p in phases for title, text in p["sections"]]
        for p in phases:
            if p["outcome"] == "failed":
                return cls("failed", p["when"], where + p["text"], duration, sections)
        for p in phases:
            if p["outcome"] == "skipped" and p["xfail"] is not None:
                return cls("skipped", "call", p["xfail"], duration, xfail=True)
            if p["outcome"] == "skipped":
                return cls("skipped", "setup", p["text"], duration)
        return cls("passed", "call", "", duration, sections)


class NestedBatch:
    """The plugin that runs the hw_virt tests in one L1 (module docstring)."""

    def __init__(self, config):
        self.config = config
        self.items = {}         # nodeid -> item, the hw_virt tests selected
        self.outcomes = None    # nodeid -> Outcome, once the batch ran
        self.times = None
        self.reruns = []        # what went to a new L1, or was re-run (l1_fault)
        self.host = None        # the L1 that runs the batch
        self.boots = 0          # of L1, in this batch
        self.failed_boots = 0   # boots of L1 that never came up (l1.NestedHost.start)
        self.running = None     # the test L1 runs now, by its report_stream
        self.hosts = []         # every L1 of the batch (their wakes)
        self.log = l1.cache_dir() / "last-batch.log"

    def pytest_collection_finish(self, session):
        self.items = {i.nodeid: i for i in session.items if goes_to_l1(i)}

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item, nextitem):
        if item.nodeid not in self.items:
            return None
        if self.outcomes is None:
            self.outcomes = {}
            self._run_batch()
        ihook = item.ihook
        ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        for rep in self._reports(item, self.outcomes[item.nodeid]):
            ihook.pytest_runtest_logreport(report=rep)
        ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        # The item was never set up here; what earlier items set up and the
        # next one does not need is torn down, as runtestprotocol would (else
        # the next host test fails: "previous item was not torn down").
        item.session._setupstate.teardown_exact(nextitem)
        return True

    def pytest_terminal_summary(self, terminalreporter):
        if self.times:
            terminalreporter.write_line(self.times)
            slow = sorted(self.outcomes.items(), key=lambda kv: -kv[1].duration)[:SLOWEST]
            terminalreporter.write_line("hw_virt: the slowest in L1: " + ", ".join(
                f"{nodeid.rsplit('::', 1)[-1]} {o.duration:.0f} s" for nodeid, o in slow))
        for line in self.reruns:
            terminalreporter.write_line(f"hw_virt: {line}")

    # -- the batch -------------------------------------------------------------

    def _say(self, msg):
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(f"hw_virt: {msg}")

    def _run_batch(self):
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log.write_bytes(b"")
        with open(self.log, "ab") as log:     # appended to by children too
            try:
                self._batch(log)
            except Exception:
                why = traceback.format_exc()
                log.write(why.encode())
                self._settle([i for i in self.items.values() if i.nodeid not in self.outcomes],
                             Outcome("failed", "setup", f"the nested test batch failed:\n{why}"))

    def _batch(self, log):
        with redirect_fds(log):
            todo = self._prepare(list(self.items.values()))
        if not todo:
            return
        self._say(f"{len(todo)} tests go to the nested test host (log: {self.log})")
        t0 = time.monotonic()
        try:
            self._start_l1()
        except l1.L1Unavailable as e:
            return self._settle(todo, Outcome("skipped", "setup",
                                              f"skipped: no hardware virtualization, and {e}"))
        except l1.L1Error as e:
            return self._settle(todo, Outcome("failed", "setup", f"nested test host: {e}"))
        t1 = time.monotonic()
        boot = self.host.boot_seconds
        try:
            self._run_in(todo, log)
            self._log_l1_memory(log)
        finally:
            t2 = time.monotonic()
            self.host.close()
            boots = f", {self.boots} boots of L1" if self.boots > 1 else ""
            if self.failed_boots:
                boots += f" ({self.failed_boots} more that did not come up)"
            wakes = [w for h in self.hosts for w in h.wakes]
            for w in wakes:
                log.write(f"# L1 silent {w['after_s']} s, woken by {w['by']}: "
                          f"{'it came back' if w['woke'] else 'no answer'}\n".encode())
            if wakes:
                boots += (f", {len(wakes)} wake-ups of a silent L1 "
                          f"({sum(w['woke'] for w in wakes)} brought it back)")
            self.times = (f"hw_virt: L1 up in {boot:.1f} s ({t1 - t0:.1f} s with "
                          f"its set-up), {len(todo)} tests in {t2 - t1:.1f} s{boots}, L1 off in "
                          f"{time.monotonic() - t2:.1f} s; log: {self.log}")
            log.write(f"# {self.times}\n".encode())

    def _log_l1_memory(self, log):
        """What the batch left in L1's memory, into the log: the tests' files
        stay on its tmpfs until the run ends (pytest keeps every tmp_path)."""
        with contextlib.suppress(l1.L1Error, l1.CommandTimeout):
            _, out, _ = self.host.run("df -k /tmp | tail -1; grep -E '^(MemAvailable|Shmem):' "
                                      "/proc/meminfo", timeout=30)
            log.write(("# L1 after the batch: " + " | ".join(out.split("\n")) + "\n").encode())

    def _start_l1(self):
        """Boots an L1 (self.host) that sees the rootdir and this checkout."""
        checkout = str(Path(__file__).resolve().parents[2])
        root = str(self.config.rootpath)
        self.boots += 1
        self.host = l1.NestedHost(keep=sorted({root, checkout}), console_log=self.log.with_name(
            "last-batch-console.log"), kvm_amd=l1.SHADOW_PAGING)
        self.hosts.append(self.host)
        try:
            self.host.start()
        finally:
            self.failed_boots += len(self.host.boot_failures)


    def _prepare(self, items):
        """Runs each prepare function once; returns the items to send to L1
        (the others have their outcome)."""
        done, todo = {}, []
        for item in items:
            outcome = None
            for mark in item.iter_markers(MARKER):
                fn = mark.kwargs.get("prepare")
                if fn is None:
                    continue
                if fn not in done:
                    done[fn] = self._call_prepare(fn)
                outcome = outcome or done[fn]
            if outcome:
                self.outcomes[item.nodeid] = outcome
            else:
                todo.append(item)
        return todo

    @staticmethod
    def _call_prepare(fn):
        name = getattr(fn, "__qualname__", repr(fn))
        try:
            fn()
        except pytest.skip.Exception as e:
            return Outcome("skipped", "setup", str(e.msg))
        except Exception:
            return Outcome("failed", "setup", f"{name}() on this host, before the nested "
                                              f"test host:\n{traceback.format_exc()}")
        return None

    def _settle(self, items, outcome):
        for item in items:
            self.outcomes[item.nodeid] = outcome

    def _run_in(self, items, log):
        """Runs ITEMS in L1 (a new one after a freeze, a death or a test that
        overran), then re-runs once those that failed the way only L1 does."""
        where = f"[in the nested test host; the run's log: {self.log}]\n"
        todo, frozen = list(items), {}
        while todo:
            got = {}
            try:
                self._pytest_in(todo, got, where, log)
                todo = []
            except (l1.L1Lost, TestsLeft) as e:
                running = self.running or todo[0].nodeid
                if isinstance(e, (l1.L1Wedged, TestsLeft)):
                    # the test is over (failed); the others did not run
                    got.setdefault(running, Outcome("failed", "call", f"{where}{e}"))
                    what = f"{running} overran its limit"
                else:
                    how = "froze" if isinstance(e, l1.L1Frozen) else "died"
                    frozen[running] = (how, str(e))
                    what = f"L1 {how} during {running}"
                todo = [i for i in todo if i.nodeid not in got]
                self.outcomes.update(got)
                if not todo:
                    break
                if self.boots > MAX_L1_RESTARTS:
                    return self._settle(todo, Outcome("failed", "call", f"{where}{e}"))
                self.reruns.append(f"{what}; {len(todo)} test(s) that had not ended went "
                                   "to a new L1")
                self._say(f"{what}; a new L1 runs the {len(todo)} test(s) that had not ended")
                log.write(f"# {what}: {e}\n# a new L1 for: "
                          f"{' '.join(i.nodeid for i in todo)}\n".encode())
                try:
                    self.host.kill()     # what the test left may never end
                    self._start_l1()
                except l1.L1Error as e2:
                    return self._settle(todo, Outcome("failed", "setup",
                                                      f"{where}nested test host: {e2}"))
                continue
            except (l1.L1Error, l1.CommandTimeout) as e:
                self.outcomes.update(got)
                log.write(f"# {e}\n".encode())
                return self._settle([i for i in todo if i.nodeid not in got],
                                    Outcome("failed", "call", f"{where}{e}"))
            self.outcomes.update(got)
        for nodeid, (how, why) in frozen.items():
            self.outcomes[nodeid].sections.insert(0, (f"First run in L1 (L1 {how})", why))
        self._rerun_l1_faults(items, where, log)

    def _rerun_l1_faults(self, items, where, log):
        again = [i for i in items if l1_fault(self.outcomes[i.nodeid], i.nodeid)]
        if not 0 < len(again) <= MAX_RERUNS:
            return
        self._say(f"re-running {len(again)} test(s) that failed the way only L1 does")
        log.write(f"# re-running, they failed the way only L1 does: "
                  f"{' '.join(i.nodeid for i in again)}\n".encode())
        rerun = {}
        try:
            # in a new L1: in CI stop 25 two tests that failed so failed again
            # in the L1 that had just run them
            self.host.close()
            self._start_l1()
            self._pytest_in(again, rerun, where, log)
        except (l1.L1Error, l1.CommandTimeout) as e:
            log.write(f"# {e}\n".encode())
            for item in again:
                rerun.setdefault(item.nodeid, Outcome("failed", "call", f"{where}{e}"))
        for item in again:
            first, second = self.outcomes[item.nodeid], rerun[item.nodeid]
            second.sections.insert(0, ("First run in L1 (re-run: a known L1 fault)",
                                       first.text))
            self.outcomes[item.nodeid] = second
            self.reruns.append(f"a known L1 fault, re-run: {item.nodeid}: {second.outcome} "
                               "when re-run")

    def _pytest_in(self, items, got, where, log):
        """Runs ITEMS with pytest in L1; fills GOT (nodeid -> Outcome) as each
        test ends, so that GOT holds what ended even when this raises."""
        root = str(self.config.rootpath)
        python = sys.executable if l1.visible_in_l1(sys.executable) else "/usr/bin/python3"
        cmd = [python, "-m", "pytest", "-p", "no:cacheprovider", "-p", "report_stream", "-v",
               "-rs", "--durations=0", "--rootdir", root, *[i.nodeid for i in items]]
        env = {k: v for k, v in os.environ.items()
               if k.startswith("VIREO_") and not k.startswith("VIREO_L1_")}
        env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(Path(__file__).parent),
                   VIREO_L1_BOOT=str(self.boots))
        timeout = l1.env_int("VIREO_L1_BATCH_TIMEOUT", 300 + sum(map(budget, items)))
        log.write(f"# {l1.shorten(cmd, 10**6)}\n# in L1 ({self.host.info}), cwd {root}\n"
                  .encode())
        log.flush()
        self.running = None
        partial = b""
        began, limit, overran = 0.0, 0.0, []

        def report(line):
            nonlocal began, limit
            msg = json.loads(line[len(REPORT_PREFIX):])
            if msg.get("started"):
                self.running = msg["nodeid"]
                began, limit = time.monotonic(), float(msg.get("limit") or 0)
            else:
                got[msg["nodeid"]] = Outcome.from_phases(msg["phases"], where)
                if msg.get("overran"):
                    overran.append(msg["nodeid"])
                self.running = None

        def watch():
            """Why the run in L1 is wedged: its test is past the time in which
            its own watchdog (report_stream.py) would have ended the run."""
            wedged = limit + WATCHDOG_S
            if self.running and limit and time.monotonic() - began > wedged:
                return (f"{self.running} did not end within {wedged:.0f} s in L1, past "
                        "its watchdog's limit: the run there is wedged")
            return None

        def output(fd, data):
            nonlocal partial
            if fd == 2:
                *lines, partial = (partial + data).split(b"\n")
                data = b"".join(line + b"\n" for line in lines
                                if not line.startswith(REPORT_PREFIX.encode()))
                for line in lines:
                    if line.startswith(REPORT_PREFIX.encode()):
                        report(line.decode())
            log.write(data)
            log.flush()
        rc, _, _ = self.host.run(cmd, timeout=timeout, cwd=root, env=env, output=output,
                                 watch=watch)
        log.write(partial + f"# pytest exited with status {rc}\n".encode())
        left = [i for i in items if i.nodeid not in got]
        if overran and left:
            self.running = overran[-1]
            raise TestsLeft(f"{overran[-1]} overran its limit in L1; the run there stopped "
                            f"after it (status {rc})")
        for item in items:
            got.setdefault(item.nodeid, Outcome("failed", "call", f"{where}not reported by "
                                                                  f"pytest in L1 (status {rc})"))


    # -- reports ---------------------------------------------------------------

    @staticmethod
    def _reports(item, o):
        """The setup/call/teardown reports of ITEM for outcome O."""
        keywords = {k: 1 for k in item.keywords}

        def rep(when, outcome, longrepr=None, duration=0.0, sections=()):
            return pytest.TestReport(item.nodeid, item.location, keywords, outcome, longrepr,
                                     when, list(sections), duration, user_properties=[])

        if o.outcome == "skipped" and not o.xfail:
            path, lineno, _ = item.location
            return [rep("setup", "skipped", (str(item.path), lineno + 1, o.text)),
                    rep("teardown", "passed")]
        if o.xfail:
            call = rep("call", "skipped", None, o.duration)
            call.wasxfail = o.text
            return [rep("setup", "passed"), call, rep("teardown", "passed")]
        if o.when == "setup":
            return [rep("setup", o.outcome, o.text, o.duration, o.sections),
                    rep("teardown", "passed")]
        if o.when == "teardown":
            return [rep("setup", "passed"), rep("call", "passed", None, o.duration),
                    rep("teardown", o.outcome, o.text, 0.0, o.sections)]
        return [rep("setup", "passed"),
                rep("call", o.outcome, o.text or None, o.duration, o.sections),
                rep("teardown", "passed")]
