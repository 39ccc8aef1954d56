/* The per-VM control socket: a Unix socket on the VMM's event loop, one
 * JSON request per line (include/vireo/control.h, docs/api.md). Requests
 * are applied on the loop thread, which owns the control plane; the vCPU
 * threads only see the state machine of src/vmm/pause.c. */
#include <errno.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "vireo/block.h"
#include "vireo/control.h"
#include "vireo/acpipm.h"
#include "vireo/ged.h"
#include "vireo/log.h"
#include "vireo/migrate.h"
#include "vireo/sock.h"
#include "vireo/ratelimit.h"
#include "vireo/serial.h"
#include "vireo/state.h"
#include "vireo/virtio.h"
#include "vireo/vmm.h"

/* Descriptors a client may pass with a request (SCM_RIGHTS): a snapshot's
 * memory and state files, which a sandboxed VMM cannot open itself, or a
 * migration's connected stream, which it cannot connect itself. */
#define CONTROL_MAX_FDS 2

struct control_client {
	int fd;
	int fds[CONTROL_MAX_FDS]; /* passed with the bytes not yet served; -1: none */
	uint64_t last_ms;       /* CLOCK_MONOTONIC ms of its last request bytes */
	size_t len;
	char buf[CONTROL_MAX_LINE + 1];
};

struct control {
	struct loop *loop;
	int listen_fd;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct control_target target;
	struct control_client *clients[CONTROL_MAX_CLIENTS];
};

struct json_object *control_error(const char *code, const char *message)
{
	struct json_object *r = json_object_new_object();

	json_object_object_add(r, "ok", json_object_new_boolean(0));
	json_object_object_add(r, "code", json_object_new_string(code));
	json_object_object_add(r, "error", json_object_new_string(message));
	return r;
}

/* A success reply. Its "state" is the state the action left the VM in at
 * the instant it was applied (for info: the state now). The guest's reaction
 * afterwards (a powerdown answered at once) never shows in it, so the reply
 * is the same however fast the guest is (docs/api.md). */
static struct json_object *reply_ok(enum vm_state state)
{
	struct json_object *r = json_object_new_object();

	json_object_object_add(r, "ok", json_object_new_boolean(1));
	json_object_object_add(r, "state", json_object_new_string(vm_state_name(state)));
	return r;
}

static void add_u64(struct json_object *o, const char *key, uint64_t v)
{
	json_object_object_add(o, key, json_object_new_uint64(v));
}

