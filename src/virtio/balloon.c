/* virtio-balloon (virtio 1.x §5.5): inflate, deflate, statistics and free
 * page reporting. Pages given back are freed on the host at once
 * (guest_memory_discard()).
 * Config (little-endian): num_pages u32 @0 (target, set by the host),
 * actual u32 @4 (written by the driver). Queues: 0 inflate, 1 deflate,
 * 2 stats, 3 free page reporting. Inflate/deflate buffers hold u32 page
 * frame numbers of 4 KiB pages; a stats buffer holds { tag u16, val u64 }
 * packed entries; a reporting buffer's descriptors are the free ranges. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "vireo/dirty.h"
#include "vireo/log.h"
#include "vireo/state.h"
#include "vireo/virtio.h"

#define BALLOON_F_STATS_VQ       (1ULL << 1)
#define BALLOON_F_DEFLATE_ON_OOM (1ULL << 2)
#define BALLOON_F_REPORTING      (1ULL << 5)
#define PFN_SHIFT 12
enum { Q_INFLATE, Q_DEFLATE, Q_STATS, Q_REPORTING };

/* Bounds of one request (DESIGN §3.8): Linux sends at most 256 PFNs per
 * inflate buffer and reports at most 32 ranges of 4 MiB; a request beyond
 * these is refused (NEEDS_RESET), so a guest cannot keep the I/O thread
 * busy for minutes with one chain of overlapping buffers. */
#define BALLOON_MAX_PFNS         4096
#define BALLOON_MAX_REPORT_BYTES (1ULL << 30)
#define BALLOON_MAX_STATS_BYTES  1024

struct virtio_balloon {
	struct virtio_dev dev;
	struct virtq_elem elem;
	uint32_t pfns[BALLOON_MAX_PFNS];   /* the inflate request being served */
	struct iovec ranges[BALLOON_MAX_PFNS]; /* host ranges to free, outside the lock */
	unsigned int nranges;
	bool stats_held;           /* the driver's stats buffer, kept until we ask */
	struct virtq_elem stats_elem;
	struct balloon_stats stats;
	uint64_t inflated_pages;   /* pages freed on the host through inflate */
	uint64_t reported_pages;   /* pages freed through free page reporting */
};

/* Frees [host, host+len) of guest RAM. Returns pages freed. */
static uint64_t balloon_discard(struct virtio_balloon *b, void *host, uint64_t len)
{
	int ret;

	if (!host || ((uintptr_t)host | len) & ((1ULL << PFN_SHIFT) - 1))
		return 0;
	ret = guest_memory_discard(&b->dev.vm->mem, host, len);
	if (ret) {
		log_ratelimited("balloon: cannot free guest pages: %s", strerror(-ret));
		return 0;
	}
	/* They read as zero now: a migration sends that (as a zero run). */
	dirty_mark(&b->dev.vm->mem, host, len);
	return len >> PFN_SHIFT;
}

/* Turns one inflate request into runs of consecutive PFNs, resolved to
 * host ranges (pages outside RAM are skipped). Called with dev->lock held:
 * the chain's buffers are read here, the work is done without the lock. */
static int balloon_inflate_ranges(struct virtio_balloon *b)
{
	uint64_t run_start = 0, run_len = 0;
	size_t n = b->elem.out_len / 4;

	if (b->elem.out_len > BALLOON_MAX_PFNS * 4)
		return err_set(-EINVAL, "inflate request of %u bytes (at most %d PFNs)",
			       b->elem.out_len, BALLOON_MAX_PFNS);
	virtq_read_out(&b->elem, 0, b->pfns, n * 4);
	b->nranges = 0;
	for (size_t i = 0; i <= n; i++) {
		if (i < n && run_len && b->pfns[i] == run_start + run_len) {
			run_len++;
			continue;
		}
		if (run_len)
			b->ranges[b->nranges++] = (struct iovec){
				guest_ptr(&b->dev.vm->mem, run_start << PFN_SHIFT, run_len << PFN_SHIFT),
				run_len << PFN_SHIFT };
		if (i < n) {
			run_start = b->pfns[i];
			run_len = 1;
		}
	}
	return 0;
}

