/* VM definitions: JSON ↔ struct vm_def, validated field by field. The same
 * parser reads API bodies and the state directory, so a definition on disk
 * is exactly as trusted as one from a client (DESIGN §3.8). Unknown fields
 * are errors. */
#include <errno.h>
#include <json-c/json.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include "vireo/block.h"
#include "vireo/virtio.h"
#include "vireo/control.h"
#include "vireo/log.h"
#include "vireo/mgr.h"
#include "vireo/size.h"

#define MAX_CMDLINE 4096
#define MAX_MEMORY (1ULL << 40)

bool vm_name_valid(const char *name)
{
	size_t n = strlen(name);

	if (n == 0 || n > MGR_NAME_MAX || name[0] == '.' || name[0] == '-')
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '.' || c == '-'))
			return false;
	}
	return true;
}

/* Prefixes the current error message with the array element it is about. */
static int err_prefix(int ret, const char *what, size_t index)
{
	return err_set(ret, "%s[%zu]: %s", what, index, err_get());
}

static bool key_in(const char *key, const char *const *keys)
{
	for (; *keys; keys++)
		if (!strcmp(*keys, key))
			return true;
	return false;
}

static int check_keys(struct json_object *obj, const char *what, const char *const *keys)
{
	if (!json_object_is_type(obj, json_type_object))
		return err_set(-EINVAL, "%s must be a JSON object", what);
	json_object_object_foreach(obj, key, val) {
		(void)val;
		if (!key_in(key, keys))
			return err_set(-EINVAL, "unknown field '%.64s' in %s", key, what);
	}
	return 0;
}

/* An integer field in [min, max]; -ENOENT if absent. */
static int get_uint(struct json_object *obj, const char *key, uint64_t min, uint64_t max,
		    uint64_t *out)
{
	struct json_object *v;
	int64_t n;

	if (!json_object_object_get_ex(obj, key, &v))
		return -ENOENT;
	if (!json_object_is_type(v, json_type_int))
		return err_set(-EINVAL, "'%s' must be an integer", key);
	n = json_object_get_int64(v);
	if (n < 0 || (uint64_t)n < min || (uint64_t)n > max)
		return err_set(-EINVAL, "'%s' must be between %llu and %llu", key,
			       (unsigned long long)min, (unsigned long long)max);
	*out = (uint64_t)n;
	return 0;
}

/* A string field of at most max bytes without control characters. */
static int get_str(struct json_object *obj, const char *key, size_t max, char **out)
{
	struct json_object *v;
	const char *s;

	if (!json_object_object_get_ex(obj, key, &v))
		return -ENOENT;
	if (!json_object_is_type(v, json_type_string))
		return err_set(-EINVAL, "'%s' must be a string", key);
	s = json_object_get_string(v);
	if (strlen(s) > max || strlen(s) != (size_t)json_object_get_string_len(v))
		return err_set(-EINVAL, "'%s' is too long or contains NUL", key);
	for (const char *p = s; *p; p++)
		if ((unsigned char)*p < 0x20)
			return err_set(-EINVAL, "'%s' contains control characters", key);
	*out = strdup(s);
	return *out ? 0 : err_set(-ENOMEM, "out of memory");
}

static int get_bool(struct json_object *obj, const char *key, bool *out)
{
	struct json_object *v;

	if (!json_object_object_get_ex(obj, key, &v))
		return -ENOENT;
	if (!json_object_is_type(v, json_type_boolean))
		return err_set(-EINVAL, "'%s' must be true or false", key);
	*out = json_object_get_boolean(v);
	return 0;
}

/* A size: "64M" or a number of bytes; -ENOENT if absent, else 0 or
 * -EINVAL (no message: the caller says what is expected). */
static int get_size(struct json_object *obj, const char *key, uint64_t *out)
{
	struct json_object *v;

	if (!json_object_object_get_ex(obj, key, &v))
		return -ENOENT;
	if (json_object_is_type(v, json_type_string))
		return size_parse(json_object_get_string(v), out) ? -EINVAL : 0;
	return get_uint(obj, key, 0, MAX_MEMORY, out) ? -EINVAL : 0;
}

/* "memory_min": what the memory policy leaves a guest, at most its memory. */
static int get_memory_min(struct json_object *obj, uint64_t memory, uint64_t *out)
{
	int ret = get_size(obj, "memory_min", out);

	if (ret == -EINVAL || (!ret && *out > memory))
		return err_set(-EINVAL, "'memory_min' must be a size from 0 to the VM's memory");
	return ret;
}

/* "balloon_target": a size, at most the guest's memory. */
static int get_balloon_target(struct json_object *obj, uint64_t memory, uint64_t *out)
{
	int ret = get_size(obj, "balloon_target", out);

	if (ret == -EINVAL || (!ret && *out > memory))
		return err_set(-EINVAL, "'balloon_target' must be a size from 0 to the VM's memory");
	return ret;
}

