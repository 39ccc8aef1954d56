/* VMM processes: start one `vireo run --api-socket` per VM in its cgroup,
 * talk to its control socket, stop it, and notice when it dies. The VMM
 * runs in its own session (setsid), so it outlives a daemon restart and is
 * re-adopted from DIR/run/NAME.json (pid + its start time, which guards
 * against pid reuse). */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "vireo/block.h"
#include "vireo/fileopen.h"
#include "vireo/log.h"
#include "vireo/mgr.h"
#include "vireo/vmm.h"

#define STOP_TIMEOUT_MS 5000
#define REPLY_MAX 65536

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Gives the socket's sends, receives (and connect, which waits for room in
 * a full backlog) what is left until `deadline`; false once it passed. */
static bool time_left(int fd, uint64_t deadline)
{
	uint64_t now = mono_ms(), left;
	struct timeval tv;

	if (now >= deadline)
		return false;
	left = deadline - now;
	tv.tv_sec = (time_t)(left / 1000);
	tv.tv_usec = (suseconds_t)(left % 1000) * 1000;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	return true;
}

static int vmm_connect_until(const char *sock, uint64_t deadline)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(sock) >= sizeof(addr.sun_path))
		return err_set(-ENAMETOOLONG, "socket path too long: %s", sock);
	strcpy(addr.sun_path, sock);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return err_set(-errno, "socket: %m");
	time_left(fd, deadline);
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		int ret = err_set(-errno, "cannot connect to the VMM's control socket: %m");

		close(fd);
		return ret;
	}
	return fd;
}

static int vmm_connect(const char *sock)
{
	return vmm_connect_until(sock, mono_ms() + VMM_REQUEST_TIMEOUT_MS);
}

struct json_object *vmm_request(const char *sock, const char *request)
{
	return vmm_request_ms(sock, request, VMM_REQUEST_TIMEOUT_MS);
}

struct json_object *vmm_request_ms(const char *sock, const char *request, int timeout_ms)
{
	return vmm_request_fds(sock, request, timeout_ms, NULL, 0);
}

/* The request line, with fds (if any) passed along with its first byte. */
static int send_request(int fd, const char *request, const int *fds, unsigned int nfds)
{
	char ctrl[CMSG_SPACE(sizeof(int) * 4)] = { 0 };
	struct iovec iov = { .iov_base = (void *)request, .iov_len = strlen(request) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	struct cmsghdr *h;

	if (nfds > 4)
		return -EINVAL;
	if (nfds) {
		msg.msg_control = ctrl;
		msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		h = CMSG_FIRSTHDR(&msg);
		h->cmsg_level = SOL_SOCKET;
		h->cmsg_type = SCM_RIGHTS;
		h->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(h), fds, sizeof(int) * nfds);
	}
	if (sendmsg(fd, &msg, MSG_NOSIGNAL) != (ssize_t)iov.iov_len ||
	    send(fd, "\n", 1, MSG_NOSIGNAL) < 0)
		return -errno ? -errno : -EIO;
	return 0;
}

struct json_object *vmm_request_fds(const char *sock, const char *request, int timeout_ms,
				    const int *fds, unsigned int nfds)
{
	static __thread char reply[REPLY_MAX];
	struct json_object *obj = NULL;
	uint64_t deadline = mono_ms() + (uint64_t)timeout_ms;
	size_t len = 0;
	int fd = vmm_connect_until(sock, deadline);

	if (fd < 0)
		return NULL;
	if (!time_left(fd, deadline) || send_request(fd, request, fds, nfds) < 0) {
		err_set(-errno, "cannot send to the VMM: %m");
		goto out;
	}
	/* One deadline for the whole answer, however it trickles in. */
	while (len < sizeof(reply) - 1 && !memchr(reply, '\n', len)) {
		ssize_t n = time_left(fd, deadline) ? recv(fd, reply + len, sizeof(reply) - 1 - len, 0)
						    : (errno = EAGAIN, -1);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			err_set(-EIO, "no reply from the VMM%s", n < 0 ? " within the deadline" : "");
			goto out;
		}
		len += (size_t)n;
	}
	reply[len] = '\0';
	obj = json_tokener_parse(reply);
	if (!obj)
		err_set(-EIO, "bad reply from the VMM");
