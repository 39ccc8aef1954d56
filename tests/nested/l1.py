"""The nested test host (DESIGN §5; docs/linux-guest-tests.md): an "L1"
whose /dev/kvm has hardware virtualization, on a machine whose own /dev/kvm
has none.

L1 is Debian's unmodified cloud kernel under QEMU's TCG, which emulates AMD
SVM (-cpu EPYC,+svm,+npt), with kvm-amd loaded. Its userspace is this
machine's root, shared read-only over virtio-fs (QEMU's virtiofsd), so the
checkout, python3, QEMU and iproute2 are there at the same paths. /tmp, /run,
/root, /var/lib, /var/tmp and /dev/shm are L1's own tmpfs; directories asked
for as writable are shared read-write at their own paths.

For the Linux tests' batch kvm-amd loads with npt=0 (SHADOW_PAGING): L1's KVM
then shadows its guests' page tables itself, and TCG's emulation of nested
paging, where guest faults that failed CI came from (docs/linux-guest-tests.md),
is never used.

One boot serves many commands: an agent inside L1 (agent.py) runs them, one
at a time, over a virtio-serial port.

    with NestedHost() as l1:
        rc, out, err = l1.run("grep -c svm /proc/cpuinfo", timeout=30)

Standard library only. Needs root, qemu-system-x86 and qemu-system-common
(virtiofsd), busybox-static, kmod, apt-get and dpkg-deb: the kernel package is
fetched once with `apt-get download` into the cache (VIREO_L1_CACHE, default
build/nested) and unpacked there, never installed.
"""
import atexit
import base64
import contextlib
import fcntl
import glob
import gzip
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]

KERNEL_PACKAGE = "linux-image-cloud-amd64"
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
BUSYBOX = "/bin/busybox"
AGENT_PORT = "org.vireo.l1.agent"
# Shadow paging in L1's KVM, for the Linux guests of the tests' batch: with
# TCG's nested paging (QEMU 7.2) they walked their page tables through a CR3
# with a stray bit 32, and looped in KVM's emulator or triple-faulted. It costs
# 10-30 % of their time, and L1's own kernel dies more often (a probe VM in
# test_nested's L1 killed it in CI run ci27), so only the batch asks for it:
# the batch replaces a lost L1 (docs/linux-guest-tests.md).
SHADOW_PAGING = "npt=0"
# The modules L1's initramfs loads itself: virtio-fs for the root and
# virtio_console for the agent's port (their dependencies come along).
INITRAMFS_MODULES = ("virtio_pci", "virtiofs", "virtio_console")
# L1's own tmpfs, where it must write (the shared root is read-only).
TMPFS_DIRS = ("/tmp", "/run", "/root", "/var/lib", "/var/tmp")
HIDDEN_DIRS = TMPFS_DIRS + ("/proc", "/sys", "/dev")
# Environment of every command in L1, over what PID 1 exports.
L1_ENV = {"VIREO_IN_L1": "1", "VIREO_TEST_TIME_SCALE": "4"}

BOOT_TIMEOUT_S = 180    # QEMU start to the agent's "ready": ~4 s when idle
BOOT_ATTEMPTS = 3       # boots of L1 before start() gives up (start(): why)
START_TIMEOUT_S = 30    # QEMU's and virtiofsd's sockets
ANSWER_GRACE_S = 60     # past a command's timeout, before L1 counts as hung
# The agent says it is alive every 5 s while a command runs (agent.py): an L1
# silent this long has frozen (seen in CI: both CPUs stuck, no console output).
SILENCE_TIMEOUT_S = 120
# A silent L1 is woken before it counts as frozen, a third into the silence
# timeout and two thirds (for the default): first with a monitor command, which wakes QEMU's
# main loop (its timers), then with an NMI to L1's CPUs, which takes them out
# of HLT (a lost timer interrupt: in CI on 2026-12-07 L1 froze with both
# CPUs in HLT, interrupts on, and QEMU's threads asleep). Which one brought
# the agent back is kept in NestedHost.wakes; an unknown NMI only makes
# L1's kernel log "Uhhuh. NMI received for unknown reason".
WAKE_STEPS = (("a monitor command", "info cpus"), ("an NMI", "nmi"))
WAKE_MIN_SILENCE_S = 10     # two of the agent's heartbeats (agent.HEARTBEAT_S)
POWEROFF_TIMEOUT_S = 30


