/* The block device: one image chain as virtio-blk sees it, with counters. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vireo/block.h"
#include "vireo/log.h"

#define BLOCKDEV_MAX_WORKERS 16
#define RAW_MAX_IOV 256		/* longer vectors take the image path */

struct blockdev {
	struct image *img;
	bool readonly;
	pthread_mutex_t stats_lock;
	struct blockdev_stats stats;
	/* asynchronous requests: a FIFO served by worker threads */
	pthread_mutex_t q_lock;
	pthread_cond_t q_cond;
	struct blockdev_req *head, *tail;
	bool stopping;
	int nr_workers;
	pthread_t workers[BLOCKDEV_MAX_WORKERS];
	/* dirty tracking (block.h): marking on, and the grains written */
	bool tracking;
	uint64_t *dirty;
};

static const char *const cache_names[] = {
	[BLOCK_CACHE_WRITEBACK] = "writeback", [BLOCK_CACHE_NONE] = "none",
	[BLOCK_CACHE_WRITETHROUGH] = "writethrough", [BLOCK_CACHE_DIRECTSYNC] = "directsync",
	[BLOCK_CACHE_UNSAFE] = "unsafe",
};

int block_cache_parse(const char *name)
{
	for (unsigned int i = 0; i < sizeof(cache_names) / sizeof(cache_names[0]); i++)
		if (!strcmp(name, cache_names[i]))
			return (int)i;
	return -EINVAL;
}

const char *block_cache_name(enum block_cache mode)
{
	return (unsigned int)mode < sizeof(cache_names) / sizeof(cache_names[0]) ?
	       cache_names[mode] : "?";
}

int block_cache_image_flags(enum block_cache mode)
{
	switch (mode) {
	case BLOCK_CACHE_NONE:
		return IMAGE_DIRECT;
	case BLOCK_CACHE_WRITETHROUGH:
		return IMAGE_DSYNC;
	case BLOCK_CACHE_DIRECTSYNC:
		return IMAGE_DIRECT | IMAGE_DSYNC;
	case BLOCK_CACHE_UNSAFE:
		return IMAGE_NO_FLUSH;
	default:
		return 0;
	}
}

bool block_cache_volatile(enum block_cache mode)
{
	return mode != BLOCK_CACHE_WRITETHROUGH && mode != BLOCK_CACHE_DIRECTSYNC;
}

static const char *const aio_names[] = {
	[BLOCK_AIO_IO_URING] = "io_uring", [BLOCK_AIO_THREADS] = "threads",
};

int block_aio_parse(const char *name)
{
	for (unsigned int i = 0; i < sizeof(aio_names) / sizeof(aio_names[0]); i++)
		if (!strcmp(name, aio_names[i]))
			return (int)i;
	return -EINVAL;
}

const char *block_aio_name(enum block_aio mode)
{
	return (unsigned int)mode < sizeof(aio_names) / sizeof(aio_names[0]) ?
	       aio_names[mode] : "?";
}

int blockdev_open(const struct blockdev_opts *opts, struct blockdev **out)
{
	struct blockdev *bd = calloc(1, sizeof(*bd));
	int ret;

	if (!bd)
		return err_set(-ENOMEM, "out of memory");
	ret = image_open_policy(opts->path, opts->format, (opts->readonly ? 0 : IMAGE_RDWR) |
				block_cache_image_flags(opts->cache), opts->policy, &bd->img);
	if (ret) {
		free(bd);
		return ret;
	}
	bd->readonly = opts->readonly;
	pthread_mutex_init(&bd->stats_lock, NULL);
	pthread_mutex_init(&bd->q_lock, NULL);
	pthread_cond_init(&bd->q_cond, NULL);
	*out = bd;
	return 0;
}

static void stop_workers(struct blockdev *bd)
{
	pthread_mutex_lock(&bd->q_lock);
	bd->stopping = true;
	pthread_cond_broadcast(&bd->q_cond);
	pthread_mutex_unlock(&bd->q_lock);
	for (int i = 0; i < bd->nr_workers; i++)
		pthread_join(bd->workers[i], NULL);
	bd->nr_workers = 0;
}