out:
	close(fd);
	return obj;
}

/* Field 22 of /proc/PID/stat: start time in clock ticks since boot; 0 if
 * the process is gone or a zombie. */
static unsigned long long proc_starttime(pid_t pid)
{
	char path[64], buf[1024];
	unsigned long long start = 0;
	char *p;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return 0;
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = '\0';
	fclose(f);
	p = strrchr(buf, ')'); /* the command name may contain spaces */
	if (!p || p[1] != ' ' || p[2] == 'Z')
		return 0;
	if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu",
		   &start) != 1)
		return 0;
	return start;
}

bool vmm_alive(const struct mgr_vm *vm)
{
	return vm->pid > 0 && proc_starttime(vm->pid) == vm->starttime;
}

/* Its effective uid (the VMM's own user once sandboxed), so that no other
 * VMM is given the same one. */
static unsigned int proc_uid(pid_t pid)
{
	char path[64], line[256];
	unsigned int real, eff = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "re");
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "Uid: %u %u", &real, &eff) == 2)
			break;
	if (f)
		fclose(f);
	return eff;
}

void vmm_adopt_pid(struct mgr_vm *vm, pid_t pid)
{
	vm->pid = pid;
	vm->starttime = proc_starttime(pid);
	vm->vmm_uid = proc_uid(pid);
	vm->child = false;
}

/* The VMM's own account of its end (`vireo run --status-file`): its
 * status and reason, if the file is this VMM's (its pid). The console log
 * is never read for this: the guest writes into it too. */
static struct json_object *status_parse(struct mgr *m, const struct mgr_vm *vm, pid_t pid)
{
	struct json_object *o = NULL, *v;
	char path[PATH_MAX], buf[2048];
	struct stat st;
	ssize_t n = -1;
	int fd;

	if (store_path(m, path, sizeof(path), "run", vm->def.name, ".status"))
		return NULL;
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	if (!fstat(fd, &st) && S_ISREG(st.st_mode))
		n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n > 0) {
		buf[n] = '\0';
		o = json_tokener_parse(buf);
	}
	if (o && json_object_object_get_ex(o, "pid", &v) && json_object_get_int(v) == pid)
		return o;
	json_object_put(o);
	return NULL;
}

struct json_object *vmm_status_migration(struct mgr *m, const struct mgr_vm *vm, pid_t pid)
{
	struct json_object *o = status_parse(m, vm, pid), *mig = NULL;

	if (o && json_object_object_get_ex(o, "migration", &mig))
		json_object_get(mig);
	json_object_put(o);
	return mig;
}

static bool vmm_status_read(struct mgr *m, const struct mgr_vm *vm, int *status, char *reason,
			    size_t size)
{
	struct json_object *o = status_parse(m, vm, vm->pid), *v;
	bool ok = false;

	if (o && json_object_object_get_ex(o, "status", &v)) {
		*status = json_object_get_int(v);
		if (json_object_object_get_ex(o, "reason", &v))
			snprintf(reason, size, "%s", json_object_get_string(v));
		ok = true;
	}
	json_object_put(o);
	return ok;
}

/* What an exit status means (docs/run.md), as a state and a reason. A
 * guest reboot ends the VMM (a fresh process is the complete reset) and
 * the supervisor starts a new one: restart_pending. */
