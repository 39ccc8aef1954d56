/* Live migration with copied storage, the source's side (protocol in
 * include/vireo/migrate.h): each disk's data goes while the VM runs, the
 * grains the guest writes meanwhile are tracked by the block layer
 * (blockdev_dirty_*) and sent again in the memory rounds, and the last ones
 * while the VM is paused. The disks are only read here: a migration that
 * fails leaves them as the guest wrote them. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "migrate-wire.h"
#include "vireo/block.h"
#include "vireo/log.h"
#include "vireo/state.h"
#include "vireo/virtio.h"

int mig_disks_init(struct mig_disks *d, const struct snapshot_target *t, mig_send_fn *send,
		   void *ctx)
{
	memset(d, 0, sizeof(*d));
	d->send = send;
	d->ctx = ctx;
	for (unsigned int i = 0; i < t->nvirtio; i++) {
		struct blockdev *bd = virtio_dev_blockdev(t->virtio[i]);

		if (!bd)
			continue;
		if (d->n == MIGRATE_MAX_DISKS)
			return err_set(-ENOTSUP, "more than %d disks to copy", MIGRATE_MAX_DISKS);
		d->bd[d->n] = bd;
		d->bits[d->n] = calloc(blockdev_dirty_words(bd) + 1, sizeof(uint64_t));
		if (!d->bits[d->n++])
			return err_set(-ENOMEM, "out of memory");
	}
	if (!d->n)
		return err_set(-EINVAL, "copy_storage: the VM has no disk");
	d->buf = malloc(MIG_DISK_ZERO_HDR + MIG_DISK_CHUNK);
	return d->buf ? 0 : err_set(-ENOMEM, "out of memory");
}

void mig_disks_free(struct mig_disks *d)
{
	for (unsigned int i = 0; i < d->n; i++) {
		if (d->tracking)
			blockdev_dirty_stop(d->bd[i]);
		free(d->bits[i]);
	}
	free(d->buf);
	memset(d, 0, sizeof(*d));
}

static bool all_zero(const uint8_t *p, size_t len)
{
	return !len || (!p[0] && !memcmp(p, p + 1, len - 1));
}

/* One range of disk i, at most MIG_DISK_CHUNK: a data record, or a zero
 * record when it reads as zeroes (none at all if skip_zero). */
static int send_range(struct mig_disks *d, unsigned int i, uint64_t off, uint32_t len,
		      bool skip_zero)
{
	uint8_t *data = d->buf + MIG_DISK_DATA_HDR;
	int ret = image_read(blockdev_image(d->bd[i]), off, data, len);

	if (ret)
		return err_set(ret, "copying a disk: %s", err_get());
	if (all_zero(data, len)) {
		uint8_t hdr[MIG_DISK_ZERO_HDR];

		if (skip_zero)
			return 0;
		mig_put32(hdr, MIG_REC_DISK_ZERO);
		mig_put32(hdr + 4, i);
		mig_put64(hdr + 8, off);
		mig_put64(hdr + 16, len);
		return d->send(d->ctx, hdr, sizeof(hdr));
	}
	mig_put32(d->buf, MIG_REC_DISK_DATA);
	mig_put32(d->buf + 4, i);
	mig_put64(d->buf + 8, off);
	mig_put32(d->buf + 16, len);
	return d->send(d->ctx, d->buf, MIG_DISK_DATA_HDR + (size_t)len);
}

/* A range that reads as zeroes in this layer, with nothing below. */
static bool skipped(const struct image *img, int st)
{
	return (st & BLOCK_ZERO) || (!(st & BLOCK_DATA) && !img->backing);
}

/* Skipped ranges are not even read; the rest is read and its zero chunks
 * skipped too. With count, only adds the bytes to read to d->left. */
