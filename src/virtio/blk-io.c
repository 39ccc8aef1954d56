/* virtio-blk's requests in flight (blk-io.h has the contract).
 *
 * Where a request runs: reads, writes and flushes of a raw image on a host
 * file go to an io_uring (aio=io_uring) when O_DIRECT's alignment holds for
 * them; everything else (image formats, discard, write-zeroes, unaligned
 * buffers) runs on the block device's worker threads. Formats are not safe
 * for concurrent callers: the block core serializes them per image with
 * image->lock (never the transport lock), so a qcow2/vhd/vmdk disk has one
 * request in its driver at a time, while raw images move data in parallel.
 *
 * Ordering: a flush starts when every write submitted before it has
 * finished (later writes do not hold it back). Under O_DIRECT, a write that
 * is not aligned is a read-modify-write of whole blocks: it starts when
 * nothing else is in flight, and nothing starts while it runs. */
#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "blk-io.h"
#include "vireo/log.h"

/* Per virtqueue, two full queues: one reset's leftovers and the next. The
 * ring has as many entries as the pool (a request always finds an SQE). */
#define REQS_PER_QUEUE  (2 * VIRTQ_MAX_SIZE)
#define WORKERS_THREADS 8
#define WORKERS_URING   2	/* formats, discard, unaligned buffers */

struct blk_io {
	struct virtio_dev *dev;
	struct blockdev *bd;
	blk_run_fn *run;
	enum block_aio aio;
	int efd;			/* completions (workers and the ring) */
	bool ring_ok;
	struct io_uring ring;
	unsigned int uring_out;		/* SQEs handed to the kernel, not reaped */
	unsigned int uring_pending;	/* prepared, not yet submitted */
	struct bfile *raw;		/* the raw image's file, or NULL */
	/* request pool, allocated as needed up to max_reqs */
	struct blk_req **all;
	unsigned int max_reqs;
	struct blk_req *free_list;
	unsigned int nall, nout;
	unsigned int stalled;		/* bit per queue stopped for want of requests */
	/* ordering (dev->lock) */
	unsigned int gen;
	unsigned int started;		/* started and not finished */
	bool barrier_on;
	struct blk_req *held, **held_tail;	/* waiting for a barrier */
	struct blk_req *parked, **parked_tail;	/* flushes waiting for writes */
	struct blk_req *whead, *wtail;		/* writes in flight, oldest first */
	uint64_t next_seq;
	/* finished on workers (c_lock) */
	pthread_mutex_t c_lock;
	struct blk_req *completed, **completed_tail;
	unsigned int running;		/* on workers now (c_lock) */
	struct blk_io_stats stats;	/* (c_lock) */
};

/* ---- setup ---- */

/* The ring may only read, write and sync (a VMM taken over through a guest
 * bug gains no open or connect through it, which seccomp would not see).
 * The image's fd is not registered as a fixed file: the ring would hold
 * the file, and with it the image lock, after the VMM exits, until the
 * kernel's asynchronous ring teardown (a restarted VMM found its own image
 * "in use"). */
static int uring_setup(struct blk_io *io)
{
	struct io_uring_params p = { .flags = IORING_SETUP_R_DISABLED };
	struct io_uring_restriction r[] = {
		{ .opcode = IORING_RESTRICTION_SQE_OP, .sqe_op = IORING_OP_READV },
		{ .opcode = IORING_RESTRICTION_SQE_OP, .sqe_op = IORING_OP_WRITEV },
		{ .opcode = IORING_RESTRICTION_SQE_OP, .sqe_op = IORING_OP_FSYNC },
		{ .opcode = IORING_RESTRICTION_SQE_FLAGS_ALLOWED, .sqe_flags = 0 },
	};
	int ret = io_uring_queue_init_params(io->max_reqs, &io->ring, &p);

	if (ret)
		return ret;
	if ((ret = io_uring_register_eventfd(&io->ring, io->efd)) < 0 ||
	    /* io_uring_register(): Debian's liburing 2.3 does not export
	     * io_uring_register_restrictions() and io_uring_enable_rings() */
	    (ret = io_uring_register(io->ring.ring_fd, IORING_REGISTER_RESTRICTIONS, r,
				     sizeof(r) / sizeof(r[0]))) < 0 ||
	    (ret = io_uring_register(io->ring.ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0)) < 0) {
		io_uring_queue_exit(&io->ring);
		return ret;
	}
	io->ring_ok = true;
	return 0;
}