void vmm_exited(struct mgr *m, struct mgr_vm *vm, int status, bool known)
{
	char tail[160] = "";
	int reported;

	/* An adopted VMM is not our child: its status file is all we know. */
	if (vmm_status_read(m, vm, &reported, tail, sizeof(tail)) && !known) {
		status = W_EXITCODE(reported & 0xff, 0);
		known = true;
	}
	if (!tail[0])
		snprintf(tail, sizeof(tail), "no reason reported (see the VMM's log)");
	vm->state = MGR_CRASHED;
	if (known && WIFEXITED(status) && WEXITSTATUS(status) == VM_EXIT_REBOOT && !vm->stopping) {
		vm->state = MGR_STOPPED;
		vm->restart_pending = true;
		snprintf(vm->reason, sizeof(vm->reason), "guest rebooted");
	} else if (!known) {
		snprintf(vm->reason, sizeof(vm->reason),
			 "the VMM (pid %d) died; exit status unknown (adopted after a daemon restart)",
			 (int)vm->pid);
		if (vm->stopping)
			vm->state = MGR_STOPPED;
	} else if (WIFSIGNALED(status)) {
		snprintf(vm->reason, sizeof(vm->reason), "the VMM was killed by signal %d (%s)%s",
			 WTERMSIG(status), strsignal(WTERMSIG(status)), WTERMSIG(status) == SIGSYS ?
			 ": a system call outside its seccomp filter" : "");
		if (vm->stopping)
			vm->state = MGR_STOPPED;
	} else if (WEXITSTATUS(status) == 0) {
		vm->state = MGR_STOPPED;
		/* The source's VMM after a migration's handover (migrate.c). */
		snprintf(vm->reason, sizeof(vm->reason), "%s",
			 !strcmp(tail, "migrated") ? "migrated" : "powered off");
	} else if (WEXITSTATUS(status) == 1) {
		snprintf(vm->reason, sizeof(vm->reason), "VMM error: %s", tail);
	} else if (WEXITSTATUS(status) == 2) {
		snprintf(vm->reason, sizeof(vm->reason), "guest crashed: %s", tail);
	} else {
		vm->state = MGR_STOPPED;
		snprintf(vm->reason, sizeof(vm->reason), "guest exited with status %d",
			 WEXITSTATUS(status));
	}
	log_info("VM %s: %s: %s", vm->def.name, mgr_state_name(vm->state), vm->reason);
	vm->pid = 0;
	vm->starttime = 0;
	vm->stopping = false;
	vmm_release(m, vm);
	store_save_run(m, vm);
}

void vmm_release(struct mgr *m, struct mgr_vm *vm)
{
	cgroup_vm_remove(&m->cg, vm->def.name);
	storage_revoke(m, vm->def.name);
	mgr_net_detach(m, &vm->def);	/* its taps: no port stays behind */
}

/* Has the VMM ended? Reaps it if it is our child. */
bool vmm_reap(struct mgr *m, struct mgr_vm *vm)
{
	int status;
	pid_t r;

	if (vm->pid <= 0)
		return true;
	r = vm->child ? waitpid(vm->pid, &status, WNOHANG) : -1;
	if (r == vm->pid) {
		vmm_exited(m, vm, status, true);
		return true;
	}
	if ((r < 0 || !vm->child) && !vmm_alive(vm)) {
		vmm_exited(m, vm, 0, false);
		return true;
	}
	return false;
}

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *s = NULL;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		s = NULL;
	va_end(ap);
	return s;
}