static uint64_t thread_cpu_ns(pthread_t thread)
{
	clockid_t clock;
	struct timespec ts;

	if (pthread_getcpuclockid(thread, &clock) || clock_gettime(clock, &ts))
		return 0;
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* The scheduler's view of a thread: time on a CPU and time runnable but
 * waiting for one (the vCPU's "steal"), from its schedstat file, which the
 * thread opened before the sandbox (a fresh read at offset 0 each time). */
static void thread_schedstat(int fd, uint64_t *run_ns, uint64_t *wait_ns)
{
	char buf[96];
	unsigned long long run = 0, wait = 0;
	ssize_t n = fd >= 0 ? pread(fd, buf, sizeof(buf) - 1, 0) : -1;

	if (n > 0) {
		buf[n] = '\0';
		if (sscanf(buf, "%llu %llu", &run, &wait) != 2)
			run = wait = 0;
	}
	*run_ns = run;
	*wait_ns = wait;
}

static struct json_object *info_vcpus(struct vm *vm)
{
	struct json_object *arr = json_object_new_array();

	for (unsigned int i = 0; i < vm->ncpus; i++) {
		struct vcpu *v = &vm->vcpus[i];
		struct json_object *o = json_object_new_object();
		uint64_t run, wait;

		json_object_object_add(o, "id", json_object_new_int((int)i));
		json_object_object_add(o, "tid", json_object_new_int(__atomic_load_n(&v->tid, __ATOMIC_ACQUIRE)));
		add_u64(o, "exits", __atomic_load_n(&v->exits, __ATOMIC_RELAXED));
		add_u64(o, "cpu_ns", v->thread_started ? thread_cpu_ns(v->thread) : 0);
		/* Written by the vCPU thread before vm_start_vcpus() returned. */
		thread_schedstat(v->thread_started ? v->schedstat_fd : -1, &run, &wait);
		add_u64(o, "wait_ns", wait);
		json_object_array_add(arr, o);
	}
	return arr;
}

static struct json_object *info_disk(const struct control_target *t, unsigned int i)
{
	struct json_object *o = json_object_new_object();
	struct virtio_blk *blk = t->disks[i];
	const struct virtio_stats *vs = &virtio_blk_dev(blk)->stats;
	struct ratelimit *rl = virtio_blk_ratelimit(blk);
	struct blockdev_stats bs;
	uint64_t inflight_max;

	blockdev_get_stats(virtio_blk_blockdev(blk), &bs);
	json_object_object_add(o, "index", json_object_new_int((int)i));
	json_object_object_add(o, "path", json_object_new_string(t->disk_paths[i]));
	add_u64(o, "rd_ops", bs.rd_ops);
	add_u64(o, "wr_ops", bs.wr_ops);
	add_u64(o, "rd_bytes", bs.rd_bytes);
	add_u64(o, "wr_bytes", bs.wr_bytes);
	add_u64(o, "flush_ops", bs.flush_ops);
	add_u64(o, "discard_ops", bs.discard_ops);
	add_u64(o, "errors", bs.errors);
	add_u64(o, "notifies", vs->notifies);
	add_u64(o, "interrupts", vs->interrupts);
	add_u64(o, "ring_errors", vs->ring_errors);
	add_u64(o, "resets", vs->resets);
	add_u64(o, "queues", virtio_blk_dev(blk)->ops->num_queues);
	json_object_object_add(o, "aio", json_object_new_string(virtio_blk_aio(blk, &inflight_max)));
	add_u64(o, "inflight_max", inflight_max);
	pthread_mutex_lock(&rl->lock);
	add_u64(o, "bps", rl->bytes.rate);
	add_u64(o, "iops", rl->ops.rate);
	add_u64(o, "throttled_ns", rl->throttled_ns);
	add_u64(o, "charged_bytes", rl->charged_bytes);
	add_u64(o, "charged_ops", rl->charged_ops);
	pthread_mutex_unlock(&rl->lock);
	return o;
}

/* The balloon as the guest last reported it: 4 KiB pages, stat tags of
 * virtio 1.x §5.5.6.3 (4 free, 5 total, 6 available memory). */
static struct json_object *info_balloon(const struct control_target *t)
{
	static const char *const tags[] = { [4] = "free", [5] = "total", [6] = "available",
					    [7] = "caches" };
	struct json_object *o = json_object_new_object(), *st = json_object_new_object();
	struct balloon_stats bs;

	virtio_balloon_get_stats(t->balloon, &bs);
	add_u64(o, "target", t->balloon_target);
	add_u64(o, "actual", (uint64_t)bs.actual_pages << 12);
	add_u64(o, "inflated_pages", bs.inflated_pages);
	add_u64(o, "reported_pages", bs.reported_pages);
	add_u64(o, "stats_updates", bs.updates);
	for (unsigned int i = 4; i <= 7; i++)
		if (bs.valid & (1u << i))
			add_u64(st, tags[i], bs.value[i]);
	json_object_object_add(o, "guest", st);
	return o;
}

static struct json_object *info_nic(const struct control_target *t, unsigned int i)
{
	struct json_object *o = json_object_new_object();
	struct virtio_net_stats ns;
	struct ratelimit *rx = virtio_net_ratelimit(t->nics[i], false);
	struct ratelimit *tx = virtio_net_ratelimit(t->nics[i], true);

	virtio_net_get_stats(t->nics[i], &ns);
	json_object_object_add(o, "index", json_object_new_int((int)i));
	json_object_object_add(o, "tap", json_object_new_string(ns.tap));
	add_u64(o, "rx_packets", ns.rx_packets);
	add_u64(o, "tx_packets", ns.tx_packets);
	add_u64(o, "rx_dropped", ns.rx_dropped);
	add_u64(o, "tx_dropped", ns.tx_dropped);
	pthread_mutex_lock(&rx->lock);
	add_u64(o, "rx_bps", rx->bytes.rate);
	add_u64(o, "rx_bytes", rx->charged_bytes);
	add_u64(o, "rx_throttled_ns", rx->throttled_ns);
	pthread_mutex_unlock(&rx->lock);
	pthread_mutex_lock(&tx->lock);
	add_u64(o, "tx_bps", tx->bytes.rate);
	add_u64(o, "tx_bytes", tx->charged_bytes);
	add_u64(o, "tx_throttled_ns", tx->throttled_ns);
	pthread_mutex_unlock(&tx->lock);
	return o;
}

static struct json_object *control_info(const struct control_target *t)
{
	struct json_object *r = reply_ok(vm_get_state(t->vm)), *disks = json_object_new_array();
	uint64_t exits = 0;

	json_object_object_add(r, "pid", json_object_new_int((int)getpid()));
	json_object_object_add(r, "cpus", json_object_new_int((int)t->vm->ncpus));
	add_u64(r, "memory", t->vm->mem.size);
	json_object_object_add(r, "dirty_log", json_object_new_boolean(
		__atomic_load_n(&t->vm->dirty_logging, __ATOMIC_RELAXED)));
	for (unsigned int i = 0; i < t->vm->ncpus; i++)
		exits += __atomic_load_n(&t->vm->vcpus[i].exits, __ATOMIC_RELAXED);
	add_u64(r, "exits", exits);
	json_object_object_add(r, "vcpus", info_vcpus(t->vm));
	for (unsigned int i = 0; i < t->ndisks; i++)
		json_object_array_add(disks, info_disk(t, i));
	json_object_object_add(r, "disks", disks);
	if (t->nnics) {
		struct json_object *nics = json_object_new_array();

		for (unsigned int i = 0; i < t->nnics; i++)
			json_object_array_add(nics, info_nic(t, i));
		json_object_object_add(r, "nics", nics);
	}
	if (t->balloon)
		json_object_object_add(r, "balloon", info_balloon(t));
	if (t->pm)
		add_u64(r, "power_button_presses", acpipm_power_button_count(t->pm));
	else if (t->ged)
		add_u64(r, "power_button_presses", ged_power_button_count(t->ged));
	if (t->serial) {
		struct serial_stats ss;

		serial_get_stats(t->serial, &ss);
		add_u64(r, "serial_dropped_bytes", ss.dropped_bytes);
		add_u64(r, "serial_client_dropped_bytes", ss.client_dropped_bytes);
	}
	if (t->migration) {
		struct json_object *mig = migration_info(t->migration);

		if (mig)
			json_object_object_add(r, "migration", mig);
	}
	return r;
}

/* Which states each action is legal in (bit per enum vm_state). */
static bool action_legal(enum control_kind kind, enum vm_state s)
{
	switch (kind) {
	case CONTROL_INFO: return true;
	case CONTROL_PAUSE: return s == VM_STATE_RUNNING;
	/* A paused guest could not answer the button, and the press would
	 * be seen only on resume: refused, so the caller knows. */
	case CONTROL_POWERDOWN: return s == VM_STATE_RUNNING;
	case CONTROL_RESUME: return s == VM_STATE_PAUSED;
	/* Paused: every vCPU parked, so the state is one instant's. */
	case CONTROL_SNAPSHOT: return s == VM_STATE_PAUSED;
	case CONTROL_DISK_SNAPSHOT_DELETE:
	case CONTROL_POWEROFF: return s != VM_STATE_STOPPED;
	case CONTROL_MIGRATE:
	case CONTROL_MIGRATE_CANCEL:
	case CONTROL_REBOOT:
	case CONTROL_BALLOON:
	case CONTROL_SET_LIMITS:
	case CONTROL_PIN: return s == VM_STATE_RUNNING || s == VM_STATE_PAUSED;
	}
	return false;
}

static const char *const kind_names[] = {
	[CONTROL_INFO] = "info", [CONTROL_PAUSE] = "pause", [CONTROL_RESUME] = "resume",
	[CONTROL_POWEROFF] = "poweroff", [CONTROL_REBOOT] = "reboot",
	[CONTROL_SET_LIMITS] = "set-limits",
	[CONTROL_PIN] = "pin", [CONTROL_BALLOON] = "balloon",
	[CONTROL_POWERDOWN] = "powerdown", [CONTROL_SNAPSHOT] = "snapshot",
	[CONTROL_DISK_SNAPSHOT_DELETE] = "disk-snapshot-delete",
	[CONTROL_MIGRATE] = "migrate", [CONTROL_MIGRATE_CANCEL] = "migrate-cancel",
};

/* Sets the bandwidth of a limiter, keeping its ops rate. */
static void set_bandwidth(struct ratelimit *rl, uint64_t bps)
{
	uint64_t ops;

	pthread_mutex_lock(&rl->lock);
	ops = rl->ops.rate;
	pthread_mutex_unlock(&rl->lock);
	ratelimit_set(rl, bps, ops);
}

static struct json_object *apply_limits(const struct control_target *t,
					const struct control_action *a)
{
	unsigned int count = a->nic ? t->nnics : t->ndisks;
	struct ratelimit *rl;
	uint64_t bps, iops;

	if (a->disk >= count) {
		char msg[64];

		snprintf(msg, sizeof(msg), "no %s %u (the VM has %u)", a->nic ? "nic" : "disk",
			 a->disk, count);
		return control_error(CONTROL_E_NOT_FOUND, msg);
	}
	if (a->nic) {
		if (a->has_bps)
			set_bandwidth(virtio_net_ratelimit(t->nics[a->disk], false), a->bps);
		if (a->has_iops)
			set_bandwidth(virtio_net_ratelimit(t->nics[a->disk], true), a->iops);
		return NULL;
	}
	rl = virtio_blk_ratelimit(t->disks[a->disk]);
	pthread_mutex_lock(&rl->lock);
	bps = a->has_bps ? a->bps : rl->bytes.rate;
	iops = a->has_iops ? a->iops : rl->ops.rate;
	pthread_mutex_unlock(&rl->lock);
	virtio_blk_set_limits(t->disks[a->disk], bps, iops);
	return NULL;
}

static struct json_object *apply_pin(const struct control_target *t, const struct control_action *a)
{
	struct vcpu *v;
	char msg[128];
	int ret;

	if (a->vcpu >= t->vm->ncpus) {
		snprintf(msg, sizeof(msg), "no vCPU %u (the VM has %u)", a->vcpu, t->vm->ncpus);
		return control_error(CONTROL_E_NOT_FOUND, msg);
	}
	v = &t->vm->vcpus[a->vcpu];
	/* thread_started is written by this (the loop's) thread in vm_start. */
	if (!v->thread_started)
		return control_error(CONTROL_E_WRONG_STATE, "the vCPU thread has not started");
	ret = pthread_setaffinity_np(v->thread, sizeof(a->cpus), &a->cpus);
	if (ret) {
		snprintf(msg, sizeof(msg), "cannot pin vCPU %u: %s", a->vcpu, strerror(ret));
		return control_error(ret == EINVAL ? CONTROL_E_BAD_REQUEST : CONTROL_E_FAILED, msg);
	}
	return NULL;
}

static struct json_object *apply_balloon(struct control_target *t, const struct control_action *a)
{
	char msg[96];

	if (!t->balloon)
		return control_error(CONTROL_E_NOT_FOUND, "the VM has no balloon device (run --balloon)");
	if (a->target > t->vm->mem.size) {
		snprintf(msg, sizeof(msg), "target %llu is more than the guest's %llu bytes",
			 (unsigned long long)a->target, (unsigned long long)t->vm->mem.size);
		return control_error(CONTROL_E_BAD_REQUEST, msg);
	}
	virtio_balloon_set_target(t->balloon, a->target);
	t->balloon_target = a->target;
	return NULL;
}

static struct json_object *apply_snapshot(const struct control_target *t,
					  const struct control_action *a)
{
	struct snapshot_target st = { .vm = t->vm, .serial = t->serial, .ged = t->ged,
				      .rtc = t->rtc, .fw = t->fw, .pm = t->pm,
				      .machine = t->machine, .virtio = t->virtio,
				      .nvirtio = t->nvirtio, .base = t->snap_base,
				      .incremental = a->incremental, .parent = a->parent,
				      .parent_id = a->parent_id, .track_dirty = a->track_dirty };
	struct snapshot_stats stats = { 0 };
	char id[17];
	struct json_object *r;
	int ret = 0;

	if (!t->machine || !t->serial || !t->ged)
		return control_error(CONTROL_E_FAILED, "this VMM cannot take snapshots");
	if (a->fds && (a->fd[0] < 0 || a->fd[1] < 0))
		return control_error(CONTROL_E_BAD_REQUEST, "snapshot 'fds': pass the memory and "
				     "state files' descriptors with the request (SCM_RIGHTS)");
	/* The devices stay still until the disks are saved too: the state
	 * and the disks show the same instant. */
	ret = snapshot_quiesce(&st);
	if (!ret) {
		if (a->fds)
			ret = snapshot_save_fds(a->fd[0], a->fd[1], &st, &stats);
		else if (a->dir[0])
			ret = snapshot_save(a->dir, &st, &stats);
		/* The disks after the state: a refused state leaves the disks
		 * as they were, and the caller drops the state files if the
		 * disks fail. */
		if (!ret && a->disks)
			ret = control_disks_snapshot(t, a->name, false);
		snapshot_unquiesce(&st);
	}
	if (ret)
		return control_error(ret == -ENOTSUP || ret == -EINVAL ? CONTROL_E_BAD_REQUEST :
				     ret == -EEXIST || ret == -ENOENT ? CONTROL_E_WRONG_STATE :
				     CONTROL_E_FAILED, err_get());
	r = reply_ok(VM_STATE_PAUSED);
	add_u64(r, "state_bytes", stats.state_bytes);
	add_u64(r, "memory_bytes", stats.memory_bytes);
	if (stats.id) {
		snprintf(id, sizeof(id), "%016llx", (unsigned long long)stats.id);
		json_object_object_add(r, "id", json_object_new_string(id));
		json_object_object_add(r, "incremental", json_object_new_boolean(a->incremental));
	}
	if (a->incremental)
		add_u64(r, "dirty_pages", stats.dirty_pages);
	return r;
}

/* The migration's own copy of the stream passed with the request (the
 * socket closes the passed one once the request is answered): a connected
 * TCP stream (IPv4 or IPv6), not a listening socket nor anything else. */
static int migrate_stream(int fd)
{
	struct tcp_info ti;
	int v[3];
	socklen_t len = sizeof(v[0]), tlen = sizeof(ti);

	if (fd < 0)
		return err_set(-EINVAL, "migrate to \"fd\": pass the connected TCP socket "
			       "with the request (SCM_RIGHTS)");
	if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &v[0], &len) ||
	    getsockopt(fd, SOL_SOCKET, SO_TYPE, &v[1], &len) ||
	    getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v[2], &len) ||
	    (v[0] != AF_INET && v[0] != AF_INET6) || v[1] != SOCK_STREAM || v[2] ||
	    getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &tlen) || ti.tcpi_state != TCP_ESTABLISHED)
		return err_set(-EINVAL, "migrate to \"fd\": the descriptor passed is not a "
			       "connected TCP socket");
	fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	if (fd < 0)
		return err_set(-errno, "migrate: cannot keep the socket: %m");
	/* The sender's O_NONBLOCK is ours too (one open file): the stream's
	 * I/O blocks, with timeouts. */
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0) {
		close(fd);
		return err_set(-errno, "migrate: cannot make the socket blocking: %m");
	}
	return fd;
}

