/* The VM table: definitions loaded from the state dir, VMMs re-adopted on
 * start-up, and the lifecycle operations behind the API. Every function
 * here runs under m->lock; the operations also under the VM's operation
 * lock, and they drop m->lock while they wait for a VMM (locking rules in
 * include/vireo/mgr.h). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "vireo/control.h"
#include "vireo/fileopen.h"
#include "vireo/log.h"
#include "vireo/mgr.h"

const char *mgr_state_name(enum mgr_state s)
{
	switch (s) {
	case MGR_STOPPED: return "stopped";
	case MGR_RUNNING: return "running";
	case MGR_PAUSED: return "paused";
	case MGR_CRASHED: return "crashed";
	case MGR_STOPPING: return "stopping";
	case MGR_INCOMING: return "incoming";
	case MGR_NSTATES: break;
	}
	return "unknown";
}

static int state_from_name(const char *s)
{
	for (int i = MGR_STOPPED; i < MGR_NSTATES; i++)
		if (!strcmp(s, mgr_state_name((enum mgr_state)i)))
			return i;
	return -1;
}

struct mgr_vm *mgr_find(struct mgr *m, const char *name)
{
	for (struct mgr_vm *vm = m->vms; vm; vm = vm->next)
		if (!strcmp(vm->def.name, name))
			return vm;
	return NULL;
}

static struct mgr_vm *vm_new(void)
{
	struct mgr_vm *vm = calloc(1, sizeof(*vm));

	if (vm) {
		pthread_mutex_init(&vm->lock, NULL);
		vm->refs = 1;	/* the list's */
	}
	return vm;
}

static void vm_free(struct mgr_vm *vm)
{
	vm_def_free(&vm->def);
	json_object_put(vm->info);
	pthread_mutex_destroy(&vm->lock);
	free(vm);
}

void mgr_ref(struct mgr_vm *vm)
{
	vm->refs++;
}

void mgr_unref(struct mgr *m, struct mgr_vm *vm)
{
	(void)m;
	if (--vm->refs == 0)
		vm_free(vm);
}

struct mgr_vm *mgr_acquire(struct mgr *m, const char *name)
{
	struct mgr_vm *vm = mgr_find(m, name);

	if (!vm)
		return NULL;
	mgr_ref(vm);
	/* Lock order: the VM's lock, then the table's. */
	if (pthread_mutex_trylock(&vm->lock)) {
		pthread_mutex_unlock(&m->lock);
		pthread_mutex_lock(&vm->lock);
		pthread_mutex_lock(&m->lock);
	}
	if (vm->deleted) {
		mgr_release(m, vm);
		return NULL;
	}
	return vm;
}

void mgr_release(struct mgr *m, struct mgr_vm *vm)
{
	pthread_mutex_unlock(&vm->lock);
	mgr_unref(m, vm);
}

bool mgr_vm_active(const struct mgr_vm *vm)
{
	return vm->state == MGR_RUNNING || vm->state == MGR_PAUSED || vm->state == MGR_STOPPING ||
	       vm->state == MGR_INCOMING;
}

static int sock_path(struct mgr *m, const char *name, char *buf, size_t size)
{
	return store_path(m, buf, size, "run", name, ".sock");
}

/* ---- opening the state dir ---- */

static int make_dirs(struct mgr *m)
{
	/* jail: the VMMs' empty chroot (root's, 0700: they cannot even list it) */
	static const char *const subs[] = { "", "/vms", "/run", "/logs", "/jail", "/images",
						   "/networks" };
	char path[PATH_MAX + 8];

	for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
		snprintf(path, sizeof(path), "%s%s", m->state_dir, subs[i]);
		if (mkdir(path, 0700) < 0 && errno != EEXIST)
			return err_set(-errno, "cannot create %s: %m", path);
	}
	return 0;
}

