/* Live migration between two daemons (docs/api.md "Live migration"), on
 * top of the VMM's (src/vmm/migrate.c): the destination daemon starts a
 * VMM with `vireo run --incoming` under its usual supervision; the source
 * daemon drives its VMM's `migrate` action to the end. Storage is shared:
 * the definition names the same image paths on both hosts, or, with
 * "copy_storage", the destination's own empty images, which the VMMs fill
 * (run --incoming-disk).
 *
 * The destination believes nothing of the stream: its VM is INCOMING until
 * the VMM's own `info` says the migration completed and the guest runs
 * here; a VMM that exits (wrong token, garbage, a source that vanished) or
 * a deadline that passes leaves no VM behind. The token is written to
 * DIR/run/NAME.token (0600) for the VMM to read, and removed once the VMM
 * has ended its wait either way: it is good for one stream. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "vireo/log.h"
#include "vireo/mgr.h"
#include "vireo/migrate.h"

#define MIG_INCOMING_TIMEOUT_S 300     /* default wait for the stream's end */
#define MIG_TIMEOUT_S 3600             /* default limit of an outgoing one */
#define MIG_POLL_MS 100
#define MIG_TOKEN_MAX 255              /* the VMM's MIGRATE_TOKEN_MAX - 1 */
#define MIG_CONNECT_TIMEOUT_S 10       /* the destination accepts the stream */

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Sleeps with the table unlocked (the caller holds the VM's lock). */
static void nap(struct mgr *m, unsigned int ms)
{
	pthread_mutex_unlock(&m->lock);
	usleep(ms * 1000);
	pthread_mutex_lock(&m->lock);
}

/* The VMM's migration object from a fresh `info`, or NULL. */
static struct json_object *vmm_migration(struct mgr *m, struct mgr_vm *vm, int timeout_ms)
{
	char sock[PATH_MAX];
	struct json_object *r, *mig = NULL;

	if (store_path(m, sock, sizeof(sock), "run", vm->def.name, ".sock"))
		return NULL;
	pthread_mutex_unlock(&m->lock);
	r = vmm_request_ms(sock, "{\"action\":\"info\"}", timeout_ms);
	pthread_mutex_lock(&m->lock);
	if (r && json_object_object_get_ex(r, "migration", &mig))
		json_object_get(mig);
	json_object_put(r);
	return mig;
}

static const char *field(struct json_object *o, const char *key)
{
	struct json_object *v;

	return o && json_object_object_get_ex(o, key, &v) && v ? json_object_get_string(v) : "";
}

/* ---- the destination ---- */

struct incoming {
	struct mgr *m;
	char name[MGR_NAME_MAX + 1];
	char uri[128];
	char token_path[PATH_MAX];
	unsigned int timeout_s;
	struct vm_def def;
	bool existed;                  /* the VM was defined here before */
	bool copy_storage;             /* the disks come with the stream */
	int lfd;                       /* pick_listen()'s socket, -1: the VMM binds uri */
	/* handed back to the API thread once the VMM listens, or failed */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool answered;
	enum mgr_err e;
	char why[256];
};

static int uri_check(const char *uri)
{
	const char *colon;

	if (strncmp(uri, "tcp:", 4) || strlen(uri) >= 128 || !(colon = strrchr(uri + 4, ':')) ||
	    colon == uri + 4 || !colon[1] || strspn(colon + 1, "0123456789") != strlen(colon + 1))
		return err_set(-EINVAL, "'%s' is no tcp:HOST:PORT", uri);
	return 0;
}

static int token_check(const char *t)
{
	size_t n = strlen(t);

	if (!n || n > MIG_TOKEN_MAX || strpbrk(t, "\r\n"))
		return err_set(-EINVAL, "a token is 1 to %d bytes, no line break", MIG_TOKEN_MAX);
	return 0;
}

/* 32 random bytes as hex: the token when the client gives none. */
static int token_make(char *out, size_t size)
{
	uint8_t b[32];

	if (size < 2 * sizeof(b) + 1 || getrandom(b, sizeof(b), 0) != sizeof(b))
		return err_set(-EIO, "no random token: %m");
	for (size_t i = 0; i < sizeof(b); i++)
		snprintf(out + 2 * i, 3, "%02x", b[i]);
	return 0;
}

static int token_write(const char *path, const char *token)
{
	size_t n = strlen(token);
	int fd, ret = 0;

	unlink(path);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return err_set(-errno, "cannot create %s: %m", path);
	if (write(fd, token, n) != (ssize_t)n)
		ret = err_set(-EIO, "cannot write %s: %m", path);
	close(fd);
	if (ret)
		unlink(path);
	return ret;
}

/* A TCP socket bound to HOST:port (port 0: any free one, set to the
 * kernel's pick), or -errno. No SO_REUSEADDR: a port with connections in
 * TIME_WAIT, or a wildcard listener on it, is not free. Not listening yet:
 * the VMM it is passed to listens once it has read its token, and the
 * daemon takes that as the sign that the source may connect. */
static int port_bind(const char *host, unsigned int *port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)*port) };
	socklen_t len = sizeof(a);
	int fd, ret;

	if (inet_pton(AF_INET, host, &a.sin_addr) != 1)
		return -EINVAL;
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
		ret = -errno;
		close(fd);
		return ret;
	}
	*port = ntohs(a.sin_port);
	return fd;
}

