/* Virtio devices (src/virtio/): split virtqueues, the virtio-pci modern
 * transport with MSI-X, and the devices on top (blk, rng, ...).
 *
 * Everything a guest writes into a ring is hostile (DESIGN §3.8): every
 * descriptor index, address, length and chain is checked; a violation marks
 * the device NEEDS_RESET, is counted and logged (rate-limited), and the VMM
 * goes on running. Ring layouts are little-endian, as virtio 1.x requires. */
#ifndef VIREO_VIRTIO_H
#define VIREO_VIRTIO_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "vireo/pci.h"
#include "vireo/vmm.h"

#define VIRTIO_F_VERSION_1        (1ULL << 32)
#define VIRTIO_F_RING_INDIRECT_DESC (1ULL << 28)
#define VIRTIO_F_RING_EVENT_IDX   (1ULL << 29)

#define VIRTIO_STATUS_ACK         1
#define VIRTIO_STATUS_DRIVER      2
#define VIRTIO_STATUS_DRIVER_OK   4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED      0x80

#define VIRTQ_MAX_SIZE  256   /* largest queue vireo offers */
#define VIRTQ_MAX_SEGS  256   /* longest chain, indirect tables included */
#define VIRTIO_NO_VECTOR 0xffff
#define VIRTIO_MAX_QUEUES  8  /* per device (multi-queue blk: docs/run.md) */
#define VIRTIO_MAX_VECTORS 64 /* MSI-X table entries the transport has room for */

/* ---- split virtqueue (virtio 1.x §2.7) ---- */

struct virtq {
	uint16_t size;          /* negotiated, a power of two <= VIRTQ_MAX_SIZE */
	bool enabled;
	uint64_t desc_gpa, avail_gpa, used_gpa;
	uint16_t msix_vector;
	uint16_t last_avail;    /* next avail ring entry to take */
	uint16_t used_idx;      /* our copy of used->idx */
	uint16_t signalled_used; /* used_idx when we last interrupted (event idx) */
	bool event_idx;
	const struct guest_memory *mem;
};

/* One descriptor chain: device-readable segments first (out), then
 * device-writable (in), as the spec requires of drivers. */
struct virtq_elem {
	uint16_t head;
	unsigned int out_num, in_num;
	uint32_t out_len, in_len;  /* total bytes of each kind (a longer chain is refused) */
	struct iovec iov[VIRTQ_MAX_SEGS];
};

/* Whether the rings are aligned as the spec requires, inside guest RAM,
 * and the used ring (device-written) clear of the other two: the transport
 * enables a queue only then. */
bool virtq_rings_ok(const struct virtq *vq);
/* The driver's avail index (false: the queue is off or its ring is not in
 * guest RAM). */
bool virtq_avail_idx(const struct virtq *vq, uint16_t *idx);
/* Whether the driver asked for no interrupts on this queue (the avail
 * ring's NO_INTERRUPT flag, without EVENT_IDX): it polls the used ring. */
bool virtq_interrupts_off(const struct virtq *vq);
/* Takes the next available chain. Returns 1 with *elem filled, 0 if the
 * ring is empty, or -EINVAL (with err_set() detail) if the guest broke the
 * ring: then the device must go to NEEDS_RESET. */
int virtq_pop(struct virtq *vq, struct virtq_elem *elem);
/* Gives back the last `count` popped chains unused (no room for them yet). */
void virtq_unpop(struct virtq *vq, unsigned int count);
/* Returns a chain to the guest with `written` bytes in its in-segments.
 * While a dirty log runs it marks all of them and the used ring written
 * (dirty_mark): a device writes a chain's buffers before it pushes it,
 * and writes guest RAM no other way but through dirty_mark(). */
void virtq_push(struct virtq *vq, const struct virtq_elem *elem, uint32_t written);
/* Whether the guest wants an interrupt for what was pushed since the last
 * call (honours VIRTQ_AVAIL_F_NO_INTERRUPT and the event index). */
bool virtq_needs_interrupt(struct virtq *vq);
/* Copies between a chain's segments and a buffer, skipping `skip` bytes of
 * the out (readable) or in (writable) part. Returns bytes copied. */
