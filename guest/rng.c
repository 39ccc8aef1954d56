/* virtio-rng and the "rng" scenario: read N bytes (rng=N or n=N, default
 * 65536) in buffers of up to 4 KiB, four in flight; report how many byte
 * values occur (a real entropy source gives 256 for N >= a few KiB). */
#include "virtio.h"

#define RNG_BUF		4096
#define RNG_INFLIGHT	4

void scn_rng(const char *arg)
{
	struct vdev *d = virtio_find(VIRTIO_ID_RNG, 0);
	uint64_t want = parse_u64(arg, cmdline_u64("n", 65536)), got = 0, requested = 0;
	uint32_t seen[256] = { 0 }, distinct = 0, crc = 0;
	uint8_t *bufs;
	int inflight = 0;

	if (!d) {
		probe_printf("PROBE rng_error=no-device\n");
		probe_exit(1);
	}
	if (vdev_init(d, 0, 1, 64))
		probe_exit(1);
	vdev_driver_ok(d);
	bufs = dma_alloc(RNG_BUF * RNG_INFLIGHT, 4096);
	while (got < want) {
		while (inflight < RNG_INFLIGHT && requested < want) {
			/* The cookie is the buffer (never NULL). */
			uint8_t *p = bufs + RNG_BUF * (uint64_t)(requested / RNG_BUF % RNG_INFLIGHT);
			uint32_t n = want - requested < RNG_BUF ? (uint32_t)(want - requested) : RNG_BUF;
			struct vq_buf v = { p, n };

			if (vq_add(&d->vq[0], &v, 0, 1, p) < 0)
				break;
			requested += RNG_BUF;
			inflight++;
		}
		vq_kick(&d->vq[0]);
		uint32_t len;
		uint8_t *p = vq_get_wait(&d->vq[0], &len, 10000);

		if (!p) {
			probe_printf("PROBE rng_error=timeout got=%lu\n", got);
			break;
		}
		inflight--;
		if (len > RNG_BUF)
			len = RNG_BUF;
		if (len > want - got)
			len = (uint32_t)(want - got);
		for (uint32_t i = 0; i < len; i++)
			distinct += !seen[p[i]]++;
		crc = crc32_update(crc, p, len);
		got += len;
		/* A short buffer leaves a gap in "requested": ask again. */
		if (!inflight && requested >= want && got < want)
			requested = got;
	}
	probe_printf("PROBE rng bytes=%lu distinct=%u\n", got, distinct);
	probe_printf("PROBE rng_stats irq=%s irqs=%u kicks=%lu crc=%08x\n", d->msix ? "msix" : "poll",
		     virtio_irq_count(), d->vq[0].kicks, crc);
}
