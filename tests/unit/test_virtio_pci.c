/* The virtio-pci transport and the balloon against a hostile driver, on a
 * VM without KVM (vm_fd -1: MSIs are counted, not delivered): MSI-X
 * pending bits, the unwinding of device creation, and the balloon's
 * bound on one request. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include <linux/kvm.h>

#include "vireo/block.h"
#include "vireo/pci.h"
#include "vireo/state.h"
#include "vireo/virtio.h"

#define RAM      (64ULL << 20)
#define DESC     0x10000ULL
#define AVAIL    0x20000ULL
#define USED     0x30000ULL
#define PFNBUF   (32ULL << 20)
#define PFNBUF_LEN (16U << 20)

static struct vm vm;
static struct pci_bus bus;

static int setup(void **state)
{
	(void)state;
	memset(&vm, 0, sizeof(vm));
	vm.vm_fd = -1;
	bus_init(&vm.pio);
	bus_init(&vm.mmio);
	pthread_mutex_init(&vm.irq_lock, NULL);
	vm.routes = calloc(VM_MAX_ROUTES, sizeof(*vm.routes));
	assert_non_null(vm.routes);
	assert_int_equal(guest_memory_init(&vm.mem, RAM, false), 0);
	assert_int_equal(pci_init(&bus, NULL), 0);
	alarm(60); /* a hang (the bugs these tests are about) fails the run */
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	alarm(0);
	guest_memory_free(&vm.mem);
	free(vm.routes);
	bus_destroy(&vm.pio);
	bus_destroy(&vm.mmio);
	return 0;
}

static uint64_t bar0(unsigned int slot)
{
	return pci_config_read(&bus, slot << 3, 0x10, 4) & ~0xfULL;
}

static void bar_write(unsigned int slot, uint64_t off, uint64_t v, unsigned int len)
{
	uint8_t data[8];

	memcpy(data, &v, len);
	assert_true(bus_access(&vm.mmio, bar0(slot) + off, data, len, true));
}

static uint64_t bar_read(unsigned int slot, uint64_t off, unsigned int len)
{
	uint64_t v = 0;

	assert_true(bus_access(&vm.mmio, bar0(slot) + off, (uint8_t *)&v, len, false));
	return v;
}

static void nop_notify(struct virtio_dev *dev, unsigned int q)
{
	(void)dev;
	(void)q;
}

static const struct virtio_device_ops test_ops = {
	.name = "test", .device_id = 4, .pci_class = 0xff0000, .num_queues = 2,
	.queue_notify = nop_notify,
};

/* Queue 0 fires on vector 0 while the function, then the vector, is
 * masked: the message waits in the PBA and goes out on the unmask. */
static void msix_pending_survives_masks(void **state)
{
	static struct virtio_dev dev;
	unsigned int slot;

	(void)state;
	memset(&dev, 0, sizeof(dev));
	assert_int_equal(virtio_pci_create(&dev, &vm, &bus, &test_ops, NULL, 0), 0);
	slot = dev.pci.slot;
	bar_write(slot, 0x4000, 0xfee00000, 4);   /* vector 0: address, data, unmasked */
	bar_write(slot, 0x4008, 0x31, 4);
	bar_write(slot, 0x400c, 0, 4);
	bar_write(slot, 22, 0, 2);                /* queue 0 -> vector 0 */
	bar_write(slot, 26, 0, 2);
	pci_config_write(&bus, slot << 3, 0x42, 2, 0xc000); /* enable + function mask */

	pthread_mutex_lock(&dev.lock);
	virtio_notify(&dev, 0);
	pthread_mutex_unlock(&dev.lock);
	assert_int_equal(dev.stats.interrupts, 0);
	assert_int_equal(bar_read(slot, 0x6000, 8), 1);
	pci_config_write(&bus, slot << 3, 0x42, 2, 0x8000); /* function mask cleared */
	assert_int_equal(dev.stats.interrupts, 1);
	assert_int_equal(bar_read(slot, 0x6000, 8), 0);

	bar_write(slot, 0x400c, 1, 4);            /* vector mask */
	pthread_mutex_lock(&dev.lock);
	virtio_notify(&dev, 0);
	pthread_mutex_unlock(&dev.lock);
	assert_int_equal(dev.stats.interrupts, 1);
	assert_int_equal(bar_read(slot, 0x6000, 8), 1);
	bar_write(slot, 0x400c, 0, 4);
	assert_int_equal(dev.stats.interrupts, 2);
	assert_int_equal(bar_read(slot, 0x6000, 8), 0);
	virtio_pci_destroy(&dev);
}

