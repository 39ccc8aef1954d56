/* VM snapshots in the daemon (docs/api.md "Snapshots"): a snapshot is the
 * VMM's state and memory files (when the VM had a VMM and memory was
 * asked for) plus a qcow2 internal snapshot of the same name in each
 * writable disk, all taken while the VM is paused, so disks and memory
 * show the same instant.
 *
 * Layout (DIR = the state dir):
 *   DIR/snapshots/VM/SNAP/meta.json  {"name", "time", "time_ns", "parent", "memory",
 *                                     "vm_state", "disks": [{"index", "path"}]}
 *   DIR/snapshots/VM/SNAP/state, memory   with memory (include/vireo/state.h)
 *   DIR/snapshots/VM/current.json    {"current": SNAP}: what the VM descends
 *                                     from, the parent of the next snapshot
 * A snapshot is built in DIR/snapshots/VM/.SNAP.tmp (a name no snapshot can
 * have) and renamed into place with its meta.json inside, so a snapshot
 * directory without a valid meta.json is damaged, never half-made. Nothing
 * is cached: every request reads the directory, so snapshots outlive the
 * daemon.
 *
 * One writer per image: while a VM has a VMM, only the VMM writes its
 * images, so the VMM takes and drops their internal snapshots (control
 * actions `snapshot` with "disks" and `disk-snapshot-delete`); the daemon
 * opens them itself only when the VM is stopped, with the image lock. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "vireo/block.h"
#include "vireo/log.h"
#include "vireo/machine.h"
#include "vireo/mgr.h"
#include "vireo/state.h"
#include "snapshot-int.h"

/* Writing a guest's memory takes time; a paused VM is not guest-paced. */
#define SNAP_VMM_TIMEOUT_MS 120000

void meta_free(struct snap_meta *s)
{
	for (unsigned int i = 0; i < s->ndisks; i++)
		free(s->disks[i].path);
	s->ndisks = 0;
}

int snap_path(struct mgr *m, char *buf, size_t size, const char *vm, const char *snap,
		     const char *file)
{
	int n = snprintf(buf, size, "%s/snapshots/%s%s%s%s%s", m->state_dir, vm, snap ? "/" : "",
			 snap ? snap : "", file ? "/" : "", file ? file : "");

	return n < 0 || (size_t)n >= size ? err_set(-ENAMETOOLONG, "state path too long") : 0;
}

/* ---- meta.json ---- */

struct json_object *meta_to_json(const struct snap_meta *s)
{
	struct json_object *o = json_object_new_object(), *d = json_object_new_array();

	json_object_object_add(o, "name", json_object_new_string(s->name));
	json_object_object_add(o, "time", json_object_new_int64(s->time_ns / 1000000000));
	json_object_object_add(o, "time_ns", json_object_new_int64(s->time_ns));
	json_object_object_add(o, "parent", s->parent[0] ? json_object_new_string(s->parent) : NULL);
	json_object_object_add(o, "memory", json_object_new_boolean(s->memory));
	json_object_object_add(o, "incremental", json_object_new_boolean(s->incremental));
	if (s->memory_id[0])
		json_object_object_add(o, "memory_id", json_object_new_string(s->memory_id));
	json_object_object_add(o, "vm_state", json_object_new_string(s->vm_state));
	for (unsigned int i = 0; i < s->ndisks; i++) {
		struct json_object *k = json_object_new_object();

		json_object_object_add(k, "index", json_object_new_int((int)s->disks[i].index));
		json_object_object_add(k, "path", json_object_new_string(s->disks[i].path));
		json_object_array_add(d, k);
	}
	json_object_object_add(o, "disks", d);
	return o;
}

static int name_field(struct json_object *o, const char *key, char *out, bool optional)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !v) {
		out[0] = '\0';
		return optional ? 0 : err_set(-EINVAL, "no '%s'", key);
	}
	if (!json_object_is_type(v, json_type_string) || !vm_name_valid(json_object_get_string(v)))
		return err_set(-EINVAL, "bad '%s'", key);
	strcpy(out, json_object_get_string(v));
	return 0;
}

static int meta_disks(struct json_object *arr, struct snap_meta *s)
{
	struct json_object *k, *idx, *path;

	if (!json_object_is_type(arr, json_type_array) ||
	    json_object_array_length(arr) > MGR_MAX_DISKS)
		return err_set(-EINVAL, "bad 'disks'");
	for (size_t i = 0; i < json_object_array_length(arr); i++) {
		k = json_object_array_get_idx(arr, i);
		if (!json_object_object_get_ex(k, "index", &idx) ||
		    !json_object_is_type(idx, json_type_int) || json_object_get_int(idx) < 0 ||
		    json_object_get_int(idx) >= MGR_MAX_DISKS ||
		    !json_object_object_get_ex(k, "path", &path) ||
		    !json_object_is_type(path, json_type_string))
			return err_set(-EINVAL, "bad disk %zu", i);
		s->disks[s->ndisks].index = (unsigned int)json_object_get_int(idx);
		s->disks[s->ndisks++].path = strdup(json_object_get_string(path));
	}
	return 0;
}

/* "incremental" (absent: false) needs memory and a parent; "memory_id" is
 * 16 hex digits (absent: taken by a vireo without incremental snapshots). */