/* "memory": "64M" or a number of bytes. */
static int get_memory(struct json_object *obj, uint64_t *out)
{
	int ret = get_size(obj, "memory", out);

	if (ret == -ENOENT)
		return ret;
	if (ret || *out < (16ULL << 20) || *out > MAX_MEMORY || (*out & 0xfff))
		return err_set(-EINVAL, "'memory' must be a size from 16M to 1T, a multiple of 4K "
			       "(e.g. \"64M\" or 67108864)");
	return 0;
}

static bool opt_ok(int ret)
{
	return ret == 0 || ret == -ENOENT;
}

/* The I/O policy's fields of a disk or vNIC: "weight" (when `weight` is
 * given) and "floor_KEY". A floor above the fixed limit is allowed (a
 * PATCH may lower the limit later) and counts as the limit: the policy
 * never goes above a fixed limit. */
static int parse_io_share(struct json_object *o, unsigned int *weight, const char *key,
			  uint64_t *floor)
{
	char name[16];
	uint64_t w = 100;
	int ret;

	if (weight) {
		if (!opt_ok(ret = get_uint(o, "weight", 1, 10000, &w)))
			return ret;
		*weight = (unsigned int)w;
	}
	snprintf(name, sizeof(name), "floor_%s", key);
	ret = get_uint(o, name, 0, CONTROL_MAX_RATE, floor);
	return opt_ok(ret) ? 0 : ret;
}

static int parse_disk(struct json_object *o, struct mgr_disk *d)
{
	static const char *const keys[] = { "path", "format", "readonly", "bps", "iops", "cache",
					    "aio", "weight", "floor_bps", "floor_iops", "queues", NULL };
	int ret = check_keys(o, "a disk", keys);
	char *cache = NULL, *aio = NULL;
	uint64_t queues = 0;

	if (ret)
		return ret;
	ret = get_str(o, "path", PATH_MAX - 1, &d->path);
	if (ret == -ENOENT || (!ret && d->path[0] != '/'))
		return err_set(-EINVAL, "a disk needs 'path', an absolute path");
	if (ret)
		return ret;
	if (strchr(d->path, ','))
		return err_set(-EINVAL, "disk path must not contain ','");
	if (!opt_ok(ret = get_str(o, "format", 16, &d->format)))
		return ret;
	if (d->format && strcmp(d->format, "raw") && strcmp(d->format, "qcow2") &&
	    strcmp(d->format, "vpc") && strcmp(d->format, "vmdk"))
		return err_set(-EINVAL, "disk 'format' must be raw, qcow2, vpc or vmdk");
	if (!opt_ok(ret = get_bool(o, "readonly", &d->readonly)))
		return ret;
	if (!opt_ok(ret = get_uint(o, "bps", 0, CONTROL_MAX_RATE, &d->bps)))
		return ret;
	if (!opt_ok(ret = get_uint(o, "iops", 0, CONTROL_MAX_RATE, &d->iops)))
		return ret;
	if ((ret = parse_io_share(o, &d->weight, "bps", &d->floor_bps)))
		return ret;
	if ((ret = parse_io_share(o, NULL, "iops", &d->floor_iops)))
		return ret;
	if (!opt_ok(ret = get_str(o, "cache", 16, &cache)))
		return ret;
	d->cache = cache ? block_cache_parse(cache) : BLOCK_CACHE_WRITEBACK;
	free(cache);
	if (d->cache < 0)
		return err_set(-EINVAL, "disk 'cache' must be none, writeback, writethrough, "
			       "directsync or unsafe");
	if (!opt_ok(ret = get_str(o, "aio", 16, &aio)))
		return ret;
	d->aio = aio ? block_aio_parse(aio) : BLOCK_AIO_IO_URING;
	free(aio);
	if (d->aio < 0)
		return err_set(-EINVAL, "disk 'aio' must be io_uring or threads");
	if (!opt_ok(ret = get_uint(o, "queues", 1, VIRTIO_BLK_MAX_QUEUES, &queues)))
		return ret;
	d->queues = (unsigned int)queues;
	return 0;
}

static int parse_disks(struct json_object *obj, struct vm_def *def)
{
	struct json_object *arr;
	size_t n;

	if (!json_object_object_get_ex(obj, "disks", &arr))
		return 0;
	if (!json_object_is_type(arr, json_type_array))
		return err_set(-EINVAL, "'disks' must be an array");
	n = json_object_array_length(arr);
	if (n > MGR_MAX_DISKS)
		return err_set(-EINVAL, "at most %d disks", MGR_MAX_DISKS);
	for (size_t i = 0; i < n; i++) {
		int ret = parse_disk(json_object_array_get_idx(arr, i), &def->disks[i]);

		def->ndisks = (unsigned int)i + 1;
		if (ret)
			return err_prefix(ret, "disks", i);
	}
	return 0;
}

/* "52:54:00:12:34:56" */
static bool mac_valid(const char *s)
{
	for (int i = 0; i < 17; i++) {
		char c = s[i];
		bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');

		if (i % 3 == 2 ? c != ':' : !hex)
			return false;
	}
	return s[17] == '\0';
}

