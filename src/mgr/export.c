/* Export and import of a VM snapshot (docs/api.md "Export and import"):
 * a directory that holds what it takes to bring the snapshot back on
 * another daemon, every file under a SHA-256 in its manifest.
 *
 *   DIR/manifest.json    {"format": "vireo-export", "version": 1,
 *                         "snapshot": SNAP, "vm": the definition,
 *                         "snapshots": [meta.json of SNAP and, for an
 *                         incremental one, of each parent up to its full
 *                         one, oldest first],
 *                         "files": [{"path", "size", "sha256"}]}
 *   DIR/manifest.sha256  the manifest's SHA-256, hex, and a newline
 *   DIR/snapshots/S/state, memory    each of those with memory
 *   DIR/disks/N          disk N of the definition, whole (its qcow2
 *                        internal snapshots, SNAP's among them)
 *   DIR/boot/kernel, initrd          when the definition has them
 *
 * An export is built in DIR.partial and renamed into place. An import
 * checks the manifest, copies each file checking its hash on the way, and
 * checks what it copied as a rollback would (state files whole, the disks'
 * internal snapshots there) before anything is named after the new VM: a
 * damaged or hostile export is refused and leaves nothing behind. The
 * imported VM is stopped, with SNAP as its current snapshot: a rollback
 * to SNAP brings it back running. */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <gnutls/crypto.h>
#include <json-c/json.h>
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

#define EXPORT_FORMAT "vireo-export"
#define EXPORT_VERSION 1
#define MANIFEST_MAX (1u << 20)
#define COPY_CHUNK (1u << 20)
#define MAX_CHAIN SNAPSHOT_MAX_CHAIN
/* Files of an export: state and memory per snapshot, disks, kernel, initrd. */
#define MAX_FILES (2 * MAX_CHAIN + MGR_MAX_DISKS + 2)

/* ---- hashed, sparse copies ---- */

static int hash_zeros(gnutls_hash_hd_t h, const uint8_t *zero, uint64_t n)
{
	while (n) {
		size_t k = n < COPY_CHUNK ? (size_t)n : COPY_CHUNK;

		if (gnutls_hash(h, zero, k) < 0)
			return err_set(-EIO, "SHA-256 failed");
		n -= k;
	}
	return 0;
}

static int copy_range(int in, int out, uint64_t off, uint64_t end, uint8_t *buf,
		      gnutls_hash_hd_t h)
{
	while (off < end) {
		size_t want = end - off < COPY_CHUNK ? (size_t)(end - off) : COPY_CHUNK;
		ssize_t n = pread(in, buf, want, (off_t)off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return err_set(n < 0 ? -errno : -EIO, "read: %s",
				       n < 0 ? strerror(errno) : "file shorter than it was");
		if (gnutls_hash(h, buf, (size_t)n) < 0)
			return err_set(-EIO, "SHA-256 failed");
		for (ssize_t done = 0; done < n; ) {
			ssize_t w = pwrite(out, buf + done, (size_t)(n - done), (off_t)off + done);

			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
				return err_set(w < 0 ? -errno : -EIO, "write: %s",
					       w < 0 ? strerror(errno) : "short write");
			done += w;
		}
		off += (uint64_t)n;
	}
	return 0;
}

/* Copies size bytes of in to out (empty), holes as holes, and gives
 * their SHA-256 in hex. */
static int copy_hashed(int in, int out, uint64_t size, char hex[65])
{
	uint8_t *buf = malloc(COPY_CHUNK), *zero = calloc(1, COPY_CHUNK), digest[32];
	gnutls_hash_hd_t h;
	uint64_t off = 0;
	int ret = 0;

	if (!buf || !zero || gnutls_hash_init(&h, GNUTLS_DIG_SHA256) < 0) {
		free(buf);
		free(zero);
		return err_set(-ENOMEM, "out of memory");
	}
	if (ftruncate(out, (off_t)size) < 0)
		ret = err_set(-errno, "cannot size the copy: %m");
	while (!ret && off < size) {
		off_t data = lseek(in, (off_t)off, SEEK_DATA), hole;

		if (data < 0 && errno != ENXIO)
			data = (off_t)off;      /* no hole information: all data */
		if (data < 0 || (uint64_t)data > size)
			data = (off_t)size;
		hole = lseek(in, data, SEEK_HOLE);
		if (hole < 0 || (uint64_t)hole > size)
			hole = (off_t)size;
		ret = hash_zeros(h, zero, (uint64_t)data - off);
		if (!ret)
			ret = copy_range(in, out, (uint64_t)data, (uint64_t)hole, buf, h);
		off = (uint64_t)hole;
	}
	gnutls_hash_deinit(h, digest);
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", digest[i]);
	free(buf);
	free(zero);
	return ret;
}

static int open_regular(const char *path, uint64_t *size)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);

	if (fd < 0)
		return err_set(-errno, "%s: %m", path);
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return err_set(-EINVAL, "%s: not a regular file", path);
	}
	*size = (uint64_t)st.st_size;
	return fd;
}

