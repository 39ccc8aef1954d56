"""A pytest plugin for the inner run of the nested batch (hwvirt.py): as each
test starts and ends, one line on the original standard error says so:

    ##vireo-report {"nodeid": ..., "started": true, "limit": SECONDS}
    ##vireo-report {"nodeid": ..., "phases": [{"when", "outcome", "text",
                    "duration", "sections", "xfail"}, ...], "overran": BOOL}

so that the host knows every finished test's outcome at once, even when L1
freezes before the run ends (a JUnit file comes only at the end).

It is also each test's watchdog. A test that runs past its limit
(hwvirt.test_limit: past every deadline of its own) is interrupted where it
waits (SIGALRM raises Overran there) and fails with what its processes were
doing, in the kernel too; it gets OVERRUN_GRACE_S (or a third of its limit,
if less) more each time it is stuck again, and after MAX_ALARMS the run ends (exit status
OVERRUN_EXIT) with the test reported. Either way the run stops after that
test: what it left behind (a process stuck in L1's kernel) is not for the
next tests to meet, and the host runs them in a new L1. In CI stop 28 a
QEMU reference run hung past its own deadline in L1, and the batch went on
for 3,600 s until the whole run was killed, with 25 tests unrun.
Loaded with `-p report_stream` (tests/nested on PYTHONPATH)."""
import collections
import json
import os
import shutil
import signal

import pytest

PREFIX = "##vireo-report "
OVERRUN_GRACE_S = 60
MAX_ALARMS = 3
OVERRUN_EXIT = 70

# pytest captures fd 2 during each test; this copy is the real one.
_STDERR = os.dup(2)
_phases = {}
_watch = {"nodeid": None, "alarms": 0, "limit": 0}


class Overran(Exception):
    """The test ran past its limit in L1."""


def _text(report):
    if report.skipped and isinstance(report.longrepr, tuple):
        return report.longrepr[2].removeprefix("Skipped: ")
    return report.longreprtext


def _say(msg):
    data = (PREFIX + json.dumps(msg) + "\n").encode()
    while data:
        data = data[os.write(_STDERR, data):]


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return "?"


def _descendants(root):
    """ROOT's descendant processes, parents first."""
    children = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        stat = _read(f"/proc/{pid}/stat").rsplit(")", 1)[-1].split()
        if len(stat) > 1:
            children.setdefault(int(stat[1]), []).append(int(pid))
    out, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        todo += sorted(children.get(pid, []))
    return out[1:]


def processes_text():
    """What this run's child processes do: each one's command line, and each
    thread's state and wait channel, with its kernel stack when it sleeps
    uninterruptibly (D: waiting in the kernel, deaf to SIGKILL)."""
    lines = []
    for pid in _descendants(os.getpid()):
        lines.append(f"  {pid} {_read(f'/proc/{pid}/cmdline').replace(chr(0), ' ')[:160]}")
        for tid in sorted(os.listdir(f"/proc/{pid}/task")) if os.path.isdir(
                f"/proc/{pid}/task") else ():
            base = f"/proc/{pid}/task/{tid}"
            state = _read(f"{base}/stat").rsplit(")", 1)[-1].split()[:1] or ["?"]
            line = f"    {tid} {_read(f'{base}/comm')} {state[0]} wchan={_read(f'{base}/wchan')}"
            if state[0] == "D":
                line += " stack: " + _read(f"{base}/stack").replace("\n", " | ")[:400]
            lines.append(line)
    return "\n".join(lines) or "  (none)"


def kernel_text():
    """L1's memory and the end of its kernel log: a test stuck in the kernel
    may be short of memory (the tests' files are on L1's tmpfs) or hit a
    kernel warning."""
    mem = [l for l in _read("/proc/meminfo").splitlines()
           if l.split(":")[0] in ("MemTotal", "MemAvailable", "Shmem", "Dirty", "Writeback")]
    log = collections.deque(maxlen=30)     # its last records
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)     # a record per read
    except OSError:
        fd = None
        log.append("(no /dev/kmsg)")
    for _ in range(100000 if fd is not None else 0):
        try:
            rec = os.read(fd, 8192)
        except BrokenPipeError:         # a record overwritten meanwhile: go on
            continue
        except OSError:                 # EAGAIN: the end
            break
        # "LEVEL,SEQ,USEC,-;TEXT\n" and maybe " KEY=VALUE" lines
        log.append(rec.decode(errors="replace").split(";", 1)[-1].split("\n")[0])
    if fd is not None:
        os.close(fd)
    return ("L1's memory: " + ", ".join(" ".join(l.split()) for l in mem) +
            "\nthe end of L1's kernel log:\n  " + "\n  ".join(log))


def _alarm(signum, frame):
    _watch["alarms"] += 1
    nodeid, n = _watch["nodeid"], _watch["alarms"]
    what = (f"{nodeid} ran past its {_watch['limit']:.0f} s in L1" if n == 1 else
            f"{nodeid} is still stuck after its limit ({n - 1} more alarms)")
    text = f"{what}; this run's processes:\n{processes_text()}\n{kernel_text()}"
    grace = min(OVERRUN_GRACE_S, _watch["limit"] / 3)
    if n >= MAX_ALARMS:
        phases = _phases.pop(nodeid, []) + [{
            "when": "teardown", "outcome": "failed", "text": text + "\n(the run ends here)",
            "duration": 0.0, "sections": [], "xfail": None}]
        _say({"nodeid": nodeid, "phases": phases, "overran": True})
        os._exit(OVERRUN_EXIT)
    signal.setitimer(signal.ITIMER_REAL, grace)
    raise Overran(text)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    import hwvirt
    _watch.update(nodeid=item.nodeid, alarms=0,
                  limit=hwvirt.test_limit(item, hwvirt.time_scale()))
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, _watch["limit"])
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if _watch["alarms"]:
        item.session.shouldstop = f"{item.nodeid} overran its limit"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """Removes the test's tmp_path once it is torn down: in L1 it is on a
    tmpfs, in L1's RAM, and pytest would keep every test's until the run
    ends (its disk images, snapshots, migration streams), while later tests
    need that RAM for their guests (one has 2 GiB). L1's tmpfs goes with L1:
    nothing there outlives the batch anyway."""
    path = item.funcargs.get("tmp_path") if hasattr(item, "funcargs") else None
    yield
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def pytest_runtest_logstart(nodeid, location):
    _say({"nodeid": nodeid, "started": True, "limit": _watch["limit"]})


def pytest_runtest_logreport(report):
    _phases.setdefault(report.nodeid, []).append({
        "when": report.when, "outcome": report.outcome, "text": _text(report),
        "duration": report.duration, "sections": list(report.sections),
        "xfail": getattr(report, "wasxfail", None)})


def pytest_runtest_logfinish(nodeid, location):
    _say({"nodeid": nodeid, "phases": _phases.pop(nodeid, []),
          "overran": bool(_watch["alarms"])})
