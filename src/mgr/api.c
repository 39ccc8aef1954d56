/* The daemon's HTTP/1.1 JSON API on a Unix socket (libmicrohttpd), so that
 * `curl --unix-socket PATH http://localhost/vms` works. Routes and bodies
 * are documented in docs/api.md. Each connection has its own thread; an
 * operation on a VM holds that VM's lock (include/vireo/mgr.h), so two
 * clients changing one VM are served one after the other, each with a
 * consistent answer, while other VMs and reads go on. Bodies are capped at
 * MGR_MAX_BODY (413 past it); every error is a JSON object
 * {"error": MESSAGE, "code": CLASS} with an HTTP status.
 *
 * No client can hold the API (issue 10): a request must be in whole
 * (headers and body) within the request timeout, or its connection is cut
 * (MHD's own timeout only counts idle time: a byte every few seconds would
 * keep a connection for ever); and past API_MAX_CONNS connections, a new one
 * takes the place of the oldest still sending its request. */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <dlfcn.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "vireo/log.h"
#include "vireo/sock.h"
#include "vireo/mgr.h"

/* libmicrohttpd is loaded here, when the daemon starts, not linked: it
 * pulls in gnutls and eight more libraries (~2.4 MiB of resident pages and
 * p11-kit's start-up work), which every `vireo run` VMM would otherwise
 * carry although only the daemon serves HTTP. */
static struct {
	__typeof__(MHD_start_daemon) *start_daemon;
	__typeof__(MHD_stop_daemon) *stop_daemon;
	__typeof__(MHD_create_response_from_buffer) *create_response_from_buffer;
	__typeof__(MHD_add_response_header) *add_response_header;
	__typeof__(MHD_queue_response) *queue_response;
	__typeof__(MHD_destroy_response) *destroy_response;
	__typeof__(MHD_get_connection_info) *get_connection_info;
} mhd;

static int mhd_load(void)
{
	static const char *const names[] = { "libmicrohttpd.so.12", "libmicrohttpd.so" };
	void *lib = NULL;

	if (mhd.start_daemon)
		return 0;
	for (size_t i = 0; !lib && i < sizeof(names) / sizeof(names[0]); i++)
		lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
	if (!lib)
		return err_set(-ENOENT, "cannot load libmicrohttpd (Debian package "
			       "libmicrohttpd12): %s", dlerror());
	*(void **)&mhd.stop_daemon = dlsym(lib, "MHD_stop_daemon");
	*(void **)&mhd.create_response_from_buffer = dlsym(lib, "MHD_create_response_from_buffer");
	*(void **)&mhd.add_response_header = dlsym(lib, "MHD_add_response_header");
	*(void **)&mhd.queue_response = dlsym(lib, "MHD_queue_response");
	*(void **)&mhd.destroy_response = dlsym(lib, "MHD_destroy_response");
	*(void **)&mhd.get_connection_info = dlsym(lib, "MHD_get_connection_info");
	*(void **)&mhd.start_daemon = dlsym(lib, "MHD_start_daemon");
	if (!mhd.stop_daemon || !mhd.create_response_from_buffer || !mhd.add_response_header ||
	    !mhd.queue_response || !mhd.destroy_response || !mhd.get_connection_info ||
	    !mhd.start_daemon) {
		mhd.start_daemon = NULL;
		return err_set(-ENOENT, "libmicrohttpd lacks a function vireo uses: %s", dlerror());
	}
	return 0;
}

/* Connections: past API_MAX_CONNS the oldest one still sending its request
 * is cut for a new one; MHD itself takes API_SPARE_CONNS more, so that the
 * new one is accepted even while every other is being answered. */
#define API_MAX_CONNS 64
#define API_SPARE_CONNS 16
#define API_WATCH_MS 100
/* Waiting for the VMM's info in GET /vms/NAME; past it, the cached one. */
#define API_LIVE_INFO_MS 1000

/* One connection (MHD's socket context). */
struct conn {
	int fd;                   /* a dup of its socket: shutdown() ends it */
	uint64_t deadline;        /* ms by which the request must be in; 0 while
				   * it is answered */
	uint64_t since;           /* when its current request began */
	bool cut;
	struct conn *prev, *next;
};

struct api {
	struct mgr *mgr;
	struct MHD_Daemon *mhd;
	int fd;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	uint64_t timeout_ms;      /* for a whole request */
	pthread_mutex_t lock;     /* the connections */
	struct conn *conns;
	unsigned int nlive;       /* connections not cut */
	pthread_t watchdog;
	pthread_cond_t cond;
	bool watching, quit;
};

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Ends a connection from outside its thread: MHD sees the socket shut and
 * closes it. The dup keeps the socket (and its number) ours until then. */
static void conn_cut(struct api *api, struct conn *k)
{
	if (k->cut)
		return;
	k->cut = true;
	api->nlive--;
	if (k->fd >= 0)
		shutdown(k->fd, SHUT_RDWR);
}