size_t virtq_read_out(const struct virtq_elem *e, size_t skip, void *buf, size_t len);
size_t virtq_write_in(const struct virtq_elem *e, size_t skip, const void *buf, size_t len);

/* ---- virtio-pci transport (virtio 1.x §4.1) ---- */

struct virtio_dev;
struct block_policy;
struct state_writer;
struct state_reader;
struct state_cursor;

/* A device model. Callbacks run on the device's own I/O thread unless
 * said otherwise. */
struct virtio_device_ops {
	const char *name;
	uint16_t device_id;            /* virtio device id: 1 net, 2 blk, 4 rng, 5 balloon */
	uint32_t pci_class;
	uint64_t features;             /* offered, VIRTIO_F_VERSION_1 included by the core */
	unsigned int num_queues;       /* 1 to VIRTIO_MAX_QUEUES */
	/* Device config space is dev->config (config_size bytes); the guest
	 * writes only through config_write (vCPU thread, optional). */
	void (*config_write)(struct virtio_dev *dev, unsigned int offset, const uint8_t *data,
			     unsigned int len);
	/* The guest kicked queue q. Pop, serve, push, then virtio_notify(). */
	void (*queue_notify)(struct virtio_dev *dev, unsigned int q);
	/* The guest reset the device: forget in-flight state. Optional. */
	void (*reset)(struct virtio_dev *dev);
	/* The driver set DRIVER_OK; negotiated features are final. Optional;
	 * vCPU thread, dev->lock held. */
	void (*activate)(struct virtio_dev *dev);
	/* dev->extra_fd became readable (edge-triggered). Optional; when set,
	 * the model fills dev->extra_fd before virtio_pci_create(). */
	void (*fd_ready)(struct virtio_dev *dev);
	/* Snapshots (virtio_save/virtio_restore): the section type, and the
	 * model's own state after the transport's. load parses and checks
	 * all of it (state_done() included) before it applies anything; it
	 * runs before the vCPUs do, dev->lock held. Both optional. */
	uint32_t state_type;
	void (*save)(struct virtio_dev *dev, struct state_writer *w);
	int (*load)(struct virtio_dev *dev, struct state_cursor *c);
	/* Whether no request is in flight (dev->lock held). Optional: a model
	 * without it finishes each request inside queue_notify. */
	bool (*idle)(struct virtio_dev *dev);
};

struct virtio_stats {
	uint64_t notifies, interrupts, ring_errors, resets;
};

struct virtio_dev {
	const struct virtio_device_ops *ops;
	void *opaque;                  /* the model's state */
	struct vm *vm;
	struct pci_device pci;
	pthread_mutex_t lock;          /* transport state below */
	uint64_t driver_features;
	uint32_t device_feature_select, driver_feature_select;
	uint16_t queue_select;
	uint16_t config_vector;
	uint8_t status;
	uint8_t isr;
	uint8_t config_generation;
	uint8_t config[256];
	unsigned int config_size;
	struct virtq vqs[VIRTIO_MAX_QUEUES];
	int kick_fd[VIRTIO_MAX_QUEUES]; /* ioeventfd per queue */
	int wake_fd;                   /* stops the I/O thread */
	int timer_fd;                  /* wakes deferred queues (rate limits) */
	int extra_fd;                  /* a host fd the model reads (a tap) */
	int epoll_fd;                  /* the I/O thread's set over the fds above */
	unsigned int deferred;         /* bit per queue waiting for timer_fd */
	pthread_t thread;
	bool thread_started;
	uint64_t bar_base;             /* where BAR0 is mapped, 0 if not */
	bool ioeventfds_on;            /* kicks go to kick_fd without an exit */
	pthread_cond_t used_cond;      /* signalled as requests are used, while */
	unsigned int kick_waiters;     /* this many vCPUs wait in kick_wait() */
	unsigned int nvectors;         /* MSI-X table size (virtio_pci_create) */
	uint32_t msix[VIRTIO_MAX_VECTORS][4]; /* MSI-X table: addr lo, addr hi, data, control */
	int msix_gsi[VIRTIO_MAX_VECTORS];     /* MSI route of each vector, -1: none yet */
	int msix_irqfd[VIRTIO_MAX_VECTORS];   /* eventfd bound to that route */
	uint64_t msix_pba;
	struct virtio_stats stats;
	unsigned int quiesced;         /* virtio_quiesce() depth: no new requests served */
	unsigned int busy;             /* the I/O thread is in a model callback */
};

