"""The guest's console output (the 16550's transmit side) goes through a
64 KiB ring that the VMM's event loop drains: a reader that keeps up gets
every byte in order, and one that does not read never blocks the vCPU, so
pause and stop still answer (issue 10, item 6). The probe's flood=N
scenario sends N numbered lines (guest/README.md)."""
import array
import fcntl
import os
import pty
import subprocess
import termios
import time

import pytest

from conftest import (LiveProbe, needs_kvm, run_vireo, scaled, vireo_args, vireo_control,
                      wait_socket, wait_until)

pytestmark = [needs_kvm]


def flood_line(seq):
    """The probe's line number seq (guest/main.c flood_line)."""
    d = f"{seq:08d}"
    return f"PROBE flood seq={d} data=" + "".join(
        chr(ord("a") + (int(d[7 - i % 8]) + i) % 26) for i in range(40))


def check_flood(lines, first=0):
    """lines are flood lines first, first+1, ... with nothing missing."""
    for i, line in enumerate(lines):
        assert line == flood_line(first + i), f"line {i} of the flood"


def timed_control(path, action):
    t = time.monotonic()
    reply = vireo_control(path, action=action)
    return reply, time.monotonic() - t


def start_unread(sock, output):
    """The VMM, flooding an output nobody reads: a pipe, or a terminal (a
    pty, as stdin and stdout). Returns (process, the fd we do not read)."""
    args = vireo_args("scenario=flood=0", extra=["--api-socket", sock])
    if output == "pipe":
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
        return p, p.stdout.fileno()
    master, slave = pty.openpty()
    p = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=subprocess.DEVNULL)
    os.close(slave)
    return p, master


def stuck(sock, fd):
    """The output holds 64 KiB (a pipe written a byte at a time: full;
    larger writes leave its pages part empty), or bytes are dropped."""
    n = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, n)
    return n[0] >= 65536 or vireo_control(sock, action="info").get("serial_dropped_bytes", 0)


@pytest.mark.parametrize("output", ["pipe", "pty"])
def test_stuck_output_never_blocks_pause_or_stop(sock, output):
    """Once the output is full, the guest still runs, its output is dropped
    and counted, pause and poweroff answer at once, and the VMM exits after
    a final flush that gives up within 1 s."""
    p, fd = start_unread(sock, output)
    try:
        wait_until(lambda: stuck(sock, fd), 30, f"a stuck {output}")
        reply, took = timed_control(sock, "pause")
        assert reply == {"ok": True, "state": "paused"} and took < scaled(2), (reply, took)
        assert vireo_control(sock, action="resume")["ok"]
        # The guest goes on writing: the ring fills behind the full output.
        wait_until(lambda: vireo_control(sock, action="info")
                   .get("serial_dropped_bytes", 0) > 0, 30, "dropped console bytes")
        reply, took = timed_control(sock, "pause")
        assert reply == {"ok": True, "state": "paused"} and took < scaled(2), (reply, took)
        info = vireo_control(sock, action="info")
        dropped = info["serial_dropped_bytes"]
        assert dropped > 0 and info["serial_client_dropped_bytes"] == 0
        # Paused: nothing more written, nothing more dropped.
        assert vireo_control(sock, action="info")["serial_dropped_bytes"] == dropped
        reply, took = timed_control(sock, "poweroff")
        assert reply == {"ok": True, "state": "stopped"} and took < scaled(2), (reply, took)
        t = time.monotonic()
        assert p.wait(timeout=scaled(3)) == 0
        assert time.monotonic() - t < scaled(1) + 1
        if output == "pipe":
            # What the pipe holds is the start of the output, in order.
            lines = p.stdout.read().decode().split("\n")
            assert lines[0].startswith("PROBE boot ")
            check_flood(lines[1:-1])
            assert len(lines) > 800
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if output == "pipe":
            p.stdout.close()
        else:
            os.close(fd)


def test_reader_that_keeps_up_gets_every_byte():
    """200 KB of output (the ring wraps three times) through a pipe that is
    read: every line, in order."""
    r = run_vireo("scenario=flood=3000", timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert lines[0].startswith("PROBE boot ")
    check_flood(lines[1:3001])
    assert lines[3001:] == ["PROBE flood_done lines=3000", ""]


def test_console_client_that_keeps_up_gets_every_byte(sock):
    """The console socket's client, attached while the guest writes, gets
    the output from then on without a gap, as stdout gets all of it."""
    guest = LiveProbe(vireo_args("scenario=flood=3000", extra=["--console-socket", sock]))
    with wait_socket(sock) as c:
        c.settimeout(scaled(60))
        got = b""
        while chunk := c.recv(65536):	# until the VMM ends
            got += chunk
    r = guest.finish()
    assert r.returncode == 0, r.stderr
    out = r.stdout.split("\n")
    check_flood(out[1:3001])
    assert out[3001] == "PROBE flood_done lines=3000"
    client = got.decode().replace("\r\n", "\n").split("\n")[1:]  # the first may be cut
    assert client[-1] == "" and client[-2] == "PROBE flood_done lines=3000"
    flood = client[:-2]
    assert len(flood) > 100, "the client attached late: too little to check"
    check_flood(flood, int(flood[0].split("seq=")[1].split()[0]))