static bool tap_valid(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > 15)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
		      (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '-' || s[i] == '.'))
			return false;
	return true;
}

/* "vlan" (an access port) or "trunk" + "native_vlan" of object o; whether
 * the network is vlan_aware is checked at create (mgr_net_check_def). */
static int parse_nic_vlans(struct json_object *o, struct nic_vlans *n)
{
	struct json_object *trunk;
	uint64_t v = 0;
	int ret;

	memset(n, 0, sizeof(*n));
	if (!opt_ok(ret = get_uint(o, "vlan", 1, VLAN_ID_MAX, &v)))
		return ret;
	n->vlan = (unsigned int)v;
	v = 0;
	if (!opt_ok(ret = get_uint(o, "native_vlan", 1, VLAN_ID_MAX, &v)))
		return ret;
	n->native_vlan = (unsigned int)v;
	n->is_trunk = json_object_object_get_ex(o, "trunk", &trunk);
	if (n->is_trunk && (ret = vlan_set_from_json(trunk, "trunk", &n->trunk)))
		return ret;
	if (n->vlan && n->is_trunk)
		return err_set(-EINVAL, "'vlan' (an access port) and 'trunk' exclude each other");
	if (n->native_vlan && !n->is_trunk)
		return err_set(-EINVAL, "'native_vlan' is for a 'trunk'");
	return 0;
}

static int parse_nic(struct json_object *o, struct mgr_nic *n)
{
	static const char *const keys[] = { "tap", "mac", "mtu", "rx_bps", "tx_bps", "network",
					    "vlan", "trunk", "native_vlan", "weight", "floor_bps",
					    "firewall", "ips", "anti_spoof", NULL };
	uint64_t mtu = 0;
	int ret = check_keys(o, "a nic", keys);

	if (ret)
		return ret;
	if (!opt_ok(ret = get_str(o, "tap", 64, &n->tap)))
		return ret;
	if (n->tap && !tap_valid(n->tap))
		return err_set(-EINVAL, "'tap' must be 1 to 15 of A-Z a-z 0-9 _ . -");
	/* Whether it exists is checked at create (mgr_net_check_def). */
	if (!opt_ok(ret = get_str(o, "network", MGR_NET_NAME_MAX, &n->network)))
		return ret;
	if (!opt_ok(ret = get_str(o, "mac", 64, &n->mac)))
		return ret;
	if (n->mac && !mac_valid(n->mac))
		return err_set(-EINVAL, "'mac' must look like 52:54:00:12:34:56");
	if (!opt_ok(ret = get_uint(o, "mtu", 68, 65535, &mtu)))
		return ret;
	n->mtu = (unsigned int)mtu;
	if (!opt_ok(ret = get_uint(o, "rx_bps", 0, CONTROL_MAX_RATE, &n->rx_bps)))
		return ret;
	if (!opt_ok(ret = get_uint(o, "tx_bps", 0, CONTROL_MAX_RATE, &n->tx_bps)))
		return ret;
	/* One floor, for each direction. */
	if ((ret = parse_io_share(o, &n->weight, "bps", &n->floor_bps)))
		return ret;
	if ((ret = parse_nic_vlans(o, &n->vlans)))
		return ret;
	if ((n->vlans.vlan || n->vlans.is_trunk) && !n->network)
		return err_set(-EINVAL, "'%s' needs a 'network'", n->vlans.vlan ? "vlan" : "trunk");
	return nicfw_from_json(o, n->network != NULL, &n->fw);
}

static int parse_nics(struct json_object *obj, struct vm_def *def)
{
	struct json_object *arr;
	size_t n;

	if (!json_object_object_get_ex(obj, "nics", &arr))
		return 0;
	if (!json_object_is_type(arr, json_type_array))
		return err_set(-EINVAL, "'nics' must be an array");
	n = json_object_array_length(arr);
	if (n > MGR_MAX_NICS)
		return err_set(-EINVAL, "at most %d nics", MGR_MAX_NICS);
	for (size_t i = 0; i < n; i++) {
		int ret = parse_nic(json_object_array_get_idx(arr, i), &def->nics[i]);

		def->nnics = (unsigned int)i + 1;
		if (ret)
			return err_prefix(ret, "nics", i);
	}
	return 0;
}

