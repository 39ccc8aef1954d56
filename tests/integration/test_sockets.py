"""vireo's listening sockets (the daemon's API, a VMM's control and console
sockets) appear at their path only once they accept connections
(src/util/sock.c): a client that connects the instant the path appears is
never refused. The client here learns of the path from inotify, so it
connects as soon as the file is created; and strace delays each listen()
by 200 ms, so that the window in which a socket made with bind() then
listen() refuses, microseconds wide in a normal run, cannot be missed: with
bind() then listen() on the path every round is refused."""
import ctypes
import os
import shutil
import socket
import struct
import subprocess
import tempfile

import pytest

from conftest import PROBE, VIREO, needs_kvm, scaled

pytestmark = [needs_kvm, pytest.mark.skipif(shutil.which("strace") is None,
                                             reason="skipped: strace not installed")]

IN_CREATE, IN_MOVED_TO = 0x100, 0x80
ROUNDS = 5

libc = ctypes.CDLL(None, use_errno=True)


class DirWatch:
    """inotify on one directory: which names appear in it."""

    def __init__(self, path):
        self.fd = libc.inotify_init1(os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        assert libc.inotify_add_watch(self.fd, path.encode(), IN_CREATE | IN_MOVED_TO) >= 0

    def wait_name(self, name, proc):
        """Returns as soon as NAME appears (the VMM or daemon PROC must not
        exit first)."""
        import select
        while True:
            ready = select.select([self.fd], [], [], scaled(10))[0]
            assert ready, f"{name} did not appear within {scaled(10):g} s"
            buf = os.read(self.fd, 4096)
            off = 0
            while off < len(buf):
                _, _, _, n = struct.unpack_from("iIII", buf, off)
                got = buf[off + 16:off + 16 + n].rstrip(b"\0").decode()
                off += 16 + n
                if got == name:
                    return
            assert proc.poll() is None, f"exited before {name} appeared"

    def close(self):
        os.close(self.fd)


def connect_at_once(directory, name, start):
    """Starts a process with start(path), connects the moment the path
    appears; the connection must be accepted."""
    path = os.path.join(directory, name)
    watch = DirWatch(directory)
    proc = start(path)
    try:
        watch.wait_name(name, proc)
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)         # ConnectionRefusedError is the bug
        s.close()
    finally:
        watch.close()
        os.killpg(proc.pid, 9)      # strace and the process it runs
        proc.wait()
    return path


# Every listen() of the traced process and its threads waits 200 ms.
SLOW_LISTEN = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=listen",
               "-e", "inject=listen:delay_enter=200000"]


def vmm(extra):
    return subprocess.Popen([*SLOW_LISTEN, str(VIREO), "run", "--kernel", str(PROBE), "--memory", "64M",
                             "--cmdline", "scenario=cpuburn=100000", *extra],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


@pytest.mark.parametrize("kind", ["control", "console", "api"])
def test_a_client_that_sees_the_path_is_never_refused(kind):
    with tempfile.TemporaryDirectory(prefix="vs-", dir="/tmp") as d:
        for i in range(ROUNDS):
            if kind == "control":
                connect_at_once(d, f"c{i}.sock", lambda p: vmm(["--api-socket", p]))
            elif kind == "console":
                connect_at_once(d, f"t{i}.sock", lambda p: vmm(["--console-socket", p]))
            else:
                connect_at_once(d, f"a{i}.sock", lambda p: subprocess.Popen(
                    [*SLOW_LISTEN, str(VIREO), "daemon", "--state-dir", os.path.join(d, f"s{i}"),
                     "--socket", p], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, start_new_session=True))
        # Nothing left behind but what the killed processes owned.
        assert not [f for f in os.listdir(d) if f.endswith("~")]


def test_a_socket_path_that_is_not_a_socket_is_left_alone(tmp_path):
    """DESIGN §3.15: a regular file where the socket should go is refused,
    not replaced."""
    f = tmp_path / "precious"
    f.write_text("data")
    for args in (["--api-socket", str(f)], ["--console-socket", str(f)]):
        r = subprocess.run([str(VIREO), "run", "--kernel", str(PROBE), "--cmdline",
                            "scenario=hello", *args], capture_output=True, text=True,
                           timeout=scaled(30))
        assert r.returncode == 1 and "not a socket" in r.stderr, r.stderr
        assert f.read_text() == "data"
    r = subprocess.run([str(VIREO), "daemon", "--state-dir", str(tmp_path / "st"), "--socket",
                        str(f)], capture_output=True, text=True, timeout=scaled(30))
    assert r.returncode != 0 and "not a socket" in r.stderr, r.stderr
    assert f.read_text() == "data"