/* "listen" left out: a port at --migration-address, bound here and kept
 * bound until the VMM has the socket (run --incoming fd:N). Checking that
 * a port is free and letting the VMM bind it later left a window in which
 * another process could take it. The ports of a range are taken in turn,
 * not always the first free one. The daemon runs in the VMMs' network
 * namespace. Returns the socket or -errno. */
static int pick_listen(struct mgr *m, char *uri, size_t size)
{
	unsigned int n = m->migration_port ? MGR_MIGRATION_PORTS : 1;

	if (m->migration_port && m->migration_port + n > 65536)
		n = 65536 - m->migration_port;
	for (unsigned int i = 0; i < n; i++) {
		unsigned int k = (m->migration_next + i) % n;
		unsigned int port = m->migration_port ? m->migration_port + k : 0;
		int fd = port_bind(m->migration_host, &port);

		if (fd < 0)
			continue;
		m->migration_next = (k + 1) % n;
		snprintf(uri, size, "tcp:%s:%u", m->migration_host, port);
		return fd;
	}
	if (!m->migration_port)
		return err_set(-EADDRNOTAVAIL, "cannot listen at --migration-address %s",
			       m->migration_host);
	return err_set(-EADDRINUSE, "no free port at --migration-address %s:%u-%u",
		       m->migration_host, m->migration_port, m->migration_port + n - 1);
}

static int parse_incoming(struct json_object *body, struct incoming *in, char *token,
			  size_t tsize, bool *made)
{
	struct json_object *def = NULL, *v;
	int ret;

	*made = false;
	json_object_object_foreach(body, key, val) {
		if (!strcmp(key, "definition")) {
			def = val;
		} else if (!strcmp(key, "listen") || !strcmp(key, "token")) {
			if (!json_object_is_type(val, json_type_string))
				return err_set(-EINVAL, "'%s' must be a string", key);
		} else if (!strcmp(key, "copy_storage")) {
			if (!json_object_is_type(val, json_type_boolean))
				return err_set(-EINVAL, "'copy_storage' must be true or false");
			in->copy_storage = json_object_get_boolean(val);
		} else if (!strcmp(key, "timeout_s")) {
			if (!json_object_is_type(val, json_type_int) || json_object_get_int64(val) < 1 ||
			    json_object_get_int64(val) > 86400)
				return err_set(-EINVAL, "'timeout_s' must be 1..86400");
			in->timeout_s = (unsigned int)json_object_get_int(val);
		} else {
			return err_set(-EINVAL, "unknown field '%.64s'", key);
		}
	}
	/* Without it, in->uri stays "": incoming_prepare picks a port. */
	if (!json_object_object_get_ex(body, "listen", &v)) {
		if (!in->m->migration_host[0])
			return err_set(-EINVAL, "an incoming VM needs 'listen': \"tcp:ADDR:PORT\" "
				       "(this daemon has no --migration-address)");
	} else if ((ret = uri_check(json_object_get_string(v)))) {
		return ret;
	} else {
		snprintf(in->uri, sizeof(in->uri), "%s", json_object_get_string(v));
	}
	if (json_object_object_get_ex(body, "token", &v)) {
		if ((ret = token_check(json_object_get_string(v))))
			return ret;
		snprintf(token, tsize, "%s", json_object_get_string(v));
	} else if ((ret = token_make(token, tsize))) {
		return ret;
	} else {
		*made = true;
	}
	if (!def || !json_object_is_type(def, json_type_object))
		return err_set(-EINVAL, "an incoming VM needs its 'definition' (as POST /vms)");
	if (!json_object_object_get_ex(def, "name", &v))
		json_object_object_add(def, "name", json_object_new_string(in->name));
	else if (!json_object_is_type(v, json_type_string) ||
		 strcmp(json_object_get_string(v), in->name))
		return err_set(-EINVAL, "the definition's name is not '%s'", in->name);
	return vm_def_from_json(def, &in->def);
}

