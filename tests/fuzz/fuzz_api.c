/* libFuzzer target: the daemon's API router (src/mgr/api.c, included so
 * that its static functions are reachable): path splitting and %-decoding,
 * name checks, body parsing, the definition and PATCH parsers behind it.
 * The VM table is a stub with one VM, "web"; no VMM is touched.
 * Input: byte 0 picks the method, then the raw path up to '\n', then the
 * body. Every request must end in a reply (a status and a body). */
#include "../../src/mgr/api.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct mgr fm;
static struct mgr_vm web;

static void stub_init(void)
{
	static const char def[] =
		"{\"name\": \"web\", \"cpus\": 2, \"memory\": \"64M\", \"kernel\": \"/k\","
		" \"disks\": [{\"path\": \"/d0\"}], \"nics\": [{\"tap\": \"t0\"}, {\"network\": \"lan\"}],"
		" \"balloon\": true}";
	struct json_object *o = json_tokener_parse(def);

	if (!o || vm_def_from_json(o, &web.def))
		abort();
	json_object_put(o);
	web.state = MGR_RUNNING;
	snprintf(fm.state_dir, sizeof(fm.state_dir), "/var/lib/vireo");
	fm.vms = &web;
}

/* ---- the VM table, stubbed ---- */

const char *cgroup_mode_name(enum cgroup_mode mode)
{
	(void)mode;
	return "none";
}

struct mgr_vm *mgr_find(struct mgr *m, const char *name)
{
	for (struct mgr_vm *vm = m->vms; vm; vm = vm->next)
		if (!strcmp(vm->def.name, name))
			return vm;
	return NULL;
}

enum mgr_err mgr_create(struct mgr *m, struct vm_def *def)
{
	(void)m;
	vm_def_free(def);
	return MGR_OK;
}

/* No other thread: the operation lock and references are no-ops. */
struct mgr_vm *mgr_acquire(struct mgr *m, const char *name)
{
	return mgr_find(m, name);
}

void mgr_release(struct mgr *m, struct mgr_vm *vm)
{
	(void)m;
	(void)vm;
}

void mgr_ref(struct mgr_vm *vm)
{
	(void)vm;
}

void mgr_unref(struct mgr *m, struct mgr_vm *vm)
{
	(void)m;
	(void)vm;
}

int mgr_refresh_info(struct mgr *m, struct mgr_vm *vm, int timeout_ms)
{
	(void)m;
	(void)vm;
	(void)timeout_ms;
	return 0;
}

enum mgr_err mgr_delete(struct mgr *m, struct mgr_vm *vm)
{
	(void)m;
	err_set(-EBUSY, "VM '%s' is running", vm->def.name);
	return MGR_E_CONFLICT;
}

enum mgr_err mgr_start(struct mgr *m, struct mgr_vm *vm)
{
	(void)m;
	(void)vm;
	return MGR_OK;
}

enum mgr_err mgr_stop(struct mgr *m, struct mgr_vm *vm, bool force, unsigned int timeout_s)
{
	(void)m;
	(void)vm;
	if (!force && timeout_s > MGR_STOP_TIMEOUT_MAX_S)
		abort();
	return MGR_OK;
}

enum mgr_err mgr_pause(struct mgr *m, struct mgr_vm *vm, bool pause)
{
	(void)m;
	(void)vm;
	(void)pause;
	return MGR_OK;
}

enum mgr_err mgr_reboot(struct mgr *m, struct mgr_vm *vm)
{
	(void)m;
	(void)vm;
	return MGR_OK;
}

/* As the real one: to a copy, which must round-trip. */
enum mgr_err mgr_patch(struct mgr *m, struct mgr_vm *vm, struct vm_patch *p)
{
	struct vm_def d;

	(void)m;
	if (vm_def_copy(&vm->def, &d))
		abort();
	vm_patch_apply(&d, p);
	vm_def_free(&d);
	return MGR_OK;
}

struct json_object *mgr_vm_json(struct mgr *m, struct mgr_vm *vm, bool live)
{
	(void)m;
	(void)live;
	return vm ? vm_def_to_json(&vm->def) : json_object_new_object();
}

char *mgr_metrics(struct mgr *m)
{
	(void)m;
	return strdup("vireo_vms 1\n");
}

/* Networks (src/mgr/networks.c makes real bridges: not here): one network
 * "lan" that exists, so the router's paths and vNIC checks all run. */
static struct mgr_net lan = { .name = "lan", .bridge = "vb-lan" };

struct mgr_net *mgr_net_find(struct mgr *m, const char *name)
{
	(void)m;
	return !strcmp(name, lan.name) ? &lan : NULL;
}

enum mgr_err mgr_net_create(struct mgr *m, struct json_object *body, struct json_object **out)
{
	(void)m;
	(void)out;
	(void)body;
	err_set(-EEXIST, "a network named 'lan' exists");
	return MGR_E_CONFLICT;
}

enum mgr_err mgr_net_patch(struct mgr *m, const char *name, struct json_object *body,
			   struct json_object **out)
{
	(void)body;
	(void)out;
	err_set(-EINVAL, "'budget_bps' must be an integer");
	return mgr_net_find(m, name) ? MGR_E_BAD : MGR_E_NOT_FOUND;
}