static struct json_object *migrate_error(int ret)
{
	return control_error(ret == -ENOTSUP || ret == -EINVAL ? CONTROL_E_BAD_REQUEST :
			     ret == -ENOMEM || ret == -EMFILE ? CONTROL_E_FAILED :
			     CONTROL_E_WRONG_STATE, err_get());
}

static struct json_object *apply_migrate(const struct control_target *t,
					 const struct control_action *a)
{
	struct migrate_params p = { .max_downtime_ms = a->max_downtime_ms, .bandwidth = a->bps,
				    .fd = -1, .copy_storage = a->copy_storage };
	int ret;

	if (!t->migration)
		return control_error(CONTROL_E_FAILED, "this VMM cannot migrate");
	if (a->kind == CONTROL_MIGRATE_CANCEL)
		ret = migration_cancel(t->migration);
	else {
		if (!strcmp(a->uri, "fd") && (p.fd = migrate_stream(a->fd[0])) < 0)
			return migrate_error(p.fd);
		/* Its seccomp filter would kill it at socket(). */
		if (p.fd < 0 && t->no_connect)
			return control_error(CONTROL_E_BAD_REQUEST, "this VMM is jailed and cannot "
					     "connect: pass a connected TCP socket with uri \"fd\"");
		snprintf(p.uri, sizeof(p.uri), "%s", a->uri);
		snprintf(p.token, sizeof(p.token), "%s", a->token);
		ret = migration_start(t->migration, &p);
		/* The migration collects and stops the dirty log: an increment
		 * from the base would miss what it took. */
		if (!ret && t->snap_base) {
			snapshot_base_drop(t->snap_base);
			t->snap_base->disabled = true;
		}
	}
	return ret ? migrate_error(ret) : NULL;
}