/* Makes room for `fresh`: cuts the connection whose request began first
 * among those still sending one. */
static void conn_make_room(struct api *api, struct conn *fresh)
{
	struct conn *old = NULL;

	for (struct conn *k = api->conns; k; k = k->next)
		if (k != fresh && !k->cut && k->deadline && (!old || k->since < old->since))
			old = k;
	if (old) {
		log_ratelimited("API: %u connections: cutting the oldest unfinished request "
				"(%llu ms old) for a new client", api->nlive,
				(unsigned long long)(mono_ms() - old->since));
		conn_cut(api, old);
	}
}

static void api_notify(void *cls, struct MHD_Connection *c, void **socket_context,
		       enum MHD_ConnectionNotificationCode toe)
{
	struct api *api = cls;
	struct conn *k = *socket_context;

	if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
		const union MHD_ConnectionInfo *ci =
			mhd.get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);

		k = calloc(1, sizeof(*k));
		if (!k)
			return;
		k->fd = ci ? fcntl(ci->connect_fd, F_DUPFD_CLOEXEC, 0) : -1;
		k->since = mono_ms();
		k->deadline = k->since + api->timeout_ms;
		pthread_mutex_lock(&api->lock);
		k->next = api->conns;
		if (k->next)
			k->next->prev = k;
		api->conns = k;
		if (++api->nlive > API_MAX_CONNS)
			conn_make_room(api, k);
		pthread_mutex_unlock(&api->lock);
		*socket_context = k;
		return;
	}
	if (!k)
		return;
	pthread_mutex_lock(&api->lock);
	if (k->prev)
		k->prev->next = k->next;
	else
		api->conns = k->next;
	if (k->next)
		k->next->prev = k->prev;
	if (!k->cut)
		api->nlive--;
	pthread_mutex_unlock(&api->lock);
	if (k->fd >= 0)
		close(k->fd);
	free(k);
	*socket_context = NULL;
}

/* The request is in (answering: no deadline), or answered (the deadline
 * runs again for the next request on the connection). */
static void conn_set_busy(struct api *api, struct MHD_Connection *c, bool busy)
{
	const union MHD_ConnectionInfo *ci =
		mhd.get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	struct conn *k = ci ? ci->socket_context : NULL;

	if (!k)
		return;
	pthread_mutex_lock(&api->lock);
	k->since = mono_ms();
	k->deadline = busy ? 0 : k->since + api->timeout_ms;
	pthread_mutex_unlock(&api->lock);
}

/* Cuts each connection whose request is not in by its deadline. */
static void *api_watchdog(void *arg)
{
	struct api *api = arg;

	pthread_mutex_lock(&api->lock);
	while (!api->quit) {
		struct timespec until;
		uint64_t now = mono_ms();

		for (struct conn *k = api->conns; k; k = k->next)
			if (!k->cut && k->deadline && now >= k->deadline) {
				log_ratelimited("API: a request took more than %llu ms to "
						"arrive: connection cut",
						(unsigned long long)api->timeout_ms);
				conn_cut(api, k);
			}
		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_nsec += API_WATCH_MS * 1000000L;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&api->cond, &api->lock, &until);
	}
	pthread_mutex_unlock(&api->lock);
	return NULL;
}

/* One request's upload. */
struct upload {
	size_t len;
	bool too_big;
	char *body;
};

struct reply {
	unsigned int status;
	struct json_object *json; /* or text */
	char *text;
	const char *allow;        /* for 405 */
};

static void reply_error(struct reply *r, unsigned int status, const char *code, const char *msg)
{
	r->status = status;
	r->json = json_object_new_object();
	json_object_object_add(r->json, "error", json_object_new_string(msg));
	json_object_object_add(r->json, "code", json_object_new_string(code));
}

static void reply_mgr_error(struct reply *r, enum mgr_err e)
{
	static const struct { unsigned int status; const char *code; } map[] = {
		[MGR_OK] = { 200, "ok" },
		[MGR_E_BAD] = { 400, "bad-request" },
		[MGR_E_NOT_FOUND] = { 404, "not-found" },
		[MGR_E_CONFLICT] = { 409, "conflict" },
		[MGR_E_FAILED] = { 500, "failed" },
	};

	reply_error(r, map[e].status, map[e].code, err_get());
}

/* The body as a JSON object; an empty body is NULL with no error when
 * `optional`. Returns -1 after filling a 400 reply. */
static int parse_body(const struct upload *u, bool optional, struct json_object **out,
		      struct reply *r)
{
	struct json_tokener *tok;
	struct json_object *obj;
	enum json_tokener_error jerr;