static int meta_incremental(struct json_object *o, struct snap_meta *s)
{
	struct json_object *v;
	const char *id;

	if (json_object_object_get_ex(o, "incremental", &v)) {
		if (!json_object_is_type(v, json_type_boolean))
			return err_set(-EINVAL, "bad 'incremental'");
		s->incremental = json_object_get_boolean(v);
	}
	if (s->incremental && (!s->memory || !s->parent[0]))
		return err_set(-EINVAL, "an incremental snapshot without memory or parent");
	if (!json_object_object_get_ex(o, "memory_id", &v))
		return 0;
	id = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : "";
	if (strlen(id) != 16 || strspn(id, "0123456789abcdef") != 16)
		return err_set(-EINVAL, "bad 'memory_id'");
	strcpy(s->memory_id, id);
	return 0;
}

int meta_from_json(struct json_object *o, struct snap_meta *s)
{
	struct json_object *v;
	int ret;

	memset(s, 0, sizeof(*s));
	if (!json_object_is_type(o, json_type_object))
		return err_set(-EINVAL, "not a JSON object");
	ret = name_field(o, "name", s->name, false);
	if (!ret)
		ret = name_field(o, "parent", s->parent, true);
	if (ret)
		return ret;
	if (!json_object_object_get_ex(o, "time_ns", &v) || !json_object_is_type(v, json_type_int))
		return err_set(-EINVAL, "bad 'time_ns'");
	s->time_ns = json_object_get_int64(v);
	if (!json_object_object_get_ex(o, "memory", &v) || !json_object_is_type(v, json_type_boolean))
		return err_set(-EINVAL, "bad 'memory'");
	s->memory = json_object_get_boolean(v);
	ret = meta_incremental(o, s);
	if (ret)
		return ret;
	if (json_object_object_get_ex(o, "vm_state", &v) && json_object_is_type(v, json_type_string))
		snprintf(s->vm_state, sizeof(s->vm_state), "%s", json_object_get_string(v));
	if (!json_object_object_get_ex(o, "disks", &v))
		return err_set(-EINVAL, "no 'disks'");
	ret = meta_disks(v, s);
	if (ret)
		meta_free(s);
	return ret;
}

/* -ENOENT: no such snapshot; -EINVAL: damaged (err_set() says how). */
int meta_load(struct mgr *m, const char *vm, const char *snap, struct snap_meta *s)
{
	char path[PATH_MAX];
	struct json_object *o;
	struct stat st;
	int ret = snap_path(m, path, sizeof(path), vm, snap, NULL);

	if (ret)
		return ret;
	if (lstat(path, &st) < 0 || !S_ISDIR(st.st_mode))
		return err_set(-ENOENT, "VM '%s' has no snapshot '%s'", vm, snap);
	snap_path(m, path, sizeof(path), vm, snap, "meta.json");
	o = store_read_json(path);
	ret = o ? meta_from_json(o, s) : -EINVAL;
	json_object_put(o);
	if (!ret && strcmp(s->name, snap)) {
		meta_free(s);
		ret = err_set(-EINVAL, "it names itself '%s'", s->name);
	}
	if (ret)
		return err_set(-EINVAL, "snapshot '%s' of VM '%s' is damaged (%s): delete it",
			       snap, vm, err_get());
	return 0;
}

static enum mgr_err meta_err(int ret)
{
	return ret == -ENOENT ? MGR_E_NOT_FOUND : MGR_E_BAD;
}

/* The class of a failed check on the disks or files. */
static enum mgr_err err_class(int ret)
{
	return !ret ? MGR_OK : ret == -ENOTSUP || ret == -EINVAL ? MGR_E_BAD :
	       ret == -EIO || ret == -ENOMEM ? MGR_E_FAILED : MGR_E_CONFLICT;
}

/* ---- current.json ---- */

static void current_get(struct mgr *m, const char *vm, char out[MGR_NAME_MAX + 1])
{
	char path[PATH_MAX];
	struct json_object *o = NULL;
	int fd;

	out[0] = '\0';
	if (snap_path(m, path, sizeof(path), vm, "current.json", NULL))
		return;
	/* Absent is normal: no snapshot yet. */
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return;
	close(fd);
	o = store_read_json(path);
	if (o && name_field(o, "current", out, true))
		out[0] = '\0';
	json_object_put(o);
}

void current_set(struct mgr *m, const char *vm, const char *snap)
{
	char path[PATH_MAX];
	struct json_object *o;

	if (snap_path(m, path, sizeof(path), vm, "current.json", NULL))
		return;
	o = json_object_new_object();
	json_object_object_add(o, "current", snap && *snap ? json_object_new_string(snap) : NULL);
	if (store_write_json(path, o))
		log_warn("VM %s: %s", vm, err_get());
	json_object_put(o);
}

/* ---- files ---- */

/* Removes a snapshot directory's files and the directory itself (its
 * files are flat: meta.json, state, memory, and their temporaries). */
int remove_dir(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	int ret = 0;

	if (!d)
		return errno == ENOENT ? 0 : err_set(-errno, "cannot open %s: %m", path);
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
		    unlinkat(dirfd(d), e->d_name, 0) < 0)
			ret = err_set(-errno, "cannot remove %s/%s: %m", path, e->d_name);
	closedir(d);
	if (!ret && rmdir(path) < 0)
		ret = err_set(-errno, "cannot remove %s: %m", path);
	return ret;
}