/* Copies src to the new file dst; hex: its hash. */
static int copy_file(const char *src, const char *dst, uint64_t *size, char hex[65])
{
	int in = open_regular(src, size), out, ret;

	if (in < 0)
		return in;
	out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (out < 0) {
		ret = err_set(-errno, "cannot create %s: %m", dst);
		close(in);
		return ret;
	}
	ret = copy_hashed(in, out, *size, hex);
	if (!ret && fsync(out) < 0)
		ret = err_set(-errno, "cannot sync %s: %m", dst);
	close(in);
	close(out);
	if (ret) {
		unlink(dst);
		return err_set(ret, "%s: %s", src, err_get());
	}
	return 0;
}

/* Removes a tree this file made (directories and regular files only). */
static void remove_tree(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	char sub[PATH_MAX];

	while (d && (e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") ||
		    (size_t)snprintf(sub, sizeof(sub), "%s/%s", path, e->d_name) >= sizeof(sub))
			continue;
		if (e->d_type == DT_DIR)
			remove_tree(sub);
		else
			unlink(sub);
	}
	if (d)
		closedir(d);
	rmdir(path);
}

static int fmt_path(char *out, size_t size, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int fmt_path(char *out, size_t size, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(out, size, fmt, ap);
	va_end(ap);
	return n < 0 || (size_t)n >= size ? err_set(-ENAMETOOLONG, "path too long") : 0;
}

static int join(char *out, size_t size, const char *a, const char *b)
{
	int n = snprintf(out, size, "%s/%s", a, b);

	return n < 0 || (size_t)n >= size ? err_set(-ENAMETOOLONG, "path too long") : 0;
}

static int mkdir_in(const char *base, const char *sub)
{
	char path[PATH_MAX];
	int ret = join(path, sizeof(path), base, sub);

	if (!ret && mkdir(path, 0700) < 0)
		ret = err_set(-errno, "cannot create %s: %m", path);
	return ret;
}

/* ---- paths the client names ---- */

/* An absolute path whose directory is (below) a storage directory, with a
 * last component of the daemon's names: the daemon writes and reads only
 * where it keeps disks. */
static int storage_path(struct mgr *m, const char *path, char *out, size_t size)
{
	char dir[PATH_MAX], real[PATH_MAX];
	const char *base = strrchr(path, '/');

	if (path[0] != '/' || !base || strlen(path) >= sizeof(dir) - 16 || !vm_name_valid(base + 1))
		return err_set(-EINVAL, "the path must be absolute, its last part 1 to 64 "
			       "of A-Z a-z 0-9 _ . -, not starting with '.' or '-'");
	memcpy(dir, path, (size_t)(base - path));
	dir[base - path] = '\0';
	if (!realpath(dir[0] ? dir : "/", real))
		return err_set(-errno, "%s: %m", dir);
	for (unsigned int i = 0; i < m->nstorage; i++) {
		size_t n = strlen(m->storage[i]);

		if (!strncmp(real, m->storage[i], n) && (real[n] == '/' || real[n] == '\0')) {
			if ((size_t)snprintf(out, size, "%s%s", real, base) >= size)
				return err_set(-ENAMETOOLONG, "path too long");
			return 0;
		}
	}
	return err_set(-EPERM, "%s is not in a storage directory of this daemon (vireo daemon "
		       "--storage)", path);
}

/* {"dir": PATH} (a directory) or {"file": PATH} (one tar archive). */
static int body_path(struct mgr *m, struct json_object *body, char *out, size_t size,
		     bool *archive)
{
	struct json_object *v = NULL;

	if (!json_object_is_type(body, json_type_object) || json_object_object_length(body) != 1 ||
	    !((*archive = json_object_object_get_ex(body, "file", &v)) ||
	      json_object_object_get_ex(body, "dir", &v)) || !json_object_is_type(v, json_type_string))
		return err_set(-EINVAL, "the body is {\"file\": PATH} or {\"dir\": PATH}");
	return storage_path(m, json_object_get_string(v), out, size);
}

/* ---- export ---- */

struct export {
	struct mgr *m;
	const char *vm, *tmp;
	struct json_object *files;
	struct image *disks[MGR_MAX_DISKS];     /* what each disk exports */
	bool archive;           /* one tar file, built from the directory tmp */
};

static void record_file(struct export *x, const char *rel, uint64_t size, const char *hex)
{
	struct json_object *f = json_object_new_object();

	json_object_object_add(f, "path", json_object_new_string(rel));
	json_object_object_add(f, "size", json_object_new_int64((int64_t)size));
	json_object_object_add(f, "sha256", json_object_new_string(hex));
	json_object_array_add(x->files, f);
}

static int add_file(struct export *x, const char *src, const char *rel)
{
	char dst[PATH_MAX], hex[65];
	uint64_t size = 0;
	int ret = join(dst, sizeof(dst), x->tmp, rel);

	if (!ret)
		ret = copy_file(src, dst, &size, hex);
	if (!ret)
		record_file(x, rel, size, hex);
	return ret;
}

/* The SHA-256 of a file the export made. */
static int hash_file(const char *path, uint64_t *size, char hex[65])
{
	uint8_t *buf = malloc(COPY_CHUNK), digest[32];
	int fd = open_regular(path, size), ret = 0;
	gnutls_hash_hd_t h;
	ssize_t n;

	if (fd < 0 || !buf || gnutls_hash_init(&h, GNUTLS_DIG_SHA256) < 0) {
		free(buf);
		if (fd >= 0)
			close(fd);
		return fd < 0 ? fd : err_set(-ENOMEM, "out of memory");
	}
	while ((n = read(fd, buf, COPY_CHUNK)) > 0 || (n < 0 && errno == EINTR))
		if (n > 0 && gnutls_hash(h, buf, (size_t)n) < 0)
			ret = -EIO;
	if (n < 0 || ret)
		ret = err_set(-EIO, "%s: cannot read it back", path);
	gnutls_hash_deinit(h, digest);
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", digest[i]);
	free(buf);
	close(fd);
	return ret;
}

/* A disk's export format: qcow2 (compressed clusters) for a qcow2 image,
 * raw (sparse) for a raw one; the definition and the state keep theirs. */
static const char *disk_out_format(const struct image *in)
{
	return strcmp(in->fmt->name, "qcow2") ? "raw" : "qcow2";
}

/* Disk i: a new image with what `in` reads (the backing chain
 * flattened), by convert's copy; a writable disk's gets SNAP's internal
 * snapshot again, which a rollback applies after the import. */
static int export_disk(struct export *x, const struct mgr_disk *k, unsigned int i,
		       const char *snap)
{
	struct image_create_opts o = { .size = x->disks[i]->size };
	const char *fmt = disk_out_format(x->disks[i]);
	char rel[32], path[PATH_MAX], hex[65];
	struct image *out;
	uint64_t size;
	int ret;

	snprintf(rel, sizeof(rel), "disks/%u", i);
	ret = join(path, sizeof(path), x->tmp, rel);
	if (!ret)
		ret = image_create(path, fmt, &o);
	if (!ret)
		ret = image_open(path, fmt, IMAGE_RDWR, &out);
	if (ret)
		return err_set(ret, "disk %u: %s", i, err_get());
	ret = img_copy(x->disks[i], out, !strcmp(fmt, "qcow2"), false);
	if (!ret && !k->readonly) {
		pthread_mutex_lock(&out->lock);
		ret = out->fmt->snapshot_create(out, snap);
		pthread_mutex_unlock(&out->lock);
	}
	image_close(out);
	if (!ret)
		ret = hash_file(path, &size, hex);
	if (ret)
		return err_set(ret, "disk %u (%s): %s", i, k->path, err_get());
	record_file(x, rel, size, hex);
	return 0;
}

/* Opens what each disk exports: a writable one's internal snapshot SNAP
 * (read-only and without the image lock: a running VMM writes the image,
 * and leaves the snapshot's clusters as they are), a read-only one as it
 * is. Run under the VM's operation lock: no snapshot is taken or dropped
 * meanwhile, so the snapshot table is read whole. */
static int open_disks(struct export *x, const struct vm_def *d, const char *snap)
{
	int ret = disks_check(d, true, snap, true);

	for (unsigned int i = 0; !ret && i < d->ndisks; i++) {
		const struct mgr_disk *k = &d->disks[i];

		ret = image_open(k->path, k->format, IMAGE_FORCE_SHARE, &x->disks[i]);
		if (!ret && strcmp(x->disks[i]->fmt->name, "qcow2") &&
		    strcmp(x->disks[i]->fmt->name, "raw"))
			ret = err_set(-ENOTSUP, "format %s: an export takes qcow2 and raw disks",
				      x->disks[i]->fmt->name);
		if (!ret && !k->readonly)
			ret = image_snapshot_load(x->disks[i], snap);
		if (ret)
			return err_set(ret, "disk %u (%s): %s", i, k->path, err_get());
	}
	return ret;
}

static void close_disks(struct export *x)
{
	for (unsigned int i = 0; i < MGR_MAX_DISKS; i++)
		if (x->disks[i])
			image_close(x->disks[i]);
}

/* SNAP and, while incremental, its parents: oldest first in out[]. */
static int load_chain(struct mgr *m, const char *vm, const char *snap, struct snap_meta *out,
		      unsigned int *n)
{
	struct snap_meta s;
	const char *name = snap;
	int ret;

	*n = 0;
	for (;;) {
		ret = meta_load(m, vm, name, &s);
		if (ret)
			break;
		if (*n == MAX_CHAIN) {
			meta_free(&s);
			ret = err_set(-EINVAL, "snapshot '%s': chain too long", snap);
			break;
		}
		memmove(out + 1, out, *n * sizeof(*out));
		out[0] = s;
		++*n;
		if (!s.incremental)
			return 0;
		name = out[0].parent;
	}
	while (*n)
		meta_free(&out[--*n]);
	return ret;
}

static int export_snapshot(struct export *x, const struct snap_meta *s)
{
	static const char *const files[2] = { "state", "memory" };
	char rel[MGR_NAME_MAX + 32], src[PATH_MAX];
	int ret = 0;

	snprintf(rel, sizeof(rel), "snapshots/%s", s->name);
	ret = mkdir_in(x->tmp, rel);
	for (int i = 0; !ret && s->memory && i < 2; i++) {
		snprintf(rel, sizeof(rel), "snapshots/%s/%s", s->name, files[i]);
		ret = snap_path(x->m, src, sizeof(src), x->vm, s->name, files[i]);
		if (!ret)
			ret = add_file(x, src, rel);
	}
	return ret;
}

static int export_files(struct export *x, const struct vm_def *d, const struct snap_meta *chain,
			unsigned int n)
{
	int ret = mkdir_in(x->tmp, "snapshots");

	for (unsigned int i = 0; !ret && i < n; i++)
		ret = export_snapshot(x, &chain[i]);
	if (!ret && (d->ndisks || d->kernel || d->initrd))
		ret = mkdir_in(x->tmp, d->ndisks ? "disks" : "boot");
	if (!ret && d->ndisks && (d->kernel || d->initrd))
		ret = mkdir_in(x->tmp, "boot");
	for (unsigned int i = 0; !ret && i < d->ndisks; i++)
		ret = export_disk(x, &d->disks[i], i, chain[n - 1].name);
	if (!ret && d->kernel)
		ret = add_file(x, d->kernel, "boot/kernel");
	if (!ret && d->initrd)
		ret = add_file(x, d->initrd, "boot/initrd");
	return ret;
}

static int write_text(const char *dir, const char *name, const char *text)
{
	char path[PATH_MAX];
	int fd, ret = join(path, sizeof(path), dir, name);
	size_t len = strlen(text);

	if (ret)
		return ret;
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return err_set(-errno, "cannot create %s: %m", path);
	if (write(fd, text, len) != (ssize_t)len || fsync(fd) < 0)
		ret = err_set(-EIO, "cannot write %s", path);
	close(fd);
	return ret;
}

static void sha256_hex(const char *text, char hex[65])
{
	uint8_t d[32];

	gnutls_hash_fast(GNUTLS_DIG_SHA256, text, strlen(text), d);
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", d[i]);
}

static int write_manifest(struct export *x, const struct vm_def *d, const char *snap,
			  const struct snap_meta *chain, unsigned int n)
{
	struct json_object *o = json_object_new_object(), *a = json_object_new_array();
	char hex[66];
	const char *text;
	int ret;

	json_object_object_add(o, "format", json_object_new_string(EXPORT_FORMAT));
	json_object_object_add(o, "version", json_object_new_int(EXPORT_VERSION));
	json_object_object_add(o, "snapshot", json_object_new_string(snap));
	json_object_object_add(o, "vm", vm_def_to_json(d));
	for (unsigned int i = 0; i < n; i++)
		json_object_array_add(a, meta_to_json(&chain[i]));
	json_object_object_add(o, "snapshots", a);
	json_object_object_add(o, "files", json_object_get(x->files));
	text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY);
	ret = write_text(x->tmp, "manifest.json", text);
	sha256_hex(text, hex);
	strcat(hex, "\n");
	if (!ret)
		ret = write_text(x->tmp, "manifest.sha256", hex);
	json_object_put(o);
	return ret;
}

