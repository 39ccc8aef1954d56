"""Shared fixtures for the end-to-end tests (DESIGN §6)."""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
VIREO = BUILD / "vireo"
PROBE = BUILD / "guest" / "probe.elf"

# Every deadline in the tests is multiplied by this (env VIREO_TEST_TIME_SCALE,
# default 1): a loaded or emulated machine (the nested test host) is slower,
# never different. Tests wait for conditions; the deadline only bounds a hang.
TIME_SCALE = float(os.environ.get("VIREO_TEST_TIME_SCALE") or 1)


def scaled(seconds):
    return seconds * TIME_SCALE


def wait_until(cond, timeout, what, step=0.02):
    """Polls cond() until it returns a true value, which is returned; after
    scaled(timeout) seconds fails, saying what was awaited (what: text, or a
    callable giving it, evaluated only then)."""
    import time
    deadline = time.monotonic() + scaled(timeout)
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            detail = what() if callable(what) else what
            raise AssertionError(f"timed out after {scaled(timeout):g} s waiting for {detail}")
        time.sleep(step)


def on_tmpfs(path):
    """Whether PATH is on a tmpfs, which refuses O_DIRECT."""
    out = subprocess.run(["stat", "-f", "-c", "%t", str(path)], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip(), 16) == 0x01021994


# Where the host has no /dev/kvm, these are skipped, or with
# VIREO_NESTED_PROBE=1 go to the nested test host, which has one
# (tests/nested/hwvirt.py).
needs_kvm = pytest.mark.kvm
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="skipped: qemu-system-x86_64 not installed")
needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                    reason="skipped: qemu-img not installed")


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


def vireo_args(cmdline, cpus=1, memory="256M", extra=(), kernel=None, netns=None):
    """--debug-exit: the probe's exit status (a failure it found) is the VMM's,
    as with QEMU's isa-debug-exit."""
    return in_netns([str(VIREO), "run", "--debug-exit", "--kernel", str(kernel or PROBE),
                     "--cpus", str(cpus), "--memory", memory, "--cmdline", cmdline, *extra],
                    netns)


@pytest.fixture
def sock():
    """A fresh path for a VMM's control socket, removed after the test with
    the paths a test made from it (a second VMM's PATH.dst, PATH.2)."""
    import glob
    import time
    path = f"/tmp/vireo-ctl-{os.getpid()}-{time.monotonic_ns()}.sock"
    yield path
    for p in glob.glob(glob.escape(path) + "*"):
        os.unlink(p)


# How long a killed process may take to end: one that takes longer is stuck
# in the kernel (state D, deaf to SIGKILL), and waiting on would hang the test.
KILLED_END_S = 30


def output_at_exit(p, timeout, name):
    """(stdout, stderr) of Popen P (text pipes) once it ends; one that runs
    past scaled(timeout) is killed and fails with what it printed so far and
    where its threads were (stall_report); one that then does not end within
    KILLED_END_S fails too, with where its threads are stuck."""
    import subprocess
    try:
        return p.communicate(timeout=scaled(timeout))
    except subprocess.TimeoutExpired:
        report = stall_report(p.pid)
    p.kill()
    try:
        out, err = p.communicate(timeout=scaled(KILLED_END_S))
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{name} still running after {scaled(timeout):g} s, and "
                             f"{scaled(KILLED_END_S):g} s after SIGKILL (stuck in the "
                             f"kernel):\n{stall_report(p.pid)}\nbefore the kill:\n{report}"
                             ) from None
    quiet = "" if out.strip() else " (its stdout stayed empty)"
    raise AssertionError(f"{name} still running after {scaled(timeout):g} s"
                         f"{quiet}:\n{out[-4000:]}\n{err[-2000:]}\n{report}")


def run_until_exit(args, timeout):
    """(status, stdout, stderr) of ARGS; one that runs past scaled(timeout)
    fails (output_at_exit)."""
    import subprocess
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        out, err = output_at_exit(p, timeout, args[0])
    finally:
        if p.poll() is None:
            p.kill()        # not waited for: it may never end
    return p.returncode, out, err