/* DIR/instance: a random id that names this state dir's cgroups. */
static int instance_id(struct mgr *m, char *id, size_t size)
{
	char path[PATH_MAX];
	unsigned char rnd[6];
	int fd, n;

	store_path(m, path, sizeof(path), "instance", NULL, NULL);
	fd = file_open_checked(path, O_RDONLY, 0, NULL, FILE_REG);
	if (fd >= 0) {
		n = (int)read(fd, id, size - 1);
		close(fd);
		id[n > 0 ? n : 0] = '\0';
		/* it names cgroup directories: 12 hex digits or a new one */
		if (n == 12 && strspn(id, "0123456789abcdef") == 12)
			return 0;
		log_warn("%s: not an instance id: a new one is made", path);
	}
	if (getrandom(rnd, sizeof(rnd), 0) != sizeof(rnd))
		return err_set(-EIO, "getrandom failed");
	snprintf(id, size, "%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5]);
	return store_write_file(path, id, 12);
}

/* Whether process pid is `vireo run` serving `sock`: a run record is never
 * enough to make the daemon signal a process (pid and start time could be
 * stale or forged). */
static bool is_our_vmm(pid_t pid, const char *sock)
{
	char path[64], want[PATH_MAX + 16], buf[8192];
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
	snprintf(want, sizeof(want), "--api-socket=%s", sock);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return false;
	buf[n] = '\0';
	for (ssize_t i = 0; i < n; i += (ssize_t)strlen(buf + i) + 1)
		if (!strcmp(buf + i, want))
			return true;
	return false;
}

/* The VMM serving the VM's socket, found in /proc; 0 if none. */
static pid_t find_vmm(const char *sock)
{
	struct dirent *e;
	pid_t pid = 0;
	DIR *d = opendir("/proc");

	while (d && !pid && (e = readdir(d)))
		if (e->d_name[0] >= '1' && e->d_name[0] <= '9' && is_our_vmm(atoi(e->d_name), sock))
			pid = atoi(e->d_name);
	if (d)
		closedir(d);
	return pid;
}

/* A VMM holds the VM's lock although the run record names none alive (it
 * is damaged, stale, or was never saved): find it by its socket. */
static bool find_locked(struct mgr *m, struct mgr_vm *vm, const char *sock)
{
	pid_t pid;

	if (!store_vm_locked(m, vm->def.name))
		return false;
	pid = find_vmm(sock);
	if (pid <= 0) {
		vm->pid = 0;
		vm->state = MGR_CRASHED;
		snprintf(vm->reason, sizeof(vm->reason), "a VMM of this VM still holds its lock "
			 "(run/%s.lock) but was not found; it is not started again until that "
			 "VMM ends", vm->def.name);
		log_warn("VM %s: %s", vm->def.name, vm->reason);
		/* Most often a VMM killed just before this daemon started, still
		 * exiting: a crashed VM keeps no tap, rule or grant behind. */
		vmm_release(m, vm);
		return true;
	}
	vmm_adopt_pid(vm, pid);
	if (!mgr_vm_active(vm))
		vm->state = MGR_RUNNING;
	log_warn("VM %s: found its VMM (pid %d) by its lock, not by its run record",
		 vm->def.name, (int)pid);
	return true;
}

/* Re-adopts a VMM recorded as running or holding the VM's lock, or records
 * that it died. `run` may be NULL (no or a damaged record). */
static void adopt(struct mgr *m, struct mgr_vm *vm, struct json_object *run)
{
	struct json_object *v, *r;
	char sock[PATH_MAX];

	if (json_object_object_get_ex(run, "pid", &v))
		vm->pid = json_object_get_int(v);
	if (json_object_object_get_ex(run, "starttime", &v))
		vm->starttime = (unsigned long long)json_object_get_int64(v);
	if (json_object_object_get_ex(run, "vmm_uid", &v))
		vm->vmm_uid = (unsigned int)json_object_get_int64(v);
	vm->child = false;
	sock_path(m, vm->def.name, sock, sizeof(sock));
	if (!vmm_alive(vm) || !is_our_vmm(vm->pid, sock)) {
		if (find_locked(m, vm, sock)) {
			if (vm->pid <= 0)
				return;
		} else {
			if (mgr_vm_active(vm))
				vmm_exited(m, vm, 0, false);
			return;
		}
	}
	/* Under the VM's lock, or at start-up (mgr_open holds m->lock too). */
	pthread_mutex_unlock(&m->lock);
	r = vmm_request(sock, "{\"action\":\"info\"}");
	pthread_mutex_lock(&m->lock);
	if (vm->state == MGR_STOPPING) {
		/* A graceful stop in progress: its deadline still holds. */
		vm->stopping = true;
		if (json_object_object_get_ex(run, "stop_deadline_ms", &v))
			vm->stop_deadline_ms = json_object_get_uint64(v);
		if (json_object_object_get_ex(run, "stop_timeout_s", &v))
			vm->stop_timeout_s = (unsigned int)json_object_get_int(v);
	} else if (r && json_object_object_get_ex(r, "state", &v) &&
		   !strcmp(json_object_get_string(v), "paused")) {
		vm->state = MGR_PAUSED;
	} else if (r) {
		vm->state = MGR_RUNNING;
	}
	else
		snprintf(vm->reason, sizeof(vm->reason), "re-adopted, but its control socket "
			 "does not answer: %s", err_get());
	json_object_put(r);
	log_info("VM %s: re-adopted VMM pid %d (%s)", vm->def.name, (int)vm->pid,
		 mgr_state_name(vm->state));
	store_save_run(m, vm);
}

static void load_run(struct mgr *m, struct mgr_vm *vm)
{
	char path[PATH_MAX];
	struct json_object *run = NULL, *v;
	int s;

	if (store_path(m, path, sizeof(path), "run", vm->def.name, ".json"))
		return;
	if (!access(path, F_OK) && !(run = store_read_json(path))) {
		log_warn("VM %s: %s", vm->def.name, err_get());
		snprintf(vm->reason, sizeof(vm->reason), "run record damaged");
	}
	if (json_object_object_get_ex(run, "reason", &v))
		snprintf(vm->reason, sizeof(vm->reason), "%s", json_object_get_string(v));
	s = json_object_object_get_ex(run, "state", &v) ? state_from_name(json_object_get_string(v)) : -1;
	if (s >= 0)
		vm->state = (enum mgr_state)s;
	if (mgr_vm_active(vm) || store_vm_locked(m, vm->def.name))
		adopt(m, vm, run);
	/* An incoming VMM that does not run the guest yet: nobody waits for
	 * its stream any more (migrate.c), so it goes; the source keeps the VM. */
	if (vm->state == MGR_INCOMING) {
		if (vm->pid > 0 && vmm_kill(m, vm))
			log_warn("VM %s: %s", vm->def.name, err_get());
		vm->state = MGR_STOPPED;
		snprintf(vm->reason, sizeof(vm->reason),
			 "incoming migration interrupted by a daemon restart");
		store_save_run(m, vm);
	}
	json_object_put(run);
}

static void load_one(struct mgr *m, const char *file)
{
	char path[PATH_MAX + 300];
	struct json_object *obj;
	struct mgr_vm *vm;
	size_t n = strlen(file);

	if (n < 6 || strcmp(file + n - 5, ".json"))
		return;
	snprintf(path, sizeof(path), "%s/vms/%s", m->state_dir, file);
	obj = store_read_json(path);
	vm = vm_new();
	if (!obj || !vm || vm_def_from_json(obj, &vm->def)) {
		log_error("skipping %s: %s", path, err_get());
		if (vm)
			vm_free(vm);
		json_object_put(obj);
		return;
	}
	json_object_put(obj);
	if (strlen(vm->def.name) != n - 5 || strncmp(vm->def.name, file, n - 5)) {
		log_error("skipping %s: its name is '%s'", path, vm->def.name);
		vm_free(vm);
		return;
	}
	load_run(m, vm);
	vm->next = m->vms;
	m->vms = vm;
}

static int load_all(struct mgr *m)
{
	char path[PATH_MAX + 8];
	struct dirent *e;
	DIR *d;

	snprintf(path, sizeof(path), "%s/vms", m->state_dir);
	d = opendir(path);
	if (!d)
		return err_set(-errno, "cannot open %s: %m", path);
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			load_one(m, e->d_name);
	closedir(d);
	return 0;
}

/* One daemon per state dir: two would adopt the same VMMs and fight over
 * them. The lock lives as long as the daemon (the fd is never closed). */
static int lock_state_dir(struct mgr *m)
{
	char path[PATH_MAX];
	int fd;

	store_path(m, path, sizeof(path), "daemon.lock", NULL, NULL);
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return err_set(-errno, "cannot open %s: %m", path);
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		close(fd);
		return err_set(-EBUSY, "another daemon uses the state dir %s", m->state_dir);
	}
	return 0;
}