struct json_object *control_apply(struct control_target *t, const struct control_action *a)
{
	enum vm_state s = vm_get_state(t->vm);
	struct json_object *r = NULL;
	char msg[96];

	if (!action_legal(a->kind, s)) {
		snprintf(msg, sizeof(msg), "'%s' is not allowed while the VM is %s",
			 kind_names[a->kind], vm_state_name(s));
		return control_error(CONTROL_E_WRONG_STATE, msg);
	}
	switch (a->kind) {
	case CONTROL_INFO:
		return control_info(t);
	case CONTROL_PAUSE:
		if (vm_pause(t->vm))
			return control_error(CONTROL_E_FAILED, err_get());
		return reply_ok(VM_STATE_PAUSED);
	case CONTROL_RESUME:
		if (t->migration && migration_holds_pause(t->migration))
			return control_error(CONTROL_E_WRONG_STATE, "the VM is paused for the "
					     "migration's switch-over");
		if (vm_resume(t->vm))
			return control_error(CONTROL_E_WRONG_STATE, err_get());
		return reply_ok(VM_STATE_RUNNING);
	case CONTROL_POWEROFF:
		vm_request_stop(t->vm, VM_EXIT_POWEROFF);
		return reply_ok(VM_STATE_STOPPED);
	case CONTROL_REBOOT:
		vm_request_stop(t->vm, VM_EXIT_REBOOT);
		return reply_ok(VM_STATE_STOPPED);
	case CONTROL_SET_LIMITS:
		r = apply_limits(t, a);
		break;
	case CONTROL_PIN:
		r = apply_pin(t, a);
		break;
	case CONTROL_BALLOON:
		r = apply_balloon(t, a);
		break;
	case CONTROL_SNAPSHOT:
		return apply_snapshot(t, a);
	case CONTROL_DISK_SNAPSHOT_DELETE:
		if (control_disks_snapshot(t, a->name, true))
			return control_error(CONTROL_E_FAILED, err_get());
		break;
	case CONTROL_MIGRATE:
	case CONTROL_MIGRATE_CANCEL:
		r = apply_migrate(t, a);
		break;
	case CONTROL_POWERDOWN:
		/* The guest decides when (and whether) to power off. */
		if (t->pm)
			acpipm_power_button(t->pm);
		else if (t->ged)
			ged_raise(t->ged, GED_EVENT_POWER_BUTTON);
		else
			return control_error(CONTROL_E_NOT_FOUND, "the VM has no power button");
		break;
	default:
		return control_error(CONTROL_E_FAILED, "unhandled action");
	}
	/* These actions leave the state as it was. */
	return r ? r : reply_ok(s);
}

