/* The block core: opening images and their backing chains, bounds checks,
 * per-image serialization and the defaults for optional format callbacks. */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vireo/block.h"
#include "vireo/log.h"

static const struct block_policy *default_policy;

void image_set_default_policy(const struct block_policy *p)
{
	default_policy = p;
}

static void image_free(struct image *img)
{
	bfile_close(img->file);
	pthread_mutex_destroy(&img->lock);
	free(img->filename);
	free(img->own_policy);	/* after the files that point at it */
	free(img->own_dir);
	free(img);
}

/* The realpaths of the layers above the one being opened: a loop check. */
struct chain_seen {
	char paths[BLOCK_MAX_CHAIN][PATH_MAX];
	int depth;
};

static int image_open_chain(struct image *img, struct chain_seen *seen);

static int image_open_layer(struct bfile *file, const char *fmtname, int flags,
			    struct chain_seen *seen, struct image **out)
{
	const struct image_format *fmt;
	struct image *img;
	int score = 0, ret;

	fmt = fmtname ? image_format_find(fmtname) : image_format_probe(file, &score);
	if (!fmt) {
		ret = fmtname ? err_set(-EINVAL, "%s: unknown image format '%s'", file->path, fmtname)
			      : -EIO;	/* probe read failed: err_set() said why */
		bfile_close(file);
		return ret;
	}
	if (!fmtname && fmt == &raw_format && (flags & IMAGE_RDWR) &&
	    !(flags & IMAGE_ALLOW_PROBE_RAW_RW)) {
		ret = err_set(-EPERM, "%s: format probed as raw: refusing to write without "
			      "an explicit '-f raw'", file->path);
		bfile_close(file);
		return ret;
	}
	img = calloc(1, sizeof(*img));
	if (!img || !(img->filename = strdup(file->path))) {
		free(img);
		bfile_close(file);
		return err_set(-ENOMEM, "out of memory");
	}
	pthread_mutex_init(&img->lock, NULL);
	img->fmt = fmt;
	img->file = file;
	img->writable = (flags & IMAGE_RDWR) != 0;
	ret = fmt->open(img);
	if (ret) {
		image_free(img);
		return ret;
	}
	if (img->backing_name[0] && !(flags & IMAGE_NO_BACKING) && file->fd >= 0) {
		ret = image_open_chain(img, seen);
		if (ret) {
			image_close(img);
			return ret;
		}
	}
	*out = img;
	return 0;
}

/* A VMDK's parent (parentFileNameHint) must be a VMDK image (docs/images.md):
 * a name in a descriptor must not turn any file into a guest's disk. Closes
 * file on failure. */
static int check_vmdk_parent(struct image *img, struct bfile *file)
{
	int score;

	if (image_format_probe(file, &score) == &vmdk_format)
		return 0;
	bfile_close(file);
	return err_set(-EPERM, "%s: VMDK parent '%s' is not a VMDK image", img->filename,
		       img->backing_name);
}

static int image_open_chain(struct image *img, struct chain_seen *seen)
{
	char path[BLOCK_PATH_MAX];
	char real[PATH_MAX];
	struct bfile *file;
	int ret;

	if (seen->depth >= BLOCK_MAX_CHAIN)
		return err_set(-ELOOP, "%s: backing chain deeper than %d", img->filename,
			       BLOCK_MAX_CHAIN);
	ret = bfile_resolve(img->filename, img->backing_name, path);
	if (ret)
		return ret;
	if (!realpath(path, real))
		return err_set(-errno, "%s: backing file '%s': %s", img->filename, path,
			       strerror(errno));
	for (int i = 0; i < seen->depth; i++)
		if (!strcmp(seen->paths[i], real))
			return err_set(-ELOOP, "%s: backing chain loops back to '%s'",
				       img->filename, path);
	strcpy(seen->paths[seen->depth++], real);
	ret = bfile_open_policy(path, img->file->force_share ? BFILE_FORCE_SHARE : BFILE_RDONLY,
				img->file->policy, img->file->depth + 1, &file);
	if (!ret && img->fmt == &vmdk_format)
		ret = check_vmdk_parent(img, file);
	if (ret) {
		char why[512];

		snprintf(why, sizeof(why), "%s", err_get());
		return err_set(ret, "%s: backing file: %s", img->filename, why);
	}
	return image_open_layer(file, img->backing_fmt[0] ? img->backing_fmt : NULL, 0,
				seen, &img->backing);
}

int image_open_file(struct bfile *file, const char *fmt, int flags, struct image **out)
{
	struct chain_seen *seen = calloc(1, sizeof(*seen));
	int ret;

	if (!seen) {
		bfile_close(file);
		return err_set(-ENOMEM, "out of memory");
	}
	if (file->fd >= 0 && realpath(file->path, seen->paths[0]))
		seen->depth = 1;
	ret = image_open_layer(file, fmt, flags, seen, out);
	free(seen);
	return ret;
}