def kvm_trace(seconds):
    """The last of KVM's exit, emulation, page fault and injected exception
    events over `seconds` (tracefs, where mounted: the nested test host), so
    that a vCPU stuck in a loop says where: its RIP, exit code, fault
    address. Best effort; system-wide, and in the nested test host only
    the stalled VM runs."""
    import time
    t = next((d for d in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
              if os.path.isdir(d + "/events/kvm")), None)
    if t is None:
        time.sleep(seconds)
        return []
    events = ["kvm_exit", "kvm_emulate_insn", "kvm_page_fault", "kvm_inj_exception"]

    def put(path, text):
        with open(f"{t}/{path}", "w") as f:
            f.write(text)
    try:
        put("trace", "")
        for e in events:
            put(f"events/kvm/{e}/enable", "1")
        put("tracing_on", "1")
        time.sleep(seconds)
    finally:
        put("tracing_on", "0")
        for e in events:
            put(f"events/kvm/{e}/enable", "0")
    with open(f"{t}/trace") as f:
        lines = [line.rstrip() for line in f if not line.startswith("#")]
    return [f"  KVM's last events ({len(lines)} kept in {seconds} s):",
            *("    " + line.strip()[:200] for line in lines[-40:])]


def stall_report(pid):
    """What a process that does not end is doing: each thread's state, CPU
    time and kernel stack, twice a second apart, and KVM's counters for its
    VMs (debugfs, where mounted). Best effort: for the failure message."""
    def read(path):
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return "?"

    def snapshot():
        lines = []
        for pids in read(f"/proc/{pid}/task/{pid}/children").split() + [str(pid)]:
            for tid in sorted(os.listdir(f"/proc/{pids}/task")) if os.path.isdir(
                    f"/proc/{pids}/task") else ():
                stat = read(f"/proc/{pids}/task/{tid}/stat").rsplit(")", 1)[-1].split()
                comm = read(f"/proc/{pids}/task/{tid}/comm")
                state, ticks = (stat[0], int(stat[11]) + int(stat[12])) if len(stat) > 12 \
                    else ("?", -1)
                stack = read(f"/proc/{pids}/task/{tid}/stack").replace("\n", " | ")[:300]
                lines.append(f"  {pids}/{tid} {comm} {state} cpu_ticks={ticks} {stack}")
        kvm = [d for d in (os.listdir("/sys/kernel/debug/kvm") if os.path.isdir(
            "/sys/kernel/debug/kvm") else ()) if d.split("-")[0] == str(pid)]
        for d in kvm:
            base = f"/sys/kernel/debug/kvm/{d}"
            stats = {n: read(f"{base}/{n}") for n in sorted(os.listdir(base))
                     if os.path.isfile(f"{base}/{n}")}
            lines.append(f"  kvm {d}: " + " ".join(f"{k}={v}" for k, v in stats.items()
                                                     if v not in ("0", "?")))
        return lines

    try:
        first = snapshot()
        trace = kvm_trace(1)
        return "\n".join(["stall report (threads, then again 1 s later):", *first,
                          "  --", *snapshot(), *trace])
    except Exception as e:    # noqa: BLE001 - a report must never hide the failure
        return f"stall report failed: {e!r}"


def run_vireo(cmdline, cpus=1, memory="256M", extra=(), timeout=120, kernel=None, netns=None):
    args = vireo_args(cmdline, cpus, memory, extra, kernel, netns)
    return ProbeRun(*run_until_exit(args, timeout))