static enum mgr_err export_class(int ret)
{
	return ret == -EINVAL || ret == -EPERM || ret == -ENAMETOOLONG ? MGR_E_BAD :
	       ret == -EEXIST || ret == -EBUSY ? MGR_E_CONFLICT : ret == -ENOENT ? MGR_E_NOT_FOUND :
	       MGR_E_FAILED;
}

int mgr_export_busy(const struct mgr_vm *vm)
{
	return vm->exports ? err_set(-EBUSY, "VM '%s' has an export under way: try again when it "
				     "has ended", vm->def.name) : 0;
}

/* The directory x->tmp as the archive `path`: manifest first. */
static int export_archive(struct export *x, const char *path)
{
	const char *rels[MAX_FILES + 2] = { "manifest.json", "manifest.sha256" };
	size_t n = json_object_array_length(x->files);
	char part[PATH_MAX + 16];
	struct json_object *p;
	int ret;

	for (size_t i = 0; i < n && i < MAX_FILES; i++)
		rels[i + 2] = json_object_object_get_ex(json_object_array_get_idx(x->files, i),
							"path", &p) ? json_object_get_string(p) : "";
	snprintf(part, sizeof(part), "%s.tar", x->tmp);
	ret = export_pack(x->tmp, rels, (unsigned int)(n + 2), part);
	if (!ret && rename(part, path) < 0)
		ret = err_set(-errno, "cannot rename %s: %m", part);
	if (ret)
		unlink(part);
	return ret;
}