/* own_dir: a copy of the policy with the top image's directory added, for
 * this chain only (`vireo img --backing-confine`). */
static int own_dir_policy(const struct block_policy *p, const char *path,
			  struct block_policy **copy, char **dir)
{
	char parent[BLOCK_PATH_MAX];
	const char **dirs;
	int ret;

	/* The directory the name is in, where relative backing names resolve
	 * (bfile_resolve): a symlinked image leading elsewhere is refused too. */
	ret = bfile_resolve(path, ".", parent);
	if (ret)
		return ret;
	ret = block_storage_dir(parent, dir);
	if (ret)
		return ret;
	*copy = calloc(1, sizeof(**copy) + (p->ndirs + 1) * sizeof(char *));
	if (!*copy) {
		free(*dir);
		*dir = NULL;
		return err_set(-ENOMEM, "out of memory");
	}
	**copy = *p;
	(*copy)->own_dir = false;
	dirs = (const char **)(*copy + 1);
	memcpy(dirs, p->dirs, p->ndirs * sizeof(char *));
	dirs[p->ndirs] = *dir;
	(*copy)->dirs = dirs;
	(*copy)->ndirs = p->ndirs + 1;
	return 0;
}

/* A command that reads only the top image (img info, check) still refuses
 * a chain that leads out of the policy; one it cannot open otherwise (a
 * missing backing file, `img rebase -u`) is its own business. */
static int check_chain(const char *path, const char *fmt, const struct block_policy *p)
{
	struct image *img;
	/* No locks: only paths are read, and the image may be in use. */
	int ret = image_open_policy(path, fmt, IMAGE_FORCE_SHARE, p, &img);

	if (!ret)
		image_close(img);
	return ret == -EPERM ? ret : 0;
}

int image_open_policy(const char *path, const char *fmt, int flags,
		      const struct block_policy *p, struct image **out)
{
	struct block_policy *copy = NULL;
	char *dir = NULL;
	struct bfile *file;
	int ret;

	if (fmt && !strcmp(fmt, "raw"))
		flags |= IMAGE_ALLOW_PROBE_RAW_RW;
	p = p ? p : default_policy;
	if (p && p->own_dir && (ret = own_dir_policy(p, path, &copy, &dir)))
		return ret;
	if (copy && (flags & IMAGE_NO_BACKING) && (ret = check_chain(path, fmt, copy))) {
		free(copy);
		free(dir);
		return ret;
	}
	ret = bfile_open_policy(path, ((flags & IMAGE_RDWR) ? BFILE_RDWR : BFILE_RDONLY) |
				((flags & IMAGE_DIRECT) ? BFILE_DIRECT : 0) |
				((flags & IMAGE_DSYNC) ? BFILE_DSYNC : 0) |
				((flags & IMAGE_NO_FLUSH) ? BFILE_NO_FLUSH : 0) |
				((flags & IMAGE_FORCE_SHARE) ? BFILE_FORCE_SHARE : 0), copy ? copy : p, 0,
				&file);
	if (!ret)
		ret = image_open_file(file, fmt, flags, out);
	if (!ret) {
		(*out)->own_policy = copy;
		(*out)->own_dir = dir;
		return 0;
	}
	free(copy);
	free(dir);
	return ret;
}

int image_open(const char *path, const char *fmt, int flags, struct image **out)
{
	return image_open_policy(path, fmt, flags, NULL, out);
}

void image_close(struct image *img)
{
	if (!img)
		return;
	if (img->writable && image_flush(img))
		log_warn("%s: flush on close: %s", img->filename, err_get());
	img->fmt->close(img);
	image_close(img->backing);
	image_free(img);
}

int image_set_locked(struct image *img, bool locked)
{
	for (; img; img = img->backing) {
		int ret = bfile_set_locked(img->file, locked);

		if (ret)
			return ret;
	}
	return 0;
}

int image_create(const char *path, const char *fmtname, const struct image_create_opts *opts)
{
	const struct image_format *fmt = image_format_find(fmtname);
	struct bfile *file;
	int ret;

	if (!fmt)
		return err_set(-EINVAL, "unknown image format '%s'", fmtname);
	if (!fmt->create)
		return err_set(-ENOTSUP, "format '%s' does not support creating images", fmtname);
	if (opts->backing) {
		char bpath[BLOCK_PATH_MAX];
		struct image *b;

		ret = bfile_resolve(path, opts->backing, bpath);
		if (!ret)
			/* Only its size is read: it may be in use (as qemu-img). */
			ret = image_open(bpath, opts->backing_fmt, IMAGE_FORCE_SHARE, &b);
		if (ret) {
			char why[512];

			snprintf(why, sizeof(why), "%s", err_get());
			return err_set(ret, "%s: could not open backing file: %s", path, why);
		}
		image_close(b);
	}
	ret = bfile_open(path, BFILE_RDWR | BFILE_CREATE, &file);
	if (ret)
		return ret;
	ret = fmt->create(file, path, opts);
	if (!ret)
		ret = bfile_flush(file);
	bfile_close(file);
	if (ret)
		unlink(path);	/* no half-made image left behind */
	return ret;
}