/* Whether process pid has a listening TCP socket on `port`: the VMM's
 * own, not another's on the same port (its socket inodes are matched). */
static bool listens(pid_t pid, unsigned int port)
{
	static const char *const tables[] = { "tcp", "tcp6" };
	char path[64], line[512];
	bool found = false;

	for (unsigned int t = 0; t < 2 && !found; t++) {
		FILE *f;

		snprintf(path, sizeof(path), "/proc/%d/net/%s", (int)pid, tables[t]);
		f = fopen(path, "re");
		while (f && !found && fgets(line, sizeof(line), f)) {
			unsigned int lport, state;
			unsigned long inode;
			char fdpath[64], want[64], link[64];
			struct dirent *e;
			DIR *d;

			if (sscanf(line, " %*d: %*[0-9A-Fa-f]:%x %*[0-9A-Fa-f]:%*x %x %*s %*s %*s %*s "
				   "%*s %lu", &lport, &state, &inode) != 3 || lport != port ||
			    state != 0x0a)
				continue;
			snprintf(want, sizeof(want), "socket:[%lu]", inode);
			snprintf(fdpath, sizeof(fdpath), "/proc/%d/fd", (int)pid);
			d = opendir(fdpath);
			while (d && !found && (e = readdir(d))) {
				ssize_t n = readlinkat(dirfd(d), e->d_name, link, sizeof(link) - 1);

				found = n > 0 && (link[n] = 0, !strcmp(link, want));
			}
			if (d)
				closedir(d);
		}
		if (f)
			fclose(f);
	}
	return found;
}

/* Waits until the VMM listens: then the source may connect. A VMM given
 * a socket bound here listens on it only once it has read its token. */
static int wait_listening(struct mgr *m, struct mgr_vm *vm, const char *uri)
{
	unsigned int port = (unsigned int)atoi(strrchr(uri, ':') + 1);

	for (uint64_t end = now_ms() + MGR_START_TIMEOUT_MS; now_ms() < end; nap(m, 10)) {
		if (vmm_reap(m, vm))
			return err_set(-EIO, "the VMM did not start: %s", vm->reason);
		if (listens(vm->pid, port))
			return 0;
	}
	return err_set(-ETIMEDOUT, "the VMM did not listen on %s within %d ms", uri,
		       MGR_START_TIMEOUT_MS);
}

/* Hands the result to the API thread, and waits until it has taken it
 * (the thread frees `in` later). Called with m->lock held, which the API
 * thread does not need meanwhile. */
static void answer(struct incoming *in, enum mgr_err e)
{
	pthread_mutex_lock(&in->lock);
	in->e = e;
	snprintf(in->why, sizeof(in->why), "%s", e == MGR_OK ? "" : err_get());
	in->answered = true;
	pthread_cond_signal(&in->cond);
	while (in->answered)
		pthread_cond_wait(&in->cond, &in->lock);
	pthread_mutex_unlock(&in->lock);
}

/* The VMM says the guest runs here: the stream completed and the source
 * handed over. Anything less is not running. */
static bool incoming_done(struct json_object *mig)
{
	return !strcmp(field(mig, "state"), "completed") &&
	       !strcmp(field(mig, "direction"), "incoming");
}

/* After the answer: waits for the end of the stream, under the VM's lock.
 * Returns true if the VM runs here. */