static unsigned int open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	unsigned int n = 0;

	assert_non_null(d);
	while (readdir(d))
		n++;
	closedir(d);
	return n - 3; /* ".", ".." and the directory's own descriptor */
}

/* The descriptor limit that leaves exactly `free_slots` new descriptors. */
static rlim_t limit_leaving(int free_slots)
{
	int fd = 0;

	for (;; fd++)
		if (fcntl(fd, F_GETFD) < 0 && free_slots-- == 0)
			return (rlim_t)fd;
}

/* Device creation under every descriptor shortage on the way: a failure
 * leaves no descriptor open and no device on the bus, a success works. */
static void create_unwinds_on_every_failure(void **state)
{
	static struct virtio_dev dev;
	struct rlimit saved, lim;
	int failures = 0, successes = 0;
	unsigned int base;

	(void)state;
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &saved), 0);
	base = open_fds();
	for (int extra = 0; extra < 24; extra++) {
		int ret;

		memset(&dev, 0, sizeof(dev));
		lim = (struct rlimit){ limit_leaving(extra), saved.rlim_max };
		assert_int_equal(setrlimit(RLIMIT_NOFILE, &lim), 0);
		ret = virtio_pci_create(&dev, &vm, &bus, &test_ops, NULL, 0);
		assert_int_equal(setrlimit(RLIMIT_NOFILE, &saved), 0);
		if (ret == 0) {
			successes++;
			virtio_pci_destroy(&dev);
		} else {
			failures++;
			assert_int_equal(ret, -EMFILE);
		}
		assert_int_equal(open_fds(), base);
		assert_int_equal(pci_config_read(&bus, 1 << 3, 0, 4), 0xffffffff);
	}
	assert_true(failures > 5);
	assert_true(successes > 0);
}

struct stats_call {
	struct virtio_balloon *b;
	struct balloon_stats st;
	volatile bool done;
};

static void *get_stats(void *arg)
{
	struct stats_call *c = arg;

	virtio_balloon_get_stats(c->b, &c->st);
	c->done = true;
	return NULL;
}

/* The control plane asks for balloon figures (dev->lock) while the guest's
 * request is served: it must be answered within `ms`. */
static bool stats_answered_within(struct virtio_balloon *b, unsigned int ms, struct balloon_stats *st)
{
	struct stats_call c = { .b = b };
	pthread_t t;

	assert_int_equal(pthread_create(&t, NULL, get_stats, &c), 0);
	for (unsigned int i = 0; i < ms && !c.done; i++)
		usleep(1000);
	if (!c.done) {
		/* The thread is stuck behind the device lock: nothing can be
		 * torn down safely, so end the test run here. */
		fprintf(stderr, "balloon statistics not answered within %u ms\n", ms);
		_exit(1);
	}
	pthread_join(t, NULL);
	*st = c.st;
	return true;
}

/* Drives the balloon as a driver would, up to DRIVER_OK, queue 0 (inflate)
 * on the rings at DESC/AVAIL/USED. */
static void balloon_driver_up(unsigned int slot)
{
	bar_write(slot, 20, 1 | 2, 1);
	bar_write(slot, 8, 1, 4);
	bar_write(slot, 12, 1, 4);                /* VERSION_1 */
	bar_write(slot, 20, 1 | 2 | 8, 1);
	bar_write(slot, 22, 0, 2);
	bar_write(slot, 24, 256, 2);
	bar_write(slot, 32, DESC, 8);
	bar_write(slot, 40, AVAIL, 8);
	bar_write(slot, 48, USED, 8);
	bar_write(slot, 28, 1, 2);
	bar_write(slot, 20, 1 | 2 | 8 | 4, 1);
}