/* The copies run without the table lock. */
static int export_unlocked(struct export *x, const struct vm_def *d, const char *snap,
			   const struct snap_meta *chain, unsigned int n, const char *dir)
{
	int ret;

	pthread_mutex_unlock(&x->m->lock);
	if (mkdir(x->tmp, 0700) < 0) {
		ret = err_set(-errno, "cannot create %s: %m", x->tmp);
		pthread_mutex_lock(&x->m->lock);
		return ret;
	}
	ret = export_files(x, d, chain, n);
	if (!ret)
		ret = write_manifest(x, d, snap, chain, n);
	if (!ret && x->archive)
		ret = export_archive(x, dir);
	else if (!ret && rename(x->tmp, dir) < 0)
		ret = err_set(-errno, "cannot rename %s: %m", x->tmp);
	if (ret || x->archive)
		remove_tree(x->tmp);
	pthread_mutex_lock(&x->m->lock);
	return ret;
}

/* Without the VM's operation lock either, on a copy of its definition:
 * the VM goes on (an export of a running VM does not stop it). Its
 * disks' views are opened first, under the operation lock; then
 * vm->exports refuses what would remove the snapshot being read. */
static int export_run(struct export *x, struct mgr_vm *vm, const struct vm_def *d,
		      const char *snap, const struct snap_meta *chain, unsigned int n,
		      const char *dir)
{
	int ret;

	pthread_mutex_unlock(&x->m->lock);
	ret = open_disks(x, d, snap);
	pthread_mutex_lock(&x->m->lock);
	if (!ret) {
		vm->exports++;
		pthread_mutex_unlock(&vm->lock);
		ret = export_unlocked(x, d, snap, chain, n, dir);
		/* Lock order: the VM's lock, then the table's. */
		pthread_mutex_unlock(&x->m->lock);
		pthread_mutex_lock(&vm->lock);
		pthread_mutex_lock(&x->m->lock);
		vm->exports--;
	}
	close_disks(x);
	return ret;
}

