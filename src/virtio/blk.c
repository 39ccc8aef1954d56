/* virtio-blk (virtio 1.x §5.2) on the block layer. The device's I/O thread
 * pops every available request, charges it to the disk's rate limiter and
 * hands it to blk-io.c, which runs it asynchronously and pushes it when it
 * finishes (without an engine, as in the fuzzer, requests run inline).
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

#include "blk-io.h"
#include "vireo/block.h"
#include "vireo/log.h"
#include "vireo/ratelimit.h"
#include "vireo/state.h"
#include "vireo/virtio.h"

#define BLK_F_SEG_MAX      (1ULL << 2)
#define BLK_F_RO           (1ULL << 5)
#define BLK_F_BLK_SIZE     (1ULL << 6)
#define BLK_F_FLUSH        (1ULL << 9)
#define BLK_F_MQ           (1ULL << 12)
#define BLK_F_DISCARD      (1ULL << 13)
#define BLK_F_WRITE_ZEROES (1ULL << 14)

#define SECTOR 512ULL
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

struct virtio_blk {
	struct virtio_dev dev;
	struct blockdev *bd;
	struct ratelimit limit;
	struct virtio_device_ops ops;	/* blk_ops with this disk's features */
	char serial[21];
	struct blk_io *io;		/* NULL: requests run inline */
	struct blk_req sync_req;	/* the inline request */
};

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }

/* The data part of a request: the segments between the header (first 16
 * readable bytes) and the status byte (last writable byte). */
static int blk_data_iov(struct blk_req *req, bool to_device, size_t *len)
{
	const struct virtq_elem *e = &req->elem;
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
		req->data[n++] = seg;
	}
	*len = total;
	return n;
}

/* Fills req's data segments and range; false if the range is refused. */
static bool blk_rw_range(struct virtio_blk *blk, struct blk_req *req,
			 const struct blk_req_header *h)
{
	size_t len;
	uint64_t size = blockdev_size(blk->bd);

	req->ndata = blk_data_iov(req, h->type == T_OUT, &len);
	req->off = h->sector * SECTOR;
	req->len = len;
	return !(len % SECTOR || h->sector > size / SECTOR || len > size - req->off);
}

static uint8_t blk_rw(struct virtio_blk *blk, struct blk_req *req, uint32_t *written)
{
	bool write = req->type == T_OUT;
	int ret = write ? blockdev_writev(blk->bd, req->off, req->data, req->ndata)
			: blockdev_readv(blk->bd, req->off, req->data, req->ndata);

	if (ret)
		return S_IOERR;
	if (!write)
		*written = (uint32_t)req->len;
	return S_OK;
}

/* A discard or write-zeroes request's segments, within the limits the
 * config advertises: their count, or -S_IOERR / -S_UNSUPP. */
static int blk_segs(const struct virtq_elem *e, bool zeroes, struct blk_discard_seg *segs)
{
	size_t bytes = e->out_len - sizeof(struct blk_req_header);
	unsigned int n, max_segs = zeroes ? MAX_WZ_SEGS : MAX_DISCARD_SEGS;
	uint32_t max_sectors = zeroes ? MAX_WZ_SECTORS : MAX_DISCARD_SECTORS;

	if (bytes % sizeof(segs[0]) || bytes / sizeof(segs[0]) > MAX_DISCARD_SEGS || !bytes)
		return -S_IOERR;
	n = (unsigned int)(bytes / sizeof(segs[0]));
	if (n > max_segs)
		return -S_UNSUPP;
	virtq_read_out(e, sizeof(struct blk_req_header), segs, bytes);
	for (unsigned int i = 0; i < n; i++)
		if (segs[i].num_sectors > max_sectors)
			return -S_UNSUPP;
	return (int)n;
}

/* The segments were read once, when the request was charged: what the
 * guest writes into them afterwards changes nothing. */
