/* The block device: one image chain as virtio-blk sees it, with counters. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vireo/block.h"
#include "vireo/log.h"

struct blockdev {
	struct image *img;
	bool readonly;
	pthread_mutex_t stats_lock;
	struct blockdev_stats stats;
};

int blockdev_open(const struct blockdev_opts *opts, struct blockdev **out)
{
	struct blockdev *bd = calloc(1, sizeof(*bd));
	int ret;

	if (!bd)
		return err_set(-ENOMEM, "out of memory");
	ret = image_open(opts->path, opts->format, opts->readonly ? 0 : IMAGE_RDWR, &bd->img);
	if (ret) {
		free(bd);
		return ret;
	}
	bd->readonly = opts->readonly;
	pthread_mutex_init(&bd->stats_lock, NULL);
	*out = bd;
	return 0;
}

void blockdev_close(struct blockdev *bd)
{
	if (!bd)
		return;
	image_close(bd->img);
	pthread_mutex_destroy(&bd->stats_lock);
	free(bd);
}

uint64_t blockdev_size(const struct blockdev *bd)
{
	return bd->img->size;
}

bool blockdev_readonly(const struct blockdev *bd)
{
	return bd->readonly;
}

struct image *blockdev_image(struct blockdev *bd)
{
	return bd->img;
}

static void account(struct blockdev *bd, uint64_t *ops, uint64_t *bytes, uint64_t n, int ret)
{
	pthread_mutex_lock(&bd->stats_lock);
	(*ops)++;
	if (bytes)
		*bytes += n;
	if (ret)
		bd->stats.errors++;
	pthread_mutex_unlock(&bd->stats_lock);
}

static size_t iov_total(const struct iovec *iov, int iovcnt)
{
	size_t n = 0;

	for (int i = 0; i < iovcnt; i++)
		n += iov[i].iov_len;
	return n;
}

int blockdev_readv(struct blockdev *bd, uint64_t off, const struct iovec *iov, int iovcnt)
{
	size_t total = iov_total(iov, iovcnt);
	int ret = 0;

	for (int i = 0; i < iovcnt && !ret; i++) {
		ret = image_read(bd->img, off, iov[i].iov_base, iov[i].iov_len);
		off += iov[i].iov_len;
	}
	account(bd, &bd->stats.rd_ops, &bd->stats.rd_bytes, total, ret);
	return ret;
}

int blockdev_writev(struct blockdev *bd, uint64_t off, const struct iovec *iov, int iovcnt)
{
	size_t total = iov_total(iov, iovcnt);
	int ret = 0;

	if (bd->readonly)
		ret = err_set(-EROFS, "%s: device is read-only", bd->img->filename);
	for (int i = 0; i < iovcnt && !ret; i++) {
		ret = image_write(bd->img, off, iov[i].iov_base, iov[i].iov_len);
		off += iov[i].iov_len;
	}
	account(bd, &bd->stats.wr_ops, &bd->stats.wr_bytes, total, ret);
	return ret;
}

int blockdev_flush(struct blockdev *bd)
{
	int ret = bd->readonly ? 0 : image_flush(bd->img);

	account(bd, &bd->stats.flush_ops, NULL, 0, ret);
	return ret;
}

int blockdev_discard(struct blockdev *bd, uint64_t off, uint64_t len)
{
	int ret = bd->readonly ? err_set(-EROFS, "%s: device is read-only", bd->img->filename)
			       : image_discard(bd->img, off, len);

	account(bd, &bd->stats.discard_ops, NULL, 0, ret);
	return ret;
}

int blockdev_write_zeroes(struct blockdev *bd, uint64_t off, uint64_t len)
{
	int ret = bd->readonly ? err_set(-EROFS, "%s: device is read-only", bd->img->filename)
			       : image_write_zeroes(bd->img, off, len);

	account(bd, &bd->stats.wr_ops, NULL, 0, ret);
	return ret;
}

void blockdev_get_stats(struct blockdev *bd, struct blockdev_stats *out)
{
	pthread_mutex_lock(&bd->stats_lock);
	*out = bd->stats;
	pthread_mutex_unlock(&bd->stats_lock);
}
