/* The VMM's sandbox: its own mount namespace whose root is an empty,
 * read-only tmpfs (pivot_root, the host's mounts detached), Landlock
 * denying every file system access, an unprivileged uid/gid, no new
 * privileges, and a seccomp allowlist of the system calls a running VMM
 * makes. Everything the VMM needs from the host (/dev/kvm, guest memory,
 * images, taps, sockets, cgroup files, each vCPU's schedstat file) is opened
 * before, as descriptors of files, never of directories: openat() relative
 * to a directory outside the jail would walk out of it. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sched.h>
#include <seccomp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/if_tun.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <termios.h>
#include <unistd.h>

#include "vireo/log.h"
#include "vireo/sandbox.h"

/* What a running VMM calls: vCPU threads (KVM ioctls), device I/O threads
 * (eventfds, epoll, timerfds, readv/writev on taps, preadv/pwritev on
 * images), the event loop (control and console sockets: accept4 and
 * recv/send on descriptors it already has), malloc, and thread start-up
 * (clone with CLONE_THREAD only, see below), ioctl with the requests
 * listed further down. Not here: socket and connect (but for the outgoing
 * TCP stream of a VMM without a jail, see allow_migration; a jailed one
 * gets its stream as a descriptor from the daemon), bind, execve, fork,
 * ptrace, mount, setuid and the like. */
static const char *const allowed[] = {
	"read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
	"preadv2", "pwritev2", "lseek", "close", "fsync", "fdatasync", "fallocate",
	"ftruncate", "fstat", "newfstatat", "statx", "openat", "unlink", "unlinkat",
	"fcntl", "dup", "dup3", "pipe2", "poll", "ppoll", "epoll_wait",
	"epoll_pwait", "epoll_ctl", "epoll_create1", "eventfd2", "timerfd_create",
	"timerfd_settime", "timerfd_gettime", "accept4", "recvfrom", "recvmsg", "sendto",
	"sendmsg", "shutdown", "getsockopt", "setsockopt", "futex", "madvise", "mmap", "munmap",
	"mremap", "mprotect", "brk", "clock_gettime", "clock_getres", "clock_nanosleep",
	"nanosleep", "gettimeofday", "exit", "exit_group", "rt_sigaction",
	"rt_sigprocmask", "rt_sigreturn", "sigaltstack", "tgkill", "gettid", "getpid",
	"sched_setaffinity", "sched_getaffinity", "sched_yield", "getrandom",
	"set_robust_list", "rseq", "restart_syscall",
	/* the control socket's snapshot action: its directory and files */
	"mkdir", "mkdirat", "rename", "renameat", "renameat2",
	/* disks' rings, set up (and restricted to read/write/fsync of their
	 * image) before the sandbox: submitting and reaping only */
	"io_uring_enter",
};

static int allow_all(scmp_filter_ctx ctx)
{
	for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++) {
		int nr = seccomp_syscall_resolve_name(allowed[i]);
		int ret = nr == __NR_SCMP_ERROR ? -EINVAL : seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);

		if (ret)
			return err_set(ret, "seccomp: cannot allow %s", allowed[i]);
	}
	return 0;
}

/* ioctl only with the requests a running VMM makes: running vCPUs and
 * reading their registers (crash reports), interrupt routing and
 * notification fds (MSI-X programming, BAR moves), tap offloads (set when
 * the driver is ready), the terminal's mode (restored at exit). */
static const unsigned long ioctls[] = {
	KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS, KVM_SET_REGS, KVM_SET_SREGS, KVM_GET_MSRS,
	KVM_SET_MSRS, KVM_IRQ_LINE, KVM_SET_GSI_ROUTING, KVM_SIGNAL_MSI, KVM_IRQFD,
	KVM_IOEVENTFD, KVM_CHECK_EXTENSION, TUNSETOFFLOAD, TUNSETVNETHDRSZ, TCGETS, TCSETS,
	TCSETSW, TCSETSF,
	/* snapshots (src/vmm/vm-state.c, vcpu-state.c): reading state only */
	KVM_GET_MP_STATE, KVM_GET_FPU, KVM_GET_XSAVE, KVM_GET_XSAVE2, KVM_GET_XCRS,
	KVM_GET_DEBUGREGS, KVM_GET_LAPIC, KVM_GET_VCPU_EVENTS, KVM_GET_MSR_INDEX_LIST,
	KVM_GET_IRQCHIP, KVM_GET_PIT2, KVM_GET_CLOCK,
	/* the first resume of a VM restored paused (src/vmm/pause.c) */
	KVM_SET_CLOCK,
	/* live migration (src/vmm/dirty.c): dirty logging on the same slots */
	KVM_SET_USER_MEMORY_REGION, KVM_GET_DIRTY_LOG,
};