/* Bytes the snapshot's files take on disk (memory is sparse). */
static uint64_t dir_size(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	struct stat st;
	uint64_t sum = 0;

	while (d && (e = readdir(d)))
		if (!fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) && S_ISREG(st.st_mode))
			sum += (uint64_t)st.st_blocks * 512;
	if (d)
		closedir(d);
	return sum;
}

static int make_dir(const char *path)
{
	if (mkdir(path, 0700) < 0 && errno != EEXIST)
		return err_set(-errno, "cannot create %s: %m", path);
	return 0;
}

/* Calls fn for each snapshot directory name of vm; stops at a nonzero. */
static int foreach_snap(struct mgr *m, const char *vm, int (*fn)(const char *snap, void *ctx),
			void *ctx)
{
	char path[PATH_MAX];
	struct dirent *e;
	DIR *d;
	int ret = 0;

	if (snap_path(m, path, sizeof(path), vm, NULL, NULL))
		return 0;
	d = opendir(path);
	while (d && !ret && (e = readdir(d)))
		if (e->d_type == DT_DIR && vm_name_valid(e->d_name))
			ret = fn(e->d_name, ctx);
	if (d)
		closedir(d);
	return ret;
}

static int count_one(const char *snap, void *ctx)
{
	(void)snap;
	++*(unsigned int *)ctx;
	return 0;
}

/* ---- disks ---- */

/* The writable disks a snapshot covers: read-only ones cannot change. */
static bool disk_covered(const struct mgr_disk *k)
{
	return !k->readonly;
}

/* Opens disk `path`: read-only without locks while a VMM holds it (to
 * look, never to write), else with the image lock. */
static int disk_open(const char *path, const char *fmt, bool write, bool vmm, struct image **img)
{
	int flags = IMAGE_NO_BACKING | (write ? IMAGE_RDWR : 0) | (vmm ? IMAGE_FORCE_SHARE : 0);
	int ret = image_open(path, fmt, flags, img);

	return ret ? err_set(ret, "disk %s: %s", path, err_get()) : 0;
}

/* Whether the image has an internal snapshot named exactly `name` (the
 * format also matches ids: a lookup by name alone must come first). */
static int disk_has(struct image *img, const char *name, bool *has)
{
	struct image_snapshot *sn = NULL;
	size_t n = 0;
	int ret;

	*has = false;
	if (!img->fmt->snapshot_list || !img->fmt->snapshot_create)
		return err_set(-ENOTSUP, "disk %s is %s, which has no internal snapshots: a "
			       "snapshot of this VM would not include it (make it qcow2, or "
			       "readonly)", img->filename, img->fmt->name);
	pthread_mutex_lock(&img->lock);
	ret = img->fmt->snapshot_list(img, &sn, &n);
	pthread_mutex_unlock(&img->lock);
	for (size_t i = 0; !ret && i < n; i++)
		*has |= !strcmp(sn[i].name, name);
	free(sn);
	return ret ? err_set(ret, "disk %s: %s", img->filename, err_get()) : 0;
}

/* Every covered disk can take an internal snapshot `name` (want = false:
 * has none by that name) or has one (want = true). */
int disks_check(const struct vm_def *d, bool vmm, const char *name, bool want)
{
	for (unsigned int i = 0; i < d->ndisks; i++) {
		struct image *img;
		bool has;
		int ret;

		if (!disk_covered(&d->disks[i]))
			continue;
		ret = disk_open(d->disks[i].path, d->disks[i].format, false, vmm, &img);
		if (ret)
			return ret;
		ret = disk_has(img, name, &has);
		image_close(img);
		if (ret)
			return ret;
		if (has != want)
			return err_set(want ? -ENOENT : -EEXIST, "disk %u (%s) %s internal snapshot "
				       "'%s'", i, d->disks[i].path, want ? "has no" : "already has an",
				       name);
	}
	return 0;
}

enum disk_op { DISK_CREATE, DISK_APPLY, DISK_DELETE };

/* A stopped VM's disk: the daemon is its only writer. */
static int disk_do(const struct mgr_disk *k, const char *name, enum disk_op op)
{
	struct image *img;
	bool has;
	int ret = disk_open(k->path, k->format, true, false, &img);

	if (ret)
		return ret;
	ret = disk_has(img, name, &has);
	if (!ret && op == DISK_CREATE && has)
		ret = err_set(-EEXIST, "disk %s already has an internal snapshot '%s'", k->path, name);
	else if (!ret && op != DISK_CREATE && !has)
		ret = op == DISK_DELETE ? 0 : err_set(-ENOENT, "disk %s has no internal snapshot '%s'",
						      k->path, name);
	else if (!ret) {
		int (*fn)(struct image *, const char *) =
			op == DISK_CREATE ? img->fmt->snapshot_create :
			op == DISK_APPLY ? img->fmt->snapshot_apply : img->fmt->snapshot_delete;

		pthread_mutex_lock(&img->lock);
		ret = fn ? fn(img, name) : -ENOTSUP;
		pthread_mutex_unlock(&img->lock);
		if (ret)
			ret = err_set(ret, "disk %s: %s", k->path, err_get());
	}
	image_close(img);
	return ret;
}