class L1Unavailable(Exception):
    """This machine lacks something the nested test host needs."""


class L1Error(Exception):
    """L1 did not come up, died, or stopped answering (it is killed)."""


class L1Lost(L1Error):
    """L1 froze or died while a command ran (L1 is killed): L1's own fault
    (docs/linux-guest-tests.md, "A frozen L1"), after which a new L1 can go on."""


class L1Wedged(L1Lost):
    """A command in L1 made no progress by its caller's measure (run()'s
    watch; L1 is killed)."""


class L1Frozen(L1Lost):
    """L1's agent fell silent while a command ran (L1 is killed)."""


class CommandTimeout(Exception):
    """A command ran past its timeout; L1 killed it (its whole process group)."""

    def __init__(self, cmd, timeout, stdout, stderr):
        super().__init__(f"the command ran past its {timeout} s in L1: {shorten(cmd)}")
        self.cmd, self.timeout, self.stdout, self.stderr = cmd, timeout, stdout, stderr


def shorten(cmd, width=100):
    text = cmd if isinstance(cmd, str) else shlex.join(cmd)
    return text if len(text) <= width else text[:width - 3] + "..."


def cache_dir():
    return pathlib.Path(os.environ.get("VIREO_L1_CACHE") or ROOT / "build" / "nested")


def env_int(name, default):
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise L1Error(f"{name}={value!r} is not a number") from None


def tool(name, package):
    """The path of a program, /usr/sbin and /sbin included, or L1Unavailable."""
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path is None:
        raise L1Unavailable(f"the nested test host needs {name} (Debian package {package})")
    return path


def is_static_elf(path):
    """True when PATH is an ELF executable without a program interpreter."""
    with open(path, "rb") as f:
        ehdr = f.read(64)
        if ehdr[:4] != b"\x7fELF" or ehdr[4] != 2:
            return False
        phoff, = struct.unpack_from("<Q", ehdr, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", ehdr, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3  # PT_INTERP
               for i in range(phnum))


def under(path, dirs):
    path = str(path)
    return any(path == d or path.startswith(d + "/") for d in dirs)


def visible_in_l1(path):
    """Whether L1 sees PATH of this machine without being asked to keep it."""
    return not under(os.path.realpath(path), HIDDEN_DIRS)


@contextlib.contextmanager
def locked(path):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


# --- the kernel: Debian's package, downloaded and unpacked once -------------

class Kernel:
    """An unpacked kernel package: ROOT/boot/vmlinuz-VERSION and
    ROOT/lib/modules/VERSION with its modules.dep (made by depmod)."""

    def __init__(self, root):
        self.root = pathlib.Path(root).resolve()
        versions = os.listdir(self.root / "lib/modules")
        if len(versions) != 1:
            raise L1Error(f"{self.root}: expected one kernel in lib/modules, found {versions}")
        self.version = versions[0]
        self.vmlinuz = self.root / "boot" / f"vmlinuz-{self.version}"
        self.moddir = self.root / "lib/modules" / self.version
        self._dep = None

    def modules(self, names):
        """The module files (relative to moddir) for NAMES, each after the
        ones it depends on (modules.dep order)."""
        if self._dep is None:
            self._dep = {}
            with open(self.moddir / "modules.dep") as f:
                for line in f:
                    path, _, deps = line.partition(":")
                    name = os.path.basename(path).split(".ko")[0].replace("-", "_")
                    self._dep[name] = (path, deps.split())
        order = []

        def add(name):
            key = name.replace("-", "_")
            if key not in self._dep:
                raise L1Error(f"no module {name} in kernel {self.version} ({self.moddir})")
            path, deps = self._dep[key]
            if path in order:
                return
            for d in deps:
                add(os.path.basename(d).split(".ko")[0])
            order.append(path)

        for n in names:
            add(n)
        return order


