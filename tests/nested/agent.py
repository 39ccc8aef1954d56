"""The agent of the nested test host (tests/nested/l1.py): runs inside L1 and
serves the host's commands, one at a time, over a virtio-serial port, so that
one boot of L1 serves many commands. Standard library only: it runs on this
machine's own python3, seen through virtio-fs.

usage: agent.py PORT_NAME [READY_FILE]
(with READY_FILE, "ready" waits until that file exists: L1's set-up is done)

The protocol is one JSON object per line, both ways.
  host -> L1   {"op": "run", "id": N, "argv": [...], "cwd": DIR, "env": {...},
                "timeout": SECONDS}
               {"op": "poweroff"}
  L1 -> host   {"ready": 1, "kernel": ..., "kvm": bool, "svm": bool, "cpus": N,
                "kvm_keys_pinned": bool}   (pin_kvm_static_keys)
               {"id": N, "fd": 1 or 2, "data": BASE64}    output as it comes
               {"id": N, "alive": 1}     at least every HEARTBEAT_S while a
                                         command runs (an L1 that is silent
                                         longer has frozen)
               {"id": N, "rc": STATUS, "timed_out": bool}  (rc < 0: killed by
               signal -rc; an argv that cannot be started: 127 and the reason
               on fd 2)
               {"bye": 1}                                  before powering off
A command runs in its own session with the agent's environment plus "env";
its stdin is /dev/null. At its timeout its whole process group is killed;
when it exits, what it left running in its group is killed too, so that
each command ends with its output complete and nothing running.
"""
import base64
import fcntl
import glob
import json
import os
import selectors
import signal
import subprocess
import sys
import time

# After a kill, how long the output pipes may stay open (held by a process
# that left the group) before the command is reported without the rest.
DRAIN_S = 10
# The host counts L1 as frozen after a long silence (l1.py, SILENCE_TIMEOUT_S):
# a command that prints nothing for minutes is normal, a silent agent is not.
HEARTBEAT_S = 5


def wait_file(path, timeout=120):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            sys.exit(f"agent: no {path} after {timeout} s")
        time.sleep(0.02)


def find_port(name, timeout=60):
    """The device node of the virtio-serial port called NAME: it appears once
    virtio_console has probed the device."""
    deadline = time.monotonic() + timeout
    while True:
        for d in glob.glob("/sys/class/virtio-ports/*"):
            try:
                with open(os.path.join(d, "name")) as f:
                    if f.read().strip() != name:
                        continue
            except OSError:
                continue
            dev = "/dev/" + os.path.basename(d)
            if os.path.exists(dev):
                return dev
        if time.monotonic() > deadline:
            sys.exit(f"agent: no virtio-serial port named {name} after {timeout} s")
        time.sleep(0.05)


class Port:
    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR)
        self.buf = b""

    def send(self, **frame):
        data = (json.dumps(frame) + "\n").encode()
        while data:
            data = data[os.write(self.fd, data):]

    def recv(self):
        """The next request; waits for the host to (re)connect when it is
        away (a read then returns 0 at once)."""
        while b"\n" not in self.buf:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                time.sleep(0.1)
                continue
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)


def kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run(port, req):
    rid = req["id"]
    env = dict(os.environ)
    env.update(req.get("env") or {})
    try:
        p = subprocess.Popen(req["argv"], cwd=req.get("cwd") or "/", env=env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
    except OSError as e:
        port.send(id=rid, fd=2, data=base64.b64encode(f"agent: {e}\n".encode()).decode())
        port.send(id=rid, rc=127, timed_out=False)
        return
    # The pidfd reads as ready when the command exits; it stays unreaped
    # until the end, so its process group id cannot be reused meanwhile.
    pidfd = os.pidfd_open(p.pid)
    sel = selectors.DefaultSelector()
    sel.register(pidfd, selectors.EVENT_READ, 0)
    for f, fd in ((p.stdout, 1), (p.stderr, 2)):
        os.set_blocking(f.fileno(), False)
        sel.register(f, selectors.EVENT_READ, fd)
    deadline = time.monotonic() + float(req.get("timeout") or 600)
    timed_out = ended = False
    beat = time.monotonic() + HEARTBEAT_S
    while sel.get_map():
        now = time.monotonic()
        if now >= beat:
            port.send(id=rid, alive=1)
            beat = now + HEARTBEAT_S
        left = deadline - now
        if left <= 0:
            if ended:
                break           # a process that left the group holds the pipes
            if timed_out:
                break           # killed but not gone (uninterruptible)
            timed_out = True
            kill_group(p.pid)
            deadline = time.monotonic() + DRAIN_S
            continue
        for key, _ in sel.select(min(left, beat - now)):
            if key.data == 0:
                ended = True
                sel.unregister(pidfd)
                kill_group(p.pid)       # what it left running
                if not timed_out:
                    deadline = time.monotonic() + DRAIN_S
                continue
            data = os.read(key.fileobj.fileno(), 65536)
            if not data:
                sel.unregister(key.fileobj)
                continue
            port.send(id=rid, fd=key.data, data=base64.b64encode(data).decode())
    sel.close()
    os.close(pidfd)
    p.stdout.close()
    p.stderr.close()
    rc = p.wait() if ended else -signal.SIGKILL
    port.send(id=rid, rc=rc, timed_out=timed_out)


# KVM's ioctls (linux/kvm.h): _IO(KVMIO, n), KVMIO = 0xAE
KVM_CREATE_VM, KVM_CREATE_VCPU, KVM_CREATE_IRQCHIP = 0xAE01, 0xAE41, 0xAE60


def pin_kvm_static_keys():
    """Holds a VM with an in-kernel irqchip and one vCPU that never runs, for
    as long as the agent lives; returns its descriptors (None without KVM).

    Each VM that comes or goes otherwise flips static keys in L1's kernel
    (preempt notifiers, the lapic's "software disabled" key): three rounds of
    int3-based text patching per VM, each a cross-modifying-code dance of both
    CPUs under QEMU's multi-threaded TCG, where L1 was caught frozen or
    panicked (docs/linux-guest-tests.md, "A frozen L1"). With this VM their
    counts never go back to zero, so the tests' VMs patch no kernel text (0
    text_poke_bp_batch calls for two VM lifecycles, against 6 without)."""
    try:
        kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
        fcntl.ioctl(vm, KVM_CREATE_IRQCHIP, 0)
        return kvm, vm, fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
    except OSError as e:
        print(f"agent: cannot pin KVM's static keys: {e}", file=sys.stderr)
        return None


def info():
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    return {"kernel": os.uname().release, "kvm": os.path.exists("/dev/kvm"),
            "svm": " svm" in flags, "cpus": os.cpu_count()}


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    port = Port(find_port(sys.argv[1]))
    if len(sys.argv) == 3:
        wait_file(sys.argv[2])
    pinned = pin_kvm_static_keys()
    port.send(ready=1, kvm_keys_pinned=pinned is not None, **info())
    while True:
        req = port.recv()
        if req.get("op") == "run":
            run(port, req)
        elif req.get("op") == "poweroff":
            port.send(bye=1)
            return
        else:
            port.send(id=req.get("id"), error=f"unknown request {req!r}")


if __name__ == "__main__":
    main()