/* argv of `vireo run` for a definition; NULL-terminated, heap strings. */
static char **vmm_argv(struct mgr *m, const struct vm_def *d, const char *sock,
		       unsigned int uid, const char *restore, bool paused, const char *vm_incoming,
		       const char *token, bool copy)
{
	char **argv = calloc(16 + MGR_MAX_DISKS + 2 * MGR_MAX_NICS + m->nstorage, sizeof(char *));
	char file[PATH_MAX];
	unsigned int n = 0;

	if (!argv)
		return NULL;
	argv[n++] = strdup(m->exe);
	argv[n++] = strdup("run");
	/* The VMM enforces the storage directories too, and opens the disks
	 * as its own uid (the daemon has granted it access: storage.c). */
	for (unsigned int i = 0; i < m->nstorage; i++)
		argv[n++] = xasprintf("--storage=%s", m->storage[i]);
	/* A snapshot's or a stream's machine names the taps of where it was
	 * made: this daemon's are named here (its instance id is in them). */
	if (restore || vm_incoming)
		for (unsigned int i = 0; i < d->nnics; i++) {
			char tap[16];

			mgr_nic_tap(d, i, tap);
			argv[n++] = xasprintf("--host-tap=%s", tap);
		}
	/* A restore takes the machine from the snapshot (run --restore). */
	if (restore) {
		argv[n++] = xasprintf("--restore=%s", restore);
		/* An increment over the snapshot rolled back to stays possible
		 * (as after the daemon's snapshots: snapshot.c). */
		argv[n++] = strdup("--track-dirty");
		if (paused)
			argv[n++] = strdup("--paused");
		goto host;
	}
	/* An incoming VM takes the machine from the stream (run --incoming). */
	if (vm_incoming) {
		argv[n++] = xasprintf("--incoming=%s", vm_incoming);
		argv[n++] = xasprintf("--incoming-token-file=%s", token);
		/* Copied storage: the definition's disks are this host's own. */
		for (unsigned int i = 0; copy && i < d->ndisks; i++)
			argv[n++] = xasprintf("--incoming-disk=path=%s%s%s", d->disks[i].path,
					      d->disks[i].format ? ",format=" : "",
					      d->disks[i].format ? d->disks[i].format : "");
		goto host;
	}
	if (d->kernel)
		argv[n++] = xasprintf("--kernel=%s", d->kernel);
	if (d->firmware)
		argv[n++] = xasprintf("--firmware=%s", d->firmware);
	if (d->initrd)
		argv[n++] = xasprintf("--initrd=%s", d->initrd);
	argv[n++] = xasprintf("--cpus=%u", d->cpus);
	argv[n++] = xasprintf("--memory=%lluK", (unsigned long long)(d->memory >> 10));
	if (d->cmdline)
		argv[n++] = xasprintf("--cmdline=%s", d->cmdline);
	for (unsigned int i = 0; i < d->ndisks; i++) {
		const struct mgr_disk *k = &d->disks[i];

		char queues[24] = "";

		if (k->queues)
			snprintf(queues, sizeof(queues), ",queues=%u", k->queues);
		argv[n++] = xasprintf("--disk=path=%s%s%s%s,bps=%llu,iops=%llu,cache=%s,aio=%s%s",
				      k->path,
				      k->format ? ",format=" : "", k->format ? k->format : "",
				      k->readonly ? ",readonly" : "", (unsigned long long)k->bps,
				      (unsigned long long)k->iops, block_cache_name(k->cache),
				      block_aio_name(k->aio), queues);
	}
	for (unsigned int i = 0; i < d->nnics; i++) {
		const struct mgr_nic *k = &d->nics[i];
		char mtu[16] = "", tap[16], mac[18];

		mgr_nic_tap(d, i, tap);
		mgr_nic_mac(d, i, mac);	/* the anti-spoofing rules expect it */
		if (k->mtu)
			snprintf(mtu, sizeof(mtu), ",mtu=%u", k->mtu);
		argv[n++] = xasprintf("--net=rx_bps=%llu,tx_bps=%llu%s%s%s%s%s",
				      (unsigned long long)k->rx_bps, (unsigned long long)k->tx_bps,
				      *tap ? ",tap=" : "", tap,
				      *mac ? ",mac=" : "", mac, mtu);
	}
	if (d->balloon)
		argv[n++] = xasprintf("--balloon=target=%llu", (unsigned long long)d->balloon_target);
host:
	argv[n++] = xasprintf("--api-socket=%s", sock);
	if (!store_path(m, file, sizeof(file), "run", d->name, ".status"))
		argv[n++] = xasprintf("--status-file=%s", file);
	/* A state dir too deep for a socket path: no console, the log still has it. */
	if (!store_path(m, file, sizeof(file), "run", d->name, ".console") &&
	    strlen(file) < sizeof(((struct sockaddr_un *)0)->sun_path))
		argv[n++] = xasprintf("--console-socket=%s", file);
	if (!cgroup_vm_vcpu_file(&m->cg, d->name, file, sizeof(file)))
		argv[n++] = xasprintf("--vcpu-cgroup=%s", file);
	if (uid) {
		argv[n++] = xasprintf("--user=%u:%u", uid, uid);
		if (!store_path(m, file, sizeof(file), "jail", NULL, NULL))
			argv[n++] = xasprintf("--jail=%s", file);
	}
	return argv;
}

static void argv_free(char **argv)
{
	for (char **p = argv; p && *p; p++)
		free(*p);
	free(argv);
}