/* Creates the transport for a model, puts it on the PCI bus (BAR0
 * pre-assigned in the PCI window) and starts its I/O thread. */
int virtio_pci_create(struct virtio_dev *dev, struct vm *vm, struct pci_bus *bus,
		      const struct virtio_device_ops *ops, void *opaque, unsigned int config_size);
void virtio_pci_destroy(struct virtio_dev *dev);
/* Interrupts the guest for queue q (MSI-X vector, or INTx/ISR). */
void virtio_notify(struct virtio_dev *dev, unsigned int q);
/* Device config changed: bump the generation, interrupt the driver.
 * Called with dev->lock held. */
void virtio_config_changed(struct virtio_dev *dev);
/* The guest broke a ring: set NEEDS_RESET, tell the driver, count it. */
void virtio_set_broken(struct virtio_dev *dev, const char *why);
bool virtio_feature(const struct virtio_dev *dev, uint64_t bit);
/* Serve queue q again in `ns` nanoseconds, not before (a rate limit said
 * wait). Called from queue_notify. */
void virtio_defer(struct virtio_dev *dev, unsigned int q, uint64_t ns);
/* Serve the deferred queues now (a limit changed). Any thread; takes
 * dev->lock. */
void virtio_undefer(struct virtio_dev *dev);
/* Serves queue q now if the driver is ready and q is not deferred (the
 * model calls it when it can take requests again). dev->lock held. */
void virtio_serve(struct virtio_dev *dev, unsigned int q);

/* ---- snapshots ---- */

/* Stops serving new requests and waits until those in flight have
 * finished (their completions pushed): guest memory and the rings then
 * stay still while a paused VM is saved. 0, or -ETIMEDOUT with err_set().
 * virtio_unquiesce() serves again, every queue looked at once, when the
 * last quiesce is undone (they nest). */
int virtio_quiesce(struct virtio_dev *dev);
void virtio_unquiesce(struct virtio_dev *dev);
/* One section of type ops->state_type and this id: the PCI configuration
 * space, the transport (features, status, queues with their indices,
 * MSI-X table and PBA), then the model's state. Quiesced device. */
void virtio_save(struct virtio_dev *dev, struct state_writer *w, uint32_t id);
/* Checks the whole section (every queue inside guest RAM, sizes legal,
 * features a subset of this device's) before it applies any of it; then
 * routes the MSI-X vectors and kicks every live queue once, so that work
 * the guest left pending raises its interrupt. Before the vCPUs run. */
int virtio_restore(struct virtio_dev *dev, const struct state_reader *r, uint32_t id);

/* ---- device models ---- */

struct disk_config {
	const char *path;
	const char *format;   /* NULL: probe (an unrecognised file is refused) */
	bool readonly;
	const char *serial;   /* up to 20 bytes, VIRTIO_BLK_T_GET_ID */
	uint64_t bps, iops;   /* rate limits; 0 = none */
	int cache;            /* enum block_cache (vireo/block.h); 0 = writeback */
	int aio;              /* enum block_aio; 0 = io_uring */
	unsigned int queues;  /* virtqueues, 1 to VIRTIO_BLK_MAX_QUEUES; 0 = one */
	const struct block_policy *policy; /* where its chain may be; NULL: anywhere */
};

/* --disk queues=: at most this many (docs/run.md says why), and by
 * default one per vCPU up to it. */
#define VIRTIO_BLK_MAX_QUEUES 8
unsigned int virtio_blk_default_queues(unsigned int ncpus);

struct virtio_blk;
int virtio_blk_create(struct vm *vm, struct pci_bus *bus, const struct disk_config *cfg,
		      struct virtio_blk **out);
