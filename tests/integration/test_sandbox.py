"""The VMM's sandbox (vireo run --user, --jail, --seccomp; the daemon's one
uid per VMM): the process really is unprivileged, jailed in a mount namespace
of its own and filtered on every thread, nothing it does reaches the host's
files, and every device still works inside it."""
import json
import os
import re
import resource
import shutil
import subprocess

import pytest

from conftest import (LiveProbe, ProbeRun, needs_kvm, run_until_exit, run_vireo, scaled, wait_until,
                      vireo_args, vireo_control)
from daemonutil import Daemon, wait_for
from test_virtio import echo_helper, make_image, netns_tap  # noqa: F401 (a fixture)

pytestmark = [needs_kvm,
              pytest.mark.skipif(os.geteuid() != 0, reason="skipped: needs root to drop")]

NOBODY = 65534


def status(pid, task=None):
    path = f"/proc/{pid}/task/{task}/status" if task else f"/proc/{pid}/status"
    with open(path) as f:
        return dict(l.rstrip("\n").split(":\t", 1) for l in f if ":\t" in l)


def assert_jailed(pid, task=None):
    """In a mount namespace of its own, whose only mount, its root, is an
    empty read-only tmpfs (the jail directory on the host is left alone)."""
    proc = f"/proc/{pid}/task/{task}" if task else f"/proc/{pid}"
    assert os.readlink(f"{proc}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    with open(f"{proc}/mountinfo") as f:
        mounts = f.read().splitlines()
    assert len(mounts) == 1 and " / / ro," in mounts[0] and " - tmpfs " in mounts[0], mounts
    assert os.readlink(f"{proc}/root") == "/" and os.listdir(f"{proc}/root") == []


def assert_sandboxed(pid, uid, jail):
    st = status(pid)
    assert st["Uid"].split() == [str(uid)] * 4 and st["Gid"].split() == [str(uid)] * 4, st
    assert st["CapEff"] == "0" * 16 and st["NoNewPrivs"] == "1", st
    assert_jailed(pid)
    assert os.path.isdir(jail) and not os.listdir(jail)
    tasks = os.listdir(f"/proc/{pid}/task")
    assert len(tasks) >= 2           # the event loop, vCPUs, device I/O threads
    for t in tasks:                  # every thread is filtered, jailed, dropped
        ts = status(pid, t)
        assert ts["Seccomp"] == "2" and ts["NoNewPrivs"] == "1", (t, ts)
        assert ts["Uid"] == st["Uid"] and ts["CapEff"] == "0" * 16, (t, ts)
        assert_jailed(pid, t)


def sandbox_args(tmp_path):
    jail = tmp_path / "jail"
    jail.mkdir()
    return jail, ["--user", str(NOBODY), "--jail", str(jail)]


def test_sandboxed_vmm_is_unprivileged_jailed_and_filtered(tmp_path):
    jail, extra = sandbox_args(tmp_path)
    img = tmp_path / "d.raw"
    make_image(img, "raw")
    sock = f"/tmp/vsb-{os.getpid()}.sock"
    guest = LiveProbe(vireo_args("scenario=wait=30000", extra=[
        *extra, "--api-socket", sock, "--disk", f"path={img},format=raw", "--rng"]))
    try:
        guest.wait_line("PROBE wait ged_gsi=")
        assert_sandboxed(guest.proc.pid, NOBODY, jail)
        # The control socket still works, with per-vCPU scheduler figures
        # read through the schedstat file each vCPU opened before the sandbox.
        info = vireo_control(sock, action="info")
        assert info["ok"] and info["vcpus"][0]["cpu_ns"] > 0 and "wait_ns" in info["vcpus"][0]
        assert vireo_control(sock, action="pin", vcpu=0, cpus="0")["ok"]
        assert vireo_control(sock, action="set-limits", disk=0, iops=100)["ok"]
        assert vireo_control(sock, action="powerdown")["ok"]
        run = guest.finish(timeout=20)
        assert run.returncode == 0 and "power_button=1" in run.lines, run.stdout + run.stderr
    finally:
        if os.path.exists(sock):
            os.unlink(sock)


# gdb's own "call" saves and restores the x86 extended state, which this
# host's kernel refuses to write back (PTRACE_SETREGSET: EFAULT); so a
# system call is made by hand: the thread is stopped inside one (epoll_wait,
# KVM_RUN, futex...), its pc right after a "syscall" instruction, which is
# re-executed with another number and arguments; then the thread is left
# on that instruction with the original ones, so that it makes its call
# again when it resumes, as after any interrupted system call. sys: $arg0
# the number, $arg1..$arg4 the first arguments; prints RESULT and the value,
# also kept in $ret.
GDB_SYSCALL = """
define sys
  set $sys = 0
  if *(unsigned short *)$pc == 0x050f
    set $sys = $pc
    set $s_nr = $rax
  else
    if *(unsigned short *)($pc - 2) == 0x050f && $orig_rax != -1
      set $sys = $pc - 2
      set $s_nr = $orig_rax
    end
  end
  if $sys
    set $s_rdi = $rdi
    set $s_rsi = $rsi
    set $s_rdx = $rdx
    set $s_r10 = $r10
    set $rax = $arg0
    set $rdi = $arg1
    set $rsi = $arg2
    set $rdx = $arg3
    if $argc > 4
      set $r10 = $arg4
    end
    set $rip = $sys
    stepi
    set $ret = (int)$rax
    printf "RESULT %d\\n", $ret
    set $rdi = $s_rdi
    set $rsi = $s_rsi
    set $rdx = $s_rdx
    set $r10 = $s_r10
    set $rip = $sys
    set $rax = $s_nr
  else
    printf "NOT-IN-SYSCALL\\n"
  end
end
"""


# openat(dirfd, path, flags, mode) by the stopped thread: $arg1 the path,
# $arg4 its size with the NUL.
GDB_INJECT = """
define inject
  if $pc == 0
    printf "NOT-A-USER-THREAD\\n"
  else
    # Below the thread's stack pointer (and its red zone): unused memory.
    set {char[$arg4]}($rsp - 1024) = $arg1
    sys 257 $arg0 $rsp-1024 $arg2 $arg3
  end
end
"""


def gdb_openat(pid, calls, all_threads=False, tmp=None):
    """Makes the VMM call openat(dirfd, path, flags, mode) for each tuple of
    calls, through gdb (standing in for code an attacker runs in a compromised
    VMM): on the thread gdb stops first, or on every thread (KVM's kernel
    workers among them are skipped). Returns the results (a descriptor, or
    -errno) in order, each with the name of its thread ("" on the first), and
    gdb's output."""
    script = tmp / "inject.gdb"
    lines = [GDB_SYSCALL + GDB_INJECT]
    each = "thread apply all " if all_threads else ""
    for dirfd, path, flags, mode in calls:
        text = path.replace("\\", "\\\\").replace('"', '\\"')
        assert " " not in path   # one argument of a user-defined command
        lines.append(f'{each}inject {dirfd} "{text}" {flags} {mode} {len(path) + 1}')
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(["gdb", "-nx", "-q", "-batch", "-p", str(pid), "-x", str(script)],
                         capture_output=True, text=True, timeout=scaled(120))
    results, name = [], ""
    for line in out.stdout.splitlines():
        m = re.match(r'Thread \d+ \(.*"(.*)"\):$', line)
        name = m.group(1) if m else name
        if line.startswith("RESULT "):
            results.append((name, int(line.split()[1])))
    return results, out.stdout + out.stderr


def landlock_abi():
    """The kernel's Landlock ABI version; 0 without Landlock."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    return max(libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint(1)), 0)


O_WRONLY_CREAT = 0o101
O_DIRECTORY = 0o200000
AT_FDCWD = -100


def assert_no_way_out(pid, tmp_path, made, jail, root, threads):
    """openat() injected into VMM PID reaches no host file: relative to each
    descriptor it holds, to its root and to its working directory, on every
    thread (threads: names that must be among them); files it would create
    start with MADE; JAIL must stay empty; ROOT: the VMM kept uid 0."""
    fds = sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))
    what = {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds}
    up = "../" * 12
    calls = []
    for fd in fds:
        calls += [(f"fd {fd} ({what[fd]}) ../etc/passwd", (fd, f"{up}etc/passwd", 0, 0)),
                  (f"fd {fd} ({what[fd]}) O_CREAT ../tmp",
                   (fd, f"{up}{made[1:]}-fd{fd}", O_WRONLY_CREAT, 0o644))]
    for path in ("/etc/passwd", "/proc/self/root/etc/passwd", "/proc/1/root/etc/passwd",
                 "/proc/self/../../etc/passwd", "/proc/self/cwd/etc/passwd",
                 f"{up}etc/passwd", "/proc/self/task"):
        calls.append((f"AT_FDCWD {path}", (AT_FDCWD, path, 0, 0)))
    calls += [("AT_FDCWD O_CREAT /tmp", (AT_FDCWD, f"{made}-cwd", O_WRONLY_CREAT, 0o644)),
              ("AT_FDCWD O_CREAT in the root", (AT_FDCWD, "/escape", O_WRONLY_CREAT, 0o644))]
    results, out = gdb_openat(pid, [c for _, c in calls], tmp=tmp_path)
    values = [v for _, v in results]
    assert len(values) == len(calls), out
    opened = [(what, v) for (what, _), v in zip(calls, values) if v >= 0]
    assert not opened, f"opened from inside the sandbox: {opened}"
    # Every thread: device I/O threads and vCPUs too.
    results, out = gdb_openat(pid, [(AT_FDCWD, "/etc/passwd", 0, 0),
                                    (AT_FDCWD, f"{made}-t", O_WRONLY_CREAT, 0o644)],
                              all_threads=True, tmp=tmp_path)
    values = [v for _, v in results]
    names = [status(pid, t)["Name"] for t in os.listdir(f"/proc/{pid}/task")]
    users = [n for n in names if not n.startswith("kvm-")]   # not KVM's own workers
    assert threads <= set(names), names
    assert "NOT-IN-SYSCALL" not in out and len(values) == 2 * len(users), out
    assert all(v < 0 for v in values), out
    # Landlock: even the empty root cannot be opened (EACCES), by the
    # event loop and the vCPUs; by every thread from Landlock ABI 8 on.
    # (For nobody, the root's mode 0700 alone refuses it.)
    abi = landlock_abi()
    if abi and root:
        results, out = gdb_openat(pid, [(AT_FDCWD, "/", O_DIRECTORY, 0)],
                                  all_threads=True, tmp=tmp_path)
        denied = {n: v == -13 for n, v in results}
        assert all(denied[n] for n in threads if not n.startswith("io-")), out
        assert abi < 8 or all(denied.values()), out
    leaked = [f for f in os.listdir("/tmp") if f.startswith(os.path.basename(made))]
    assert not leaked and not os.listdir(jail), (leaked, os.listdir(jail))


@pytest.mark.skipif(not shutil.which("gdb"), reason="skipped: needs gdb")
@pytest.mark.parametrize("user", [True, False], ids=["nobody", "root"])
def test_injected_openat_cannot_leave_the_jail(tmp_path, user):
    """issue 10 item 1: openat() injected into a sandboxed VMM, relative to
    each descriptor it holds and to its root and cwd, reaches no host file:
    no descriptor of a directory outside the jail survives into it, and the
    jail is the root of the VMM's own mount namespace. Also for a VMM left
    root (--jail without --user), whom file permissions do not stop."""
    jail, extra = sandbox_args(tmp_path)
    if not user:
        extra = extra[2:]
    img = tmp_path / "d.raw"
    make_image(img, "raw")
    sock = f"/tmp/vsb-{os.getpid()}.sock"
    made = f"/tmp/vireo-escape-{os.getpid()}"
    guest = LiveProbe(vireo_args("scenario=wait=60000", cpus=2, extra=[
        *extra, "--api-socket", sock, "--disk", f"path={img},format=raw", "--rng"]))
    try:
        guest.wait_line("PROBE wait ged_gsi=")
        assert_no_way_out(guest.proc.pid, tmp_path, made, jail, root=not user,
                          threads={"vireo", "vcpu0", "vcpu1", "io-blk", "io-rng"})
        # The VMM survived the probing (openat is in its seccomp allowlist)
        # and still serves its control socket, scheduler figures included.
        info = vireo_control(sock, action="info")
        assert info["ok"] and all("wait_ns" in v for v in info["vcpus"]), info
        assert vireo_control(sock, action="powerdown")["ok"]
        run = guest.finish(timeout=20)
        assert run.returncode == 0, run.stdout + run.stderr
    finally:
        for f in os.listdir("/tmp"):
            if f.startswith(os.path.basename(made)):
                os.unlink(os.path.join("/tmp", f))
        if guest.proc.poll() is None:
            guest.proc.kill()
        if os.path.exists(sock):
            os.unlink(sock)


@pytest.mark.skipif(not shutil.which("setpriv"), reason="skipped: needs setpriv")
def test_jail_without_a_mount_namespace_falls_back_to_chroot(tmp_path):
    """Where the kernel refuses a mount namespace (here: no CAP_SYS_ADMIN),
    the VMM says so and chroots into the jail instead."""
    jail, extra = sandbox_args(tmp_path)
    run = ProbeRun(*run_until_exit(["setpriv", "--bounding-set", "-sys_admin",
                                    *vireo_args("scenario=hello", extra=extra)], 60))
    assert run.returncode == 0, run.stdout + run.stderr
    assert ("--jail: cannot have a mount namespace of its own (Operation not permitted): "
            f"falling back to a plain chroot into {jail}") in run.stderr


@pytest.mark.parametrize("aio", ["io_uring", "threads"])
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_disks_work_sandboxed(tmp_path, fmt, aio):
    _, extra = sandbox_args(tmp_path)
    img = tmp_path / f"d.{fmt}"
    make_image(img, fmt)
    run = run_vireo("scenario=blk seed=5 n=100 irq=msix",
                    extra=[*extra, "--disk", f"path={img},format={fmt},aio={aio}"])
    assert run.returncode == 0, run.stdout + run.stderr
    assert "io_uring unavailable" not in run.stderr, run.stderr
    blk = run.all("blk")[0]
    assert blk["mismatches"] == "0" and blk["writes"] == "100", blk
    if fmt == "qcow2":   # allocating writes (the image grows) inside the jail
        subprocess.run(["qemu-img", "check", str(img)], check=True, capture_output=True)


def test_rng_and_balloon_work_sandboxed(tmp_path):
    _, extra = sandbox_args(tmp_path)
    run = run_vireo("scenario=rng", extra=[*extra, "--rng"])
    assert run.returncode == 0 and run.all("rng")[0]["distinct"] == "256", run.stdout
    run = run_vireo("scenario=balloon balloon_mib=64 balloon_hold_ms=100 deflate=1",
                    extra=[*extra, "--balloon"])
    assert run.returncode == 0, run.stdout + run.stderr
    assert "balloon_deflate pages=16384 actual_pages=0" in run.stdout


def test_net_works_sandboxed(tmp_path, netns_tap):
    _, extra = sandbox_args(tmp_path)
    echo = echo_helper(netns_tap)
    try:
        run = run_vireo("scenario=net n=32 irq=msix", netns=netns_tap,
                        extra=[*extra, "--net", "tap=tap0,mtu=9000,mac=52:54:00:12:34:56"])
    finally:
        echo.kill()
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.all("net")[0]["received"] == "32"


@pytest.mark.parametrize("args,msg", [
    (["--user", "no-such-user-x"], "no user named"),
    (["--user", "1:x"], "not a group id"),
    (["--jail", "/nonexistent-jail"], "--jail /nonexistent-jail"),
    (["--seccomp=maybe"], "--seccomp must be on, off or log"),
    (["--user", "65534", "--reboot=restart"], "use --reboot=exit"),
    (["--seccomp=on", "--reboot=restart"], "use --reboot=exit"),
])
def test_bad_sandbox_options(args, msg):
    run = run_vireo("scenario=hello", extra=args)
    assert run.returncode == 1 and msg in run.stderr, run.stderr


def test_daemon_gives_each_vmm_its_own_uid():
    d = Daemon().start()
    try:
        uids = {}
        for n in ("u1", "u2"):
            d.create(n)
            js = d.ok("POST", f"/vms/{n}/start")
            uids[n] = js["vmm_uid"]
            assert_sandboxed(js["pid"], js["vmm_uid"], os.path.join(d.state, "jail"))
        assert sorted(uids.values()) == [100000, 100001]
        # A stopped VM's uid is free again; the next start takes the lowest.
        d.stop("u1", force=True)
        d.create("u3")
        assert d.ok("POST", "/vms/u3/start")["vmm_uid"] == 100000
        with open(os.path.join(d.state, "run", "u3.json")) as f:
            assert json.load(f)["vmm_uid"] == 100000
    finally:
        d.cleanup()


@pytest.mark.skipif(not shutil.which("gdb"), reason="skipped: needs gdb")
def test_daemon_vmm_has_no_way_out(tmp_path):
    """The same injected openat() calls in a VMM the daemon started (its
    descriptors: the log, the cgroup file, the sockets it inherits)."""
    made = f"/tmp/vireo-escape-{os.getpid()}"
    d = Daemon().start()
    try:
        d.create("e1", scenario="wait=60000")
        js = d.ok("POST", "/vms/e1/start")
        wait_for(lambda: all(status(js["pid"], t)["Seccomp"] == "2"
                             for t in os.listdir(f"/proc/{js['pid']}/task")))
        assert_no_way_out(js["pid"], tmp_path, made, os.path.join(d.state, "jail"), root=False,
                          threads={"vireo", "vcpu0"})
        assert d.ok("GET", "/vms/e1")["state"] == "running"
    finally:
        for f in os.listdir("/tmp"):
            if f.startswith(os.path.basename(made)):
                os.unlink(os.path.join("/tmp", f))
        d.cleanup()


def test_daemon_without_uid_drop_still_filters():
    d = Daemon(extra=["--vmm-uid-base", "none"]).start()
    try:
        d.create("n1")
        js = d.ok("POST", "/vms/n1/start")
        assert "vmm_uid" not in js
        assert status(js["pid"])["Uid"].split()[0] == "0"
        assert wait_for(lambda: all(status(js["pid"], t)["Seccomp"] == "2"
                                    for t in os.listdir(f"/proc/{js['pid']}/task")))
    finally:
        d.cleanup()


# ---- the network: a jailed VMM gets its migration stream from outside ----

def control_with_fds(path, fds, **request):
    """One control request with descriptors passed along (SCM_RIGHTS)."""
    import socket
    from conftest import wait_socket
    with wait_socket(path) as s:
        socket.send_fds(s, [(json.dumps(request) + "\n").encode()], fds)
        return json.loads(s.makefile("r").readline())


def fd_targets(pid):
    return {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}


def jailed_vmm(tmp_path, sock, seccomp="on"):
    """A jailed VMM that dumps no core when its filter kills it."""
    jail, extra = sandbox_args(tmp_path)
    guest = LiveProbe(["sh", "-c", 'ulimit -c 0; exec "$@"', "sh", *vireo_args(
        "scenario=wait=60000", extra=[*extra, "--api-socket", sock, f"--seccomp={seccomp}"])])
    guest.wait_line("PROBE wait ged_gsi=")
    return guest


def test_jailed_vmm_migrates_only_through_a_passed_socket(tmp_path):
    """A jailed VMM cannot connect: `migrate` takes a connected TCP socket
    passed with the request (uri "fd"); without one, with anything else, or
    with a tcp: uri, it is refused, the VM runs on, and no descriptor stays
    behind (nor one passed with another request)."""
    import socket
    sock = f"/tmp/vsb-{os.getpid()}.sock"
    guest = jailed_vmm(tmp_path, sock)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    pid = guest.proc.pid
    try:
        fds_before = sorted(os.listdir(f"/proc/{pid}/fd"))
        r = vireo_control(sock, action="migrate", uri="fd", token="t")
        assert r["ok"] is False and r["code"] == "bad-request", r
        assert "pass the connected TCP socket with the request" in r["error"], r
        r = vireo_control(sock, action="migrate", uri=f"tcp:127.0.0.1:{port}", token="t")
        assert r["code"] == "bad-request" and "jailed and cannot connect" in r["error"], r
        a, b = socket.socketpair()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        unconnected = socket.socket()
        for bad in (listener, a, udp, unconnected):
            r = control_with_fds(sock, [bad.fileno()], action="migrate", uri="fd", token="t")
            assert r["code"] == "bad-request" and "not a connected TCP socket" in r["error"], r
        # Passed with another request: closed once it is answered.
        r = control_with_fds(sock, [a.fileno(), udp.fileno()], action="info")
        assert r["ok"] and r["state"] == "running" and "migration" not in r, r
        # (Once the VMM has seen the end of the last control connection.)
        wait_until(lambda: sorted(os.listdir(f"/proc/{pid}/fd")) == fds_before, 10,
                   lambda: f"no descriptor left behind: {fd_targets(pid)}")
        for s in (a, b, udp, unconnected):
            s.close()
        # A connected socket is taken: the migration runs on it (and fails
        # here, the listener being no vireo), and the VM runs on.
        out = socket.create_connection(("127.0.0.1", port))
        peer, _ = listener.accept()
        r = control_with_fds(sock, [out.fileno()], action="migrate", uri="fd", token="t")
        assert r["ok"], r
        out.close()
        peer.close()
        wait_until(lambda: vireo_control(sock, action="info").get("migration", {}).get("state") == "failed",
                   10, "the migration fails")
        assert vireo_control(sock, action="info")["state"] == "running"
        wait_until(lambda: sorted(os.listdir(f"/proc/{pid}/fd")) == fds_before, 10,
                   "the migration's socket closed")
        assert vireo_control(sock, action="poweroff")["ok"]
        assert guest.finish(timeout=20).returncode == 0
    finally:
        listener.close()
        if guest.proc.poll() is None:
            guest.proc.kill()
        if os.path.exists(sock):
            os.unlink(sock)





def gdb_connect(pid, port, tmp):
    """Makes VMM PID call socket(AF_INET, SOCK_STREAM) and connect() it to
    127.0.0.1:PORT; returns the results (or fewer, if it died) and gdb's
    output."""
    sin = 2 | (port >> 8) << 16 | (port & 0xff) << 24 | 0x7f << 32 | 1 << 56
    script = tmp / "connect.gdb"
    script.write_text(GDB_SYSCALL + f"""
set $addr = $rsp - 1024
set {{unsigned long long}}$addr = {sin:#x}
set {{unsigned long long}}($addr + 8) = 0
sys 41 2 1 0
set $sock = $ret
sys 42 $sock $addr 16
""")
    # gdb may crash when the VMM dies under it (seccomp): no core file.
    out = subprocess.run(["gdb", "-nx", "-q", "-batch", "-p", str(pid), "-x", str(script)],
                         capture_output=True, text=True, timeout=scaled(120), cwd=tmp,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)))
    results = [int(l.split()[1]) for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    return results, out.stdout + out.stderr


@pytest.mark.skipif(not shutil.which("gdb"), reason="skipped: needs gdb")
@pytest.mark.parametrize("seccomp", ["on", "off"])
def test_injected_connect_cannot_leave_the_jail(tmp_path, seccomp):
    """socket() and connect() injected into a jailed VMM (code an attacker
    runs in a compromised one) reach nothing: the seccomp filter kills the
    VMM at socket(); without the filter, Landlock refuses the connect
    (EACCES), on kernels that have Landlock's TCP rules (ABI 4)."""
    import socket
    if seccomp == "off" and landlock_abi() < 4:
        pytest.skip("skipped: the kernel's Landlock has no TCP rules (ABI < 4)")
    sock = f"/tmp/vsb-{os.getpid()}.sock"
    guest = jailed_vmm(tmp_path, sock, seccomp)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    try:
        results, out = gdb_connect(guest.proc.pid, listener.getsockname()[1], tmp_path)
        if seccomp == "on":
            assert results == [], out
            run = guest.finish(timeout=20)
            assert run.returncode == -31, (run.returncode, out)      # SIGSYS
        else:
            assert len(results) == 2 and results[0] >= 0 and results[1] == -13, out
            assert vireo_control(sock, action="info")["state"] == "running"
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()
        if guest.proc.poll() is None:
            guest.proc.kill()
        if os.path.exists(sock):
            os.unlink(sock)


def test_daemon_connect_failures_leave_the_vm_running(tmp_path):
    """The daemon makes a migration's connection for its jailed VMM: a
    refused one, or one nobody answers (a listener whose backlog is full
    drops the SYN), fails within its deadline with one clear line, and the
    VM runs on, its VMM untouched."""
    import socket
    import time
    d = Daemon().start()
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    queued = []
    try:
        d.create("c1", scenario="wait=60000")
        pid = d.ok("POST", "/vms/c1/start")["pid"]
        st, js = d.request("POST", "/vms/c1/migrate",
                           {"uri": f"tcp:127.0.0.1:{port}", "token": "t"})
        assert st == 500 and js["error"] == (f"cannot connect to tcp:127.0.0.1:{port}: "
                                             "Connection refused"), (st, js)
        assert d.logtext().count(f"cannot connect to tcp:127.0.0.1:{port}") == 1, d.logtext()
        # Fill the backlog: the next SYN goes unanswered.
        for _ in range(2):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(full.getsockname())
            queued.append(c)
        t0 = time.monotonic()
        st, js = d.request("POST", "/vms/c1/migrate",
                           {"uri": f"tcp:127.0.0.1:{full.getsockname()[1]}", "token": "t"})
        took = time.monotonic() - t0
        assert st == 500 and "no answer within 10 s" in js["error"], (st, js)
        assert 9 <= took <= scaled(20), took
        js = d.vm("c1")
        assert js["state"] == "running" and js["pid"] == pid, js
        # The VMM was never asked to migrate.
        info = vireo_control(os.path.join(d.state, "run", "c1.sock"), action="info")
        assert info["state"] == "running" and "migration" not in info, info
    finally:
        for c in queued:
            c.close()
        full.close()
        d.cleanup()