	*out = NULL;
	if (!u->len) {
		if (optional)
			return 0;
		reply_error(r, 400, "bad-request", "this request needs a JSON body");
		return -1;
	}
	tok = json_tokener_new_ex(32);
	obj = tok ? json_tokener_parse_ex(tok, u->body, (int)u->len) : NULL;
	jerr = tok ? json_tokener_get_error(tok) : json_tokener_error_parse_unexpected;
	if (obj && jerr == json_tokener_success) {
		/* A NUL ends json-c's parse early: bytes after it are trailing
		 * data too (strchr() would match the NUL itself). */
		for (size_t i = json_tokener_get_parse_end(tok); i < u->len && obj; i++)
			if (!u->body[i] || !strchr(" \t\r\n", u->body[i])) {
				json_object_put(obj);
				obj = NULL;
			}
	}
	json_tokener_free(tok);
	if (!obj || jerr != json_tokener_success || !json_object_is_type(obj, json_type_object)) {
		char msg[160];

		snprintf(msg, sizeof(msg), "the body must be one JSON object (%s)",
			 obj || jerr == json_tokener_success ? "trailing data or not an object" :
			 jerr == json_tokener_continue ? "unexpected end of the body" :
			 json_tokener_error_desc(jerr));
		json_object_put(obj);
		reply_error(r, 400, "bad-request", msg);
		return -1;
	}
	*out = obj;
	return 0;
}

static void route_list(struct mgr *m, struct reply *r)
{
	struct json_object *arr = json_object_new_array();

	for (struct mgr_vm *vm = m->vms; vm; vm = vm->next)
		json_object_array_add(arr, mgr_vm_json(m, vm, false));
	r->json = json_object_new_object();
	json_object_object_add(r->json, "vms", arr);
	json_object_object_add(r->json, "cgroup", json_object_new_string(cgroup_mode_name(m->cg.mode)));
	if (m->cg.mode == CGROUP_NONE)
		json_object_object_add(r->json, "cgroup_reason", json_object_new_string(m->cg.reason));
	r->status = 200;
}

static void route_create(struct mgr *m, const struct upload *u, struct reply *r)
{
	struct json_object *body;
	struct vm_def def;
	char name[MGR_NAME_MAX + 1];
	const char *unreadable;
	enum mgr_err e;

	if (parse_body(u, false, &body, r))
		return;
	if (vm_def_from_json(body, &def)) {
		json_object_put(body);
		reply_error(r, 400, "bad-request", err_get());
		return;
	}
	json_object_put(body);
	if (vm_def_check_new(&def, m->state_dir) || mgr_net_check_def(m, &def)) {
		vm_def_free(&def);
		return reply_error(r, 400, "bad-request", err_get());
	}
	unreadable = def.kernel && access(def.kernel, R_OK) < 0 ? def.kernel :
		     def.firmware && access(def.firmware, R_OK) < 0 ? def.firmware :
		     def.initrd && access(def.initrd, R_OK) < 0 ? def.initrd : NULL;
	if (unreadable) {
		err_set(-errno, "cannot read %s %s: %m", unreadable == def.kernel ? "kernel" :
			unreadable == def.firmware ? "firmware" : "initrd", unreadable);
		vm_def_free(&def);
		reply_mgr_error(r, MGR_E_BAD);
		return;
	}
	strcpy(name, def.name);
	e = mgr_create(m, &def);
	if (e != MGR_OK)
		return reply_mgr_error(r, e);
	r->status = 201;
	r->json = mgr_vm_json(m, mgr_find(m, name), false);
}

static void route_patch(struct mgr *m, struct mgr_vm *vm, const struct upload *u, struct reply *r)
{
	struct json_object *body;
	struct vm_patch p;
	enum mgr_err e;

	if (parse_body(u, false, &body, r))
		return;
	if (vm_patch_from_json(body, &vm->def, &p)) {
		json_object_put(body);
		return reply_error(r, 400, "bad-request", err_get());
	}
	json_object_put(body);
	if (p.has_pin && vm_pins_check_host(p.cpu_pin, p.npin)) {
		vm_patch_free(&p);
		return reply_error(r, 400, "bad-request", err_get());
	}
	e = mgr_patch(m, vm, &p);
	vm_patch_free(&p);
	if (e != MGR_OK)
		return reply_mgr_error(r, e);
	r->status = 200;
	r->json = mgr_vm_json(m, vm, false);
}

/* Body of start/pause/resume/reboot: none or {}; of stop:
 * {"force": bool, "timeout": seconds}. */
struct action_args {
	bool force;
	unsigned int timeout_s;
};

static int bad_field(struct reply *r, const char *msg)
{
	reply_error(r, 400, "bad-request", msg);
	return -1;
}

static int unknown_field(struct reply *r, const char *key)
{
	char msg[128];

	snprintf(msg, sizeof(msg), "unknown field '%.64s'", key);
	return bad_field(r, msg);
}

