/* Networks: named Linux bridges the daemon owns (include/vireo/mgr.h).
 * The kernel's bridge forwards between the VMMs' taps (and an uplink); we
 * create it, add ports and read its counters, nothing on the data path. */
#include <dirent.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vireo/control.h"
#include "vireo/log.h"
#include "vireo/mgr.h"
#include "vireo/net.h"

static bool net_name_valid(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > MGR_NET_NAME_MAX || s[0] == '-')
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
		      (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '-'))
			return false;
	return true;
}

struct mgr_net *mgr_net_find(struct mgr *m, const char *name)
{
	for (struct mgr_net *n = m->nets; n; n = n->next)
		if (!strcmp(n->name, name))
			return n;
	return NULL;
}

void mgr_net_free_all(struct mgr *m)
{
	while (m->nets) {
		struct mgr_net *n = m->nets;

		m->nets = n->next;
		free(n);
	}
}

/* "budget_bps" (bytes/s, each direction) if o has it: 0 or -EINVAL. */
static int budget_from_json(struct json_object *o, uint64_t *out)
{
	struct json_object *v;
	int64_t b;

	if (!json_object_object_get_ex(o, "budget_bps", &v))
		return 0;
	b = json_object_is_type(v, json_type_int) ? json_object_get_int64(v) : 0;
	if (b < 1 || (uint64_t)b > CONTROL_MAX_RATE)
		return err_set(-EINVAL, "'budget_bps' must be an integer between 1 and %llu "
			       "(bytes/s)", (unsigned long long)CONTROL_MAX_RATE);
	*out = (uint64_t)b;
	return 0;
}

/* {"name", "vlan_aware"?, "uplink"?, "vlans"?, "budget_bps"?} into n: 0 or
 * -EINVAL naming the field. */
static int net_from_json(struct json_object *o, struct mgr_net *n)
{
	struct json_object *v;

	memset(n, 0, sizeof(*n));
	json_object_object_foreach(o, key, val) {
		(void)val;
		if (strcmp(key, "name") && strcmp(key, "vlan_aware") && strcmp(key, "uplink") &&
		    strcmp(key, "vlans") && strcmp(key, "budget_bps"))
			return err_set(-EINVAL, "unknown field '%s' in a network", key);
	}
	if (budget_from_json(o, &n->budget_bps))
		return -EINVAL;
	if (!json_object_object_get_ex(o, "name", &v) || !json_object_is_type(v, json_type_string) ||
	    !net_name_valid(json_object_get_string(v)))
		return err_set(-EINVAL, "'name' must be 1 to %d of A-Z a-z 0-9 _ - (not starting "
			       "with -)", MGR_NET_NAME_MAX);
	strcpy(n->name, json_object_get_string(v));
	snprintf(n->bridge, sizeof(n->bridge), "vb-%s", n->name);
	if (json_object_object_get_ex(o, "vlan_aware", &v)) {
		if (!json_object_is_type(v, json_type_boolean))
			return err_set(-EINVAL, "'vlan_aware' must be true or false");
		n->vlan_aware = json_object_get_boolean(v);
	}
	if (json_object_object_get_ex(o, "uplink", &v)) {
		const char *s = json_object_is_type(v, json_type_string) ?
				json_object_get_string(v) : "";

		if (!*s || strlen(s) >= sizeof(n->uplink) || strchr(s, '/'))
			return err_set(-EINVAL, "'uplink' must be an interface name (1 to 15 bytes)");
		strcpy(n->uplink, s);
	}
	if (json_object_object_get_ex(o, "vlans", &v)) {
		if (!n->vlan_aware)
			return err_set(-EINVAL, "'vlans' needs \"vlan_aware\": true");
		if (vlan_set_from_json(v, "vlans", &n->vlans))
			return -EINVAL;
	}
	return 0;
}

static struct json_object *net_def_json(const struct mgr_net *n)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "name", json_object_new_string(n->name));
	json_object_object_add(o, "vlan_aware", json_object_new_boolean(n->vlan_aware));
	if (*n->uplink)
		json_object_object_add(o, "uplink", json_object_new_string(n->uplink));
	if (!vlan_set_empty(&n->vlans))
		json_object_object_add(o, "vlans", vlan_set_to_json(&n->vlans));
	if (n->budget_bps)
		json_object_object_add(o, "budget_bps", json_object_new_uint64(n->budget_bps));
	return o;
}

/* What the I/O policy gave the network's vNICs together in its last round
 * (null: the policy is off, or none of them runs). */
