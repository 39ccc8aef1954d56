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

#include "vireo/log.h"
#include "vireo/virtio.h"

#define BALLOON_F_STATS_VQ       (1ULL << 1)
#define BALLOON_F_DEFLATE_ON_OOM (1ULL << 2)
#define BALLOON_F_REPORTING      (1ULL << 5)
#define PFN_SHIFT 12
enum { Q_INFLATE, Q_DEFLATE, Q_STATS, Q_REPORTING };

struct virtio_balloon {
	struct virtio_dev dev;
	struct virtq_elem elem;
	bool stats_held;           /* the driver's stats buffer, kept until we ask */
	struct virtq_elem stats_elem;
	struct balloon_stats stats;
	uint64_t inflated_pages;   /* pages freed on the host through inflate */
	uint64_t reported_pages;   /* pages freed through free page reporting */
};

/* Frees [gpa, gpa+len) of guest RAM on the host. Returns pages freed. */
static uint64_t balloon_discard(struct virtio_balloon *b, uint64_t gpa, uint64_t len)
{
	void *host = guest_ptr(&b->dev.vm->mem, gpa, len);
	int ret;

	if (!host || (gpa | len) & ((1ULL << PFN_SHIFT) - 1))
		return 0;
	ret = guest_memory_discard(&b->dev.vm->mem, host, len);
	if (ret) {
		log_ratelimited("balloon: cannot free guest pages: %s", strerror(-ret));
		return 0;
	}
	return len >> PFN_SHIFT;
}

/* Inflate: free each listed page, merging runs of consecutive PFNs. */
static void balloon_inflate(struct virtio_balloon *b)
{
	uint32_t pfns[256];
	size_t off = 0, n;
	uint64_t run_start = 0, run_len = 0;

	while ((n = virtq_read_out(&b->elem, off, pfns, sizeof(pfns)) / 4) > 0) {
		for (size_t i = 0; i < n; i++) {
			if (run_len && pfns[i] == run_start + run_len) {
				run_len++;
				continue;
			}
			if (run_len)
				b->inflated_pages += balloon_discard(b, run_start << PFN_SHIFT,
								     run_len << PFN_SHIFT);
			run_start = pfns[i];
			run_len = 1;
		}
		off += n * 4;
	}
	if (run_len)
		b->inflated_pages += balloon_discard(b, run_start << PFN_SHIFT, run_len << PFN_SHIFT);
}

static void balloon_report(struct virtio_balloon *b)
{
	for (unsigned int i = 0; i < b->elem.out_num + b->elem.in_num; i++) {
		uint8_t *host = b->elem.iov[i].iov_base;
		uint64_t gpa = 0;

		/* Map the host pointer back to a guest address through the regions. */
		for (unsigned int r = 0; r < b->dev.vm->mem.nregions; r++) {
			const struct mem_region *reg = &b->dev.vm->mem.regions[r];
			uint8_t *start = b->dev.vm->mem.host + reg->offset;

			if (host >= start && host < start + reg->size)
				gpa = reg->gpa + (uint64_t)(host - start);
		}
		b->reported_pages += balloon_discard(b, gpa, b->elem.iov[i].iov_len);
	}
}

static void balloon_stats_update(struct virtio_balloon *b)
{
	struct { uint16_t tag; uint64_t val; } __attribute__((packed)) e;
	size_t off = 0;

	while (virtq_read_out(&b->stats_elem, off, &e, sizeof(e)) == sizeof(e)) {
		if (e.tag < BALLOON_STATS_MAX)
			b->stats.value[e.tag] = e.val;
		b->stats.valid |= 1u << (e.tag < 32 ? e.tag : 31);
		off += sizeof(e);
	}
	b->stats.updates++;
}

static void balloon_notify(struct virtio_dev *dev, unsigned int q)
{
	struct virtio_balloon *b = dev->opaque;
	struct virtq_elem *elem = q == Q_STATS ? &b->stats_elem : &b->elem;
	int ret;

	while ((ret = virtq_pop(&dev->vqs[q], elem)) > 0) {
		if (q == Q_INFLATE)
			balloon_inflate(b);
		else if (q == Q_REPORTING)
			balloon_report(b);
		if (q == Q_STATS) {
			/* Keep the buffer: returning it is how we ask for new stats. */
			balloon_stats_update(b);
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

static const struct virtio_device_ops balloon_ops = {
	.name = "balloon",
	.device_id = 5,
	.pci_class = 0x050000,
	.features = BALLOON_F_STATS_VQ | BALLOON_F_DEFLATE_ON_OOM | BALLOON_F_REPORTING,
	.num_queues = 4,
	.queue_notify = balloon_notify,
	.config_write = balloon_config_write,
	.reset = balloon_reset,
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
	/* Ask for fresh figures: hand the driver its buffer back. */
	if (b->stats_held) {
		b->stats_held = false;
		virtq_push(&b->dev.vqs[Q_STATS], &b->stats_elem, 0);
		virtio_notify(&b->dev, Q_STATS);
	}
	pthread_mutex_unlock(&b->dev.lock);
}

void virtio_balloon_destroy(struct virtio_balloon *b)
{
	if (!b)
		return;
	virtio_pci_destroy(&b->dev);
	free(b);
}