/* All covered disks, or (create) none: the ones done are undone. */
static int disks_do(const struct vm_def *d, const char *name, enum disk_op op)
{
	unsigned int i;
	int ret = 0;

	for (i = 0; i < d->ndisks && !ret; i++)
		if (disk_covered(&d->disks[i]))
			ret = disk_do(&d->disks[i], name, op);
	if (ret && op == DISK_CREATE)
		while (i-- > 1)
			if (disk_covered(&d->disks[i - 1]))
				disk_do(&d->disks[i - 1], name, DISK_DELETE);
	return ret;
}

static unsigned int ncovered(const struct vm_def *d)
{
	unsigned int n = 0;

	for (unsigned int i = 0; i < d->ndisks; i++)
		n += disk_covered(&d->disks[i]);
	return n;
}

/* Image work runs without the table lock (DESIGN §3.14: reverting a big
 * image takes a while); the VM's operation lock, held by the caller, keeps
 * the VM and its definition as they are meanwhile. */
static int disks_check_unlocked(struct mgr *m, const struct vm_def *d, bool vmm,
				const char *name, bool want)
{
	int ret;

	pthread_mutex_unlock(&m->lock);
	ret = disks_check(d, vmm, name, want);
	pthread_mutex_lock(&m->lock);
	return ret;
}

static int disks_do_unlocked(struct mgr *m, const struct vm_def *d, const char *name,
			     enum disk_op op)
{
	int ret;

	pthread_mutex_unlock(&m->lock);
	ret = disks_do(d, name, op);
	pthread_mutex_lock(&m->lock);
	return ret;
}

/* ---- create ---- */

struct snap_req {
	char name[MGR_NAME_MAX + 1];
	bool memory;
	bool incremental;
	char parent[MGR_NAME_MAX + 1];  /* incremental: the VM's current snapshot */
	char parent_id[17];              /* and its memory's id */
	char memory_id[17];              /* out: the new snapshot's */
};

static int parse_req(struct json_object *body, struct snap_req *q)
{
	*q = (struct snap_req){ .memory = true };
	json_object_object_foreach(body, key, v) {
		if (!strcmp(key, "name")) {
			if (!json_object_is_type(v, json_type_string) ||
			    !vm_name_valid(json_object_get_string(v)) ||
			    !strcmp(json_object_get_string(v), "current.json"))
				return err_set(-EINVAL, "bad snapshot name: 1 to 64 of A-Z a-z 0-9 "
					       "_ . -, not starting with '.' or '-'");
			strcpy(q->name, json_object_get_string(v));
		} else if (!strcmp(key, "memory")) {
			if (!json_object_is_type(v, json_type_boolean))
				return err_set(-EINVAL, "'memory' must be true or false");
			q->memory = json_object_get_boolean(v);
		} else if (!strcmp(key, "incremental")) {
			if (!json_object_is_type(v, json_type_boolean))
				return err_set(-EINVAL, "'incremental' must be true or false");
			q->incremental = json_object_get_boolean(v);
		} else {
			return err_set(-EINVAL, "unknown field '%.64s'", key);
		}
	}
	if (!q->name[0])
		return err_set(-EINVAL, "a snapshot needs a 'name'");
	if (q->incremental && !q->memory)
		return err_set(-EINVAL, "an incremental snapshot is one of memory: not with "
			       "\"memory\": false");
	return 0;
}

/* An increment goes on the VM's current snapshot, which must have memory
 * (the VMM checks that its memory descends from it: parent_id). */
static enum mgr_err incremental_check(struct mgr *m, struct mgr_vm *vm, struct snap_req *q)
{
	struct snap_meta p;
	int ret;

	if (!mgr_vm_active(vm)) {
		err_set(-EINVAL, "VM '%s' is stopped: an incremental snapshot needs its memory",
			vm->def.name);
		return MGR_E_BAD;
	}
	current_get(m, vm->def.name, q->parent);
	if (!q->parent[0]) {
		err_set(-ENOENT, "VM '%s' has no current snapshot to be incremental to: take a "
			"full one first", vm->def.name);
		return MGR_E_CONFLICT;
	}
	ret = meta_load(m, vm->def.name, q->parent, &p);
	if (ret)
		return meta_err(ret);
	if (!p.memory || !p.memory_id[0])
		ret = err_set(-ENOENT, "snapshot '%s', the VM's current one, has no memory%s: take "
			      "a full snapshot", q->parent, p.memory ? " id" : "");
	strcpy(q->parent_id, p.memory_id);
	meta_free(&p);
	return ret ? MGR_E_CONFLICT : MGR_OK;
}

/* What may be snapshotted, checked before anything is touched. */
static enum mgr_err create_check(struct mgr *m, struct mgr_vm *vm, struct snap_req *q)
{
	char path[PATH_MAX];
	unsigned int n = 0;
	struct stat st;

