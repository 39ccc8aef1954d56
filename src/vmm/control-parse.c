/* Control requests: JSON text → struct control_action (DESIGN §3.6). Every
 * field is checked; unknown fields are refused so that a typo is an error,
 * not a silent no-op. Pure functions, unit-tested in tests/unit. */
#include <errno.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

#include "vireo/control.h"
#include "vireo/log.h"

struct action_desc {
	const char *name;
	enum control_kind kind;
	const char *const *fields; /* allowed besides "action", NULL-terminated */
};

static const char *const no_fields[] = { NULL };
static const char *const limit_fields[] = { "disk", "bps", "iops", "nic", "rx_bps", "tx_bps",
					    NULL };
static const char *const pin_fields[] = { "vcpu", "cpus", NULL };
static const char *const balloon_fields[] = { "target", NULL };
static const char *const snapshot_fields[] = { "dir", "fds", "disks", "name", "incremental",
					       "parent", "parent_id", "track_dirty", NULL };
static const char *const name_fields[] = { "name", NULL };
static const char *const migrate_fields[] = { "uri", "token", "max_downtime_ms", "bandwidth",
					      "copy_storage", NULL };

static const struct action_desc actions[] = {
	{ "info", CONTROL_INFO, no_fields },
	{ "pause", CONTROL_PAUSE, no_fields },
	{ "resume", CONTROL_RESUME, no_fields },
	{ "poweroff", CONTROL_POWEROFF, no_fields },
	{ "reboot", CONTROL_REBOOT, no_fields },
	{ "powerdown", CONTROL_POWERDOWN, no_fields },
	{ "set-limits", CONTROL_SET_LIMITS, limit_fields },
	{ "pin", CONTROL_PIN, pin_fields },
	{ "balloon", CONTROL_BALLOON, balloon_fields },
	{ "snapshot", CONTROL_SNAPSHOT, snapshot_fields },
	{ "disk-snapshot-delete", CONTROL_DISK_SNAPSHOT_DELETE, name_fields },
	{ "migrate", CONTROL_MIGRATE, migrate_fields },
	{ "migrate-cancel", CONTROL_MIGRATE_CANCEL, no_fields },
};

static bool field_allowed(const struct action_desc *d, const char *key)
{
	if (!strcmp(key, "action"))
		return true;
	for (const char *const *f = d->fields; *f; f++)
		if (!strcmp(*f, key))
			return true;
	return false;
}

/* A non-negative integer no larger than max (json-c gives int64). */
static int get_uint(struct json_object *obj, const char *key, uint64_t max, uint64_t *out)
{
	struct json_object *v;
	int64_t n;

	if (!json_object_object_get_ex(obj, key, &v))
		return -ENOENT;
	if (!json_object_is_type(v, json_type_int))
		return err_set(-EINVAL, "'%s' must be an integer", key);
	errno = 0;
	n = json_object_get_int64(v);
	if (n < 0 || errno == ERANGE || (uint64_t)n > max)
		return err_set(-EINVAL, "'%s' must be between 0 and %llu", key,
			       (unsigned long long)max);
	*out = (uint64_t)n;
	return 0;
}

static int parse_cpu_range(const char *tok, cpu_set_t *out)
{
	char *end;
	unsigned long lo, hi;

	if (*tok < '0' || *tok > '9')
		return -EINVAL;
	lo = strtoul(tok, &end, 10);
	hi = lo;
	if (*end == '-') {
		if (end[1] < '0' || end[1] > '9')
			return -EINVAL;
		hi = strtoul(end + 1, &end, 10);
	}
	if (*end || lo > hi || hi >= CPU_SETSIZE)
		return -EINVAL;
	for (unsigned long c = lo; c <= hi; c++)
		CPU_SET(c, out);
	return 0;
}

int control_parse_cpulist(const char *text, cpu_set_t *out)
{
	char buf[256], *save = NULL;

	CPU_ZERO(out);
	size_t n = strlen(text);

	/* strtok_r would skip empty items: refuse them here. */
	if (n >= sizeof(buf) || !n || text[0] == ',' || text[n - 1] == ',' || strstr(text, ",,"))
		return err_set(-EINVAL, "bad CPU list '%.64s'", text);
	strcpy(buf, text);
	for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
		if (parse_cpu_range(tok, out))
			return err_set(-EINVAL, "bad CPU list '%.64s' (want e.g. 0-3,6)", text);
	if (!CPU_COUNT(out))
		return err_set(-EINVAL, "empty CPU list");
	return 0;
}