/* "cpu_pin": ["0", "1-3"] (one host CPU list per vCPU) or ["0-1"] for all. */
static int parse_pin(struct json_object *obj, unsigned int cpus, char **pin, unsigned int *npin)
{
	struct json_object *arr;
	size_t n;

	*npin = 0;
	if (!json_object_object_get_ex(obj, "cpu_pin", &arr))
		return -ENOENT;
	if (!json_object_is_type(arr, json_type_array))
		return err_set(-EINVAL, "'cpu_pin' must be an array of host CPU lists like \"0-3\"");
	n = json_object_array_length(arr);
	if (n != 0 && n != 1 && n != cpus)
		return err_set(-EINVAL, "'cpu_pin' needs 1 entry (all vCPUs) or %u (one per vCPU), not %zu",
			       cpus, n);
	for (size_t i = 0; i < n; i++) {
		struct json_object *v = json_object_array_get_idx(arr, i);
		cpu_set_t set;

		if (!json_object_is_type(v, json_type_string))
			return err_set(-EINVAL, "'cpu_pin' entries must be strings like \"0-3\"");
		if (control_parse_cpulist(json_object_get_string(v), &set))
			return err_prefix(-EINVAL, "cpu_pin", i);
		pin[i] = strdup(json_object_get_string(v));
		*npin = (unsigned int)i + 1;
		if (!pin[i])
			return err_set(-ENOMEM, "out of memory");
	}
	return 0;
}

static int parse_cpu_limits(struct json_object *obj, struct vm_def *def)
{
	uint64_t v;
	int ret;

	def->cpu_weight = 100;
	ret = get_uint(obj, "cpu_weight", 1, 10000, &v);
	if (!opt_ok(ret))
		return ret;
	if (!ret)
		def->cpu_weight = (unsigned int)v;
	ret = get_uint(obj, "cpu_max", 0, 100ULL * MGR_MAX_VCPUS, &v);
	if (!opt_ok(ret))
		return ret;
	if (!ret)
		def->cpu_max = (unsigned int)v;
	ret = parse_pin(obj, def->cpus, def->cpu_pin, &def->npin);
	return opt_ok(ret) ? 0 : ret;
}

/* "kernel" and/or "firmware" (docs/run.md, Firmware boot): absolute paths,
 * at least one. */
static int parse_boot(struct json_object *obj, struct vm_def *def)
{
	int ret = get_str(obj, "kernel", PATH_MAX - 1, &def->kernel);

	if (!opt_ok(ret))
		return ret;
	if (!ret && def->kernel[0] != '/')
		return err_set(-EINVAL, "'kernel' must be an absolute path");
	ret = get_str(obj, "firmware", PATH_MAX - 1, &def->firmware);
	if (!opt_ok(ret))
		return ret;
	if (!ret && def->firmware[0] != '/')
		return err_set(-EINVAL, "'firmware' must be an absolute path");
	if (!def->kernel && !def->firmware)
		return err_set(-EINVAL, "'kernel' or 'firmware' is required, an absolute path");
	return 0;
}

static int parse_def(struct json_object *obj, struct vm_def *def)
{
	static const char *const keys[] = { "name", "cpus", "memory", "kernel", "firmware",
					    "initrd", "cmdline", "disks",
					    "cpu_weight", "cpu_max", "cpu_pin", "balloon",
					    "balloon_target", "memory_min", "nics", NULL };
	char *name = NULL;
	uint64_t v;
	int ret = check_keys(obj, "a VM definition", keys);

	if (ret)
		return ret;
	ret = get_str(obj, "name", 1024, &name);
	if (ret == -ENOENT)
		return err_set(-EINVAL, "'name' is required");
	if (ret)
		return ret;
	if (!vm_name_valid(name)) {
		free(name);
		return err_set(-EINVAL, "bad name: 1 to %d characters of A-Z a-z 0-9 _ . -, "
			       "not starting with '.' or '-'", MGR_NAME_MAX);
	}
	strcpy(def->name, name);
	free(name);
	def->cpus = 1;
	if (!opt_ok(ret = get_uint(obj, "cpus", 1, MGR_MAX_VCPUS, &v)))
		return ret;
	if (!ret)
		def->cpus = (unsigned int)v;
	def->memory = 256ULL << 20;
	if (!opt_ok(ret = get_memory(obj, &def->memory)))
		return ret;
	if ((ret = parse_boot(obj, def)))
		return ret;
	ret = get_str(obj, "initrd", PATH_MAX - 1, &def->initrd);
	if (!opt_ok(ret))
		return ret;
	if (!ret && def->initrd[0] != '/')
		return err_set(-EINVAL, "'initrd' must be an absolute path");
	if (!opt_ok(ret = get_str(obj, "cmdline", MAX_CMDLINE, &def->cmdline)))
		return ret;
	if ((ret = parse_disks(obj, def)) || (ret = parse_nics(obj, def)))
		return ret;
	if (!opt_ok(ret = get_bool(obj, "balloon", &def->balloon)))
		return ret;
	if (!opt_ok(ret = get_balloon_target(obj, def->memory, &def->balloon_target)))
		return ret;
	if (!ret && !def->balloon)
		return err_set(-EINVAL, "'balloon_target' needs \"balloon\": true");
	if (!opt_ok(ret = get_memory_min(obj, def->memory, &def->memory_min)))
		return ret;
	if (def->balloon && def->memory - def->balloon_target < def->memory_min)
		return err_set(-EINVAL, "'balloon_target' would leave the guest less than its "
			       "'memory_min'");
	return parse_cpu_limits(obj, def);
}