/* ---- the socket ---- */

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void client_drop_fds(struct control_client *c)
{
	for (int i = 0; i < CONTROL_MAX_FDS; i++)
		if (c->fds[i] >= 0) {
			close(c->fds[i]);
			c->fds[i] = -1;
		}
}

static void client_close(struct control *ctl, unsigned int slot)
{
	struct control_client *c = ctl->clients[slot];

	client_drop_fds(c);
	loop_del(ctl->loop, c->fd);
	close(c->fd);
	free(c);
	ctl->clients[slot] = NULL;
}

static int client_send(int fd, struct json_object *reply)
{
	size_t len;
	const char *text = json_object_to_json_string_length(reply, JSON_C_TO_STRING_PLAIN, &len);
	int ret = 0;

	/* The socket has a send timeout: a client that does not read cannot
	 * hold the event loop for long. */
	for (size_t off = 0; off < len + 1 && !ret; ) {
		const char *p = off < len ? text + off : "\n";
		size_t n = off < len ? len - off : 1;
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			ret = -1;
		else
			off += (size_t)w;
	}
	json_object_put(reply);
	return ret;
}

/* Descriptors passed with a request are its own: the next line served
 * gets them, and they are closed once it is answered, used or not. */
static int client_request(struct control *ctl, struct control_client *c, const char *line,
			  size_t len)
{
	struct control_action a;
	struct json_object *reply;

	if (control_parse(line, len, &a)) {
		reply = control_error(CONTROL_E_BAD_REQUEST, err_get());
	} else {
		memcpy(a.fd, c->fds, sizeof(a.fd));
		reply = control_apply(&ctl->target, &a);
	}
	client_drop_fds(c);
	return client_send(c->fd, reply);
}

