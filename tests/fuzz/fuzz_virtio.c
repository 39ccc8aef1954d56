/* libFuzzer targets for what a guest writes into virtqueues: the split-ring
 * walker alone (FUZZ_DEV_vq) and each device's request handling where it
 * runs without KVM (FUZZ_DEV_blk, _balloon, _net: the device's .c file is
 * included so that its queue handler is reachable). The transport is
 * stubbed: no PCI, no interrupts, no I/O thread.
 *
 * Input: a 32-byte header, and the whole input (header included) is also
 * guest RAM from address 0, so rings, descriptors and buffers are all made
 * of fuzzer bytes. Header (little-endian):
 *   [0] queue size 2^(n % 9)   [1] bit 0 event idx, bit 1 mergeable rx
 *   buffers (net), bits 2-3 the queue kicked, bit 4 unpop and pop again
 *   [2] last_avail u16   [4] desc u32   [8] avail u32   [12] used u32
 *   (ring addresses modulo RAM + 64; rings misaligned or outside RAM
 *   are refused at queue enable by the transport, so the target skips them)
 *   [16] u16 length of the packet the tap delivers (net receive) */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "vireo/log.h"
#include "vireo/virtio.h"
#include "vireo/vmm.h"

#if defined(FUZZ_DEV_blk)
#include "../../src/virtio/blk.c"
#include "../../src/virtio/blk-io.c"	/* linked; the target runs requests inline */
#elif defined(FUZZ_DEV_balloon)
#include "../../src/virtio/balloon.c"
#elif defined(FUZZ_DEV_net)
#include "../../src/virtio/net.c"
#elif !defined(FUZZ_DEV_vq)
#error "define FUZZ_DEV_vq, _blk, _balloon or _net"
#endif

#define RAM (64 * 1024)
#define HDR 32

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct vm fvm;

/* ---- the transport, stubbed ---- */

void virtio_notify(struct virtio_dev *dev, unsigned int q)
{
	(void)dev;
	(void)q;
}

void virtio_config_changed(struct virtio_dev *dev)
{
	dev->config_generation++;
}

void virtio_set_broken(struct virtio_dev *dev, const char *why)
{
	(void)why;
	dev->status |= VIRTIO_STATUS_NEEDS_RESET;
	dev->stats.ring_errors++;
}

bool virtio_feature(const struct virtio_dev *dev, uint64_t bit)
{
	return dev->driver_features & bit;
}

void virtio_defer(struct virtio_dev *dev, unsigned int q, uint64_t ns)
{
	(void)ns;
	dev->deferred |= 1u << q;
}

void virtio_undefer(struct virtio_dev *dev)
{
	dev->deferred = 0;
}

void virtio_serve(struct virtio_dev *dev, unsigned int q)
{
	(void)dev, (void)q;
}

int virtio_pci_create(struct virtio_dev *dev, struct vm *vm, struct pci_bus *bus,
		      const struct virtio_device_ops *ops, void *opaque, unsigned int config_size)
{
	(void)dev, (void)vm, (void)bus, (void)ops, (void)opaque, (void)config_size;
	return -ENOSYS;
}

void virtio_pci_destroy(struct virtio_dev *dev)
{
	(void)dev;
}

/* As the transport's I/O thread calls a device: with dev->lock held. */
static inline __attribute__((unused)) void notify(struct virtio_dev *dev, unsigned int q,
			  void (*fn)(struct virtio_dev *dev, unsigned int q))
{
	pthread_mutex_lock(&dev->lock);
	fn(dev, q);
	pthread_mutex_unlock(&dev->lock);
}

/* ---- guest RAM and the queue ---- */