int vm_def_from_json(struct json_object *obj, struct vm_def *def)
{
	int ret;

	memset(def, 0, sizeof(*def));
	ret = parse_def(obj, def);
	if (ret)
		vm_def_free(def);
	return ret;
}

/* ---- checks of a new definition against this host ---- */

/* cgroup v1 interface files without a '.' in their names; every other
 * cgroup file (v1 and v2) has one, and names with '.' are refused. */
static const char *const cgroup_files[] = { "tasks", "notify_on_release", "release_agent",
					    NULL };

/* A VM's name becomes a cgroup directory and socket and file names, so a
 * new VM may not have a '.' (cpu.max, cgroup.procs, ...) nor be a cgroup
 * file; the older rule (vm_name_valid) still finds VMs made before. */
static int check_new_name(const char *name, const char *state_dir)
{
	size_t sock_len = strlen(state_dir) + strlen("/run/") + strlen(name) + strlen(".sock");

	if (strchr(name, '.') || key_in(name, cgroup_files))
		return err_set(-EINVAL, "bad name '%s': a new VM's name is 1 to %d of A-Z a-z 0-9 "
			       "_ -, not starting with '-', and not a cgroup file name", name,
			       MGR_NAME_MAX);
	if (sock_len >= sizeof(((struct sockaddr_un *)0)->sun_path))
		return err_set(-ENAMETOOLONG, "'name' is too long for this state directory: its "
			       "control socket path would be %zu bytes (at most %zu)", sock_len,
			       sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
	return 0;
}

/* The CPUs a pin may name: the online ones. */
static void online_cpus(cpu_set_t *set)
{
	char text[256] = "";
	FILE *f = fopen("/sys/devices/system/cpu/online", "re");

	if (f) {
		if (!fgets(text, sizeof(text), f))
			text[0] = '\0';
		fclose(f);
	}
	text[strcspn(text, "\n")] = '\0';
	if (!text[0] || control_parse_cpulist(text, set)) {
		CPU_ZERO(set);
		for (long i = 0; i < sysconf(_SC_NPROCESSORS_CONF) && i < CPU_SETSIZE; i++)
			CPU_SET((int)i, set);
	}
}

int vm_pins_check_host(char *const *pin, unsigned int npin)
{
	cpu_set_t online, set, both;

	online_cpus(&online);
	for (unsigned int i = 0; i < npin; i++) {
		if (control_parse_cpulist(pin[i], &set))
			return err_prefix(-EINVAL, "cpu_pin", i);
		CPU_AND(&both, &set, &online);
		if (!CPU_EQUAL(&both, &set))
			return err_set(-EINVAL, "cpu_pin[%u]: \"%s\" names a CPU this host does not "
				       "have online (%d online)", i, pin[i], CPU_COUNT(&online));
	}
	return 0;
}

/* Multicast (and all-zero) addresses cannot be a NIC's own. */
static int check_macs(const struct vm_def *def)
{
	for (unsigned int i = 0; i < def->nnics; i++) {
		const char *mac = def->nics[i].mac;

		if (mac && (strtoul(mac, NULL, 16) & 1))
			return err_set(-EINVAL, "nics[%u]: 'mac' %s is a multicast address", i, mac);
		if (mac && !strcmp(mac, "00:00:00:00:00:00"))
			return err_set(-EINVAL, "nics[%u]: 'mac' must not be all zeros", i);
	}
	return 0;
}

static int check_memory_host(uint64_t memory)
{
	long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
	uint64_t host = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;

	if (host && memory > host)
		return err_set(-EINVAL, "'memory' (%llu bytes) is more than this host has "
			       "(%llu bytes)", (unsigned long long)memory, (unsigned long long)host);
	return 0;
}

int vm_def_check_new(const struct vm_def *def, const char *state_dir)
{
	int ret = check_new_name(def->name, state_dir);

	if (!ret)
		ret = check_macs(def);
	if (!ret)
		ret = check_memory_host(def->memory);
	return ret ? ret : vm_pins_check_host(def->cpu_pin, def->npin);
}

int vm_def_copy(const struct vm_def *src, struct vm_def *dst)
{
	struct json_object *o = vm_def_to_json(src);
	int ret = o ? vm_def_from_json(o, dst) : err_set(-ENOMEM, "out of memory");

	json_object_put(o);
	return ret;
}

void vm_def_free(struct vm_def *def)
{
	free(def->kernel);
	free(def->firmware);
	free(def->initrd);
	free(def->cmdline);
	for (unsigned int i = 0; i < def->ndisks; i++) {
		free(def->disks[i].path);
		free(def->disks[i].format);
	}
	for (unsigned int i = 0; i < def->nnics; i++) {
		free(def->nics[i].tap);
		free(def->nics[i].network);
		free(def->nics[i].mac);
		nicfw_free(&def->nics[i].fw);
	}
	for (unsigned int i = 0; i < def->npin; i++)
		free(def->cpu_pin[i]);
	memset(def, 0, sizeof(*def));
}

/* The I/O policy's fields, only when not their defaults (weight 100, no
 * floor): definitions without them read as before. */
static void io_share_to_json(struct json_object *o, unsigned int weight, uint64_t floor_bps,
			     uint64_t floor_iops)
{
	if (weight != 100)
		json_object_object_add(o, "weight", json_object_new_int((int)weight));
	if (floor_bps)
		json_object_object_add(o, "floor_bps", json_object_new_int64((int64_t)floor_bps));
	if (floor_iops)
		json_object_object_add(o, "floor_iops", json_object_new_int64((int64_t)floor_iops));
}

static struct json_object *disk_to_json(const struct mgr_disk *d)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "path", json_object_new_string(d->path));
	if (d->format)
		json_object_object_add(o, "format", json_object_new_string(d->format));
	json_object_object_add(o, "readonly", json_object_new_boolean(d->readonly));
	json_object_object_add(o, "bps", json_object_new_int64((int64_t)d->bps));
	json_object_object_add(o, "iops", json_object_new_int64((int64_t)d->iops));
	json_object_object_add(o, "cache", json_object_new_string(block_cache_name(d->cache)));
	io_share_to_json(o, d->weight, d->floor_bps, d->floor_iops);
	json_object_object_add(o, "aio", json_object_new_string(block_aio_name(d->aio)));
	if (d->queues)
		json_object_object_add(o, "queues", json_object_new_int((int)d->queues));
	return o;
}