enum mgr_err mgr_snap_export(struct mgr *m, struct mgr_vm *vm, const char *snap,
			     struct json_object *body, struct json_object **out)
{
	struct snap_meta *chain = calloc(MAX_CHAIN, sizeof(*chain));
	char dir[PATH_MAX], tmp[PATH_MAX + 16];
	struct export x = { .m = m, .vm = vm->def.name, .tmp = tmp };
	struct vm_def def;
	bool have_def = false;
	unsigned int n = 0;
	struct stat st;
	int ret = chain ? body_path(m, body, dir, sizeof(dir), &x.archive) :
		  err_set(-ENOMEM, "out of memory");

	if (!ret && (lstat(dir, &st) == 0 || errno != ENOENT))
		ret = err_set(-EEXIST, "%s exists", dir);
	snprintf(tmp, sizeof(tmp), "%s.partial", dir);
	if (!ret && lstat(tmp, &st) == 0)
		ret = err_set(-EEXIST, "%s exists (an export that did not finish: remove it)", tmp);
	if (!ret)
		ret = load_chain(m, vm->def.name, snap, chain, &n);
	if (!ret && !(ret = vm_def_copy(&vm->def, &def)))
		have_def = true;
	x.vm = have_def ? def.name : x.vm;
	x.files = json_object_new_array();
	if (!ret)
		ret = export_run(&x, vm, &def, snap, chain, n, dir);
	if (!ret) {
		*out = json_object_new_object();
		json_object_object_add(*out, "exported", json_object_new_string(snap));
		json_object_object_add(*out, x.archive ? "file" : "dir", json_object_new_string(dir));
		json_object_object_add(*out, "files", json_object_get(x.files));
		log_info("VM %s: snapshot %s exported to %s", vm->def.name, snap, dir);
	}
	json_object_put(x.files);
	if (have_def)
		vm_def_free(&def);
	while (n)
		meta_free(&chain[--n]);
	free(chain);
	return ret ? export_class(ret) : MGR_OK;
}

