/* vireo vm snapshot|snapshots|rollback|delsnapshot: the daemon's VM
 * snapshots (docs/api.md "Snapshots") with Proxmox's verbs (qm snapshot,
 * qm listsnapshot, qm rollback, qm delsnapshot). A request that takes more
 * than a second shows a progress line on stderr until it is answered. */
#include <errno.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vireo/cmd.h"
#include "vireo/size.h"

struct snap_cli {
	const char *socket;
	bool json;
	bool no_memory;
	bool incremental;      /* --incremental: only the memory changed since the current one */
	const char *args[4];
	int nargs;
};

/* ---- the progress line ---- */

/* "vireo: WHAT... Ns", redrawn each second on a terminal (elsewhere printed
 * once): the daemon gives no finer progress. */
static bool snapshot_tick(void *what, unsigned int seconds, bool tty, bool shown)
{
	if (tty || !shown)
		fprintf(stderr, tty ? "\rvireo: %s... %u s" : "vireo: %s...\n", (const char *)what,
			seconds);
	return true;
}

static struct json_object *call_with_progress(const struct snap_cli *c, const char *what,
					      const char *method, const char *path,
					      const char *body, bool *ok)
{
	return vm_api_call_ticking(c->socket, c->json, method, path, body, ok, snapshot_tick,
				   (void *)what);
}

/* ---- helpers ---- */

static const char *str(struct json_object *o, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(o, key, &v) && v ? json_object_get_string(v) : "";
}

static bool flag(struct json_object *o, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(o, key, &v) && json_object_get_boolean(v);
}

/* Names go into the URL as they are: the daemon checks them, but nothing
 * may make the path mean another route. */
static bool names_ok(const struct snap_cli *c)
{
	for (int i = 0; i < c->nargs; i++)
		if (!c->args[i][0] || strlen(c->args[i]) > 100 || strpbrk(c->args[i], "?#%/ ")) {
			fprintf(stderr, "vireo: bad name '%s'\n", vm_api_safe(c->args[i]));
			return false;
		}
	return true;
}

static int parse_args(struct snap_cli *c, int argc, char **argv, bool memory_flag)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (memory_flag && !strcmp(a, "--no-memory"))
			c->no_memory = true;
		else if (memory_flag && !strcmp(a, "--incremental"))
			c->incremental = true;
		else if (!strcmp(a, "--output=json") || !strcmp(a, "--json"))
			c->json = true;
		else if (!strcmp(a, "--output=text"))
			c->json = false;
		else if (!strcmp(a, "--socket") && i + 1 < argc)
			c->socket = argv[++i];
		else if (!strncmp(a, "--socket=", 9))
			c->socket = a + 9;
		else if (a[0] == '-' || c->nargs == 4)
			return -EINVAL;
		else
			c->args[c->nargs++] = a;
	}
	return 0;
}

/* ---- the verbs ---- */

static int take(struct snap_cli *c, const char *vm, const char *snap)
{
	struct json_object *body = json_object_new_object(), *o;
	char path[160], what[200];
	bool ok;

	json_object_object_add(body, "name", json_object_new_string(snap));
	json_object_object_add(body, "memory", json_object_new_boolean(!c->no_memory));
	if (c->incremental)
		json_object_object_add(body, "incremental", json_object_new_boolean(true));
	snprintf(path, sizeof(path), "/vms/%s/snapshots", vm);
	snprintf(what, sizeof(what), "taking snapshot %s of %s", snap, vm);
	o = call_with_progress(c, what, "POST", path, json_object_to_json_string(body), &ok);
	json_object_put(body);
	if (ok && c->json)
		vm_api_print_json(o);
	else if (ok)
		printf("%s: snapshot %s taken (%s)\n", vm, vm_api_safe(str(o, "name")),
		       flag(o, "incremental") ? "memory changed since its parent, and disks" :
		       flag(o, "memory") ? "memory and disks" : "disks only");
	json_object_put(o);
	return ok ? 0 : 1;
}