/* A reporting buffer's descriptors are the free ranges themselves. */
static int balloon_report_ranges(struct virtio_balloon *b)
{
	unsigned int segs = b->elem.out_num + b->elem.in_num;

	if ((uint64_t)b->elem.out_len + b->elem.in_len > BALLOON_MAX_REPORT_BYTES)
		return err_set(-EINVAL, "free page report of more than %llu bytes",
			       BALLOON_MAX_REPORT_BYTES);
	memcpy(b->ranges, b->elem.iov, segs * sizeof(b->ranges[0]));
	b->nranges = segs;
	return 0;
}

/* Frees the ranges of the current request, without dev->lock: the control
 * plane (info, balloon target) never waits for the guest's discards. */
static uint64_t balloon_discard_ranges(struct virtio_balloon *b)
{
	uint64_t pages = 0;

	pthread_mutex_unlock(&b->dev.lock);
	for (unsigned int i = 0; i < b->nranges; i++)
		pages += balloon_discard(b, b->ranges[i].iov_base, b->ranges[i].iov_len);
	pthread_mutex_lock(&b->dev.lock);
	return pages;
}

static int balloon_stats_update(struct virtio_balloon *b)
{
	struct { uint16_t tag; uint64_t val; } __attribute__((packed)) e;
	size_t off = 0;

	if (b->stats_elem.out_len > BALLOON_MAX_STATS_BYTES)
		return err_set(-EINVAL, "statistics buffer of %u bytes", b->stats_elem.out_len);
	while (virtq_read_out(&b->stats_elem, off, &e, sizeof(e)) == sizeof(e)) {
		if (e.tag < BALLOON_STATS_MAX)
			b->stats.value[e.tag] = e.val;
		b->stats.valid |= 1u << (e.tag < 32 ? e.tag : 31);
		off += sizeof(e);
	}
	b->stats.updates++;
	return 0;
}

/* Serves one inflate or reporting request. Returns false if the device
 * was reset meanwhile (the chain is no longer ours to return). */
static bool balloon_free_request(struct virtio_balloon *b, unsigned int q)
{
	uint64_t resets = b->dev.stats.resets, pages;

	if ((q == Q_INFLATE ? balloon_inflate_ranges(b) : balloon_report_ranges(b)) < 0) {
		virtio_set_broken(&b->dev, err_get());
		return false;
	}
	pages = balloon_discard_ranges(b);
	if (q == Q_INFLATE)
		b->inflated_pages += pages;
	else
		b->reported_pages += pages;
	return b->dev.stats.resets == resets && !(b->dev.status & VIRTIO_STATUS_NEEDS_RESET);
}

static void balloon_notify(struct virtio_dev *dev, unsigned int q)
{
	struct virtio_balloon *b = dev->opaque;
	struct virtq_elem *elem = q == Q_STATS ? &b->stats_elem : &b->elem;
	int ret;

	while ((ret = virtq_pop(&dev->vqs[q], elem)) > 0) {
		if ((q == Q_INFLATE || q == Q_REPORTING) && !balloon_free_request(b, q))
			return;
		if (q == Q_STATS) {
			/* Keep the buffer: returning it is how we ask for new stats. */
			if (balloon_stats_update(b) < 0) {
				virtio_set_broken(dev, err_get());
				return;
			}
			b->stats_held = true;
			break;
		}
		virtq_push(&dev->vqs[q], elem, 0);
	}
	if (ret < 0)
		virtio_set_broken(dev, err_get());
	virtio_notify(dev, q);
}

/* Only `actual` (bytes 4..7) is the driver's to write. Called on a vCPU
 * thread with dev->lock held. */
static void balloon_config_write(struct virtio_dev *dev, unsigned int offset,
				 const uint8_t *data, unsigned int len)
{
	if (offset >= 4 && offset + len <= 8)
		memcpy(dev->config + offset, data, len);
}

static void balloon_reset(struct virtio_dev *dev)
{
	struct virtio_balloon *b = dev->opaque;

	b->stats_held = false;
}

/* State: num_pages and actual (the config), the statistics buffer held
 * (u8, u32 its head), the statistics last reported, the counters of pages
 * freed. The inflated pages themselves are holes in the memory file, and
 * stay holes after a restore. */