static void c_init(struct blk_io *io)
{
	io->held_tail = &io->held;
	io->parked_tail = &io->parked;
	io->completed_tail = &io->completed;
	pthread_mutex_init(&io->c_lock, NULL);
}

/* Without a ring (an image format: qcow2 runs requests concurrently) the
 * workers carry all the data: under O_DIRECT they wait on the disk and
 * more of them are queue depth; on the page cache they copy memory, and
 * more of them than the CPUs only switch (bench: 8 halved qcow2's random
 * page-cache IOPS, and doubled them under cache=none). */
static int nr_workers(struct blk_io *io)
{
	if (io->aio == BLOCK_AIO_THREADS)
		return WORKERS_THREADS;
	if (!io->ring_ok && blockdev_image(io->bd)->file->direct_align)
		return WORKERS_THREADS;
	return WORKERS_URING;
}


int blk_io_create(struct virtio_dev *dev, struct blockdev *bd, enum block_aio aio,
		  unsigned int nqueues, blk_run_fn *run, struct blk_io **out)
{
	struct blk_io *io = calloc(1, sizeof(*io));
	int ret;

	if (!io)
		return err_set(-ENOMEM, "out of memory");
	io->max_reqs = REQS_PER_QUEUE * (nqueues ? nqueues : 1);
	io->all = calloc(io->max_reqs, sizeof(*io->all));
	if (!io->all) {
		free(io);
		return err_set(-ENOMEM, "out of memory");
	}
	io->dev = dev;
	io->bd = bd;
	io->run = run;
	io->aio = aio;
	io->raw = blockdev_raw_file(bd);
	c_init(io);
	io->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (io->efd < 0) {
		ret = err_set(-errno, "eventfd: %m");
		goto free_io;
	}
	if (aio == BLOCK_AIO_IO_URING && io->raw && (ret = uring_setup(io))) {
		log_warn("%s: io_uring unavailable (%s): aio=threads", io->raw->path,
			 strerror(-ret));
		io->aio = BLOCK_AIO_THREADS;
	}
	io->stats.aio = io->aio;
	ret = blockdev_start_workers(bd, nr_workers(io));
	if (ret)
		goto close_ring;
	dev->extra_fd = io->efd;
	*out = io;
	return 0;
close_ring:
	if (io->ring_ok)
		io_uring_queue_exit(&io->ring);
	close(io->efd);
free_io:
	pthread_mutex_destroy(&io->c_lock);
	free(io->all);
	free(io);
	return ret;
}

/* ---- the pool ---- */

struct blk_req *blk_io_get(struct blk_io *io, unsigned int q)
{
	struct blk_req *req = io->free_list;

	if (req) {
		io->free_list = req->next;
	} else if (io->nall < io->max_reqs && (req = malloc(sizeof(*req)))) {
		io->all[io->nall++] = req;
	} else {
		io->stalled |= 1u << q;
		return NULL;
	}
	io->nout++;
	req->io = io;
	req->q = q;
	req->gen = io->gen;
	req->next = NULL;
	return req;
}

bool blk_io_idle(const struct blk_io *io)
{
	return io->nout == 0;
}

void blk_io_put(struct blk_io *io, struct blk_req *req)
{
	req->next = io->free_list;
	io->free_list = req;
	io->nout--;
}

/* ---- counting what runs at once ---- */

static void note_running(struct blk_io *io, int delta)
{
	pthread_mutex_lock(&io->c_lock);
	io->running = (unsigned int)((int)io->running + delta);
	if (io->running + io->uring_out > io->stats.inflight_max)
		io->stats.inflight_max = io->running + io->uring_out;
	pthread_mutex_unlock(&io->c_lock);
}

void blk_io_get_stats(struct blk_io *io, struct blk_io_stats *out)
{
	pthread_mutex_lock(&io->c_lock);
	*out = io->stats;
	pthread_mutex_unlock(&io->c_lock);
}

/* ---- workers ---- */