static struct json_object *nic_to_json(const struct mgr_nic *n)
{
	struct json_object *o = json_object_new_object();

	if (n->tap)
		json_object_object_add(o, "tap", json_object_new_string(n->tap));
	if (n->network)
		json_object_object_add(o, "network", json_object_new_string(n->network));
	if (n->mac)
		json_object_object_add(o, "mac", json_object_new_string(n->mac));
	if (n->mtu)
		json_object_object_add(o, "mtu", json_object_new_int((int)n->mtu));
	json_object_object_add(o, "rx_bps", json_object_new_int64((int64_t)n->rx_bps));
	json_object_object_add(o, "tx_bps", json_object_new_int64((int64_t)n->tx_bps));
	io_share_to_json(o, n->weight, n->floor_bps, 0);
	if (n->vlans.vlan)
		json_object_object_add(o, "vlan", json_object_new_int((int)n->vlans.vlan));
	if (n->vlans.is_trunk)
		json_object_object_add(o, "trunk", vlan_set_to_json(&n->vlans.trunk));
	if (n->vlans.native_vlan)
		json_object_object_add(o, "native_vlan",
				       json_object_new_int((int)n->vlans.native_vlan));
	nicfw_to_json(&n->fw, o);
	return o;
}

struct json_object *vm_def_to_json(const struct vm_def *def)
{
	struct json_object *o = json_object_new_object();
	struct json_object *disks = json_object_new_array(), *pin = json_object_new_array();

	json_object_object_add(o, "name", json_object_new_string(def->name));
	json_object_object_add(o, "cpus", json_object_new_int((int)def->cpus));
	json_object_object_add(o, "memory", json_object_new_int64((int64_t)def->memory));
	if (def->kernel)
		json_object_object_add(o, "kernel", json_object_new_string(def->kernel));
	if (def->firmware)
		json_object_object_add(o, "firmware", json_object_new_string(def->firmware));
	if (def->initrd)
		json_object_object_add(o, "initrd", json_object_new_string(def->initrd));
	if (def->cmdline)
		json_object_object_add(o, "cmdline", json_object_new_string(def->cmdline));
	for (unsigned int i = 0; i < def->ndisks; i++)
		json_object_array_add(disks, disk_to_json(&def->disks[i]));
	json_object_object_add(o, "disks", disks);
	if (def->nnics) {
		struct json_object *nics = json_object_new_array();

		for (unsigned int i = 0; i < def->nnics; i++)
			json_object_array_add(nics, nic_to_json(&def->nics[i]));
		json_object_object_add(o, "nics", nics);
	}
	json_object_object_add(o, "cpu_weight", json_object_new_int((int)def->cpu_weight));
	json_object_object_add(o, "cpu_max", json_object_new_int((int)def->cpu_max));
	for (unsigned int i = 0; i < def->npin; i++)
		json_object_array_add(pin, json_object_new_string(def->cpu_pin[i]));
	json_object_object_add(o, "cpu_pin", pin);
	json_object_object_add(o, "balloon", json_object_new_boolean(def->balloon));
	if (def->balloon)
		json_object_object_add(o, "balloon_target", json_object_new_int64((int64_t)def->balloon_target));
	if (def->memory_min)
		json_object_object_add(o, "memory_min", json_object_new_int64((int64_t)def->memory_min));
	return o;
}

/* ---- PATCH ---- */