static int check_range(struct image *img, uint64_t off, uint64_t len)
{
	if (off > img->size || len > img->size - off)
		return err_set(-EINVAL, "%s: access at %llu+%llu past the end (%llu)",
			       img->filename, (unsigned long long)off,
			       (unsigned long long)len, (unsigned long long)img->size);
	return 0;
}

static int check_write(struct image *img, uint64_t off, uint64_t len)
{
	if (!img->writable)
		return err_set(-EROFS, "%s: image is read-only", img->filename);
	if (img->broken)
		return err_set(-EIO, "%s: image marked corrupt; not writing", img->filename);
	return check_range(img, off, len);
}

/* A format that is safe for concurrent callers locks itself. */
static int fmt_read(struct image *img, uint64_t off, void *buf, size_t len)
{
	int ret;

	if (img->fmt->concurrent)
		return img->fmt->read(img, off, buf, len);
	pthread_mutex_lock(&img->lock);
	ret = img->fmt->read(img, off, buf, len);
	pthread_mutex_unlock(&img->lock);
	return ret;
}

int image_read(struct image *img, uint64_t off, void *buf, size_t len)
{
	int ret = check_range(img, off, len);

	if (ret || !len)
		return ret;
	return fmt_read(img, off, buf, len);
}

int image_write(struct image *img, uint64_t off, const void *buf, size_t len)
{
	int ret = check_write(img, off, len);

	if (ret || !len)
		return ret;
	if (!img->fmt->write)
		return err_set(-EROFS, "%s: format %s is read-only", img->filename, img->fmt->name);
	if (img->fmt->concurrent)
		return img->fmt->write(img, off, buf, len);
	pthread_mutex_lock(&img->lock);
	ret = img->fmt->write(img, off, buf, len);
	pthread_mutex_unlock(&img->lock);
	return ret;
}

int image_write_compressed(struct image *img, uint64_t off, const void *buf, size_t len)
{
	int ret = check_write(img, off, len);

	if (ret || !len)
		return ret;
	if (!img->fmt->write_compressed)
		return err_set(-ENOTSUP, "%s: format %s does not support compression",
			       img->filename, img->fmt->name);
	return img->fmt->write_compressed(img, off, buf, len);	/* locks itself */
}

int image_snapshot_load(struct image *img, const char *name)
{
	int ret;

	if (img->writable)
		return err_set(-EROFS, "%s: a snapshot is loaded read-only", img->filename);
	if (!img->fmt->snapshot_load)
		return err_set(-ENOTSUP, "%s: format %s has no internal snapshots", img->filename,
			       img->fmt->name);
	pthread_mutex_lock(&img->lock);
	ret = img->fmt->snapshot_load(img, name);
	pthread_mutex_unlock(&img->lock);
	return ret;
}

static int write_zeroes_default(struct image *img, uint64_t off, uint64_t len)
{
	enum { CHUNK = 1 << 20 };
	void *zero = calloc(1, CHUNK);
	int ret = 0;

	if (!zero)
		return err_set(-ENOMEM, "out of memory");
	while (len && !ret) {
		size_t n = len < CHUNK ? (size_t)len : CHUNK;

		ret = img->fmt->write(img, off, zero, n);
		off += n;
		len -= n;
	}
	free(zero);
	return ret;
}

int image_write_zeroes(struct image *img, uint64_t off, uint64_t len)
{
	int ret = check_write(img, off, len);

	if (ret || !len)
		return ret;
	if (!img->fmt->write)
		return err_set(-EROFS, "%s: format %s is read-only", img->filename, img->fmt->name);
	pthread_mutex_lock(&img->lock);
	if (img->fmt->write_zeroes)
		ret = img->fmt->write_zeroes(img, off, len);
	else
		ret = write_zeroes_default(img, off, len);
	pthread_mutex_unlock(&img->lock);
	return ret;
}

int image_discard(struct image *img, uint64_t off, uint64_t len)
{
	int ret = check_write(img, off, len);

	if (ret || !len || !img->fmt->discard)
		return ret;
	pthread_mutex_lock(&img->lock);
	ret = img->fmt->discard(img, off, len);
	pthread_mutex_unlock(&img->lock);
	return ret;
}

