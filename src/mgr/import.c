/* Import of an exported VM snapshot (docs/api.md "Export and import"):
 * the other half of export.c, whose comment describes the layout. A
 * damaged or hostile export, directory or archive, is refused and leaves
 * nothing behind. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vireo/block.h"
#include "vireo/cmd.h"
#include "vireo/log.h"
#include "vireo/machine.h"
#include "vireo/mgr.h"
#include "vireo/state.h"
#include "snapshot-int.h"

struct import_file {
	char rel[MGR_NAME_MAX + 32];
	uint64_t size;
	char sha256[65];
	char *dst;              /* where it goes: the storage, or the temporary
				 * snapshot directory */
	bool done;              /* copied (from an archive) */
};

struct import {
	struct mgr *m;
	char src[PATH_MAX];
	struct export_reader *ar;       /* an archive's; NULL: a directory */
	char name[MGR_NAME_MAX + 1];
	char snap[MGR_NAME_MAX + 1];
	struct vm_def def;
	bool have_def;
	struct snap_meta chain[MAX_CHAIN];
	unsigned int n;
	struct import_file files[MAX_FILES];
	unsigned int nfiles;
	char tmp[PATH_MAX];     /* DIR/snapshots/.NAME.import */
	bool tmp_made;
	char *made[MAX_FILES];  /* files made in the storage */
	unsigned int nmade;
};

/* Opens rel below base, no symbolic link on the way (the export is
 * not trusted: a link could make the daemon read any file). */
