/* virtio-blk's requests in flight (src/virtio/blk-io.c), private to
 * src/virtio/blk*.c. blk.c pops and checks a request; blk-io runs it on an
 * io_uring (raw images on host files) or on the block device's worker
 * threads (everything else), and pushes it to the used ring when it
 * finishes, in completion order, with one interrupt per batch.
 *
 * Locking: every function here but blk_io_create/drain/destroy runs with
 * dev->lock held, on the device's I/O thread (blk_io_reset and
 * blk_io_activate on a vCPU thread). The lock guards ring state only: I/O
 * is submitted with it released (blk_io_submit) and runs without it. */
#ifndef VIREO_VIRTIO_BLK_IO_H
#define VIREO_VIRTIO_BLK_IO_H

#include "vireo/block.h"
#include "vireo/virtio.h"

/* Request types and status values (virtio 1.x §5.2.6). */
enum { T_IN = 0, T_OUT = 1, T_FLUSH = 4, T_GET_ID = 8, T_DISCARD = 11, T_WRITE_ZEROES = 13 };
enum { S_OK = 0, S_IOERR = 1, S_UNSUPP = 2 };

/* A discard or write-zeroes segment, as the guest gives it (little-endian). */
#define MAX_DISCARD_SEGS 32
struct blk_discard_seg {
	uint64_t sector;
	uint32_t num_sectors;
	uint32_t flags;
};

/* One guest request, from pop to push. blk.c fills the first part. */
struct blk_req {
	struct virtq_elem elem;
	struct iovec data[VIRTQ_MAX_SEGS];	/* the data segments (reads, writes) */
	int ndata;
	uint32_t type;				/* VIRTIO_BLK_T_* */
	uint64_t off, len;			/* reads and writes: byte range */
	struct blk_discard_seg segs[MAX_DISCARD_SEGS];	/* discard, write-zeroes */
	int nsegs;				/* their count, or -S_IOERR / -S_UNSUPP */
	bool writes;				/* changes the disk: later flushes wait */
	bool barrier;				/* read-modify-write: runs alone */
	uint8_t status;
	uint32_t written;			/* into the in-segments, status excluded */
	/* blk-io's own */
	struct blk_io *io;
	unsigned int q;				/* its virtqueue: pushed back there */
	unsigned int gen;			/* device generation at pop (resets) */
	uint64_t seq;				/* writes: submission order */
	uint64_t done;				/* io_uring: bytes moved so far */
	int seg;				/* io_uring: first segment not yet moved */
	struct blockdev_req breq;
	struct blk_req *next;			/* held, parked or completed list */
	struct blk_req *wprev, *wnext;		/* writes in flight, oldest first */
};

struct blk_io_stats {
	enum block_aio aio;		/* what runs: io_uring falls back to threads */
	uint64_t inflight_max;		/* most I/Os in the kernel or on workers together */
	uint64_t uring_ops, worker_ops;
};

/* Runs a request synchronously on a worker thread: sets status, written. */
typedef void blk_run_fn(struct virtio_dev *dev, struct blk_req *req);

/* Sets up the engine of a device with nqueues virtqueues (before
 * virtio_pci_create: it fills dev->extra_fd, the completion eventfd). All
 * queues share it: one pool, one ring, one order of writes and flushes,
 * each request pushed to the queue it came from and each queue interrupted
 * for its own. An io_uring that the kernel refuses falls back to threads,
 * with a warning. */
int blk_io_create(struct virtio_dev *dev, struct blockdev *bd, enum block_aio aio,
		  unsigned int nqueues, blk_run_fn *run, struct blk_io **out);
/* Waits for what the io_uring still has (the I/O thread has stopped);
 * then the caller closes the blockdev (which drains its workers) and calls
 * blk_io_destroy. */
void blk_io_drain(struct blk_io *io);
void blk_io_destroy(struct blk_io *io);

/* A free request for queue q, or NULL when too many are out: the queue
 * is served again when some complete. */
struct blk_req *blk_io_get(struct blk_io *io, unsigned int q);
void blk_io_put(struct blk_io *io, struct blk_req *req);
/* Starts a popped, checked and charged request. */
void blk_io_start(struct blk_io *io, struct blk_req *req);
/* Hands prepared io_uring entries to the kernel, dev->lock released meanwhile
 * (the caller must not rely on ring state read before the call). */
void blk_io_submit(struct blk_io *io);
/* The completion eventfd fired: push what finished, interrupt once, start
 * what waited. */
void blk_io_complete(struct blk_io *io);
/* The guest reset the device: requests in flight are dropped when they
 * finish, those not started at once. */
void blk_io_reset(struct blk_io *io);
/* DRIVER_OK: clean up what finished while the device was not live. */
void blk_io_activate(struct blk_io *io);
/* Whether every request taken from the ring has been pushed back. */
bool blk_io_idle(const struct blk_io *io);
void blk_io_get_stats(struct blk_io *io, struct blk_io_stats *out);

#endif