void blockdev_close(struct blockdev *bd)
{
	if (!bd)
		return;
	stop_workers(bd);
	pthread_cond_destroy(&bd->q_cond);
	pthread_mutex_destroy(&bd->q_lock);
	image_close(bd->img);
	pthread_mutex_destroy(&bd->stats_lock);
	free(bd->dirty);
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

struct bfile *blockdev_raw_file(struct blockdev *bd)
{
	return bd->img->fmt == &raw_format && bd->img->file->fd >= 0 ? bd->img->file : NULL;
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

void blockdev_account(struct blockdev *bd, enum blockdev_op op, uint64_t bytes, int ret)
{
	switch (op) {
	case BLOCKDEV_READ:
		account(bd, &bd->stats.rd_ops, &bd->stats.rd_bytes, bytes, ret);
		break;
	case BLOCKDEV_WRITE:
		account(bd, &bd->stats.wr_ops, &bd->stats.wr_bytes, bytes, ret);
		break;
	case BLOCKDEV_FLUSH:
		account(bd, &bd->stats.flush_ops, NULL, 0, ret);
		break;
	default:
		break;
	}
}

/* A raw image's file serves reads and writes straight, with preadv and
 * pwritev and without the image lock, so that several workers move data
 * at once (the lock is for formats whose metadata needs it). Only when
 * O_DIRECT's alignment holds for every segment: the unaligned path does
 * read-modify-write through a bounce buffer, which stays under the lock. */
static bool raw_straight(struct blockdev *bd, uint64_t off, const struct iovec *iov,
			 int iovcnt)
{
	struct bfile *f = blockdev_raw_file(bd);
	uint64_t a, bits = off;

	if (!f || iovcnt > RAW_MAX_IOV || off > bd->img->size ||
	    iov_total(iov, iovcnt) > bd->img->size - off)
		return false;
	a = f->direct_align;
	for (int i = 0; i < iovcnt && a; i++)
		bits |= (uintptr_t)iov[i].iov_base | iov[i].iov_len;
	return !a || !(bits & (a - 1));
}

/* Exact-length preadv/pwritev; reads past the end of the file give zeroes. */
static int raw_rw(int fd, uint64_t off, const struct iovec *iov, int iovcnt, bool wr)
{
	struct iovec v[RAW_MAX_IOV];
	int i = 0;

	memcpy(v, iov, sizeof(v[0]) * (size_t)iovcnt);
	while (i < iovcnt) {
		ssize_t n = wr ? pwritev(fd, v + i, iovcnt - i, (off_t)off)
			       : preadv(fd, v + i, iovcnt - i, (off_t)off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 || (n == 0 && wr))
			return n < 0 ? -errno : -EIO;
		if (n == 0) {	/* end of file */
			for (; i < iovcnt; i++)
				memset(v[i].iov_base, 0, v[i].iov_len);
			break;
		}
		off += (uint64_t)n;
		for (; i < iovcnt && (size_t)n >= v[i].iov_len; i++)
			n -= (ssize_t)v[i].iov_len;
		if (i < iovcnt) {
			v[i].iov_base = (uint8_t *)v[i].iov_base + n;
			v[i].iov_len -= (size_t)n;
		}
	}
	return 0;
}

int blockdev_readv(struct blockdev *bd, uint64_t off, const struct iovec *iov, int iovcnt)
{
	size_t total = iov_total(iov, iovcnt);
	int ret = 0;

	if (raw_straight(bd, off, iov, iovcnt)) {
		ret = raw_rw(bd->img->file->fd, off, iov, iovcnt, false);
		if (ret)
			err_set(ret, "%s: read: %s", bd->img->filename, strerror(-ret));
		iovcnt = 0;
	}
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
	uint64_t off0 = off;
	int ret = 0;

	if (bd->readonly)
		ret = err_set(-EROFS, "%s: device is read-only", bd->img->filename);
	else if (raw_straight(bd, off, iov, iovcnt) && bd->img->writable) {
		ret = raw_rw(bd->img->file->fd, off, iov, iovcnt, true);
		if (ret)
			err_set(ret, "%s: write: %s", bd->img->filename, strerror(-ret));
		iovcnt = 0;
	}
	for (int i = 0; i < iovcnt && !ret; i++) {
		ret = image_write(bd->img, off, iov[i].iov_base, iov[i].iov_len);
		off += iov[i].iov_len;
	}
	blockdev_dirty_mark(bd, off0, total);
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

	blockdev_dirty_mark(bd, off, len);
	account(bd, &bd->stats.discard_ops, NULL, 0, ret);
	return ret;
}

int blockdev_write_zeroes(struct blockdev *bd, uint64_t off, uint64_t len)
{
	int ret = bd->readonly ? err_set(-EROFS, "%s: device is read-only", bd->img->filename)
			       : image_write_zeroes(bd->img, off, len);

	blockdev_dirty_mark(bd, off, len);
	account(bd, &bd->stats.wr_ops, NULL, 0, ret);
	return ret;
}

/* ---- dirty tracking (block.h) ---- */

uint64_t blockdev_dirty_words(const struct blockdev *bd)
{
	return (bd->img->size + (uint64_t)BLOCKDEV_DIRTY_GRAIN * 64 - 1) /
	       ((uint64_t)BLOCKDEV_DIRTY_GRAIN * 64);
}

int blockdev_dirty_start(struct blockdev *bd)
{
	uint64_t words = blockdev_dirty_words(bd);

	if (__atomic_load_n(&bd->tracking, __ATOMIC_SEQ_CST))
		return 0;
	if (!bd->dirty && !(bd->dirty = calloc(words ? words : 1, sizeof(*bd->dirty))))
		return err_set(-ENOMEM, "out of memory");
	memset(bd->dirty, 0, words * sizeof(*bd->dirty));
	__atomic_store_n(&bd->tracking, true, __ATOMIC_SEQ_CST);
	return 0;
}

void blockdev_dirty_stop(struct blockdev *bd)
{
	__atomic_store_n(&bd->tracking, false, __ATOMIC_SEQ_CST);
}

/* Whatever the result of the write: a failed one may have written part. */
void blockdev_dirty_mark(struct blockdev *bd, uint64_t off, uint64_t len)
{
	uint64_t end;

	if (!__atomic_load_n(&bd->tracking, __ATOMIC_ACQUIRE) || !len || off >= bd->img->size)
		return;
	end = len > bd->img->size - off ? bd->img->size : off + len;
	for (uint64_t g = off / BLOCKDEV_DIRTY_GRAIN; g <= (end - 1) / BLOCKDEV_DIRTY_GRAIN; g++)
		__atomic_fetch_or(&bd->dirty[g / 64], 1ull << (g % 64), __ATOMIC_SEQ_CST);
}

void blockdev_dirty_collect(struct blockdev *bd, uint64_t *bits)
{
	uint64_t n = blockdev_dirty_words(bd);

	if (!bd->dirty)
		return;
	for (uint64_t w = 0; w < n; w++)
		if (__atomic_load_n(&bd->dirty[w], __ATOMIC_RELAXED))
			bits[w] |= __atomic_exchange_n(&bd->dirty[w], 0, __ATOMIC_ACQ_REL);
}

void blockdev_get_stats(struct blockdev *bd, struct blockdev_stats *out)
{
	pthread_mutex_lock(&bd->stats_lock);
	*out = bd->stats;
	pthread_mutex_unlock(&bd->stats_lock);
}

static int run_request(struct blockdev *bd, struct blockdev_req *req)
{
	switch (req->op) {
	case BLOCKDEV_READ:
		return blockdev_readv(bd, req->off, req->iov, req->iovcnt);
	case BLOCKDEV_WRITE:
		return blockdev_writev(bd, req->off, req->iov, req->iovcnt);
	case BLOCKDEV_FLUSH:
		return blockdev_flush(bd);
	case BLOCKDEV_DISCARD:
		return blockdev_discard(bd, req->off, req->len);
	case BLOCKDEV_WRITE_ZEROES:
		return blockdev_write_zeroes(bd, req->off, req->len);
	case BLOCKDEV_CALL:
		return req->call(req);
	}
	return err_set(-EINVAL, "%s: unknown request %d", bd->img->filename, (int)req->op);
}

/* Serves the queue until it is empty and the device is closing. */
static void *worker(void *arg)
{
	struct blockdev *bd = arg;

	for (;;) {
		struct blockdev_req *req;

		pthread_mutex_lock(&bd->q_lock);
		while (!bd->head && !bd->stopping)
			pthread_cond_wait(&bd->q_cond, &bd->q_lock);
		req = bd->head;
		if (req) {
			bd->head = req->next;
			if (!bd->head)
				bd->tail = NULL;
		}
		pthread_mutex_unlock(&bd->q_lock);
		if (!req)
			return NULL;
		req->done(req, run_request(bd, req));
	}
}

int blockdev_start_workers(struct blockdev *bd, int nr)
{
	if (nr < 0 || nr > BLOCKDEV_MAX_WORKERS || bd->nr_workers)
		return err_set(-EINVAL, "%s: between 0 and %d I/O workers, once",
			       bd->img->filename, BLOCKDEV_MAX_WORKERS);
	for (int i = 0; i < nr; i++) {
		int ret = pthread_create(&bd->workers[i], NULL, worker, bd);

		if (ret) {
			stop_workers(bd);
			return err_set(-ret, "%s: starting I/O workers: %s", bd->img->filename,
				       strerror(ret));
		}
		bd->nr_workers = i + 1;
	}
	return 0;
}

void blockdev_submit(struct blockdev *bd, struct blockdev_req *req)
{
	if (!bd->nr_workers) {
		req->done(req, run_request(bd, req));
		return;
	}
	req->next = NULL;
	pthread_mutex_lock(&bd->q_lock);
	if (bd->tail)
		bd->tail->next = req;
	else
		bd->head = req;
	bd->tail = req;
	pthread_cond_signal(&bd->q_cond);
	pthread_mutex_unlock(&bd->q_lock);
}