static void balloon_offer(unsigned int slot, unsigned int ndesc, uint32_t len)
{
	uint8_t *ram = guest_ptr(&vm.mem, 0, RAM);
	uint16_t *avail = (uint16_t *)(ram + AVAIL);

	for (unsigned int i = 0; i < ndesc; i++) {
		struct { uint64_t addr; uint32_t len; uint16_t flags, next; } __attribute__((packed))
			d = { PFNBUF, len, i + 1 < ndesc ? 1 : 0, (uint16_t)(i + 1) };

		memcpy(ram + DESC + 16 * i, &d, sizeof(d));
	}
	avail[2 + avail[1] % 256] = 0;
	__atomic_store_n(&avail[1], (uint16_t)(avail[1] + 1), __ATOMIC_RELEASE);
	bar_write(slot, 0x3000, 0, 2);            /* kick queue 0 (no ioeventfd here) */
}

static uint16_t used_idx(void)
{
	return __atomic_load_n((uint16_t *)guest_ptr(&vm.mem, USED + 2, 2), __ATOMIC_ACQUIRE);
}

/* Waits up to 5 s for the device's status to satisfy mask. */
static bool status_has(unsigned int slot, uint8_t bits)
{
	for (int i = 0; i < 5000; i++) {
		if ((bar_read(slot, 20, 1) & bits) == bits)
			return true;
		usleep(1000);
	}
	return false;
}

/* One inflate request naming 64 overlapping 16 MiB buffers of scattered
 * page numbers (256 M PFNs, each its own discard): refused at once
 * (NEEDS_RESET), and the control plane is answered meanwhile. A request of
 * the size Linux sends still frees its pages. */
static void balloon_request_is_bounded(void **state)
{
	struct virtio_balloon *b;
	struct balloon_stats st;
	uint32_t *pfns = guest_ptr(&vm.mem, PFNBUF, PFNBUF_LEN);
	unsigned int slot;
	uint16_t before;

	(void)state;
	for (uint32_t i = 0; i < PFNBUF_LEN / 4; i++)
		pfns[i] = (i * 2) % (uint32_t)(PFNBUF >> 12);  /* no two consecutive */
	assert_int_equal(virtio_balloon_create(&vm, &bus, 0, &b), 0);
	slot = 1;
	balloon_driver_up(slot);
	assert_false(bar_read(slot, 20, 1) & VIRTIO_STATUS_NEEDS_RESET);

	balloon_offer(slot, 64, PFNBUF_LEN);
	assert_true(stats_answered_within(b, 1000, &st));
	assert_true(status_has(slot, VIRTIO_STATUS_NEEDS_RESET));

	/* After a reset, 256 PFNs (Linux's request size) are served. */
	bar_write(slot, 20, 0, 1);
	memset(guest_ptr(&vm.mem, 0, 0x40000), 0, 0x40000);
	for (uint32_t i = 0; i < 256; i++)
		pfns[i] = (uint32_t)((48ULL << 20) >> 12) + 2 * i;
	balloon_driver_up(slot);
	before = used_idx();
	balloon_offer(slot, 1, 256 * 4);
	for (int i = 0; i < 5000 && used_idx() == before; i++)
		usleep(1000);
	assert_int_equal(used_idx(), (uint16_t)(before + 1));
	assert_true(stats_answered_within(b, 1000, &st));
	assert_int_equal(st.inflated_pages, 256);
	assert_false(bar_read(slot, 20, 1) & VIRTIO_STATUS_NEEDS_RESET);
	virtio_balloon_destroy(b);
}

/* ---- snapshots ---- */

static unsigned int notifies, idle_calls;

static void count_notify(struct virtio_dev *dev, unsigned int q)
{
	(void)dev;
	(void)q;
	__atomic_add_fetch(&notifies, 1, __ATOMIC_SEQ_CST);
}