static int allow_ioctls(scmp_filter_ctx ctx)
{
	for (size_t i = 0; i < sizeof(ioctls) / sizeof(ioctls[0]); i++) {
		/* The kernel reads the request as 32 bits. */
		int ret = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 1,
					   SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffUL, ioctls[i]));

		if (ret)
			return err_set(ret, "seccomp: cannot allow ioctl 0x%lx", ioctls[i]);
	}
	return 0;
}

/* Threads, but no processes: clone only with CLONE_THREAD. clone3 passes
 * its flags in memory, out of a filter's reach, so it fails with ENOSYS
 * and glibc falls back to clone. prctl only names threads. */
static int allow_threads(scmp_filter_ctx ctx)
{
	int ret = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(clone), 1,
				   SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD));

	if (!ret)
		ret = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
	if (!ret)
		ret = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(prctl), 1,
				       SCMP_A0(SCMP_CMP_EQ, PR_SET_NAME));
	return ret ? err_set(ret, "seccomp: cannot add the thread rules") : 0;
}

/* The source of a live migration without a jail (`vireo run` by hand)
 * connects out itself: TCP sockets only (IPv4 or IPv6 streams), and
 * connect; no bind, listen or other families. */
static int allow_migration(scmp_filter_ctx ctx)
{
	int ret = 0;

	for (int i = 0; i < 2 && !ret; i++)
		ret = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(socket), 2,
				       SCMP_A0(SCMP_CMP_EQ, i ? AF_INET6 : AF_INET),
				       SCMP_A1(SCMP_CMP_MASKED_EQ, 0xf, SOCK_STREAM));
	if (!ret)
		ret = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(connect), 0);
	return ret ? err_set(ret, "seccomp: cannot add the migration rules") : 0;
}

int sandbox_seccomp(enum sandbox_seccomp mode, bool connect_out)
{
	scmp_filter_ctx ctx;
	int ret;

	if (mode == SANDBOX_SECCOMP_OFF)
		return 0;
	/* A call outside the list kills the whole VMM (SIGSYS), loudly; "log"
	 * lets it through and has the kernel log it, to find what is missing. */
	ctx = seccomp_init(mode == SANDBOX_SECCOMP_LOG ? SCMP_ACT_LOG : SCMP_ACT_KILL_PROCESS);
	if (!ctx)
		return err_set(-ENOMEM, "seccomp_init failed");
	ret = allow_all(ctx);
	if (!ret)
		ret = allow_ioctls(ctx);
	if (!ret)
		ret = allow_threads(ctx);
	if (!ret && connect_out)
		ret = allow_migration(ctx);
	/* Every thread, including those started before (device I/O threads). */
	if (!ret)
		ret = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
	if (!ret) {
		ret = seccomp_load(ctx);
		if (ret)
			err_set(ret, "cannot install the seccomp filter: %s", strerror(-ret));
	}
	seccomp_release(ctx);
	return ret;
}

/* ---- Landlock ----
 * Through the kernel ABI (no library); the structure and flags of ABIs
 * newer than the build host's <linux/landlock.h> are spelt out here. */

struct landlock_attr {
	uint64_t handled_access_fs;
	uint64_t handled_access_net; /* ABI 4 */
	uint64_t scoped;             /* ABI 6 */
};

#define LANDLOCK_GET_ABI     (1U << 0)  /* LANDLOCK_CREATE_RULESET_VERSION */
#define LANDLOCK_ALL_THREADS (1U << 3)  /* LANDLOCK_RESTRICT_SELF_TSYNC, ABI 8 */