static int stop_field(const char *key, struct json_object *v, struct action_args *a,
		      struct reply *r)
{
	if (!strcmp(key, "force")) {
		if (!json_object_is_type(v, json_type_boolean))
			return bad_field(r, "'force' must be true or false");
		a->force = json_object_get_boolean(v);
		return 0;
	}
	if (!strcmp(key, "timeout")) {
		int64_t t = json_object_get_int64(v);

		if (!json_object_is_type(v, json_type_int) || t < 0 || t > MGR_STOP_TIMEOUT_MAX_S)
			return bad_field(r, "'timeout' must be whole seconds from 0 to 3600");
		a->timeout_s = (unsigned int)t;
		return 0;
	}
	return unknown_field(r, key);
}

static int action_body(const struct upload *u, bool stop, struct action_args *a, struct reply *r)
{
	struct json_object *body;
	int ret = 0;

	*a = (struct action_args){ .timeout_s = MGR_STOP_TIMEOUT_S };
	if (parse_body(u, true, &body, r))
		return -1;
	if (!body)
		return 0;
	json_object_object_foreach(body, key, val) {
		ret = stop ? stop_field(key, val, a, r) : unknown_field(r, key);
		if (ret)
			break;
	}
	json_object_put(body);
	return ret;
}

/* POST /vms/NAME/firewall: a vNIC's firewall replaced, live (nicfw.c). */
static void route_firewall(struct mgr *m, struct mgr_vm *vm, const struct upload *u,
			   struct reply *r)
{
	struct json_object *body;
	enum mgr_err e;

	if (parse_body(u, false, &body, r))
		return;
	e = mgr_fw_update(m, vm, body);
	json_object_put(body);
	if (e != MGR_OK)
		return reply_mgr_error(r, e);
	r->status = 200;
	r->json = mgr_vm_json(m, vm, false);
}

/* POST /vms/NAME/migrate (migrate.c): the reply comes at the end of the
 * migration; GET /vms/NAME shows its progress meanwhile. */
static void route_migrate(struct mgr *m, struct mgr_vm *vm, const struct upload *u,
			  struct reply *r)
{
	struct json_object *body;
	enum mgr_err e;

	if (parse_body(u, false, &body, r))
		return;
	e = mgr_migrate(m, vm, body, &r->json);
	json_object_put(body);
	if (e != MGR_OK)
		return reply_mgr_error(r, e);
	r->status = 200;
}

/* POST /vms/NAME/incoming: the VM does not exist here yet. */
static void route_incoming(struct mgr *m, const char *method, const char *name,
			   const struct upload *u, struct reply *r)
{
	struct json_object *body;
	enum mgr_err e;

	if (strcmp(method, "POST")) {
		r->allow = "POST";
		return reply_error(r, 405, "method-not-allowed", "use POST");
	}
	if (!vm_name_valid(name))
		return reply_error(r, 400, "bad-request", "bad VM name: 1 to 64 of A-Z a-z 0-9 _ . -, "
				   "not starting with '.' or '-'");
	if (parse_body(u, false, &body, r))
		return;
	e = mgr_migrate_incoming(m, name, body, &r->json);
	json_object_put(body);
	if (e != MGR_OK)
		return reply_mgr_error(r, e);
	r->status = 202;
}

/* POST /vms/NAME/migrate-cancel: not behind the migrate request, which
 * holds the VM's operation lock until the migration ends. */
static void route_migrate_cancel(struct mgr *m, const char *method, const char *name,
				 struct reply *r)
{
	struct mgr_vm *vm = vm_name_valid(name) ? mgr_find(m, name) : NULL;
	enum mgr_err e;

	if (strcmp(method, "POST")) {
		r->allow = "POST";
		return reply_error(r, 405, "method-not-allowed", "use POST");
	}
	if (!vm)
		return reply_error(r, 404, "not-found", "no such VM");
	e = mgr_migrate_cancel(m, vm);
	if (e != MGR_OK)
		return reply_mgr_error(r, e);
	r->status = 200;
	r->json = json_object_new_object();
	json_object_object_add(r->json, "cancelled", json_object_new_boolean(true));
}

static void route_action(struct mgr *m, struct mgr_vm *vm, const char *action,
			 const struct upload *u, struct reply *r)
{
	struct action_args a;
	enum mgr_err e;

	if (!strcmp(action, "firewall"))
		return route_firewall(m, vm, u, r);
	if (!strcmp(action, "migrate"))
		return route_migrate(m, vm, u, r);
	if (strcmp(action, "start") && strcmp(action, "stop") && strcmp(action, "pause") &&
	    strcmp(action, "resume") && strcmp(action, "reboot"))
		return reply_error(r, 404, "not-found",
				   "unknown action (start, stop, pause, resume, reboot, firewall, "
				   "migrate, migrate-cancel, incoming)");
	if (action_body(u, !strcmp(action, "stop"), &a, r))
		return;
	if (!strcmp(action, "start"))
		e = mgr_start(m, vm);
	else if (!strcmp(action, "stop"))
		e = mgr_stop(m, vm, a.force, a.timeout_s);
	else if (!strcmp(action, "reboot"))
		e = mgr_reboot(m, vm);
	else
		e = mgr_pause(m, vm, !strcmp(action, "pause"));
	if (e != MGR_OK)
		return reply_mgr_error(r, e);
	/* 202: a graceful stop goes on after the reply (state "stopping"). */
	r->status = vm->state == MGR_STOPPING ? 202 : 200;
	r->json = mgr_vm_json(m, vm, false);
	if (!strcmp(action, "start") && vm->warning[0]) {
		struct json_object *w = json_object_new_array();

		json_object_array_add(w, json_object_new_string(vm->warning));
		json_object_object_add(r->json, "warnings", w);
	}
}