static bool incoming_wait(struct mgr *m, struct mgr_vm *vm, struct incoming *in)
{
	uint64_t end = now_ms() + (uint64_t)in->timeout_s * 1000;
	char sock[PATH_MAX];

	for (;; nap(m, MIG_POLL_MS)) {
		struct json_object *mig;
		bool done;

		if (vmm_reap(m, vm)) {
			log_warn("VM %s: the incoming migration failed: %s", in->name, vm->reason);
			return false;
		}
		if (now_ms() >= end) {
			log_warn("VM %s: no migration completed within %u s: its VMM is killed",
				 in->name, in->timeout_s);
			vmm_kill(m, vm);
			return false;
		}
		mig = vmm_migration(m, vm, MGR_INFO_TIMEOUT_MS);
		done = incoming_done(mig);
		json_object_put(mig);
		if (done && !vmm_reap(m, vm))
			break;
	}
	vm->state = MGR_RUNNING;
	snprintf(vm->reason, sizeof(vm->reason), "migrated in");
	store_save_run(m, vm);
	if (!store_path(m, sock, sizeof(sock), "run", vm->def.name, ".sock")) {
		pthread_mutex_unlock(&m->lock);
		if (vmm_apply_pins(sock, &vm->def))
			log_warn("VM %s: %s", in->name, err_get());
		pthread_mutex_lock(&m->lock);
	}
	mgr_refresh_info(m, vm, MGR_INFO_TIMEOUT_MS);
	log_info("VM %s: migrated in from %s's source, running", in->name, in->uri);
	return true;
}

/* A failed incoming VM leaves no VMM, and no definition unless it was
 * here before (a VM that had moved away and was coming back). */
static void incoming_remove(struct mgr *m, struct mgr_vm *vm, bool existed)
{
	char why[sizeof(vm->reason)];

	snprintf(why, sizeof(why), "%s", vm->reason);
	if (mgr_vm_active(vm) && vmm_kill(m, vm))
		log_warn("VM %s: %s", vm->def.name, err_get());
	vm->state = MGR_STOPPED;
	if (existed) {
		snprintf(vm->reason, sizeof(vm->reason), "incoming migration failed: %.200s", why);
		store_save_run(m, vm);
		return;
	}
	if (mgr_delete(m, vm) != MGR_OK)
		log_warn("VM %s: cannot remove the failed incoming VM: %s", vm->def.name,
			 err_get());
}

/* The VM to receive, taken (its operation lock): new, or one of that
 * name that has no VMM here (it moved away and comes back), which takes
 * the new definition. A new one is created and taken under m->lock
 * throughout: no other operation comes between. */
static enum mgr_err incoming_vm(struct mgr *m, struct incoming *in, struct mgr_vm **out)
{
	struct mgr_vm *vm;
	enum mgr_err e;

	*out = NULL;
	in->existed = mgr_find(m, in->name) != NULL;
	if (!in->existed) {
		e = mgr_create(m, &in->def);
		if (e == MGR_OK && !(*out = mgr_acquire(m, in->name))) {
			err_set(-ENOENT, "VM '%s' vanished", in->name);
			e = MGR_E_FAILED;
		}
		return e;
	}
	vm = mgr_acquire(m, in->name);
	if (!vm) {
		err_set(-ENOENT, "VM '%s' vanished", in->name);
		return MGR_E_CONFLICT;
	}
	if (mgr_vm_active(vm) || store_vm_locked(m, in->name)) {
		err_set(-EBUSY, "VM '%s' is %s here", in->name, mgr_vm_active(vm) ?
			mgr_state_name(vm->state) : "held by a VMM");
		mgr_release(m, vm);
		return MGR_E_CONFLICT;
	}
	if (storage_check(m, &in->def) || store_save_def(m, &in->def)) {
		mgr_release(m, vm);
		return MGR_E_BAD;
	}
	vm_def_free(&vm->def);
	vm->def = in->def;
	memset(&in->def, 0, sizeof(in->def));
	*out = vm;
	return MGR_OK;
}

/* The VMM, given the socket bound here if there is one (it listens on
 * it); the daemon's copy is closed either way. */
static enum mgr_err start_vmm(struct mgr *m, struct mgr_vm *vm, struct incoming *in)
{
	char fduri[32];
	enum mgr_err e;