/* Closes every descriptor from 3 up but keep[0..n) (ascending). */
static void close_others(const int *keep, int n)
{
	unsigned int from = 3;

	for (int i = 0; i <= n; i++) {
		unsigned int to = i < n ? (unsigned int)keep[i] : ~0u;

		if (i < n && to < from)
			continue;
		if (to > from && close_range(from, to - 1, 0) < 0)
			for (unsigned int fd = from; fd < to && fd < 65536; fd++)
				close((int)fd);
		from = to + 1;
	}
}

/* The child: waits until the parent has put it in its cgroup and saved the
 * run record, then execs. Only async-signal-safe calls here (the daemon has
 * threads). If the daemon dies first, the child must die too and hold
 * nothing: it drops every descriptor it does not need (the API socket,
 * daemon.lock, clients' connections, the gate's write end, other VMs'
 * locks) before anything else, gets SIGKILL with its parent until exec, and
 * reads EOF from the gate. `fds`: gate, log, lock, and an incoming VM's
 * migration socket (-1: none), which the VMM inherits. */
static void vmm_child(char **argv, int fds[4], pid_t parent)
{
	int keep[4] = { fds[0], fds[1], fds[2], fds[3] }, n = fds[3] >= 0 ? 4 : 3, null, t;
	sigset_t none;
	char c;

	for (int i = 0; i < n - 1; i++)	/* sort three or four */
		for (int j = 0; j < n - 1 - i; j++)
			if (keep[j] > keep[j + 1]) {
				t = keep[j];
				keep[j] = keep[j + 1];
				keep[j + 1] = t;
			}
	close_others(keep, n);
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
		_exit(127);
	/* The daemon blocks SIGTERM/SIGINT (for its signalfd) and ignores
	 * SIGPIPE; both would survive exec. */
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	signal(SIGPIPE, SIG_DFL);
	setsid();
	if (read(fds[0], &c, 1) != 1)
		_exit(127);
	/* Recorded now: the VMM outlives the daemon, holding the VM's lock. */
	prctl(PR_SET_PDEATHSIG, 0);
	null = open("/dev/null", O_RDONLY | O_CLOEXEC);
	dup2(null, 0);
	dup2(fds[1], 1);
	dup2(fds[1], 2);
	fcntl(fds[2], F_SETFD, 0);
	if (fds[3] >= 0)
		fcntl(fds[3], F_SETFD, 0);
	execv(argv[0], argv);
	_exit(127);
}

/* Tests only (VIREO_TEST_START_PAUSE=forked|released): the daemon stops at
 * that point of a start, to be killed there. */
static void test_pause(const char *point)
{
	const char *want = getenv("VIREO_TEST_START_PAUSE");

	if (!want || strcmp(want, point))
		return;
	fprintf(stderr, "vireo: test: start paused (%s)\n", point);
	for (;;)
		pause();
}

/* The run record, saved before the VMM is let go: a daemon that dies
 * after this finds the VMM (pid, start time) and re-adopts it. If it
 * cannot be saved nothing changes: the caller kills the child. */
static int record_start(struct mgr *m, struct mgr_vm *vm)
{
	enum mgr_state state = vm->state;
	char reason[sizeof(vm->reason)];
	int ret;

	memcpy(reason, vm->reason, sizeof(reason));
	vm->state = vm->incoming_uri ? MGR_INCOMING : MGR_RUNNING;
	snprintf(vm->reason, sizeof(vm->reason), "starting");
	ret = store_save_run(m, vm);
	if (ret) {
		vm->state = state;
		memcpy(vm->reason, reason, sizeof(reason));
	}
	return ret;
}