static void balloon_save(struct virtio_dev *dev, struct state_writer *w)
{
	struct virtio_balloon *b = dev->opaque;

	state_put_bytes(w, dev->config, 8);
	state_put_u8(w, b->stats_held);
	state_put_u32(w, b->stats_elem.head);
	for (unsigned int i = 0; i < BALLOON_STATS_MAX; i++)
		state_put_u64(w, b->stats.value[i]);
	state_put_u32(w, b->stats.valid);
	state_put_u64(w, b->stats.updates);
	state_put_u64(w, b->inflated_pages);
	state_put_u64(w, b->reported_pages);
}

static int balloon_load(struct virtio_dev *dev, struct state_cursor *c)
{
	struct virtio_balloon *b = dev->opaque;
	struct balloon_stats st = { 0 };
	uint8_t config[8];
	uint64_t inflated, reported;
	uint32_t head;
	bool held;
	int ret;

	state_get_bytes(c, config, 8);
	held = state_get_u8(c) != 0;
	head = state_get_u32(c);
	for (unsigned int i = 0; i < BALLOON_STATS_MAX; i++)
		st.value[i] = state_get_u64(c);
	st.valid = state_get_u32(c);
	st.updates = state_get_u64(c);
	inflated = state_get_u64(c);
	reported = state_get_u64(c);
	ret = state_done(c);
	if (ret)
		return ret;
	if (head >= VIRTQ_MAX_SIZE)
		return err_set(-EINVAL, "statistics buffer head %u out of range", head);
	memcpy(dev->config, config, 8);
	b->stats_held = held;
	b->stats_elem.head = (uint16_t)head;
	b->stats_elem.out_num = b->stats_elem.in_num = 0; /* only pushed back */
	b->stats = st;
	b->inflated_pages = inflated;
	b->reported_pages = reported;
	return 0;
}

static const struct virtio_device_ops balloon_ops = {
	.name = "balloon",
	.device_id = 5,
	.pci_class = 0x050000,
	.features = BALLOON_F_STATS_VQ | BALLOON_F_DEFLATE_ON_OOM | BALLOON_F_REPORTING,
	.num_queues = 4,
	.queue_notify = balloon_notify,
	.config_write = balloon_config_write,
	.reset = balloon_reset,
	.state_type = STATE_SEC_VIRTIO_BALLOON,
	.save = balloon_save,
	.load = balloon_load,
};

int virtio_balloon_create(struct vm *vm, struct pci_bus *bus, uint64_t target_bytes,
			  struct virtio_balloon **out)
{
	struct virtio_balloon *b = calloc(1, sizeof(*b));
	int ret;

	if (!b)
		return err_set(-ENOMEM, "out of memory");
	ret = virtio_pci_create(&b->dev, vm, bus, &balloon_ops, b, 8);
	if (ret) {
		free(b);
		return ret;
	}
	virtio_balloon_set_target(b, target_bytes);
	*out = b;
	return 0;
}

void virtio_balloon_set_target(struct virtio_balloon *b, uint64_t target_bytes)
{
	uint32_t pages = (uint32_t)(target_bytes >> PFN_SHIFT);

	pthread_mutex_lock(&b->dev.lock);
	memcpy(b->dev.config, &pages, 4);
	virtio_config_changed(&b->dev);
	pthread_mutex_unlock(&b->dev.lock);
}

void virtio_balloon_get_stats(struct virtio_balloon *b, struct balloon_stats *out)
{
	pthread_mutex_lock(&b->dev.lock);
	*out = b->stats;
	memcpy(&out->actual_pages, b->dev.config + 4, 4);
	out->inflated_pages = b->inflated_pages;
	out->reported_pages = b->reported_pages;
	/* Ask for fresh figures: hand the driver its buffer back; not while
	 * quiesced (a snapshot or migration has taken guest RAM as it is: it
	 * keeps the buffer, held in its state, and asks at the next call). */
	if (b->stats_held && !b->dev.quiesced) {
		b->stats_held = false;
		virtq_push(&b->dev.vqs[Q_STATS], &b->stats_elem, 0);
		virtio_notify(&b->dev, Q_STATS);
	}
	pthread_mutex_unlock(&b->dev.lock);
}

struct virtio_dev *virtio_balloon_dev(struct virtio_balloon *b)
{
	return &b->dev;
}

void virtio_balloon_destroy(struct virtio_balloon *b)
{
	if (!b)
		return;
	virtio_pci_destroy(&b->dev);
	free(b);
}