	snprintf(fduri, sizeof(fduri), "fd:%d", in->lfd);
	e = mgr_start_incoming(m, vm, in->lfd >= 0 ? fduri : in->uri, in->lfd, in->token_path);
	if (in->lfd >= 0)
		close(in->lfd);
	in->lfd = -1;
	return e;
}

static void *incoming_thread(void *arg)
{
	struct incoming *in = arg;
	struct mgr *m = in->m;
	struct mgr_vm *vm;
	enum mgr_err e;
	bool ran = false;

	pthread_mutex_lock(&m->lock);
	e = incoming_vm(m, in, &vm);
	if (vm)
		vm->incoming_copy = in->copy_storage;
	if (e == MGR_OK)
		e = start_vmm(m, vm, in);
	if (e == MGR_OK && wait_listening(m, vm, in->uri))
		e = MGR_E_FAILED;
	if (vm)
		vm->incoming_copy = false;
	/* The VMM has read it (it listens) or never will. */
	unlink(in->token_path);
	answer(in, e);
	if (e == MGR_OK)
		ran = incoming_wait(m, vm, in);
	if (vm && !ran)
		incoming_remove(m, vm, in->existed);
	if (vm)
		mgr_release(m, vm);
	pthread_mutex_unlock(&m->lock);
	return NULL;
}

static void incoming_free(struct incoming *in)
{
	if (in->lfd >= 0)
		close(in->lfd);
	vm_def_free(&in->def);
	pthread_cond_destroy(&in->cond);
	pthread_mutex_destroy(&in->lock);
	free(in);
}

/* The thread owns `in` from its answer on (it frees it after). */
static void *incoming_main(void *arg)
{
	incoming_thread(arg);
	incoming_free(arg);
	return NULL;
}

static enum mgr_err incoming_prepare(struct mgr *m, const char *name, struct json_object *body,
				     struct incoming *in, char *token, size_t tsize, bool *made)
{
	if (parse_incoming(body, in, token, tsize, made))
		return MGR_E_BAD;
	if (vm_def_check_new(&in->def, m->state_dir) || mgr_net_check_def(m, &in->def))
		return MGR_E_BAD;
	if (mgr_find(m, name) && mgr_vm_active(mgr_find(m, name))) {
		err_set(-EBUSY, "VM '%s' is %s here", name, mgr_state_name(mgr_find(m, name)->state));
		return MGR_E_CONFLICT;
	}
	if (!in->uri[0] && (in->lfd = pick_listen(m, in->uri, sizeof(in->uri))) < 0)
		return MGR_E_CONFLICT;
	if (store_path(m, in->token_path, sizeof(in->token_path), "run", name, ".token") ||
	    token_write(in->token_path, token))
		return MGR_E_FAILED;
	return MGR_OK;
}

enum mgr_err mgr_migrate_incoming(struct mgr *m, const char *name, struct json_object *body,
				  struct json_object **out)
{
	struct incoming *in = calloc(1, sizeof(*in));
	char token[MIG_TOKEN_MAX + 1], uri[sizeof(in->uri)];
	enum mgr_err e;
	bool made;
	pthread_t t;

	if (!in) {
		err_set(-ENOMEM, "out of memory");
		return MGR_E_FAILED;
	}
	in->m = m;
	in->timeout_s = MIG_INCOMING_TIMEOUT_S;
	in->lfd = -1;
	snprintf(in->name, sizeof(in->name), "%s", name);
	pthread_mutex_init(&in->lock, NULL);
	pthread_cond_init(&in->cond, NULL);
	e = incoming_prepare(m, name, body, in, token, sizeof(token), &made);
	snprintf(uri, sizeof(uri), "%s", in->uri);
	if (e == MGR_OK && pthread_create(&t, NULL, incoming_main, in)) {
		unlink(in->token_path);
		err_set(-EAGAIN, "cannot start a thread");
		e = MGR_E_FAILED;
	}
	if (e != MGR_OK) {
		incoming_free(in);
		return e;
	}
	pthread_detach(t);
	/* The thread takes m->lock: it is given up while waiting for it. */
	pthread_mutex_unlock(&m->lock);
	pthread_mutex_lock(&in->lock);
	while (!in->answered)
		pthread_cond_wait(&in->cond, &in->lock);
	e = in->e;
	err_set(-EIO, "%s", in->why);
	in->answered = false;	/* now the thread may free it */
	pthread_cond_signal(&in->cond);
	pthread_mutex_unlock(&in->lock);
	pthread_mutex_lock(&m->lock);
	if (e != MGR_OK)
		return e;
	*out = json_object_new_object();
	json_object_object_add(*out, "name", json_object_new_string(name));
	json_object_object_add(*out, "state", json_object_new_string("incoming"));
	json_object_object_add(*out, "listen", json_object_new_string(uri));
	if (made)
		json_object_object_add(*out, "token", json_object_new_string(token));
	log_info("VM %s: waiting for a migration on %s", name, uri);
	return MGR_OK;
}

