/* virtio-blk (virtio 1.x §5.2) on the block layer. Requests are served on
 * the device's I/O thread, synchronously, under the disk's rate limiter.
 * Request layout: out header { type u32, reserved u32, sector u64 }, data,
 * then one device-writable status byte at the very end of the chain.
 * Device config (little-endian): capacity u64 @0, size_max u32 @8,
 * seg_max u32 @12, geometry @16, blk_size u32 @20, topology @24,
 * writeback u8 @32, num_queues u16 @34, max_discard_sectors u32 @36,
 * max_discard_seg u32 @40, discard_sector_alignment u32 @44,
 * max_write_zeroes_sectors u32 @48, max_write_zeroes_seg u32 @52,
 * write_zeroes_may_unmap u8 @56. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vireo/block.h"
#include "vireo/log.h"
#include "vireo/ratelimit.h"
#include "vireo/virtio.h"

#define BLK_F_SEG_MAX      (1ULL << 2)
#define BLK_F_RO           (1ULL << 5)
#define BLK_F_BLK_SIZE     (1ULL << 6)
#define BLK_F_FLUSH        (1ULL << 9)
#define BLK_F_DISCARD      (1ULL << 13)
#define BLK_F_WRITE_ZEROES (1ULL << 14)

enum { T_IN = 0, T_OUT = 1, T_FLUSH = 4, T_GET_ID = 8, T_DISCARD = 11, T_WRITE_ZEROES = 13 };
enum { S_OK = 0, S_IOERR = 1, S_UNSUPP = 2 };

#define SECTOR 512ULL
#define MAX_DISCARD_SEGS 32
/* Per segment, advertised in the config: a guest splits larger ranges, so
 * one request costs at most 8 MiB of the byte bucket and the limiter paces
 * the rest (1 GiB of zeroes at 1 MiB/s takes ~1000 s, not one request's
 * worth of debt). Write-zeroes takes one segment. */
#define MAX_DISCARD_SECTORS 16384u
#define MAX_WZ_SECTORS      16384u
#define MAX_WZ_SEGS         1u

struct blk_req_header {
	uint32_t type;
	uint32_t reserved;
	uint64_t sector;
};

struct blk_discard_seg {
	uint64_t sector;
	uint32_t num_sectors;
	uint32_t flags;
};

struct virtio_blk {
	struct virtio_dev dev;
	struct blockdev *bd;
	struct ratelimit limit;
	struct virtio_device_ops ops;	/* blk_ops with this disk's features */
	char serial[21];
	struct virtq_elem elem;
	struct iovec data[VIRTQ_MAX_SEGS];
};

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }

/* The data part of a request: the segments between the header (first 16
 * readable bytes) and the status byte (last writable byte). */
static int blk_data_iov(struct virtio_blk *blk, bool to_device, size_t *len)
{
	const struct virtq_elem *e = &blk->elem;
	unsigned int first = to_device ? 0 : e->out_num;
	unsigned int count = to_device ? e->out_num : e->in_num;
	size_t skip = to_device ? sizeof(struct blk_req_header) : 0;
	size_t total = (to_device ? e->out_len - skip : e->in_len - 1);
	size_t left = total;
	int n = 0;

	for (unsigned int i = 0; i < count && left; i++) {
		struct iovec seg = e->iov[first + i];

		if (skip >= seg.iov_len) {
			skip -= seg.iov_len;
			continue;
		}
		seg.iov_base = (uint8_t *)seg.iov_base + skip;
		seg.iov_len -= skip;
		skip = 0;
		if (seg.iov_len > left)
			seg.iov_len = left;
		left -= seg.iov_len;
		blk->data[n++] = seg;
	}
	*len = total;
	return n;
}

static uint8_t blk_rw(struct virtio_blk *blk, const struct blk_req_header *h, bool write,
		      uint32_t *written)
{
	size_t len;
	int n = blk_data_iov(blk, write, &len);
	uint64_t off = h->sector * SECTOR, size = blockdev_size(blk->bd);
	int ret;

	if (len % SECTOR || h->sector > size / SECTOR || len > size - off)
		return S_IOERR;
	ret = write ? blockdev_writev(blk->bd, off, blk->data, n)
		    : blockdev_readv(blk->bd, off, blk->data, n);
	if (ret)
		return S_IOERR;
	if (!write)
		*written = (uint32_t)len;
	return S_OK;
}

