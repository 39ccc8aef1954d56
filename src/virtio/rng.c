/* virtio-rng (virtio 1.x §5.4): one queue of device-writable buffers,
 * filled from getrandom(2), under the shared rate limiter. */
#include <errno.h>
#include <stdlib.h>
#include <sys/random.h>

#include "vireo/log.h"
#include "vireo/ratelimit.h"
#include "vireo/state.h"
#include "vireo/virtio.h"

struct virtio_rng {
	struct virtio_dev dev;
	struct ratelimit limit;
	struct virtq_elem elem;
	uint64_t bytes;
};

/* A request larger than this is filled partially: the driver asks again. */
#define RNG_MAX_REQUEST 65536

static void rng_notify(struct virtio_dev *dev, unsigned int q)
{
	struct virtio_rng *rng = dev->opaque;
	uint8_t buf[4096];
	int ret;

	for (;;) {
		uint64_t now = ratelimit_now_ns(), wait = ratelimit_delay_ns(&rng->limit, now);
		size_t want, done = 0;

		if (wait) {
			virtio_defer(dev, q, wait);
			break;
		}
		ret = virtq_pop(&dev->vqs[q], &rng->elem);
		if (ret < 0) {
			virtio_set_broken(dev, err_get());
			break;
		}
		if (ret == 0)
			break;
		want = rng->elem.in_len < RNG_MAX_REQUEST ? rng->elem.in_len : RNG_MAX_REQUEST;
		while (done < want) {
			size_t chunk = want - done < sizeof(buf) ? want - done : sizeof(buf);
			ssize_t n = getrandom(buf, chunk, 0);

			if (n <= 0)
				break;
			done += virtq_write_in(&rng->elem, done, buf, (size_t)n);
		}
		rng->bytes += done;
		ratelimit_charge(&rng->limit, done, now);
		virtq_push(&dev->vqs[q], &rng->elem, (uint32_t)done);
	}
	virtio_notify(dev, q);
}

static const struct virtio_device_ops rng_ops = {
	.name = "rng",
	.device_id = 4,
	.pci_class = 0xff0000,
	.num_queues = 1,
	.queue_notify = rng_notify,
	.state_type = STATE_SEC_VIRTIO_RNG, /* nothing of its own: served in queue_notify */
};

int virtio_rng_create(struct vm *vm, struct pci_bus *bus, uint64_t bps, struct virtio_rng **out)
{
	struct virtio_rng *rng = calloc(1, sizeof(*rng));
	int ret;

	if (!rng)
		return err_set(-ENOMEM, "out of memory");
	ratelimit_init(&rng->limit);
	ratelimit_set(&rng->limit, bps, 0);
	ret = virtio_pci_create(&rng->dev, vm, bus, &rng_ops, rng, 0);
	if (ret) {
		free(rng);
		return ret;
	}
	*out = rng;
	return 0;
}

struct virtio_dev *virtio_rng_dev(struct virtio_rng *rng)
{
	return &rng->dev;
}

void virtio_rng_destroy(struct virtio_rng *rng)
{
	if (!rng)
		return;
	virtio_pci_destroy(&rng->dev);
	free(rng);
}