/* {"disk": I, "bps"?, "iops"?} or, for a vNIC, {"nic": I, "rx_bps"?, "tx_bps"?} */
/* A limit's I/O policy fields: each given one is changed, the others kept. */
static int parse_limit_share(struct json_object *o, struct vm_patch_limit *l,
			     bool nic)
{
	uint64_t w;
	int ret = get_uint(o, "weight", 1, 10000, &w);

	if (!opt_ok(ret))
		return ret;
	l->has_weight = !ret;
	l->weight = (unsigned int)w;
	ret = get_uint(o, "floor_bps", 0, CONTROL_MAX_RATE, &l->floor_bps);
	if (!opt_ok(ret))
		return ret;
	l->has_floor_bps = !ret;
	ret = nic ? -ENOENT : get_uint(o, "floor_iops", 0, CONTROL_MAX_RATE, &l->floor_iops);
	if (!opt_ok(ret))
		return ret;
	l->has_floor_iops = !ret;
	return 0;
}

static int parse_limit(struct json_object *o, const struct vm_def *def, struct vm_patch *p, bool nic)
{
	static const char *const disk_keys[] = { "disk", "bps", "iops", "weight", "floor_bps",
						 "floor_iops", NULL };
	static const char *const nic_keys[] = { "nic", "rx_bps", "tx_bps", "weight", "floor_bps",
						NULL };
	const char *const *keys = nic ? nic_keys : disk_keys;
	unsigned int i = p->nlimits, have = nic ? def->nnics : def->ndisks;
	uint64_t index;
	int ret = check_keys(o, nic ? "a nic limit" : "a disk limit", keys);

	if (ret)
		return ret;
	ret = get_uint(o, keys[0], 0, 255, &index);
	if (ret == -ENOENT)
		return err_set(-EINVAL, "a %s limit needs '%s' (an index)", keys[0], keys[0]);
	if (ret)
		return ret;
	if (index >= have)
		return err_set(-EINVAL, "no %s %llu (the VM has %u)", keys[0],
			       (unsigned long long)index, have);
	p->limits[i].nic = nic;
	p->limits[i].disk = (unsigned int)index;
	ret = get_uint(o, keys[1], 0, CONTROL_MAX_RATE, &p->limits[i].bps);
	if (!opt_ok(ret))
		return ret;
	p->limits[i].has_bps = !ret;
	ret = get_uint(o, keys[2], 0, CONTROL_MAX_RATE, &p->limits[i].iops);
	if (!opt_ok(ret))
		return ret;
	p->limits[i].has_iops = !ret;
	if ((ret = parse_limit_share(o, &p->limits[i], nic)))
		return ret;
	p->nlimits++;
	return 0;
}

static int parse_limits(struct json_object *obj, const struct vm_def *def, struct vm_patch *p,
			bool nic)
{
	const char *key = nic ? "nic_limits" : "disk_limits";
	unsigned int max = nic ? MGR_MAX_NICS : MGR_MAX_DISKS;
	struct json_object *arr;
	size_t n;

	if (!json_object_object_get_ex(obj, key, &arr))
		return 0;
	if (!json_object_is_type(arr, json_type_array))
		return err_set(-EINVAL, "'%s' must be an array", key);
	n = json_object_array_length(arr);
	if (n > max)
		return err_set(-EINVAL, "at most %u entries in '%s'", max, key);
	for (size_t i = 0; i < n; i++) {
		int ret = parse_limit(json_object_array_get_idx(arr, i), def, p, nic);

		if (ret)
			return err_prefix(ret, key, i);
	}
	return 0;
}

/* memory_min is a floor for the balloon too: a target below it is refused;
 * raising memory_min above what the balloon leaves deflates it. */
static int check_memory_floor(const struct vm_def *def, struct vm_patch *p)
{
	uint64_t min = p->has_memory_min ? p->memory_min : def->memory_min;
	uint64_t target = p->has_balloon ? p->balloon_target : def->balloon_target;

	if (!def->balloon || def->memory - target >= min)
		return 0;
	if (p->has_balloon)
		return err_set(-EINVAL, "'balloon_target' would leave the guest less than its "
			       "memory_min (%llu bytes)", (unsigned long long)min);
	p->has_balloon = true;
	p->balloon_target = def->memory - min;
	return 0;
}

/* "nic_vlans": [{"nic": I, "vlan"? | "trunk"? + "native_vlan"?}]: each
 * replaces vNIC I's VLANs (none: back to VLAN 1). */
static int parse_patch_vlans(struct json_object *obj, const struct vm_def *def,
			     struct vm_patch *p)
{
	static const char *const keys[] = { "nic", "vlan", "trunk", "native_vlan", NULL };
	struct json_object *arr;
	size_t n;