static void alloc_json(struct json_object *o, const struct mgr_net *n)
{
	struct json_object *a = json_object_new_object();

	json_object_object_add(a, "rx_bps", n->alloc[0] ? json_object_new_uint64(n->alloc[0]) : NULL);
	json_object_object_add(a, "tx_bps", n->alloc[1] ? json_object_new_uint64(n->alloc[1]) : NULL);
	json_object_object_add(o, "allocation", a);
}

/* A port's VLANs as the kernel has them: "pvid" (untagged) and "vlans"
 * (tagged); nothing on a bridge without VLAN filtering. */
static void port_vlans_json(struct json_object *p, const char *port)
{
	struct port_vlans v;

	if (bridge_port_get_vlans(port, &v))
		return;
	if (v.pvid)
		json_object_object_add(p, "pvid", json_object_new_int((int)v.pvid));
	json_object_object_add(p, "vlans", vlan_set_to_json(&v.tagged));
}

static uint64_t sys_counter(const char *ifname, const char *what)
{
	char path[128];
	unsigned long long v = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/sys/class/net/%s/statistics/%s", ifname, what);
	f = fopen(path, "re");
	if (f) {
		if (fscanf(f, "%llu", &v) != 1)
			v = 0;
		fclose(f);
	}
	return v;
}

struct json_object *mgr_net_json(const struct mgr_net *n)
{
	static const char *const counters[] = { "rx_bytes", "rx_packets", "tx_bytes",
						"tx_packets", "rx_dropped", "tx_dropped" };
	struct json_object *o = net_def_json(n), *ports = json_object_new_array();
	struct json_object *c = json_object_new_object();
	char path[64];
	struct dirent *e;
	DIR *d;

	json_object_object_add(o, "bridge", json_object_new_string(n->bridge));
	if (n->budget_bps)
		alloc_json(o, n);
	json_object_object_add(o, "present", json_object_new_boolean(!bridge_check(n->bridge)));
	snprintf(path, sizeof(path), "/sys/class/net/%s/brif", n->bridge);
	d = opendir(path);
	while (d && (e = readdir(d))) {
		struct json_object *p;

		if (e->d_name[0] == '.')
			continue;
		p = json_object_new_object();
		json_object_object_add(p, "name", json_object_new_string(e->d_name));
		json_object_object_add(p, "rx_bytes", json_object_new_int64(
			(int64_t)sys_counter(e->d_name, "rx_bytes")));
		json_object_object_add(p, "tx_bytes", json_object_new_int64(
			(int64_t)sys_counter(e->d_name, "tx_bytes")));
		if (n->vlan_aware)
			port_vlans_json(p, e->d_name);
		json_object_array_add(ports, p);
	}
	if (d)
		closedir(d);
	json_object_object_add(o, "ports", ports);
	for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); i++)
		json_object_object_add(c, counters[i], json_object_new_int64(
			(int64_t)sys_counter(n->bridge, counters[i])));
	json_object_object_add(o, "counters", c);
	return o;
}

struct json_object *mgr_net_list_json(struct mgr *m)
{
	struct json_object *arr = json_object_new_array(), *o = json_object_new_object();

	for (struct mgr_net *n = m->nets; n; n = n->next)
		json_object_array_add(arr, mgr_net_json(n));
	json_object_object_add(o, "networks", arr);
	return o;
}

/* Creates (or, `adopt`, takes over an existing) bridge for n, with its
 * uplink. A failure leaves no bridge we made. */
/* The uplink is a trunk: the network's VLANs tagged, VLAN 1 untagged (the
 * bridge's default, which the host's own untagged traffic keeps). */
static int uplink_vlans(const struct mgr_net *n)
{
	struct port_vlans v = { .tagged = n->vlans, .pvid = 1 };

	return n->vlan_aware ? bridge_port_set_vlans(n->uplink, &v) : 0;
}

static int net_build(const struct mgr_net *n, bool adopt)
{
	int ret = bridge_check(n->bridge);
	bool made = false;

	if (ret == -ENOTTY)
		return err_set(-EEXIST, "%s exists and is not a bridge", n->bridge);
	if (!ret && !adopt)
		return err_set(-EEXIST, "bridge %s exists already", n->bridge);
	if (ret) {
		ret = bridge_create(n->bridge, n->vlan_aware);
		if (ret)
			return ret;
		made = true;
	}
	if (*n->uplink && ((ret = bridge_set_port(n->bridge, n->uplink)) ||
			   (ret = uplink_vlans(n)) || (ret = link_set_up(n->uplink)))) {
		if (made)
			bridge_delete(n->bridge);
		return ret;
	}
	return 0;
}