def resolve_kernel_package():
    """The versioned package behind the metapackage (e.g.
    linux-image-6.1.0-57-cloud-amd64), or None when the package lists do not
    name it."""
    r = subprocess.run([tool("apt-cache", "apt"), "depends", KERNEL_PACKAGE],
                       capture_output=True, text=True, timeout=120)
    m = re.search(r"^\s*Depends: (linux-image-[0-9]\S*)", r.stdout, re.M)
    return m.group(1) if m else None


def fetch_kernel(cache=None):
    """The kernel package, unpacked under CACHE/kernel/PACKAGE: downloaded
    once, reused while the package lists name the same version (and when they
    name none, e.g. offline, the newest one there)."""
    cache = pathlib.Path(cache or cache_dir())
    kdir = cache / "kernel"
    kdir.mkdir(parents=True, exist_ok=True)
    with locked(cache / "kernel.lock"):
        pkg = resolve_kernel_package()
        if pkg is None:
            have = sorted(kdir.glob("linux-image-*"), key=lambda p: p.stat().st_mtime)
            if have:
                return Kernel(have[-1])
            raise L1Error(f"cannot resolve {KERNEL_PACKAGE} in the package lists "
                          "(run apt-get update)")
        if not (kdir / pkg).is_dir():
            unpack_kernel(pkg, kdir)
        return Kernel(kdir / pkg)


def unpack_kernel(pkg, kdir):
    tmp = pathlib.Path(tempfile.mkdtemp(dir=kdir, prefix=f".{pkg}."))
    try:
        r = subprocess.run([tool("apt-get", "apt"), "download", "-q", pkg], cwd=tmp,
                           capture_output=True, text=True, timeout=900)
        debs = list(tmp.glob("*.deb"))
        if r.returncode != 0 or len(debs) != 1:
            why = (r.stderr.strip().splitlines() or ["no .deb"])[-1]
            raise L1Error(f"cannot download {pkg} with apt-get download: {why}")
        root = tmp / "root"
        r = subprocess.run([tool("dpkg-deb", "dpkg"), "-x", str(debs[0]), str(root)],
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise L1Error(f"cannot unpack {debs[0].name}: {r.stderr.strip()}")
        # The package ships no modules.dep: depmod makes it, as installing would.
        version = os.listdir(root / "lib/modules")[0]
        r = subprocess.run([tool("depmod", "kmod"), "-b", str(root), version],
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise L1Error(f"depmod failed for {pkg}: {r.stderr.strip()}")
        root.rename(kdir / pkg)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- L1's initramfs -----------------------------------------------------------

def cpio_newc(entries):
    """An uncompressed cpio archive in the "newc" format the kernel unpacks.
    ENTRIES: (name, mode, data, rdev); a symlink's data is its target."""
    out = bytearray()
    for ino, (name, mode, data, rdev) in enumerate(
            list(entries) + [("TRAILER!!!", 0, b"", (0, 0))], 1):
        bname = name.encode() + b"\0"
        nlink = 2 if mode & 0o040000 else 1
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(bname), 0)
        out += b"070701" + "".join(f"{v:08x}" for v in fields).encode() + bname
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def build_initramfs(kernel, conf, keep, writable):
    """L1's initramfs (gzip'ed cpio): busybox, the modules for virtio-fs and
    the agent's port, the two stages of init and the agent."""
    def f(name, data, mode=0o644):
        return (name, 0o100000 | mode, data, (0, 0))

    def d(name):
        return (name, 0o040755, b"", (0, 0))

    mods = kernel.modules(INITRAMFS_MODULES)
    entries = [d("bin"), d("dev"), d("proc"), d("sys"), d("modules"), d("l1"),
               ("dev/console", 0o020600, b"", (5, 1)),
               f("bin/busybox", pathlib.Path(BUSYBOX).read_bytes(), 0o755),
               ("bin/sh", 0o120777, b"busybox", (0, 0)),
               f("init", (HERE / "init").read_bytes(), 0o755),
               f("l1/pid1", (HERE / "pid1").read_bytes(), 0o755),
               f("l1/agent.py", (HERE / "agent.py").read_bytes()),
               f("l1/conf", "".join(f"{k}={shlex.quote(v)}\n" for k, v in conf.items()).encode()),
               f("l1/kernel", f"{kernel.root}\n".encode()),
               f("l1/tmpfs", "".join(f"{t}\n" for t in TMPFS_DIRS).encode()),
               f("l1/keep", "".join(f"{p}\n" for p in keep).encode()),
               f("l1/writable", "".join(f"{tag} {p}\n" for tag, p in writable).encode()),
               f("modules/order", "".join(os.path.basename(m) + "\n" for m in mods).encode())]
    entries += [f("modules/" + os.path.basename(m), (kernel.moddir / m).read_bytes())
                for m in mods]
    return gzip.compress(cpio_newc(entries), compresslevel=1)


# --- the host side of L1 --------------------------------------------------------

ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|c)")


