"""vireo vm console: the VMM's serial console on a Unix socket
(run --console-socket), attached to a terminal (a pty here)."""
import os
import pty
import select
import socket
import termios
import time

import pytest

from conftest import VIREO, needs_kvm, scaled
from daemonutil import Daemon, wait_for

pytestmark = [needs_kvm]


def attach(d, name):
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(str(VIREO), [str(VIREO), "vm", "--socket", d.socket, "console", name])
    return pid, fd


def read_until(fd, token, timeout=10):
    out = b""
    deadline = time.monotonic() + scaled(timeout)
    while token not in out and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            try:
                out += os.read(fd, 4096)
            except OSError:
                break
    return out


def test_console_shows_guest_output_until_poweroff(daemon):
    # The guest waits for the power button, pressed once the console is
    # attached: its last words and the power-off are seen through the
    # console however slow the attach is.
    daemon.create("c1", scenario="wait")
    daemon.ok("POST", "/vms/c1/start")
    assert daemon.vm("c1")["console"].endswith("/run/c1.console")
    log = os.path.join(daemon.state, "logs", "c1.log")
    assert wait_for(lambda: b"PROBE wait ged_gsi=" in open(log, "rb").read(), timeout=10)
    pid, fd = attach(daemon, "c1")
    assert b"Ctrl-A x detaches" in read_until(fd, b"detaches")
    assert daemon.request("POST", "/vms/c1/stop", {"timeout": 60})[0] == 202
    out = read_until(fd, b"closed")
    assert b"PROBE power_button=1" in out, out
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1
    os.close(fd)
    assert wait_for(lambda: daemon.vm("c1")["state"] == "stopped")
    assert "console" not in daemon.vm("c1")


def test_ctrl_a_x_detaches_and_one_client_at_a_time(daemon):
    daemon.create("c2", scenario="cpuburn=20000")
    daemon.ok("POST", "/vms/c2/start")
    pid, fd = attach(daemon, "c2")
    assert b"Ctrl-A x detaches" in read_until(fd, b"detaches")
    assert not termios.tcgetattr(fd)[3] & termios.ICANON   # raw while attached
    # A second client is turned away while the first is attached.
    s = socket.socket(socket.AF_UNIX)
    s.connect(daemon.vm("c2")["console"])
    s.settimeout(scaled(5))
    assert b"has a client already" in s.recv(200)
    s.close()
    os.write(fd, b"\x01x")
    t0 = time.monotonic()
    _, status = os.waitpid(pid, 0)
    assert time.monotonic() - t0 < scaled(5)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert termios.tcgetattr(fd)[3] & termios.ICANON       # restored
    os.close(fd)
    assert daemon.vm("c2")["state"] == "running"           # detaching leaves the VM
    # Reattach after detaching: the socket takes a new client.
    s = socket.socket(socket.AF_UNIX)
    s.connect(daemon.vm("c2")["console"])
    s.send(b"hello\r")
    s.close()
    daemon.stop("c2")


def test_console_of_a_stopped_vm(daemon):
    import subprocess
    daemon.create("c3")
    r = subprocess.run([str(VIREO), "vm", "--socket", daemon.socket, "console", "c3"],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and "no console" in r.stderr, r.stderr


def test_console_input_reaches_the_guest_and_logs_rotate():
    """Typing into 'vireo vm console' reaches the guest's UART (the probe
    echoes each line); the chatty guest's log is rotated at --log-max,
    keeping one old generation, so a guest cannot fill the host's disk."""
    d = Daemon(extra=["--log-max", "16K"]).start()
    try:
        d.create("e", scenario="echo=60000")
        d.ok("POST", "/vms/e/start")
        log = os.path.join(d.state, "logs", "e.log")
        assert wait_for(lambda: b"PROBE echo ready" in open(log, "rb").read(), timeout=10)
        pid, fd = attach(d, "e")
        assert b"detaches" in read_until(fd, b"detaches")
        os.write(fd, b"typed by hand\r")
        assert b"PROBE echo line=typed by hand" in read_until(fd, b"line=typed by hand")
        lines = [b"%05d " % i + b"0123456789" * 5 for i in range(700)]   # ~40 KiB
        for i in range(0, len(lines), 50):
            os.write(fd, b"\r".join(lines[i:i + 50]) + b"\r")
        os.write(fd, b"quit\r")
        out = read_until(fd, b"closed", timeout=60)
        assert b"line=quit" in out
        _, status = os.waitpid(pid, 0)
        os.close(fd)
        assert wait_for(lambda: d.vm("e")["state"] == "stopped", timeout=10)
        old = open(log + ".1", "rb").read()
        cur = open(log, "rb").read()
        # ~60 KiB of output in all, rotated at 16 KiB: one old generation
        # kept (an earlier one was dropped), each near the cap; the last line
        # is in one of them (a rotation may come after it).
        assert b"PROBE echo line=" in old and b"PROBE echo ready" not in old + cur
        assert len(old) < 32 * 1024 and len(cur) < 32 * 1024 and b"line=quit" in old + cur
        d.ok("DELETE", "/vms/e")
        assert not os.path.exists(log + ".1")
    finally:
        d.cleanup()