/* A discard or write-zeroes request's segments, within the limits the
 * config advertises: their count, or -S_IOERR / -S_UNSUPP. */
static int blk_segs(struct virtio_blk *blk, bool zeroes, struct blk_discard_seg *segs)
{
	size_t bytes = blk->elem.out_len - sizeof(struct blk_req_header);
	unsigned int n, max_segs = zeroes ? MAX_WZ_SEGS : MAX_DISCARD_SEGS;
	uint32_t max_sectors = zeroes ? MAX_WZ_SECTORS : MAX_DISCARD_SECTORS;

	if (bytes % sizeof(segs[0]) || bytes / sizeof(segs[0]) > MAX_DISCARD_SEGS || !bytes)
		return -S_IOERR;
	n = (unsigned int)(bytes / sizeof(segs[0]));
	if (n > max_segs)
		return -S_UNSUPP;
	virtq_read_out(&blk->elem, sizeof(struct blk_req_header), segs, bytes);
	for (unsigned int i = 0; i < n; i++)
		if (segs[i].num_sectors > max_sectors)
			return -S_UNSUPP;
	return (int)n;
}

static uint8_t blk_discard(struct virtio_blk *blk, bool zeroes)
{
	struct blk_discard_seg segs[MAX_DISCARD_SEGS];
	uint64_t size = blockdev_size(blk->bd);
	int n = blk_segs(blk, zeroes, segs);

	if (n < 0)
		return (uint8_t)-n;
	for (int i = 0; i < n; i++) {
		uint64_t off = segs[i].sector * SECTOR, len = segs[i].num_sectors * SECTOR;
		int ret;

		if (segs[i].sector > size / SECTOR || len > size - off || (segs[i].flags & ~1u))
			return S_UNSUPP;
		ret = zeroes ? blockdev_write_zeroes(blk->bd, off, len)
			     : blockdev_discard(blk->bd, off, len);
		if (ret && ret != -EOPNOTSUPP)
			return S_IOERR;
	}
	return S_OK;
}

static uint8_t blk_execute(struct virtio_blk *blk, const struct blk_req_header *h,
			   uint32_t *written)
{
	bool ro = blockdev_readonly(blk->bd);

	switch (h->type) {
	case T_IN:
		return blk_rw(blk, h, false, written);
	case T_OUT:
		return ro ? S_IOERR : blk_rw(blk, h, true, written);
	case T_FLUSH:
		return blockdev_flush(blk->bd) ? S_IOERR : S_OK;
	case T_GET_ID:
		*written = (uint32_t)virtq_write_in(&blk->elem, 0, blk->serial,
						    blk->elem.in_len - 1 < 20 ? blk->elem.in_len - 1 : 20);
		return S_OK;
	case T_DISCARD:
		return ro ? S_IOERR : blk_discard(blk, false);
	case T_WRITE_ZEROES:
		return ro ? S_IOERR : blk_discard(blk, true);
	default:
		return S_UNSUPP;
	}
}

/* What a request costs the byte bucket, known before it runs: the data
 * it moves, or the range it zeroes or discards (0 if it will be refused:
 * it still costs an operation). */
static uint64_t blk_cost(struct virtio_blk *blk, const struct blk_req_header *h)
{
	struct blk_discard_seg segs[MAX_DISCARD_SEGS];
	uint64_t bytes = 0;
	int n;

	switch (h->type) {
	case T_IN:
		return blk->elem.in_len - 1;
	case T_OUT:
		return blk->elem.out_len - sizeof(*h);
	case T_DISCARD:
	case T_WRITE_ZEROES:
		n = blk_segs(blk, h->type == T_WRITE_ZEROES, segs);
		for (int i = 0; i < n; i++)
			bytes += segs[i].num_sectors * SECTOR;
		return bytes;
	default:
		return 0;
	}
}

/* One popped request, already paid for. */
static void blk_handle(struct virtio_blk *blk, struct virtq *vq, const struct blk_req_header *h)
{
	uint32_t written = 0;
	uint8_t status = blk_execute(blk, h, &written);

	virtq_write_in(&blk->elem, blk->elem.in_len - 1, &status, 1);
	virtq_push(vq, &blk->elem, written + 1);
}