def tail(path, lines=15):
    """The last non-empty LINES of a log, without terminal escapes."""
    try:
        text = pathlib.Path(path).read_bytes()[-16384:].decode(errors="replace")
    except OSError:
        return "(no log)"
    text = ANSI.sub("", text).replace("\r", "")
    kept = [l for l in text.splitlines() if l.strip() and
            "TCG doesn't support requested feature" not in l]
    return "\n".join("  " + l for l in kept[-lines:]) or "  (empty)"


# The first line of a kernel's report of its own failure, in L1's console.
KERNEL_TROUBLE = re.compile(r"Kernel panic|BUG:|Oops|general protection fault|"
                            r"WARNING: CPU|cut here|watchdog: |rcu: INFO|INFO: task")


def crash_excerpt(path, lines=25):
    """The start of the first failure report of L1's kernel in the console
    log at PATH (LINES lines, "" when there is none): the console's end shows
    only the last frames of a panic."""
    try:
        text = pathlib.Path(path).read_bytes().decode(errors="replace")
    except OSError:
        return ""
    text = ANSI.sub("", text).replace("\r", "")
    found = KERNEL_TROUBLE.search(text)
    if not found:
        return ""
    start = text.rfind("\n", 0, found.start()) + 1
    kept = text[start:].splitlines()[:lines]
    return "L1's kernel reported:\n" + "\n".join("  " + l for l in kept) + "\n"