/* An optional rate: *has says whether it was given. */
static int get_rate(struct json_object *obj, const char *key, uint64_t *out, bool *has)
{
	int ret = get_uint(obj, key, CONTROL_MAX_RATE, out);

	*has = !ret;
	return ret == -ENOENT ? 0 : ret;
}

/* {"disk": I, "bps"?, "iops"?} or {"nic": I, "rx_bps"?, "tx_bps"?} */
static int parse_limits(struct json_object *obj, struct control_action *a)
{
	bool is_disk = json_object_object_get_ex(obj, "disk", NULL);
	bool is_nic = json_object_object_get_ex(obj, "nic", NULL);
	uint64_t index = 0;
	int ret;

	if (is_disk == is_nic)
		return err_set(-EINVAL, "set-limits needs one of 'disk' or 'nic' (an index)");
	ret = get_uint(obj, is_disk ? "disk" : "nic", 255, &index);
	if (ret)
		return ret;
	a->nic = is_nic;
	a->disk = (unsigned int)index;
	if (is_disk && ((ret = get_rate(obj, "bps", &a->bps, &a->has_bps)) ||
			(ret = get_rate(obj, "iops", &a->iops, &a->has_iops))))
		return ret;
	if (is_nic && ((ret = get_rate(obj, "rx_bps", &a->bps, &a->has_bps)) ||
		       (ret = get_rate(obj, "tx_bps", &a->iops, &a->has_iops))))
		return ret;
	if (!a->has_bps && !a->has_iops)
		return err_set(-EINVAL, "set-limits needs %s", is_disk ? "'bps' or 'iops'" :
			       "'rx_bps' or 'tx_bps'");
	if (is_disk && (json_object_object_get_ex(obj, "rx_bps", NULL) ||
			json_object_object_get_ex(obj, "tx_bps", NULL)))
		return err_set(-EINVAL, "a disk has 'bps' and 'iops', not rx_bps/tx_bps");
	if (is_nic && (json_object_object_get_ex(obj, "bps", NULL) ||
		       json_object_object_get_ex(obj, "iops", NULL)))
		return err_set(-EINVAL, "a nic has 'rx_bps' and 'tx_bps', not bps/iops");
	return 0;
}

static int parse_pin(struct json_object *obj, struct control_action *a)
{
	struct json_object *v;
	uint64_t vcpu;
	int ret = get_uint(obj, "vcpu", 1023, &vcpu);

	if (ret == -ENOENT)
		return err_set(-EINVAL, "pin needs 'vcpu' (an index)");
	if (ret)
		return ret;
	a->vcpu = (unsigned int)vcpu;
	if (!json_object_object_get_ex(obj, "cpus", &v) || !json_object_is_type(v, json_type_string))
		return err_set(-EINVAL, "pin needs 'cpus', a host CPU list like \"0-3,6\"");
	return control_parse_cpulist(json_object_get_string(v), &a->cpus);
}

/* A disk snapshot's name: 1..64 of [A-Za-z0-9_.-], not starting with '.'
 * or '-' (the daemon's names). */