static void reply_no_vm(struct reply *r, const char *name)
{
	char msg[128];

	snprintf(msg, sizeof(msg), "no VM named '%.64s'", name);
	reply_error(r, 404, "not-found", msg);
}

/* GET /vms/NAME: the VMM's figures asked now, with a short deadline and
 * without the VM's lock (an operation on it may be long); the cached ones
 * if it does not answer in time. */
static void route_get(struct mgr *m, struct mgr_vm *vm, struct reply *r)
{
	mgr_ref(vm);
	mgr_refresh_info(m, vm, API_LIVE_INFO_MS);
	if (vm->deleted) {
		reply_no_vm(r, vm->def.name);
	} else {
		r->status = 200;
		r->json = mgr_vm_json(m, vm, true);
	}
	mgr_unref(m, vm);
}

/* Under the VM's operation lock. */
static void route_delete(struct mgr *m, struct mgr_vm *vm, struct reply *r)
{
	char name[MGR_NAME_MAX + 1];
	enum mgr_err e;

	snprintf(name, sizeof(name), "%s", vm->def.name);
	e = mgr_delete(m, vm);
	if (e != MGR_OK)
		return reply_mgr_error(r, e);
	r->status = 200;
	r->json = json_object_new_object();
	json_object_object_add(r->json, "deleted", json_object_new_string(name));
}

static void route_vm(struct mgr *m, const char *method, const char *name, const char *action,
		     const struct upload *u, struct reply *r)
{
	struct mgr_vm *vm;

	if (!vm_name_valid(name))
		return reply_error(r, 400, "bad-request", "bad VM name: 1 to 64 of A-Z a-z 0-9 _ . -, "
				   "not starting with '.' or '-'");
	vm = mgr_find(m, name);
	if (!vm)
		return reply_no_vm(r, name);
	if (action && strcmp(method, "POST")) {
		r->allow = "POST";
		return reply_error(r, 405, "method-not-allowed", "use POST");
	}
	if (!action && !strcmp(method, "GET"))
		return route_get(m, vm, r);
	if (!action && strcmp(method, "PATCH") && strcmp(method, "DELETE")) {
		r->allow = "GET, PATCH, DELETE";
		return reply_error(r, 405, "method-not-allowed", "use GET, PATCH or DELETE");
	}
	/* Waits for an operation on this VM in progress, not for others. */
	vm = mgr_acquire(m, name);
	if (!vm)
		return reply_no_vm(r, name);
	if (action)
		route_action(m, vm, action, u, r);
	else if (!strcmp(method, "PATCH"))
		route_patch(m, vm, u, r);
	else
		route_delete(m, vm, r);
	mgr_release(m, vm);
}

/* /vms/NAME/snapshots[/SNAP[/rollback]] (snapshot.c), under the VM's
 * operation lock: a snapshot waits for an operation on the VM in progress. */
static void snapshot_op(struct mgr *m, struct mgr_vm *vm, const char *method, const char *snap,
			const char *action, const struct upload *u, struct reply *r)
{
	struct json_object *body = NULL;
	enum mgr_err e;

	if (!snap && !strcmp(method, "GET")) {
		e = mgr_snap_list(m, vm, &r->json);
	} else if (!snap) {
		if (parse_body(u, false, &body, r))
			return;
		e = mgr_snap_create(m, vm, body, &r->json);
		json_object_put(body);
	} else if (action && !strcmp(action, "export")) {
		if (parse_body(u, false, &body, r))
			return;
		e = mgr_snap_export(m, vm, snap, body, &r->json);
		json_object_put(body);
	} else if (action) {
		if (action_body(u, false, &(struct action_args){ 0 }, r))
			return;
		e = mgr_snap_rollback(m, vm, snap);
		if (e == MGR_OK)
			r->json = mgr_vm_json(m, vm, false);
	} else {
		e = mgr_snap_delete(m, vm, snap);
		if (e == MGR_OK) {
			r->json = json_object_new_object();
			json_object_object_add(r->json, "deleted", json_object_new_string(snap));
		}
	}
	if (e != MGR_OK) {
		json_object_put(r->json);
		r->json = NULL;
		return reply_mgr_error(r, e);
	}
	r->status = !snap && strcmp(method, "GET") ? 201 : 200;
}

static void route_snapshots(struct mgr *m, const char *method, const char *name,
			    const char *snap, const char *action, const struct upload *u,
			    struct reply *r)
{
	const char *want = !snap ? "GET, POST" : action ? "POST" : "DELETE";
	struct mgr_vm *vm;