int image_flush(struct image *img)
{
	int ret;

	if (!img->writable)
		return 0;
	pthread_mutex_lock(&img->lock);
	ret = img->fmt->flush ? img->fmt->flush(img) : bfile_flush(img->file);
	pthread_mutex_unlock(&img->lock);
	return ret;
}

int image_block_status(struct image *img, uint64_t off, uint64_t len,
		       uint64_t *pnum, uint64_t *host_off)
{
	int ret = check_range(img, off, len);

	if (ret)
		return ret;
	*host_off = 0;
	if (!img->fmt->block_status) {
		*pnum = len;
		return BLOCK_DATA | BLOCK_ALLOCATED;
	}
	pthread_mutex_lock(&img->lock);
	ret = img->fmt->block_status(img, off, len, pnum, host_off);
	pthread_mutex_unlock(&img->lock);
	if (ret >= 0 && (*pnum == 0 || *pnum > len))
		*pnum = len;	/* a format bug must not loop callers forever */
	return ret;
}

int image_resize(struct image *img, uint64_t new_size)
{
	int ret;

	if (!img->writable)
		return err_set(-EROFS, "%s: image is read-only", img->filename);
	if (!img->fmt->resize)
		return err_set(-ENOTSUP, "%s: format %s cannot be resized", img->filename,
			       img->fmt->name);
	pthread_mutex_lock(&img->lock);
	ret = img->fmt->resize(img, new_size);
	pthread_mutex_unlock(&img->lock);
	return ret;
}

int image_check(struct image *img, struct image_check *res, int fix)
{
	int ret;

	memset(res, 0, sizeof(*res));
	if (!img->fmt->check)
		return err_set(-ENOTSUP, "%s: format %s does not support checks", img->filename,
			       img->fmt->name);
	if (fix && !img->writable)
		return err_set(-EROFS, "%s: image is read-only", img->filename);
	pthread_mutex_lock(&img->lock);
	ret = img->fmt->check(img, res, fix);
	pthread_mutex_unlock(&img->lock);
	return ret;
}

void image_check_free(struct image_check *res)
{
	for (size_t i = 0; i < res->nr_messages; i++)
		free(res->messages[i]);
	free(res->messages);
	res->messages = NULL;
	res->nr_messages = 0;
}

void image_check_msg(struct image_check *res, const char *fmt, ...)
{
	char **m;
	char *s;
	va_list ap;

	if (res->nr_messages >= 10000)	/* enough to tell; don't eat memory */
		return;
	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		s = NULL;
	va_end(ap);
	m = s ? realloc(res->messages, (res->nr_messages + 1) * sizeof(*m)) : NULL;
	if (!m) {
		free(s);
		return;
	}
	m[res->nr_messages++] = s;
	res->messages = m;
}

void image_get_info(struct image *img, struct image_info *info)
{
	memset(info, 0, sizeof(*info));
	if (img->fmt->info) {
		pthread_mutex_lock(&img->lock);
		img->fmt->info(img, info);
		pthread_mutex_unlock(&img->lock);
	}
}

static struct image_info_item *info_item(struct image_info *info, const char *key,
					 enum image_info_type type)
{
	struct image_info_item *it;

	if (info->nr_items >= IMAGE_INFO_MAX)
		return NULL;
	it = &info->items[info->nr_items++];
	snprintf(it->key, sizeof(it->key), "%s", key);
	it->type = type;
	return it;
}

void image_info_add_str(struct image_info *info, const char *key, const char *val)
{
	struct image_info_item *it = info_item(info, key, INFO_STR);

	if (it)
		snprintf(it->str, sizeof(it->str), "%s", val);
}

void image_info_add_int(struct image_info *info, const char *key, int64_t val)
{
	struct image_info_item *it = info_item(info, key, INFO_INT);

	if (it)
		it->num = val;
}

void image_info_add_bool(struct image_info *info, const char *key, bool val)
{
	struct image_info_item *it = info_item(info, key, INFO_BOOL);

	if (it)
		it->num = val;
}

int image_vcorrupt(struct image *img, const char *path, const char *format, const char *fmt,
		   va_list ap)
{
	char msg[384];

	vsnprintf(msg, sizeof(msg), fmt, ap);
	img->broken = true;
	log_ratelimited("%s: %s image is corrupt: %s", path, format, msg);
	return err_set(-EIO, "%s: %s image is corrupt: %s", path, format, msg);
}

int image_read_backing(struct image *img, uint64_t off, void *buf, size_t len)
{
	struct image *b = img->backing;
	size_t n = 0;
	int ret;

	if (b && off < b->size) {
		n = b->size - off < len ? (size_t)(b->size - off) : len;
		ret = fmt_read(b, off, buf, n);
		if (ret)
			return ret;
	}
	memset((uint8_t *)buf + n, 0, len - n);
	return 0;
}