static int worker_call(struct blockdev_req *br)
{
	struct blk_req *req = br->opaque;
	struct blk_io *io = req->io;

	note_running(io, 1);
	io->run(io->dev, req);
	note_running(io, -1);
	return 0;
}

/* On the worker: queue for the I/O thread, in finishing order. */
static void worker_done(struct blockdev_req *br, int ret)
{
	struct blk_req *req = br->opaque;
	struct blk_io *io = req->io;
	uint64_t one = 1;

	(void)ret;
	req->next = NULL;
	pthread_mutex_lock(&io->c_lock);
	*io->completed_tail = req;
	io->completed_tail = &req->next;
	io->stats.worker_ops++;
	pthread_mutex_unlock(&io->c_lock);
	if (write(io->efd, &one, 8) < 0)
		log_ratelimited("blk: completion eventfd: %s", strerror(errno));
}

static void to_worker(struct blk_io *io, struct blk_req *req)
{
	req->breq = (struct blockdev_req){ .op = BLOCKDEV_CALL, .call = worker_call,
					   .done = worker_done, .opaque = req };
	blockdev_submit(io->bd, &req->breq);
}

/* ---- io_uring ---- */

/* Whether the ring can move this request: reads and writes of a raw file
 * whose buffers, offset and length suit O_DIRECT if the file has it, and
 * flushes that sync something. */
static bool uring_fits(const struct blk_io *io, const struct blk_req *req)
{
	uint64_t a, bits;

	if (!io->ring_ok)
		return false;
	if (req->type == T_FLUSH)
		return !io->raw->no_flush && !blockdev_readonly(io->bd);
	if ((req->type != T_IN && req->type != T_OUT) || req->barrier || !req->len)
		return false;
	a = io->raw->direct_align;
	bits = req->off | req->len;
	for (int i = 0; i < req->ndata && a; i++)
		bits |= (uintptr_t)req->data[i].iov_base | req->data[i].iov_len;
	return !a || !(bits & (a - 1));
}

static void uring_prep(struct blk_io *io, struct blk_req *req)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&io->ring);
	uint64_t off = req->off + req->done;
	int fd = io->raw->fd;

	/* Never NULL: one SQE per request at most, as many SQEs as requests. */
	if (req->type == T_FLUSH)
		io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
	else if (req->type == T_IN)
		io_uring_prep_readv(sqe, fd, req->data + req->seg, (unsigned)(req->ndata - req->seg),
				    off);
	else
		io_uring_prep_writev(sqe, fd, req->data + req->seg,
				     (unsigned)(req->ndata - req->seg), off);
	io_uring_sqe_set_data(sqe, req);
	io->uring_pending++;
}

/* Steps the request's segments past n bytes that moved. */
static void advance(struct blk_req *req, uint64_t n)
{
	req->done += n;
	while (req->seg < req->ndata && n >= req->data[req->seg].iov_len)
		n -= req->data[req->seg++].iov_len;
	if (req->seg < req->ndata) {
		req->data[req->seg].iov_base = (uint8_t *)req->data[req->seg].iov_base + n;
		req->data[req->seg].iov_len -= n;
	}
}

/* A CQE's result: true when the request is finished (status set), false
 * when its rest was queued again (a short transfer). */
static bool uring_result(struct blk_io *io, struct blk_req *req, int res)
{
	bool rd = req->type == T_IN;

	if (req->type == T_FLUSH) {
		req->status = res < 0 ? S_IOERR : S_OK;
		blockdev_account(io->bd, BLOCKDEV_FLUSH, 0, res < 0 ? res : 0);
		return true;
	}
	if (res == -EAGAIN || res == -EINTR || (res > 0 && req->done + (uint64_t)res < req->len)) {
		if (res > 0)
			advance(req, (uint64_t)res);
		uring_prep(io, req);
		return false;
	}
	/* The ring bypasses blockdev_writev, which marks the rest. */
	if (!rd)
		blockdev_dirty_mark(io->bd, req->off, req->len);
	if (res == 0 && rd) {	/* end of file: the rest reads as zeroes */
		for (int i = req->seg; i < req->ndata; i++)
			memset(req->data[i].iov_base, 0, req->data[i].iov_len);
	} else if (res <= 0) {
		req->status = S_IOERR;
		blockdev_account(io->bd, rd ? BLOCKDEV_READ : BLOCKDEV_WRITE, 0, res ? res : -EIO);
		return true;
	}
	req->status = S_OK;
	req->written = rd ? (uint32_t)req->len : 0;
	blockdev_account(io->bd, rd ? BLOCKDEV_READ : BLOCKDEV_WRITE, req->len, 0);
	return true;
}