	if (action && strcmp(action, "rollback") && strcmp(action, "export"))
		return reply_error(r, 404, "not-found", "unknown snapshot action (rollback, export)");
	if (!vm_name_valid(name))
		return reply_error(r, 400, "bad-request", "bad VM name: 1 to 64 of A-Z a-z 0-9 _ . -, "
				   "not starting with '.' or '-'");
	if (snap && !vm_name_valid(snap))
		return reply_error(r, 400, "bad-request", "bad snapshot name: 1 to 64 of A-Z a-z "
				   "0-9 _ . -, not starting with '.' or '-'");
	if (!snap ? strcmp(method, "GET") && strcmp(method, "POST") :
	    strcmp(method, action ? "POST" : "DELETE")) {
		r->allow = want;
		return reply_error(r, 405, "method-not-allowed", !snap ? "use GET or POST" :
				   action ? "use POST" : "use DELETE");
	}
	if (!mgr_find(m, name))
		return reply_no_vm(r, name);
	vm = mgr_acquire(m, name);
	if (!vm)
		return reply_no_vm(r, name);
	snapshot_op(m, vm, method, snap, action, u, r);
	mgr_release(m, vm);
}

/* POST /vms/NAME/import {"dir"|"file"}: a new VM NAME from an export;
 * POST /vms/import (name NULL): named as the exported VM. */
static void route_import(struct mgr *m, const char *method, const char *name,
			 const struct upload *u, struct reply *r)
{
	struct json_object *body;
	enum mgr_err e;

	if (strcmp(method, "POST")) {
		r->allow = "POST";
		return reply_error(r, 405, "method-not-allowed", "use POST");
	}
	if (parse_body(u, false, &body, r))
		return;
	e = mgr_import(m, name, body, &r->json);
	json_object_put(body);
	if (e != MGR_OK)
		return reply_mgr_error(r, e);
	r->status = 201;
}

/* A raw path segment may hold a name of MGR_NAME_MAX bytes, each escaped. */
#define SEG_MAX (3 * (MGR_NAME_MAX + 1))

/* The most segments of a path: /vms/NAME/snapshots/SNAP/rollback. */
#define SEG_COUNT 5

/* Splits "/vms/NAME/ACTION" into at most SEG_COUNT raw (still %-escaped)
 * segments; -1 if more or empty segments in the middle. */
static int split_url(const char *url, char seg[SEG_COUNT][SEG_MAX + 1])
{
	int n = 0;

	if (*url != '/')
		return -1;
	while (*url == '/' && url[1]) {
		const char *start = ++url;
		size_t len = strcspn(start, "/");

		if (n == SEG_COUNT || len == 0 || len > SEG_MAX)
			return -1;
		memcpy(seg[n], start, len);
		seg[n++][len] = '\0';
		url += len;
	}
	return *url && strcmp(url, "/") ? -1 : n;
}