static int net_path(struct mgr *m, const char *name, char *buf, size_t size)
{
	return store_path(m, buf, size, "networks", name, ".json");
}

enum mgr_err mgr_net_create(struct mgr *m, struct json_object *body, struct json_object **out)
{
	struct mgr_net *n = malloc(sizeof(*n));
	char path[PATH_MAX];
	struct json_object *def;
	int ret;

	if (!n)
		return err_set(-ENOMEM, "out of memory"), MGR_E_FAILED;
	if (net_from_json(body, n)) {
		free(n);
		return MGR_E_BAD;
	}
	if (mgr_net_find(m, n->name)) {
		err_set(-EEXIST, "a network named '%s' exists", n->name);
		free(n);
		return MGR_E_CONFLICT;
	}
	if (*n->uplink && bridge_check(n->uplink) == -ENOENT) {
		err_set(-EINVAL, "'uplink': no interface %s on this host", n->uplink);
		free(n);
		return MGR_E_BAD;
	}
	ret = net_path(m, n->name, path, sizeof(path));
	if (!ret)
		ret = net_build(n, false);
	if (ret) {
		free(n);
		return ret == -EEXIST ? MGR_E_CONFLICT :
		       ret == -EOPNOTSUPP || ret == -EINVAL ? MGR_E_BAD : MGR_E_FAILED;
	}
	def = net_def_json(n);
	ret = store_write_json(path, def);
	json_object_put(def);
	if (ret) {
		bridge_delete(n->bridge);
		free(n);
		return MGR_E_FAILED;
	}
	n->next = m->nets;
	m->nets = n;
	*out = mgr_net_json(n);
	return MGR_OK;
}

enum mgr_err mgr_net_patch(struct mgr *m, const char *name, struct json_object *body,
			   struct json_object **out)
{
	struct mgr_net *n = mgr_net_find(m, name);
	uint64_t budget = 0, old;
	char path[PATH_MAX];
	struct json_object *def;
	int ret;

	if (!n)
		return err_set(-ENOENT, "no network named '%s'", name), MGR_E_NOT_FOUND;
	json_object_object_foreach(body, key, val) {
		(void)val;
		if (strcmp(key, "budget_bps"))
			return err_set(-EINVAL, "'%s' cannot be changed (only 'budget_bps')", key),
			       MGR_E_BAD;
	}
	if (budget_from_json(body, &budget))
		return MGR_E_BAD;
	if (!budget)
		return err_set(-EINVAL, "'budget_bps' missing"), MGR_E_BAD;
	if (net_path(m, name, path, sizeof(path)))
		return MGR_E_FAILED;
	old = n->budget_bps;
	n->budget_bps = budget;
	def = net_def_json(n);
	ret = store_write_json(path, def);
	json_object_put(def);
	if (ret) {
		n->budget_bps = old;
		return MGR_E_FAILED;
	}
	*out = mgr_net_json(n);
	return MGR_OK;
}

enum mgr_err mgr_net_delete(struct mgr *m, const char *name)
{
	struct mgr_net **pp, *n;
	char path[PATH_MAX];
	int ret;

	for (pp = &m->nets; *pp && strcmp((*pp)->name, name); pp = &(*pp)->next)
		;
	if (!(n = *pp))
		return err_set(-ENOENT, "no network named '%s'", name), MGR_E_NOT_FOUND;
	for (struct mgr_vm *vm = m->vms; vm; vm = vm->next)
		for (unsigned int i = 0; i < vm->def.nnics; i++)
			if (vm->def.nics[i].network && !strcmp(vm->def.nics[i].network, name)) {
				err_set(-EBUSY, "network '%s' is used by VM '%s' (nics[%u])", name,
					vm->def.name, i);
				return MGR_E_CONFLICT;
			}
	ret = bridge_check(n->bridge);
	if (!ret && bridge_delete(n->bridge))
		return MGR_E_FAILED;
	if (!net_path(m, name, path, sizeof(path)))
		unlink(path);
	*pp = n->next;
	free(n);
	return MGR_OK;
}