static void to_uring(struct blk_io *io, struct blk_req *req)
{
	req->done = 0;
	req->seg = 0;
	uring_prep(io, req);
}

static void uring_submit(struct blk_io *io)
{
	unsigned int n = io->uring_pending;
	int ret;

	io->uring_pending = 0;
	pthread_mutex_lock(&io->c_lock);
	io->uring_out += n;
	if (io->running + io->uring_out > io->stats.inflight_max)
		io->stats.inflight_max = io->running + io->uring_out;
	io->stats.uring_ops += n;
	pthread_mutex_unlock(&io->c_lock);
	/* Buffered reads may be served inside io_uring_enter: not under the
	 * transport lock, which vCPUs take for every register access. */
	pthread_mutex_unlock(&io->dev->lock);
	do
		ret = io_uring_submit(&io->ring);
	while (ret == -EINTR || ret == -EAGAIN);
	pthread_mutex_lock(&io->dev->lock);
	if (ret < 0)
		log_ratelimited("blk: io_uring_submit: %s", strerror(-ret));
}

/* ---- starting requests in order ---- */

static void launch(struct blk_io *io, struct blk_req *req)
{
	io->started++;
	if (req->barrier)
		io->barrier_on = true;
	if (req->writes) {
		req->seq = io->next_seq++;
		req->wnext = NULL;
		req->wprev = io->wtail;
		if (io->wtail)
			io->wtail->wnext = req;
		else
			io->whead = req;
		io->wtail = req;
	}
	if (req->type == T_FLUSH) {
		req->seq = io->next_seq;	/* waits for writes with a lower one */
		if (io->whead || io->parked) {
			req->next = NULL;
			*io->parked_tail = req;
			io->parked_tail = &req->next;
			return;
		}
	}
	if (uring_fits(io, req))
		to_uring(io, req);
	else
		to_worker(io, req);
}

/* Flushes whose earlier writes have all finished. */
static void run_parked(struct blk_io *io)
{
	struct blk_req *req;

	while ((req = io->parked) && (!io->whead || io->whead->seq >= req->seq)) {
		io->parked = req->next;
		if (!io->parked)
			io->parked_tail = &io->parked;
		if (uring_fits(io, req))
			to_uring(io, req);
		else
			to_worker(io, req);
	}
}

static void run_held(struct blk_io *io)
{
	struct blk_req *req;

	while ((req = io->held) && !io->barrier_on && !(req->barrier && io->started)) {
		io->held = req->next;
		if (!io->held)
			io->held_tail = &io->held;
		launch(io, req);
	}
}

void blk_io_start(struct blk_io *io, struct blk_req *req)
{
	if (io->held || io->barrier_on || (req->barrier && io->started)) {
		req->next = NULL;
		*io->held_tail = req;
		io->held_tail = &req->next;
		return;
	}
	launch(io, req);
}

/* ---- finishing ---- */

/* Pushes a finished request to its queue (unless a reset dropped it) and
 * frees it. Returns the bit of the queue it was pushed to, or 0. */
static unsigned int finish(struct blk_io *io, struct blk_req *req)
{
	unsigned int pushed = req->gen == io->gen ? 1u << req->q : 0;

	if (pushed) {
		virtq_write_in(&req->elem, req->elem.in_len - 1, &req->status, 1);
		virtq_push(&io->dev->vqs[req->q], &req->elem, req->written + 1);
	}
	if (req->writes) {
		if (req->wprev)
			req->wprev->wnext = req->wnext;
		else
			io->whead = req->wnext;
		if (req->wnext)
			req->wnext->wprev = req->wprev;
		else
			io->wtail = req->wprev;
	}
	if (req->barrier)
		io->barrier_on = false;
	io->started--;
	blk_io_put(io, req);
	return pushed;
}