/* A request in flight until the third look. */
static bool idle_third_time(struct virtio_dev *dev)
{
	(void)dev;
	return ++idle_calls >= 3;
}

static const struct virtio_device_ops state_ops = {
	.name = "state", .device_id = 4, .pci_class = 0xff0000, .num_queues = 2,
	.queue_notify = count_notify, .idle = idle_third_time,
	.state_type = STATE_SEC_VIRTIO_RNG,
};

static bool notified_within(unsigned int want, unsigned int ms)
{
	for (unsigned int i = 0; i < ms; i++) {
		if (__atomic_load_n(&notifies, __ATOMIC_SEQ_CST) >= want)
			return true;
		usleep(1000);
	}
	return false;
}

/* Quiesce waits until the model has nothing in flight; meanwhile and
 * after, no request is served; unquiesce looks at every live queue. */
static void quiesce_drains_and_holds(void **state)
{
	static struct virtio_dev dev;

	(void)state;
	memset(&dev, 0, sizeof(dev));
	notifies = idle_calls = 0;
	assert_int_equal(virtio_pci_create(&dev, &vm, &bus, &state_ops, NULL, 0), 0);
	balloon_driver_up(dev.pci.slot);          /* queue 0 live, DRIVER_OK */
	assert_int_equal(virtio_quiesce(&dev), 0);
	assert_int_equal(idle_calls, 3);
	pthread_mutex_lock(&dev.lock);
	virtio_serve(&dev, 0);
	pthread_mutex_unlock(&dev.lock);
	assert_int_equal(notifies, 0);
	/* Nested: only the last unquiesce serves again. */
	assert_int_equal(virtio_quiesce(&dev), 0);
	virtio_unquiesce(&dev);
	pthread_mutex_lock(&dev.lock);
	virtio_serve(&dev, 0);
	pthread_mutex_unlock(&dev.lock);
	assert_int_equal(notifies, 0);
	virtio_unquiesce(&dev);
	assert_true(notified_within(1, 5000));
	virtio_pci_destroy(&dev);
}

/* The section of dev, with `damage` applied to the device first. */
static struct state_reader *saved(struct virtio_dev *dev, void (*damage)(struct virtio_dev *))
{
	struct state_header h = { .ncpus = 1, .mem_size = RAM };
	struct state_writer *w = state_writer_new(&h);
	struct virtio_dev copy = *dev;
	struct state_reader *r;
	const uint8_t *buf;
	size_t len;

	assert_non_null(w);
	if (damage)
		damage(dev);
	virtio_save(dev, w, 0);
	*dev = copy;
	assert_int_equal(state_writer_finish(w, &buf, &len), 0);
	assert_int_equal(state_reader_open(buf, len, &r), 0);
	state_writer_free(w);
	return r;
}

static void bad_size(struct virtio_dev *d) { d->vqs[0].size = 3; }
static void outside_ram(struct virtio_dev *d) { d->vqs[0].used_gpa = RAM - 8; }
static void bad_vector(struct virtio_dev *d) { d->vqs[1].msix_vector = 100; }
static void foreign_features(struct virtio_dev *d) { d->driver_features |= 1ULL << 40; }
static void readonly_bits(struct virtio_dev *d) { d->pci.config[0] ^= 1; }

/* A device's state comes back whole into a fresh one; a section a guest
 * could never have produced is refused, and nothing of it applied. */