static void print_one(struct json_object *s, const char *current)
{
	struct json_object *t;
	char when[32] = "-", size[32];
	time_t secs;
	struct tm tm;

	if (*str(s, "damaged")) {
		printf("  %-20s DAMAGED: %s\n", vm_api_safe(str(s, "name")),
		       vm_api_safe(str(s, "damaged")));
		return;
	}
	if (json_object_object_get_ex(s, "time", &t)) {
		secs = (time_t)json_object_get_int64(t);
		if (localtime_r(&secs, &tm))
			strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
	}
	size_format(json_object_object_get_ex(s, "size", &t) ? (uint64_t)json_object_get_int64(t) : 0,
		    size, sizeof(size));
	printf("%c %-20s %-19s  %-6s  %10s  %s\n", strcmp(str(s, "name"), current) ? ' ' : '*',
	       vm_api_safe(str(s, "name")), when,
	       flag(s, "incremental") ? "incr" : flag(s, "memory") ? "memory" : "disks", size,
	       *str(s, "parent") ? vm_api_safe(str(s, "parent")) : "-");
}

static int list(struct snap_cli *c, const char *vm)
{
	struct json_object *o, *arr;
	char path[160];
	bool ok;

	snprintf(path, sizeof(path), "/vms/%s/snapshots", vm);
	o = vm_api_call(c->socket, c->json, "GET", path, NULL, &ok);
	if (ok && c->json) {
		vm_api_print_json(o);
	} else if (ok && json_object_object_get_ex(o, "snapshots", &arr)) {
		printf("  %-20s %-19s  %-6s  %10s  %s\n", "NAME", "TIME", "SAVES", "SIZE", "PARENT");
		for (size_t i = 0; i < json_object_array_length(arr); i++)
			print_one(json_object_array_get_idx(arr, i), str(o, "current"));
	}
	json_object_put(o);
	return ok ? 0 : 1;
}

static int rollback_or_delete(struct snap_cli *c, bool rollback, const char *vm,
			      const char *snap)
{
	struct json_object *o;
	char path[240], what[200];
	bool ok;

	snprintf(path, sizeof(path), "/vms/%s/snapshots/%s%s", vm, snap,
		 rollback ? "/rollback" : "");
	snprintf(what, sizeof(what), "%s snapshot %s of %s", rollback ? "rolling back to" :
		 "deleting", snap, vm);
	o = call_with_progress(c, what, rollback ? "POST" : "DELETE", path, NULL, &ok);
	if (ok && c->json)
		vm_api_print_json(o);
	else if (ok && rollback)
		printf("%s: rolled back to %s (%s)\n", vm, snap, vm_api_safe(str(o, "state")));
	else if (ok)
		printf("%s: snapshot %s deleted\n", vm, snap);
	json_object_put(o);
	return ok ? 0 : 1;
}

/* The daemon resolves the path itself (it must lie in its storage): a
 * relative one is made absolute here, the last part kept as given. */
static int absolute(const char *path, char *out, size_t size)
{
	char cwd[PATH_MAX];

	if (path[0] == '/')
		return snprintf(out, size, "%s", path) < (int)size ? 0 : -ENAMETOOLONG;
	if (!getcwd(cwd, sizeof(cwd)))
		return -errno;
	return snprintf(out, size, "%s/%s", cwd, path) < (int)size ? 0 : -ENAMETOOLONG;
}

/* vireo vm export NAME [SNAP] FILE | import FILE [NEW] (key "file": one
 * archive) and vireo vm snapshot export NAME SNAP DIR | import DIR NAME
 * (key "dir"): one request each. vm NULL: the exported VM's name. */
static int transfer(struct snap_cli *c, bool export, const char *key, const char *vm,
		    const char *snap, const char *where)
{
	struct json_object *body, *o;
	char path[PATH_MAX], url[240], what[200];
	bool ok;

	if (!where[0] || absolute(where, path, sizeof(path))) {
		fprintf(stderr, "vireo: bad path '%s'\n", vm_api_safe(where));
		return 2;
	}
	body = json_object_new_object();
	json_object_object_add(body, key, json_object_new_string(path));
	if (export) {
		snprintf(url, sizeof(url), "/vms/%s/snapshots/%s/export", vm, snap);
		snprintf(what, sizeof(what), "exporting snapshot %s of %s", snap, vm);
	} else {
		snprintf(url, sizeof(url), vm ? "/vms/%s/import" : "/vms/import", vm);
		snprintf(what, sizeof(what), "importing %.100s", path);
	}
	o = call_with_progress(c, what, "POST", url, json_object_to_json_string(body), &ok);
	json_object_put(body);
	if (ok && c->json)
		vm_api_print_json(o);
	else if (ok && export)
		printf("%s: snapshot %s exported to %s\n", vm, snap, vm_api_safe(path));
	else if (ok)
		printf("%s: imported (stopped; vireo vm rollback %s SNAP to bring the snapshot "
		       "back)\n", vm_api_safe(str(o, "name")), vm_api_safe(str(o, "name")));
	json_object_put(o);
	return ok ? 0 : 1;
}