/* recv() that also takes the descriptors passed with the bytes (at most
 * CONTROL_MAX_FDS pending; more are closed at once). */
static ssize_t client_recv(struct control_client *c, size_t room)
{
	char ctrl[CMSG_SPACE(sizeof(int) * CONTROL_MAX_FDS)];
	struct iovec iov = { .iov_base = c->buf + c->len, .iov_len = room };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctrl,
			      .msg_controllen = sizeof(ctrl) };
	ssize_t n = recvmsg(c->fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);

	for (struct cmsghdr *h = n < 0 ? NULL : CMSG_FIRSTHDR(&msg); h; h = CMSG_NXTHDR(&msg, h)) {
		size_t k = h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_RIGHTS ?
			   (h->cmsg_len - CMSG_LEN(0)) / sizeof(int) : 0;

		for (size_t i = 0; i < k; i++) {
			int fd, slot = 0;

			memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof(int));
			while (slot < CONTROL_MAX_FDS && c->fds[slot] >= 0)
				slot++;
			if (slot < CONTROL_MAX_FDS)
				c->fds[slot] = fd;
			else
				close(fd);
		}
	}
	return n;
}

/* Serves every complete line in the buffer; keeps the partial rest. */
static int client_serve_lines(struct control *ctl, struct control_client *c)
{
	char *start = c->buf, *nl;

	while ((nl = memchr(start, '\n', c->len - (size_t)(start - c->buf)))) {
		size_t n = (size_t)(nl - start);

		if (n && client_request(ctl, c, start, n))
			return -1;
		start = nl + 1;
	}
	c->len -= (size_t)(start - c->buf);
	memmove(c->buf, start, c->len);
	return 0;
}