static void restore_checks_before_applying(void **state)
{
	static struct virtio_dev a, b;
	void (*const damages[])(struct virtio_dev *) = {
		bad_size, outside_ram, bad_vector, foreign_features, readonly_bits,
	};
	struct state_reader *r;

	(void)state;
	memset(&a, 0, sizeof(a));
	memset(&b, 0, sizeof(b));
	notifies = idle_calls = 0;
	assert_int_equal(virtio_pci_create(&a, &vm, &bus, &state_ops, NULL, 0), 0);
	assert_int_equal(virtio_pci_create(&b, &vm, &bus, &state_ops, NULL, 0), 0);
	balloon_driver_up(a.pci.slot);
	a.vqs[0].last_avail = a.vqs[0].used_idx = 7;
	a.config_generation = 5;
	for (unsigned int i = 0; i < sizeof(damages) / sizeof(damages[0]); i++) {
		r = saved(&a, damages[i]);
		assert_int_equal(virtio_restore(&b, r, 0), -EINVAL);
		state_reader_free(r);
		assert_int_equal(b.status, 0);
		assert_false(b.vqs[0].enabled);
	}
	r = saved(&a, NULL);
	assert_int_equal(virtio_restore(&b, r, 0), 0);
	state_reader_free(r);
	assert_int_equal(b.status, a.status);
	assert_true(b.vqs[0].enabled && !b.vqs[1].enabled);
	assert_int_equal(b.vqs[0].desc_gpa, DESC);
	assert_int_equal(b.vqs[0].last_avail, 7);
	assert_int_equal(b.vqs[0].used_idx, 7);
	assert_int_equal(b.config_generation, 5);
	assert_int_equal(b.driver_features, a.driver_features);
	virtio_pci_destroy(&a);
	virtio_pci_destroy(&b);
}

/* ---- multi-queue virtio-blk ---- */

#define MQ_RING(q) (0x100000ULL + 0x10000ULL * (q))	/* desc; avail +0x1000, used +0x2000 */
#define MQ_QSIZE   16

static void mq_driver_up(unsigned int slot, unsigned int nq)
{
	bar_write(slot, 20, 1 | 2, 1);
	bar_write(slot, 8, 1, 4);
	bar_write(slot, 12, 1, 4);                /* VERSION_1 */
	bar_write(slot, 8, 0, 4);
	bar_write(slot, 12, 1u << 12, 4);         /* VIRTIO_BLK_F_MQ */
	bar_write(slot, 20, 1 | 2 | 8, 1);
	for (unsigned int q = 0; q < nq; q++) {
		bar_write(slot, 22, q, 2);
		bar_write(slot, 24, MQ_QSIZE, 2);
		bar_write(slot, 26, q + 1, 2);    /* queue q -> vector q + 1 */
		bar_write(slot, 32, MQ_RING(q), 8);
		bar_write(slot, 40, MQ_RING(q) + 0x1000, 8);
		bar_write(slot, 48, MQ_RING(q) + 0x2000, 8);
		bar_write(slot, 28, 1, 2);
	}
	bar_write(slot, 20, 1 | 2 | 8 | 4, 1);
}

/* One read of sector `sector` on queue q: header, 512 data bytes, status. */
static void mq_read(unsigned int slot, unsigned int q, uint64_t sector)
{
	uint8_t *ram = guest_ptr(&vm.mem, 0, RAM);
	uint64_t b = MQ_RING(q);
	uint16_t *avail = (uint16_t *)(ram + b + 0x1000);
	struct { uint32_t type, reserved; uint64_t sector; } h = { 0, 0, sector };
	struct { uint64_t addr; uint32_t len; uint16_t flags, next; } __attribute__((packed)) d[3] = {
		{ b + 0x3000, 16, 1, 1 }, { b + 0x4000, 512, 1 | 2, 2 }, { b + 0x5000, 1, 2, 0 },
	};

	memcpy(ram + b + 0x3000, &h, sizeof(h));
	ram[b + 0x5000] = 0xff;
	memcpy(ram + b, d, sizeof(d));
	avail[2 + avail[1] % MQ_QSIZE] = 0;
	__atomic_store_n(&avail[1], (uint16_t)(avail[1] + 1), __ATOMIC_RELEASE);
	bar_write(slot, 0x3000 + 4 * q, q, 2);    /* kick queue q (no ioeventfd here) */
}

static uint16_t mq_used(unsigned int q)
{
	return __atomic_load_n((uint16_t *)guest_ptr(&vm.mem, MQ_RING(q) + 0x2000 + 2, 2),
			       __ATOMIC_ACQUIRE);
}

/* A disk with 8 queues has 9 MSI-X vectors (config + one per queue) and
 * says 8 in both configs; a request on a queue is answered on that
 * queue's used ring and interrupts that queue's vector (every vector
 * masked: the PBA shows which fired), not queue 0's. */