	if (!json_object_object_get_ex(obj, "nic_vlans", &arr))
		return 0;
	if (!json_object_is_type(arr, json_type_array) ||
	    (n = json_object_array_length(arr)) > MGR_MAX_NICS)
		return err_set(-EINVAL, "'nic_vlans' must be an array of at most %d entries",
			       MGR_MAX_NICS);
	for (size_t i = 0; i < n; i++) {
		struct json_object *o = json_object_array_get_idx(arr, i);
		uint64_t nic = 0;
		int ret = check_keys(o, "a nic_vlans entry", keys);

		if (!ret && (ret = get_uint(o, "nic", 0, MGR_MAX_NICS, &nic)) == -ENOENT)
			ret = err_set(-EINVAL, "'nic' (an index) is required");
		if (!ret && (nic >= def->nnics || !def->nics[nic].network))
			ret = err_set(-EINVAL, "'nic': VM '%s' has no vNIC %llu on a network",
				      def->name, (unsigned long long)nic);
		if (!ret)
			ret = parse_nic_vlans(o, &p->vlans[i].v);
		if (ret)
			return err_prefix(ret, "nic_vlans", i);
		p->vlans[i].nic = (unsigned int)nic;
		p->nvlans = (unsigned int)i + 1;
	}
	return 0;
}

static int parse_patch(struct json_object *obj, const struct vm_def *def, struct vm_patch *p)
{
	static const char *const keys[] = { "cpu_weight", "cpu_max", "cpu_pin", "disk_limits",
					    "nic_limits", "nic_vlans", "balloon_target",
					    "memory_min", NULL };
	uint64_t v = 0;
	int ret = check_keys(obj, "a PATCH body", keys);

	if (ret)
		return ret;
	if (!opt_ok(ret = get_uint(obj, "cpu_weight", 1, 10000, &v)))
		return ret;
	p->has_weight = !ret;
	p->cpu_weight = (unsigned int)v;
	if (!opt_ok(ret = get_uint(obj, "cpu_max", 0, 100ULL * MGR_MAX_VCPUS, &v)))
		return ret;
	p->has_max = !ret;
	p->cpu_max = (unsigned int)v;
	if (!opt_ok(ret = parse_pin(obj, def->cpus, p->cpu_pin, &p->npin)))
		return ret;
	p->has_pin = !ret;
	if (!opt_ok(ret = get_balloon_target(obj, def->memory, &p->balloon_target)))
		return ret;
	p->has_balloon = !ret;
	if (!opt_ok(ret = get_memory_min(obj, def->memory, &p->memory_min)))
		return ret;
	p->has_memory_min = !ret;
	if (p->has_balloon && !def->balloon)
		return err_set(-EINVAL, "VM '%s' has no balloon device", def->name);
	if ((ret = check_memory_floor(def, p)))
		return ret;
	if ((ret = parse_limits(obj, def, p, false)) || (ret = parse_limits(obj, def, p, true)))
		return ret;
	return parse_patch_vlans(obj, def, p);
}

int vm_patch_from_json(struct json_object *obj, const struct vm_def *def, struct vm_patch *p)
{
	int ret;

	memset(p, 0, sizeof(*p));
	ret = parse_patch(obj, def, p);
	if (ret)
		vm_patch_free(p);
	return ret;
}

static void apply_limit_share(struct vm_def *def,
			      const struct vm_patch_limit *l)
{
	unsigned int *weight = l->nic ? &def->nics[l->disk].weight : &def->disks[l->disk].weight;
	uint64_t *floor = l->nic ? &def->nics[l->disk].floor_bps : &def->disks[l->disk].floor_bps;

	if (l->has_weight)
		*weight = l->weight;
	if (l->has_floor_bps)
		*floor = l->floor_bps;
	if (l->has_floor_iops && !l->nic)
		def->disks[l->disk].floor_iops = l->floor_iops;
}

void vm_patch_apply(struct vm_def *def, struct vm_patch *p)
{
	if (p->has_weight)
		def->cpu_weight = p->cpu_weight;
	if (p->has_max)
		def->cpu_max = p->cpu_max;
	if (p->has_balloon)
		def->balloon_target = p->balloon_target;
	if (p->has_memory_min)
		def->memory_min = p->memory_min;
	if (p->has_pin) {
		for (unsigned int i = 0; i < def->npin; i++)
			free(def->cpu_pin[i]);
		memcpy(def->cpu_pin, p->cpu_pin, sizeof(def->cpu_pin));
		def->npin = p->npin;
		p->npin = 0; /* the definition owns the strings now */
	}
	for (unsigned int i = 0; i < p->nlimits; i++) {
		uint64_t *bps = p->limits[i].nic ? &def->nics[p->limits[i].disk].rx_bps :
				&def->disks[p->limits[i].disk].bps;
		uint64_t *iops = p->limits[i].nic ? &def->nics[p->limits[i].disk].tx_bps :
				 &def->disks[p->limits[i].disk].iops;

		if (p->limits[i].has_bps)
			*bps = p->limits[i].bps;
		if (p->limits[i].has_iops)
			*iops = p->limits[i].iops;
		apply_limit_share(def, &p->limits[i]);
	}
	for (unsigned int i = 0; i < p->nvlans; i++)
		def->nics[p->vlans[i].nic].vlans = p->vlans[i].v;
}

void vm_patch_free(struct vm_patch *p)
{
	for (unsigned int i = 0; i < p->npin; i++)
		free(p->cpu_pin[i]);
	p->npin = 0;
}