int mgr_open(struct mgr *m, const char *state_dir, const char *cgroup_mode)
{
	char id[16];
	ssize_t n;
	int ret;

	memset(m, 0, sizeof(*m));
	pthread_mutex_init(&m->lock, NULL);
	m->overcommit = 16;
	m->overcommit_warn = 4;
	m->mem_low_pct = 20;
	m->mem_high_pct = 50;
	m->log_max = 16ULL << 20;
	m->vmm_uid_base = MGR_VMM_UID_BASE;
	if (!realpath(state_dir, m->state_dir) && (mkdir(state_dir, 0700) < 0 ||
						   !realpath(state_dir, m->state_dir)))
		return err_set(-errno, "state dir %s: %m", state_dir);
	n = readlink("/proc/self/exe", m->exe, sizeof(m->exe) - 1);
	if (n <= 0)
		return err_set(-errno, "cannot find our own binary: %m");
	m->exe[n] = '\0';
	ret = make_dirs(m);
	if (!ret)
		ret = lock_state_dir(m);
	if (!ret)
		ret = instance_id(m, id, sizeof(id));
	if (ret)
		return ret;
	mgr_net_set_instance(id);
	cgroup_init(&m->cg, id, cgroup_mode);
	if (m->cg.mode == CGROUP_NONE)
		log_warn("no cgroups: VMs run without CPU and memory limits (%s)", m->cg.reason);
	/* Locked as always, so that adopting a VMM can drop the lock. */
	pthread_mutex_lock(&m->lock);
	mgr_net_load(m);	/* before the VMs: adopted ones keep their ports */
	ret = load_all(m);
	for (struct mgr_vm *vm = m->vms; vm; vm = vm->next)
		if (mgr_vm_active(vm))
			mgr_net_reattach(m, &vm->def);
	pthread_mutex_unlock(&m->lock);
	return ret;
}