static void blk_multiqueue_answers_on_each_queue(void **state)
{
	char path[] = "/tmp/vireo-test-mq-XXXXXX";
	int fd = mkstemp(path);
	struct disk_config cfg = { .path = path, .format = "raw", .queues = 8,
				   .aio = BLOCK_AIO_THREADS };	/* the same on every host */
	struct virtio_blk *blk;
	unsigned int slot;

	(void)state;
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, 1 << 20), 0);
	close(fd);
	assert_int_equal(virtio_blk_create(&vm, &bus, &cfg, &blk), 0);
	unlink(path);
	slot = virtio_blk_dev(blk)->pci.slot;
	assert_int_equal(pci_config_read(&bus, slot << 3, 0x42, 2) & 0x7ff, 8);
	assert_int_equal(bar_read(slot, 18, 2), 8);
	assert_int_equal(bar_read(slot, 0x2000 + 34, 2), 8);
	bar_write(slot, 0, 0, 4);
	assert_true(bar_read(slot, 4, 4) & (1u << 12));
	pci_config_write(&bus, slot << 3, 0x42, 2, 0x8000);	/* MSI-X on, vectors masked */
	mq_driver_up(slot, 8);
	mq_read(slot, 7, 1);
	mq_read(slot, 2, 2);
	for (int i = 0; i < 5000 && (mq_used(7) != 1 || mq_used(2) != 1); i++)
		usleep(1000);
	assert_int_equal(mq_used(7), 1);
	assert_int_equal(mq_used(2), 1);
	assert_int_equal(mq_used(0), 0);
	assert_int_equal(*(uint8_t *)guest_ptr(&vm.mem, MQ_RING(7) + 0x5000, 1), 0);
	for (int i = 0; i < 5000 && bar_read(slot, 0x6000, 8) != ((1u << 8) | (1u << 3)); i++)
		usleep(1000);
	assert_int_equal(bar_read(slot, 0x6000, 8), (1u << 8) | (1u << 3));
	virtio_blk_destroy(blk);
}

/* In a firmware boot a driver without MSI-X that asks for no interrupts
 * (SeaBIOS) polls: its kick has no ioeventfd, and returns only once the
 * request is done, data and status in place. The OS's driver turns MSI-X on, and kicks go back to
 * ioeventfds. */
static void firmware_kick_returns_with_the_request_done(void **state)
{
	char path[] = "/tmp/vireo-test-fwkick-XXXXXX";
	int fd = mkstemp(path);
	struct disk_config cfg = { .path = path, .format = "raw", .queues = 2,
				   .aio = BLOCK_AIO_THREADS };
	uint8_t sector[512];
	struct virtio_blk *blk;
	struct virtio_dev *dev;
	unsigned int slot;

	(void)state;
	memset(sector, 0xab, sizeof(sector));
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, 1 << 20), 0);
	assert_int_equal(pwrite(fd, sector, sizeof(sector), 512), 512);
	close(fd);
	vm.firmware = true;
	assert_int_equal(virtio_blk_create(&vm, &bus, &cfg, &blk), 0);
	unlink(path);
	dev = virtio_blk_dev(blk);
	slot = dev->pci.slot;
	assert_false(dev->ioeventfds_on);
	mq_driver_up(slot, 1);
	*(uint16_t *)guest_ptr(&vm.mem, MQ_RING(0) + 0x1000, 2) = 1; /* NO_INTERRUPT: it polls */
	for (unsigned int i = 0; i < 20; i++) {
		mq_read(slot, 0, 1);
		assert_int_equal(mq_used(0), i + 1);
		assert_int_equal(*(uint8_t *)guest_ptr(&vm.mem, MQ_RING(0) + 0x5000, 1), 0);
		assert_memory_equal(guest_ptr(&vm.mem, MQ_RING(0) + 0x4000, 512), sector, 512);
		memset(guest_ptr(&vm.mem, MQ_RING(0) + 0x4000, 512), 0, 512);
	}
	pci_config_write(&bus, slot << 3, 0x42, 2, 0x8000);	/* MSI-X on */
	assert_true(dev->ioeventfds_on);
	virtio_blk_destroy(blk);
	vm.firmware = false;
}