static int copy_disk(struct mig_disks *d, unsigned int i, bool count)
{
	struct image *img = blockdev_image(d->bd[i]);
	uint64_t size = blockdev_size(d->bd[i]), off = 0;

	while (off < size) {
		uint64_t pnum = 0, host, end;
		int st = image_block_status(img, off, size - off, &pnum, &host);

		if (st < 0)
			return err_set(st, "copying a disk: %s", err_get());
		end = off + pnum;
		if (skipped(img, st) || count) {
			d->left += count && !skipped(img, st) ? pnum : 0;
			off = end;
			continue;
		}
		while (off < end) {
			uint32_t n = end - off < MIG_DISK_CHUNK ? (uint32_t)(end - off) : MIG_DISK_CHUNK;
			int ret;

			d->left -= n < d->left ? n : d->left;
			ret = send_range(d, i, off, n, true);
			if (ret)
				return ret;
			off += n;
		}
	}
	return 0;
}

int mig_disks_copy(struct mig_disks *d)
{
	uint8_t rec[8 + 8 * MIGRATE_MAX_DISKS];
	int ret;

	mig_put32(rec, MIG_REC_DISKS);
	mig_put32(rec + 4, d->n);
	for (unsigned int i = 0; i < d->n; i++)
		mig_put64(rec + 8 + 8 * i, blockdev_size(d->bd[i]));
	ret = d->send(d->ctx, rec, 8 + 8 * (size_t)d->n);
	/* Tracking before the copy: a grain written behind it is sent again. */
	for (unsigned int i = 0; i < d->n && !ret; i++)
		ret = blockdev_dirty_start(d->bd[i]);
	if (ret)
		return ret;
	d->tracking = true;
	for (unsigned int i = 0; i < d->n && !ret; i++)
		ret = copy_disk(d, i, true);
	for (unsigned int i = 0; i < d->n && !ret; i++)
		ret = copy_disk(d, i, false);
	d->left = 0;
	return ret;
}

uint64_t mig_disks_collect(struct mig_disks *d)
{
	uint64_t bytes = 0;

	for (unsigned int i = 0; i < d->n; i++) {
		uint64_t words = blockdev_dirty_words(d->bd[i]);

		blockdev_dirty_collect(d->bd[i], d->bits[i]);
		for (uint64_t w = 0; w < words; w++)
			bytes += (uint64_t)__builtin_popcountll(d->bits[i][w]) * BLOCKDEV_DIRTY_GRAIN;
	}
	return bytes;
}

/* Runs of set grains, a chunk at most each, the last grain cut at the end
 * of the disk. */
static int send_dirty_disk(struct mig_disks *d, unsigned int i)
{
	uint64_t size = blockdev_size(d->bd[i]);
	uint64_t grains = (size + BLOCKDEV_DIRTY_GRAIN - 1) / BLOCKDEV_DIRTY_GRAIN;
	uint64_t *bits = d->bits[i];
	const uint64_t per_chunk = MIG_DISK_CHUNK / BLOCKDEV_DIRTY_GRAIN;

	for (uint64_t g = 0; g < grains;) {
		uint64_t n = 0, off, end;
		int ret;

		if (!(bits[g / 64] >> (g % 64) & 1)) {
			g++;
			continue;
		}
		while (g + n < grains && n < per_chunk && (bits[(g + n) / 64] >> ((g + n) % 64) & 1))
			n++;
		off = g * BLOCKDEV_DIRTY_GRAIN;
		end = (g + n) * BLOCKDEV_DIRTY_GRAIN < size ? (g + n) * BLOCKDEV_DIRTY_GRAIN : size;
		ret = send_range(d, i, off, (uint32_t)(end - off), false);
		if (ret)
			return ret;
		for (; n; n--, g++)
			bits[g / 64] &= ~(1ull << (g % 64));
	}
	return 0;
}

int mig_disks_send_dirty(struct mig_disks *d)
{
	int ret = 0;

	for (unsigned int i = 0; i < d->n && !ret; i++)
		ret = send_dirty_disk(d, i);
	return ret;
}