/* The ruleset every VMM thread restricts itself with; -1: none. Made while
 * the VMM has one thread, closed once the sandbox is entered. */
static int landlock_fd = -1;
static long landlock_abi;

/* Every file system right the kernel knows is handled and no rule grants
 * any: no path can be opened, created, listed, removed or executed. Also
 * TCP bind and connect (ABI 4): a jailed VMM reaches the network only
 * through descriptors passed to it (the daemon connects a migration's
 * stream and hands it over; an incoming one listens before the sandbox).
 * And abstract Unix sockets of other domains (ABI 6). Rights the kernel
 * does not know it would refuse (EINVAL). */
static int landlock_create(void)
{
	long abi = syscall(__NR_landlock_create_ruleset, NULL, 0, LANDLOCK_GET_ABI);
	struct landlock_attr attr = { .handled_access_fs = (1ULL << 13) - 1 };
	size_t size = sizeof(attr.handled_access_fs);
	long fd;

	if (abi < 1)
		return 0; /* not built in, or disabled at boot: nothing to add */
	if (abi >= 2)
		attr.handled_access_fs |= 1ULL << 13;          /* REFER */
	if (abi >= 3)
		attr.handled_access_fs |= 1ULL << 14;          /* TRUNCATE */
	if (abi >= 5)
		attr.handled_access_fs |= 1ULL << 15;          /* IOCTL_DEV */
	if (abi >= 4) {
		attr.handled_access_net = (1ULL << 0) | (1ULL << 1); /* TCP bind, connect */
		size = offsetof(struct landlock_attr, scoped);
	}
	if (abi >= 6) {
		attr.scoped = 1ULL << 0;                      /* abstract Unix sockets */
		size = sizeof(attr);
	}
	fd = syscall(__NR_landlock_create_ruleset, &attr, size, 0);
	if (fd < 0)
		return err_set(-errno, "landlock_create_ruleset (ABI %ld): %m", abi);
	landlock_fd = (int)fd;
	landlock_abi = abi;
	return 0;
}

int sandbox_restrict_thread(void)
{
	if (landlock_fd < 0)
		return 0;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
	    syscall(__NR_landlock_restrict_self, landlock_fd, 0) < 0)
		return err_set(-errno, "landlock_restrict_self: %m");
	return 0;
}

/* Landlock restricts the calling thread and the threads it starts later;
 * from ABI 8 on, every thread of the process at once. Before that, the
 * device I/O threads started earlier are left to the mount namespace and
 * seccomp (the vCPU threads restricted themselves). */
static int landlock_enter(void)
{
	long ret = -1;
	int err;

	if (landlock_fd < 0)
		return 0;
	if (landlock_abi >= 8)
		ret = syscall(__NR_landlock_restrict_self, landlock_fd, LANDLOCK_ALL_THREADS);
	if (ret < 0)
		ret = syscall(__NR_landlock_restrict_self, landlock_fd, 0);
	err = errno;
	close(landlock_fd);
	landlock_fd = -1;
	return ret < 0 ? err_set(-err, "landlock_restrict_self: %s", strerror(err)) : 0;
}

/* ---- the jail ---- */

int sandbox_prepare(struct sandbox *sb)
{
	int ret;

	sb->mount_ns = false;
	if (!sb->jail)
		return 0;
	ret = landlock_create();
	if (ret)
		return ret;
	/* A mount namespace is per thread (unshare copies the caller's
	 * fs_struct), so this must happen while the VMM has a single thread:
	 * the threads started later inherit it, and pivot_root then moves the
	 * root of all of them at once. */
	if (unshare(CLONE_NEWNS) < 0) {
		log_warn("--jail: cannot have a mount namespace of its own (%s): falling back "
			 "to a plain chroot into %s", strerror(errno), sb->jail);
		return 0;
	}
	/* Nothing we mount or unmount may propagate back to the host. */
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		return err_set(-errno, "--jail: cannot make the mounts private: %m");
	sb->mount_ns = true;
	return 0;
}

static int chroot_into(const char *dir)
{
	if (chroot(dir) < 0)
		return err_set(-errno, "cannot chroot into %s: %m", dir);
	if (chdir("/") < 0)
		return err_set(-errno, "chdir / in the jail: %m");
	return 0;
}