static int open_beneath(const char *base, const char *rel, uint64_t *size)
{
	char part[PATH_MAX];
	struct stat st;
	int dir = open(base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), fd;

	if (dir < 0)
		return err_set(-errno, "%s: %m", base);
	snprintf(part, sizeof(part), "%s", rel);
	for (char *p = part, *slash; (slash = strchr(p, '/')); p = slash + 1) {
		*slash = '\0';
		fd = openat(dir, p, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		close(dir);
		if (fd < 0)
			return err_set(-errno, "%s/%s: %m", base, rel);
		dir = fd;
		*slash = '/';
	}
	fd = openat(dir, strrchr(rel, '/') ? strrchr(rel, '/') + 1 : rel,
		    O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	close(dir);
	if (fd < 0)
		return err_set(-errno, "%s/%s: %m", base, rel);
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return err_set(-EINVAL, "%s/%s: not a regular file", base, rel);
	}
	*size = (uint64_t)st.st_size;
	return fd;
}

static int read_small(const char *base, const char *rel, char **text, size_t max)
{
	uint64_t size;
	int fd = open_beneath(base, rel, &size);
	ssize_t n;

	if (fd < 0)
		return fd;
	*text = size <= max ? malloc(size + 1) : NULL;
	n = *text ? read(fd, *text, size) : -1;
	close(fd);
	if (n < 0 || (uint64_t)n != size) {
		free(*text);
		*text = NULL;
		return err_set(-EINVAL, "%s: unreadable or larger than %zu bytes", rel, max);
	}
	(*text)[n] = '\0';
	return 0;
}

static int read_manifest(struct import *im, bool archive, struct json_object **out)
{
	char *text = NULL, *sum = NULL, hex[65];
	int ret = archive ? export_reader_open(im->src, &im->ar) : 0;

	if (!ret)
		ret = im->ar ? export_reader_text(im->ar, "manifest.json", &text, MANIFEST_MAX) :
		      read_small(im->src, "manifest.json", &text, MANIFEST_MAX);
	if (!ret)
		ret = im->ar ? export_reader_text(im->ar, "manifest.sha256", &sum, 128) :
		      read_small(im->src, "manifest.sha256", &sum, 128);
	if (!ret) {
		export_sha256_hex(text, hex);
		if (strncmp(sum, hex, 64) || strcmp(sum + 64, "\n"))
			ret = err_set(-EINVAL, "manifest.json does not match manifest.sha256");
	}
	if (!ret && !(*out = json_tokener_parse(text)))
		ret = err_set(-EINVAL, "manifest.json is not JSON");
	free(text);
	free(sum);
	return ret;
}

static bool expected(const struct import *im, const char *rel)
{
	char want[MGR_NAME_MAX + 32];

	for (unsigned int i = 0; i < im->n; i++)
		for (int k = 0; im->chain[i].memory && k < 2; k++) {
			snprintf(want, sizeof(want), "snapshots/%s/%s", im->chain[i].name,
				 k ? "memory" : "state");
			if (!strcmp(rel, want))
				return true;
		}
	for (unsigned int i = 0; i < im->def.ndisks; i++) {
		snprintf(want, sizeof(want), "disks/%u", i);
		if (!strcmp(rel, want))
			return true;
	}
	return (im->def.kernel && !strcmp(rel, "boot/kernel")) ||
	       (im->def.initrd && !strcmp(rel, "boot/initrd"));
}

static unsigned int nexpected(const struct import *im)
{
	unsigned int n = im->def.ndisks + !!im->def.kernel + !!im->def.initrd;

	for (unsigned int i = 0; i < im->n; i++)
		n += im->chain[i].memory ? 2 : 0;
	return n;
}

static int parse_file(struct import *im, struct json_object *f)
{
	struct import_file *x = &im->files[im->nfiles];
	struct json_object *p, *sz, *h;
	const char *rel, *hex;
	size_t len;

	if (!json_object_object_get_ex(f, "path", &p) || !json_object_is_type(p, json_type_string) ||
	    !json_object_object_get_ex(f, "size", &sz) || !json_object_is_type(sz, json_type_int) ||
	    json_object_get_int64(sz) < 0 || !json_object_object_get_ex(f, "sha256", &h) ||
	    !json_object_is_type(h, json_type_string))
		return err_set(-EINVAL, "manifest: file %u is malformed", im->nfiles);
	rel = json_object_get_string(p);
	hex = json_object_get_string(h);
	if (strlen(rel) >= sizeof(x->rel) || !expected(im, rel))
		return err_set(-EINVAL, "manifest: unexpected file '%.80s'", rel);
	for (unsigned int i = 0; i < im->nfiles; i++)
		if (!strcmp(im->files[i].rel, rel))
			return err_set(-EINVAL, "manifest: file '%s' twice", rel);
	if (strlen(hex) != 64 || strspn(hex, "0123456789abcdef") != 64)
		return err_set(-EINVAL, "manifest: bad sha256 of '%s'", rel);
	strcpy(x->rel, rel);
	strcpy(x->sha256, hex);
	x->size = (uint64_t)json_object_get_int64(sz);
	/* Bounds before any byte is copied: no state file is larger, no memory
	 * file larger than the guest's RAM. */
	len = strlen(rel);
	if ((len > 6 && !strcmp(rel + len - 6, "/state") && x->size > STATE_MAX_FILE) ||
	    (len > 7 && !strcmp(rel + len - 7, "/memory") && x->size > im->def.memory))
		return err_set(-EINVAL, "manifest: '%s' is larger than such a file can be", rel);
	im->nfiles++;
	return 0;
}

/* The snapshots: SNAP last, each after the first an increment of the one
 * before it (an export holds SNAP's chain, nothing else). */
static int parse_chain(struct import *im, struct json_object *a)
{
	size_t n = json_object_is_type(a, json_type_array) ? json_object_array_length(a) : 0;

	if (!n || n > MAX_CHAIN)
		return err_set(-EINVAL, "manifest: bad 'snapshots'");
	for (size_t i = 0; i < n; i++) {
		struct snap_meta *s = &im->chain[i];

		if (meta_from_json(json_object_array_get_idx(a, i), s))
			return err_set(-EINVAL, "manifest: snapshot %zu: %s", i, err_get());
		im->n++;
		if (i ? !s->incremental || strcmp(s->parent, im->chain[i - 1].name) : s->incremental)
			return err_set(-EINVAL, "manifest: snapshot '%s' is not in a chain", s->name);
		for (unsigned int k = 0; k < s->ndisks; k++)
			if (s->disks[k].index >= im->def.ndisks)
				return err_set(-EINVAL, "manifest: snapshot '%s' names disk %u",
					       s->name, s->disks[k].index);
	}
	if (strcmp(im->chain[n - 1].name, im->snap))
		return err_set(-EINVAL, "manifest: the snapshot is not the last of 'snapshots'");
	im->chain[0].parent[0] = '\0';  /* not exported */
	return 0;
}

static int parse_manifest(struct import *im, struct json_object *o)
{
	struct json_object *v, *files;
	int ret;

	if (!json_object_is_type(o, json_type_object) ||
	    !json_object_object_get_ex(o, "format", &v) ||
	    strcmp(json_object_get_string(v), EXPORT_FORMAT))
		return err_set(-EINVAL, "not a vireo export (manifest 'format')");
	if (!json_object_object_get_ex(o, "version", &v) || !json_object_is_type(v, json_type_int) ||
	    json_object_get_int(v) != EXPORT_VERSION)
		return err_set(-EINVAL, "export format version %s: this vireo reads version %d",
			       v ? json_object_get_string(v) : "missing", EXPORT_VERSION);
	if (!json_object_object_get_ex(o, "snapshot", &v) || !json_object_is_type(v, json_type_string) ||
	    !vm_name_valid(json_object_get_string(v)))
		return err_set(-EINVAL, "manifest: bad 'snapshot'");
	snprintf(im->snap, sizeof(im->snap), "%s", json_object_get_string(v));
	if (!json_object_object_get_ex(o, "vm", &v) || !json_object_is_type(v, json_type_object))
		return err_set(-EINVAL, "manifest: no 'vm'");
	json_object_object_add(v, "name", json_object_new_string(im->name));
	ret = vm_def_from_json(v, &im->def);
	if (ret)
		return err_set(ret, "manifest: the VM: %s", err_get());
	im->have_def = true;
	if (!json_object_object_get_ex(o, "snapshots", &v) || (ret = parse_chain(im, v)))
		return ret ? ret : err_set(-EINVAL, "manifest: no 'snapshots'");
	if (!json_object_object_get_ex(o, "files", &files) ||
	    !json_object_is_type(files, json_type_array) ||
	    json_object_array_length(files) != nexpected(im))
		return err_set(-EINVAL, "manifest: 'files' is not the snapshot's and the VM's files");
	for (size_t i = 0; i < json_object_array_length(files) && !ret; i++)
		ret = parse_file(im, json_object_array_get_idx(files, i));
	return ret;
}

/* Where each file goes; the VM's definition points at the new places. */
static int import_places(struct import *im)
{
	char path[PATH_MAX];
	const char *store = im->m->storage[0];

	for (unsigned int i = 0; i < im->nfiles; i++) {
		struct import_file *f = &im->files[i];
		char **defpath = NULL;
		unsigned int disk;

		int ret;

		if (!strncmp(f->rel, "snapshots/", 10)) {
			ret = export_fmt_path(path, sizeof(path), "%s/%s", im->tmp, f->rel + 10);
		} else if (sscanf(f->rel, "disks/%u", &disk) == 1 && disk < im->def.ndisks) {
			ret = export_fmt_path(path, sizeof(path), "%s/%s-disk%u.%s", store, im->name, disk,
				       im->def.disks[disk].format ? im->def.disks[disk].format : "img");
			defpath = &im->def.disks[disk].path;
		} else {
			ret = export_fmt_path(path, sizeof(path), "%s/%s-%s", store, im->name, f->rel + 5);
			defpath = !strcmp(f->rel, "boot/kernel") ? &im->def.kernel : &im->def.initrd;
		}
		if (ret)
			return ret;
		f->dst = strdup(path);
		if (!f->dst)
			return err_set(-ENOMEM, "out of memory");
		if (defpath) {
			free(*defpath);
			*defpath = strdup(path);
		}
	}
	for (unsigned int i = 0; i < im->n; i++)
		for (unsigned int k = 0; k < im->chain[i].ndisks; k++) {
			free(im->chain[i].disks[k].path);
			im->chain[i].disks[k].path =
				strdup(im->def.disks[im->chain[i].disks[k].index].path);
		}
	return 0;
}

/* f's data from in (a file of the directory), or from the archive's
 * present entry (in < 0), into f->dst, checked against its hash. */
static int import_write(struct import *im, struct import_file *f, int in)
{
	char hex[65];
	int out, ret;

	out = open(f->dst, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (out < 0)
		return err_set(-errno, "cannot create %s: %m", f->dst);
	if (strncmp(f->rel, "snapshots/", 10))
		im->made[im->nmade++] = f->dst;
	ret = in >= 0 ? export_copy_hashed(in, out, f->size, hex) :
	      export_reader_copy(im->ar, out, f->size, hex);
	if (!ret && fsync(out) < 0)
		ret = err_set(-errno, "cannot sync %s: %m", f->dst);
	close(out);
	if (!ret && strcmp(hex, f->sha256))
		ret = err_set(-EINVAL, "%s: checksum mismatch", f->rel);
	else if (ret)
		ret = err_set(ret, "%s: %s", f->rel, err_get());
	return ret;
}

static int size_check(const struct import_file *f, uint64_t size)
{
	return size == f->size ? 0 :
	       err_set(-EINVAL, "%s is %llu bytes, the manifest says %llu", f->rel,
		       (unsigned long long)size, (unsigned long long)f->size);
}

static int import_copy(struct import *im, struct import_file *f)
{
	uint64_t size;
	int in = open_beneath(im->src, f->rel, &size), ret;

	if (in < 0)
		return in;
	ret = size_check(f, size);
	if (!ret)
		ret = import_write(im, f, in);
	close(in);
	return ret;
}

/* An archive's entries, each a file of the manifest once, in any order. */
static int import_entries(struct import *im)
{
	char rel[MGR_NAME_MAX + 32];
	uint64_t size;
	int ret;

	while ((ret = export_reader_next(im->ar, rel, sizeof(rel), &size)) > 0) {
		struct import_file *f = NULL;

		for (unsigned int i = 0; i < im->nfiles && !f; i++)
			f = strcmp(im->files[i].rel, rel) ? NULL : &im->files[i];
		if (!f || f->done)
			return err_set(-EINVAL, "archive entry '%.80s': %s", rel,
				       f ? "twice" : "not a file of the manifest");
		f->done = true;
		ret = size_check(f, size);
		if (!ret)
			ret = import_write(im, f, -1);
		if (ret)
			return ret;
	}
	for (unsigned int i = 0; !ret && i < im->nfiles; i++)
		if (!im->files[i].done)
			ret = err_set(-EINVAL, "the archive has no %s", im->files[i].rel);
	return ret;
}

/* The storage files an import makes, listed in its temporary directory
 * before the first one is created: what a daemon killed halfway through
 * left is removed at its next start (mgr_import_recover). */
#define IMPORT_JOURNAL "storage-files.json"

static int import_journal(struct import *im)
{
	struct json_object *o = json_object_new_object(), *a = json_object_new_array();
	char path[PATH_MAX];
	int ret = o && a ? 0 : err_set(-ENOMEM, "out of memory");

	for (unsigned int i = 0; !ret && i < im->nfiles; i++)
		if (strncmp(im->files[i].rel, "snapshots/", 10))
			json_object_array_add(a, json_object_new_string(im->files[i].dst));
	if (!ret) {
		json_object_object_add(o, "files", a);
		a = NULL;
		ret = export_fmt_path(path, sizeof(path), "%s/" IMPORT_JOURNAL, im->tmp);
	}
	if (!ret)
		ret = store_write_json(path, o);
	json_object_put(a);
	json_object_put(o);
	return ret;
}

static int import_snapshot_dirs(struct import *im)
{
	char path[PATH_MAX];
	struct json_object *o;
	int ret = mkdir(im->tmp, 0700) < 0 ? err_set(-errno, "cannot create %s: %m", im->tmp) : 0;

	im->tmp_made = !ret;
	if (!ret)
		ret = import_journal(im);
	for (unsigned int i = 0; !ret && i < im->n; i++)
		ret = export_mkdir_in(im->tmp, im->chain[i].name);
	for (unsigned int i = 0; !ret && i < im->n; i++) {
		ret = export_fmt_path(path, sizeof(path), "%s/%s/meta.json", im->tmp, im->chain[i].name);
		o = ret ? NULL : meta_to_json(&im->chain[i]);
		if (o)
			ret = store_write_json(path, o);
		json_object_put(o);
	}
	if (!ret)
		ret = export_fmt_path(path, sizeof(path), "%s/current.json", im->tmp);
	if (!ret) {
		o = json_object_new_object();
		json_object_object_add(o, "current", json_object_new_string(im->snap));
		ret = store_write_json(path, o);
		json_object_put(o);
	}
	return ret;
}

/* An export holds whole disks: one that names another file (a backing
 * file, VMDK extents) would make the new VM read a file of this host. */
static int import_check_disk(const struct mgr_disk *k, unsigned int i)
{
	struct image *img;
	int ret = image_open(k->path, k->format, IMAGE_NO_BACKING, &img);

	if (ret)
		return err_set(-EINVAL, "disks/%u: %s", i, err_get());
	if (strcmp(img->fmt->name, "qcow2") && strcmp(img->fmt->name, "raw"))
		ret = err_set(-EINVAL, "disks/%u is %s: only qcow2 and raw disks are imported", i,
			      img->fmt->name);
	else if (img->backing_name[0])
		ret = err_set(-EINVAL, "disks/%u has a backing file (%.200s): an export holds "
			      "whole disks", i, img->backing_name);
	image_close(img);
	return ret;
}

/* What a rollback to SNAP will check, on the copies. */
static int import_verify(struct import *im)
{
	struct machine_config *mc = calloc(1, sizeof(*mc));
	char dir[PATH_MAX];
	struct snapshot *s;
	int ret = mc ? 0 : err_set(-ENOMEM, "out of memory");

	for (unsigned int i = 0; !ret && i < im->n; i++) {
		if (!im->chain[i].memory)
			continue;
		ret = export_fmt_path(dir, sizeof(dir), "%s/%s", im->tmp, im->chain[i].name);
		if (!ret)
			ret = snapshot_open(dir, &s, mc);
		if (ret)
			ret = err_set(-EINVAL, "snapshot '%s': %s", im->chain[i].name, err_get());
		else
			snapshot_close(s);
	}
	free(mc);
	for (unsigned int i = 0; !ret && i < im->def.ndisks; i++)
		ret = import_check_disk(&im->def.disks[i], i);
	if (!ret)
		ret = disks_check(&im->def, false, im->snap, true);
	return ret;
}

/* The state files record the disks' paths, which a restore opens: the
 * new ones. */
static int import_disk_paths(struct import *im)
{
	const char *paths[MGR_MAX_DISKS];
	char dir[PATH_MAX];
	int ret = 0;

	for (unsigned int i = 0; i < im->def.ndisks; i++)
		paths[i] = im->def.disks[i].path;
	for (unsigned int i = 0; !ret && im->def.ndisks && i < im->n; i++) {
		if (!im->chain[i].memory)
			continue;
		ret = export_fmt_path(dir, sizeof(dir), "%s/%s", im->tmp, im->chain[i].name);
		if (!ret)
			ret = snapshot_set_disk_paths(dir, paths, im->def.ndisks);
	}
	return ret;
}

static int import_files(struct import *im)
{
	int ret = import_snapshot_dirs(im);

	if (!ret && im->ar)
		ret = import_entries(im);
	for (unsigned int i = 0; !ret && !im->ar && i < im->nfiles; i++)
		ret = import_copy(im, &im->files[i]);
	if (!ret)
		ret = import_disk_paths(im);
	return ret ? ret : import_verify(im);
}

static void import_free(struct import *im, bool undo)
{
	for (unsigned int i = 0; undo && i < im->nmade; i++)
		unlink(im->made[i]);
	if (undo && im->tmp_made)
		export_remove_tree(im->tmp);
	for (unsigned int i = 0; i < im->nfiles; i++)
		free(im->files[i].dst);
	for (unsigned int i = 0; i < im->n; i++)
		meta_free(&im->chain[i]);
	if (im->have_def)
		vm_def_free(&im->def);
	export_reader_close(im->ar);
}

/* The exported VM's name (its definition is checked later). */
static void manifest_vm_name(struct json_object *o, char out[MGR_NAME_MAX + 1])
{
	struct json_object *vm, *name;

	if (json_object_object_get_ex(o, "vm", &vm) &&
	    json_object_object_get_ex(vm, "name", &name) &&
	    json_object_is_type(name, json_type_string))
		snprintf(out, MGR_NAME_MAX + 1, "%s", json_object_get_string(name));
}

static int import_prepare(struct import *im, struct json_object *body)
{
	char snaps[PATH_MAX], final[PATH_MAX];
	struct json_object *manifest = NULL;
	struct stat st;
	bool archive = false;
	int ret = export_body_path(im->m, body, im->src, sizeof(im->src), &archive);

	if (!ret && !im->m->nstorage)
		ret = err_set(-EPERM, "this daemon has no storage directory for the disks");
	if (!ret)
		ret = read_manifest(im, archive, &manifest);
	if (!ret && !im->name[0])
		manifest_vm_name(manifest, im->name);
	if (!ret && !vm_name_valid(im->name))
		ret = err_set(-EINVAL, "bad VM name");
	if (!ret && mgr_find(im->m, im->name))
		ret = err_set(-EEXIST, "a VM named '%s' exists", im->name);
	if (!ret)
		ret = parse_manifest(im, manifest);
	json_object_put(manifest);
	if (!ret)
		ret = vm_def_check_new(&im->def, im->m->state_dir);
	if (!ret)
		ret = mgr_net_check_def(im->m, &im->def);
	if (!ret)
		ret = store_path(im->m, snaps, sizeof(snaps), "snapshots", NULL, NULL);
	if (!ret && mkdir(snaps, 0700) < 0 && errno != EEXIST)
		ret = err_set(-errno, "cannot create %s: %m", snaps);
	if (!ret)
		ret = export_fmt_path(im->tmp, sizeof(im->tmp), "%s/.%s.import", snaps, im->name);
	if (!ret)
		ret = snap_path(im->m, final, sizeof(final), im->name, NULL, NULL);
	if (!ret && lstat(final, &st) == 0)
		ret = err_set(-EEXIST, "%s exists (snapshots of an earlier VM '%s')", final, im->name);
	return ret ? ret : import_places(im);
}

enum mgr_err mgr_import(struct mgr *m, const char *name, struct json_object *body,
			struct json_object **out)
{
	struct import *im = calloc(1, sizeof(*im));
	char final[PATH_MAX], journal[PATH_MAX];
	enum mgr_err e = MGR_OK;
	int ret;

	if (!im)
		return err_set(-ENOMEM, "out of memory"), MGR_E_FAILED;
	im->m = m;
	snprintf(im->name, sizeof(im->name), "%s", name ? name : "");
	ret = import_prepare(im, body);
	if (!ret) {
		/* Copies and checks without the table lock. */
		pthread_mutex_unlock(&m->lock);
		ret = import_files(im);
		pthread_mutex_lock(&m->lock);
	}
	if (!ret)
		ret = snap_path(m, final, sizeof(final), im->name, NULL, NULL);
	if (!ret)
		ret = export_fmt_path(journal, sizeof(journal), "%s/" IMPORT_JOURNAL, im->tmp);
	if (!ret && unlink(journal) < 0)
		ret = err_set(-errno, "cannot remove %s: %m", journal);
	if (!ret && rename(im->tmp, final) < 0)
		ret = err_set(-errno, "cannot rename %s: %m", im->tmp);
	if (!ret) {
		strcpy(im->tmp, final);
		im->have_def = false;
		e = mgr_create(m, &im->def);
	}
	if (ret) {
		err_set(ret, "cannot import %s: %s", im->src[0] ? im->src : "the export",
			err_get());
		/* A file missing from the export, or a link in it: damaged. */
		e = ret == -EEXIST ? MGR_E_CONFLICT : ret == -ENOMEM || ret == -EIO ||
		    ret == -ENOSPC || ret == -EDQUOT ? MGR_E_FAILED : MGR_E_BAD;
	}
	if (e == MGR_OK) {
		*out = mgr_vm_json(m, mgr_find(m, im->name), false);
		log_info("VM %s: imported from %s, snapshot %s", im->name, im->src, im->snap);
	}
	import_free(im, e != MGR_OK);
	free(im);
	return e;
}

/* Whether f, listed in an interrupted import's journal, is that import's
 * leftover: a file directly in a storage directory that no VM uses (the
 * state directory is not trusted to name any file to delete). */
static bool import_leftover(const struct mgr *m, const char *f)
{
	const char *slash = strrchr(f, '/');
	bool in_storage = false;

	for (unsigned int i = 0; slash && i < m->nstorage; i++)
		in_storage |= strlen(m->storage[i]) == (size_t)(slash - f) &&
			      !strncmp(f, m->storage[i], (size_t)(slash - f));
	for (const struct mgr_vm *vm = m->vms; in_storage && vm; vm = vm->next) {
		const struct vm_def *d = &vm->def;

		for (unsigned int i = 0; i < d->ndisks; i++)
			in_storage &= strcmp(d->disks[i].path, f) != 0;
		in_storage &= !(d->kernel && !strcmp(d->kernel, f)) &&
			      !(d->initrd && !strcmp(d->initrd, f));
	}
	return in_storage;
}

static void import_recover_one(const struct mgr *m, const char *dir)
{
	struct json_object *o, *files;
	char path[PATH_MAX];

	if (export_fmt_path(path, sizeof(path), "%s/" IMPORT_JOURNAL, dir))
		return;
	o = store_read_json(path);
	if (o && json_object_object_get_ex(o, "files", &files) &&
	    json_object_is_type(files, json_type_array))
		for (size_t i = 0; i < json_object_array_length(files); i++) {
			const char *f = json_object_get_string(json_object_array_get_idx(files, i));

			if (f && import_leftover(m, f) && unlink(f) == 0)
				log_info("removed %s, left by an interrupted import", f);
		}
	json_object_put(o);
	export_remove_tree(dir);
	log_warn("removed %s: an import that did not finish", dir);
}

void mgr_import_recover(struct mgr *m)
{
	char snaps[PATH_MAX], dir[PATH_MAX];
	struct dirent *e;
	DIR *d;

	if (store_path(m, snaps, sizeof(snaps), "snapshots", NULL, NULL) || !(d = opendir(snaps)))
		return;
	pthread_mutex_lock(&m->lock);
	while ((e = readdir(d))) {
		size_t n = strlen(e->d_name);

		if (e->d_name[0] == '.' && n > 8 && !strcmp(e->d_name + n - 7, ".import") &&
		    !export_fmt_path(dir, sizeof(dir), "%s/%s", snaps, e->d_name))
			import_recover_one(m, dir);
	}
	pthread_mutex_unlock(&m->lock);
	closedir(d);
}