void mgr_close(struct mgr *m)
{
	/* VMMs keep running: the next daemon re-adopts them. One that is dying
	 * right now (a zombie, or threads still exiting) is waited for, so
	 * that its cgroup goes with it. */
	for (struct mgr_vm *vm = m->vms; vm; vm = vm->next)
		if (mgr_vm_active(vm) && !vmm_reap(m, vm) && !vmm_alive(vm))
			vmm_wait_exit(m, vm, 1000);
	cgroup_cleanup(&m->cg);
	while (m->vms) {
		struct mgr_vm *vm = m->vms;

		m->vms = vm->next;
		vm->deleted = true;
		mgr_unref(m, vm);
	}
	mgr_net_free_all(m);	/* the bridges stay: VMMs outlive the daemon */
}

/* ---- operations ---- */

enum mgr_err mgr_create(struct mgr *m, struct vm_def *def)
{
	struct mgr_vm *vm;

	if (mgr_find(m, def->name)) {
		err_set(-EEXIST, "a VM named '%s' exists", def->name);
		vm_def_free(def);
		return MGR_E_CONFLICT;
	}
	if (storage_check(m, def)) {
		vm_def_free(def);
		return MGR_E_BAD;
	}
	vm = vm_new();
	if (!vm) {
		vm_def_free(def);
		err_set(-ENOMEM, "out of memory");
		return MGR_E_FAILED;
	}
	vm->def = *def;
	memset(def, 0, sizeof(*def));
	if (store_save_def(m, &vm->def)) {
		vm_free(vm);
		return MGR_E_FAILED;
	}
	snprintf(vm->reason, sizeof(vm->reason), "created");
	store_save_run(m, vm);
	vm->next = m->vms;
	m->vms = vm;
	return MGR_OK;
}

enum mgr_err mgr_delete(struct mgr *m, struct mgr_vm *vm)
{
	const char *name = vm->def.name;

	if (mgr_export_busy(vm))
		return MGR_E_CONFLICT;
	if (mgr_vm_active(vm) || store_vm_locked(m, name)) {
		err_set(-EBUSY, "VM '%s' is %s: stop it first", name, mgr_vm_active(vm) ?
			mgr_state_name(vm->state) : "still held by a VMM");
		return MGR_E_CONFLICT;
	}
	for (struct mgr_vm **p = &m->vms; *p; p = &(*p)->next) {
		if (*p != vm)
			continue;
		store_remove(m, name);
		mgr_snap_remove_all(m, name);
		cgroup_vm_remove(&m->cg, name);
		*p = vm->next;
		/* Freed with the last reference (the caller holds one). */
		vm->deleted = true;
		mgr_unref(m, vm);
		return MGR_OK;
	}
	err_set(-ENOENT, "no VM named '%s'", name);
	return MGR_E_NOT_FOUND;
}

/* The host CPUs a vCPU may run on: its pin, else every online CPU. */
static void vcpu_cpus(const struct vm_def *d, unsigned int vcpu, long host, cpu_set_t *set)
{
	const char *pin = d->npin == 0 ? NULL : d->cpu_pin[d->npin == 1 ? 0 : vcpu];

	CPU_ZERO(set);
	if (!pin || control_parse_cpulist(pin, set) || CPU_COUNT(set) == 0)
		for (long c = 0; c < host && c < CPU_SETSIZE; c++)
			CPU_SET(c, set);
}

/* Adds a VM's vCPUs to per-host-CPU commitment: a vCPU that may run on k
 * host CPUs weighs 1/k on each, so pinning piles weight onto few CPUs. */
static void commit_add(const struct vm_def *d, long host, double *load)
{
	for (unsigned int v = 0; v < d->cpus; v++) {
		cpu_set_t set;
		int k;

		vcpu_cpus(d, v, host, &set);
		k = CPU_COUNT(&set);
		for (long c = 0; c < host; c++)
			if (CPU_ISSET(c, &set))
				load[c] += 1.0 / k;
	}
}

/* The most committed host CPU if `vm` starts: vCPUs per CPU. */
double mgr_commitment(struct mgr *m, const struct mgr_vm *vm, long *cpu)
{
	long host = sysconf(_SC_NPROCESSORS_ONLN);
	double load[CPU_SETSIZE] = { 0 }, worst = 0;

	if (host < 1 || host > CPU_SETSIZE)
		host = host < 1 ? 1 : CPU_SETSIZE;
	for (struct mgr_vm *o = m->vms; o; o = o->next)
		if (mgr_vm_active(o) || o->starting || o == vm)
			commit_add(&o->def, host, load);
	*cpu = 0;
	for (long c = 0; c < host; c++)
		if (load[c] > worst + 1e-9) {
			worst = load[c];
			*cpu = c;
		}
	return worst;
}