static int hex_digit(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 :
	       c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Decodes %XX in one segment, in place, after splitting, so that %2F stays
 * inside its segment. -1 for a malformed escape or a decoded NUL, which
 * would cut the name short ("cli1%00zzz" must not mean "cli1"). */
static int decode_segment(char *s)
{
	char *out = s;

	for (; *s; s++) {
		int hi, lo;

		if (*s != '%') {
			*out++ = *s;
			continue;
		}
		hi = hex_digit(s[1]);
		lo = hi < 0 ? -1 : hex_digit(s[2]);
		if (lo < 0 || (hi == 0 && lo == 0))
			return -1;
		*out++ = (char)(hi << 4 | lo);
		s += 2;
	}
	*out = '\0';
	return 0;
}

/* MHD's own decoding runs before the handler and would turn %00 into the
 * end of the path: the router gets the path as sent and decodes it itself. */
static size_t keep_escapes(void *cls, struct MHD_Connection *c, char *s)
{
	(void)cls;
	(void)c;
	return strlen(s);
}

/* /networks[/NAME] (networks.c). */
static void route_networks(struct mgr *m, const char *method, const char *name,
			   const struct upload *u, struct reply *r)
{
	struct json_object *body;
	struct mgr_net *n;
	enum mgr_err e;

	if (!name && !strcmp(method, "GET")) {
		r->status = 200;
		r->json = mgr_net_list_json(m);
		return;
	}
	if (!name && !strcmp(method, "POST")) {
		if (parse_body(u, false, &body, r))
			return;
		e = mgr_net_create(m, body, &r->json);
		json_object_put(body);
		if (e != MGR_OK)
			return reply_mgr_error(r, e);
		r->status = 201;
		return;
	}
	if (!name) {
		r->allow = "GET, POST";
		return reply_error(r, 405, "method-not-allowed", "use GET or POST");
	}
	if (!strcmp(method, "DELETE")) {
		e = mgr_net_delete(m, name);
		if (e != MGR_OK)
			return reply_mgr_error(r, e);
		r->status = 200;
		r->json = json_object_new_object();
		json_object_object_add(r->json, "deleted", json_object_new_string(name));
		return;
	}
	if (!strcmp(method, "PATCH")) {
		if (parse_body(u, false, &body, r))
			return;
		e = mgr_net_patch(m, name, body, &r->json);
		json_object_put(body);
		if (e != MGR_OK)
			return reply_mgr_error(r, e);
		r->status = 200;
		return;
	}
	if (strcmp(method, "GET")) {
		r->allow = "GET, PATCH, DELETE";
		return reply_error(r, 405, "method-not-allowed", "use GET, PATCH or DELETE");
	}
	n = mgr_net_find(m, name);
	if (!n)
		return reply_error(r, 404, "not-found", "no such network");
	r->status = 200;
	r->json = mgr_net_json(n);
}

static void route(struct mgr *m, const char *method, const char *url, const struct upload *u,
		  struct reply *r)
{
	char seg[SEG_COUNT][SEG_MAX + 1];
	int n = split_url(url, seg);

	for (int i = 0; i < n; i++)
		if (decode_segment(seg[i]))
			return reply_error(r, 400, "bad-request",
					   "bad %-escape or NUL byte in the path");

	if (n == 1 && !strcmp(seg[0], "metrics")) {
		if (strcmp(method, "GET")) {
			r->allow = "GET";
			return reply_error(r, 405, "method-not-allowed", "use GET");
		}
		r->status = 200;
		r->text = mgr_metrics(m);
		return;
	}
	if (n >= 1 && n <= 2 && !strcmp(seg[0], "networks"))
		return route_networks(m, method, n == 2 ? seg[1] : NULL, u, r);
	if (n < 1 || strcmp(seg[0], "vms"))
		return reply_error(r, 404, "not-found", "no such route (see docs/api.md)");
	if (n == 1 && !strcmp(method, "GET"))
		return route_list(m, r);
	if (n == 1 && !strcmp(method, "POST"))
		return route_create(m, u, r);
	if (n == 1) {
		r->allow = "GET, POST";
		return reply_error(r, 405, "method-not-allowed", "use GET or POST");
	}
	if (n == 3 && !strcmp(seg[2], "import"))
		return route_import(m, method, seg[1], u, r);
	/* No VM can be POSTed to: /vms/import takes the exported VM's name. */
	if (n == 2 && !strcmp(seg[1], "import") && !strcmp(method, "POST"))
		return route_import(m, method, NULL, u, r);
	if (n >= 3 && !strcmp(seg[2], "snapshots"))
		return route_snapshots(m, method, seg[1], n >= 4 ? seg[3] : NULL,
				       n == 5 ? seg[4] : NULL, u, r);
	if (n > 3)
		return reply_error(r, 404, "not-found", "no such route (see docs/api.md)");
	if (n == 3 && !strcmp(seg[2], "incoming"))
		return route_incoming(m, method, seg[1], u, r);
	if (n == 3 && !strcmp(seg[2], "migrate-cancel"))
		return route_migrate_cancel(m, method, seg[1], r);
	route_vm(m, method, seg[1], n == 3 ? seg[2] : NULL, u, r);
}

static enum MHD_Result send_reply(struct MHD_Connection *c, struct reply *r)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;
	const char *type = r->text ? "text/plain; version=0.0.4" : "application/json";
	size_t len;
	const char *body;
	char *json_text = NULL;

	if (r->text) {
		body = r->text;
		len = strlen(body);
	} else {
		body = json_object_to_json_string_length(r->json, JSON_C_TO_STRING_PLAIN |
							 JSON_C_TO_STRING_NOSLASHESCAPE, &len);
		if (asprintf(&json_text, "%s\n", body) < 0)
			json_text = NULL;
		body = json_text ? json_text : "{}\n";
		len = strlen(body);
	}
	resp = mhd.create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
	free(json_text);
	if (!resp)
		return MHD_NO;
	mhd.add_response_header(resp, "Content-Type", type);
	if (r->allow)
		mhd.add_response_header(resp, "Allow", r->allow);
	ret = mhd.queue_response(c, r->status, resp);
	mhd.destroy_response(resp);
	return ret;
}