static void client_input(struct loop *loop, int fd, uint32_t events, void *opaque)
{
	struct control *ctl = opaque;
	unsigned int slot = 0;
	struct control_client *c;
	ssize_t n;

	(void)loop;
	(void)events;
	while (slot < CONTROL_MAX_CLIENTS && (!ctl->clients[slot] || ctl->clients[slot]->fd != fd))
		slot++;
	if (slot == CONTROL_MAX_CLIENTS)
		return;
	c = ctl->clients[slot];
	n = client_recv(c, CONTROL_MAX_LINE - c->len);
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n <= 0) {
		/* EOF: a last request without '\n' still gets its answer. */
		if (n == 0 && c->len)
			client_request(ctl, c, c->buf, c->len);
		client_close(ctl, slot);
		return;
	}
	c->len += (size_t)n;
	c->last_ms = mono_ms();
	if (client_serve_lines(ctl, c) < 0) {
		client_close(ctl, slot);
	} else if (c->len == CONTROL_MAX_LINE) {
		client_send(fd, control_error(CONTROL_E_BAD_REQUEST, "request line too long"));
		client_close(ctl, slot);
	}
}

/* A free slot for a new client. Clients idle past CONTROL_IDLE_MS are
 * closed; if every slot is still taken, the least recently active client
 * gives up its own: idle connections cannot lock the daemon out (its
 * connection is the newest and sends its request at once). */