/* ---- import ---- */

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
		sha256_hex(text, hex);
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
			ret = fmt_path(path, sizeof(path), "%s/%s", im->tmp, f->rel + 10);
		} else if (sscanf(f->rel, "disks/%u", &disk) == 1 && disk < im->def.ndisks) {
			ret = fmt_path(path, sizeof(path), "%s/%s-disk%u.%s", store, im->name, disk,
				       im->def.disks[disk].format ? im->def.disks[disk].format : "img");
			defpath = &im->def.disks[disk].path;
		} else {
			ret = fmt_path(path, sizeof(path), "%s/%s-%s", store, im->name, f->rel + 5);
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
	ret = in >= 0 ? copy_hashed(in, out, f->size, hex) :
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

static int import_snapshot_dirs(struct import *im)
{
	char path[PATH_MAX];
	struct json_object *o;
	int ret = mkdir(im->tmp, 0700) < 0 ? err_set(-errno, "cannot create %s: %m", im->tmp) : 0;

	im->tmp_made = !ret;
	for (unsigned int i = 0; !ret && i < im->n; i++)
		ret = mkdir_in(im->tmp, im->chain[i].name);
	for (unsigned int i = 0; !ret && i < im->n; i++) {
		ret = fmt_path(path, sizeof(path), "%s/%s/meta.json", im->tmp, im->chain[i].name);
		o = ret ? NULL : meta_to_json(&im->chain[i]);
		if (o)
			ret = store_write_json(path, o);
		json_object_put(o);
	}
	if (!ret)
		ret = fmt_path(path, sizeof(path), "%s/current.json", im->tmp);
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
		ret = fmt_path(dir, sizeof(dir), "%s/%s", im->tmp, im->chain[i].name);
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
		ret = fmt_path(dir, sizeof(dir), "%s/%s", im->tmp, im->chain[i].name);
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
		remove_tree(im->tmp);
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
	int ret = body_path(im->m, body, im->src, sizeof(im->src), &archive);

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
		ret = fmt_path(im->tmp, sizeof(im->tmp), "%s/.%s.import", snaps, im->name);
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
	char final[PATH_MAX];
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