/* ---- the source ---- */

struct outgoing {
	char uri[128];
	char token[MIG_TOKEN_MAX + 1];
	int64_t max_downtime_ms, bandwidth;  /* 0: the VMM's default */
	unsigned int timeout_s;
	bool copy_storage;
};

static int int_field(struct json_object *v, const char *key, int64_t max, int64_t *out)
{
	if (!json_object_is_type(v, json_type_int) || json_object_get_int64(v) < 1 ||
	    json_object_get_int64(v) > max)
		return err_set(-EINVAL, "'%s' must be 1..%lld", key, (long long)max);
	*out = json_object_get_int64(v);
	return 0;
}

static int parse_outgoing(struct json_object *body, struct outgoing *o)
{
	int64_t t = MIG_TIMEOUT_S;
	int ret = 0;

	*o = (struct outgoing){ 0 };
	json_object_object_foreach(body, key, v) {
		if (!strcmp(key, "uri") || !strcmp(key, "token")) {
			if (!json_object_is_type(v, json_type_string))
				return err_set(-EINVAL, "'%s' must be a string", key);
			ret = !strcmp(key, "uri") ? uri_check(json_object_get_string(v)) :
			      token_check(json_object_get_string(v));
			snprintf(!strcmp(key, "uri") ? o->uri : o->token, !strcmp(key, "uri") ?
				 sizeof(o->uri) : sizeof(o->token), "%s", json_object_get_string(v));
		} else if (!strcmp(key, "max_downtime_ms")) {
			ret = int_field(v, key, 3600000, &o->max_downtime_ms);
		} else if (!strcmp(key, "bandwidth")) {
			ret = int_field(v, key, INT64_MAX, &o->bandwidth);
		} else if (!strcmp(key, "timeout_s")) {
			ret = int_field(v, key, 86400, &t);
		} else if (!strcmp(key, "copy_storage")) {
			if (!json_object_is_type(v, json_type_boolean))
				return err_set(-EINVAL, "'copy_storage' must be true or false");
			o->copy_storage = json_object_get_boolean(v);
		} else {
			ret = err_set(-EINVAL, "unknown field '%.64s'", key);
		}
		if (ret)
			return ret;
	}
	if (!o->uri[0])
		return err_set(-EINVAL, "a migration needs 'uri': \"tcp:HOST:PORT\"");
	if (!o->token[0])
		return err_set(-EINVAL, "a migration needs the destination's 'token'");
	o->timeout_s = (unsigned int)t;
	return 0;
}

/* One address: a non-blocking connect, given until end (CLOCK_MONOTONIC
 * ms); the socket, blocking again (the VMM's I/O has its own timeouts), or
 * -errno. */
static int connect_one(const struct addrinfo *a, uint64_t end)
{
	int fd = socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
	int err = 0, n;
	socklen_t len = sizeof(err);
	struct pollfd p = { .fd = fd, .events = POLLOUT };

	if (fd < 0)
		return -errno;
	if (connect(fd, a->ai_addr, a->ai_addrlen) && errno != EINPROGRESS) {
		err = errno;
		goto fail;
	}
	do {
		uint64_t now = now_ms();

		n = now < end ? poll(&p, 1, (int)(end - now)) : 0;
	} while (n < 0 && errno == EINTR);
	if (n <= 0)
		err = n ? errno : ETIMEDOUT;
	else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (!err && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0)
		err = errno;
	if (!err)
		return fd;
fail:
	close(fd);
	return -err;
}