static const struct virtio_device_ops mq_state_ops = {
	.name = "mq", .device_id = 4, .pci_class = 0xff0000, .num_queues = 8,
	.features = 1u << 12, .queue_notify = nop_notify, .state_type = STATE_SEC_VIRTIO_RNG,
}, one_state_ops = {
	.name = "one", .device_id = 4, .pci_class = 0xff0000, .num_queues = 1,
	.queue_notify = nop_notify, .state_type = STATE_SEC_VIRTIO_RNG,
};

/* Eight queues and nine vectors come back whole (queue 7 on vector 8,
 * beyond the 8-vector layout); a device with another queue count refuses
 * the section. */
static void multiqueue_state_round_trip(void **state)
{
	static struct virtio_dev a, b, one;
	struct state_reader *r;

	(void)state;
	memset(&a, 0, sizeof(a));
	memset(&b, 0, sizeof(b));
	memset(&one, 0, sizeof(one));
	assert_int_equal(virtio_pci_create(&a, &vm, &bus, &mq_state_ops, NULL, 0), 0);
	assert_int_equal(virtio_pci_create(&b, &vm, &bus, &mq_state_ops, NULL, 0), 0);
	assert_int_equal(virtio_pci_create(&one, &vm, &bus, &one_state_ops, NULL, 0), 0);
	assert_int_equal(a.nvectors, 9);
	assert_int_equal(one.nvectors, 8);
	mq_driver_up(a.pci.slot, 8);
	bar_write(a.pci.slot, 0x4000 + 16 * 8, 0xfee00000, 4);	/* vector 8's address */
	a.vqs[7].last_avail = a.vqs[7].used_idx = 5;
	r = saved(&a, NULL);
	assert_int_equal(virtio_restore(&one, r, 0), -EINVAL);
	assert_int_equal(virtio_restore(&b, r, 0), 0);
	state_reader_free(r);
	assert_true(b.vqs[7].enabled);
	assert_int_equal(b.vqs[7].msix_vector, 8);
	assert_int_equal(b.vqs[7].desc_gpa, MQ_RING(7));
	assert_int_equal(b.vqs[7].last_avail, 5);
	assert_int_equal(b.msix[8][0], 0xfee00000);
	virtio_pci_destroy(&a);
	virtio_pci_destroy(&b);
	virtio_pci_destroy(&one);
}

/* More queues than the limit are refused with a message, not clipped. */
static void blk_too_many_queues_refused(void **state)
{
	struct disk_config cfg = { .path = "/nonexistent", .queues = VIRTIO_BLK_MAX_QUEUES + 1 };
	struct virtio_blk *blk;

	(void)state;
	assert_int_equal(virtio_blk_create(&vm, &bus, &cfg, &blk), -EINVAL);
	assert_int_equal(virtio_blk_default_queues(1), 1);
	assert_int_equal(virtio_blk_default_queues(4), 4);
	assert_int_equal(virtio_blk_default_queues(64), VIRTIO_BLK_MAX_QUEUES);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(msix_pending_survives_masks, setup, teardown),
		cmocka_unit_test_setup_teardown(create_unwinds_on_every_failure, setup, teardown),
		cmocka_unit_test_setup_teardown(balloon_request_is_bounded, setup, teardown),
		cmocka_unit_test_setup_teardown(quiesce_drains_and_holds, setup, teardown),
		cmocka_unit_test_setup_teardown(restore_checks_before_applying, setup, teardown),
		cmocka_unit_test_setup_teardown(blk_multiqueue_answers_on_each_queue, setup,
						teardown),
		cmocka_unit_test_setup_teardown(blk_too_many_queues_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(firmware_kick_returns_with_the_request_done, setup,
						teardown),
		cmocka_unit_test_setup_teardown(multiqueue_state_round_trip, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