static unsigned int reap_uring(struct blk_io *io)
{
	struct io_uring_cqe *cqe;
	unsigned int pushed = 0, reaped = 0;

	while (io->ring_ok && io_uring_peek_cqe(&io->ring, &cqe) == 0) {
		struct blk_req *req = io_uring_cqe_get_data(cqe);
		int res = cqe->res;

		io_uring_cqe_seen(&io->ring, cqe);
		reaped++;
		if (uring_result(io, req, res))
			pushed |= finish(io, req);
	}
	pthread_mutex_lock(&io->c_lock);
	io->uring_out -= reaped;
	pthread_mutex_unlock(&io->c_lock);
	return pushed;
}

static unsigned int reap_workers(struct blk_io *io)
{
	struct blk_req *req, *next;
	unsigned int pushed = 0;

	pthread_mutex_lock(&io->c_lock);
	req = io->completed;
	io->completed = NULL;
	io->completed_tail = &io->completed;
	pthread_mutex_unlock(&io->c_lock);
	for (; req; req = next) {
		next = req->next;
		pushed |= finish(io, req);
	}
	return pushed;
}

/* One interrupt per queue that had something pushed in this batch, each
 * on its own vector. */
static void notify_queues(struct blk_io *io, unsigned int queues)
{
	for (unsigned int q = 0; queues; q++, queues >>= 1)
		if (queues & 1)
			virtio_notify(io->dev, q);
}

/* What the kernel finished inside io_uring_enter (page-cache hits) is
 * pushed at once, not after a round trip through the eventfd. */
void blk_io_submit(struct blk_io *io)
{
	while (io->uring_pending) {
		unsigned int pushed;

		uring_submit(io);
		if ((pushed = reap_uring(io))) {
			run_parked(io);
			run_held(io);
			notify_queues(io, pushed);
		}
	}
}

void blk_io_complete(struct blk_io *io)
{
	struct virtio_dev *dev = io->dev;
	uint64_t count;
	unsigned int pushed;

	if (read(io->efd, &count, 8) < 0 && errno != EAGAIN)
		log_ratelimited("blk: completion eventfd: %s", strerror(errno));
	pushed = reap_uring(io) | reap_workers(io);
	run_parked(io);
	run_held(io);
	notify_queues(io, pushed);	/* one interrupt per queue for the batch */
	if (io->stalled && io->nout < io->max_reqs) {
		unsigned int stalled = io->stalled;

		io->stalled = 0;
		/* pops and submits, unless a queue is deferred */
		for (unsigned int q = 0; stalled; q++, stalled >>= 1)
			if (stalled & 1)
				virtio_serve(dev, q);
	}
	blk_io_submit(io);
}

void blk_io_reset(struct blk_io *io)
{
	struct blk_req *req, *next;

	io->gen++;
	for (req = io->held; req; req = next) {
		next = req->next;
		blk_io_put(io, req);
	}
	io->held = NULL;
	io->held_tail = &io->held;
	for (req = io->parked; req; req = next) {
		next = req->next;
		io->started--;
		blk_io_put(io, req);
	}
	io->parked = NULL;
	io->parked_tail = &io->parked;
	io->stalled = 0;
}

void blk_io_activate(struct blk_io *io)
{
	uint64_t one = 1;

	if (write(io->efd, &one, 8) < 0)
		log_ratelimited("blk: completion eventfd: %s", strerror(errno));
}

/* ---- teardown ---- */

void blk_io_drain(struct blk_io *io)
{
	unsigned int n = io->uring_pending;

	if (!io->ring_ok)
		return;
	if (n && io_uring_submit(&io->ring) >= 0)
		io->uring_out += n;
	io->uring_pending = 0;
	while (io->uring_out) {
		struct io_uring_cqe *cqe;

		if (io_uring_wait_cqe(&io->ring, &cqe))
			break;
		io_uring_cqe_seen(&io->ring, cqe);
		io->uring_out--;
	}
}

void blk_io_destroy(struct blk_io *io)
{
	if (!io)
		return;
	if (io->ring_ok)
		io_uring_queue_exit(&io->ring);
	for (unsigned int i = 0; i < io->nall; i++)
		free(io->all[i]);
	free(io->all);
	close(io->efd);
	pthread_mutex_destroy(&io->c_lock);
	free(io);
}