void virtio_blk_destroy(struct virtio_blk *blk);
struct virtio_dev *virtio_blk_dev(struct virtio_blk *blk);
/* For the control plane: the disk's limiter (ratelimit_set() may be called
 * from any thread) and its block device (blockdev_get_stats()). */
struct ratelimit *virtio_blk_ratelimit(struct virtio_blk *blk);
struct blockdev *virtio_blk_blockdev(struct virtio_blk *blk);
/* The same for a device that may be any model: NULL if not a disk. */
struct blockdev *virtio_dev_blockdev(struct virtio_dev *dev);
/* Changes the disk's limits; requests waiting for the old ones are looked
 * at again at once. Any thread. */
void virtio_blk_set_limits(struct virtio_blk *blk, uint64_t bps, uint64_t iops);
/* The aio mode that runs ("io_uring", "threads") and the most requests it
 * had in flight together. Any thread. */
const char *virtio_blk_aio(struct virtio_blk *blk, uint64_t *inflight_max);

/* Balloon statistics as the guest last reported them (tags of §5.5.6.3:
 * 0 swap in, 1 swap out, 2 major faults, 3 minor faults, 4 free memory,
 * 5 total memory, 6 available memory, 7 disk caches, ...). */
#define BALLOON_STATS_MAX 16
struct balloon_stats {
	uint64_t value[BALLOON_STATS_MAX];
	uint32_t valid;          /* bit per tag seen */
	uint64_t updates;
	uint32_t actual_pages;   /* pages the driver says it holds */
	uint64_t inflated_pages; /* pages freed on the host by inflation */
	uint64_t reported_pages; /* pages freed through free page reporting */
};

struct virtio_balloon;
int virtio_balloon_create(struct vm *vm, struct pci_bus *bus, uint64_t target_bytes,
			  struct virtio_balloon **out);
/* Sets how much memory the guest should give back (num_pages). */
void virtio_balloon_set_target(struct virtio_balloon *b, uint64_t target_bytes);
/* Latest statistics; also asks the guest for new ones. */
void virtio_balloon_get_stats(struct virtio_balloon *b, struct balloon_stats *out);
void virtio_balloon_destroy(struct virtio_balloon *b);
struct virtio_dev *virtio_balloon_dev(struct virtio_balloon *b);

struct nic_config {
	const char *tap;       /* tap device name; NULL: let the kernel pick */
	int tap_fd;            /* with tap_opened: that tap, virtio_net_open_tap()'s */
	bool tap_opened;
	uint8_t mac[6];
	bool mac_set;
	uint16_t mtu;          /* 0: 1500 */
	uint64_t rx_bps, tx_bps;
};

struct virtio_net;
/* Attaches to tap `name` as the device will (an incoming VM's, early: the
 * tap's carrier comes on now, so its bridge port forwards by the switch-over
 * and the announce is not lost). The fd, or -errno. */
int virtio_net_open_tap(const char *name);
/* Takes cfg->tap_fd when cfg->tap_opened (closed on failure too). */
int virtio_net_create(struct vm *vm, struct pci_bus *bus, const struct nic_config *cfg,
		      struct virtio_net **out);
void virtio_net_destroy(struct virtio_net *net);
struct virtio_dev *virtio_net_dev(struct virtio_net *net);
/* Writes one RARP frame with the vNIC's MAC into its tap, so that the
 * network learns where the VM now is (after a migration). 0 or -errno. */
int virtio_net_announce(struct virtio_net *net);
/* For the control plane: the receive or transmit limiter (ratelimit_set()
 * may be called from any thread) and the counters. */
struct virtio_net_stats {
	uint64_t rx_packets, tx_packets, rx_dropped, tx_dropped;
	char tap[16];
};
struct ratelimit *virtio_net_ratelimit(struct virtio_net *net, bool tx);
void virtio_net_get_stats(struct virtio_net *net, struct virtio_net_stats *out);

struct virtio_rng;
int virtio_rng_create(struct vm *vm, struct pci_bus *bus, uint64_t bps, struct virtio_rng **out);
void virtio_rng_destroy(struct virtio_rng *rng);
struct virtio_dev *virtio_rng_dev(struct virtio_rng *rng);

#endif
