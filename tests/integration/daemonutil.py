"""Helpers for the daemon tests: a daemon on a private state dir, and an
HTTP client over its Unix socket (http.client, so real HTTP/1.1)."""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from conftest import PROBE, VIREO, scaled


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=30):
        super().__init__("localhost", timeout=scaled(timeout))
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def wait_for(cond, timeout=30.0, step=0.02):
    """cond()'s first true value within scaled(timeout) seconds, else its
    last (false) value: callers assert on it with their own message. The
    deadline only bounds a hang (a true cond returns at once), so the
    default leaves room for a 2-core host running a second test suite."""
    end = time.monotonic() + scaled(timeout)
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(step)
    return cond()


class Daemon:
    """`vireo daemon` on a short temp dir (Unix socket paths are limited to
    107 bytes, pytest's tmp_path is long)."""

    def __init__(self, root=None, extra=(), env=None, prefix=()):
        self.prefix = list(prefix)  # runs the daemon in, e.g. ["ip", "netns", "exec", NS]
        self.root = root or tempfile.mkdtemp(prefix="vd-", dir="/tmp")
        self.env = env  # extra environment variables of the daemon
        self.state = os.path.join(self.root, "state")
        self.socket = os.path.join(self.root, "api.sock")
        self.extra = list(extra)
        self.proc = None
        self.log = None

    def start(self):
        self.log = open(os.path.join(self.root, "daemon.log"), "a")
        self.proc = subprocess.Popen(
            [*self.prefix, str(VIREO), "daemon", "--state-dir", self.state, "--socket", self.socket,
             "--verbose", *self.extra],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
            env={**os.environ, **self.env} if self.env else None)
        assert wait_for(self._answers), self.logtext()
        return self

    def _answers(self):
        if self.proc.poll() is not None:
            raise AssertionError("daemon exited: " + self.logtext())
        try:
            return self.request("GET", "/vms")[0] == 200
        except OSError:
            return False

    def logtext(self):
        with open(os.path.join(self.root, "daemon.log")) as f:
            return f.read()

    def kill(self, sig=signal.SIGKILL):
        self.proc.send_signal(sig)
        self.proc.wait(timeout=10)
        self.log.close()

    def request(self, method, path, body=None, raw=None, headers=None):
        """(status, parsed JSON or text)."""
        c = UnixHTTPConnection(self.socket)
        try:
            data = raw if raw is not None else (json.dumps(body) if body is not None else None)
            c.request(method, path, body=data, headers=headers or {})
            r = c.getresponse()
            text = r.read().decode()
            ctype = r.getheader("Content-Type", "")
            return r.status, (json.loads(text) if ctype.startswith("application/json") else text)
        finally:
            c.close()

    def ok(self, method, path, body=None, status=200):
        st, js = self.request(method, path, body)
        assert st == status, (method, path, st, js)
        return js

    def vm(self, name):
        return self.ok("GET", f"/vms/{name}")

    def wait_log(self, name, text, timeout):
        """Waits up to scaled(timeout) s for TEXT in VM NAME's log; else fails
        with the log's end and where the VMM's threads were (stall_report,
        by which the nested test host's batch tells its known faults)."""
        if wait_for(lambda: text in self.vm_log(name), timeout=timeout):
            return
        from conftest import stall_report
        pid = self.vm(name).get("pid") or 0
        log = self.vm_log(name)
        quiet = "" if log.strip() else " (its stdout stayed empty)"
        raise AssertionError(f"VM {name}: no {text!r} in its log; its VMM {pid} still running "
                             f"after {scaled(timeout):g} s{quiet}:\n{log[-4000:]}\n"
                             f"{stall_report(pid) if pid else '(no VMM)'}")

    def vm_log(self, name):
        """VM NAME's log (its VMM's output), "" if there is none yet. Read
        while the guest writes it: a UTF-8 character may be cut in two."""
        try:
            with open(os.path.join(self.state, "logs", f"{name}.log"),
                      errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self, name, timeout=30, **body):
        """POST stop (graceful unless force=True) and wait until it ends;
        returns the VM as the daemon then shows it."""
        st, js = self.request("POST", f"/vms/{name}/stop", {"timeout": timeout, **body})
        assert st in (200, 202), (name, st, js)
        assert (st == 202) == (js["state"] == "stopping"), js
        if st == 202:
            js = wait_for(lambda: (v := self.vm(name))["state"] != "stopping" and v,
                          timeout=timeout + 5)
            assert js, f"{name} still stopping after {scaled(timeout + 5):g} s: {self.vm(name)}"
        return js

    def create(self, name, scenario="cpuburn=100000", **kw):
        d = {"name": name, "cpus": 1, "memory": "64M", "kernel": str(PROBE),
             "cmdline": f"scenario={scenario}"}
        d.update(kw)
        return self.ok("POST", "/vms", d, status=201)

    def cleanup(self):
        """Kills every VMM this state dir knows of, then the daemon."""
        run = os.path.join(self.state, "run")
        for f in os.listdir(run) if os.path.isdir(run) else ():
            if f.endswith(".json"):
                try:
                    with open(os.path.join(run, f)) as fh:
                        pid = json.load(fh).get("pid", 0)
                    if pid > 0 and _is_vmm(pid):
                        os.kill(pid, signal.SIGKILL)
                        # Dead (a zombie) before the daemon stops, so that
                        # it reaps it and removes its cgroup.
                        wait_for(lambda: _proc_state(pid) in ("Z", None), timeout=2)
                except (OSError, ValueError):
                    pass
        if self.proc and self.proc.poll() is None:
            self.kill(signal.SIGTERM)
        shutil.rmtree(self.root, ignore_errors=True)


def _proc_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _is_vmm(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"--api-socket" in f.read()
    except OSError:
        return False