enum mgr_err mgr_net_delete(struct mgr *m, const char *name)
{
	(void)m;
	err_set(-EBUSY, "network %s is used", name);
	return mgr_net_find(m, name) ? MGR_E_CONFLICT : MGR_E_NOT_FOUND;
}

struct json_object *mgr_net_json(const struct mgr_net *n)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "name", json_object_new_string(n->name));
	return o;
}

struct json_object *mgr_net_list_json(struct mgr *m)
{
	(void)m;
	return mgr_net_json(&lan);
}

int mgr_net_check_def(struct mgr *m, const struct vm_def *def)
{
	for (unsigned int i = 0; i < def->nnics; i++)
		if (def->nics[i].network && !mgr_net_find(m, def->nics[i].network))
			return err_set(-EINVAL, "nics[%u]: 'network': no such network", i);
	return 0;
}

/* As the real one without nftables: the body is parsed against the VM. */
enum mgr_err mgr_fw_update(struct mgr *m, struct mgr_vm *vm, struct json_object *body)
{
	struct fw_conf c;
	unsigned int i;
	int ret = nicfw_update_from_json(body, &vm->def, &i, &c);

	(void)m;
	nicfw_free(&c);
	return ret ? MGR_E_BAD : MGR_OK;
}

/* Snapshots touch files and VMMs: the router's side is what is fuzzed. */
enum mgr_err mgr_snap_create(struct mgr *m, struct mgr_vm *vm, struct json_object *body,
			     struct json_object **out)
{
	(void)m, (void)vm, (void)out;
	return json_object_is_type(body, json_type_object) ? MGR_E_CONFLICT : MGR_E_BAD;
}

enum mgr_err mgr_snap_list(struct mgr *m, struct mgr_vm *vm, struct json_object **out)
{
	(void)m, (void)vm;
	*out = json_object_new_object();
	json_object_object_add(*out, "snapshots", json_object_new_array());
	return MGR_OK;
}

enum mgr_err mgr_snap_rollback(struct mgr *m, struct mgr_vm *vm, const char *snap)
{
	(void)m, (void)vm, (void)snap;
	return err_set(-ENOENT, "no snapshot"), MGR_E_NOT_FOUND;
}

enum mgr_err mgr_snap_delete(struct mgr *m, struct mgr_vm *vm, const char *snap)
{
	(void)m, (void)vm, (void)snap;
	return err_set(-ENOENT, "no snapshot"), MGR_E_NOT_FOUND;
}

enum mgr_err mgr_snap_export(struct mgr *m, struct mgr_vm *vm, const char *snap,
			     struct json_object *body, struct json_object **out)
{
	(void)m, (void)vm, (void)snap, (void)body, (void)out;
	return err_set(-ENOENT, "no snapshot"), MGR_E_NOT_FOUND;
}

enum mgr_err mgr_import(struct mgr *m, const char *name, struct json_object *body,
			struct json_object **out)
{
	(void)m, (void)name, (void)body, (void)out;
	return err_set(-EINVAL, "no export"), MGR_E_BAD;
}

/* Migrations start VMMs and drive them: the router's side is fuzzed. */
enum mgr_err mgr_migrate_incoming(struct mgr *m, const char *name, struct json_object *body,
				  struct json_object **out)
{
	(void)m, (void)name, (void)out;
	return json_object_is_type(body, json_type_object) ? MGR_E_CONFLICT : MGR_E_BAD;
}

enum mgr_err mgr_migrate(struct mgr *m, struct mgr_vm *vm, struct json_object *body,
			 struct json_object **out)
{
	(void)m, (void)vm, (void)out;
	return json_object_is_type(body, json_type_object) ? MGR_E_CONFLICT : MGR_E_BAD;
}

enum mgr_err mgr_migrate_cancel(struct mgr *m, struct mgr_vm *vm)
{
	(void)m, (void)vm;
	return err_set(-EBUSY, "no migration"), MGR_E_CONFLICT;
}

void mgr_snap_remove_all(struct mgr *m, const char *name)
{
	(void)m, (void)name;
}

/* ---- the target ---- */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const methods[] = { "GET", "POST", "PATCH", "DELETE", "PUT" };
	struct upload u = { 0 };
	struct reply r = { 0 };
	const uint8_t *nl;
	char *url;
	size_t ulen;

	if (!fm.vms)
		stub_init();
	if (size < 1 || size > MGR_MAX_BODY)
		return 0;
	nl = memchr(data + 1, '\n', size - 1);
	ulen = nl ? (size_t)(nl - data - 1) : size - 1;
	url = strndup((const char *)data + 1, ulen);	/* an HTTP path has no NUL */
	u.len = nl ? size - 1 - ulen - 1 : 0;
	u.body = malloc(u.len + 1);
	if (!url || !u.body)
		abort();
	memcpy(u.body, nl ? nl + 1 : data, u.len);
	u.body[u.len] = '\0';
	keep_escapes(NULL, NULL, url);
	err_clear();
	route(&fm, methods[data[0] % 5], url, &u, &r);
	if (!r.json && !r.text)
		abort();	/* the handler would answer 500 "internal error" */
	if (r.status < 200 || r.status > 599)
		abort();
	json_object_put(r.json);
	free(r.text);
	free(u.body);
	free(url);
	return 0;
}