	if (mgr_vm_active(vm) && vm->state != MGR_RUNNING && vm->state != MGR_PAUSED) {
		err_set(-EBUSY, "VM '%s' is %s", vm->def.name, mgr_state_name(vm->state));
		return MGR_E_CONFLICT;
	}
	if (snap_path(m, path, sizeof(path), vm->def.name, q->name, NULL))
		return MGR_E_BAD;
	if (lstat(path, &st) == 0) {
		err_set(-EEXIST, "VM '%s' already has a snapshot '%s'", vm->def.name, q->name);
		return MGR_E_CONFLICT;
	}
	foreach_snap(m, vm->def.name, count_one, &n);
	if (n >= MGR_MAX_SNAPSHOTS) {
		err_set(-ENOSPC, "VM '%s' has %u snapshots, the most it may have: delete one first",
			vm->def.name, n);
		return MGR_E_CONFLICT;
	}
	if (q->incremental) {
		enum mgr_err e = incremental_check(m, vm, q);

		if (e != MGR_OK)
			return e;
	}
	return err_class(disks_check_unlocked(m, &vm->def, mgr_vm_active(vm), q->name, false));
}

/* dir/memory and dir/state, new, for the VMM to fill: it gets them as
 * descriptors, for a sandboxed VMM can open no file (docs/api.md). */
static int open_outputs(const char *dir, int fd[2])
{
	static const char *const names[2] = { "memory", "state" };
	char path[PATH_MAX];

	fd[0] = fd[1] = -1;
	for (int i = 0; i < 2; i++) {
		if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, names[i]) >= sizeof(path))
			return err_set(-ENAMETOOLONG, "state path too long");
		fd[i] = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (fd[i] < 0)
			return err_set(-errno, "cannot create %s: %m", path);
	}
	return 0;
}

/* Asks the VMM of a paused VM for its part: memory and state into `dir`
 * (NULL: none), and the covered disks' internal snapshots. */
/* An increment names its parent relative to itself: snapshots/VM/SNAP and
 * snapshots/VM/PARENT are siblings wherever the state dir is. */
static void add_incremental(struct json_object *req, struct snap_req *q)
{
	char parent[MGR_NAME_MAX + 4];

	snprintf(parent, sizeof(parent), "../%s", q->parent);
	json_object_object_add(req, "incremental", json_object_new_boolean(true));
	json_object_object_add(req, "parent", json_object_new_string(parent));
	json_object_object_add(req, "parent_id", json_object_new_string(q->parent_id));
}

/* The id the VMM gave the memory snapshot. */
static void reply_id(struct json_object *reply, struct snap_req *q)
{
	struct json_object *v;

	if (reply && json_object_object_get_ex(reply, "id", &v) &&
	    json_object_is_type(v, json_type_string) && strlen(json_object_get_string(v)) == 16)
		strcpy(q->memory_id, json_object_get_string(v));
}

static enum mgr_err vmm_take(struct mgr *m, struct mgr_vm *vm, const char *dir,
			     struct snap_req *q, bool disks)
{
	struct json_object *req = json_object_new_object(), *reply = NULL;
	enum mgr_err e = MGR_OK;
	int fd[2] = { -1, -1 };

	json_object_object_add(req, "action", json_object_new_string("snapshot"));
	if (dir) {
		json_object_object_add(req, "fds", json_object_new_boolean(true));
		if (open_outputs(dir, fd))
			e = MGR_E_FAILED;
		/* The daemon keeps an increment possible after every memory
		 * snapshot (`vm snapshot --incremental`, docs/api.md). */
		json_object_object_add(req, "track_dirty", json_object_new_boolean(true));
		if (q->incremental)
			add_incremental(req, q);
	}
	if (disks) {
		json_object_object_add(req, "disks", json_object_new_boolean(true));
		json_object_object_add(req, "name", json_object_new_string(q->name));
	}
	if (e == MGR_OK)
		e = mgr_control(m, vm, json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN),
				SNAP_VMM_TIMEOUT_MS, fd, dir ? 2 : 0, &reply);
	if (e == MGR_OK)
		reply_id(reply, q);
	for (int i = 0; i < 2; i++)
		if (fd[i] >= 0)
			close(fd[i]);
	json_object_put(reply);
	json_object_put(req);
	return e;
}

/* Takes memory (if asked) and disks at one instant: a running VM is paused
 * meanwhile and resumed after, whatever happened. */
static enum mgr_err take(struct mgr *m, struct mgr_vm *vm, const char *tmp,
			 struct snap_req *q)
{
	bool disks = ncovered(&vm->def) > 0, resume = vm->state == MGR_RUNNING;
	enum mgr_err e = MGR_OK;

	if (!mgr_vm_active(vm))
		return err_class(disks_do_unlocked(m, &vm->def, q->name, DISK_CREATE));
	if (!q->memory && !disks)
		return MGR_OK;
	if (resume && (e = mgr_pause(m, vm, true)) != MGR_OK)
		return e;
	e = vmm_take(m, vm, q->memory ? tmp : NULL, q, disks);
	if (e == MGR_E_BAD && q->memory && strstr(err_get(), "not yet supported"))
		err_set(-ENOTSUP, "%s (a snapshot without memory can be taken: \"memory\": "
			"false, vireo vm snapshot --no-memory)", err_get());
	if (resume && vm->state == MGR_PAUSED) {
		char why[256];

		snprintf(why, sizeof(why), "%s", err_get());
		if (mgr_pause(m, vm, false) != MGR_OK)
			log_warn("VM %s: cannot resume after the snapshot: %s", vm->def.name,
				 err_get());
		err_set(-EIO, "%s", why);
	}
	return e;
}