/* Refuses a start that would put more vCPUs on a host CPU than the
 * overcommit limit allows; past the warning level it starts with a
 * warning. */
static int check_overcommit(struct mgr *m, struct mgr_vm *vm)
{
	long cpu;
	double load = mgr_commitment(m, vm, &cpu);

	vm->warning[0] = '\0';
	if (load > m->overcommit + 1e-9)
		return err_set(-EBUSY, "starting '%s' would put %.2f vCPUs on host CPU %ld, past "
			       "the overcommit limit of %u per CPU", vm->def.name, load, cpu,
			       m->overcommit);
	if (m->overcommit_warn && load > m->overcommit_warn + 1e-9) {
		snprintf(vm->warning, sizeof(vm->warning), "host CPU %ld now carries %.2f vCPUs, "
			 "past the overcommit warning level of %u per CPU", cpu, load,
			 m->overcommit_warn);
		log_warn("VM %s: %s", vm->def.name, vm->warning);
	}
	return 0;
}

/* A file's type, if it can be seen: one that cannot is left to the VMM,
 * whose own error then says why the start failed. */
static int check_type(const char *path, const char *what, unsigned int types)
{
	struct stat st;

	return stat(path, &st) < 0 ? 0 : file_check_path(path, what, types);
}

/* The files a VMM would open, checked before it starts (a start refused,
 * nothing changed): a kernel that is a FIFO would leave the VMM blocked in
 * open() until the start times out. The VMM checks again when it opens
 * them (DESIGN §3.15). */
static int check_files(const struct vm_def *d)
{
	int ret = d->kernel ? check_type(d->kernel, "kernel", FILE_REG) : 0;

	if (!ret && d->firmware)
		ret = check_type(d->firmware, "firmware", FILE_REG);
	if (!ret && d->initrd)
		ret = check_type(d->initrd, "initrd", FILE_REG);
	for (unsigned int i = 0; !ret && i < d->ndisks; i++)
		ret = check_type(d->disks[i].path, "disk", FILE_REG | FILE_BLK);
	return ret;
}

/* Starts the VMM; the VM ends running (with `reason`) or crashed. */
static enum mgr_err launch(struct mgr *m, struct mgr_vm *vm, const char *reason)
{
	char sock[PATH_MAX], why[200];
	bool untouched = false;
	int ret;

	vm->stopping = false;
	vm->restart_pending = false;
	json_object_put(vm->info);	/* the last VMM's */
	vm->info = NULL;
	vm->starting = true;
	ret = sock_path(m, vm->def.name, sock, sizeof(sock));
	if (!ret)
		ret = vmm_start(m, vm, sock, &untouched);
	vm->starting = false;
	if (!ret) {
		/* An incoming VMM runs nothing yet: migrate.c waits for it. */
		vm->state = vm->incoming_uri ? MGR_INCOMING : MGR_RUNNING;
		snprintf(vm->reason, sizeof(vm->reason), "%s", reason);
		store_save_run(m, vm);
		if (!vm->incoming_uri)
			mgr_refresh_info(m, vm, MGR_INFO_TIMEOUT_MS);
		return MGR_OK;
	}
	snprintf(why, sizeof(why), "%s", err_get());
	if (untouched && ret == -EBUSY) {
		/* A VMM the run record did not know: take it back, never a second. */
		adopt(m, vm, NULL);
		err_set(-EBUSY, "%s%s", why, vm->pid > 0 ? "; re-adopted it" : "");
		return MGR_E_CONFLICT;
	}
	if (untouched) {
		err_set(ret, "%s", why);
		return MGR_E_FAILED;
	}
	if (vm->pid > 0)
		vmm_kill(m, vm);
	storage_revoke(m, vm->def.name);
	vm->state = MGR_CRASHED;
	snprintf(vm->reason, sizeof(vm->reason), "start failed: %s", why);
	store_save_run(m, vm);
	err_set(-EIO, "%s", why);
	return MGR_E_FAILED;
}

enum mgr_err mgr_start(struct mgr *m, struct mgr_vm *vm)
{
	if (mgr_vm_active(vm)) {
		err_set(-EBUSY, "VM '%s' is already %s", vm->def.name, mgr_state_name(vm->state));
		return MGR_E_CONFLICT;
	}
	/* Its guest runs on another host now, on the same disks (migrate.c). */
	if (!strncmp(vm->reason, "migrated to ", 12)) {
		err_set(-EBUSY, "VM '%s' was %s: it runs there; migrate it back, or delete it "
			"here", vm->def.name, vm->reason);
		return MGR_E_CONFLICT;
	}
	if (check_overcommit(m, vm))
		return MGR_E_CONFLICT;
	/* The files may have changed since the VM was created. */
	if (storage_check(m, &vm->def) || check_files(&vm->def))
		return MGR_E_BAD;
	return launch(m, vm, "started");
}