static enum MHD_Result api_handler(void *cls, struct MHD_Connection *c, const char *url,
				   const char *method, const char *version, const char *data,
				   size_t *data_size, void **con_cls)
{
	struct api *api = cls;
	struct upload *u = *con_cls;
	struct reply r = { 0 };
	enum MHD_Result ret;

	(void)version;
	if (!u) {
		u = calloc(1, sizeof(*u));
		*con_cls = u;
		return u ? MHD_YES : MHD_NO;
	}
	if (!*data_size)	/* the whole request is in */
		conn_set_busy(api, c, true);
	if (*data_size) {
		if (u->too_big || u->len + *data_size > MGR_MAX_BODY) {
			u->too_big = true;
		} else {
			char *nb = realloc(u->body, u->len + *data_size + 1);

			if (!nb)
				return MHD_NO;
			u->body = nb;
			memcpy(u->body + u->len, data, *data_size);
			u->len += *data_size;
			u->body[u->len] = '\0';
		}
		*data_size = 0;
		return MHD_YES;
	}
	if (u->too_big) {
		char msg[64];

		snprintf(msg, sizeof(msg), "request body larger than %d bytes", MGR_MAX_BODY);
		reply_error(&r, 413, "too-large", msg);
	} else {
		pthread_mutex_lock(&api->mgr->lock);
		err_clear();
		route(api->mgr, method, url, u, &r);
		pthread_mutex_unlock(&api->mgr->lock);
	}
	if (!r.json && !r.text)
		reply_error(&r, 500, "failed", "internal error");
	ret = send_reply(c, &r);
	json_object_put(r.json);
	free(r.text);
	return ret;
}

static void api_completed(void *cls, struct MHD_Connection *c, void **con_cls,
			  enum MHD_RequestTerminationCode code)
{
	struct upload *u = *con_cls;

	(void)code;
	conn_set_busy(cls, c, false);
	if (u) {
		free(u->body);
		free(u);
		*con_cls = NULL;
	}
}

static int api_listen(struct api *api, const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	int probe;

	if (strlen(path) >= sizeof(addr.sun_path))
		return err_set(-ENAMETOOLONG, "--socket: path longer than %zu bytes",
			       sizeof(addr.sun_path) - 1);
	strcpy(addr.sun_path, path);
	/* Refuse to steal the socket of a daemon that still answers. */
	probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (probe >= 0 && connect(probe, (struct sockaddr *)&addr, sizeof(addr)) == 0) {
		close(probe);
		return err_set(-EADDRINUSE, "a daemon already listens on %s", path);
	}
	if (probe >= 0)
		close(probe);
	api->fd = unix_listen(path, 64, 0660, 0);
	if (api->fd < 0)
		return api->fd;
	strcpy(api->path, path);
	return 0;
}

static int api_watch_start(struct api *api)
{
	pthread_condattr_t attr;
	int ret;

	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&api->cond, &attr);
	pthread_condattr_destroy(&attr);
	ret = pthread_create(&api->watchdog, NULL, api_watchdog, api);
	if (ret)
		return err_set(-ret, "cannot start the API watchdog: %s", strerror(ret));
	api->watching = true;
	return 0;
}

static void api_watch_stop(struct api *api)
{
	if (!api->watching)
		return;
	pthread_mutex_lock(&api->lock);
	api->quit = true;
	pthread_cond_signal(&api->cond);
	pthread_mutex_unlock(&api->lock);
	pthread_join(api->watchdog, NULL);
	pthread_cond_destroy(&api->cond);
	api->watching = false;
}

struct api *api_start(struct mgr *m, const char *socket_path)
{
	struct api *api = calloc(1, sizeof(*api));

	if (!api) {
		err_set(-ENOMEM, "out of memory");
		return NULL;
	}
	api->mgr = m;
	api->fd = -1;
	api->timeout_ms = (uint64_t)(m->request_timeout_s ? m->request_timeout_s :
				     MGR_REQUEST_TIMEOUT_S) * 1000;
	pthread_mutex_init(&api->lock, NULL);
	if (api_watch_start(api) || mhd_load() || api_listen(api, socket_path))
		goto fail;
	/* A thread per connection: a request waiting for a VMM holds up no
	 * other. MHD's timeout is the idle limit once a request is answered. */
	api->mhd = mhd.start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
				    MHD_USE_POLL | MHD_USE_ERROR_LOG, 0, NULL,
				    NULL, api_handler, api,
				    MHD_OPTION_LISTEN_SOCKET, api->fd,
				    MHD_OPTION_NOTIFY_COMPLETED, api_completed, api,
				    MHD_OPTION_NOTIFY_CONNECTION, api_notify, api,
				    MHD_OPTION_UNESCAPE_CALLBACK, keep_escapes, NULL,
				    MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)30,
				    MHD_OPTION_CONNECTION_LIMIT,
				    (unsigned int)(API_MAX_CONNS + API_SPARE_CONNS),
				    MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(128 * 1024),
				    MHD_OPTION_END);
	if (!api->mhd) {
		err_set(-EIO, "cannot start the HTTP server on %s", socket_path);
		goto fail;
	}
	return api;
fail:
	api_watch_stop(api);
	if (api->fd >= 0)
		close(api->fd);
	pthread_mutex_destroy(&api->lock);
	free(api);
	return NULL;
}

void api_stop(struct api *api)
{
	if (!api)
		return;
	mhd.stop_daemon(api->mhd);
	api_watch_stop(api);
	close(api->fd);
	unix_unlink(api->path);
	pthread_mutex_destroy(&api->lock);
	free(api);
}