/* The daemon makes the migration's connection and hands it to the VMM,
 * which its sandbox keeps from connecting anywhere (as libvirt hands QEMU
 * a migration fd). Numeric addresses only, as the VMM took them: a name
 * lookup would not keep to the deadline. The socket, or -errno with
 * err_set(). Called with m->lock free. */
static int migration_connect(const char *uri)
{
	uint64_t end = now_ms() + MIG_CONNECT_TIMEOUT_S * 1000;
	struct addrinfo *ai, *a;
	int fd = -EHOSTUNREACH, ret = migrate_resolve(uri, &ai);

	if (ret)
		return ret;
	for (a = ai; a && fd < 0 && fd != -ETIMEDOUT; a = a->ai_next)
		fd = connect_one(a, end);
	freeaddrinfo(ai);
	if (fd == -ETIMEDOUT)
		return err_set(fd, "cannot connect to %s: no answer within %d s", uri,
			       MIG_CONNECT_TIMEOUT_S);
	if (fd < 0)
		return err_set(fd, "cannot connect to %s: %s", uri, strerror(-fd));
	return fd;
}

/* The VMM's `migrate` over the connected socket fd, passed with it. */
static enum mgr_err start_vmm_migration(struct mgr *m, struct mgr_vm *vm,
					const struct outgoing *o, int fd)
{
	struct json_object *req = json_object_new_object();
	enum mgr_err e;

	json_object_object_add(req, "action", json_object_new_string("migrate"));
	json_object_object_add(req, "uri", json_object_new_string("fd"));
	json_object_object_add(req, "token", json_object_new_string(o->token));
	if (o->max_downtime_ms)
		json_object_object_add(req, "max_downtime_ms",
				       json_object_new_int64(o->max_downtime_ms));
	if (o->bandwidth)
		json_object_object_add(req, "bandwidth", json_object_new_int64(o->bandwidth));
	if (o->copy_storage)
		json_object_object_add(req, "copy_storage", json_object_new_boolean(true));
	e = mgr_control(m, vm, json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN),
			VMM_REQUEST_TIMEOUT_MS, &fd, 1, NULL);
	json_object_put(req);
	return e;
}

/* After the handover the source's VMM only waits for the destination's
 * "running" before it exits: one that does not is killed (it never resumes
 * the guest, which runs there). */
#define MIG_EXIT_GRACE_MS 30000

/* Follows the VMM's migration to its end. MGR_OK: handed over and the
 * VMM exited ("migrated"); *last: its last migration figures. */
static enum mgr_err follow(struct mgr *m, struct mgr_vm *vm, const struct outgoing *o,
			   struct json_object **last)
{
	uint64_t end = now_ms() + (uint64_t)o->timeout_s * 1000, completed = 0;
	bool cancelled = false;

	for (;; nap(m, MIG_POLL_MS)) {
		struct json_object *mig;
		const char *state;
		pid_t pid = vm->pid;

		if (vmm_reap(m, vm)) {
			/* A quick migration ends between two polls: its
			 * figures are in the status file. */
			mig = vmm_status_migration(m, vm, pid);
			if (mig) {
				json_object_put(*last);
				*last = mig;
			}
			if (!strcmp(vm->reason, "migrated") || completed)
				return MGR_OK;
			err_set(-EIO, "the VMM ended during the migration: %s", vm->reason);
			return MGR_E_FAILED;
		}
		mig = vmm_migration(m, vm, VMM_REQUEST_TIMEOUT_MS);
		if (mig) {
			json_object_put(*last);
			*last = mig;
		}
		state = field(mig, "state");
		if (!strcmp(state, "failed") || !strcmp(state, "cancelled")) {
			err_set(-EIO, "migration to %s %s: %s", o->uri, state, field(mig, "error"));
			return strcmp(state, "cancelled") ? MGR_E_FAILED : MGR_E_CONFLICT;
		}
		if (!completed && !strcmp(state, "completed"))
			completed = now_ms();
		if (completed && now_ms() - completed > MIG_EXIT_GRACE_MS) {
			log_warn("VM %s: handed over, but its VMM does not exit: killed",
				 vm->def.name);
			vmm_kill(m, vm);
			continue;
		}
		/* Past the deadline: cancelled, which leaves the VM here (a
		 * handover already under way completes). */
		if (!cancelled && now_ms() >= end) {
			log_warn("VM %s: the migration takes more than %u s: cancelling it",
				 vm->def.name, o->timeout_s);
			mgr_control(m, vm, "{\"action\":\"migrate-cancel\"}", VMM_REQUEST_TIMEOUT_MS,
				    NULL, 0, NULL);
			cancelled = true;
		}
		if (cancelled && !completed && now_ms() >= end + MIG_EXIT_GRACE_MS) {
			err_set(-ETIMEDOUT, "the VMM did not end the migration within %u s of its "
				"cancel", MIG_EXIT_GRACE_MS / 1000);
			return MGR_E_FAILED;
		}
	}
}