enum mgr_err mgr_start_incoming(struct mgr *m, struct mgr_vm *vm, const char *uri, int lfd,
				const char *token_file)
{
	enum mgr_err e;

	if (check_overcommit(m, vm))
		return MGR_E_CONFLICT;
	vm->incoming_uri = uri;
	vm->incoming_token = token_file;
	vm->incoming_fd = lfd;
	e = launch(m, vm, "waiting for a migration");
	vm->incoming_uri = NULL;
	vm->incoming_token = NULL;
	vm->incoming_fd = -1;
	return e;
}

enum mgr_err mgr_start_restore(struct mgr *m, struct mgr_vm *vm, const char *dir, bool paused)
{
	enum mgr_err e;

	if (mgr_vm_active(vm)) {
		err_set(-EBUSY, "VM '%s' is already %s", vm->def.name, mgr_state_name(vm->state));
		return MGR_E_CONFLICT;
	}
	if (check_overcommit(m, vm))
		return MGR_E_CONFLICT;
	vm->restore_dir = dir;
	vm->restore_paused = paused;
	e = launch(m, vm, "restored from a snapshot");
	vm->restore_dir = NULL;
	vm->restore_paused = false;
	if (e == MGR_OK && paused) {
		vm->state = MGR_PAUSED;
		snprintf(vm->reason, sizeof(vm->reason), "restored from a snapshot, paused");
		store_save_run(m, vm);
	}
	return e;
}

/* A control request; the reply's "code" picks the error class. */
static enum mgr_err control(struct mgr *m, struct mgr_vm *vm, const char *req,
			    struct json_object **reply)
{
	return mgr_control(m, vm, req, VMM_REQUEST_TIMEOUT_MS, NULL, 0, reply);
}

enum mgr_err mgr_control(struct mgr *m, struct mgr_vm *vm, const char *req, int timeout_ms,
			 const int *fds, unsigned int nfds, struct json_object **reply)
{
	char sock[PATH_MAX];
	struct json_object *r, *ok, *v;
	enum mgr_err e = MGR_OK;

	sock_path(m, vm->def.name, sock, sizeof(sock));
	/* The VM's operation lock keeps it ours meanwhile. */
	pthread_mutex_unlock(&m->lock);
	r = vmm_request_fds(sock, req, timeout_ms, fds, nfds);
	pthread_mutex_lock(&m->lock);
	if (!r)
		return MGR_E_FAILED;
	if (!json_object_object_get_ex(r, "ok", &ok) || !json_object_get_boolean(ok)) {
		const char *code = json_object_object_get_ex(r, "code", &v) ? json_object_get_string(v) : "";

		e = !strcmp(code, "wrong-state") ? MGR_E_CONFLICT :
		    !strcmp(code, "bad-request") ? MGR_E_BAD :
		    !strcmp(code, "not-found") ? MGR_E_NOT_FOUND : MGR_E_FAILED;
		err_set(-EIO, "%s", json_object_object_get_ex(r, "error", &v) ?
			json_object_get_string(v) : "the VMM refused");
	}
	if (reply && e == MGR_OK)
		*reply = r;
	else
		json_object_put(r);
	return e;
}

static uint64_t wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* A hard stop: the VMM powers the VM off (flushing its disks); if it does
 * not answer or end, it is killed. */
static enum mgr_err stop_now(struct mgr *m, struct mgr_vm *vm)
{
	vm->stopping = true;
	if (control(m, vm, "{\"action\":\"poweroff\"}", NULL) != MGR_OK ||
	    vmm_wait_exit(m, vm, 5000)) {
		log_warn("VM %s: no clean power-off (%s): killing the VMM", vm->def.name, err_get());
		if (vmm_kill(m, vm))
			return MGR_E_FAILED;
	}
	vm->state = MGR_STOPPED;
	snprintf(vm->reason, sizeof(vm->reason), "forced stop by request");
	store_save_run(m, vm);
	return MGR_OK;
}

/* How often a graceful stop presses the power button again. */
#define STOP_PRESS_INTERVAL_MS 2000

enum mgr_err mgr_stop(struct mgr *m, struct mgr_vm *vm, bool force, unsigned int timeout_s)
{
	enum mgr_err e;

	if (!mgr_vm_active(vm)) {
		err_set(-EBUSY, "VM '%s' is %s", vm->def.name, mgr_state_name(vm->state));
		return MGR_E_CONFLICT;
	}
	if (force)
		return stop_now(m, vm);
	if (vm->state != MGR_RUNNING) {
		err_set(-EBUSY, "VM '%s' is %s: %s", vm->def.name, mgr_state_name(vm->state),
			vm->state == MGR_PAUSED ? "a paused guest cannot answer the power button; "
			"resume it first, or stop with force" : "stop with force to end it now");
		return MGR_E_CONFLICT;
	}
	e = control(m, vm, "{\"action\":\"powerdown\"}", NULL);
	if (e != MGR_OK)
		return e;
	vm->stopping = true;
	vm->state = MGR_STOPPING;
	vm->stop_timeout_s = timeout_s;
	vm->stop_deadline_ms = wall_ms() + (uint64_t)timeout_s * 1000;
	vm->next_press_ms = wall_ms() + STOP_PRESS_INTERVAL_MS;
	snprintf(vm->reason, sizeof(vm->reason), "power button pressed; the VMM is killed if "
		 "the guest has not powered off in %u s", timeout_s);
	store_save_run(m, vm);
	return MGR_OK;
}