static uint8_t blk_discard(struct virtio_blk *blk, const struct blk_req *req, bool zeroes)
{
	const struct blk_discard_seg *segs = req->segs;
	uint64_t size = blockdev_size(blk->bd);
	int n = req->nsegs;

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

/* Runs a request that needs I/O, synchronously (on a worker thread, or
 * inline without an engine). */
static void blk_run(struct virtio_dev *dev, struct blk_req *req)
{
	struct virtio_blk *blk = dev->opaque;

	req->written = 0;
	switch (req->type) {
	case T_IN:
	case T_OUT:
		req->status = blk_rw(blk, req, &req->written);
		break;
	case T_FLUSH:
		req->status = blockdev_flush(blk->bd) ? S_IOERR : S_OK;
		break;
	case T_DISCARD:
	case T_WRITE_ZEROES:
		req->status = blk_discard(blk, req, req->type == T_WRITE_ZEROES);
		break;
	default:
		req->status = S_UNSUPP;
		break;
	}
}

/* Under O_DIRECT, a write whose offset or segments are not aligned is a
 * read-modify-write of whole blocks in the file layer: it must not race
 * with other requests on a raw image (formats hold their image lock). */
static bool blk_needs_barrier(struct virtio_blk *blk, const struct blk_req *req)
{
	struct bfile *raw = blockdev_raw_file(blk->bd);
	uint64_t a = raw ? raw->direct_align : 0, bits;

	if (!a || !req->writes)
		return false;
	if (req->type != T_OUT)
		return true;	/* discard, write-zeroes: rare, ranges unchecked */
	bits = req->off | req->len;
	for (int i = 0; i < req->ndata; i++)
		bits |= req->data[i].iov_len;
	return (bits & (a - 1)) != 0;
}

/* Classifies a popped request. Returns true if it is already answered
 * (req->status, req->written set: no I/O needed), false if it must run. */
static bool blk_prepare(struct virtio_blk *blk, struct blk_req *req,
			const struct blk_req_header *h)
{
	bool ro = blockdev_readonly(blk->bd);

	req->type = h->type;
	req->status = S_OK;
	req->written = 0;
	req->ndata = 0;
	req->writes = h->type == T_OUT || h->type == T_DISCARD || h->type == T_WRITE_ZEROES;
	switch (h->type) {
	case T_IN:
	case T_OUT:
		if (!blk_rw_range(blk, req, h) || (req->writes && ro))
			req->status = S_IOERR;
		break;
	case T_FLUSH:
		break;
	case T_GET_ID:
		req->written = (uint32_t)virtq_write_in(&req->elem, 0, blk->serial,
							req->elem.in_len - 1 < 20 ?
							req->elem.in_len - 1 : 20);
		return true;
	case T_DISCARD:
	case T_WRITE_ZEROES:
		if (ro)
			req->status = S_IOERR;
		else if (req->nsegs < 0)	/* read by blk_cost() */
			req->status = (uint8_t)-req->nsegs;
		break;
	default:
		req->status = S_UNSUPP;
		break;
	}
	if (req->status != S_OK)
		return true;
	req->barrier = blk_needs_barrier(blk, req);
	return false;
}

/* What a request costs the byte bucket, known before it runs: the data
 * it moves, or the range it zeroes or discards (0 if it will be refused:
 * it still costs an operation). */
static uint64_t blk_cost(struct blk_req *req, const struct blk_req_header *h)
{
	const struct virtq_elem *e = &req->elem;
	uint64_t bytes = 0;

	switch (h->type) {
	case T_IN:
		return e->in_len - 1;
	case T_OUT:
		return e->out_len - sizeof(*h);
	case T_DISCARD:
	case T_WRITE_ZEROES:
		req->nsegs = blk_segs(e, h->type == T_WRITE_ZEROES, req->segs);
		for (int i = 0; i < req->nsegs; i++)
			bytes += req->segs[i].num_sectors * SECTOR;
		return bytes;
	default:
		return 0;
	}
}

static void blk_push(struct virtq *vq, struct blk_req *req)
{
	virtq_write_in(&req->elem, req->elem.in_len - 1, &req->status, 1);
	virtq_push(vq, &req->elem, req->written + 1);
}

static void blk_put(struct virtio_blk *blk, struct blk_req *req)
{
	if (blk->io)
		blk_io_put(blk->io, req);
}

/* Pops, checks and charges the next request. Returns it, or NULL when
 * there is none to serve now (empty ring, no free request, a broken ring,
 * or the rate limit: then the queue is deferred until the refill). */
static struct blk_req *blk_next(struct virtio_blk *blk, unsigned int q,
				struct blk_req_header *h)
{
	struct virtio_dev *dev = &blk->dev;
	struct virtq *vq = &dev->vqs[q];
	struct blk_req *req = blk->io ? blk_io_get(blk->io, q) : &blk->sync_req;
	uint64_t wait;
	int ret;

	if (!req)
		return NULL;
	ret = virtq_pop(vq, &req->elem);
	if (ret <= 0 || req->elem.out_len < sizeof(*h) || req->elem.in_len < 1) {
		if (ret)
			virtio_set_broken(dev, ret < 0 ? err_get() : "request without header or status");
		blk_put(blk, req);
		return NULL;
	}
	virtq_read_out(&req->elem, 0, h, sizeof(*h));
	wait = ratelimit_consume(&blk->limit, blk_cost(req, h), ratelimit_now_ns());
	if (wait) {
		virtq_unpop(vq, 1);
		blk_put(blk, req);
		virtio_defer(dev, q, wait);
		return NULL;
	}
	return req;
}

/* Every available request is popped and started at once; each is charged
 * before it starts (Firecracker's order): one that does not fit the
 * buckets goes back on the ring, untouched, until the refill. */
static void blk_notify(struct virtio_dev *dev, unsigned int q)
{
	struct virtio_blk *blk = dev->opaque;
	struct virtq *vq = &dev->vqs[q];
	struct blk_req_header h;
	struct blk_req *req;

	while ((req = blk_next(blk, q, &h))) {
		bool answered = blk_prepare(blk, req, &h);

		if (!answered && blk->io) {
			blk_io_start(blk->io, req);
			continue;
		}
		if (!answered)
			blk_run(dev, req);
		blk_push(vq, req);
		blk_put(blk, req);
	}
	virtio_notify(dev, q);
	if (blk->io)
		blk_io_submit(blk->io);
}

static void blk_fd_ready(struct virtio_dev *dev)
{
	struct virtio_blk *blk = dev->opaque;

	blk_io_complete(blk->io);
}

static void blk_reset(struct virtio_dev *dev)
{
	struct virtio_blk *blk = dev->opaque;

	if (blk->io)
		blk_io_reset(blk->io);
}

static void blk_activate(struct virtio_dev *dev)
{
	struct virtio_blk *blk = dev->opaque;

	if (blk->io)
		blk_io_activate(blk->io);
}

/* Nothing of a request may be in flight when state is taken: it has no
 * state of its own (its counters are not state, its config is the disk's). */
static bool blk_idle(struct virtio_dev *dev)
{
	struct virtio_blk *blk = dev->opaque;

	return !blk->io || blk_io_idle(blk->io);
}

static const struct virtio_device_ops blk_ops = {
	.name = "blk",
	.device_id = 2,
	.pci_class = 0x010000,
	.features = BLK_F_SEG_MAX | BLK_F_BLK_SIZE | BLK_F_FLUSH | BLK_F_DISCARD |
		    BLK_F_WRITE_ZEROES,
	.num_queues = 1,
	.queue_notify = blk_notify,
	.fd_ready = blk_fd_ready,
	.reset = blk_reset,
	.activate = blk_activate,
	.state_type = STATE_SEC_VIRTIO_BLK,
	.idle = blk_idle,
};

static void blk_fill_config(struct virtio_blk *blk)
{
	uint8_t *c = blk->dev.config;
	uint64_t sectors = blockdev_size(blk->bd) / SECTOR;

	memcpy(c, &sectors, 8);
	put32(c + 12, VIRTQ_MAX_SEGS - 2);
	put32(c + 20, 512);
	c[34] = (uint8_t)blk->ops.num_queues;	/* num_queues, u16 */
	c[35] = 0;
	put32(c + 36, MAX_DISCARD_SECTORS);
	put32(c + 40, MAX_DISCARD_SEGS);
	put32(c + 44, 1);
	put32(c + 48, MAX_WZ_SECTORS);
	put32(c + 52, MAX_WZ_SEGS);
	c[56] = 1;
}

/* One queue per vCPU lets each CPU submit and complete on its own ring
 * and vector, as QEMU does by default since 5.2. The cap: Linux gives a
 * queue to at most nr_cpu_ids CPUs, and past a few queues per I/O thread
 * (each device has one) more rings only cost the guest ring memory and
 * vectors (docs/run.md). */
unsigned int virtio_blk_default_queues(unsigned int ncpus)
{
	if (ncpus > VIRTIO_BLK_MAX_QUEUES)
		return VIRTIO_BLK_MAX_QUEUES;
	return ncpus ? ncpus : 1;
}

int virtio_blk_create(struct vm *vm, struct pci_bus *bus, const struct disk_config *cfg,
		      struct virtio_blk **out)
{
	struct blockdev_opts bo = { .path = cfg->path, .format = cfg->format,
				    .readonly = cfg->readonly, .policy = cfg->policy,
				    .cache = (enum block_cache)cfg->cache };
	struct virtio_blk *blk = calloc(1, sizeof(*blk));
	struct virtio_device_ops *ops;
	unsigned int nq = cfg->queues ? cfg->queues : 1;
	int ret;

	if (!blk)
		return err_set(-ENOMEM, "out of memory");
	if (nq > VIRTIO_BLK_MAX_QUEUES) {
		free(blk);
		return err_set(-EINVAL, "%s: queues=%u: at most %u", cfg->path, nq,
			       VIRTIO_BLK_MAX_QUEUES);
	}
	ret = blockdev_open(&bo, &blk->bd);
	if (ret)
		goto free_blk;
	ratelimit_init(&blk->limit);
	ratelimit_set(&blk->limit, cfg->bps, cfg->iops);
	ret = blk_io_create(&blk->dev, blk->bd, (enum block_aio)cfg->aio, nq, blk_run, &blk->io);
	if (ret)
		goto close_bd;
	if (cfg->serial)
		strncpy(blk->serial, cfg->serial, 20);
	/* Without F_FLUSH the guest treats the disk as write-through, which
	 * O_DSYNC modes are; cache=unsafe still says "volatile cache" and
	 * then ignores the flushes (as QEMU does). */
	ops = &blk->ops;
	*ops = blk_ops;
	if (blockdev_readonly(blk->bd))
		ops->features |= BLK_F_RO;
	/* One queue stays the device it always was (a snapshot's features
	 * must be a subset of the device's). */
	ops->num_queues = nq;
	if (nq > 1)
		ops->features |= BLK_F_MQ;
	if (!block_cache_volatile(bo.cache))
		ops->features &= ~BLK_F_FLUSH;
	ret = virtio_pci_create(&blk->dev, vm, bus, ops, blk, 60);
	if (ret)
		goto destroy_io;
	blk_fill_config(blk);
	*out = blk;
	return 0;
destroy_io:
	blockdev_close(blk->bd);	/* stops the workers first */
	blk_io_destroy(blk->io);
	goto free_blk;
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
	blk_io_drain(blk->io);
	blockdev_close(blk->bd);	/* its workers finish what they hold */
	blk_io_destroy(blk->io);
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

void virtio_blk_set_limits(struct virtio_blk *blk, uint64_t bps, uint64_t iops)
{
	ratelimit_set(&blk->limit, bps, iops);
	virtio_undefer(&blk->dev);
}

const char *virtio_blk_aio(struct virtio_blk *blk, uint64_t *inflight_max)
{
	struct blk_io_stats st;

	blk_io_get_stats(blk->io, &st);
	*inflight_max = st.inflight_max;
	return block_aio_name(st.aio);
}

struct blockdev *virtio_dev_blockdev(struct virtio_dev *dev)
{
	/* Each disk has its own copy of blk_ops (its features): known by a callback. */
	return dev->ops->idle == blk_idle ? ((struct virtio_blk *)dev->opaque)->bd : NULL;
}