class NestedHost:
    """One L1: start() boots it, run() runs commands in it, close() powers it
    off. Also a context manager.

    smp, mem_mib: L1's vCPUs and RAM (VIREO_L1_SMP, VIREO_L1_MEM_MIB; 2 and
        4096, so that a 2 GiB L2 guest fits).
    writable: host directories shared read-write into L1 at their own paths
        (each has its own virtiofsd); the way to bring files back.
    keep: host directories under L1's tmpfs dirs (e.g. a checkout in /root)
        that L1 must still see, read-only, at their own paths.
    console_log: where L1's serial console goes (default CACHE/console.log).
    silence_timeout: how long the agent may be silent during a command before
        L1 counts as frozen (VIREO_L1_SILENCE_TIMEOUT, default 120 s); L1 is
        woken twice meanwhile (WAKE_STEPS, recorded in wakes), and the
        state of L1's CPUs is then saved next to console_log (-cpus.txt).
    kvm_amd: kvm-amd's module options in L1 (VIREO_L1_KVM_AMD overrides):
        "" (nested paging) by default, SHADOW_PAGING for the Linux tests.
    """

    def __init__(self, smp=None, mem_mib=None, writable=(), keep=(), cache=None,
                 console_log=None, boot_timeout=BOOT_TIMEOUT_S, silence_timeout=None,
                 kvm_amd=""):
        self.smp = smp or env_int("VIREO_L1_SMP", 2)
        self.kvm_amd = os.environ.get("VIREO_L1_KVM_AMD", kvm_amd)
        self.mem_mib = mem_mib or env_int("VIREO_L1_MEM_MIB", 4096)
        self.writable = [os.path.realpath(w) for w in writable]
        self.keep = [os.path.realpath(k) for k in keep]
        self.cache = pathlib.Path(cache or cache_dir()).resolve()
        self.console_log = pathlib.Path(console_log or self.cache / "console.log")
        self.boot_timeout = boot_timeout
        self.silence_timeout = silence_timeout or env_int("VIREO_L1_SILENCE_TIMEOUT",
                                                          SILENCE_TIMEOUT_S)
        self.info = None            # the agent's "ready" frame
        self.boot_seconds = None    # QEMU start to the agent's "ready"
        self._procs = []            # (what, Popen), QEMU last
        self._qemu = None
        self._sock = None
        self._buf = b""
        self._id = 0
        self._lock = threading.Lock()
        self._in_flight = False     # a run() left before its command's end
        self._work = None
        self.boot_failures = []     # why the boots before the one that came up failed
        self.wakes = []             # each time a silent L1 was woken: after_s, by, woke

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # -- start ---------------------------------------------------------------

    def start(self):
        tools = self._check_tools()
        kernel = fetch_kernel(self.cache)
        for w in self.writable:
            os.makedirs(w, exist_ok=True)
        # only what L1's own tmpfs would hide (not those dirs themselves)
        keep = [k for k in self.keep if under(k, TMPFS_DIRS) and k not in TMPFS_DIRS]
        for k in keep:
            if not os.path.isdir(k):
                raise L1Error(f"{k} (to keep visible in L1) is not a directory")
        for attempt in range(1, BOOT_ATTEMPTS + 1):
            try:
                return self._boot(tools, kernel, keep)
            except L1Lost as e:
                # Its agent never said ready: L1 froze or died while it came
                # up (seen once in ~30 boots: L1's console stopped at
                # "starting the agent"); the CPU state is saved by then.
                self.boot_failures.append(str(e))
                if attempt == BOOT_ATTEMPTS:
                    raise

    def _boot(self, tools, kernel, keep):
        """One boot of L1, up to its agent's "ready"; L1Lost if the agent
        never says it (L1 silent for boot_timeout, or ended)."""
        self._work = tempfile.mkdtemp(prefix="vireo-l1-")
        atexit.register(self.kill)
        try:
            conf = {"PYTHON": tools["python3"], "MODPROBE": tools["modprobe"],
                    "AGENT_PORT": AGENT_PORT,
                    "KVM_AMD_OPTIONS": self.kvm_amd}
            initrd = os.path.join(self._work, "initrd.img")
            with open(initrd, "wb") as f:
                f.write(build_initramfs(kernel, conf, keep,
                                        [(f"rw{i}", w) for i, w in enumerate(self.writable)]))
            fsdevs = self._start_virtiofsd(tools)
            t0 = time.monotonic()
            self._start_qemu(tools, kernel, initrd, fsdevs)
            self.info = self._frame(self.boot_timeout, "L1 did not come up", frozen=True)
            self.boot_seconds = time.monotonic() - t0
            if not self.info.get("ready"):
                raise self._fail(f"L1's agent said {self.info!r} instead of ready")
            if not self.info.get("kvm"):
                raise self._fail("L1 came up without /dev/kvm (kvm-amd did not load)")
        except BaseException:
            self.kill()
            raise
        return self

    def _check_tools(self):
        if os.geteuid() != 0:
            raise L1Unavailable("the nested test host needs root (virtiofsd, mount namespaces)")
        if not os.access(VIRTIOFSD, os.X_OK):
            raise L1Unavailable(f"the nested test host needs {VIRTIOFSD} "
                                "(Debian package qemu-system-common)")
        if not os.access(BUSYBOX, os.X_OK) or not is_static_elf(BUSYBOX):
            raise L1Unavailable(f"the nested test host needs a static {BUSYBOX} "
                                "(Debian package busybox-static)")
        python3 = "/usr/bin/python3"
        if not os.access(python3, os.X_OK):
            raise L1Unavailable("the nested test host needs /usr/bin/python3 (python3)")
        return {"qemu": tool("qemu-system-x86_64", "qemu-system-x86"),
                "unshare": tool("unshare", "util-linux"), "modprobe": tool("modprobe", "kmod"),
                "python3": python3}

    def _spawn(self, what, args, log):
        with open(os.path.join(self._work, log), "ab") as f:
            p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                 start_new_session=True)
        self._procs.append((what, p))
        return p

    def _start_virtiofsd(self, tools):
        """One virtiofsd for this machine's root, read-only even on this side
        (in a private mount namespace where every mount but the socket's
        directory is remounted read-only), one for each writable directory.
        Returns QEMU's arguments for them."""
        ro_root = r"""
            mount --bind "$1" "$1" && mount -t tmpfs vireo-l1 /run || exit 1
            awk '{print $5}' /proc/self/mountinfo | while read -r m; do
                m=$(printf '%b' "$m")
                [ "$m" = "$1" ] || [ "$m" = /run ] || mount -o remount,bind,ro "$m" 2>/dev/null
            done
            mount -o remount,bind,ro / || exit 1
            exec "$2" --socket-path="$1/root.sock" -o source=/ -o sandbox=chroot \
                -o cache=always -o no_posix_lock -o log_level=err"""
        self._spawn("virtiofsd for /", [tools["unshare"], "-m", "--propagation", "private",
                                        "sh", "-c", ro_root, "l1-virtiofsd", self._work,
                                        VIRTIOFSD], "virtiofsd.log")
        socks = [("hostroot", os.path.join(self._work, "root.sock"))]
        for i, w in enumerate(self.writable):
            sock = os.path.join(self._work, f"rw{i}.sock")
            self._spawn(f"virtiofsd for {w}", [VIRTIOFSD, f"--socket-path={sock}",
                                               "-o", f"source={w}", "-o", "cache=auto",
                                               "-o", "no_posix_lock", "-o", "log_level=err"],
                        "virtiofsd.log")
            socks.append((f"rw{i}", sock))
        deadline = time.monotonic() + START_TIMEOUT_S
        for tag, sock in socks:
            self._wait_path(sock, deadline, f"virtiofsd's socket for {tag}", "virtiofsd.log")
        args = []
        for i, (tag, sock) in enumerate(socks):
            args += ["-chardev", f"socket,id=fs{i},path={qemu_escape(sock)}",
                     "-device", f"vhost-user-fs-pci,chardev=fs{i},tag={tag}"]
        return args

    def _wait_path(self, path, deadline, what, log):
        while not os.path.exists(path):
            dead = [w for w, p in self._procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{dead[0]} exited" if dead else f"not there after {START_TIMEOUT_S} s"
                raise L1Error(f"no {what}: {why}; {log} says:\n" +
                              tail(os.path.join(self._work, log)))
            time.sleep(0.02)

    def _start_qemu(self, tools, kernel, initrd, fsdevs):
        self.console_log.parent.mkdir(parents=True, exist_ok=True)
        agent = os.path.join(self._work, "agent.sock")
        mem = f"{self.mem_mib}M"
        args = [tools["qemu"], "-accel", f"tcg,thread={os.environ.get('VIREO_L1_TCG_THREAD', 'multi')}", "-M", "pc",
                "-cpu", "EPYC,+svm,+npt", "-smp", str(self.smp), "-m", mem,
                "-object", f"memory-backend-memfd,id=mem,size={mem},share=on",
                "-machine", "memory-backend=mem",
                "-nodefaults", "-display", "none", "-no-reboot",
                "-chardev", f"file,id=con,path={qemu_escape(self.console_log)}",
                "-serial", "chardev:con",
                "-device", "virtio-serial-pci",
                "-chardev", f"socket,id=agent,path={qemu_escape(agent)},server=on,wait=off",
                "-device", f"virtserialport,chardev=agent,name={AGENT_PORT}",
                "-monitor", f"unix:{qemu_escape(self._monitor_path())},server=on,wait=off",
                *fsdevs,
                "-kernel", str(kernel.vmlinuz), "-initrd", initrd,
                # L1 runs only our tests: no speculation mitigations, which
                # cost TCG ~15 % of L1's boot
                "-append", "console=ttyS0 quiet panic=-1 mitigations=off"]
        self._qemu = self._spawn("QEMU", args, "qemu.log")
        self._wait_path(agent, time.monotonic() + START_TIMEOUT_S, "agent socket from QEMU",
                        "qemu.log")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(agent)

    def _monitor_path(self):
        return os.path.join(self._work, "monitor.sock")

    # -- a frozen L1 ---------------------------------------------------------------

    def _hmp(self, command, timeout=5.0):
        """COMMAND's answer from QEMU's human monitor, or why there is none."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(self._monitor_path())
                buf = b""
                for send in (None, command):
                    if send:
                        s.sendall(send.encode() + b"\n")
                        buf = b""
                    while not buf.endswith(b"(qemu) "):
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        buf += chunk
        except OSError as e:
            return f"(QEMU's monitor did not answer {command!r}: {e})"
        text = buf.decode(errors="replace").replace("\r", "")
        return text.removesuffix("(qemu) ").split("\n", 1)[-1]

    def _qemu_threads(self):
        """One line per thread of QEMU: name, state, CPU seconds used in 1 s."""
        def sample():
            out = {}
            for task in glob.glob(f"/proc/{self._qemu.pid}/task/*/stat"):
                with contextlib.suppress(OSError):
                    with open(task) as f:
                        head, _, rest = f.read().rpartition(")")
                    fields = rest.split()
                    out[task] = (head.split("(", 1)[1], fields[0],
                                 int(fields[11]) + int(fields[12]))
            return out
        first = sample()
        time.sleep(1)
        ticks = os.sysconf("SC_CLK_TCK")
        return [f"  {task.split('/')[4]} {name}: state {state}, "
                f"{(used - first.get(task, (0, 0, used))[2]) / ticks:.2f} CPU s in 1 s"
                for task, (name, state, used) in sorted(sample().items())]

    def _save_cpu_state(self):
        """What L1's CPUs and QEMU's threads were doing, into a file next to
        the console log; returns a few lines saying where and what."""
        if self._qemu is None or self._qemu.poll() is not None:
            return ""
        threads = self._qemu_threads()
        cpus = self._hmp("info cpus")
        regs = self._hmp("info registers -a")
        where = self.console_log.with_name(self.console_log.stem + "-cpus.txt")
        with contextlib.suppress(OSError):
            where.write_text("# QEMU's threads (on this host)\n" + "\n".join(threads) +
                             f"\n# info cpus\n{cpus}\n# info registers -a\n{regs}\n")
        rips = [line.strip() for line in regs.splitlines()
                if line.startswith(("RIP=", "EIP=", "CPU#"))]
        return ("\nQEMU's threads:\n" + "\n".join(threads) + "\nL1's CPUs:\n  " +
                "\n  ".join(rips) + f"\n(all registers: {where})")

    # -- the agent's protocol ---------------------------------------------------

    def _fail(self, what, error=L1Error):
        """Kills L1 and returns the ERROR to raise: WHAT, then why QEMU
        ended if it did, and the end of L1's console."""
        status = self._qemu.poll() if self._qemu else None
        qlog = tail(os.path.join(self._work, "qemu.log"), 5) if self._work else "  (empty)"
        self.kill()
        msg = what
        if status is not None:
            msg += f" (QEMU exited with status {status}"
            msg += f"; it said:\n{qlog}\n" if qlog != "  (empty)" else ")"
        return error(f"{msg}; {crash_excerpt(self.console_log)}L1's console "
                     f"({self.console_log}) ends with:\n{tail(self.console_log)}")

    def _frame(self, limit, what, frozen=False):
        """The agent's next frame, within LIMIT seconds; else L1 is killed
        and L1Error says WHAT was awaited. FROZEN (a command runs): silence
        raises L1Frozen, with the state of L1's CPUs, and an L1 that ended
        L1Lost; before that, L1 is woken (WAKE_STEPS, self.wakes)."""
        lost = L1Lost if frozen else L1Error
        start = time.monotonic()
        deadline = start + limit
        # the first a third in, never before two heartbeats were missed; the
        # second halfway from there to the deadline
        first = max(limit / 3, WAKE_MIN_SILENCE_S)
        steps = list(zip((first, (first + limit) / 2), WAKE_STEPS)) if frozen else []
        woken = None
        while b"\n" not in self._buf:
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                silent = f"{what}: nothing from L1's agent within {limit:.0f} s"
                if frozen:
                    raise self._fail(silent + self._save_cpu_state(), L1Frozen)
                raise self._fail(silent)
            wake_at = start + steps[0][0] if steps else deadline
            if now >= wake_at:
                how, command = steps.pop(0)[1]
                woken = {"after_s": round(now - start), "by": how, "woke": False,
                         "answer": self._hmp(command).strip()[:200]}
                self.wakes.append(woken)
                continue
            self._sock.settimeout(min(left, wake_at - now))
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                continue
            except OSError as e:
                raise self._fail(f"{what}: lost L1's agent ({e})", lost) from None
            if not chunk:
                if self._qemu.poll() is None:
                    # QEMU closes the socket only when it ends: let it finish.
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self._qemu.wait(timeout=5)
                raise self._fail(f"{what}: L1 ended", lost)
            self._buf += chunk
            if woken:
                woken["woke"] = True
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def _send(self, **frame):
        try:
            self._sock.sendall((json.dumps(frame) + "\n").encode())
        except OSError as e:
            raise self._fail(f"cannot reach L1's agent ({e})") from None

    # -- use ---------------------------------------------------------------------

    def run(self, cmd, timeout=600, cwd=None, env=None, output=None, watch=None):
        """Runs CMD in L1 (a string: with bash -c; a list: as argv) in CWD
        (default /), with L1's environment plus ENV. OUTPUT(fd, bytes), if
        given, sees stdout (1) and stderr (2) as they come. Returns
        (returncode, stdout, stderr) as text; a negative returncode is a
        signal. WATCH(), if given, is called at each of the agent's frames
        (at least every few seconds); a text it returns ends the command:
        L1 is killed and L1Wedged says the text. Raises CommandTimeout
        after TIMEOUT seconds (L1 killed the
        command), L1Frozen when the agent is silent for silence_timeout,
        L1Lost when L1 ends meanwhile, and L1Error when L1 fails or stops
        answering."""
        if self._sock is None:
            raise L1Error("L1 is not running")
        argv = ["/bin/bash", "-c", cmd] if isinstance(cmd, str) else [str(a) for a in cmd]
        with self._lock:
            self._id += 1
            rid = self._id
            self._in_flight = True
            self._send(op="run", id=rid, argv=argv, cwd=str(cwd or "/"),
                       env={**L1_ENV, **(env or {})}, timeout=timeout)
            deadline = time.monotonic() + timeout + ANSWER_GRACE_S
            out = {1: bytearray(), 2: bytearray()}
            while True:
                left = deadline - time.monotonic()
                frozen = left > self.silence_timeout
                frame = self._frame(min(left, self.silence_timeout),
                                    f"L1 stopped answering: no end of {shorten(cmd)!r} "
                                    f"(timeout {timeout} s)", frozen=frozen)
                wedged = watch() if watch else None
                if wedged:
                    raise self._fail(wedged, L1Wedged)
                if frame.get("id") != rid or frame.get("alive"):
                    continue
                if "error" in frame:
                    raise self._fail(f"L1's agent: {frame['error']}")
                if "rc" in frame:
                    self._in_flight = False
                    break
                data = base64.b64decode(frame["data"])
                out[frame["fd"]] += data
                if output:
                    output(frame["fd"], data)
        stdout, stderr = (out[fd].decode(errors="replace") for fd in (1, 2))
        if frame["timed_out"]:
            raise CommandTimeout(cmd, timeout, stdout, stderr)
        return frame["rc"], stdout, stderr

    def close(self):
        """Powers L1 off (kills it if it does not go within 30 s, or at once
        when a command is still running: after an interrupted run())."""
        if self._qemu is not None and self._qemu.poll() is None and self._sock is not None \
                and not self._in_flight:
            with contextlib.suppress(OSError, L1Error):
                self._send(op="poweroff")
                deadline = time.monotonic() + POWEROFF_TIMEOUT_S
                while not self._frame(deadline - time.monotonic(),
                                      "no goodbye from L1's agent").get("bye"):
                    pass
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._qemu.wait(timeout=POWEROFF_TIMEOUT_S)
        self.kill()

    def kill(self):
        """Ends L1 and its virtiofsd at once (idempotent)."""
        atexit.unregister(self.kill)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for _, p in reversed(self._procs):
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        self._procs = []
        if self._work:
            shutil.rmtree(self._work, ignore_errors=True)
            self._work = None


def qemu_escape(path):
    """PATH as a value in a QEMU option list (commas doubled)."""
    return str(path).replace(",", ",,")
