/* virtio-balloon and the "balloon" scenario.
 *
 * balloon_mib=N (or scenario=balloon=N): inflate by N MiB, else by the
 * device's num_pages; the pages (zeroed, hence resident, first) go to the
 * host through the inflate queue, 256 PFNs per buffer, then "actual" is
 * written. Then, for balloon_hold_ms=T (default 0), keep answering the
 * stats queue (and with balloon_follow=1 inflate or deflate to the
 * device's num_pages whenever it changes, checked every 10 ms); then
 * deflate=1 gives every page back through the deflate queue. Features: VIRTIO_BALLOON_F_MUST_TELL_HOST (we always deflate
 * before reuse) and VIRTIO_BALLOON_F_STATS_VQ (memory free and total). */
#include "virtio.h"

#define F_MUST_TELL_HOST	(1ull << 0)
#define F_STATS_VQ		(1ull << 1)
#define PFNS_PER_BUF		256
#define BUFS			8
#define TAG_MEMFREE		4
#define TAG_MEMTOT		5

struct stat_entry {
	uint16_t tag;
	uint64_t val;
} __attribute__((packed));

static struct vdev *d;
static struct stat_entry *stats;
static uint32_t stats_requests;
static uint64_t ram_total, ram_given;

/* (Re)posts the stats buffer with fresh figures. */
static void stats_post(void)
{
	struct vq_buf v = { stats, 2 * sizeof(*stats) };

	stats[0] = (struct stat_entry){ TAG_MEMFREE, ram_total - ram_given };
	stats[1] = (struct stat_entry){ TAG_MEMTOT, ram_total };
	vq_add(&d->vq[2], &v, 1, 0, stats);
	vq_kick(&d->vq[2]);
}

static void stats_service(void)
{
	if (!(d->features & F_STATS_VQ))
		return;
	while (vq_get(&d->vq[2], NULL)) {
		stats_requests++;
		stats_post();
	}
}

/* Sends the PFNs of npages pages at base through queue qi. */
static int balloon_xfer(int qi, uint8_t *base, uint64_t npages, uint32_t *pfnbufs)
{
	struct virtq *q = &d->vq[qi];
	uint64_t sent = 0, done = 0;
	int inflight = 0;

	while (done < npages) {
		while (inflight < BUFS && sent < npages) {
			uint32_t *p = pfnbufs + PFNS_PER_BUF * (sent / PFNS_PER_BUF % BUFS);
			uint32_t n = npages - sent < PFNS_PER_BUF ? (uint32_t)(npages - sent) : PFNS_PER_BUF;

			for (uint32_t i = 0; i < n; i++)
				p[i] = (uint32_t)(((uintptr_t)base >> 12) + sent + i);
			struct vq_buf v = { p, n * 4 };

			if (vq_add(q, &v, 1, 0, (void *)(uintptr_t)n) < 0)
				break;
			sent += n;
			inflight++;
		}
		vq_kick(q);
		uintptr_t n = (uintptr_t)vq_get_wait(q, NULL, 10000);

		if (!n) {
			probe_printf("PROBE balloon_error=timeout queue=%d done=%lu\n", qi, done);
			return -1;
		}
		inflight--;
		done += n;
		stats_service();
	}
	return 0;
}

static uint64_t inflated;		/* pages [0, inflated) are the host's */

/* Inflates or deflates to want pages (the top ones go first on deflate),
 * then writes "actual". Pages are zeroed (made resident) before they are
 * given, and touched again when they come back. */
static int balloon_resize(uint8_t *pages, uint64_t want, uint32_t *pfnbufs)
{
	if (want > inflated) {
		uint8_t *p = pages + inflated * 4096;

		probe_memset(p, 0, (want - inflated) * 4096);
		if (balloon_xfer(0, p, want - inflated, pfnbufs))
			return -1;
	} else if (want < inflated) {
		if (balloon_xfer(1, pages + want * 4096, inflated - want, pfnbufs))
			return -1;
		for (uint64_t i = want; i < inflated; i++)
			pages[i * 4096] = 1;
	}
	inflated = want;
	ram_given = want * 4096;
	cfg_w32(d, 4, (uint32_t)want);
	return 0;
}