static int vmm_spawn(struct mgr *m, struct mgr_vm *vm, char **argv, int logfd, int lockfd,
		     bool *untouched)
{
	pid_t pid, self = getpid();
	int gate[2], ret;

	if (pipe2(gate, O_CLOEXEC) < 0)
		return err_set(-errno, "pipe: %m");
	pid = fork();
	if (pid < 0) {
		ret = err_set(-errno, "fork: %m");
		close(gate[0]);
		close(gate[1]);
		return ret;
	}
	if (pid == 0)
		vmm_child(argv, (int[4]){ gate[0], logfd, lockfd,
				       vm->incoming_uri ? vm->incoming_fd : -1 }, self);
	close(gate[0]);
	test_pause("forked");
	ret = cgroup_vm_attach(&m->cg, vm->def.name, pid);
	if (!ret) {
		vm->pid = pid;
		vm->child = true;
		vm->starttime = proc_starttime(pid);
		ret = record_start(m, vm);
		*untouched = ret != 0;
	}
	if (ret) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		vm->pid = 0;
		vm->starttime = 0;
		close(gate[1]);
		return ret;
	}
	if (write(gate[1], "g", 1) != 1)
		log_warn("VM %s: cannot release the VMM: %s", vm->def.name, strerror(errno));
	close(gate[1]);
	test_pause("released");
	return 0;
}

/* Whether an info reply shows every vCPU thread running (its tid known). */
static bool vcpus_started(struct json_object *info)
{
	struct json_object *vcpus, *tid;

	if (!info || !json_object_object_get_ex(info, "vcpus", &vcpus))
		return false;
	for (size_t i = 0; i < json_object_array_length(vcpus); i++)
		if (!json_object_object_get_ex(json_object_array_get_idx(vcpus, i), "tid", &tid) ||
		    json_object_get_int(tid) <= 0)
			return false;
	return true;
}

/* Waits until the control socket answers and every vCPU thread runs (so
 * that "running" means it, and pins find their threads), or the VMM dies. */
static int vmm_wait_ready(struct mgr *m, struct mgr_vm *vm, const char *sock)
{
	/* A clock, not a count: each try may take up to a request's deadline. */
	for (uint64_t end = mono_ms() + MGR_START_TIMEOUT_MS; mono_ms() < end; ) {
		struct json_object *r;
		int fd;
		bool ready = false;

		/* The table is free meanwhile; the VM's own lock is held. */
		pthread_mutex_unlock(&m->lock);
		fd = vmm_connect(sock);
		if (fd >= 0) {
			close(fd);
			r = vmm_request(sock, "{\"action\":\"info\"}");
			ready = vcpus_started(r);
			json_object_put(r);
		}
		if (!ready)
			usleep(5000);
		pthread_mutex_lock(&m->lock);
		if (ready)
			return 0;
		if (vmm_reap(m, vm))
			return err_set(-EIO, "the VMM did not start: %s", vm->reason);
	}
	return err_set(-ETIMEDOUT, "the VMM did not answer within %d ms", MGR_START_TIMEOUT_MS);
}

static int vmm_prepare_cgroup(struct mgr *m, const struct vm_def *d)
{
	int ret = cgroup_vm_create(&m->cg, d->name);

	if (!ret)
		ret = cgroup_vm_set_cpu(&m->cg, d->name, d->cpu_weight, d->cpu_max);
	if (!ret)
		ret = cgroup_vm_set_memory(&m->cg, d->name, d->memory + MGR_MEM_OVERHEAD);
	return ret;
}

int vmm_apply_pins(const char *sock, const struct vm_def *d)
{
	for (unsigned int i = 0; i < d->cpus && d->npin; i++) {
		const char *cpus = d->cpu_pin[d->npin == 1 ? 0 : i];
		char req[320];
		struct json_object *r, *ok;
		int ret = 0;

		snprintf(req, sizeof(req), "{\"action\":\"pin\",\"vcpu\":%u,\"cpus\":\"%s\"}", i, cpus);
		r = vmm_request(sock, req);
		if (!r)
			return -EIO;
		if (!json_object_object_get_ex(r, "ok", &ok) || !json_object_get_boolean(ok)) {
			struct json_object *e = NULL;

			json_object_object_get_ex(r, "error", &e);
			ret = err_set(-EINVAL, "pinning vCPU %u: %s", i, e ? json_object_get_string(e) : "?");
		}
		json_object_put(r);
		if (ret)
			return ret;
	}
	return 0;
}

/* One uid per running VMM (Firecracker's advice: VMMs cannot signal or
 * ptrace each other, nor touch each other's /proc files), the lowest free
 * one from the base; 0 when the daemon cannot drop privileges (not root)
 * or was told not to. */