/* Names go into the URL; a path is the body's (it may hold '/'). */
static bool names_but(const struct snap_cli *c, int from, const char *path)
{
	struct snap_cli names = *c;

	names.nargs = 0;
	for (int i = from; i < c->nargs; i++)
		if (c->args[i] != path)
			names.args[names.nargs++] = c->args[i];
	return names_ok(&names);
}

/* A request whose answer is not shown (errors are). */
static bool quiet(const struct snap_cli *c, const char *method, const char *path,
		  const char *body)
{
	bool ok;

	json_object_put(vm_api_call(c->socket, false, method, path, body, &ok));
	return ok;
}

/* vireo vm export NAME [SNAP] FILE: without SNAP, the VM as it is now,
 * through a snapshot (memory too if it runs: it is paused as long as a
 * snapshot takes) that is exported and then deleted (as vzdump does). */
static int export_cmd(struct snap_cli *c)
{
	const char *vm = c->args[0], *file = c->args[c->nargs - 1];
	char snap[64], path[240], body[128];
	time_t now = time(NULL);
	struct tm tm;
	int ret;

	if (!names_but(c, 0, file))
		return 2;
	if (c->nargs == 3)
		return transfer(c, true, "file", vm, c->args[1], file);
	gmtime_r(&now, &tm);
	strftime(snap, sizeof(snap), "export-%Y%m%dT%H%M%SZ", &tm);
	snprintf(path, sizeof(path), "/vms/%s/snapshots", vm);
	snprintf(body, sizeof(body), "{\"name\": \"%s\"}", snap);
	if (!quiet(c, "POST", path, body))
		return 1;
	ret = transfer(c, true, "file", vm, snap, file);
	snprintf(path, sizeof(path), "/vms/%s/snapshots/%s", vm, snap);
	if (!quiet(c, "DELETE", path, NULL))
		fprintf(stderr, "vireo: the snapshot %s of %s stays: vireo vm delsnapshot %s %s\n",
			snap, vm, vm, snap);
	return ret;
}

int vm_snapshot_cmd(const char *socket, bool json, int argc, char **argv)
{
	struct snap_cli c = { .socket = socket, .json = json };
	const char *cmd = argv[0];
	bool list_cmd = !strcmp(cmd, "snapshots");
	int want = list_cmd ? 1 : 2;

	if (!strcmp(cmd, "export") || !strcmp(cmd, "import")) {
		bool export = !strcmp(cmd, "export");

		if (parse_args(&c, argc, argv, false) || c.nargs < 1 + export || c.nargs > 2 + export) {
			fprintf(stderr, "vireo: usage: vireo vm %s\n",
				export ? "export NAME [SNAP] FILE" : "import FILE [NEWNAME]");
			return 2;
		}
		if (export)
			return export_cmd(&c);
		return names_but(&c, 0, c.args[0]) ?
		       transfer(&c, false, "file", c.nargs == 2 ? c.args[1] : NULL, NULL, c.args[0]) : 2;
	}
	if (!strcmp(cmd, "snapshot") && !parse_args(&c, argc, argv, false) && c.nargs >= 1 &&
	    ((!strcmp(c.args[0], "export") && c.nargs == 4) ||
	     (!strcmp(c.args[0], "import") && c.nargs == 3))) {
		bool export = !strcmp(c.args[0], "export");
		const char *dir = c.args[export ? 3 : 1];

		if (!names_but(&c, 1, dir))
			return 2;
		return export ? transfer(&c, true, "dir", c.args[1], c.args[2], dir) :
				transfer(&c, false, "dir", c.args[2], NULL, dir);
	}
	c = (struct snap_cli){ .socket = socket, .json = json };
	if (parse_args(&c, argc, argv, !strcmp(cmd, "snapshot")) || c.nargs != want) {
		fprintf(stderr, "vireo: usage: vireo vm %s NAME%s\n", cmd,
			list_cmd ? "" : !strcmp(cmd, "snapshot") ? " SNAP [--no-memory|--incremental]" : " SNAP");
		return 2;
	}
	if (!names_ok(&c))
		return 2;
	if (list_cmd)
		return list(&c, c.args[0]);
	if (!strcmp(cmd, "snapshot"))
		return take(&c, c.args[0], c.args[1]);
	return rollback_or_delete(&c, !strcmp(cmd, "rollback"), c.args[0], c.args[1]);
}