def qemu_args(cmdline, cpus=1, memory="256M", machine="microvm", extra=(), netns=None,
              kernel=None, qmp=None):
    """The reference VMM (DESIGN §5): QEMU microvm with the debug-exit device
    at the same port; its exit status is (code << 1) | 1 after a debug exit.
    qmp: a Unix socket path for QMP (qmp_command)."""
    args = ["qemu-system-x86_64", "-enable-kvm", "-M", machine, "-m", memory,
            "-smp", str(cpus), "-nographic", "-nodefaults", "-serial", "stdio",
            "-no-reboot", "-kernel", str(kernel or PROBE), "-append", cmdline,
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4", *extra]
    if qmp:
        args += ["-qmp", f"unix:{qmp},server=on,wait=off"]
    return in_netns(args, netns)


def run_qemu(cmdline, cpus=1, memory="256M", machine="microvm", extra=(), timeout=120,
             netns=None, kernel=None):
    args = qemu_args(cmdline, cpus, memory, machine, extra, netns, kernel)
    return ProbeRun(*run_until_exit(args, timeout))


class LiveProbe:
    """A probe guest still running: its PROBE lines as they come, its stdin
    (the serial console's input on both VMMs) as a pipe."""

    def __init__(self, args):
        import subprocess
        import threading
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self.out, self.err = [], []
        self.cond = threading.Condition()
        self.threads = [threading.Thread(target=self._drain, args=(f, l), daemon=True)
                        for f, l in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self.threads:
            t.start()

    def _drain(self, f, lines):
        for line in f:
            with self.cond:
                lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_line(self, prefix, timeout=30):
        """The first stdout line starting with prefix; fails after timeout
        or when the VMM exits without printing it."""
        import time
        deadline = time.monotonic() + scaled(timeout)
        with self.cond:
            while True:
                for line in self.out:
                    if line.startswith(prefix):
                        return line.rstrip("\n")
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and
                                 not any(t.is_alive() for t in self.threads)):
                    raise AssertionError(f"no {prefix!r} line within {scaled(timeout):g} s "
                                         f"or before the exit: {''.join(self.out + self.err)}")
                self.cond.wait(min(left, 0.5))

    def send(self, text):
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def wait_exit(self, timeout):
        """True if the VMM exited within scaled(timeout) seconds; then its
        output is all in out and err (the readers saw the pipes' end)."""
        import subprocess
        try:
            self.proc.wait(timeout=scaled(timeout))
        except subprocess.TimeoutExpired:
            return False
        for t in self.threads:
            t.join(scaled(5))
        return True

    def finish(self, timeout=30):
        """Waits for the exit (killing the VMM after scaled(timeout)) -> ProbeRun."""
        import subprocess
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self.proc.wait(timeout=scaled(timeout))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for t in self.threads:
            t.join(5)
        return ProbeRun(self.proc.returncode, "".join(self.out), "".join(self.err))


def wait_socket(path, timeout=10, retry_refused=False):
    """Connects to a Unix socket as soon as its path exists. vireo creates
    its sockets already listening (src/util/sock.c), so for vireo one try
    once the path appears is enough and a refusal is a bug. QEMU binds
    before it listens: retry_refused=True for its sockets."""
    import socket
    import time
    wait_until(lambda: os.path.exists(path), timeout, f"socket {path}")
    deadline = time.monotonic() + scaled(timeout)
    while True:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(scaled(5))
        try:
            s.connect(str(path))
            return s
        except ConnectionRefusedError:
            s.close()
            if not retry_refused or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def vireo_control(path, **request):
    """One request on a VMM's control socket (docs/api.md)."""
    import json
    with wait_socket(path) as s:
        f = s.makefile("rw")
        f.write(json.dumps(request) + "\n")
        f.flush()
        return json.loads(f.readline())


def qmp_command(path, command, **arguments):
    """One QMP command on a QEMU -qmp socket; returns its "return" (events
    that arrive before it are skipped)."""
    import json
    with wait_socket(path, retry_refused=True) as s:
        f = s.makefile("rw")
        json.loads(f.readline())  # greeting
        for cmd, args in (("qmp_capabilities", {}), (command, arguments)):
            f.write(json.dumps({"execute": cmd, "arguments": args}) + "\n")
            f.flush()
            while True:
                reply = json.loads(f.readline())
                if "error" in reply:
                    raise AssertionError(f"QMP {cmd}: {reply['error']}")
                if "return" in reply:
                    break
        return reply["return"]


def qemu_hmp(path, command, timeout=60):
    """One human-monitor command on a QEMU -monitor unix socket, once QEMU
    listens; returns what QEMU printed for it (up to its next prompt), so
    the command has been applied when this returns."""
    prompt = b"(qemu) "
    with wait_socket(path, timeout=timeout, retry_refused=True) as s:
        def until_prompt():
            got = b""
            while not got.endswith(prompt):
                chunk = s.recv(4096)
                if not chunk:
                    raise AssertionError(f"QEMU monitor closed during {command!r}: {got!r}")
                got += chunk
            return got
        until_prompt()          # the banner
        s.sendall(command.encode() + b"\n")
        return until_prompt().decode(errors="replace")


@pytest.fixture
def daemon(tmp_path):
    """A `vireo daemon` on a private state dir (daemonutil.Daemon), with the
    test's tmp_path as its storage directory (disks must be there); every
    VMM it started is killed afterwards."""
    from daemonutil import Daemon
    d = Daemon(extra=["--storage", str(tmp_path)]).start()
    yield d
    d.cleanup()


# Tests that boot an unmodified Linux kernel need hardware virtualization:
# @hw_virt runs them directly where the host has it, in the nested test host
# elsewhere (DESIGN §5; tests/nested/hwvirt.py).
sys.path.insert(0, str(ROOT / "tests" / "nested"))
import hwvirt  # noqa: E402

have_kvm = hwvirt.host_has_kvm
have_hw_virt = hwvirt.host_has_hw_virt
hw_virt = pytest.mark.hw_virt


def pytest_configure(config):
    hwvirt.configure(config)


def pytest_collection_modifyitems(config, items):
    hwvirt.skip_without_kvm(items)