static unsigned int vmm_pick_uid(struct mgr *m, const struct mgr_vm *vm)
{
	if (!m->vmm_uid_base || geteuid() != 0)
		return 0;
	for (unsigned int uid = m->vmm_uid_base; ; uid++) {
		const struct mgr_vm *o = m->vms;

		while (o && (o == vm || (!mgr_vm_active(o) && !o->starting) || o->vmm_uid != uid))
			o = o->next;
		if (!o)
			return uid;
	}
}

/* The VM's lock, waiting a little for an adopted VMM whose main thread has
 * exited (a zombie to us) while its other threads still hold it. */
static int vmm_lock(struct mgr *m, struct mgr_vm *vm, int *fd)
{
	int ret = store_lock_vm(m, vm->def.name, fd);

	for (int i = 0; ret == -EBUSY && i < 20; i++) {
		pthread_mutex_unlock(&m->lock);
		usleep(10000);
		pthread_mutex_lock(&m->lock);
		ret = store_lock_vm(m, vm->def.name, fd);
	}
	return ret;
}

int vmm_start(struct mgr *m, struct mgr_vm *vm, const char *sock, bool *untouched)
{
	char log[PATH_MAX];
	char **argv;
	int logfd, lockfd, ret;

	*untouched = false;
	ret = store_path(m, log, sizeof(log), "logs", vm->def.name, ".log");
	if (ret)
		return ret;
	ret = vmm_lock(m, vm, &lockfd);
	if (ret) {
		*untouched = true;
		return ret;
	}
	ret = vmm_prepare_cgroup(m, &vm->def);
	if (ret) {
		close(lockfd);
		return ret;
	}
	/* O_APPEND: the log can be truncated under the VMM (rotation). */
	logfd = file_open_checked(log, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600, "log",
				  FILE_REG);
	if (logfd < 0) {
		close(lockfd);
		return err_set(logfd, "cannot create the VM's %s", err_get());
	}
	vm->vmm_uid = vmm_pick_uid(m, vm);
	if (vm->vmm_uid && (ret = storage_grant(m, &vm->def, vm->vmm_uid))) {
		close(logfd);
		close(lockfd);
		return ret;
	}
	ret = mgr_net_attach(m, &vm->def, vm->vmm_uid);
	if (ret) {
		close(logfd);
		close(lockfd);
		return ret;
	}
	argv = vmm_argv(m, &vm->def, sock, vm->vmm_uid, vm->restore_dir,
			vm->restore_paused, vm->incoming_uri, vm->incoming_token, vm->incoming_copy);
	ret = argv ? vmm_spawn(m, vm, argv, logfd, lockfd, untouched) :
		     err_set(-ENOMEM, "out of memory");
	argv_free(argv);
	close(logfd);
	close(lockfd);	/* the VMM holds it now (or nobody does) */
	if (ret && vm->pid <= 0)
		mgr_net_detach(m, &vm->def);	/* else when the VMM is reaped */
	/* An incoming VMM answers only once the stream is in (migrate.c). */
	if (!ret && vm->incoming_uri)
		return 0;
	if (!ret)
		ret = vmm_wait_ready(m, vm, sock);
	if (!ret) {
		/* Pins change only under the VM's lock, which is held. */
		pthread_mutex_unlock(&m->lock);
		ret = vmm_apply_pins(sock, &vm->def);
		pthread_mutex_lock(&m->lock);
	}
	return ret;
}

/* Waits for the VMM to end after a poweroff or a signal. */
int vmm_wait_exit(struct mgr *m, struct mgr_vm *vm, int timeout_ms)
{
	for (int waited = 0; waited <= timeout_ms; waited += 10) {
		if (vmm_reap(m, vm))
			return 0;
		pthread_mutex_unlock(&m->lock);
		usleep(10000);
		pthread_mutex_lock(&m->lock);
	}
	return err_set(-ETIMEDOUT, "the VMM did not exit within %d ms", timeout_ms);
}

int vmm_kill(struct mgr *m, struct mgr_vm *vm)
{
	vm->stopping = true;
	if (vmm_alive(vm))
		kill(vm->pid, SIGKILL);
	return vmm_wait_exit(m, vm, STOP_TIMEOUT_MS);
}