void scn_balloon(const char *arg)
{
	uint64_t target, limit, ticks = 0, hold_ms = cmdline_u64("balloon_hold_ms", 0);
	bool follow = cmdline_u64("balloon_follow", 0);
	uint32_t *pfnbufs;
	uint8_t *pages;

	d = virtio_find(VIRTIO_ID_BALLOON, 0);
	if (!d) {
		probe_printf("PROBE balloon_error=no-device\n");
		probe_exit(1);
	}
	uint64_t offered = vdev_offered(d);

	if (vdev_init(d, F_MUST_TELL_HOST | F_STATS_VQ, offered & F_STATS_VQ ? 3 : 2, 128))
		probe_exit(1);
	ram_total = ram_end() - 0x100000;	/* RAM from the image up */
	pfnbufs = dma_alloc(PFNS_PER_BUF * 4 * BUFS, 4096);
	stats = dma_alloc(64, 64);
	vdev_driver_ok(d);
	if (d->features & F_STATS_VQ)
		stats_post();
	probe_printf("PROBE balloon num_pages=%u actual=%u features=0x%lx\n",
		     cfg_r32(d, 0), cfg_r32(d, 4), d->features);
	target = cmdline_u64("balloon_mib", ~0ull);
	target = target == ~0ull ? cfg_r32(d, 0) : target * 256;
	if (parse_u64(arg, 0))
		target = parse_u64(arg, 0) * 256;
	/* The balloon's pages: all RAM above our allocations but 1 MiB. */
	pages = dma_alloc(4096, 4096);
	limit = (ram_end() - (uintptr_t)pages) / 4096 - 256;
	if (target > limit) {
		probe_printf("PROBE balloon_error=target-too-large target_pages=%lu max=%lu\n", target, limit);
		probe_exit(1);
	}
	if (balloon_resize(pages, target, pfnbufs))
		probe_exit(1);
	probe_printf("PROBE balloon target_pages=%lu actual_pages=%u\n", target, cfg_r32(d, 4));
	for (uint64_t end = clock_ns() + hold_ms * 1000000; clock_ns() < end;) {
		stats_service();
		clock_delay_us(1000);
		/* balloon_follow=1: track the device's num_pages (every 10 ms) */
		if (follow && ++ticks % 10 == 0) {
			uint64_t want = cfg_r32(d, 0);

			if (want > limit)
				want = limit;
			if (want != inflated) {
				if (balloon_resize(pages, want, pfnbufs))
					probe_exit(1);
				probe_printf("PROBE balloon_follow num_pages=%u actual_pages=%u\n",
					     cfg_r32(d, 0), cfg_r32(d, 4));
			}
		}
	}
	if (cmdline_u64("deflate", 0)) {
		uint64_t had = inflated;

		if (balloon_resize(pages, 0, pfnbufs))
			probe_exit(1);
		probe_printf("PROBE balloon_deflate pages=%lu actual_pages=%u\n", had, cfg_r32(d, 4));
	}
	stats_service();
	probe_printf("PROBE balloon_stats stats_requests=%u irq=%s irqs=%u\n", stats_requests,
		     d->msix ? "msix" : "poll", virtio_irq_count());
}

/* For the devloop scenario: sets the device up and inflates by mib MiB;
 * returns the pages given (0 on failure, reported). */
uint64_t balloon_inflate(uint64_t mib)
{
	uint32_t *pfnbufs;
	uint8_t *pages;

	d = virtio_find(VIRTIO_ID_BALLOON, 0);
	if (!d || vdev_init(d, F_MUST_TELL_HOST | F_STATS_VQ,
			    vdev_offered(d) & F_STATS_VQ ? 3 : 2, 128))
		return 0;
	ram_total = ram_end() - 0x100000;
	pfnbufs = dma_alloc(PFNS_PER_BUF * 4 * BUFS, 4096);
	stats = dma_alloc(64, 64);
	vdev_driver_ok(d);
	if (d->features & F_STATS_VQ)
		stats_post();
	pages = dma_alloc(4096, 4096);
	if ((ram_end() - (uintptr_t)pages) / 4096 < mib * 256 + 256 ||
	    balloon_resize(pages, mib * 256, pfnbufs))
		return 0;
	return inflated;
}

/* Answers the statistics queue (devloop, between rounds). */
void balloon_service(void)
{
	if (d)
		stats_service();
}
