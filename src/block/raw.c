/* raw: the guest's bytes at the same offsets in a (sparse) file. Never
 * probed (DESIGN §3.4): the registry falls back to it, read-only. */
#include <errno.h>
#include <unistd.h>

#include "vireo/block.h"
#include "vireo/log.h"

static int raw_open(struct image *img)
{
	int64_t len = bfile_length(img->file);

	if (len < 0)
		return (int)len;
	img->size = (uint64_t)len;
	return 0;
}

static void raw_close(struct image *img)
{
	(void)img;
}

static int raw_read(struct image *img, uint64_t off, void *buf, size_t len)
{
	return bfile_pread(img->file, buf, len, off);
}

static int raw_write(struct image *img, uint64_t off, const void *buf, size_t len)
{
	return bfile_pwrite(img->file, buf, len, off);
}

static int raw_discard(struct image *img, uint64_t off, uint64_t len)
{
	int ret = bfile_punch(img->file, off, len);

	return ret == -EOPNOTSUPP ? 0 : ret;
}

static int raw_write_zeroes(struct image *img, uint64_t off, uint64_t len)
{
	if (bfile_punch(img->file, off, len) == 0)
		return 0;
	return bfile_pwrite_zeroes(img->file, off, len);
}

/* Holes read as zeroes: SEEK_DATA/SEEK_HOLE where the file is a host file. */
static int raw_block_status(struct image *img, uint64_t off, uint64_t len,
			    uint64_t *pnum, uint64_t *host_off)
{
	int fd = img->file->fd;
	off_t data, hole;

	*host_off = off;
	*pnum = len;
	if (fd < 0)
		return BLOCK_DATA | BLOCK_ALLOCATED | BLOCK_OFFSET;
	data = lseek(fd, (off_t)off, SEEK_DATA);
	if (data < 0 || (uint64_t)data > off) {
		uint64_t end = data < 0 ? off + len : (uint64_t)data;

		*pnum = (end < off + len ? end : off + len) - off;
		return BLOCK_ZERO | BLOCK_ALLOCATED | BLOCK_OFFSET;
	}
	hole = lseek(fd, (off_t)off, SEEK_HOLE);
	if (hole > (off_t)off && (uint64_t)hole < off + len)
		*pnum = (uint64_t)hole - off;
	return BLOCK_DATA | BLOCK_ALLOCATED | BLOCK_OFFSET;
}

static int raw_create(struct bfile *file, const char *path, const struct image_create_opts *opts)
{
	(void)path;
	if (opts->backing)
		return err_set(-EINVAL, "%s: raw images have no backing file", file->path);
	if (opts->cluster_size || opts->compat || opts->subformat || opts->compression_type ||
	    opts->refcount_bits || (opts->extra && opts->extra[0]))
		return err_set(-EINVAL, "%s: raw images take no creation options", file->path);
	return bfile_truncate(file, opts->size);
}

static int raw_resize(struct image *img, uint64_t new_size)
{
	int ret = bfile_truncate(img->file, new_size);

	if (!ret)
		img->size = new_size;
	return ret;
}

const struct image_format raw_format = {
	.name = "raw",
	.open = raw_open,
	.close = raw_close,
	.read = raw_read,
	.write = raw_write,
	.discard = raw_discard,
	.write_zeroes = raw_write_zeroes,
	.block_status = raw_block_status,
	.create = raw_create,
	.resize = raw_resize,
};