static void meta_fill(struct mgr *m, struct mgr_vm *vm, const struct snap_req *q,
		      struct snap_meta *s)
{
	struct timespec now;

	memset(s, 0, sizeof(*s));
	strcpy(s->name, q->name);
	current_get(m, vm->def.name, s->parent);
	clock_gettime(CLOCK_REALTIME, &now);
	s->time_ns = (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
	s->memory = q->memory && mgr_vm_active(vm);
	snprintf(s->vm_state, sizeof(s->vm_state), "%s",
		 mgr_vm_active(vm) ? mgr_state_name(vm->state) : "stopped");
	for (unsigned int i = 0; i < vm->def.ndisks; i++)
		if (disk_covered(&vm->def.disks[i])) {
			s->disks[s->ndisks].index = i;
			s->disks[s->ndisks++].path = strdup(vm->def.disks[i].path);
		}
}

/* The snapshot's files are complete in tmp: its meta.json, then the rename
 * that makes it a snapshot. */
static int publish(struct mgr *m, const char *vm, const char *tmp, const struct snap_meta *s)
{
	char path[PATH_MAX], final[PATH_MAX];
	struct json_object *o = meta_to_json(s);
	int ret;

	ret = (size_t)snprintf(path, sizeof(path), "%s/meta.json", tmp) < sizeof(path) ?
	      store_write_json(path, o) : err_set(-ENAMETOOLONG, "state path too long");
	json_object_put(o);
	if (!ret)
		ret = snap_path(m, final, sizeof(final), vm, s->name, NULL);
	if (!ret && rename(tmp, final) < 0)
		ret = err_set(-errno, "cannot rename %s: %m", tmp);
	if (!ret)
		current_set(m, vm, s->name);
	return ret;
}

/* The disks' internal snapshots of a snapshot that did not come to be. */
static void undo_disks(struct mgr *m, struct mgr_vm *vm, const char *name)
{
	char req[160];

	if (!ncovered(&vm->def))
		return;
	if (!mgr_vm_active(vm)) {
		disks_do_unlocked(m, &vm->def, name, DISK_DELETE);
		return;
	}
	snprintf(req, sizeof(req), "{\"action\":\"disk-snapshot-delete\",\"name\":\"%s\"}", name);
	if (mgr_control(m, vm, req, SNAP_VMM_TIMEOUT_MS, NULL, 0, NULL) != MGR_OK)
		log_warn("VM %s: internal snapshot '%s' left in its disks: %s", vm->def.name, name,
			 err_get());
}

/* The temporary directories (".SNAP.tmp") in a VM's snapshot directory:
 * the VM's operation lock is held, so none is in use. */
static void remove_leftovers(const char *dir)
{
	char path[PATH_MAX];
	DIR *d = opendir(dir);
	struct dirent *e;
	size_t len;

	while (d && (e = readdir(d))) {
		len = strlen(e->d_name);
		if (e->d_name[0] == '.' && len > 5 && !strcmp(e->d_name + len - 4, ".tmp") &&
		    (size_t)snprintf(path, sizeof(path), "%s/%s", dir, e->d_name) < sizeof(path))
			remove_dir(path);
	}
	if (d)
		closedir(d);
}

static int make_tmp(struct mgr *m, const char *vm, const char *name, char *tmp, size_t size)
{
	char dir[PATH_MAX], base[MGR_NAME_MAX + 8];
	int ret = store_path(m, dir, sizeof(dir), "snapshots", NULL, NULL);

	if (!ret)
		ret = make_dir(dir);
	if (!ret)
		ret = snap_path(m, dir, sizeof(dir), vm, NULL, NULL);
	if (!ret)
		ret = make_dir(dir);
	/* Leftovers of a daemon that died while taking one. */
	if (!ret)
		remove_leftovers(dir);
	snprintf(base, sizeof(base), ".%s.tmp", name);
	if (!ret)
		ret = snap_path(m, tmp, size, vm, base, NULL);
	if (!ret)
		ret = make_dir(tmp);
	return ret;
}

enum mgr_err mgr_snap_create(struct mgr *m, struct mgr_vm *vm, struct json_object *body,
			     struct json_object **out)
{
	char tmp[PATH_MAX];
	struct snap_req q;
	struct snap_meta s;
	enum mgr_err e;