/* The root becomes a fresh tmpfs on DIR, empty and read-only whatever the
 * host keeps in DIR; pivot_root(".", ".") stacks the old root on it, and
 * the lazy unmount detaches the old root with every host mount under it, so
 * no path (and no ".." walk) leads out any more. */
static int pivot_into(const char *dir)
{
	if (mount("vireo-jail", dir, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
		  "mode=0700") < 0)
		return err_set(-errno, "--jail: cannot mount a tmpfs on %s: %m", dir);
	if (chdir(dir) < 0)
		return err_set(-errno, "--jail: chdir %s: %m", dir);
	if (syscall(SYS_pivot_root, ".", ".") < 0) {
		/* E.g. EINVAL when the host's root is the initramfs (rootfs). */
		log_warn("--jail: pivot_root failed (%s): falling back to a chroot into the "
			 "empty tmpfs", strerror(errno));
		return chroot_into(".");
	}
	if (umount2(".", MNT_DETACH) < 0)
		return err_set(-errno, "--jail: cannot detach the host's root: %m");
	if (chdir("/") < 0)
		return err_set(-errno, "chdir / in the jail: %m");
	return 0;
}

/* glibc applies setgid/setuid to every thread of the process. */
static int drop_ids(uid_t uid, gid_t gid)
{
	if (setgroups(0, NULL) < 0 || setresgid(gid, gid, gid) < 0 ||
	    setresuid(uid, uid, uid) < 0)
		return err_set(-errno, "cannot switch to uid %u gid %u: %m", (unsigned int)uid,
			       (unsigned int)gid);
	if (uid != 0 && setuid(0) == 0)
		return err_set(-EPERM, "uid %u could become root again", (unsigned int)uid);
	return 0;
}

int sandbox_enter(const struct sandbox *sb)
{
	int ret = 0;

	if (sb->jail)
		ret = sb->mount_ns ? pivot_into(sb->jail) : chroot_into(sb->jail);
	if (!ret && sb->drop)
		ret = drop_ids(sb->uid, sb->gid);
	if (!ret && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		ret = err_set(-errno, "PR_SET_NO_NEW_PRIVS: %m");
	if (!ret)
		ret = landlock_enter();
	/* Jailed: the network only through passed descriptors. */
	if (!ret)
		ret = sandbox_seccomp(sb->seccomp, !sb->jail);
	return ret;
}

static int parse_id(const char *text, unsigned long *out)
{
	char *end;

	errno = 0;
	*out = strtoul(text, &end, 10);
	return *text && !*end && !errno && *text != '-' && *out < 0xffffffffUL ? 0 : -EINVAL;
}

int sandbox_parse_user(const char *text, struct sandbox *sb)
{
	char name[256];
	const char *colon = strchr(text, ':');
	size_t len = colon ? (size_t)(colon - text) : strlen(text);
	unsigned long uid, gid;
	struct passwd *pw = NULL;

	if (len == 0 || len >= sizeof(name))
		return err_set(-EINVAL, "--user: '%s' is not UID[:GID] or a user name", text);
	memcpy(name, text, len);
	name[len] = '\0';
	if (parse_id(name, &uid)) {
		pw = getpwnam(name);
		if (!pw)
			return err_set(-EINVAL, "--user: no user named '%s'", name);
		uid = pw->pw_uid;
	}
	gid = pw ? pw->pw_gid : uid;
	if (colon && parse_id(colon + 1, &gid))
		return err_set(-EINVAL, "--user: '%s' is not a group id", colon + 1);
	sb->drop = true;
	sb->uid = (uid_t)uid;
	sb->gid = (gid_t)gid;
	return 0;
}

int sandbox_parse_seccomp(const char *text, struct sandbox *sb)
{
	if (!strcmp(text, "on"))
		sb->seccomp = SANDBOX_SECCOMP_ON;
	else if (!strcmp(text, "off"))
		sb->seccomp = SANDBOX_SECCOMP_OFF;
	else if (!strcmp(text, "log"))
		sb->seccomp = SANDBOX_SECCOMP_LOG;
	else
		return err_set(-EINVAL, "--seccomp must be on, off or log");
	return 0;
}