static int parse_snap_name(struct json_object *obj, struct control_action *a)
{
	struct json_object *v;
	const char *name;
	size_t len;

	if (!json_object_object_get_ex(obj, "name", &v) || !json_object_is_type(v, json_type_string))
		return err_set(-EINVAL, "'name' (the disks' snapshot name, a string) is needed");
	name = json_object_get_string(v);
	len = strlen(name);
	if (!len || len > CONTROL_SNAP_NAME_MAX || name[0] == '.' || name[0] == '-' ||
	    strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") != len)
		return err_set(-EINVAL, "'name' must be 1 to 64 of A-Z a-z 0-9 _ . -, not starting "
			       "with '.' or '-'");
	strcpy(a->name, name);
	return 0;
}

/* "incremental": BOOL, "parent": PATH (the parent's directory as the new
 * snapshot records it), "parent_id": "16 hex digits" (the base it must
 * be); the last two only with "incremental". */
static int parse_incremental(struct json_object *obj, struct control_action *a)
{
	struct json_object *v;
	const char *s;
	char *end;

	if (json_object_object_get_ex(obj, "incremental", &v)) {
		if (!json_object_is_type(v, json_type_boolean))
			return err_set(-EINVAL, "snapshot 'incremental' must be true or false");
		a->incremental = json_object_get_boolean(v);
	}
	if (!a->incremental && (json_object_object_get_ex(obj, "parent", &v) ||
				json_object_object_get_ex(obj, "parent_id", &v)))
		return err_set(-EINVAL, "snapshot 'parent' and 'parent_id' go with "
			       "\"incremental\": true");
	if (json_object_object_get_ex(obj, "parent", &v)) {
		if (!json_object_is_type(v, json_type_string) || !json_object_get_string(v)[0] ||
		    strlen(json_object_get_string(v)) >= sizeof(a->parent))
			return err_set(-EINVAL, "snapshot 'parent' must be a directory path");
		strcpy(a->parent, json_object_get_string(v));
	}
	if (json_object_object_get_ex(obj, "parent_id", &v)) {
		s = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : "";
		errno = 0;
		a->parent_id = strtoull(s, &end, 16);
		if (strlen(s) != 16 || *end || errno || !a->parent_id)
			return err_set(-EINVAL, "snapshot 'parent_id' must be a snapshot id "
				       "(16 hex digits)");
	}
	return 0;
}

/* "track_dirty": BOOL, with memory (dir or fds) only. */
static int parse_track_dirty(struct json_object *obj, struct control_action *a)
{
	struct json_object *v;

	if (!json_object_object_get_ex(obj, "track_dirty", &v))
		return 0;
	if (!json_object_is_type(v, json_type_boolean))
		return err_set(-EINVAL, "snapshot 'track_dirty' must be true or false");
	a->track_dirty = json_object_get_boolean(v);
	if (!json_object_object_get_ex(obj, "dir", &v) &&
	    !(json_object_object_get_ex(obj, "fds", &v) && json_object_get_boolean(v)))
		return err_set(-EINVAL, "snapshot 'track_dirty' goes with a snapshot of memory "
			       "('dir' or 'fds')");
	return 0;
}

/* {"dir": "/abs/path", "disks": BOOL, "name": SNAP}: dir absolute, so that
 * it does not depend on the VMM's working directory; either may be left
 * out (not both): disks only, or memory and state only. */
static int parse_snapshot(struct json_object *obj, struct control_action *a)
{
	struct json_object *v;
	const char *dir;

	if (parse_incremental(obj, a) || parse_track_dirty(obj, a))
		return -EINVAL;

	if (json_object_object_get_ex(obj, "disks", &v)) {
		if (!json_object_is_type(v, json_type_boolean))
			return err_set(-EINVAL, "snapshot 'disks' must be true or false");
		a->disks = json_object_get_boolean(v);
	}
	if (a->disks && parse_snap_name(obj, a))
		return -EINVAL;
	if (!a->disks && json_object_object_get_ex(obj, "name", &v))
		return err_set(-EINVAL, "snapshot 'name' names the disks' snapshot: only with "
			       "\"disks\": true");
	if (json_object_object_get_ex(obj, "fds", &v)) {
		if (!json_object_is_type(v, json_type_boolean))
			return err_set(-EINVAL, "snapshot 'fds' must be true or false");
		a->fds = json_object_get_boolean(v);
	}
	if (a->fds && json_object_object_get_ex(obj, "dir", &v))
		return err_set(-EINVAL, "snapshot takes 'dir' or 'fds', not both");
	if (!json_object_object_get_ex(obj, "dir", &v) && a->incremental && !a->fds)
		return err_set(-EINVAL, "an incremental snapshot needs 'dir' or 'fds'");
	if (!json_object_object_get_ex(obj, "dir", &v) && (a->disks || a->fds))
		return 0;
	if (!v || !json_object_is_type(v, json_type_string))
		return err_set(-EINVAL, "snapshot needs 'dir', a directory path");
	dir = json_object_get_string(v);
	if (dir[0] != '/' || strlen(dir) >= sizeof(a->dir) - 16)
		return err_set(-EINVAL, "snapshot 'dir' must be an absolute path of at most %zu bytes",
			       sizeof(a->dir) - 17);
	strcpy(a->dir, dir);
	return 0;
}

static int get_string(struct json_object *obj, const char *key, char *out, size_t size)
{
	struct json_object *v;

	if (!json_object_object_get_ex(obj, key, &v))
		return -ENOENT;
	if (!json_object_is_type(v, json_type_string) ||
	    strlen(json_object_get_string(v)) >= size)
		return err_set(-EINVAL, "migrate '%s' must be a string of less than %zu bytes",
			       key, size);
	strcpy(out, json_object_get_string(v));
	return 0;
}

/* {"uri": "tcp:HOST:PORT" or "fd", "token": T, "max_downtime_ms": N,
 * "bandwidth": B, "copy_storage": bool}; "fd": the stream is the socket passed
 * with the request. */
static int parse_migrate(struct json_object *obj, struct control_action *a)
{
	struct json_object *v;
	int ret = get_string(obj, "uri", a->uri, sizeof(a->uri));

	if (ret == -ENOENT || (!ret && strncmp(a->uri, "tcp:", 4) && strcmp(a->uri, "fd")))
		return err_set(-EINVAL, "migrate needs 'uri': \"tcp:HOST:PORT\" or \"fd\"");
	if (ret)
		return ret;
	ret = get_string(obj, "token", a->token, sizeof(a->token));
	if (ret && ret != -ENOENT)
		return ret;
	ret = get_uint(obj, "max_downtime_ms", 3600000, &a->max_downtime_ms);
	if (ret == -ENOENT)
		a->max_downtime_ms = 0;
	else if (ret || !a->max_downtime_ms)
		return err_set(-EINVAL, "migrate 'max_downtime_ms' must be 1..3600000");
	ret = get_uint(obj, "bandwidth", CONTROL_MAX_RATE, &a->bps);
	if (ret && ret != -ENOENT)
		return err_set(-EINVAL, "migrate 'bandwidth' must be bytes per second");
	if (json_object_object_get_ex(obj, "copy_storage", &v)) {
		if (!json_object_is_type(v, json_type_boolean))
			return err_set(-EINVAL, "migrate 'copy_storage' must be true or false");
		a->copy_storage = json_object_get_boolean(v);
	}
	return 0;
}

static int parse_object(struct json_object *obj, struct control_action *a)
{
	struct json_object *act;
	const struct action_desc *d = NULL;
	const char *name;

	if (!json_object_is_type(obj, json_type_object))
		return err_set(-EINVAL, "a request must be a JSON object");
	if (!json_object_object_get_ex(obj, "action", &act) ||
	    !json_object_is_type(act, json_type_string))
		return err_set(-EINVAL, "a request needs \"action\" (a string)");
	name = json_object_get_string(act);
	for (size_t i = 0; i < sizeof(actions) / sizeof(actions[0]); i++)
		if (!strcmp(actions[i].name, name))
			d = &actions[i];
	if (!d)
		return err_set(-EINVAL, "unknown action '%.64s'", name);
	json_object_object_foreach(obj, key, val) {
		(void)val;
		if (!field_allowed(d, key))
			return err_set(-EINVAL, "unknown field '%.64s' for action %s", key, d->name);
	}
	memset(a, 0, sizeof(*a));
	a->fd[0] = a->fd[1] = -1;
	a->kind = d->kind;
	if (a->kind == CONTROL_SET_LIMITS)
		return parse_limits(obj, a);
	if (a->kind == CONTROL_PIN)
		return parse_pin(obj, a);
	if (a->kind == CONTROL_SNAPSHOT)
		return parse_snapshot(obj, a);
	if (a->kind == CONTROL_DISK_SNAPSHOT_DELETE)
		return parse_snap_name(obj, a);
	if (a->kind == CONTROL_MIGRATE)
		return parse_migrate(obj, a);
	if (a->kind == CONTROL_BALLOON && get_uint(obj, "target", 1ULL << 40, &a->target))
		return err_set(-EINVAL, "balloon needs 'target': bytes the guest gives back, up to 1T");
	return 0;
}

int control_parse(const char *text, size_t len, struct control_action *out)
{
	struct json_tokener *tok;
	struct json_object *obj;
	int ret;

	if (len > CONTROL_MAX_LINE || len > INT32_MAX)
		return err_set(-EINVAL, "request longer than %d bytes", CONTROL_MAX_LINE);
	tok = json_tokener_new_ex(32);
	if (!tok)
		return err_set(-ENOMEM, "out of memory");
	obj = json_tokener_parse_ex(tok, text, (int)len);
	if (!obj || json_tokener_get_error(tok) != json_tokener_success) {
		ret = err_set(-EINVAL, "malformed JSON: %s",
			      json_tokener_error_desc(json_tokener_get_error(tok)));
		goto out;
	}
	/* Anything but whitespace after the object is refused. */
	for (size_t i = json_tokener_get_parse_end(tok); i < len; i++) {
		if (text[i] != ' ' && text[i] != '\t' && text[i] != '\r' && text[i] != '\n') {
			ret = err_set(-EINVAL, "trailing data after the JSON object");
			goto out;
		}
	}
	ret = parse_object(obj, out);
out:
	json_object_put(obj);
	json_tokener_free(tok);
	return ret;
}