	if (parse_req(body, &q))
		return MGR_E_BAD;
	e = create_check(m, vm, &q);
	if (e != MGR_OK)
		return e;
	if (make_tmp(m, vm->def.name, q.name, tmp, sizeof(tmp)))
		return MGR_E_FAILED;
	meta_fill(m, vm, &q, &s);
	e = take(m, vm, tmp, &q);
	s.incremental = q.incremental;
	strcpy(s.memory_id, q.memory_id);
	if (e == MGR_OK && publish(m, vm->def.name, tmp, &s)) {
		char why[256];

		snprintf(why, sizeof(why), "%s", err_get());
		undo_disks(m, vm, q.name);
		err_set(-EIO, "%s", why);
		e = MGR_E_FAILED;
	}
	if (e != MGR_OK)
		remove_dir(tmp);
	else
		log_info("VM %s: snapshot %s taken (%s)", vm->def.name, q.name,
			 s.incremental ? "incremental memory and disks" :
			 s.memory ? "memory and disks" : "disks only");
	if (e == MGR_OK)
		*out = meta_to_json(&s);
	meta_free(&s);
	return e;
}

/* ---- list ---- */

struct list_ctx {
	struct mgr *m;
	const char *vm;
	struct json_object *arr;
};

static int list_one(const char *snap, void *ctx)
{
	struct list_ctx *l = ctx;
	struct snap_meta s;
	struct json_object *o;
	char path[PATH_MAX];

	if (meta_load(l->m, l->vm, snap, &s)) {
		o = json_object_new_object();
		json_object_object_add(o, "name", json_object_new_string(snap));
		json_object_object_add(o, "damaged", json_object_new_string(err_get()));
	} else {
		o = meta_to_json(&s);
		meta_free(&s);
	}
	if (!snap_path(l->m, path, sizeof(path), l->vm, snap, NULL))
		json_object_object_add(o, "size", json_object_new_int64((int64_t)dir_size(path)));
	json_object_array_add(l->arr, o);
	return 0;
}

static int by_time(const void *a, const void *b)
{
	struct json_object *x = *(struct json_object *const *)a, *y = *(struct json_object *const *)b;
	struct json_object *tx = NULL, *ty = NULL;
	int64_t dx, dy;

	json_object_object_get_ex(x, "time_ns", &tx);
	json_object_object_get_ex(y, "time_ns", &ty);
	dx = tx ? json_object_get_int64(tx) : 0;
	dy = ty ? json_object_get_int64(ty) : 0;
	if (dx != dy)
		return dx < dy ? -1 : 1;
	json_object_object_get_ex(x, "name", &tx);
	json_object_object_get_ex(y, "name", &ty);
	return strcmp(json_object_get_string(tx), json_object_get_string(ty));
}

enum mgr_err mgr_snap_list(struct mgr *m, struct mgr_vm *vm, struct json_object **out)
{
	struct list_ctx l = { m, vm->def.name, json_object_new_array() };
	char cur[MGR_NAME_MAX + 1];

	foreach_snap(m, vm->def.name, list_one, &l);
	json_object_array_sort(l.arr, by_time);
	current_get(m, vm->def.name, cur);
	*out = json_object_new_object();
	json_object_object_add(*out, "snapshots", l.arr);
	json_object_object_add(*out, "current", cur[0] ? json_object_new_string(cur) : NULL);
	return MGR_OK;
}

/* ---- rollback ---- */

/* The snapshot's disks must be the VM's covered disks now. */
static int same_disks(const struct vm_def *d, const struct snap_meta *s)
{
	unsigned int j = 0;

	for (unsigned int i = 0; i < d->ndisks; i++) {
		if (!disk_covered(&d->disks[i]))
			continue;
		if (j >= s->ndisks || s->disks[j].index != i || strcmp(s->disks[j].path, d->disks[i].path))
			break;
		j++;
	}
	if (j == s->ndisks && j == ncovered(d))
		return 0;
	return err_set(-EINVAL, "the VM's writable disks are not the ones of snapshot '%s'",
		       s->name);
}

/* The memory snapshot is whole and this vireo can restore it. */
static int memory_check(struct mgr *m, const char *vm, const char *snap)
{
	struct machine_config mc;
	struct snapshot *sn;
	char dir[PATH_MAX];
	int ret = snap_path(m, dir, sizeof(dir), vm, snap, NULL);

	if (!ret)
		ret = snapshot_open(dir, &sn, &mc);
	if (ret)
		return err_set(ret == -ENOTSUP ? -ENOTSUP : -EINVAL, "snapshot '%s' cannot be "
			       "restored: %s", snap, err_get());
	snapshot_close(sn);
	return 0;
}

/* Everything a rollback needs, checked before the VM is touched. */
static int rollback_check(struct mgr *m, struct mgr_vm *vm, const struct snap_meta *s)
{
	int ret = same_disks(&vm->def, s);

	if (!ret)
		ret = disks_check_unlocked(m, &vm->def, mgr_vm_active(vm), s->name, true);
	if (!ret && s->memory) {
		pthread_mutex_unlock(&m->lock);
		ret = memory_check(m, vm->def.name, s->name);
		pthread_mutex_lock(&m->lock);
	}
	return ret;
}

enum mgr_err mgr_snap_rollback(struct mgr *m, struct mgr_vm *vm, const char *snap)
{
	char dir[PATH_MAX];
	struct snap_meta s;
	enum mgr_err e = MGR_OK;
	int ret;

