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

#define COPY_CHUNK (1u << 20)

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
int export_copy_hashed(int in, int out, uint64_t size, char hex[65])
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
	ret = export_copy_hashed(in, out, *size, hex);
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
void export_remove_tree(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	char sub[PATH_MAX];

	while (d && (e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") ||
		    (size_t)snprintf(sub, sizeof(sub), "%s/%s", path, e->d_name) >= sizeof(sub))
			continue;
		if (e->d_type == DT_DIR)
			export_remove_tree(sub);
		else
			unlink(sub);
	}
	if (d)
		closedir(d);
	rmdir(path);
}

int export_fmt_path(char *out, size_t size, const char *fmt, ...)
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

int export_mkdir_in(const char *base, const char *sub)
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
int export_body_path(struct mgr *m, struct json_object *body, char *out, size_t size,
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
	ret = export_mkdir_in(x->tmp, rel);
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
	int ret = export_mkdir_in(x->tmp, "snapshots");

	for (unsigned int i = 0; !ret && i < n; i++)
		ret = export_snapshot(x, &chain[i]);
	if (!ret && (d->ndisks || d->kernel || d->initrd))
		ret = export_mkdir_in(x->tmp, d->ndisks ? "disks" : "boot");
	if (!ret && d->ndisks && (d->kernel || d->initrd))
		ret = export_mkdir_in(x->tmp, "boot");
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

void export_sha256_hex(const char *text, char hex[65])
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
	export_sha256_hex(text, hex);
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
		export_remove_tree(x->tmp);
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
	int ret = chain ? export_body_path(m, body, dir, sizeof(dir), &x.archive) :
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