/* A graceful stop in progress: the button is pressed again now and then,
 * because a press is an edge that a guest still booting (its interrupt not
 * yet armed) never sees, as on hardware and QEMU; then, past the deadline,
 * the VMM is killed. A guest already shutting down ignores more presses. */
static void stop_overdue(struct mgr *m, struct mgr_vm *vm)
{
	uint64_t now = wall_ms();

	if (vm->state != MGR_STOPPING)
		return;
	if (now < vm->stop_deadline_ms) {
		if (now >= vm->next_press_ms) {
			vm->next_press_ms = now + STOP_PRESS_INTERVAL_MS;
			/* A VMM that does not answer is not asked again: each
			 * try may hold the manager lock for the request timeout. */
			if (control(m, vm, "{\"action\":\"powerdown\"}", NULL) != MGR_OK)
				vm->next_press_ms = vm->stop_deadline_ms;
		}
		return;
	}
	log_info("VM %s: the guest did not power off in %u s: killing the VMM", vm->def.name,
		 vm->stop_timeout_s);
	if (vmm_kill(m, vm))
		return;	/* still there: the next check tries again */
	vm->state = MGR_STOPPED;
	snprintf(vm->reason, sizeof(vm->reason), "stopped by request: the guest did not power "
		 "off within %u s of the power button, so the VMM was killed", vm->stop_timeout_s);
	store_save_run(m, vm);
}

static void check_one(struct mgr *m, struct mgr_vm *vm)
{
	if (mgr_vm_active(vm) && !vmm_reap(m, vm)) {
		stop_overdue(m, vm);
		store_rotate_log(m, vm->def.name);
	}
	if (vm->restart_pending && launch(m, vm, "rebooted") != MGR_OK)
		log_warn("VM %s: no new VMM after the guest's reboot: %s", vm->def.name,
			 vm->reason);
}

void mgr_check(struct mgr *m)
{
	/* A VM in an operation is skipped: the operation sees to its VMM, and
	 * the next check (100 ms on) to the rest. Its lock, held here, keeps
	 * it in the list while check_one drops m->lock. */
	for (struct mgr_vm *vm = m->vms; vm; vm = vm->next) {
		if (pthread_mutex_trylock(&vm->lock))
			continue;
		check_one(m, vm);
		pthread_mutex_unlock(&vm->lock);
	}
}

enum mgr_err mgr_pause(struct mgr *m, struct mgr_vm *vm, bool pause)
{
	enum mgr_state want = pause ? MGR_RUNNING : MGR_PAUSED;
	enum mgr_err e;

	if (vm->state != want) {
		err_set(-EBUSY, "cannot %s VM '%s': it is %s", pause ? "pause" : "resume",
			vm->def.name, mgr_state_name(vm->state));
		return MGR_E_CONFLICT;
	}
	e = control(m, vm, pause ? "{\"action\":\"pause\"}" : "{\"action\":\"resume\"}", NULL);
	if (e != MGR_OK)
		return e;
	vm->state = pause ? MGR_PAUSED : MGR_RUNNING;
	snprintf(vm->reason, sizeof(vm->reason), pause ? "paused by request" : "resumed");
	store_save_run(m, vm);
	return MGR_OK;
}

enum mgr_err mgr_reboot(struct mgr *m, struct mgr_vm *vm)
{
	enum mgr_err e;

	if (!mgr_vm_active(vm)) {
		err_set(-EBUSY, "cannot reboot VM '%s': it is %s", vm->def.name,
			mgr_state_name(vm->state));
		return MGR_E_CONFLICT;
	}
	e = control(m, vm, "{\"action\":\"reboot\"}", NULL);
	if (e != MGR_OK)
		return e;
	/* The VMM exits (status 3) and a new one starts: a complete reset. */
	if (vmm_wait_exit(m, vm, 5000))
		return MGR_E_FAILED;
	if (!vm->restart_pending) {
		err_set(-EIO, "the VMM ended instead of rebooting: %s", vm->reason);
		return MGR_E_FAILED;
	}
	return launch(m, vm, "rebooted");
}