	if (mgr_export_busy(vm))
		return MGR_E_CONFLICT;
	ret = meta_load(m, vm->def.name, snap, &s);
	if (ret)
		return meta_err(ret);
	if (mgr_vm_active(vm) && vm->state != MGR_RUNNING && vm->state != MGR_PAUSED) {
		err_set(-EBUSY, "VM '%s' is %s", vm->def.name, mgr_state_name(vm->state));
		e = MGR_E_CONFLICT;
	}
	if (e == MGR_OK && (ret = rollback_check(m, vm, &s)))
		e = err_class(ret);
	if (e == MGR_OK && mgr_vm_active(vm))
		e = mgr_stop(m, vm, true, 0);
	if (e == MGR_OK && (ret = disks_do_unlocked(m, &vm->def, snap, DISK_APPLY)))
		e = err_class(ret) == MGR_E_CONFLICT ? MGR_E_FAILED : err_class(ret);
	if (e == MGR_OK) {
		current_set(m, vm->def.name, snap);
		if (s.memory && !snap_path(m, dir, sizeof(dir), vm->def.name, snap, NULL))
			e = mgr_start_restore(m, vm, dir, !strcmp(s.vm_state, "paused"));
	}
	if (e == MGR_OK)
		log_info("VM %s: rolled back to snapshot %s", vm->def.name, snap);
	meta_free(&s);
	return e;
}

/* ---- delete ---- */

struct reparent_ctx {
	struct mgr *m;
	const char *vm, *gone, *parent;
};

/* A child of the deleted snapshot descends from its parent now. */
static int reparent_one(const char *snap, void *ctx)
{
	struct reparent_ctx *r = ctx;
	char path[PATH_MAX];
	struct snap_meta s;
	struct json_object *o;

	if (meta_load(r->m, r->vm, snap, &s))
		return 0;
	if (!strcmp(s.parent, r->gone) &&
	    !snap_path(r->m, path, sizeof(path), r->vm, snap, "meta.json")) {
		snprintf(s.parent, sizeof(s.parent), "%s", r->parent);
		o = meta_to_json(&s);
		if (store_write_json(path, o))
			log_warn("VM %s: %s", r->vm, err_get());
		json_object_put(o);
	}
	meta_free(&s);
	return 0;
}

struct child_ctx {
	struct mgr *m;
	const char *vm, *parent;
	char child[MGR_NAME_MAX + 1];
};

static int find_increment(const char *snap, void *ctx)
{
	struct child_ctx *c = ctx;
	struct snap_meta s;
	bool found;

	if (meta_load(c->m, c->vm, snap, &s))
		return 0;
	found = s.incremental && !strcmp(s.parent, c->parent);
	if (found)
		strcpy(c->child, snap);
	meta_free(&s);
	return found;
}

/* An increment needs its parent's memory: the parent stays while it has
 * one (delete the increments first, newest first). */
static int increments_of(struct mgr *m, const char *vm, const char *snap)
{
	struct child_ctx c = { m, vm, snap, "" };

	if (!foreach_snap(m, vm, find_increment, &c))
		return 0;
	return err_set(-EBUSY, "snapshot '%s' is the parent of incremental snapshot '%s', "
		       "which needs its memory: delete '%s' first", snap, c.child, c.child);
}

enum mgr_err mgr_snap_delete(struct mgr *m, struct mgr_vm *vm, const char *snap)
{
	char dir[PATH_MAX], cur[MGR_NAME_MAX + 1], req[160];
	struct snap_meta s;
	struct reparent_ctx r = { m, vm->def.name, snap, "" };
	enum mgr_err e = MGR_OK;
	int ret;

	if (mgr_export_busy(vm))
		return MGR_E_CONFLICT;
	ret = meta_load(m, vm->def.name, snap, &s);
	/* A damaged one can go: its disks are the VM's. */
	if (ret == -ENOENT)
		return MGR_E_NOT_FOUND;
	if (ret)
		memset(&s, 0, sizeof(s));
	if (increments_of(m, vm->def.name, snap))
		return MGR_E_CONFLICT;
	if (mgr_vm_active(vm) && ncovered(&vm->def)) {
		snprintf(req, sizeof(req), "{\"action\":\"disk-snapshot-delete\",\"name\":\"%s\"}",
			 snap);
		e = mgr_control(m, vm, req, SNAP_VMM_TIMEOUT_MS, NULL, 0, NULL);
	} else if ((ret = disks_do_unlocked(m, &vm->def, snap, DISK_DELETE))) {
		e = err_class(ret);
	}
	if (e == MGR_OK && (snap_path(m, dir, sizeof(dir), vm->def.name, snap, NULL) ||
			    remove_dir(dir)))
		e = MGR_E_FAILED;
	if (e == MGR_OK) {
		r.parent = s.parent;
		foreach_snap(m, vm->def.name, reparent_one, &r);
		current_get(m, vm->def.name, cur);
		if (!strcmp(cur, snap))
			current_set(m, vm->def.name, s.parent);
		log_info("VM %s: snapshot %s deleted", vm->def.name, snap);
	}
	meta_free(&s);
	return e;
}

static int remove_one(const char *snap, void *ctx)
{
	const char *base = ctx;
	char path[PATH_MAX];

	if ((size_t)snprintf(path, sizeof(path), "%s/%s", base, snap) < sizeof(path))
		remove_dir(path);
	return 0;
}

void mgr_snap_remove_all(struct mgr *m, const char *name)
{
	char base[PATH_MAX], cur[PATH_MAX];

	if (snap_path(m, base, sizeof(base), name, NULL, NULL))
		return;
	foreach_snap(m, name, remove_one, base);
	if (!snap_path(m, cur, sizeof(cur), name, "current.json", NULL))
		unlink(cur);
	if (rmdir(base) < 0 && errno != ENOENT)
		log_warn("VM %s: cannot remove %s: %m", name, base);
}