static uint32_t le32(const uint8_t *p)
{
	return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Fills RAM from the input and the queue from its header; false if the
 * transport would have refused to enable such a queue (virtq_rings_ok()). */
static bool setup_queue(const uint8_t *data, size_t size, struct virtq *vq)
{
	if (!fvm.mem.host) {
		/* Plain memory, not guest_memory_init()'s memfd: the balloon's
		 * discards then fail at once (and are counted) instead of
		 * punching holes that every run faults back in. */
		fvm.mem = (struct guest_memory){ .fd = -1, .host = aligned_alloc(4096, RAM),
						 .size = RAM, .nregions = 1 };
		fvm.mem.regions[0] = (struct mem_region){ 0, RAM, 0 };
		if (!fvm.mem.host)
			abort();
	}
	memset(fvm.mem.host, 0, RAM);
	memcpy(fvm.mem.host, data, size < RAM ? size : RAM);
	*vq = (struct virtq){
		.size = (uint16_t)(1u << (data[0] % 9)), .enabled = true,
		.event_idx = data[1] & 1, .last_avail = (uint16_t)(data[2] | data[3] << 8),
		.desc_gpa = le32(data + 4) % (RAM + 64), .avail_gpa = le32(data + 8) % (RAM + 64),
		.used_gpa = le32(data + 12) % (RAM + 64), .mem = &fvm.mem,
	};
	return virtq_rings_ok(vq);
}

#if defined(FUZZ_DEV_vq)
/* What every device does with a chain: read it all, fill it all, return it. */
static void check_elem(const struct virtq_elem *e)
{
	uint64_t out = 0, in = 0;

	if (e->out_num + e->in_num > VIRTQ_MAX_SEGS)
		abort();
	for (unsigned int i = 0; i < e->out_num + e->in_num; i++)
		*(i < e->out_num ? &out : &in) += e->iov[i].iov_len;
	if (out != e->out_len || in != e->in_len)
		abort();	/* a total that wrapped */
}

static void run(const uint8_t *data, size_t size, struct virtq *vq)
{
	static struct virtq_elem e;
	static uint8_t buf[RAM];
	unsigned int rounds = 2u * vq->size + 2;

	(void)size;
	for (unsigned int i = 0; i < rounds; i++) {
		int ret = virtq_pop(vq, &e);

		if (ret <= 0)
			break;
		if ((data[1] & 0x10) && i == 0) {
			virtq_unpop(vq, 1);
			if (virtq_pop(vq, &e) != 1)
				abort();
		}
		check_elem(&e);
		if (virtq_read_out(&e, 0, buf, sizeof(buf)) > e.out_len)
			abort();
		if (virtq_write_in(&e, 1, buf, sizeof(buf)) > e.in_len)
			abort();
		virtq_push(vq, &e, e.in_len);
		virtq_needs_interrupt(vq);
	}
}

#elif defined(FUZZ_DEV_blk)
static void run(const uint8_t *data, size_t size, struct virtq *vq)
{
	static struct virtio_blk blk;
	static struct blockdev *bd;

	(void)data;
	(void)size;
	if (!bd) {
		char path[] = "/tmp/vireo-fuzz-blk-XXXXXX";
		struct blockdev_opts bo = { .path = path, .format = "raw" };
		int fd = mkstemp(path);

		if (fd < 0 || ftruncate(fd, 1 << 20) || blockdev_open(&bo, &bd))
			abort();
		close(fd);
		unlink(path);
	}
	memset(&blk, 0, sizeof(blk));
	blk.bd = bd;
	ratelimit_init(&blk.limit);
	blk.dev.opaque = &blk;
	blk.dev.vm = &fvm;
	blk.dev.vqs[0] = *vq;
	strcpy(blk.serial, "fuzz-serial");
	pthread_mutex_init(&blk.dev.lock, NULL);
	notify(&blk.dev, 0, blk_notify);
	pthread_mutex_destroy(&blk.dev.lock);
}

#elif defined(FUZZ_DEV_balloon)
static void run(const uint8_t *data, size_t size, struct virtq *vq)
{
	static struct virtio_balloon b;
	unsigned int q = (data[1] >> 2) & 3;
	struct balloon_stats st;

	(void)size;
	memset(&b, 0, sizeof(b));
	pthread_mutex_init(&b.dev.lock, NULL);
	b.dev.opaque = &b;
	b.dev.vm = &fvm;
	b.dev.vqs[q] = *vq;
	notify(&b.dev, q, balloon_notify);
	virtio_balloon_get_stats(&b, &st);	/* hands a held stats buffer back */
	if (q == Q_STATS)
		notify(&b.dev, q, balloon_notify);
	pthread_mutex_destroy(&b.dev.lock);
}

#elif defined(FUZZ_DEV_net)
static void drain(int fd)
{
	static uint8_t junk[MAX_PACKET];

	while (recv(fd, junk, sizeof(junk), MSG_DONTWAIT) >= 0)
		;
}

static void run(const uint8_t *data, size_t size, struct virtq *vq)
{
	static struct virtio_net n;
	static int sv[2] = { -1, -1 };
	static uint8_t pkt[HDR_LEN + 4096];
	unsigned int q = (data[1] >> 2) & 1;
	size_t len = HDR_LEN + (data[16] | data[17] << 8) % 4096;

	if (sv[0] < 0 && socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0, sv))
		abort();
	memset(&n, 0, offsetof(struct virtio_net, packet));
	n.packet_len = 0;
	n.tap = sv[0];
	ratelimit_init(&n.rx_limit);
	ratelimit_init(&n.tx_limit);
	n.dev.opaque = &n;
	n.dev.vm = &fvm;
	n.dev.driver_features = (data[1] & 2) ? NET_F_MRG_RXBUF : 0;
	n.dev.vqs[q] = *vq;
	if (q == Q_RX) {
		for (size_t i = 0; i < len; i++)
			pkt[i] = data[(HDR + i) % size];
		if (send(sv[1], pkt, len, 0) < 0)
			abort();
	}
	pthread_mutex_init(&n.dev.lock, NULL);
	notify(&n.dev, q, net_notify);
	pthread_mutex_destroy(&n.dev.lock);
	drain(sv[0]);
	drain(sv[1]);
}
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct virtq vq;

	if (size < HDR || !setup_queue(data, size, &vq))
		return 0;
	run(data, size, &vq);
	return 0;
}