enum mgr_err mgr_migrate(struct mgr *m, struct mgr_vm *vm, struct json_object *body,
			 struct json_object **out)
{
	struct json_object *last = NULL;
	uint64_t t0 = now_ms();
	struct outgoing o;
	enum mgr_err e;
	int fd;

	if (parse_outgoing(body, &o))
		return MGR_E_BAD;
	if (vm->state != MGR_RUNNING && vm->state != MGR_PAUSED) {
		err_set(-EBUSY, "VM '%s' is %s: only a running or paused VM migrates",
			vm->def.name, mgr_state_name(vm->state));
		return MGR_E_CONFLICT;
	}
	/* The VM's operation lock keeps it ours while the table is free. */
	pthread_mutex_unlock(&m->lock);
	fd = migration_connect(o.uri);
	pthread_mutex_lock(&m->lock);
	e = fd < 0 ? MGR_E_FAILED : start_vmm_migration(m, vm, &o, fd);
	if (fd >= 0)
		close(fd);      /* the VMM has its own now, or failed */
	if (e != MGR_OK) {
		log_warn("VM %s: migration to %s: %s", vm->def.name, o.uri, err_get());
		return e;
	}
	snprintf(vm->migrating_to, sizeof(vm->migrating_to), "%s", o.uri);
	log_info("VM %s: migrating to %s", vm->def.name, o.uri);
	e = follow(m, vm, &o, &last);
	vm->migrating_to[0] = '\0';
	if (e == MGR_OK) {
		/* Stopped here for good: the guest runs there. */
		snprintf(vm->reason, sizeof(vm->reason), "migrated to %s", o.uri);
		store_save_run(m, vm);
		log_info("VM %s: migrated to %s", vm->def.name, o.uri);
		*out = mgr_vm_json(m, vm, false);
		/* The VMM's last figures; it may have exited before it said
		 * "completed" (its exit status said it). */
		if (!last)
			last = json_object_new_object();
		json_object_object_add(last, "state", json_object_new_string("completed"));
		if (!json_object_object_get_ex(last, "total_ms", NULL))
			json_object_object_add(last, "total_ms",
					       json_object_new_int64((int64_t)(now_ms() - t0)));
		json_object_object_add(*out, "migration", json_object_get(last));
	} else {
		log_warn("VM %s: %s", vm->def.name, err_get());
	}
	json_object_put(last);
	return e;
}

enum mgr_err mgr_migrate_cancel(struct mgr *m, struct mgr_vm *vm)
{
	char sock[PATH_MAX];
	struct json_object *r, *ok, *v;
	enum mgr_err e = MGR_OK;

	if (vm->state != MGR_RUNNING && vm->state != MGR_PAUSED) {
		err_set(-EBUSY, "VM '%s' is %s", vm->def.name, mgr_state_name(vm->state));
		return MGR_E_CONFLICT;
	}
	if (store_path(m, sock, sizeof(sock), "run", vm->def.name, ".sock"))
		return MGR_E_FAILED;
	mgr_ref(vm);
	pthread_mutex_unlock(&m->lock);
	r = vmm_request(sock, "{\"action\":\"migrate-cancel\"}");
	pthread_mutex_lock(&m->lock);
	mgr_unref(m, vm);
	if (!r)
		return MGR_E_FAILED;
	if (!json_object_object_get_ex(r, "ok", &ok) || !json_object_get_boolean(ok)) {
		err_set(-EIO, "%s", json_object_object_get_ex(r, "error", &v) ?
			json_object_get_string(v) : "the VMM refused");
		e = MGR_E_CONFLICT;
	}
	json_object_put(r);
	return e;
}