int mgr_net_load(struct mgr *m)
{
	char dir[PATH_MAX], path[PATH_MAX + 300];
	struct dirent *e;
	DIR *d;

	if (store_path(m, dir, sizeof(dir), "networks", NULL, NULL) || !(d = opendir(dir)))
		return 0;
	while ((e = readdir(d))) {
		size_t len = strlen(e->d_name);
		struct json_object *o;
		struct mgr_net *n;

		if (len < 6 || strcmp(e->d_name + len - 5, ".json"))
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		o = store_read_json(path);
		n = malloc(sizeof(*n));
		if (!o || !n || net_from_json(o, n) || mgr_net_find(m, n->name)) {
			log_warn("network file %s skipped: %s", path, err_get());
			free(n);
		} else {
			if (net_build(n, true))
				log_warn("network %s: %s", n->name, err_get());
			n->next = m->nets;
			m->nets = n;
		}
		json_object_put(o);
	}
	closedir(d);
	return 0;
}

int mgr_net_check_def(struct mgr *m, const struct vm_def *def)
{
	for (unsigned int i = 0; i < def->nnics; i++) {
		const struct mgr_nic *nic = &def->nics[i];
		const struct mgr_net *n = nic->network ? mgr_net_find(m, nic->network) : NULL;

		if (nic->network && !n)
			return err_set(-EINVAL, "nics[%u]: 'network': no network named '%s'", i,
				       nic->network);
		if ((nic->vlans.vlan || nic->vlans.is_trunk) && !n->vlan_aware)
			return err_set(-EINVAL, "nics[%u]: '%s': network '%s' is not vlan_aware", i,
				       nic->vlans.vlan ? "vlan" : "trunk", nic->network);
	}
	return 0;
}

/* The port VLANs of a vNIC on a vlan_aware network (struct nic_vlans). */
static struct port_vlans nic_vlans(const struct mgr_nic *nic)
{
	struct port_vlans v = { .pvid = 1 };

	if (nic->vlans.vlan) {
		v.pvid = nic->vlans.vlan;
	} else if (nic->vlans.is_trunk) {
		v.tagged = nic->vlans.trunk;
		v.pvid = nic->vlans.native_vlan;
	}
	return v;
}

int mgr_net_set_vlans(struct mgr *m, const struct vm_def *def, unsigned int i)
{
	const struct mgr_net *n = def->nics[i].network ? mgr_net_find(m, def->nics[i].network) :
				  NULL;
	struct port_vlans v = nic_vlans(&def->nics[i]);
	char tap[16];

	if (!n || !n->vlan_aware)
		return 0;
	mgr_nic_tap(def, i, tap);
	return bridge_check(tap) == -ENOENT ? 0 : bridge_port_set_vlans(tap, &v);
}

/* FNV-1a of the daemon's instance id: the start of every tap name's hash. */
static uint32_t tap_salt = 2166136261u;

void mgr_net_set_instance(const char *instance_id)
{
	uint32_t h = 2166136261u;

	for (const char *p = instance_id; *p; p++)
		h = (h ^ (unsigned char)*p) * 16777619u;
	tap_salt = h;
}

void mgr_nic_tap(const struct vm_def *def, unsigned int i, char out[16])
{
	uint32_t h = tap_salt;	/* FNV-1a, on from the instance id's */

	out[0] = '\0';
	if (def->nics[i].tap) {
		snprintf(out, 16, "%s", def->nics[i].tap);
		return;
	}
	if (!def->nics[i].network)
		return;
	for (const char *p = def->name; *p; p++)
		h = (h ^ (unsigned char)*p) * 16777619u;
	snprintf(out, 16, "vt%08x.%u", h, i);
}

void mgr_nic_mac(const struct vm_def *def, unsigned int i, char out[18])
{
	uint32_t h = 2166136261u;	/* FNV-1a of the name and the index */

	out[0] = '\0';
	if (def->nics[i].mac) {
		snprintf(out, 18, "%s", def->nics[i].mac);
		return;
	}
	if (!def->nics[i].network)
		return;
	for (const char *p = def->name; *p; p++)
		h = (h ^ (unsigned char)*p) * 16777619u;
	h = (h ^ i) * 16777619u;
	snprintf(out, 18, "52:54:00:%02x:%02x:%02x", h >> 16 & 0xff, h >> 8 & 0xff, h & 0xff);
}

/* The bridge a port belongs to, or "" (from sysfs). */
static void port_master(const char *port, char out[16])
{
	char path[80], target[256];
	ssize_t n;

	out[0] = '\0';
	snprintf(path, sizeof(path), "/sys/class/net/%s/master", port);
	n = readlink(path, target, sizeof(target) - 1);
	if (n > 0) {
		const char *slash;

		target[n] = '\0';
		slash = strrchr(target, '/');
		snprintf(out, 16, "%.15s", slash ? slash + 1 : target);
	}
}