static unsigned int control_free_slot(struct control *ctl)
{
	uint64_t now = mono_ms();
	unsigned int slot, lru = 0;

	for (slot = 0; slot < CONTROL_MAX_CLIENTS; slot++)
		if (ctl->clients[slot] && now - ctl->clients[slot]->last_ms >= CONTROL_IDLE_MS)
			client_close(ctl, slot);
	for (slot = 0; slot < CONTROL_MAX_CLIENTS; slot++) {
		if (!ctl->clients[slot])
			return slot;
		if (ctl->clients[slot]->last_ms < ctl->clients[lru]->last_ms)
			lru = slot;
	}
	log_ratelimited("control socket: %d connections: closing the least recently active",
			CONTROL_MAX_CLIENTS);
	client_send(ctl->clients[lru]->fd, control_error(CONTROL_E_FAILED,
				"closed for a new connection (too many control connections)"));
	client_close(ctl, lru);
	return lru;
}

static void control_accept(struct loop *loop, int fd, uint32_t events, void *opaque)
{
	struct control *ctl = opaque;
	struct timeval tv = { .tv_sec = 1 };
	unsigned int slot;
	int cfd = accept4(fd, NULL, NULL, SOCK_CLOEXEC);

	(void)events;
	if (cfd < 0)
		return;
	slot = control_free_slot(ctl);
	setsockopt(cfd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	ctl->clients[slot] = calloc(1, sizeof(struct control_client));
	if (!ctl->clients[slot]) {
		close(cfd);
		return;
	}
	ctl->clients[slot]->fd = cfd;
	for (int i = 0; i < CONTROL_MAX_FDS; i++)
		ctl->clients[slot]->fds[i] = -1;
	ctl->clients[slot]->last_ms = mono_ms();
	if (loop_add(loop, cfd, EPOLLIN, client_input, ctl) < 0) {
		close(cfd);
		free(ctl->clients[slot]);
		ctl->clients[slot] = NULL;
	}
}

static int control_listen(struct control *ctl, const char *path)
{
	if (strlen(path) >= sizeof(ctl->path))
		return err_set(-ENAMETOOLONG, "--api-socket: path longer than %zu bytes",
			       sizeof(ctl->path) - 1);
	strcpy(ctl->path, path);
	/* Only the VMM's owner (the daemon) may control it. */
	ctl->listen_fd = unix_listen(path, 16, 0600, 1);
	if (ctl->listen_fd < 0)
		return ctl->listen_fd;
	return loop_add(ctl->loop, ctl->listen_fd, EPOLLIN, control_accept, ctl);
}

struct control *control_create(struct loop *loop, const char *path,
			       const struct control_target *target)
{
	struct control *ctl = calloc(1, sizeof(*ctl));

	if (!ctl) {
		err_set(-ENOMEM, "out of memory");
		return NULL;
	}
	ctl->loop = loop;
	ctl->target = *target;
	ctl->listen_fd = -1;
	if (control_listen(ctl, path)) {
		if (ctl->listen_fd >= 0)
			close(ctl->listen_fd);
		free(ctl);
		return NULL;
	}
	return ctl;
}

void control_destroy(struct control *ctl)
{
	if (!ctl)
		return;
	for (unsigned int i = 0; i < CONTROL_MAX_CLIENTS; i++)
		if (ctl->clients[i])
			client_close(ctl, i);
	loop_del(ctl->loop, ctl->listen_fd);
	close(ctl->listen_fd);
	unix_unlink(ctl->path);
	free(ctl);
}