/* Pins under the VM's operation lock only: it alone changes the pins. */
static int apply_pins_unlocked(struct mgr *m, const char *sock, const struct vm_def *d)
{
	int ret;

	pthread_mutex_unlock(&m->lock);
	ret = vmm_apply_pins(sock, d);
	pthread_mutex_lock(&m->lock);
	return ret;
}

/* Applies a patch to a running VMM: cgroup, pins, disk limits. */
static enum mgr_err patch_live(struct mgr *m, struct mgr_vm *vm, const struct vm_def *nd,
			       const struct vm_patch *p)
{
	char sock[PATH_MAX], req[160];
	enum mgr_err e;

	if ((p->has_weight || p->has_max) &&
	    cgroup_vm_set_cpu(&m->cg, nd->name, nd->cpu_weight, nd->cpu_max))
		return MGR_E_FAILED;
	sock_path(m, vm->def.name, sock, sizeof(sock));
	if (p->has_pin && nd->npin == 0) {
		/* "cpu_pin": [] unpins: every online host CPU again. */
		struct vm_def all = *nd;
		char cpus[32], *list[1] = { cpus };

		snprintf(cpus, sizeof(cpus), "0-%ld", sysconf(_SC_NPROCESSORS_CONF) - 1);
		memcpy(all.cpu_pin, list, sizeof(list));
		all.npin = 1;
		if (apply_pins_unlocked(m, sock, &all))
			return MGR_E_FAILED;
	} else if (p->has_pin && apply_pins_unlocked(m, sock, nd)) {
		return MGR_E_FAILED;
	}
	if (p->has_balloon) {
		snprintf(req, sizeof(req), "{\"action\":\"balloon\",\"target\":%llu}",
			 (unsigned long long)nd->balloon_target);
		e = control(m, vm, req, NULL);
		if (e != MGR_OK)
			return e;
	}
	for (unsigned int i = 0; i < p->nlimits; i++) {
		unsigned int k = p->limits[i].disk;

		/* Only a weight or floor: the I/O policy's next round uses it. */
		if (!p->limits[i].has_bps && !p->limits[i].has_iops)
			continue;
		/* Under the I/O policy its limits within the new caps, not
		 * the caps: an uncapped one would run unlimited until the
		 * policy's next round. */
		if (p->limits[i].nic)
			snprintf(req, sizeof(req), "{\"action\":\"set-limits\",\"nic\":%u,"
				 "\"rx_bps\":%llu,\"tx_bps\":%llu}", k,
				 (unsigned long long)mgr_iopolicy_bound(m, vm, MGR_MAX_DISKS + 2 * k,
									0, nd->nics[k].rx_bps),
				 (unsigned long long)mgr_iopolicy_bound(m, vm, MGR_MAX_DISKS + 2 * k + 1,
									0, nd->nics[k].tx_bps));
		else
			snprintf(req, sizeof(req), "{\"action\":\"set-limits\",\"disk\":%u,"
				 "\"bps\":%llu,\"iops\":%llu}", k,
				 (unsigned long long)mgr_iopolicy_bound(m, vm, k, 0, nd->disks[k].bps),
				 (unsigned long long)mgr_iopolicy_bound(m, vm, k, 1, nd->disks[k].iops));
		e = control(m, vm, req, NULL);
		if (e != MGR_OK)
			return e;
	}
	for (unsigned int i = 0; i < p->nvlans; i++)
		if (mgr_net_set_vlans(m, nd, p->vlans[i].nic))
			return MGR_E_FAILED;
	return MGR_OK;
}

/* A patch changes nothing unless it all succeeds: it goes to a copy of the
 * definition, then to the live VMM, then to disk; on a failure the VMM gets
 * the old values back (best effort) and the definition stays as it was. */
enum mgr_err mgr_patch(struct mgr *m, struct mgr_vm *vm, struct vm_patch *p)
{
	enum mgr_err e = MGR_OK;
	struct vm_def nd;

	if (vm_def_copy(&vm->def, &nd))
		return MGR_E_FAILED;
	vm_patch_apply(&nd, p);	/* nd owns the pin strings now */
	if (mgr_net_check_def(m, &nd)) {
		vm_def_free(&nd);
		return MGR_E_BAD;
	}
	if (mgr_vm_active(vm))
		e = patch_live(m, vm, &nd, p);
	if (e == MGR_OK && store_save_def(m, &nd))
		e = MGR_E_FAILED;
	if (e != MGR_OK && mgr_vm_active(vm)) {
		char why[256];

		snprintf(why, sizeof(why), "%s", err_get());
		patch_live(m, vm, &vm->def, p);
		err_set(-EIO, "%s", why);
	}
	if (e != MGR_OK) {
		vm_def_free(&nd);
	} else {
		vm_def_free(&vm->def);
		vm->def = nd;
	}
	if (mgr_vm_active(vm))	/* listing and metrics show the limits in force */
		mgr_refresh_info(m, vm, MGR_INFO_TIMEOUT_MS);
	return e;
}