/* Every request is charged before it runs (Firecracker's order): one that
 * does not fit the buckets goes back on the ring, untouched, until the
 * refill. */
static void blk_notify(struct virtio_dev *dev, unsigned int q)
{
	struct virtio_blk *blk = dev->opaque;
	struct virtq *vq = &dev->vqs[q];

	for (;;) {
		struct blk_req_header h;
		uint64_t wait;
		int ret = virtq_pop(vq, &blk->elem);

		if (ret == 0)
			break;
		if (ret < 0 || blk->elem.out_len < sizeof(h) || blk->elem.in_len < 1) {
			virtio_set_broken(dev, ret < 0 ? err_get() : "request without header or status");
			break;
		}
		virtq_read_out(&blk->elem, 0, &h, sizeof(h));
		wait = ratelimit_consume(&blk->limit, blk_cost(blk, &h), ratelimit_now_ns());
		if (wait) {
			virtq_unpop(vq, 1);
			virtio_defer(dev, q, wait);
			break;
		}
		blk_handle(blk, vq, &h);
	}
	virtio_notify(dev, q);
}

static const struct virtio_device_ops blk_ops = {
	.name = "blk",
	.device_id = 2,
	.pci_class = 0x010000,
	.features = BLK_F_SEG_MAX | BLK_F_BLK_SIZE | BLK_F_FLUSH | BLK_F_DISCARD |
		    BLK_F_WRITE_ZEROES,
	.num_queues = 1,
	.queue_notify = blk_notify,
};

static void blk_fill_config(struct virtio_blk *blk)
{
	uint8_t *c = blk->dev.config;
	uint64_t sectors = blockdev_size(blk->bd) / SECTOR;

	memcpy(c, &sectors, 8);
	put32(c + 12, VIRTQ_MAX_SEGS - 2);
	put32(c + 20, 512);
	c[34] = 1;
	put32(c + 36, MAX_DISCARD_SECTORS);
	put32(c + 40, MAX_DISCARD_SEGS);
	put32(c + 44, 1);
	put32(c + 48, MAX_WZ_SECTORS);
	put32(c + 52, MAX_WZ_SEGS);
	c[56] = 1;
}

int virtio_blk_create(struct vm *vm, struct pci_bus *bus, const struct disk_config *cfg,
		      struct virtio_blk **out)
{
	struct blockdev_opts bo = { .path = cfg->path, .format = cfg->format,
				    .readonly = cfg->readonly, .policy = cfg->policy,
				    .cache = (enum block_cache)cfg->cache };
	struct virtio_blk *blk = calloc(1, sizeof(*blk));
	struct virtio_device_ops *ops;
	int ret;

	if (!blk)
		return err_set(-ENOMEM, "out of memory");
	ret = blockdev_open(&bo, &blk->bd);
	if (ret)
		goto free_blk;
	ratelimit_init(&blk->limit);
	ratelimit_set(&blk->limit, cfg->bps, cfg->iops);
	if (cfg->serial)
		strncpy(blk->serial, cfg->serial, 20);
	/* Without F_FLUSH the guest treats the disk as write-through, which
	 * O_DSYNC modes are; cache=unsafe still says "volatile cache" and
	 * then ignores the flushes (as QEMU does). */
	ops = &blk->ops;
	*ops = blk_ops;
	if (blockdev_readonly(blk->bd))
		ops->features |= BLK_F_RO;
	if (!block_cache_volatile(bo.cache))
		ops->features &= ~BLK_F_FLUSH;
	ret = virtio_pci_create(&blk->dev, vm, bus, ops, blk, 60);
	if (ret)
		goto close_bd;
	blk_fill_config(blk);
	*out = blk;
	return 0;
close_bd:
	blockdev_close(blk->bd);
free_blk:
	free(blk);
	return ret;
}

void virtio_blk_destroy(struct virtio_blk *blk)
{
	if (!blk)
		return;
	virtio_pci_destroy(&blk->dev);
	blockdev_close(blk->bd);
	free(blk);
}

struct virtio_dev *virtio_blk_dev(struct virtio_blk *blk)
{
	return &blk->dev;
}

struct ratelimit *virtio_blk_ratelimit(struct virtio_blk *blk)
{
	return &blk->limit;
}

struct blockdev *virtio_blk_blockdev(struct virtio_blk *blk)
{
	return blk->bd;
}