/* Deletes the taps of the first `count` vNICs. */
static void detach_upto(const struct vm_def *def, unsigned int count)
{
	for (unsigned int i = 0; i < count; i++) {
		char tap[16];

		if (!def->nics[i].network)
			continue;
		mgr_nic_tap(def, i, tap);
		if (bridge_check(tap) != -ENOENT && link_delete(tap))
			log_warn("VM %s: %s", def->name, err_get());
	}
}

void mgr_net_detach(struct mgr *m, const struct vm_def *def)
{
	(void)m;
	mgr_fw_remove(def);
	detach_upto(def, def->nnics);
}

/* One vNIC's tap, made and plugged in. A tap of that name already in this
 * bridge is ours from a VMM that ended while no daemon ran: replaced. */
static int attach_one(const struct mgr_net *n, const struct mgr_nic *nic, const char *tap,
		      unsigned int uid)
{
	struct port_vlans vlans = nic_vlans(nic);
	char master[16];
	int ret;

	if (bridge_check(tap) != -ENOENT) {
		port_master(tap, master);
		if (strcmp(master, n->bridge))
			return err_set(-EEXIST, "tap %s exists already (not ours)", tap);
		if ((ret = link_delete(tap)))
			return ret;
	}
	/* VLANs before the link is up: no frame passes on the default VLAN */
	ret = tap_create_persistent(tap, uid);
	if (!ret)
		ret = bridge_set_port(n->bridge, tap);
	if (!ret && n->vlan_aware)
		ret = bridge_port_set_vlans(tap, &vlans);
	if (!ret)
		ret = link_set_up(tap);
	if (ret && bridge_check(tap) != -ENOENT)
		link_delete(tap);
	return ret;
}

/* Another VM with a VMM has a vNIC on the tap `tap` (a user's "tap", or a
 * hash collision of two names): its tap is not a stale one to replace. */
static const char *tap_in_use(struct mgr *m, const struct vm_def *def, const char *tap)
{
	for (struct mgr_vm *vm = m->vms; vm; vm = vm->next) {
		if (&vm->def == def || !(mgr_vm_active(vm) || vm->starting))
			continue;
		for (unsigned int i = 0; i < vm->def.nnics; i++) {
			char other[16];

			mgr_nic_tap(&vm->def, i, other);
			if (!strcmp(other, tap))
				return vm->def.name;
		}
	}
	return NULL;
}

int mgr_net_attach(struct mgr *m, const struct vm_def *def, unsigned int uid)
{
	for (unsigned int i = 0; i < def->nnics; i++) {
		const struct mgr_net *n;
		const char *user;
		char tap[16];
		int ret;

		if (!def->nics[i].network)
			continue;
		n = mgr_net_find(m, def->nics[i].network);
		mgr_nic_tap(def, i, tap);
		user = tap_in_use(m, def, tap);
		ret = user ? err_set(-EEXIST, "tap %s is VM %s's (give this nic a \"tap\")", tap,
				     user) :
		      n ? attach_one(n, &def->nics[i], tap, uid) :
		      err_set(-ENOENT, "network '%s' is gone", def->nics[i].network);
		if (ret) {
			err_set(ret, "nics[%u]: %s", i, err_get());
			detach_upto(def, i);	/* only ours: never the tap in the way */
			return ret;
		}
	}
	int ret = mgr_fw_apply(def);	/* all taps exist: their ifindexes mark */

	if (ret)
		detach_upto(def, def->nnics);
	return ret;
}

void mgr_net_reattach(struct mgr *m, const struct vm_def *def)
{
	for (unsigned int i = 0; i < def->nnics; i++) {
		const struct mgr_net *n;
		char tap[16], master[16];

		if (!def->nics[i].network || !(n = mgr_net_find(m, def->nics[i].network)))
			continue;
		mgr_nic_tap(def, i, tap);
		port_master(tap, master);
		if (bridge_check(tap) != -ENOENT && strcmp(master, n->bridge)) {
			struct port_vlans vlans = nic_vlans(&def->nics[i]);

			if (bridge_set_port(n->bridge, tap) ||
			    (n->vlan_aware && bridge_port_set_vlans(tap, &vlans)))
				log_warn("VM %s: %s", def->name, err_get());
		}
	}
	if (mgr_fw_apply(def))	/* idempotent: the rules outlive the daemon */
		log_warn("VM %s: %s", def->name, err_get());
}
